import numpy as np
import pytest

from jblase.clone import CloneSettings, clone_batch, clone_lines, clone_spectrum
from jblase.detect import detect_lines
from jblase.forward import synthesize


def _fake_spectra(n_spectra=5, n_pix=16000, seed=0):
    """Spectra made of pseudo-Voigt lines with different line counts, on one wavelength grid."""
    rng = np.random.default_rng(seed)
    wl = 8500.0 * (1 + 1 / 500_000) ** np.arange(n_pix)
    fluxes = []
    for k in range(n_spectra):
        n = 20 + 25 * k
        center = rng.uniform(wl[0] + 35, wl[-1] - 35, n)
        f = synthesize(
            wl,
            center,
            np.log(rng.uniform(0.01, 0.12, n)),
            np.log(rng.uniform(0.01, 0.04, n)),
            np.log(rng.uniform(0.005, 0.03, n)),
            wing_cut=2000,
        )
        fluxes.append(np.asarray(f))
    return wl, np.array(fluxes)


def test_real_phoenix_clone_beats_the_original_code(phoenix_spectrum):
    """Paper settings on the real spectrum; the original code reached 2.69e-3 from 4.84e-2."""
    wl, flux = phoenix_spectrum
    result = clone_spectrum(
        wl,
        flux,
        prominence=0.005,
        wing_cut=6000,
        epochs=100,
        learning_rate=0.05,
        profile="blase",
        residual_rounds=0,
    )
    assert result.n_lines == 1248
    assert result.rms_initial == pytest.approx(4.84e-2, abs=5e-5)
    assert result.rms <= 2.69e-3
    assert result.loss_history.shape == (100,)
    assert result.loss_history[-1] < 0.01 * result.loss_history[0]
    np.testing.assert_array_equal(
        result.lines.identity_center, np.round(np.asarray(detect_lines(wl, flux).center), 2)
    )


def test_real_phoenix_clone_with_a_residual_round_reaches_1e_3(phoenix_spectrum):
    """The default residual round on the real spectrum (issue 12's target: RMS <= 1.0e-3 with
    the defaults; the original code's 2.69e-3), with the original code's profile."""
    wl, flux = phoenix_spectrum
    result = clone_spectrum(wl, flux, profile="blase", compute_dtype="float32")
    assert result.n_lines > 1248  # lines found in data / model were added
    assert result.rms <= 1.0e-3
    assert result.loss_history.shape == (200,)


def test_clone_reduces_rms_with_the_paper_profile():
    wl, fluxes = _fake_spectra(1, seed=4)
    result = clone_spectrum(wl, fluxes[0], epochs=60, wing_cut=2000)
    assert result.rms < 0.3 * result.rms_initial
    assert np.all(np.diff(result.loss_history[:10]) < 0)


def test_fixed_centres_stay_put():
    wl, fluxes = _fake_spectra(1, seed=5)
    lines = detect_lines(wl, fluxes[0])
    result = clone_lines(
        wl,
        fluxes[0],
        lines,
        CloneSettings(epochs=10, wing_cut=1000, tune_centers=False, residual_rounds=0),
    )
    np.testing.assert_array_equal(result.lines.center, lines.center)
    assert result.rms < result.rms_initial


@pytest.mark.parametrize(
    "n_spectra, residual_rounds",
    # One pass over three spectra (a batch of two and a remainder); the residual round adds
    # data-dependent line counts, each its own compiled shape (46 s of the suite): slow, run
    # by `pytest -m slow`.
    [(3, 0), pytest.param(2, 1, marks=pytest.mark.slow)],
    ids=["one-pass", "residual-round"],
)
def test_batched_clone_equals_one_at_a_time(n_spectra, residual_rounds):
    wl, fluxes = _fake_spectra(5)
    fluxes = fluxes[:n_spectra]
    kwargs = dict(epochs=20, wing_cut=1500, residual_rounds=residual_rounds)
    seen = []
    batched = clone_batch(
        wl, fluxes, batch_size=2, progress=False, on_result=lambda i, r: seen.append(i), **kwargs
    )
    assert sorted(seen) == list(range(n_spectra))
    for flux, res in zip(fluxes, batched, strict=True):
        single = clone_spectrum(wl, flux, **kwargs)
        assert res.n_lines == single.n_lines
        for name in ("center", "ln_amplitude", "ln_sigma", "ln_gamma", "identity_center"):
            np.testing.assert_allclose(
                getattr(res.lines, name), getattr(single.lines, name), rtol=0, atol=1e-7
            )
        assert res.rms == pytest.approx(single.rms, rel=1e-6)
        np.testing.assert_allclose(res.loss_history, single.loss_history, rtol=1e-6)


def test_bad_inputs():
    wl, fluxes = _fake_spectra(2)
    bad = fluxes.copy()
    bad[1, 100] = np.nan
    with pytest.raises(ValueError, match=r"spectrum 1: .*non-finite"):
        clone_batch(wl, bad, progress=False)
    with pytest.raises(ValueError, match="strictly increasing"):
        clone_spectrum(wl[::-1], fluxes[0])
    with pytest.raises(ValueError, match="optimizer"):
        CloneSettings(optimizer="sgd")
    with pytest.raises(ValueError, match="unknown profile"):
        clone_spectrum(wl, fluxes[0], profile="gauss", epochs=1)
