"""The systematic-floor calibration (jblase.calibrate) on synthetic residuals of known floor."""

from __future__ import annotations

import numpy as np
import pytest

from jblase.calibrate import (
    ONE_SIGMA,
    bootstrap_floor,
    calibrate_floors,
    coverage,
    systematic_floor,
)
from jblase.fit import with_floor


def _draws(n, floor, seed=0):
    """Residuals from N(0, stat^2 + floor^2) with stat varying over 10-40 (Teff-like, K)."""
    rng = np.random.default_rng(seed)
    stat = rng.uniform(10.0, 40.0, n)
    truth = rng.uniform(4000.0, 7000.0, n)
    fitted = truth + np.hypot(stat, floor) * rng.standard_normal(n)
    return fitted, truth, stat


def test_recovers_a_known_floor():
    fitted, truth, stat = _draws(20_000, 50.0)
    floor = systematic_floor(fitted, truth, stat)
    assert floor == pytest.approx(50.0, rel=0.03)
    # By construction the floor reaches the target coverage, and a hair less does not.
    assert coverage(fitted, truth, with_floor(stat, floor)) >= ONE_SIGMA
    assert coverage(fitted, truth, with_floor(stat, 0.999 * floor)) < ONE_SIGMA
    # The Laplace errors alone cover far less.
    assert coverage(fitted, truth, stat) < 0.45


def test_small_calibration_sets_are_within_their_bootstrap_interval():
    fitted, truth, stat = _draws(40, 50.0, seed=3)
    floor = systematic_floor(fitted, truth, stat)
    lo, hi = bootstrap_floor(fitted, truth, stat, n_resamples=300, seed=1)
    assert lo <= floor <= hi
    assert 25.0 < floor < 80.0 and lo < 50.0 < hi


def test_no_floor_when_the_errors_are_already_right():
    fitted, truth, stat = _draws(20_000, 0.0, seed=1)
    assert systematic_floor(fitted, truth, stat) < 0.05 * np.median(stat)


def test_outliers_do_not_inflate_the_floor():
    fitted, truth, stat = _draws(10_000, 50.0, seed=2)
    fitted[:200] += 1e5  # 2% catastrophic fits
    assert systematic_floor(fitted, truth, stat) == pytest.approx(50.0, rel=0.08)


def test_exact_small_case():
    # Residuals 0, 3, 5, 13 with stat 4: the floors that cover each are 0, 0, 3, sqrt(153).
    truth = np.zeros(4)
    fitted = np.array([0.0, 3.0, 5.0, 13.0])
    stat = np.full(4, 4.0)
    assert systematic_floor(fitted, truth, stat, coverage=0.5) == 0.0
    assert systematic_floor(fitted, truth, stat, coverage=0.75) == pytest.approx(3.0)
    assert systematic_floor(fitted, truth, stat, coverage=0.9) == pytest.approx(np.sqrt(153))


def test_calibrate_floors_per_parameter_and_non_finite_entries():
    t_fit, t_true, t_stat = _draws(5000, 50.0, seed=4)
    g_fit, g_true, g_stat = _draws(5000, 0.0, seed=5)
    t_stat[:10] = np.nan  # failed Laplace errors are left out
    floors = calibrate_floors(
        {"teff": t_fit, "logg": g_fit},
        {"teff": t_true, "logg": g_true},
        {"teff": t_stat, "logg": g_stat},
    )
    assert list(floors) == ["teff", "logg"]
    assert floors["teff"] == pytest.approx(50.0, rel=0.06)
    # A zero floor is found as a small one (sampling: 68.3% +- 0.7% coverage of the stat
    # errors alone), negligible in quadrature with the stat errors.
    assert floors["logg"] < 0.25 * np.median(g_stat)


def test_bad_input():
    with pytest.raises(ValueError, match="same length"):
        systematic_floor([1.0, 2.0], [1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="coverage"):
        systematic_floor([1.0], [1.0], [1.0], coverage=1.0)
    with pytest.raises(ValueError, match="no injection"):
        systematic_floor([np.nan], [1.0], [1.0])
    with pytest.raises(ValueError, match=">= 0"):
        systematic_floor([1.0], [1.0], [-1.0])
