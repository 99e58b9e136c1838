"""Line identities across a grid: jblase.identity against direct checks of its two rules."""

import numpy as np
import pytest

from jblase.identity import match_identities, unique_identities

#: A PHOENIX-like constant-resolving-power grid (R = 500,000) around 8600 A.
WL = 8500.0 * (1 + 1 / 500_000) ** np.arange(20_000)


def _pixels(idx):
    return WL[np.asarray(idx)]


def test_a_one_pixel_shift_keeps_one_identity_per_line():
    lines = np.sort(np.random.default_rng(0).choice(np.arange(100, 19_900, 10), 300, False))
    shifted = lines + np.random.default_rng(1).choice([-1, 0, 1], lines.size)
    match = match_identities([_pixels(lines), _pixels(shifted), _pixels(lines)], WL)
    assert match.n_groups == lines.size
    for g in match.groups:
        np.testing.assert_array_equal(g, np.arange(lines.size))
    assert match.lines_per_identity() == 3.0
    # The identity lies between the detections it groups (0.001 A rounding).
    lo = np.minimum(_pixels(lines), _pixels(shifted)) - 1e-3
    hi = np.maximum(_pixels(lines), _pixels(shifted)) + 1e-3
    assert np.all((match.identity >= lo) & (match.identity <= hi))


def test_two_lines_of_one_spectrum_are_never_merged():
    # One spectrum holds a pair one pixel apart; another spectrum holds one line between them.
    a = _pixels([1000, 1001, 5000])
    b = _pixels([1000, 5001])
    match = match_identities([a, b], WL, tolerance_px=3.0)
    assert len(set(match.groups[0].tolist())) == 3
    assert match.n_groups == 3


def test_no_group_takes_two_lines_of_one_spectrum_on_random_lists():
    rng = np.random.default_rng(3)
    spectra = [np.sort(_pixels(rng.integers(50, 19_950, 400))) for _ in range(12)]
    match = match_identities(spectra, WL, tolerance_px=4.0)
    for g in match.groups:
        assert np.unique(g).size == g.size
    # Lines further apart than the tolerance are different identities.
    flat = np.concatenate(spectra)
    group = np.concatenate(match.groups)
    step = np.interp(flat, WL, np.gradient(WL))
    for k in range(match.n_groups)[:200]:
        members = flat[group == k]
        assert members.max() - members.min() <= 4.0 * step[group == k].max() + 1e-12


def test_lines_beyond_the_tolerance_stay_apart():
    match = match_identities([_pixels([1000]), _pixels([1003])], WL, tolerance_px=2.0)
    assert match.n_groups == 2
    match = match_identities([_pixels([1000]), _pixels([1001])], WL, tolerance_px=2.0)
    assert match.n_groups == 1


def test_unique_identities_rounds_and_separates_collisions():
    out = unique_identities(np.array([8600.0001, 8600.0004, 8600.0004, 8600.5]))
    np.testing.assert_allclose(out, [8600.000, 8600.001, 8600.002, 8600.5], atol=1e-9)
    assert np.all(np.diff(out) > 0)


def test_bad_input():
    with pytest.raises(ValueError, match="finite"):
        match_identities([np.array([np.nan])], WL)
    with pytest.raises(ValueError, match="tolerance_px"):
        match_identities([_pixels([5])], WL, tolerance_px=-1)
