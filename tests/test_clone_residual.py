"""Residual-driven line addition in cloning, against spectra written directly in NumPy."""

import numpy as np
import pytest
from scipy.special import voigt_profile

from jblase.clone import CloneSettings, add_residual_lines, clone_spectrum
from jblase.linelist import LineList

#: 200 A at R = 500,000 near 8500 A: an active region (60 A inside either end) of 80 A.
WL = 8450.0 * (1 + 1 / 500_000) ** np.arange(11_700)


def _saturated(center, strength, sigma=0.03, gamma=0.01):
    """The flux of lines formed as 1 - 0.9 (1 - exp(-S V)) (a saturating law the pseudo-Voigt
    of a single clone line cannot follow), multiplied together."""
    flux = np.ones_like(WL)
    for c, s in zip(center, strength, strict=True):
        tau = s * voigt_profile(WL - c, sigma, gamma)
        flux *= 1.0 - 0.9 * (1.0 - np.exp(-tau))
    return flux


def test_a_missing_line_is_found_in_the_residual():
    centers = [8540.0, 8560.0]
    flux = _saturated(centers, [0.05, 0.01])
    # The list holds only the first line, at its true parameters' weak-line limit.
    one = LineList([8540.0], [np.log(0.045)], [np.log(0.03)], [np.log(0.01)])
    settings = CloneSettings(wing_cut=2000)
    out = add_residual_lines(WL, flux, one, settings)
    added = np.asarray(out.center)[np.abs(np.asarray(out.center) - 8560.0) < 0.05]
    assert added.size == 1
    step = 8560.0 / 500_000
    assert abs(added[0] - 8560.0) <= step  # the detector's pixel
    keys = np.rint(np.asarray(out.identity_center) * 1000)
    assert np.unique(keys).size == keys.size
    assert np.all(np.diff(np.asarray(out.center)) >= 0)


def test_a_minimum_separation_keeps_residual_lines_off_the_existing_ones():
    # Line 1 is in the list but at a third of its strength: its residual peaks on the line
    # itself. Line 2 is missing.
    flux = _saturated([8540.0, 8560.0], [0.05, 0.01])
    weak = LineList([8540.0], [np.log(0.015)], [np.log(0.03)], [np.log(0.01)])
    near = lambda out: np.abs(np.asarray(out.center) - 8540.0) < 0.05  # noqa: E731
    anywhere = add_residual_lines(WL, flux, weak, CloneSettings(wing_cut=2000))
    assert near(anywhere).sum() == 2  # the old line and one on top of it
    apart = CloneSettings(wing_cut=2000, residual_min_separation_px=3.0)
    out = add_residual_lines(WL, flux, weak, apart)
    assert near(out).sum() == 1 and np.asarray(out.center)[near(out)][0] == 8540.0
    assert (np.abs(np.asarray(out.center) - 8560.0) < 0.05).sum() == 1  # still found
    assert "residual_min_separation_px" in apart.as_dict()
    assert "residual_min_separation_px" not in CloneSettings().as_dict()  # old files compare
    with pytest.raises(ValueError, match="residual_min_separation_px"):
        CloneSettings(residual_min_separation_px=-1.0)


def test_an_identity_taken_by_the_spectrum_moves_by_a_thousandth():
    flux = _saturated([8560.0], [0.01])
    # An existing (far, weak) line already holds the identity the new detection would get.
    taken = np.round(WL[np.argmin(flux)], 2)
    lines = LineList(
        [8500.0], [np.log(1e-6)], [np.log(0.03)], [np.log(0.01)], identity_center=[taken]
    )
    out = add_residual_lines(WL, flux, lines, CloneSettings(wing_cut=2000))
    ident = np.sort(np.asarray(out.identity_center))
    assert len(out) == 2
    np.testing.assert_allclose(np.diff(ident), 0.001, atol=1e-9)


def test_residual_rounds_clone_saturated_lines_closer():
    rng = np.random.default_rng(0)
    centers = np.sort(rng.uniform(8515.0, 8585.0, 12))
    flux = _saturated(centers, rng.uniform(0.005, 0.3, 12))
    kw = dict(prominence=0.005, wing_cut=2000, epochs=60, compute_dtype="float64")
    single = clone_spectrum(WL, flux, residual_rounds=0, **kw)
    rounds = clone_spectrum(WL, flux, residual_rounds=1, **kw)
    assert single.loss_history.shape == (60,) and rounds.loss_history.shape == (120,)
    assert rounds.n_lines > single.n_lines
    assert rounds.rms_initial == single.rms_initial
    assert rounds.rms < 0.5 * single.rms, (rounds.rms, single.rms)


def test_settings_from_older_files():
    old = CloneSettings().as_dict()
    del old["residual_rounds"]
    assert CloneSettings.from_dict(old).residual_rounds == 0  # older files: one pass
    assert CloneSettings.from_dict(CloneSettings().as_dict()) == CloneSettings()
    with pytest.raises(ValueError, match="unknown clone settings"):
        CloneSettings.from_dict({**old, "colour": "blue"})
    with pytest.raises(ValueError, match="residual_rounds"):
        CloneSettings(residual_rounds=-1)
