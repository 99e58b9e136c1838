"""Tests for jblase.manifold: clone directories, the dense line manifold, its file format."""

from __future__ import annotations

import itertools
import json
import shutil
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jblase.clone import CloneResult, CloneSettings
from jblase.grids.base import GridPoint
from jblase.io import load_line_list
from jblase.linelist import LineList
from jblase.manifold import (
    ABSENT_LN_AMPLITUDE,
    Manifold,
    build_manifold,
    directory_size,
    is_clone_complete,
    list_clones,
    read_clones_manifest,
    read_clones_wavelength,
    write_clone,
    write_clones_manifest,
)

TEFF = (4000.0, 4500.0, 5000.0, 6000.0)  # non-uniform
LOGG = (4.0, 4.5)
FEH = (-0.5, 0.0)
SHAPE = (len(TEFF), len(LOGG), len(FEH))
SETTINGS = CloneSettings(wing_cut=64, epochs=3)
N_LINES = 12


def _truth(seed: int = 0):
    """Known line parameters (n_lines, T, G, Z, 4) in absolute centres, and presence."""
    rng = np.random.default_rng(seed)
    identity = np.sort(np.round(rng.uniform(8100.0, 8900.0, N_LINES), 2))
    assert np.unique(np.rint(identity * 100)).size == N_LINES
    present = rng.random((N_LINES, *SHAPE)) < 0.45
    present[0] = True  # everywhere
    present[1] = False
    present[1, 3, 1, 1] = True  # one corner only: fills come from far away
    present[2] = False
    present[2, :2] = True  # cool stars only: appears and vanishes along Teff
    present[3] = False
    present[3, 1, 0, 0] = True
    present[3, 2, 1, 1] = True  # two points, many ties in between
    for line in range(N_LINES):
        if not present[line].any():
            present[line, rng.integers(4), rng.integers(2), rng.integers(2)] = True
    values = np.empty((N_LINES, *SHAPE, 4))
    values[..., 0] = identity[:, None, None, None] + rng.uniform(-0.03, 0.03, present.shape)
    values[..., 1] = rng.uniform(-6.0, -0.5, present.shape)
    values[..., 2] = rng.uniform(-4.5, -3.0, present.shape)
    values[..., 3] = rng.uniform(-5.0, -3.0, present.shape)
    rms = rng.uniform(1e-4, 1e-3, SHAPE)
    return identity, present, values, rms


def _result(identity, values, keep, rms) -> CloneResult:
    order = np.random.default_rng(int(keep.sum())).permutation(int(keep.sum()))  # any order
    lines = LineList(
        center=values[keep, 0][order],
        ln_amplitude=values[keep, 1][order],
        ln_sigma=values[keep, 2][order],
        ln_gamma=values[keep, 3][order],
        identity_center=identity[keep][order],
    )
    return CloneResult(lines, rms, 2 * rms, np.array([3e-6, 2e-6, 1e-6]), SETTINGS)


def _write_grid(clones_dir, truth):
    identity, present, values, rms = truth
    write_clones_manifest(
        clones_dir, SETTINGS, np.linspace(8000.0, 9000.0, 101), {"grid": "hand-made"}
    )
    for (i, t), (j, g), (k, z) in itertools.product(*(enumerate(a) for a in (TEFF, LOGG, FEH))):
        keep = present[:, i, j, k]
        write_clone(
            clones_dir,
            GridPoint(t, g, z),
            _result(identity, values[:, i, j, k], keep, rms[i, j, k]),
        )


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    clones_dir = tmp_path_factory.mktemp("clones")
    truth = _truth()
    _write_grid(clones_dir, truth)
    return clones_dir, truth


@pytest.fixture(scope="module")
def manifold(grid):
    return build_manifold(grid[0], progress=False)


def _copy(grid, tmp_path):
    dst = tmp_path / "clones"
    shutil.copytree(grid[0], dst)
    return dst


def _nearest_reference(present_line: np.ndarray) -> np.ndarray:
    """Brute force: for every grid point, the nearest present point (ties: lowest flat index)."""
    points = list(itertools.product(*(range(n) for n in SHAPE)))
    out = np.empty(SHAPE, dtype=int)
    for p in points:
        best = None
        for flat, q in enumerate(points):
            if present_line[q]:
                d2 = sum((a - b) ** 2 for a, b in zip(p, q, strict=True))
                if best is None or d2 < best[0]:
                    best = (d2, flat)
        out[p] = best[1]
    return out


# ----------------------------------------------------------------- clone directories


def test_clone_directory_round_trip(grid):
    clones_dir, (identity, present, values, rms) = grid
    manifest = read_clones_manifest(clones_dir)
    assert manifest["format"] == "jblase-clones" and manifest["format_version"] == 1
    assert manifest["settings"] == SETTINGS.as_dict()
    assert manifest["source"] == {"grid": "hand-made"}
    np.testing.assert_array_equal(read_clones_wavelength(clones_dir), np.linspace(8000, 9000, 101))
    files = list_clones(clones_dir)
    assert list(files) == sorted(GridPoint(*p) for p in itertools.product(TEFF, LOGG, FEH))
    path = files[GridPoint(4500.0, 4.0, -0.5)]
    assert path.name == "T04500_g4.00_Z-0.5.npz"
    assert is_clone_complete(path)
    lines, meta = load_line_list(path)
    assert len(lines) == present[:, 1, 0, 0].sum() == meta["n_lines"]
    assert (meta["teff"], meta["logg"], meta["feh"]) == (4500.0, 4.0, -0.5)
    assert meta["rms"] == rms[1, 0, 0] and meta["rms_initial"] == 2 * rms[1, 0, 0]
    assert meta["loss_history"] == [3e-6, 2e-6, 1e-6]
    assert directory_size(clones_dir) == sum(p.stat().st_size for p in clones_dir.iterdir())


def test_list_clones_errors_and_ignores(grid, tmp_path):
    with pytest.raises(ValueError, match="no such clone directory"):
        list_clones(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="manifest.json: no clone manifest"):
        list_clones(tmp_path / "empty")
    clones_dir = _copy(grid, tmp_path)
    (clones_dir / "T07000_g4.00_Z+0.0.npz.tmp").write_bytes(b"half a fi")
    (clones_dir / "notes.npz").write_bytes(b"")
    assert len(list_clones(clones_dir)) == 16
    (clones_dir / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="format is 'other'"):
        read_clones_manifest(clones_dir)


def test_is_clone_complete_rejects_truncated(grid, tmp_path):
    src = list_clones(grid[0])[GridPoint(4000.0, 4.0, 0.0)]
    data = src.read_bytes()
    bad = tmp_path / src.name
    bad.write_bytes(data[: len(data) // 2])
    assert not is_clone_complete(bad)
    assert not is_clone_complete(tmp_path / "absent.npz")


# ----------------------------------------------------------------- building


def test_shapes_axes_identities(manifold, grid):
    identity, present, _, rms = grid[1]
    assert manifold.n_lines == N_LINES and manifold.shape == SHAPE
    assert manifold.params.shape == (N_LINES, *SHAPE, 4) and manifold.params.dtype == jnp.float32
    assert manifold.present.shape == (N_LINES, *SHAPE) and manifold.present.dtype == jnp.bool_
    assert manifold.identity_center.dtype == jnp.float64
    np.testing.assert_array_equal(manifold.identity_center, np.rint(identity * 100) / 100)
    for axis, want in zip(manifold.axes, (TEFF, LOGG, FEH), strict=True):
        np.testing.assert_array_equal(axis, want)
    np.testing.assert_array_equal(manifold.present, present)
    np.testing.assert_array_equal(manifold.rms, rms.astype(np.float32))
    np.testing.assert_array_equal(manifold.wavelength, np.linspace(8000, 9000, 101))
    assert manifold.settings == SETTINGS.as_dict()
    assert manifold.points()[0] == GridPoint(4000.0, 4.0, -0.5)
    assert manifold.points()[-1] == GridPoint(6000.0, 4.5, 0.0) and len(manifold.points()) == 16
    assert manifold.index_of(GridPoint(5000, 4.5, -0.5)) == (2, 1, 0)
    with pytest.raises(ValueError, match="not a grid value"):
        manifold.index_of((5500, 4.5, 0.0))


def test_present_values_are_the_clone_values(manifold, grid):
    identity, present, values, _ = grid[1]
    params = np.asarray(manifold.params)
    want = values.copy()
    want[..., 0] -= identity[:, None, None, None]
    want = want.astype(np.float32)
    np.testing.assert_array_equal(params[present], want[present])


def test_absent_lines_fill_from_nearest_present_point(manifold, grid):
    present = grid[1][1]
    params = np.asarray(manifold.params)
    assert np.isfinite(params).all()
    np.testing.assert_array_equal(params[~present][:, 1], ABSENT_LN_AMPLITUDE)
    flat = params.reshape(N_LINES, -1, 4)
    for line in range(N_LINES):
        src = _nearest_reference(present[line])
        for p in itertools.product(*(range(n) for n in SHAPE)):
            want = flat[line, src[p]]
            np.testing.assert_array_equal(params[line][p][[0, 2, 3]], want[[0, 2, 3]])


def test_line_counts_and_at_point(manifold, grid):
    identity, present, values, _ = grid[1]
    np.testing.assert_array_equal(manifold.line_counts(), present.sum(axis=0))
    for i, j, k in [(0, 0, 0), (3, 1, 1), (1, 0, 1)]:
        got = manifold.at_point(i, j, k)
        path = list_clones(grid[0])[GridPoint(TEFF[i], LOGG[j], FEH[k])]
        clone, _ = load_line_list(path)
        order = np.argsort(np.asarray(clone.identity_center))
        assert len(got) == len(clone)
        np.testing.assert_array_equal(got.identity_center, np.asarray(clone.identity_center)[order])
        np.testing.assert_allclose(got.center, np.asarray(clone.center)[order], rtol=0, atol=1e-6)
        for name in ("ln_amplitude", "ln_sigma", "ln_gamma"):
            want = np.asarray(getattr(clone, name))[order].astype(np.float32)
            np.testing.assert_array_equal(np.asarray(getattr(got, name), np.float32), want)


def test_interpolate_at_nodes_and_under_jit(manifold):
    f = eqx.filter_jit(lambda m, x: m.interpolate(x))
    for i, j, k in [(0, 0, 0), (2, 1, 0), (3, 1, 1)]:
        x = jnp.array([TEFF[i], LOGG[j], FEH[k]])
        np.testing.assert_array_equal(f(manifold, x), manifold.params[:, i, j, k])
    mid = f(manifold, jnp.array([5500.0, 4.25, -0.25]))
    np.testing.assert_allclose(mid, manifold.params[:, 2:, :, :].mean(axis=(1, 2, 3)), rtol=1e-5)


def test_duplicate_identities_keep_the_strongest(tmp_path):
    identity, present, values, rms = _truth(1)
    clones_dir = tmp_path / "dup"
    _write_grid(clones_dir, (identity, present, values, rms))
    point = GridPoint(4000.0, 4.0, -0.5)
    keep = present[:, 0, 0, 0]
    v = values[:, 0, 0, 0]
    line = int(np.argmax(keep))
    lines = LineList(
        center=np.r_[v[keep, 0], v[line, 0] + 0.001, v[line, 0] - 0.002],
        ln_amplitude=np.r_[v[keep, 1], v[line, 1] + 1.0, v[line, 1] - 1.0],
        ln_sigma=np.r_[v[keep, 2], -3.3, -3.4],
        ln_gamma=np.r_[v[keep, 3], -4.1, -4.2],
        identity_center=np.r_[identity[keep], identity[line], identity[line]],
    )
    write_clone(clones_dir, point, CloneResult(lines, 1e-4, 2e-4, np.zeros(0), SETTINGS))
    with pytest.warns(UserWarning, match="2 duplicate line identities in 1 clone files"):
        m = build_manifold(clones_dir, progress=False)
    got = np.asarray(m.params[line, 0, 0, 0])
    want = np.array([v[line, 0] + 0.001 - identity[line], v[line, 1] + 1.0, -3.3, -4.1])
    np.testing.assert_array_equal(got, want.astype(np.float32))
    assert m.line_counts()[0, 0, 0] == keep.sum()


def test_missing_points_error_or_fill(grid, tmp_path):
    clones_dir = _copy(grid, tmp_path)
    gone = [GridPoint(4500.0, 4.5, 0.0), GridPoint(6000.0, 4.0, -0.5)]
    for p in gone:
        (clones_dir / f"{p.label()}.npz").unlink()
    with pytest.raises(ValueError, match="2 of 16 points missing") as info:
        build_manifold(clones_dir, progress=False)
    assert all(p.label() in str(info.value) for p in gone)
    assert "fill_missing=True" in str(info.value)

    with pytest.warns(UserWarning, match="2 of 16 grid points have no clone"):
        m = build_manifold(clones_dir, fill_missing=True, progress=False)
    present = grid[1][1].copy()
    present[:, 1, 1, 1] = present[:, 3, 0, 0] = False
    present_lines = present.reshape(N_LINES, -1).any(axis=1)
    assert m.n_lines == present_lines.sum()  # a line seen only at a removed point is gone
    np.testing.assert_array_equal(m.present, present[present_lines])
    assert np.isnan(m.rms[1, 1, 1]) and np.isnan(m.rms[3, 0, 0])
    assert np.isfinite(np.asarray(m.rms)).sum() == 14
    params = np.asarray(m.params)
    assert np.isfinite(params).all()
    np.testing.assert_array_equal(params[:, 1, 1, 1, 1], ABSENT_LN_AMPLITUDE)
    for line in range(m.n_lines):
        src = _nearest_reference(np.asarray(m.present[line]))
        want = params[line].reshape(-1, 4)[src[1, 1, 1]]
        np.testing.assert_array_equal(params[line, 1, 1, 1, [0, 2, 3]], want[[0, 2, 3]])


def test_mixed_settings_are_refused(grid, tmp_path):
    clones_dir = _copy(grid, tmp_path)
    identity, present, values, rms = grid[1]
    result = _result(identity, values[:, 0, 0, 0], present[:, 0, 0, 0], 1e-4)
    result.settings = CloneSettings(wing_cut=128)
    write_clone(clones_dir, GridPoint(4000.0, 4.0, -0.5), result)
    with pytest.raises(ValueError, match=r"T04000_g4\.00_Z-0\.5\.npz: clone settings"):
        build_manifold(clones_dir, progress=False)


# ----------------------------------------------------------------- the manifold file


def test_save_load_round_trip_is_bit_exact(manifold, tmp_path):
    path = manifold.save(tmp_path / "m.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]
    loaded = Manifold.load(path)
    a_leaves, a_def = jax.tree_util.tree_flatten(manifold)
    b_leaves, b_def = jax.tree_util.tree_flatten(loaded)
    assert a_def == b_def and len(a_leaves) == 8
    for a, b in zip(a_leaves, b_leaves, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    assert loaded.settings == manifold.settings
    with np.load(path, allow_pickle=False) as npz:
        assert str(npz["format"]) == "jblase-manifold" and int(npz["format_version"]) == 1
        assert npz["params"].dtype == np.float32 and npz["present"].dtype == np.uint8
        assert len(str(npz["digest"])) == 64


def _resave(path, edit):
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    edit(arrays)
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def test_truncated_and_tampered_files_are_refused(manifold, tmp_path):
    path = manifold.save(tmp_path / "m.npz")
    data = path.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.npz: unreadable jblase manifold"):
        Manifold.load(cut)
    with pytest.raises(ValueError, match="no such file"):
        Manifold.load(tmp_path / "absent.npz")

    def tamper(arrays):
        arrays["params"] = arrays["params"].copy()
        arrays["params"][3, 1, 0, 1, 2] += np.float32(0.5)

    _resave(path, tamper)
    with pytest.raises(ValueError, match=r"m\.npz: SHA-256 digest mismatch"):
        Manifold.load(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda a: a.update(format=np.array("jblase-clone")), "format is 'jblase-clone'"),
        (lambda a: a.update(format_version=np.array(2)), "format version 2"),
        (lambda a: a.pop("rms"), r"missing arrays \['rms'\]"),
        (lambda a: a.pop("digest"), r"missing arrays \['digest'\]"),
    ],
)
def test_wrong_format_version_or_missing_arrays(manifold, tmp_path, edit, message):
    path = manifold.save(tmp_path / "m.npz")
    _resave(path, edit)
    with pytest.raises(ValueError, match=rf"m\.npz: {message}"):
        Manifold.load(path)


def test_build_is_quiet_without_duplicates_or_holes(grid):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_manifold(grid[0], progress=False)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_fill_is_the_same_in_any_chunking_and_key_dtype(grid, manifold, monkeypatch, dtype):
    import jblase.manifold as mf

    monkeypatch.setattr(mf, "_FILL_BUDGET", 1)  # one line per chunk
    monkeypatch.setattr(mf, "_key_dtype", lambda shape: dtype)
    small = build_manifold(grid[0], progress=False)
    np.testing.assert_array_equal(small.params, manifold.params)
