"""Tests for the embedded demo grid simulator and its PHOENIX-layout writer."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from astropy.io import fits
from scipy import constants
from scipy.integrate import trapezoid
from scipy.signal import find_peaks
from scipy.special import voigt_profile

from jblase.grids.phoenix import WAVELENGTH_FILENAME, PhoenixGrid, phoenix_relpath
from jblase.grids.synthetic import (
    D_MAX,
    SETTINGS_FILENAME,
    SyntheticGridModel,
    load_model,
    planck_flux,
    write_grid,
)

# A 100 A window (~5,800 pixels) with the default window's line density keeps tests fast.
WL_RANGE = (8500.0, 8600.0)
N_LINES = 800
TEFFS, LOGGS, FEHS = (5000.0, 6500.0), (4.5,), (-0.5, 0.0)


@pytest.fixture(scope="module")
def model() -> SyntheticGridModel:
    return SyntheticGridModel(wl_range=WL_RANGE, n_lines=N_LINES, seed=3)


@pytest.fixture(scope="module")
def grid_dir(tmp_path_factory, model):
    out = tmp_path_factory.mktemp("synthetic") / "grid"
    write_grid(out, TEFFS, LOGGS, FEHS, model=model, progress=False)
    return out


def n_detectable(spectrum: np.ndarray) -> int:
    return len(find_peaks(-spectrum, distance=4, prominence=0.005)[0])


def peak_depths(model: SyntheticGridModel, teff: float, logg: float, feh: float) -> np.ndarray:
    """Line-centre depth of every line on its own, shape (n_lines,)."""
    strength = model.line_strengths(teff, logg, feh)
    sigma, gamma = model.line_widths(teff, logg, feh)
    return D_MAX * -np.expm1(-strength * voigt_profile(0.0, sigma, gamma))


def grid_files(root) -> set[str]:
    return {
        os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files
    }


# --- wavelength sampling and determinism -----------------------------------------------------


def test_wavelength_has_constant_resolving_power(model):
    wl = model.wavelength()
    assert wl.dtype == np.float64 and wl.ndim == 1
    np.testing.assert_allclose(wl[:-1] / np.diff(wl), 500_000.0, rtol=1e-6)
    assert wl[0] == WL_RANGE[0]
    assert wl[-1] <= WL_RANGE[1] < wl[-1] * (1 + 1 / 500_000.0)


def test_default_window_size():
    wl = SyntheticGridModel().wavelength()
    # Constant R = 500,000 from 8350 A: every 8350 (1 + 1/R)^k <= 8850 A.
    n = int(np.floor(np.log(8850.0 / 8350.0) / np.log1p(1 / 500_000.0))) + 1
    assert wl.size == n  # 29,085 pixels
    assert wl[0] == 8350.0 and wl[-1] <= 8850.0 < wl[-1] * (1 + 1 / 500_000.0)


def test_deterministic_for_a_seed(model):
    again = SyntheticGridModel(wl_range=WL_RANGE, n_lines=N_LINES, seed=3)
    other = SyntheticGridModel(wl_range=WL_RANGE, n_lines=N_LINES, seed=4)
    a = model.line_spectrum(5500, 4.0, 0.0)
    np.testing.assert_array_equal(a, again.line_spectrum(5500, 4.0, 0.0))
    assert not np.allclose(a, other.line_spectrum(5500, 4.0, 0.0))


# --- the line spectrum -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "point", [(3000, 1.0, -2.0), (4000, 3.0, 0.0), (5777, 4.44, 0.3), (12000, 6.0, 1.0)]
)
def test_line_spectrum_is_in_unit_interval(model, point):
    f = model.line_spectrum(*point)
    assert f.shape == model.wavelength().shape and f.dtype == np.float64
    assert np.isfinite(f).all()
    assert (f > 0).all() and (f <= 1).all()
    assert f.min() >= (1 - D_MAX) ** 3  # no pixel under more than a few saturated lines


def test_windowed_evaluation_matches_dense_reference(model):
    """The fast path (each line only where its depth can exceed 1e-7) against all lines x pixels."""
    wl = model.wavelength()[2000:3500]
    for point in [(4000, 3.0, 0.0), (8000, 5.0, -0.5)]:
        strength = model.line_strengths(*point)
        sigma, gamma = model.line_widths(*point)
        x = wl[None, :] - model.lines.center[:, None]
        tau = strength[:, None] * voigt_profile(x, sigma[:, None], gamma[:, None])
        dense = np.prod(1.0 - D_MAX * -np.expm1(-tau), axis=0)
        fast = model.line_spectrum(*point, wavelength=wl)
        np.testing.assert_allclose(fast, dense, rtol=2e-5)


def test_custom_wavelengths_sample_the_same_spectrum(model):
    full = model.line_spectrum(6000, 4.0, 0.0)
    part = model.line_spectrum(6000, 4.0, 0.0, wavelength=model.wavelength()[100:900])
    np.testing.assert_allclose(part, full[100:900], rtol=1e-12)


def test_detectable_lines_fall_with_teff(model):
    counts = [n_detectable(model.line_spectrum(t, 4.5, 0.0)) for t in range(4000, 8001, 1000)]
    assert all(a > b for a, b in zip(counts, counts[1:], strict=False)) and counts[-1] > 0, counts


def test_detectable_lines_grow_with_metallicity(model):
    counts = [n_detectable(model.line_spectrum(5000, 4.5, z)) for z in (-1.0, -0.5, 0.0, 0.5)]
    assert counts == sorted(counts) and counts[0] < counts[-1], counts


#: Detectable: a depth of at least the detection prominence (jblase.detect, the paper's 0.005);
#: invisible: under a tenth of it.
DETECTABLE, INVISIBLE = 0.005, 0.0005


def test_lines_appear_and_vanish_across_teff(model):
    """Molecules dissociate in hot stars; hydrogen's n = 3 level (12.1 eV up) fills."""
    cool, hot = peak_depths(model, 4000, 4.5, 0.0), peak_depths(model, 8000, 4.5, 0.0)
    species = model.lines.species
    cn = species == model.species_names.index("CN")
    seen_cool = cn & (cool >= DETECTABLE)
    assert seen_cool.any() and np.all(hot[seen_cool] < INVISIBLE)
    hydrogen = species == model.species_names.index("H I")  # Paschen 13-15 in this window
    assert hydrogen.sum() == 3
    assert np.all(cool[hydrogen] < INVISIBLE) and np.all(hot[hydrogen] >= DETECTABLE)
    temps = range(4000, 8001, 1000)
    depths = np.array([peak_depths(model, t, 4.5, 0.0)[hydrogen] for t in temps])
    assert np.all(np.diff(depths, axis=0) > 0)


def test_gravity_shifts_ionisation_balance(model):
    """Ionised (Fe II) lines strengthen at low gravity; neutral Fe I lines weaken at 6000 K."""
    low, high = model.line_strengths(6000, 3.0, 0.0), model.line_strengths(6000, 5.0, 0.0)
    fe1 = model.lines.species == model.species_names.index("Fe I")
    fe2 = model.lines.species == model.species_names.index("Fe II")
    assert (low[fe2] > high[fe2]).all()
    assert (low[fe1] < high[fe1]).all()


def test_strong_lines_saturate_with_broad_wings(model):
    wl = model.wavelength()
    center = 8544.44  # Ca II infrared triplet
    i = np.searchsorted(wl, center)
    f = model.line_spectrum(5777, 4.44, 0.0)
    assert 1 - f[i - 5 : i + 5].min() == pytest.approx(D_MAX, abs=0.01)
    # 1 A (~60 pixels) from the core is over 20 Doppler widths: a Gaussian core's depth there
    # is below exp(-200); a detectable depth is the damping (Lorentzian) wing.
    wing = np.searchsorted(wl, center + 1.0)
    line = np.argmin(np.abs(model.lines.center - center))
    sigma, gamma = (w[line] for w in model.line_widths(5777, 4.44, 0.0))
    assert 1.0 > 20 * sigma and 1 - f[wing] > DETECTABLE
    # Saturated: 10x the calcium deepens the core invisibly (under the detection prominence)
    # and the wing far more; higher pressure (log g) broadens the wing too.
    rich = model.line_spectrum(5777, 4.44, 1.0)
    core_change = f[i - 5 : i + 5].min() - rich[i - 5 : i + 5].min()
    assert 0 <= core_change < DETECTABLE
    assert f[wing] - rich[wing] > core_change
    dense = model.line_spectrum(5777, 5.5, 0.0)
    assert dense[wing] < f[wing]


def test_pressure_broadening_grows_with_gravity(model):
    """Every line's Lorentzian width grows with log g; the Doppler width does not."""
    (s_low, g_low), (s_high, g_high) = (model.line_widths(5000, g, 0.0) for g in (3.0, 5.0))
    assert np.all(g_high > g_low)
    assert np.all(s_high <= s_low)  # giants have the larger microturbulence


def test_metal_lines_strengthen_with_metallicity(model):
    """Total absorption (equivalent width over the window) grows with [Fe/H]; the hydrogen
    lines, whose abundance does not scale with it, do not strengthen."""
    wl = model.wavelength()
    ews = [trapezoid(1 - model.line_spectrum(6500, 4.5, z), wl) for z in (-1.0, -0.5, 0.0, 0.5)]
    assert all(a < b for a, b in zip(ews, ews[1:], strict=False)), ews
    hydrogen = model.lines.species == model.species_names.index("H I")
    strengths = [model.line_strengths(6500, 4.5, z)[hydrogen] for z in (-1.0, 0.5)]
    assert np.all(strengths[1] <= strengths[0])


# --- continuum and flux ----------------------------------------------------------------------


def _brightness_temperature(flux: np.ndarray, wavelength_aa: np.ndarray) -> np.ndarray:
    """T (K) of the blackbody whose surface flux pi B_lambda(T) is ``flux`` (erg/s/cm^2/cm),
    from CODATA constants (scipy.constants, SI), independent of the simulator's own Planck."""
    lam = wavelength_aa * 1e-10
    b_si = flux * 0.1 / np.pi  # erg/s/cm^2/cm = 0.1 W/m^2/m
    x = 2 * constants.h * constants.c**2 / (lam**5 * b_si)
    return constants.h * constants.c / (lam * constants.k) / np.log1p(x)


@pytest.mark.parametrize("logg", [1.0, 4.44, 6.0])
@pytest.mark.parametrize("teff", [3000.0, 5777.0, 8000.0, 12000.0])
def test_continuum_is_a_blackbody_at_teff_within_the_grey_atmosphere_range(model, teff, logg):
    """A continuum forms between the surface and optical depth ~2. In the grey (Eddington)
    atmosphere, T^4 = 3/4 Teff^4 (tau + 2/3), its temperature there runs from 2^(-1/4) Teff =
    0.84 Teff to 2^(1/4) Teff = 1.19 Teff (and is Teff at tau = 2/3): the continuum's
    brightness temperature must lie in that range, and change smoothly with wavelength."""
    wl = model.wavelength()
    tb = _brightness_temperature(model.continuum(teff, logg, 0.0), wl) / teff
    assert np.all((tb > 2**-0.25) & (tb < 2**0.25)), (tb.min(), tb.max())
    # Smooth: a cubic in ln(lambda) follows it to 1e-4. A detectable line (depth 0.005) would
    # leave ~0.005 / (d ln B / d ln T) ~ 1e-3 there (d ln B / d ln T = x e^x / (e^x - 1) with
    # x = hc / (lambda k T) < 6.2 over this window and these Teff).
    u = np.log(wl / wl[0])
    cubic = np.polyval(np.polyfit(u, tb, 3), u)
    assert np.abs(tb - cubic).max() < 1e-4


def test_planck_flux_integrates_to_sigma_t4():
    wl = np.geomspace(500.0, 1e6, 200_000)
    total = trapezoid(planck_flux(wl, 5777.0), wl * 1e-8)
    assert total == pytest.approx(5.670374419e-5 * 5777.0**4, rel=1e-3)


def test_lines_only_absorb_and_gaps_reach_the_continuum(model):
    """Flux never exceeds the continuum (no emission), and between lines it reaches it."""
    point = (5500, 4.0, -0.5)
    ratio = model.flux(*point) / model.continuum(*point)
    assert np.all(ratio <= 1.0)
    assert ratio.max() > 1 - INVISIBLE


@pytest.mark.parametrize(
    ("point", "name"),
    [
        ((2500, 4.0, 0.0), "teff"),
        ((13000, 4.0, 0.0), "teff"),
        ((5000, 0.5, 0.0), "logg"),
        ((5000, 6.5, 0.0), "logg"),
        ((5000, 4.0, -2.5), "feh"),
        ((5000, 4.0, 1.5), "feh"),
        ((float("nan"), 4.0, 0.0), "teff"),
    ],
)
def test_parameters_outside_range_raise(model, point, name):
    for method in (model.line_spectrum, model.continuum, model.flux):
        with pytest.raises(ValueError, match=name):
            method(*point)


def test_bad_wavelength_raises(model):
    with pytest.raises(ValueError, match="increasing"):
        model.line_spectrum(5000, 4.0, 0.0, wavelength=np.array([8510.0, 8505.0, 8520.0]))


# --- settings --------------------------------------------------------------------------------


def test_settings_roundtrip(model):
    settings = json.loads(json.dumps(model.settings()))
    rebuilt = SyntheticGridModel.from_settings(settings)
    assert rebuilt == model
    np.testing.assert_array_equal(rebuilt.flux(6100, 3.7, -0.2), model.flux(6100, 3.7, -0.2))
    with pytest.raises(ValueError, match="version"):
        SyntheticGridModel.from_settings({**settings, "version": -1})


# --- the PHOENIX-layout grid -----------------------------------------------------------------


def test_write_grid_layout(grid_dir, model):
    points = [(t, g, z) for t in TEFFS for g in LOGGS for z in FEHS]
    expected = {WAVELENGTH_FILENAME, SETTINGS_FILENAME} | {phoenix_relpath(*p) for p in points}
    assert grid_files(grid_dir) == expected  # no temporary files left either

    with fits.open(grid_dir / WAVELENGTH_FILENAME) as hdul:
        assert hdul[0].data.dtype == np.dtype(">f8")
        np.testing.assert_array_equal(hdul[0].data, model.wavelength())
    for teff, logg, feh in points:
        with fits.open(grid_dir / phoenix_relpath(teff, logg, feh)) as hdul:
            header, data = hdul[0].header, hdul[0].data
            assert data.dtype == np.dtype(">f4")
            assert header["PHXTEFF"] == teff and header["PHXLOGG"] == logg
            assert header["PHXM_H"] == feh and header["PHXALPHA"] == 0.0
            expected_flux = model.flux(teff, logg, feh).astype(np.float32)
            np.testing.assert_array_equal(data, expected_flux)

    meta = json.loads((grid_dir / SETTINGS_FILENAME).read_text())
    assert meta["settings"] == model.settings() and meta["complete"] is True
    assert (meta["teffs"], meta["loggs"], meta["fehs"]) == (list(TEFFS), list(LOGGS), list(FEHS))


def test_load_model_rebuilds_the_writer(grid_dir, model, tmp_path):
    assert load_model(grid_dir) == model
    np.testing.assert_array_equal(load_model(grid_dir).wavelength(), model.wavelength())
    with pytest.raises(FileNotFoundError, match=SETTINGS_FILENAME):
        load_model(tmp_path)


def test_write_grid_resumes_without_rewriting(tmp_path, model):
    out = tmp_path / "grid"
    write_grid(out, TEFFS, LOGGS, FEHS, model=model, progress=False)
    missing = out / phoenix_relpath(TEFFS[0], LOGGS[0], FEHS[0])
    missing.unlink()  # as if interrupted before this file
    stamps = {f: os.stat(out / f).st_mtime_ns for f in grid_files(out) if f.endswith(".fits")}

    write_grid(out, TEFFS, LOGGS, FEHS, model=model, progress=False)
    assert missing.is_file()
    after = {f: os.stat(out / f).st_mtime_ns for f in grid_files(out) if f.endswith(".fits")}
    assert {f: after[f] for f in stamps} == stamps  # the others were not rewritten

    write_grid(out, TEFFS, LOGGS, FEHS, model=model, progress=False)
    again = {f: os.stat(out / f).st_mtime_ns for f in grid_files(out) if f.endswith(".fits")}
    assert again == after
    assert not [f for f in grid_files(out) if f.endswith(".tmp")]


def test_write_grid_refuses_another_model(grid_dir):
    other = SyntheticGridModel(wl_range=WL_RANGE, n_lines=N_LINES, seed=99)
    with pytest.raises(ValueError, match="another model"):
        write_grid(grid_dir, TEFFS, LOGGS, FEHS, model=other, progress=False)


def test_write_grid_rejects_off_range_points_before_writing(tmp_path, model):
    with pytest.raises(ValueError, match="teff"):
        write_grid(tmp_path / "g", (5000.0, 20000.0), LOGGS, FEHS, model=model, progress=False)
    assert not (tmp_path / "g").exists()


def test_write_grid_rejects_unnameable_values(tmp_path, model):
    with pytest.raises(ValueError, match="fehs value -0.25"):
        write_grid(tmp_path / "g", TEFFS, LOGGS, (-0.25, 0.0), model=model, progress=False)
    assert not (tmp_path / "g").exists()


def test_write_grid_never_touches_a_foreign_mirror(tmp_path, model):
    spectrum = tmp_path / phoenix_relpath(5000, 4.5, 0.0)
    spectrum.parent.mkdir(parents=True)
    spectrum.write_bytes(b"real PHOENIX data")
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="not written by"):
            write_grid(tmp_path, TEFFS, LOGGS, FEHS, model=model, overwrite=overwrite)
    assert spectrum.read_bytes() == b"real PHOENIX data"


def test_overwrite_with_another_model_replaces_every_spectrum(tmp_path, model):
    out = tmp_path / "grid"
    write_grid(out, TEFFS, LOGGS, FEHS, model=model, progress=False)
    other = SyntheticGridModel(wl_range=WL_RANGE, n_lines=N_LINES, seed=99)
    with pytest.raises(ValueError, match="would not replace"):
        write_grid(out, TEFFS[:1], LOGGS, FEHS, model=other, progress=False, overwrite=True)
    write_grid(out, TEFFS, LOGGS, FEHS, model=other, progress=False, overwrite=True)
    assert load_model(out) == other
    with fits.open(out / phoenix_relpath(TEFFS[0], LOGGS[0], FEHS[0])) as hdul:
        np.testing.assert_array_equal(
            hdul[0].data, other.flux(TEFFS[0], LOGGS[0], FEHS[0]).astype(np.float32)
        )


def test_phoenix_grid_reads_the_synthetic_grid(grid_dir, model):
    grid = PhoenixGrid(grid_dir)
    expected = sorted((t, g, z) for t in TEFFS for g in LOGGS for z in FEHS)
    assert [tuple(p) for p in grid.points()] == expected
    np.testing.assert_array_equal(grid.wavelength(), model.wavelength())
    for point in grid.points():
        flux = grid.load_flux(point)
        np.testing.assert_array_equal(flux, model.flux(*point).astype(np.float32))
