"""Calibrating the systematic error floor of :attr:`jblase.fit.FitSettings.systematic_errors`.

The Laplace errors of :func:`jblase.fit.fit` treat the model as exact. The generator is not: it
interpolates between grid points, and its error there is correlated across pixels and does not
fall with S/N, so at high S/N the fitted stellar parameters scatter far more than their
Laplace errors. Surveys carry this as a per-parameter floor added in quadrature,
``sqrt(stat^2 + floor^2)``, calibrated on injections with known truths that are independent of
the data the floor is then applied to.

The criterion (:func:`systematic_floor`): the floor is the smallest value with which the
fraction of calibration truths inside the reported 1-sigma interval reaches ``coverage``
(68.27%, the Gaussian 1-sigma mass). Injection ``i`` (residual ``r_i = fit - truth``,
Laplace error ``s_i``) is inside once ``floor >= f_i = sqrt(max(r_i^2 - s_i^2, 0))``, so the
coverage is a non-decreasing step function of the floor and the solution is the
``coverage`` quantile of the ``f_i`` (0 when the Laplace errors already cover enough). For
Gaussian residuals of variance ``s^2 + F^2`` it is a consistent estimate of ``F``; being a
quantile, it does not let a few catastrophic fits inflate the floor, as a standard deviation
would. Its own uncertainty from ``n`` injections is roughly ``F / sqrt(n)`` or more
(:func:`bootstrap_floor`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = [
    "ONE_SIGMA",
    "bootstrap_floor",
    "calibrate_floors",
    "coverage",
    "systematic_floor",
]

#: The probability mass of a Gaussian within 1 sigma of its mean.
ONE_SIGMA = 0.6826894921370859


def _arrays(fitted, truth, stat):
    fitted, truth, stat = (np.asarray(a, dtype=float).ravel() for a in (fitted, truth, stat))
    if not fitted.shape == truth.shape == stat.shape:
        raise ValueError(
            f"fitted, truth and stat must have the same length, got {fitted.size}, {truth.size}, "
            f"{stat.size}"
        )
    if np.any(stat < 0):
        raise ValueError("stat errors must be >= 0")
    ok = np.isfinite(fitted) & np.isfinite(truth) & np.isfinite(stat)
    return fitted[ok], truth[ok], stat[ok]


def coverage(fitted, truth, errors) -> float:
    """The fraction of finite entries with ``|fitted - truth| <= errors`` (NaN if none)."""
    fitted, truth, errors = _arrays(fitted, truth, errors)
    if fitted.size == 0:
        return float("nan")
    return float(np.mean(np.abs(fitted - truth) <= errors))


def _floor(r, s, target: float) -> float:
    need = np.sqrt(np.clip(r * r - s * s, 0.0, None))  # the floor that covers each one
    # The smallest floor whose coverage is >= target: the ceil(target * n)-th smallest need.
    k = int(np.ceil(target * need.size - 1e-9))
    # 1 + 1e-12: so that sqrt(stat^2 + floor^2) >= |r| survives rounding.
    return float(np.sort(need)[max(k, 1) - 1]) * (1 + 1e-12)


def systematic_floor(fitted, truth, stat, coverage: float = ONE_SIGMA) -> float:
    """The floor ``F`` (units of the parameter) with which ``coverage`` of the truths lie inside
    ``fitted +- sqrt(stat^2 + F^2)``: the smallest such value (see the module docstring).

    Args:
        fitted, truth, stat: per-injection fitted values, truths and Laplace errors (arrays of
            one length; entries with any non-finite value are left out).
        coverage: the target fraction inside 1 sigma, in (0, 1).
    """
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must lie in (0, 1), got {coverage}")
    fitted, truth, stat = _arrays(fitted, truth, stat)
    if fitted.size == 0:
        raise ValueError("no injection with finite fitted value, truth and error")
    return _floor(fitted - truth, stat, coverage)


def calibrate_floors(
    fitted: Mapping[str, np.ndarray],
    truth: Mapping[str, np.ndarray],
    stat: Mapping[str, np.ndarray],
    coverage: float = ONE_SIGMA,
) -> dict[str, float]:
    """:func:`systematic_floor` of every parameter named in ``fitted``: a dict ready for
    :attr:`jblase.fit.FitSettings.systematic_errors` (or ``jblase fit --systematic-errors``)."""
    return {n: systematic_floor(fitted[n], truth[n], stat[n], coverage) for n in fitted}


def bootstrap_floor(
    fitted,
    truth,
    stat,
    coverage: float = ONE_SIGMA,
    n_resamples: int = 500,
    seed: int = 0,
) -> tuple[float, float]:
    """The 16th and 84th percentiles of :func:`systematic_floor` over bootstrap resamples of
    the injections: how well ``n`` calibration injections determine the floor."""
    fitted, truth, stat = _arrays(fitted, truth, stat)
    if fitted.size == 0:
        raise ValueError("no injection with finite fitted value, truth and error")
    rng = np.random.default_rng(seed)
    r = fitted - truth
    idx = rng.integers(0, r.size, size=(n_resamples, r.size))
    floors = [_floor(r[i], stat[i], coverage) for i in idx]
    lo, hi = np.percentile(floors, [16, 84])
    return float(lo), float(hi)
