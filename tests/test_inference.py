import numpy as np
import pytest

from jblase.generator import Generator
from jblase.inference import infer
from jblase.search import RefineSettings, SearchSettings

from .test_generator import AXES, _random_manifold


@pytest.fixture(scope="module")
def generator():
    identity, values, wl = _random_manifold(n_lines=250, n_pix=9000, seed=11)
    return Generator.from_arrays(identity, values, AXES, wl, wing_cut=1500)


@pytest.fixture(scope="module")
def star(generator):
    truth = np.array([4730.0, 4.31, -0.22])
    wl = np.asarray(generator.wavelength)
    # Data on its own, coarser wavelength grid inside the model's range
    data_wl = np.linspace(wl[200], wl[-200], 4000)
    data = np.interp(data_wl, wl, np.asarray(generator(truth)))
    return truth, data_wl, data


def test_recovers_parameters_and_refinement_helps(generator, star):
    truth, wl, flux = star
    res = infer(generator, wl, flux, teff_prior=4800.0, n_random=60, n_guided=10, seed=0)
    gp = np.array([res.gp["teff"], res.gp["logg"], res.gp["feh"]])
    assert res.n_evaluations == 70
    assert res.loss <= res.gp["loss"]
    assert np.all(np.abs(res.params - truth) <= np.abs(gp - truth) + [1.0, 0.005, 0.005])
    assert abs(res.teff - truth[0]) < 10 and abs(res.logg - truth[1]) < 0.02
    assert abs(res.feh - truth[2]) < 0.02
    # The search box: Teff prior +- 500 K, log g and [Fe/H] over the whole grid.
    expected_box = [[4300.0, 5300.0], [AXES[1][0], AXES[1][-1]], [AXES[2][0], AXES[2][-1]]]
    assert res.bounds == expected_box
    assert set(res.seconds) == {"random", "gp", "refine", "total"}


def test_same_seed_same_answer(generator, star):
    _, wl, flux = star
    a = infer(generator, wl, flux, n_random=20, n_guided=3, refine=False, seed=4)
    b = infer(generator, wl, flux, n_random=20, n_guided=3, refine=False, seed=4)
    assert a.params.tolist() == b.params.tolist()


def test_settings_objects_and_keywords_are_one_interface(generator, star):
    _, wl, flux = star
    a = infer(generator, wl, flux, n_random=20, n_guided=0, refine=False, seed=4)
    b = infer(
        generator, wl, flux, search=SearchSettings(n_random=20, n_guided=0, seed=4), refine=False
    )
    c = infer(
        generator,
        wl,
        flux,
        search=SearchSettings(n_random=20, n_guided=0, seed=4),
        refine=RefineSettings(enabled=False),
    )
    assert a.params.tolist() == b.params.tolist() == c.params.tolist()
    assert a.n_evaluations == 20 and a.n_gradient_evaluations == 0
    with pytest.raises(TypeError, match="n_randm"):
        infer(generator, wl, flux, n_randm=20)
    with pytest.raises(ValueError, match="n_random"):
        SearchSettings(n_random=0)
    with pytest.raises(ValueError, match="max_iterations"):
        RefineSettings(max_iterations=0)


def test_float32_search_reports_float64_losses(generator, star):
    """The default float32 search finds the same cell as a float64 one; after refinement the
    reported loss is the float64 RMS at the reported parameters."""
    truth, wl, flux = star
    kw = dict(teff_prior=4800.0, n_random=40, n_guided=4, seed=2)
    fast = infer(generator, wl, flux, **kw)
    exact = infer(generator, wl, flux, search_dtype=None, **kw)
    assert generator.compute_dtype == "float64"
    assert abs(fast.gp["teff"] - exact.gp["teff"]) < 1.0
    model = np.interp(wl, np.asarray(generator.wavelength), np.asarray(generator(fast.params)))
    assert fast.loss == pytest.approx(np.sqrt(np.mean((model - flux) ** 2)), rel=1e-6)
    assert abs(fast.teff - truth[0]) < 10 and abs(fast.logg - truth[1]) < 0.02
    with pytest.raises(ValueError, match="search_dtype"):
        infer(generator, wl, flux, search_dtype="float16", **kw)


def test_nan_pixels_are_left_out_with_a_warning(generator, star):
    truth, wl, flux = star
    bad = flux.copy()
    bad[100:150] = np.nan
    with pytest.warns(UserWarning, match="50 non-finite flux pixels"):
        res = infer(generator, wl, bad, teff_prior=4800.0, n_random=30, n_guided=2, seed=1)
    assert res.n_masked_pixels == 50
    assert abs(res.teff - truth[0]) < 10 and abs(res.logg - truth[1]) < 0.02
    assert abs(res.feh - truth[2]) < 0.02
    # Read as flux 1 instead of left out, the 50 pixels (a line 0.95 deep) would hold the loss
    # at the truth at 0.022; left out, the data are the generator's own spectrum.
    assert res.loss < 1e-4
    with pytest.raises(ValueError, match="finite pixels"):
        infer(generator, wl, np.full_like(flux, np.nan))


def test_bad_requests_get_clear_errors(generator, star):
    _, wl, flux = star
    with pytest.raises(ValueError, match="beyond the generator's range"):
        infer(generator, wl + 500.0, flux)
    with pytest.raises(ValueError, match=r"teff_prior = 9000.0 K is outside the grid range"):
        infer(generator, wl, flux, teff_prior=9000.0)
    with pytest.raises(ValueError, match="strictly increasing"):
        infer(generator, wl[::-1], flux)


def test_pixels_outside_the_fitted_range_are_left_out():
    """A generator built from clones knows the range their loss covered (the manifold's range
    less 60 A at each end); inference gives the data outside it zero weight."""
    from jblase.inference import _prepare_data

    identity, values, wl = _random_manifold(n_lines=20, n_pix=9000, seed=3)
    lo, hi = float(wl[1000]), float(wl[8000])
    gen = Generator.from_arrays(identity, values, AXES, wl, wing_cut=500, fitted_range=(lo, hi))
    flux = np.ones(wl.size)
    flux[5] = np.nan
    with pytest.warns(UserWarning, match="1 non-finite"):
        _, _, weight, n_bad = _prepare_data(gen, wl, flux)
    np.testing.assert_array_equal(weight, ((wl > lo) & (wl < hi)).astype(float))
    assert n_bad == 1
    with pytest.raises(ValueError, match="inside the range the clones were fitted on"):
        _prepare_data(gen, wl[:900], flux[:900])
    assert Generator.from_arrays(identity, values, AXES, wl).fitted_range is None


def test_multistart_search_recovers_the_parameters(generator, star):
    """The throughput search: gradient fits from the best random points, no surrogate."""
    truth, wl, flux = star
    res = infer(
        generator, wl, flux, teff_prior=4800.0, n_random=60, method="multistart", n_starts=3
    )
    gp = np.array([res.gp["teff"], res.gp["logg"], res.gp["feh"]])
    # The search alone is already at the truth (its fits are gradient fits in float32).
    assert abs(gp[0] - truth[0]) < 10 and np.all(np.abs(gp[1:] - truth[1:]) < 0.02)
    assert abs(res.teff - truth[0]) < 10 and abs(res.logg - truth[1]) < 0.02
    assert res.n_evaluations > 60  # the random points plus the fits' evaluations
    with pytest.raises(ValueError, match="method"):
        infer(generator, wl, flux, method="annealing")
