"""Completing clones across the grid: the plan (which lines each point gets) and a refit."""

import numpy as np
import pytest

from jblase.complete import CompletionSettings, completion_plan
from jblase.grids.base import GridPoint
from jblase.linelist import LineList

WL = 8500.0 * (1 + 1 / 500_000) ** np.arange(4000)


def _lines(pixels, ln_a, identity=None):
    c = WL[np.asarray(pixels, dtype=int)]
    n = c.size
    return LineList(
        c, np.full(n, ln_a), np.full(n, np.log(0.02)), np.full(n, np.log(0.01)), identity
    )


def test_each_point_gets_its_neighbours_lines_it_lacks():
    # A 3 x 1 x 1 grid in Teff: line A everywhere (shifting by a pixel), line B only at the
    # coolest point, line C only at the hottest.
    points = [GridPoint(4000.0, 4.0, 0.0), GridPoint(4500.0, 4.0, 0.0), GridPoint(5000.0, 4.0, 0.0)]
    lines = [_lines([1000, 2000], -3.0), _lines([1001], -4.0), _lines([1000, 3000], -5.0)]
    plan = completion_plan(points, lines, WL, CompletionSettings(start_fraction=0.1))
    # 4000 K lacks C, but 5000 K is two steps away: not a neighbour. 4500 K gets B and C.
    assert [len(p) for p in plan] == [2, 3, 2]
    ident = [set(np.asarray(p.identity_center).round(3).tolist()) for p in plan]
    assert ident[0] | ident[2] == ident[1]
    assert len(ident[0] & ident[1] & ident[2]) == 1  # line A: one identity despite the shift
    mid = plan[1]
    by_center = dict(
        zip(np.asarray(mid.center).round(6), np.asarray(mid.ln_amplitude), strict=True)
    )
    # Added lines start at a tenth of the nearest neighbour's amplitude, at its centre.
    assert by_center[round(WL[2000], 6)] == pytest.approx(-3.0 + np.log(0.1))
    assert by_center[round(WL[3000], 6)] == pytest.approx(-5.0 + np.log(0.1))
    # Own lines keep their tuned values.
    assert by_center[round(WL[1001], 6)] == pytest.approx(-4.0)
    for p in plan:
        assert np.unique(np.asarray(p.identity_center)).size == len(p)


def test_kept_identities_are_the_clones_own_even_where_centres_moved():
    # Propagated clones: one line whose tuned centre drifted 5 pixels between the points (a
    # match within 2 pixels would split it) keeps the identity it inherited.
    points = [GridPoint(4000.0, 4.0, 0.0), GridPoint(4500.0, 4.0, 0.0)]
    a = _lines([1000, 2000], -3.0, identity=np.round(WL[[1000, 2000]], 3))
    b = _lines([1005], -4.0, identity=np.round(WL[[1000]], 3))
    matched = completion_plan(points, [a, b], WL, CompletionSettings(identities="match"))
    kept = completion_plan(points, [a, b], WL, CompletionSettings(identities="keep"))
    n_ident = lambda plan: len({float(x) for p in plan for x in np.asarray(p.identity_center)})  # noqa: E731
    assert n_ident(matched) == 3 and n_ident(kept) == 2
    assert [len(p) for p in kept] == [2, 2]  # 4500 K gets the 2000-pixel line only
    np.testing.assert_array_equal(
        np.asarray(kept[1].identity_center), np.round(WL[[1000, 2000]], 3)
    )
    twice = _lines([1005, 1010], -4.0, identity=np.round(WL[[1000, 1000]], 3))
    with pytest.raises(ValueError, match="identities"):
        CompletionSettings(identities="guess")
    with pytest.raises(ValueError, match="distinct identities"):
        completion_plan(points, [a, twice], WL, CompletionSettings(identities="keep"))


def test_neighbours_span_every_axis_and_the_nearest_one_is_the_source():
    points = [GridPoint(t, g, 0.0) for t in (4000.0, 4500.0) for g in (4.0, 4.5)]
    # Line at pixel 500 present at (4500, 4.0) with ln a = -2 and at (4500, 4.5) with -6;
    # the point (4000, 4.0) is one step from the first and diagonal from the second.
    lines = [_lines([], 0.0), _lines([], 0.0), _lines([500], -2.0), _lines([500], -6.0)]
    plan = completion_plan(points, lines, WL, CompletionSettings(start_fraction=0.5))
    assert [len(p) for p in plan] == [1, 1, 1, 1]
    assert float(plan[0].ln_amplitude[0]) == pytest.approx(-2.0 + np.log(0.5))
    assert float(plan[1].ln_amplitude[0]) == pytest.approx(-6.0 + np.log(0.5))


def test_settings_are_checked():
    with pytest.raises(ValueError, match="start_fraction"):
        CompletionSettings(start_fraction=0.0)
    with pytest.raises(ValueError, match="identities"):
        CompletionSettings(identities="guess")


# ----------------------------------------------------------------- a small grid, end to end


@pytest.fixture(scope="module")
def small_grid(tmp_path_factory):
    """Three Teff nodes 500 K apart (one log g, one [Fe/H]) over 200 A, cloned and completed."""
    from jblase.clone import CloneSettings
    from jblase.complete import complete_grid
    from jblase.grids.phoenix import PhoenixGrid
    from jblase.grids.synthetic import SyntheticGridModel, write_grid
    from jblase.pipeline import clone_grid

    root = tmp_path_factory.mktemp("complete")
    model = SyntheticGridModel(wl_range=(8450.0, 8650.0), n_lines=600, seed=3)
    write_grid(root / "grid", (5000.0, 5500.0, 6000.0), (4.5,), (0.0,), model=model, progress=False)
    grid = PhoenixGrid(root / "grid")
    settings = CloneSettings(epochs=40, wing_cut=1500, compute_dtype="float32", residual_rounds=0)
    clone_grid(grid, root / "clones", settings, progress=False)
    summary = complete_grid(
        grid, root / "clones", root / "completed", CompletionSettings(epochs=40), progress=False
    )
    return {"root": root, "model": model, "grid": grid, "summary": summary}


def test_completed_clones_hold_every_neighbouring_line(small_grid):
    from jblase.manifold import build_manifold

    root = small_grid["root"]
    assert small_grid["summary"]["completed"] == 3
    before = build_manifold(root / "clones", progress=False)
    after = build_manifold(root / "completed", progress=False)

    def corners_present(manifold):
        """Share of cell corners holding the line, over the cells a line touches."""
        pres = np.asarray(manifold.present)[:, :, 0, 0]
        return (pres[:, :-1] & pres[:, 1:]).sum() / (pres[:, :-1] | pres[:, 1:]).sum()

    # Every identity of the completed clones is present at two adjacent nodes at least: a
    # line detected at one node was added at its neighbour. Independent clones leave many
    # lines at one node only.
    pres = np.asarray(after.present)[:, :, 0, 0]
    assert np.all((pres[:, :-1] & pres[:, 1:]).any(axis=1))
    assert (np.asarray(before.present).sum(axis=(1, 2, 3)) == 1).any()
    assert corners_present(after) > corners_present(before)
    # A rerun completes nothing (resumable) and refuses other settings.
    from jblase.complete import complete_grid

    again = complete_grid(
        small_grid["grid"],
        root / "clones",
        root / "completed",
        CompletionSettings(epochs=40),
        progress=False,
    )
    assert again["completed"] == 0 and again["done"] == 3
    with pytest.raises(ValueError, match="other settings"):
        complete_grid(
            small_grid["grid"],
            root / "clones",
            root / "completed",
            CompletionSettings(epochs=10),
            progress=False,
        )


def test_completion_brings_the_generator_closer_to_the_truth_between_grid_points(small_grid):
    """Off-grid truths (the simulator itself, between the nodes): the generator built from the
    completed clones is closer to them than the one from independent clones."""
    from .conftest import rms_to_the_simulator

    root = small_grid["root"]
    dirs = {name: root / name for name in ("clones", "completed")}
    errs = rms_to_the_simulator(dirs, small_grid["model"], (5200.0, 5700.0), 4.5, 0.0)
    for rms in ({name: v[i] for name, v in errs.items()} for i in range(2)):
        assert rms["completed"] < 0.75 * rms["clones"], rms
