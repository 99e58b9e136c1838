"""Propagating clones across the grid: the tree, and a small grid end to end."""

import numpy as np
import pytest

from jblase.grids.base import GridPoint
from jblase.propagate import PropagationSettings, propagation_tree


def _grid(teffs, loggs, fehs):
    return [GridPoint(t, g, z) for t in teffs for g in loggs for z in fehs]


def test_the_tree_runs_along_teff_from_the_middle_then_along_the_other_axes():
    points = _grid((4000.0, 4500.0, 5000.0, 5500.0, 6000.0), (4.0, 4.5, 5.0), (-0.5, 0.0))
    parent, depth = propagation_tree(points)
    pts = np.asarray(points)
    root = int(np.flatnonzero(parent < 0)[0])
    assert tuple(pts[root]) == (5000.0, 4.5, 0.0)  # the middle of every axis
    assert (parent < 0).sum() == 1
    # Depth is the number of index steps from the seed; each parent is one step closer and a
    # neighbour along exactly one axis.
    idx = np.stack([np.searchsorted(np.unique(pts[:, d]), pts[:, d]) for d in range(3)], 1)
    assert np.array_equal(depth, np.abs(idx - idx[root]).sum(1))
    for k in np.flatnonzero(parent >= 0):
        step = np.abs(idx[k] - idx[parent[k]])
        assert step.sum() == 1 and depth[parent[k]] == depth[k] - 1
    # The spine: points at the seed's log g and [Fe/H] descend from each other along Teff;
    # every other point's parent shares its Teff.
    for k in np.flatnonzero(parent >= 0):
        on_spine = pts[k, 1] == 4.5 and pts[k, 2] == 0.0
        moved = int(np.flatnonzero(idx[k] != idx[parent[k]])[0])
        assert moved == (0 if on_spine else (2 if pts[k, 2] != 0.0 else 1))


def test_the_tree_follows_the_given_axis_order_and_seed():
    points = _grid((4000.0, 4500.0, 5000.0), (4.0, 4.5), (0.0,))
    parent, depth = propagation_tree(points, seed=(4000.0, 4.0, 0.0), axis_order=(1, 0, 2))
    pts = np.asarray(points)
    assert tuple(pts[np.flatnonzero(parent < 0)[0]]) == (4000.0, 4.0, 0.0)
    assert depth.max() == 3
    # log g first from the seed, then Teff: (5000, 4.5) comes from (4500, 4.5).
    k = points.index(GridPoint(5000.0, 4.5, 0.0))
    assert points[parent[k]] == GridPoint(4500.0, 4.5, 0.0)


def test_the_tree_refuses_a_missing_seed_and_unjoined_points():
    points = _grid((4000.0, 4500.0), (4.0,), (0.0,))
    with pytest.raises(ValueError, match="seed"):
        propagation_tree(points, seed=(5000.0, 4.0, 0.0))
    # Diagonal points only: no path of one-axis neighbours.
    with pytest.raises(ValueError, match="not joined"):
        propagation_tree([GridPoint(4000.0, 4.0, 0.0), GridPoint(4500.0, 4.5, 0.0)])


def test_settings_are_checked():
    with pytest.raises(ValueError, match="axis_order"):
        PropagationSettings(axis_order=(0, 0, 1))
    with pytest.raises(ValueError, match="lr_schedule"):
        PropagationSettings(lr_schedule="warp")
    with pytest.raises(ValueError, match="residual_rounds"):
        PropagationSettings(residual_rounds=-1)
    with pytest.raises(ValueError, match="residual_min_separation_px"):
        PropagationSettings(residual_min_separation_px=-0.5)
    from jblase.clone import CloneSettings

    base = CloneSettings(residual_min_separation_px=1.0)
    assert PropagationSettings(residual_min_separation_px=3.0).clone_settings(base) == (
        CloneSettings(residual_min_separation_px=3.0)
    )
    assert PropagationSettings(residual_min_separation_px=None).clone_settings(base) == base


# ----------------------------------------------------------------- a small grid, end to end


@pytest.fixture(scope="module")
def small_grid(tmp_path_factory):
    """Three Teff nodes 500 K apart over 200 A, Milne-Eddington line formation (no clone line
    form matches it), cloned independently and propagated."""
    from jblase.clone import CloneSettings
    from jblase.grids.phoenix import PhoenixGrid
    from jblase.grids.synthetic import SyntheticGridModel, write_grid
    from jblase.pipeline import clone_grid
    from jblase.propagate import propagate_grid

    root = tmp_path_factory.mktemp("propagate")
    model = SyntheticGridModel(
        wl_range=(8450.0, 8650.0), n_lines=600, seed=3, line_formation="milne_eddington"
    )
    write_grid(root / "grid", (5000.0, 5500.0, 6000.0), (4.5,), (0.0,), model=model, progress=False)
    grid = PhoenixGrid(root / "grid")
    settings = CloneSettings(epochs=40, wing_cut=1500, compute_dtype="float32")
    clone_grid(grid, root / "clones", settings, progress=False)
    summary = propagate_grid(grid, root / "clones", root / "propagated", progress=False)
    return {"root": root, "model": model, "grid": grid, "summary": summary}


def test_every_point_inherits_its_parents_lines(small_grid):
    from jblase.io import load_line_list
    from jblase.manifold import list_clones
    from jblase.propagate import identity_presence

    root, summary = small_grid["root"], small_grid["summary"]
    assert summary["propagated"] == 3 and summary["levels"] == 2
    files = list_clones(root / "propagated")
    keys = {
        p: set(np.rint(np.asarray(load_line_list(f)[0].identity_center) * 1000).tolist())
        for p, f in files.items()
    }
    seed = GridPoint(5500.0, 4.5, 0.0)
    for p in files:
        assert keys[seed] <= keys[p], p  # no line of the seed is lost on the way
    # One decomposition: identities are shared across the grid more than independent clones
    # share theirs.
    before = identity_presence(root / "clones")
    assert summary["presence_fraction"] > before["presence_fraction"]


def test_propagation_resumes_and_refuses_other_settings(small_grid):
    from jblase.manifold import list_clones
    from jblase.propagate import propagate_grid

    root, grid = small_grid["root"], small_grid["grid"]
    files = list_clones(root / "propagated")
    stamp = {p: f.stat().st_mtime_ns for p, f in files.items()}
    lost = GridPoint(6000.0, 4.5, 0.0)
    files[lost].unlink()  # an interrupted run: one point not written
    again = propagate_grid(grid, root / "clones", root / "propagated", progress=False)
    assert again["propagated"] == 1 and again["done"] == 2
    after = list_clones(root / "propagated")
    assert all(after[p].stat().st_mtime_ns == stamp[p] for p in stamp if p != lost)
    with pytest.raises(ValueError, match="other settings"):
        propagate_grid(
            grid,
            root / "clones",
            root / "propagated",
            PropagationSettings(epochs=5),
            progress=False,
        )


def test_propagation_brings_the_generator_closer_to_the_truth_between_grid_points(small_grid):
    """Off-grid truths (the simulator, between the nodes): the generator built from the
    propagated clones is several times closer to them than the one from independent clones
    (whose residual lines differ from node to node)."""
    from .conftest import rms_to_the_simulator

    root = small_grid["root"]
    teffs = [
        lo + f * (hi - lo) for lo, hi in ((5000.0, 5500.0), (5500.0, 6000.0)) for f in (0.3, 0.6)
    ]
    dirs = {name: root / name for name in ("clones", "propagated")}
    errs = rms_to_the_simulator(dirs, small_grid["model"], teffs, 4.5, 0.0)
    med = {k: float(np.median(v)) for k, v in errs.items()}
    assert med["propagated"] < 0.5 * med["clones"], med


def test_propagation_needs_only_the_seeds_clone_and_names_it_when_missing(small_grid, tmp_path):
    import shutil

    from jblase.manifold import MANIFEST_NAME, WAVELENGTH_NAME, list_clones
    from jblase.propagate import propagate_grid, propagation_seed

    root, grid = small_grid["root"], small_grid["grid"]
    assert propagation_seed(grid.points()) == GridPoint(5500.0, 4.5, 0.0)
    files = list_clones(root / "clones")
    partial = tmp_path / "clones"
    partial.mkdir()
    for name in (MANIFEST_NAME, WAVELENGTH_NAME):
        shutil.copy2(root / "clones" / name, partial / name)
    shutil.copy2(files[GridPoint(5000.0, 4.5, 0.0)], partial)
    with pytest.raises(ValueError, match=r"no clone of the propagation seed \(5500.0, 4.5, 0.0\)"):
        propagate_grid(grid, partial, tmp_path / "out", progress=False)
    # Over a subset of the grid (here without 5500 K), from the one point cloned; only the
    # subset is written.
    out = propagate_grid(
        grid,
        partial,
        tmp_path / "out",
        PropagationSettings(epochs=5, residual_rounds=0, seed=(5000.0, 4.5, 0.0)),
        points=[GridPoint(5000.0, 4.5, 0.0), GridPoint(6000.0, 4.5, 0.0)],
        progress=False,
    )
    assert out["total"] == out["propagated"] == 2
    assert set(list_clones(tmp_path / "out")) == {
        GridPoint(5000.0, 4.5, 0.0),
        GridPoint(6000.0, 4.5, 0.0),
    }
