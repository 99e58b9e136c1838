"""The pieces of the fidelity yardstick (benchmarks/fidelity.py), on toy grids.

Pixel interpolation against scipy and against cases with known answers, the nearest grid point
against a brute-force search, the leave-one-out node dropping (spectra, points and clone
directory), the off-grid draw, and the scoring and summaries.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.interpolate import RegularGridInterpolator

from jblase.clone import CloneResult, CloneSettings
from jblase.grids.base import GridPoint
from jblase.linelist import LineList
from jblase.manifold import build_manifold, list_clones, write_clone, write_clones_manifest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fidelity  # noqa: E402

AXES = (
    np.array([4000.0, 4500.0, 5500.0, 7000.0]),  # non-uniform steps
    np.array([3.5, 4.0, 5.0]),
    np.array([-0.5, 0.0]),
)
N_PIX = 7


def random_cube(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.2, 1.0, (*(a.size for a in AXES), N_PIX))


def linear_cube(seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spectra linear in (Teff, log g, [Fe/H]): c0 + C @ p per pixel; returns (cube, c0, C)."""
    rng = np.random.default_rng(seed)
    c0, c = rng.normal(size=N_PIX), rng.normal(size=(N_PIX, 3)) * [1e-4, 0.1, 0.3]
    cube = c0 + fidelity.grid_points(AXES) @ c.T
    return cube.reshape(*(a.size for a in AXES), N_PIX), c0, c


def inside(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(a[0], a[-1], n) for a in AXES], axis=-1)


def test_pixel_interpolation_at_nodes_is_the_node_spectrum():
    cube = random_cube()
    got = fidelity.pixel_interpolate(cube, AXES, fidelity.grid_points(AXES))
    np.testing.assert_allclose(got, cube.reshape(-1, N_PIX), rtol=0, atol=1e-12)


def test_pixel_interpolation_at_cell_midpoints_is_the_corner_mean():
    cube = random_cube()
    mid = [(a[:-1] + a[1:]) / 2 for a in AXES]
    points = fidelity.grid_points(mid)
    corners = (
        cube[:-1, :-1, :-1] + cube[:-1, :-1, 1:] + cube[:-1, 1:, :-1] + cube[:-1, 1:, 1:]
    ) + (cube[1:, :-1, :-1] + cube[1:, :-1, 1:] + cube[1:, 1:, :-1] + cube[1:, 1:, 1:])
    expected = (corners / 8).reshape(-1, N_PIX)
    np.testing.assert_allclose(fidelity.pixel_interpolate(cube, AXES, points), expected, atol=1e-12)


def test_pixel_interpolation_is_exact_for_linear_spectra_and_matches_scipy():
    cube, c0, c = linear_cube()
    points = inside(25, seed=2)
    got = fidelity.pixel_interpolate(cube, AXES, points)
    np.testing.assert_allclose(got, c0 + points @ c.T, rtol=0, atol=1e-10)
    other = random_cube(3)
    scipy_interp = RegularGridInterpolator(AXES, other, method="linear")
    np.testing.assert_allclose(
        fidelity.pixel_interpolate(other, AXES, points), scipy_interp(points), atol=1e-12
    )


def test_nearest_index_is_the_nearest_grid_point():
    points = inside(40, seed=4)
    idx = fidelity.nearest_index(AXES, points)
    grid = fidelity.grid_points(AXES)
    for scale in ([1.0, 1.0, 1.0], [500.0, 0.5, 0.5]):  # any per-axis metric
        d2 = (((points[:, None, :] - grid[None, :, :]) / scale) ** 2).sum(-1)
        best = grid[np.argmin(d2, axis=1)]
        got = np.stack([AXES[d][idx[:, d]] for d in range(3)], axis=-1)
        np.testing.assert_array_equal(got, best)
    cube = random_cube()
    spectra = fidelity.nearest_spectra(cube, AXES, points)
    np.testing.assert_array_equal(spectra[0], cube[tuple(idx[0])])


def test_offgrid_points_fill_every_teff_cell_strictly_inside():
    points = fidelity.offgrid_points(AXES, 3, seed=9)
    assert points.shape == (3 * (AXES[0].size - 1), 3)
    np.testing.assert_array_equal(points, fidelity.offgrid_points(AXES, 3, seed=9))
    for d, a in enumerate(AXES):
        assert (points[:, d] > a[0]).all() and (points[:, d] < a[-1]).all()
        assert not np.isin(points[:, d], a).any()
    cells = np.searchsorted(AXES[0], points[:, 0]) - 1
    np.testing.assert_array_equal(np.bincount(cells), [3] * (AXES[0].size - 1))


@pytest.mark.parametrize("axis", [0, 1])
def test_leave_one_out_node_dropping(axis):
    """The dropped node's points and spectra line up, and interpolating across the gap is
    the neighbours' distance-weighted mean (exact for spectra linear in the parameters)."""
    cube = random_cube(5)
    i = 1
    points, spectra = fidelity.node_slice(AXES, cube, axis, i)
    assert points.shape == (cube.size // N_PIX // AXES[axis].size, 3)
    assert (points[:, axis] == AXES[axis][i]).all()
    for p, s in zip(points, spectra, strict=True):
        index = tuple(int(np.flatnonzero(AXES[d] == p[d])[0]) for d in range(3))
        np.testing.assert_array_equal(s, cube[index])
    sub_axes, sub_cube = fidelity.drop_node(AXES, cube, axis, i)
    assert AXES[axis][i] not in sub_axes[axis] and sub_axes[axis].size == AXES[axis].size - 1
    lo, node, hi = AXES[axis][i - 1 : i + 2]
    w = (hi - node) / (hi - lo)
    below = np.moveaxis(cube, axis, 0)[i - 1].reshape(-1, N_PIX)
    above = np.moveaxis(cube, axis, 0)[i + 1].reshape(-1, N_PIX)
    got = fidelity.pixel_interpolate(sub_cube, sub_axes, points)
    np.testing.assert_allclose(got, w * below + (1 - w) * above, atol=1e-12)
    linear, _, _ = linear_cube()
    lin_points, lin_true = fidelity.node_slice(AXES, linear, axis, i)
    sub_axes, sub_linear = fidelity.drop_node(AXES, linear, axis, i)
    np.testing.assert_allclose(
        fidelity.pixel_interpolate(sub_linear, sub_axes, lin_points), lin_true, atol=1e-10
    )


def _toy_clones(root: Path, teffs) -> Path:
    wl = np.linspace(8500.0, 8510.0, 50)
    settings = CloneSettings(epochs=1)
    write_clones_manifest(root, settings, wl)
    for n, t in enumerate(teffs):
        lines = LineList(
            center=np.array([8502.0, 8505.0 + 0.1 * n]),
            ln_amplitude=np.array([-2.0 - n, -3.0]),
            ln_sigma=np.full(2, -3.0),
            ln_gamma=np.full(2, -4.0),
            identity_center=np.array([8502.0, 8505.0 + 0.1 * n]),
        )
        result = CloneResult(lines, 1e-3 * (n + 1), 0.1, np.zeros(1), settings)
        write_clone(root, GridPoint(t, 4.5, 0.0), result)
    return root


def test_loo_clones_dir_is_the_grid_without_the_node(tmp_path):
    teffs = (5000.0, 5500.0, 6000.0)
    full = _toy_clones(tmp_path / "full", teffs)
    loo = fidelity.loo_clones_dir(full, tmp_path / "loo", [(5500.0, 4.5, 0.0)])
    assert set(list_clones(loo)) == {GridPoint(5000.0, 4.5, 0.0), GridPoint(6000.0, 4.5, 0.0)}
    assert set(list_clones(full)) == {GridPoint(t, 4.5, 0.0) for t in teffs}  # untouched
    got, want = build_manifold(loo, progress=False), build_manifold(full, progress=False)
    np.testing.assert_array_equal(np.asarray(got.axes[0]), [5000.0, 6000.0])
    np.testing.assert_allclose(np.asarray(got.rms)[:, 0, 0], [1e-3, 3e-3], rtol=1e-6)  # float32
    np.testing.assert_array_equal(np.asarray(got.identity_center), [8502.0, 8505.0, 8505.2])
    keep = np.isin(np.asarray(want.identity_center), np.asarray(got.identity_center))
    np.testing.assert_array_equal(
        np.asarray(got.params)[..., 1],
        np.asarray(want.params)[keep][:, [0, 2]][..., 1],
    )
    # Rebuilding replaces an existing directory.
    again = fidelity.loo_clones_dir(full, tmp_path / "loo", [(5000.0, 4.5, 0.0)])
    assert GridPoint(5500.0, 4.5, 0.0) in list_clones(again)
    assert GridPoint(5000.0, 4.5, 0.0) not in list_clones(again)


def test_scores_and_summaries():
    rng = np.random.default_rng(6)
    points = fidelity.offgrid_points(AXES, 2, seed=1)
    truth = rng.uniform(0.5, 1.0, (points.shape[0], N_PIX))
    active = np.array([False, True, True, True, True, True, False])
    offsets = np.linspace(0.001, 0.006, points.shape[0])
    predictors = {
        "gen_exact": lambda p: truth,
        "gen_offset": lambda p: truth + offsets[:, None] * np.where(active, 1.0, 100.0),
        fidelity.PIXEL: lambda p: truth + 0.0035,
        fidelity.NEAREST: lambda p: truth - 0.01,
    }
    scores = fidelity.evaluate(predictors, points, truth, active)
    np.testing.assert_allclose(scores["gen_exact"], 0.0, atol=1e-15)
    np.testing.assert_allclose(scores["gen_offset"], offsets, rtol=1e-9)  # active pixels only
    np.testing.assert_allclose(scores[fidelity.PIXEL], 0.0035, rtol=1e-9)
    rows = fidelity.point_rows(points, scores, cell="x")
    assert rows[0]["teff"] == points[0, 0] and rows[0]["cell"] == "x"
    assert rows[0]["rms_gen_offset"] == pytest.approx(offsets[0], rel=1e-9)
    for r in rows:
        r["cell"] = fidelity._cell_label(AXES[0], r["teff"])
    methods = list(predictors)
    summary = fidelity.summarise(rows, methods, "cell")
    overall = summary["overall"]
    assert overall["n"] == points.shape[0]
    assert overall["wins_gen_exact_vs_pixel"] == points.shape[0]
    assert overall["wins_gen_offset_vs_pixel"] == int((offsets < 0.0035).sum())
    assert overall["median_rms_nearest"] == pytest.approx(0.01)
    assert overall["median_rms_gen_offset"] == pytest.approx(np.median(offsets))
    assert list(summary["by_bin"]) == ["4000-4500", "4500-5500", "5500-7000"]
    assert all(b["n"] == 2 for b in summary["by_bin"].values())
    table = fidelity.table_rows(summary, methods, "Teff cell")
    assert [r["Teff cell"] for r in table] == [*summary["by_bin"], "all"]


def test_clone_settings_and_variants_from_the_command_line():
    args = fidelity.parse_args(
        ["--clone-epochs", "400", "--clone-set", "flux_tolerance=null", "learning_rate=1"]
    )
    settings = fidelity._clone_settings(CloneSettings(), args)
    assert settings.epochs == 400 and settings.flux_tolerance is None
    assert settings.learning_rate == 1.0 and isinstance(settings.learning_rate, float)
    assert fidelity.settings_key(settings.as_dict(), None) != fidelity.settings_key(
        CloneSettings().as_dict(), None
    )
    with pytest.raises(SystemExit, match="unknown CloneSettings"):
        fidelity._clone_settings(CloneSettings(), fidelity.parse_args(["--clone-set", "x=1"]))
    variants = fidelity._variants(fidelity.parse_args([]))
    assert variants == {
        "gen_linear": {"amplitude_interpolation": "linear"},
        "gen_log": {"amplitude_interpolation": "log"},
    }
    variant = "amplitude_interpolation=linear,flux_tolerance=null"
    args = fidelity.parse_args(
        [
            "--interpolation",
            "log",
            "--variants",
            variant,
            "--generator-set",
            "compute_dtype=float32",
        ]
    )
    assert fidelity._variants(args) == {
        "gen_log": {"amplitude_interpolation": "log", "compute_dtype": "float32"},
        "gen_amplitude_interpolation=linear_flux_tolerance=None": {
            "amplitude_interpolation": "linear",
            "flux_tolerance": None,
            "compute_dtype": "float32",
        },
    }
    assert isinstance(args, argparse.Namespace)
