"""The observed-spectrum fit (jblase.fit) against truths it did not make.

Observations are injected with ``benchmarks/_inject.py`` (NumPy convolution with Gray's
profile and a Gaussian, relativistic shift, trapezoid pixel integration, Chebyshev continuum,
Gaussian noise), not with jblase's observation model. Uncertainties are checked against the
scatter of repeated noise realisations and against the Fisher information computed by finite
differences of the injection itself.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jblase import fit as F
from jblase.fit import FitSettings, FitWarning, fit, laplace, read_mask_file
from jblase.generator import Generator
from jblase.spectra import ObservedSpectrum

from .test_generator import AXES, _random_manifold

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _inject import inject  # noqa: E402

#: Small kernels and margins keep the compiled programs small (the physics is the same).
SMALL = dict(max_velocity_kms=100.0, max_vsini_kms=30.0, min_resolving_power=30_000.0)
WL_RANGE = (8520.0, 8630.0)
TRUTH = dict(rv_kms=12.3, vsini_kms=6.0, resolving_power=55_000.0)


@pytest.fixture(scope="module")
def generator():
    identity, values, wl = _random_manifold(n_lines=250, n_pix=9000, seed=11)
    return Generator.from_arrays(identity, values, AXES, wl, wing_cut=1500)


def _spectrum(wl, flux, sigma, valid=None, header=None):
    valid = np.ones(wl.shape, bool) if valid is None else valid
    return ObservedSpectrum(
        wavelength=np.atleast_2d(wl),
        flux=np.atleast_2d(flux),
        uncertainty=None if sigma is None else np.atleast_2d(sigma),
        valid=np.atleast_2d(valid),
        orders=tuple(range(np.atleast_2d(wl).shape[0])),
        header=header or {},
    )


def _observe(wl, flux, snr, seed, **kw):
    truth = {**TRUTH, **kw}
    return inject(wl, flux, snr=snr, wl_range=WL_RANGE, rng=np.random.default_rng(seed), **truth)


@pytest.fixture(scope="module")
def fixed_model(generator):
    """One rest-frame model (the generator at a fixed point) for extrinsic-only fits."""
    wl = np.asarray(generator.wavelength)
    return wl, np.asarray(generator(np.array([4730.0, 4.31, -0.22])))


@pytest.fixture(scope="module")
def repeated_rv_fits(fixed_model):
    """30 noise realisations at S/N 100, RV, v sin i and continuum free, R fixed."""
    wl, flux = fixed_model
    settings = FitSettings(resolving_power=55_000.0, rv_kms=10.0, **SMALL)
    rows = []
    for seed in range(30):
        c, f, s = _observe(wl, flux, 100.0, seed)
        r = fit((wl, flux), _spectrum(c, f, s), settings)
        rows.append(
            (
                r.values["rv_kms"],
                r.errors["rv_kms"],
                r.values["vsini_kms"],
                r.errors["vsini_kms"],
                r.chi2_reduced,
            )
        )
    return np.array(rows)


def test_rv_and_vsini_errors_match_the_scatter_of_repeated_noise(repeated_rv_fits):
    rv, rv_err, vs, vs_err, chi2 = repeated_rv_fits.T
    # Unbiased within 3 standard errors of the mean, and the reported error matches the
    # scatter: with 30 draws the sample standard deviation is within +-40% of the truth at
    # better than 99.5% confidence (chi-square with 29 degrees of freedom).
    assert abs(rv.mean() - TRUTH["rv_kms"]) < 3 * rv.std(ddof=1) / np.sqrt(rv.size)
    assert abs(vs.mean() - TRUTH["vsini_kms"]) < 3 * vs.std(ddof=1) / np.sqrt(vs.size)
    assert 0.6 < rv.std(ddof=1) / rv_err.mean() < 1.4
    assert 0.6 < vs.std(ddof=1) / vs_err.mean() < 1.4
    # The model is exact here, so chi2_reduced is 1 within its own scatter (sqrt(2 / n)).
    assert abs(np.median(chi2) - 1.0) < 0.1


def test_rv_error_equals_the_fisher_information_of_the_injection(fixed_model, repeated_rv_fits):
    """sigma_rv from finite differences of the NumPy injection, continuum and v sin i fixed
    at truth, bounds the Laplace error from below (they are profiled in the fit)."""
    wl, flux = fixed_model
    h = 0.05
    c, f_hi, s = _observe(wl, flux, None, 0, rv_kms=TRUTH["rv_kms"] + h)
    _, f_lo, _ = _observe(wl, flux, None, 0, rv_kms=TRUTH["rv_kms"] - h)
    sigma = (
        np.polynomial.chebyshev.chebval(
            (2 * c - (c[0] + c[-1])) / (c[-1] - c[0]), (1.0, 0.03, -0.02)
        )
        / 100.0
    )
    fisher = np.sum(((f_hi - f_lo) / (2 * h) / sigma) ** 2)
    rv_err_fixed = 1 / np.sqrt(fisher)
    reported = np.median(repeated_rv_fits[:, 1])
    # Profiling v sin i and the continuum can only widen the error; they barely correlate
    # with RV (a symmetric broadening, a smooth continuum), so by little.
    assert rv_err_fixed <= reported < 1.3 * rv_err_fixed


@pytest.mark.slow  # ~1 min of compilation; benchmarks/injection.py runs this path on the demo grid
def test_recovers_stellar_and_extrinsic_parameters():
    identity, values, wl = _random_manifold(n_lines=120, n_pix=6000, seed=12)
    generator = Generator.from_arrays(identity, values, AXES, wl, wing_cut=1000)
    truth = np.array([4730.0, 4.31, -0.22])
    c, f, s = inject(
        wl,
        np.asarray(generator(truth)),
        snr=300.0,
        wl_range=(8515.0, 8590.0),
        rng=np.random.default_rng(1),
        **TRUTH,
    )
    r = fit(
        generator,
        _spectrum(c, f, s),
        FitSettings(resolving_power=55_000.0, teff_prior=4800.0, **SMALL),
        n_random=40,
        n_guided=5,
        search_dtype=None,  # one set of compiled programs (the float32 search is tested in
        # test_inference)
        hessian="differences",  # jax.hessian's own program is checked in the test below
    )
    assert r.fitted == ("teff", "logg", "feh", "rv_kms", "vsini_kms")
    for name, want in zip(("teff", "logg", "feh"), truth, strict=True):
        assert abs(r.values[name] - want) < 5 * r.errors[name], name
    assert abs(r.values["rv_kms"] - TRUTH["rv_kms"]) < 5 * r.errors["rv_kms"]
    assert abs(r.values["vsini_kms"] - TRUTH["vsini_kms"]) < 5 * r.errors["vsini_kms"]
    assert abs(r.rv_scan_kms - TRUTH["rv_kms"]) < 1.0  # the scan's start (1 km/s steps)
    assert 0.8 < r.chi2_reduced < 1.2
    assert r.gp is not None and set(r.gp) == {"teff", "logg", "feh", "chi2"}
    out = r.to_json()
    for key in ("teff", "logg", "feh", "rv_kms", "vsini_kms", "resolving_power"):
        assert key in out and f"{key}_err" in out
    assert np.isnan(out["resolving_power_err"])  # held fixed


def test_two_orders_share_rv_and_fit_their_own_continua(fixed_model):
    wl, flux = fixed_model
    orders = []
    for k, (lo, hi, cont) in enumerate(
        [(8520.0, 8570.0, (1.0, 0.05)), (8580.0, 8630.0, (0.7, -0.1, 0.02))]
    ):
        c, f, s = inject(
            wl,
            flux,
            snr=200.0,
            wl_range=(lo, hi),
            continuum=cont,
            rng=np.random.default_rng(k),
            **TRUTH,
        )
        orders.append((c, f, s))
    n = max(o[0].size for o in orders)
    pad = lambda a, v: np.concatenate([a, np.full(n - a.size, v)])  # noqa: E731
    spec = ObservedSpectrum(
        wavelength=np.stack([pad(o[0], np.nan) for o in orders]),
        flux=np.stack([pad(o[1], np.nan) for o in orders]),
        uncertainty=np.stack([pad(o[2], np.nan) for o in orders]),
        valid=np.stack([pad(np.ones(o[0].size, bool), False) for o in orders]),
        orders=(7, 8),
    )
    r = fit((wl, flux), spec, FitSettings(resolving_power=55_000.0, **SMALL))
    assert abs(r.values["rv_kms"] - TRUTH["rv_kms"]) < 4 * r.errors["rv_kms"]
    # Each order's continuum: the profiled Chebyshev coefficients are the injected ones.
    np.testing.assert_allclose(r.continuum[0][:2], (1.0, 0.05), atol=5e-3)
    np.testing.assert_allclose(r.continuum[1][:3], (0.7, -0.1, 0.02), atol=5e-3)
    assert r.model.shape == spec.wavelength.shape
    assert np.isnan(r.model[0, orders[0][0].size :]).all() or orders[0][0].size == n


def test_robust_fit_clips_outliers(fixed_model):
    wl, flux = fixed_model
    c, f, s = _observe(wl, flux, 100.0, 3)
    bad = np.arange(50, f.size, 97)
    f = f.copy()
    f[bad] += 30 * s[bad]  # cosmic rays
    settings = FitSettings(resolving_power=55_000.0, rv_kms=10.0, **SMALL)
    plain = fit((wl, flux), _spectrum(c, f, s), settings)
    robust = fit((wl, flux), _spectrum(c, f, s), settings, robust=True)
    assert robust.n_clipped >= bad.size and robust.weight.reshape(-1)[bad].sum() == 0
    assert robust.chi2_reduced < 1.2 < plain.chi2_reduced
    assert abs(robust.values["rv_kms"] - TRUTH["rv_kms"]) < 4 * robust.errors["rv_kms"]


def test_missing_uncertainties_are_estimated_with_a_warning(fixed_model):
    wl, flux = fixed_model
    c, f, s = _observe(wl, flux, 100.0, 4)
    with pytest.warns(FitWarning, match="no uncertainties"):
        r = fit(
            (wl, flux),
            _spectrum(c, f, None),
            FitSettings(resolving_power=55_000.0, rv_kms=10.0, **SMALL),
        )
    assert r.uncertainty_estimated and r.chi2_reduced == pytest.approx(1.0, abs=0.01)
    assert 0 < r.errors["rv_kms"] < 0.5


def test_mask_intervals_and_mask_file(fixed_model, tmp_path):
    wl, flux = fixed_model
    c, f, s = _observe(wl, flux, 100.0, 5)
    path = tmp_path / "tellurics.txt"
    path.write_text("# telluric bands\n8540.0 8550.0\n8600.5, 8601.5  # a comma works too\n")
    intervals = read_mask_file(path)
    np.testing.assert_array_equal(intervals, [[8540.0, 8550.0], [8600.5, 8601.5]])
    r = fit(
        (wl, flux),
        _spectrum(c, f, s),
        FitSettings(resolving_power=55_000.0, **SMALL),
        mask_intervals=intervals,
    )
    inside = ((c >= 8540) & (c <= 8550)) | ((c >= 8600.5) & (c <= 8601.5))
    assert r.weight[0, : c.size][inside].sum() == 0 and r.n_pixels == (~inside).sum()
    (tmp_path / "bad.txt").write_text("8540 oops\n")
    with pytest.raises(ValueError, match="bad.txt:1"):
        read_mask_file(tmp_path / "bad.txt")
    (tmp_path / "reversed.txt").write_text("8550 8540\n")
    with pytest.raises(ValueError, match="lo < hi"):
        read_mask_file(tmp_path / "reversed.txt")
    with pytest.raises(FileNotFoundError, match="mask file"):
        read_mask_file(tmp_path / "none.txt")


def test_hessian_is_finite_at_and_near_zero_vsini(fixed_model):
    """Gradients and the Hessian stay finite as v sin i -> 0 and where the rotation kernel's
    edge falls on a pixel edge (v sin i = 1.5 model pixels)."""
    wl, flux = fixed_model
    c, f, s = _observe(wl, flux, 100.0, 6, vsini_kms=0.0)
    settings = FitSettings(resolving_power=55_000.0, rv_kms=12.3, **SMALL)
    problem, values, _, _ = F._setup((wl, flux), _spectrum(c, f, s), settings, None)
    step = problem.observation.step_kms
    for vsini in (0.0, 1e-9, 0.3 * step, 0.5 * step, 1.5 * step, 5.0):
        u = F._u(problem, {**values, "rv_kms": 12.3, "vsini_kms": vsini})
        hess = F._hessian(problem, u, problem.weight)
        grad = np.asarray(jax.grad(lambda v: problem.chi2(v))(u))
        assert np.isfinite(hess).all() and np.isfinite(grad).all(), vsini
        if vsini == 5.0:  # a generic point (at 1.5 pixels the kernel's edge sits on a pixel
            # edge, where the second derivative jumps and differences straddle the jump)
            differences = F._hessian(problem, u, problem.weight, "differences")
            np.testing.assert_allclose(differences, hess, rtol=1e-5, atol=1e-6 * np.abs(hess).max())


def test_laplace_against_a_known_gaussian():
    cov = np.array([[4.0, 1.2], [1.2, 1.0]])
    hess = np.linalg.inv(cov)
    jac = np.diag([2.0, 0.5])  # physical = 2 u0, 0.5 u1
    out = laplace(hess, jac, ("a", "b"))
    np.testing.assert_allclose(out["covariance"], jac @ cov @ jac.T, rtol=1e-12)
    assert out["errors"] == pytest.approx({"a": 4.0, "b": 0.5})
    np.testing.assert_allclose(out["correlation"][0, 1], 1.2 / 2.0, rtol=1e-12)
    with pytest.warns(FitWarning, match="not positive definite"):
        bad = laplace(np.array([[1.0, 2.0], [2.0, 1.0]]), np.eye(2), ("a", "b"))
    assert np.isnan(bad["errors"]["a"])
    with pytest.warns(FitWarning, match="ill-conditioned"):
        laplace(np.array([[1.0, 1 - 1e-14], [1 - 1e-14, 1.0]]), np.eye(2), ("a", "b"))


# --------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def small_observation(fixed_model):
    wl, flux = fixed_model
    return _observe(wl, flux, 100.0, 7)


@pytest.mark.parametrize("bad", [0.0, -1.0, np.nan])
def test_bad_uncertainties_are_clear_errors(fixed_model, small_observation, bad):
    wl, flux = fixed_model
    c, f, s = small_observation
    s = s.copy()
    s[10] = bad
    with pytest.raises(ValueError, match="uncertainties must be finite and > 0"):
        fit((wl, flux), _spectrum(c, f, s), FitSettings(resolving_power=55_000.0, **SMALL))


def test_data_outside_the_model_is_a_clear_error(fixed_model, small_observation):
    wl, flux = fixed_model
    c, f, s = small_observation
    with pytest.raises(ValueError, match="model covers"):
        fit((wl, flux), _spectrum(c + 200.0, f, s), FitSettings(resolving_power=55_000.0, **SMALL))


def test_an_order_with_no_valid_pixel_is_named(fixed_model, small_observation):
    wl, flux = fixed_model
    c, f, s = small_observation
    spec = ObservedSpectrum(
        wavelength=np.stack([c, c]),
        flux=np.stack([f, f]),
        uncertainty=np.stack([s, s]),
        valid=np.stack([np.ones(c.size, bool), np.zeros(c.size, bool)]),
        orders=(3, 4),
    )
    with pytest.raises(ValueError, match="order 4 has no valid pixel"):
        fit((wl, flux), spec, FitSettings(resolving_power=55_000.0, **SMALL))


def test_berv_from_header_and_its_errors(fixed_model, small_observation):
    wl, flux = fixed_model
    c, f, s = small_observation
    with pytest.raises(ValueError, match="records no barycentric correction"):
        fit((wl, flux), _spectrum(c, f, s), FitSettings(berv_kms="header", **SMALL))
    with pytest.raises(ValueError, match="'header'"):
        FitSettings(berv_kms="heading")
    # HPF's BRVCORR is in m/s.
    assert F.header_berv({"BRVCORR": -27523.7}) == (pytest.approx(-27.5237), "header BRVCORR")
    assert F.header_berv({"BERV": 3.2}) == (3.2, "header BERV")


def test_berv_shifts_the_fitted_rv(fixed_model, small_observation):
    """Data in the topocentric frame: the fitted barycentric RV is rv_topo (+) berv."""
    wl, flux = fixed_model
    c, f, s = small_observation
    settings = FitSettings(resolving_power=55_000.0, rv_kms=10.0, **SMALL)
    a = fit((wl, flux), _spectrum(c, f, s), settings)
    b = fit((wl, flux), _spectrum(c, f, s), settings, berv_kms=-20.0)
    c_kms = 299_792.458
    # (1 + z_bary) = (1 + z_topo)(1 + berv / c): in velocity, close to rv_topo + berv.
    assert b.values["rv_kms"] == pytest.approx(a.values["rv_kms"] - 20.0, abs=0.01)
    assert b.berv_kms == -20.0 and b.berv_source == "given"
    assert abs(b.values["rv_kms"] - (a.values["rv_kms"] - 20.0)) < 30 * 20 / c_kms * 100


def test_systematic_floor_is_added_in_quadrature(fixed_model, small_observation):
    """The same fit with a floor: the same values, errors sqrt(stat^2 + floor^2) where a floor
    is set and the parameter fitted, the Laplace errors kept; a fixed parameter stays NaN."""
    wl, flux = fixed_model
    c, f, s = small_observation
    settings = FitSettings(resolving_power=55_000.0, rv_kms=10.0, **SMALL)
    floors = {"rv_kms": 0.05, "resolving_power": 1000.0, "teff": 60.0}
    a = fit((wl, flux), _spectrum(c, f, s), settings)
    b = fit((wl, flux), _spectrum(c, f, s), settings, systematic_errors=floors)
    assert b.values == a.values
    assert b.errors_stat == pytest.approx(a.errors, nan_ok=True)
    assert b.errors["rv_kms"] == pytest.approx(np.hypot(a.errors["rv_kms"], 0.05), rel=1e-12)
    assert b.errors["vsini_kms"] == a.errors["vsini_kms"]  # no floor set
    assert np.isnan(b.errors["resolving_power"]) and np.isnan(b.errors["teff"])  # not fitted
    assert a.systematic_errors is None and b.systematic_errors == {
        "teff": 60.0,
        "rv_kms": 0.05,
        "resolving_power": 1000.0,
    }
    out = b.to_json()
    assert out["rv_kms_err"] == b.errors["rv_kms"]
    assert out["rv_kms_err_stat"] == a.errors["rv_kms"]
    assert out["vsini_kms_err_stat"] == a.errors["vsini_kms"]
    assert out["systematic_errors"] == b.systematic_errors
    plain = a.to_json()  # no floor: the JSON as before
    assert "systematic_errors" not in plain and not any(k.endswith("_stat") for k in plain)


def test_with_floor():
    assert F.with_floor(3.0, 4.0) == 5.0
    assert F.with_floor(3.0, 0.0) == 3.0
    assert np.isnan(F.with_floor(np.nan, 4.0))
    np.testing.assert_allclose(F.with_floor(np.array([0.0, 3.0, np.nan]), 4.0), [4, 5, np.nan])


@pytest.mark.parametrize(
    ("floors", "error", "match"),
    [
        ({"tef": 60.0}, ValueError, "unknown parameter.*'tef'.*teff, logg"),
        ({"teff": -1.0}, ValueError, r"systematic_errors\['teff'\] must be finite and >= 0"),
        ({"logg": float("nan")}, ValueError, "finite and >= 0"),
        ({"feh": float("inf")}, ValueError, "finite and >= 0"),
        ({"feh": "a lot"}, ValueError, "must be a number"),
        ([("teff", 60.0)], TypeError, "mapping"),
    ],
)
def test_systematic_errors_are_validated(floors, error, match):
    with pytest.raises(error, match=match):
        FitSettings(systematic_errors=floors)


def test_systematic_errors_setting_is_normalised():
    s = FitSettings(systematic_errors={"feh": 0.03, "teff": 60})
    assert s.systematic_errors == {"teff": 60.0, "feh": 0.03}
    assert list(s.systematic_errors) == ["teff", "feh"]  # PARAMETERS order
    assert s.systematic_error("teff") == 60.0 and s.systematic_error("logg") == 0.0
    assert FitSettings().systematic_errors is None
    hash(s)  # still hashable (frozen settings)
    assert s == FitSettings(systematic_errors={"teff": 60.0, "feh": 0.03})
    assert s != FitSettings()


def test_settings_are_validated():
    with pytest.raises(ValueError, match="continuum_degree"):
        FitSettings(continuum_degree=-1)
    with pytest.raises(ValueError, match="vsini_kms"):
        FitSettings(vsini_kms=500.0)
    with pytest.raises(ValueError, match="limb_darkening"):
        FitSettings(limb_darkening=1.5)
    with pytest.raises(TypeError, match="unknown search option"):
        F._split_options(None, None, None, {"n_randm": 3})


def test_layout_transforms_round_trip():
    layout = F._layout(
        dict(teff=5000.0, logg=4.0, feh=0.0, rv_kms=1.0, vsini_kms=2.0, resolving_power=5e4),
        ("teff", "logg", "rv_kms", "vsini_kms", "resolving_power"),
        np.array([[4000.0, 6000.0], [3.0, 5.0], [-0.5, 0.0]]),
    )
    values = dict(
        teff=5321.0, logg=3.3, feh=0.0, rv_kms=-7.5, vsini_kms=0.02, resolving_power=61_000.0
    )
    u = layout.to_unconstrained(values)
    back = layout.to_physical(jnp.asarray(u))
    for name in layout.free:
        assert float(back[name]) == pytest.approx(values[name], rel=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isfinite(layout.to_unconstrained({**values, "vsini_kms": 0.0})).all()
