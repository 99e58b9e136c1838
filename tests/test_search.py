"""The search stages against analytic objectives."""

import numpy as np
import pytest

from jblase.search import (
    RefineSettings,
    SearchSettings,
    distinct_starts,
    multistart_phase,
    refine_in_box,
)

BOX = np.array([[0.0, 10.0], [-1.0, 1.0]])


def _two_wells(x):
    """A shallow well at (2, 0.5) and the deeper, global one at (8, -0.5)."""
    a = np.sum(((x - [2.0, 0.5]) / [10.0, 2.0]) ** 2) * 40
    b = np.sum(((x - [8.0, -0.5]) / [10.0, 2.0]) ** 2) * 40 - 0.5
    return min(a, b)


def test_distinct_starts_take_the_best_points_apart_from_each_other():
    x0 = np.array([[2.0, 0.5], [2.1, 0.5], [8.0, -0.4], [5.0, 0.0], [9.9, 0.9]])
    y0 = np.array([0.1, 0.05, 0.3, np.nan, 0.2])
    s = SearchSettings(n_starts=3, start_separation=0.15)
    # 1 first (best); 0 is within 0.01 of it in unit coordinates; then 4 and 2; NaN never.
    assert distinct_starts(x0, y0, BOX, s).tolist() == [1, 4, 2]
    assert distinct_starts(x0, y0, BOX, SearchSettings(n_starts=1)).tolist() == [1]
    with pytest.raises(ValueError, match="non-finite"):
        distinct_starts(x0, np.full(5, np.nan), BOX, s)


def test_multistart_finds_the_global_well_from_a_start_in_it():
    def value_and_grad_unit(u):
        x = BOX[:, 0] + u * (BOX[:, 1] - BOX[:, 0])
        eps = 1e-6
        g = [
            (_two_wells(x + eps * e) - _two_wells(x - eps * e)) / (2 * eps) * span
            for e, span in zip(np.eye(2), BOX[:, 1] - BOX[:, 0], strict=True)
        ]
        return _two_wells(x), np.array(g)

    def fit_from(x):
        x_fit, n = refine_in_box(value_and_grad_unit, x, BOX, RefineSettings(max_iterations=50))
        return x_fit, _two_wells(x_fit), n

    # The best random point sits in the shallow well; the third best in the global one.
    x0 = np.array([[2.3, 0.4], [2.5, 0.6], [7.0, -0.2], [4.5, 0.0]])
    y0 = np.array([_two_wells(x) for x in x0])
    assert np.argmin(y0) == 0
    one = multistart_phase(fit_from, BOX, x0, y0, SearchSettings(n_starts=1))
    np.testing.assert_allclose(one.x, [2.0, 0.5], atol=1e-3)  # stuck in the shallow well
    many = multistart_phase(fit_from, BOX, x0, y0, SearchSettings(n_starts=3))
    np.testing.assert_allclose(many.x, [8.0, -0.5], atol=1e-3)
    assert many.loss == pytest.approx(-0.5, abs=1e-6) and many.n_evaluations > len(y0)


def test_search_settings_are_checked():
    for bad in ({"method": "annealing"}, {"n_starts": 0}, {"start_separation": -1.0}):
        with pytest.raises(ValueError):
            SearchSettings(**bad)
