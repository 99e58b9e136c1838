"""The original code's .pt clones as a manifold: names, tables, identities, dir and zip sources."""

from __future__ import annotations

import shutil
import zipfile

import jax.numpy as jnp
import numpy as np
import pytest

from jblase.blase_archive import (
    BLASE_PROFILE,
    BLASE_WING_CUT,
    blase_grid_point,
    build_blase_manifold,
    is_blase_source,
    read_blase_clones,
    read_grid_table,
    read_wavelength_file,
)
from jblase.forward import synthesize_lines
from jblase.generator import Generator
from jblase.grids.base import GridPoint
from jblase.io import line_list_from_blase, read_blase_clone, write_spectrum

from .conftest import BLASE_CLONE, PHOENIX_NPZ, require
from .torch_format import write_state_dict

#: The grid of the hand-made clones: Teff (K), log g, [Fe/H] (dex).
AXES = ((4500.0, 4700.0), (4.0, 4.5), (-0.5, 0.0))
N_PIX = 6000
N_LINES = 40


def _wavelength() -> np.ndarray:
    return 8500.0 * (1 + 1 / 500_000) ** np.arange(N_PIX)


def _name(point: GridPoint) -> str:
    """The original code's file name: f"T{teff}G{logg}Z{feh}.pt" of its int/float values."""
    return f"T{point.teff:.0f}G{point.logg:.2f}Z{point.feh:.2f}.pt"


def _clones(seed: int = 0) -> dict[GridPoint, dict[str, np.ndarray]]:
    """State dicts in the original layout at every point of AXES.

    Each line's pre-optimisation centre is a pixel wavelength (as detection gives it) and the
    tuned centre moves by up to 0.02 A, so rounding the tuned centre would split one line into
    several identities. Every line is absent at some points."""
    rng = np.random.default_rng(seed)
    wl = _wavelength()
    pixels = np.sort(rng.choice(np.arange(300, N_PIX - 300, 8), N_LINES, replace=False))
    pre = wl[pixels]
    base = np.stack(
        [rng.uniform(-4.0, -1.0, N_LINES), np.log(rng.uniform(0.01, 0.04, N_LINES))], axis=1
    )
    out = {}
    for t in AXES[0]:
        for g in AXES[1]:
            for z in AXES[2]:
                keep = rng.random(N_LINES) < 0.8
                n = int(keep.sum())
                scale = 1 + (t - 4500.0) / 2000 + (g - 4.0) / 5 + z / 3
                out[GridPoint(t, g, z)] = {
                    "amplitudes": base[keep, 0] + np.log(scale),
                    "sigma_widths": base[keep, 1] + rng.normal(0, 0.05, n),
                    "gamma_widths": base[keep, 1] - 0.3 + rng.normal(0, 0.05, n),
                    "lam_centers": pre[keep] + rng.uniform(-0.02, 0.02, n),
                    "a_coeff": np.array(1.0),
                    "b_coeff": np.array(0.0),
                    "c_coeff": np.array(0.0),
                    "radial_velocity": np.array(0.0),
                    "pre_line_centers": pre[keep],
                }
    return out


def _write_dir(path, clones) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for point, state in clones.items():
        write_state_dict(path / _name(point), state)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """The hand-made clones as a directory and as a zip (in a sub-folder), the wavelengths as
    a .npy, and the manifold built from the directory."""
    root = tmp_path_factory.mktemp("blase")
    clones = _clones()
    _write_dir(root / "clones", clones)
    with zipfile.ZipFile(root / "clones.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted((root / "clones").iterdir()):
            zf.write(path, f"emulator_states/{path.name}")
    np.save(root / "wl.npy", _wavelength())
    manifold = build_blase_manifold(root / "clones", _wavelength(), progress=False)
    return {"root": root, "clones": clones, "manifold": manifold}


# ----------------------------------------------------------------- names and tables


@pytest.mark.parametrize(
    "name, point",
    [
        ("T4700G4.50Z0.00.pt", (4700.0, 4.5, 0.0)),
        ("T3000G5.0Z-0.5.pt", (3000.0, 5.0, -0.5)),
        ("T12000G6.00Z-0.50.pt", (12000.0, 6.0, -0.5)),
        ("T5000G4.5Z-0.0.pt", (5000.0, 4.5, 0.0)),
        ("some/folder/T2300G2.0Z+0.5.pt", (2300.0, 2.0, 0.5)),
    ],
)
def test_grid_point_from_the_original_file_name(name, point):
    got = blase_grid_point(name)
    assert got == GridPoint(*point)
    assert str(got.feh) != "-0.0"  # one grid value, one label


@pytest.mark.parametrize(
    "name",
    ["blase_clone_T4700_g4.50_Z0.0_prom0.01_HPF.pt", "T4700G4.50Z0.00.npz", "T4700G4.5.pt"]
    + ["t4700g4.5z0.0.pt", "T4700G4.50Z0.00.pt.tmp", "TxG4.5Z0.0.pt"],
)
def test_other_names_give_no_grid_point(name):
    assert blase_grid_point(name) is None


def test_grid_table(tmp_path):
    table = tmp_path / "grid.csv"
    table.write_text("File, Teff ,logg,feh\nclone_a.pt,4700,4.5,0\ndir/clone_b.pt,3000,5,-0.5\n\n")
    assert read_grid_table(table) == {
        "clone_a.pt": GridPoint(4700.0, 4.5, 0.0),
        "clone_b.pt": GridPoint(3000.0, 5.0, -0.5),
    }
    cases = {
        "file,teff,logg\na.pt,1,2\n": r"lacks column\(s\) \['feh'\]",
        "file,teff,logg,feh\na.pt,4700,x,0\n": "row 2: .* is not file,teff,logg,feh",
        "file,teff,logg,feh\na.pt,4700,nan,0\n": "row 2",
        "file,teff,logg,feh\na.pt,4700\n": "row 2",
        "file,teff,logg,feh\na.pt,1,2,3\nb.pt,1,2,3\na.pt,4,5,6\n": "row 4: 'a.pt' is listed twice",
        "": "empty grid table",
    }
    for text, message in cases.items():
        table.write_text(text)
        with pytest.raises(ValueError, match=message) as info:
            read_grid_table(table)
        assert str(table) in str(info.value)
    with pytest.raises(ValueError, match="no such grid table"):
        read_grid_table(tmp_path / "none.csv")


# ----------------------------------------------------------------- the manifold


def test_identities_are_the_rounded_pre_optimisation_centres(archive):
    m, clones = archive["manifold"], archive["clones"]
    pre = np.unique(np.concatenate([s["pre_line_centers"] for s in clones.values()]))
    np.testing.assert_array_equal(np.asarray(m.identity_center), np.unique(np.round(pre, 2)))
    assert m.n_lines == N_LINES  # rounding the tuned centres would give more
    assert m.shape == (2, 2, 2)
    for d, axis in enumerate(AXES):
        np.testing.assert_array_equal(np.asarray(m.axes[d]), axis)
    assert m.settings["profile"] == BLASE_PROFILE == "blase"
    assert m.settings["wing_cut"] == BLASE_WING_CUT == 6000
    assert np.isnan(np.asarray(m.rms)).all()  # the files do not record it
    for point, state in clones.items():
        lines = m.at_point(*m.index_of(point))
        np.testing.assert_allclose(lines.center, state["lam_centers"], rtol=0, atol=1e-6)
        np.testing.assert_array_equal(lines.identity_center, np.round(state["pre_line_centers"], 2))
        for field, key in [("ln_amplitude", "amplitudes"), ("ln_sigma", "sigma_widths")]:
            np.testing.assert_array_equal(getattr(lines, field), state[key].astype(np.float32))


def test_generator_reproduces_each_clone_at_its_grid_point(archive):
    """At every node the generator is the clone's own line list, synthesised with the original
    code's profile and window."""
    m, clones = archive["manifold"], archive["clones"]
    wl = _wavelength()
    gen = Generator.from_manifold(m)
    assert (gen.profile, gen.wing_cut) == ("blase", 6000)
    for point, state in clones.items():
        lines = line_list_from_blase(state).pad(N_LINES)  # one shape: one compilation
        want = synthesize_lines(
            wl, lines, wing_cut=6000, profile="blase", flux_tolerance=gen.flux_tolerance
        )
        got = gen(jnp.asarray(point))
        assert float(jnp.min(want)) < 0.9  # the lines are there
        # The manifold stores a and the centre offsets in float32: one rounding of each.
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_a_zip_gives_the_same_manifold(archive):
    from_zip = build_blase_manifold(archive["root"] / "clones.zip", _wavelength(), progress=False)
    m = archive["manifold"]
    for name in ("params", "present", "identity_center", "wavelength"):
        np.testing.assert_array_equal(
            np.asarray(getattr(from_zip, name)), np.asarray(getattr(m, name))
        )
    assert from_zip.settings == m.settings


def test_sources_and_their_errors(archive, tmp_path):
    root = archive["root"]
    assert is_blase_source(root / "clones") and is_blase_source(root / "clones.zip")
    assert not is_blase_source(tmp_path) and not is_blase_source(root / "wl.npy")

    bad = tmp_path / "bad"
    shutil.copytree(root / "clones", bad)
    shutil.copy(bad / "T4500G4.00Z-0.50.pt", bad / "my_clone.pt")
    with pytest.raises(ValueError, match=r"'my_clone.pt' names no grid point .* --table") as info:
        read_blase_clones(bad, progress=False)
    assert str(bad) in str(info.value)

    # A table names it: then it collides with the file already at that point.
    table = {"my_clone.pt": GridPoint(4500.0, 4.0, -0.5)}
    with pytest.raises(ValueError, match="'T4500G4.00Z-0.50.pt' and 'my_clone.pt' are both"):
        read_blase_clones(bad, table, progress=False)
    with pytest.raises(ValueError, match=r"lists 1 file\(s\) that .* lacks: \['gone.pt'\]"):
        read_blase_clones(root / "clones", {"gone.pt": GridPoint(1, 2, 3)}, progress=False)

    # A table moves a file to a new point; one point less elsewhere is a hole in the grid.
    (bad / "T4500G4.00Z-0.50.pt").unlink()
    table = {"my_clone.pt": GridPoint(4300.0, 4.0, -0.5)}
    with pytest.raises(ValueError, match="points missing"):
        build_blase_manifold(bad, _wavelength(), table=table, progress=False)
    with pytest.warns(UserWarning, match="have no clone"):
        m = build_blase_manifold(bad, _wavelength(), table=table, fill_missing=True, progress=False)
    assert m.shape == (3, 2, 2)

    (bad / "my_clone.pt").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="my_clone.pt: not a PyTorch zip checkpoint"):
        read_blase_clones(bad, table, progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no .pt clone files"):
        read_blase_clones(empty)
    with pytest.raises(ValueError, match="no such directory or file"):
        read_blase_clones(tmp_path / "none")
    with pytest.raises(ValueError, match="wing_cut must be >= 1"):
        build_blase_manifold(root / "clones", _wavelength(), wing_cut=0)


def test_a_zip_member_that_is_not_a_clone_is_named(archive, tmp_path):
    path = tmp_path / "broken.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("states/T4700G4.50Z0.00.pt", b"junk")
        zf.writestr("__MACOSX/states/._T4700G4.50Z0.00.pt", b"resource fork")
    with pytest.raises(ValueError, match=r"broken.zip/states/T4700G4.50Z0.00.pt: not a PyTorch"):
        read_blase_clones(path, progress=False)
    (tmp_path / "notzip.zip").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a zip archive of .pt clones"):
        read_blase_clones(tmp_path / "notzip.zip")


def test_missing_line_arrays_name_the_file(tmp_path):
    state = {"lam_centers": np.ones(3), "amplitudes": np.ones(3)}
    write_state_dict(tmp_path / "T4700G4.50Z0.00.pt", state)
    with pytest.raises(ValueError, match=r"T4700G4.50Z0.00.pt: blase state dict lacks"):
        read_blase_clones(tmp_path, progress=False)


# ----------------------------------------------------------------- the real clone


def test_the_real_clone_becomes_a_generator():
    """The published clone (no pre_line_centers: identities from its centres, with a warning)
    on the PHOENIX wavelengths of the real preprocessed spectrum (a part of its band)."""
    pt = require(BLASE_CLONE)
    wl = np.load(require(PHOENIX_NPZ))["wavelength"]
    point = GridPoint(4700.0, 4.5, 0.0)
    with pytest.warns(UserWarning, match="1 of 1 clones .* lack 'pre_line_centers'"):
        m = build_blase_manifold(pt, wl, table={pt.name: point}, progress=False)
    lines = read_blase_clone(pt)
    assert m.shape == (1, 1, 1) and m.n_lines == lines.n_lines == 9028
    np.testing.assert_array_equal(
        np.asarray(m.identity_center), np.round(np.asarray(lines.center), 2)
    )
    gen = Generator.from_manifold(m, wl_range=(8500.0, 8800.0))
    inside = (wl >= 8500.0) & (wl <= 8800.0)
    want = synthesize_lines(
        wl, lines, wing_cut=6000, profile="blase", flux_tolerance=gen.flux_tolerance
    )[inside]
    got = gen(jnp.asarray(point))
    assert float(jnp.min(want)) < 0.5
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


# ----------------------------------------------------------------- wavelength files


def test_wavelength_files(tmp_path):
    from astropy.io import fits

    wl = _wavelength()
    np.save(tmp_path / "wl.npy", wl)
    fits.PrimaryHDU(wl).writeto(tmp_path / "WAVE_PHOENIX-ACES-AGSS-COND-2011.fits")
    write_spectrum(tmp_path / "spec.csv", wl, np.ones_like(wl))
    write_spectrum(tmp_path / "spec.fits", wl, np.ones_like(wl))
    for name in ("wl.npy", "WAVE_PHOENIX-ACES-AGSS-COND-2011.fits", "spec.csv", "spec.fits"):
        np.testing.assert_array_equal(read_wavelength_file(tmp_path / name), wl)
    cropped = read_wavelength_file(tmp_path / "wl.npy", (8510.0, 8520.0))
    np.testing.assert_array_equal(cropped, wl[(wl >= 8510.0) & (wl <= 8520.0)])

    np.save(tmp_path / "bad.npy", wl[::-1])
    with pytest.raises(ValueError, match="bad.npy must be strictly increasing"):
        read_wavelength_file(tmp_path / "bad.npy")
    with pytest.raises(ValueError, match=r"keeps 0 pixel\(s\)"):
        read_wavelength_file(tmp_path / "wl.npy", (100.0, 200.0))
    (tmp_path / "wl.txt").write_text("1\n2\n")
    with pytest.raises(ValueError, match="wl.txt: unreadable wavelength file"):
        read_wavelength_file(tmp_path / "wl.txt")
    with pytest.raises(ValueError, match="no such wavelength file"):
        read_wavelength_file(tmp_path / "none.npy")
