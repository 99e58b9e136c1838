"""Tests for the ``jblase`` command: help, the whole synth-grid -> infer chain, and error exits.

Commands run in-process through :func:`jblase.cli.main`; only the installed entry point is run
as a subprocess. One small synthetic grid (2 x 2 x 2 points, 8500-8640 A) is written, cloned
and built once for the module.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from jblase.cli import compile_cache_dir, main
from jblase.generator import Generator
from jblase.grids.synthetic import load_model
from jblase.io import read_spectrum, write_spectrum
from jblase.manifold import Manifold, list_clones
from jblase.preprocess import normalize

pytestmark = pytest.mark.filterwarnings("ignore:only .* continuum maxima:UserWarning")

GRID_AXES = ["--teff", "5000", "5500", "500", "--logg", "4.0", "4.5", "0.5"]
GRID_AXES += ["--feh", "-0.5", "0.0", "0.5", "--wl", "8500", "8640"]
CLONE_ARGS = ["--epochs", "10", "--wing-cut", "1000", "--batch", "8", "--quiet"]
N_POINTS = 8
#: An off-grid star inside the grid: (Teff K, log g dex, [Fe/H] dex).
STAR = (5250.0, 4.2, -0.2)
FAST_INFER = ["--n-random", "20", "--n-guided", "2", "--quiet"]

#: Options each command's --help must mention.
HELP_OPTIONS = {
    None: ["fetch", "synth-grid", "clone", "build", "reconstruct", "infer", "demo"],
    "fetch": ["--out", "--teff", "--logg", "--feh", "--base-url", "--quiet"],
    "synth-grid": ["--out", "--teff", "--logg", "--feh", "--wl", "--resolution", "--seed"]
    + ["--quick", "--quiet"],
    "clone": ["grid_dir", "--out", "--teff", "--logg", "--feh", "--wl", "--prominence"]
    + ["--wing-cut", "--epochs", "--lr", "--batch", "--profile", "--optimizer", "--dtype"]
    + ["--fixed-centers", "--quiet"],
    "build": ["clones_dir", "--out", "--fill-missing", "--quiet"],
    "reconstruct": ["manifold", "--teff", "--logg", "--feh", "--wl", "--out", "--quiet"],
    "infer": ["manifold", "spectrum", "--teff-prior", "--teff-window", "--n-random"]
    + ["--n-guided", "--no-refine", "--seed", "--json", "--quiet"],
    "demo": ["--out", "--quick", "--quiet"],
}


def run(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse: --help and usage errors
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def ok(argv: list[str]) -> str:
    code, out, err = run(argv)
    assert code == 0, err
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict:
    """synth-grid -> clone -> build, once: paths and each command's stdout."""
    root = tmp_path_factory.mktemp("cli")
    w = {"grid": root / "grid", "clones": root / "clones", "manifold": root / "manifold.npz"}
    w["synth_out"] = ok(["synth-grid", "--out", w["grid"], *GRID_AXES, "--quiet"])
    w["clone_out"] = ok(["clone", w["grid"], "--out", w["clones"], *CLONE_ARGS])
    w["build_out"] = ok(["build", w["clones"], "--out", w["manifold"], "--quiet"])
    return w


@pytest.fixture(scope="module")
def star(work, tmp_path_factory) -> dict:
    """The simulator's normalised spectrum at STAR, inside the clones' loss region, as files."""
    model = load_model(work["grid"])
    wl = model.wavelength()
    flux = normalize(wl, model.flux(*STAR), STAR[0])
    keep = (wl > 8560.0) & (wl < 8580.0)
    root = tmp_path_factory.mktemp("star")
    paths = {"npz": root / "star.npz", "fits": root / "star.fits"}
    for path in paths.values():
        write_spectrum(path, wl[keep], flux[keep])
    return paths


# --------------------------------------------------------------------------- help


@pytest.mark.parametrize("command", list(HELP_OPTIONS), ids=lambda c: c or "jblase")
def test_help_exits_0_and_lists_options(command):
    code, out, _ = run([command, "--help"] if command else ["--help"])
    assert code == 0
    assert out.startswith(f"usage: jblase {command or ''}".rstrip())
    for option in HELP_OPTIONS[command]:
        assert option in out, f"{option} missing from the help of {command}"


def test_installed_entry_point_runs():
    exe = shutil.which("jblase")
    assert exe is not None, "the jblase console script is not installed (pip install -e .)"
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "reconstruct" in proc.stdout and "infer" in proc.stdout


def test_no_command_is_a_usage_error():
    code, _, err = run([])
    assert code == 2
    assert "required" in err


# --------------------------------------------------------------------------- the chain


def test_synth_grid_clone_build(work):
    assert work["synth_out"].startswith(f"wrote {N_POINTS} spectra (8169 pixels each)")
    assert len(list_clones(work["clones"])) == N_POINTS
    assert f"{N_POINTS} grid points: 0 already done, {N_POINTS} cloned now" in work["clone_out"]
    manifold = Manifold.load(work["manifold"])
    assert manifold.shape == (2, 2, 2)
    assert manifold.settings["epochs"] == 10 and manifold.settings["wing_cut"] == 1000
    assert work["build_out"].startswith(f"manifold: {manifold.n_lines} lines x (2, 2, 2) grid")
    assert str(work["manifold"]) in work["build_out"]


def test_clone_rerun_resumes_and_refuses_other_settings(work):
    out = ok(["clone", work["grid"], "--out", work["clones"], *CLONE_ARGS])
    assert f"{N_POINTS} grid points: {N_POINTS} already done, 0 cloned now" in out
    code, out, err = run(["clone", work["grid"], "--out", work["clones"], *CLONE_ARGS, "--lr", "1"])
    assert code == 2 and not out
    assert err.startswith("jblase clone: error:") and "different settings" in err


@pytest.mark.parametrize("suffix", [".npz", ".csv", ".fits"])
def test_reconstruct_writes_a_readable_spectrum(work, tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    params = ["--teff", "5250", "--logg", "4.2", "--feh", "-0.2"]
    out = ok(["reconstruct", work["manifold"], *params, "--out", path, "--quiet"])
    assert out.startswith("wrote 8169 pixels at Teff=5250 logg=4.2 [Fe/H]=-0.2")
    wl, flux, uncertainty = read_spectrum(path)
    assert uncertainty is None
    gen = Generator.from_manifold(Manifold.load(work["manifold"]))
    np.testing.assert_array_equal(wl, np.asarray(gen.wavelength))
    np.testing.assert_array_equal(flux, np.asarray(gen(np.array(STAR))))
    assert np.all(flux > 0) and np.all(flux <= 1)
    assert flux.min() < 0.95  # it has lines


def test_infer_json(work, star):
    out = ok(["infer", work["manifold"], star["npz"], "--json", *FAST_INFER])
    result = json.loads(out)
    assert set(result) == {"teff", "logg", "feh", "loss", "gp", "n_evaluations", "seconds"}
    assert set(result["gp"]) >= {"teff", "logg", "feh"}
    assert result["n_evaluations"] == 22
    assert result["seconds"] > 0
    assert 5000 <= result["teff"] <= 5500 and 4.0 <= result["logg"] <= 4.5
    assert -0.5 <= result["feh"] <= 0.0
    assert 0 < result["loss"] <= result["gp"]["loss"] < 5e-3


def test_infer_human_readable(work, star):
    out = ok(["infer", work["manifold"], star["fits"], *FAST_INFER])
    lines = out.splitlines()
    assert [line.split("=")[0].strip() for line in lines[:3]] == ["Teff", "log g", "[Fe/H]"]
    assert "GP only" in lines[0] and lines[3].startswith("RMS loss")
    teff = float(lines[0].split("=")[1].split()[0])
    assert 5000 <= teff <= 5500


def test_infer_on_a_grid_with_one_metallicity(work, star, tmp_path):
    clones = shutil.copytree(work["clones"], tmp_path / "clones")
    for path in clones.glob("*_Z-0.5.npz"):
        path.unlink()
    ok(["build", clones, "--out", tmp_path / "m.npz", "--quiet"])
    assert Manifold.load(tmp_path / "m.npz").shape == (2, 2, 1)
    json.loads(ok(["infer", tmp_path / "m.npz", star["npz"], "--json", *FAST_INFER]))


# --------------------------------------------------------------------------- errors


def fails(argv: list[str], *needles: str) -> str:
    code, out, err = run(argv)
    assert code == 2, (out, err)
    assert err.startswith(f"jblase {argv[0]}: error:")
    for needle in needles:
        assert needle in err
    return err


def test_reconstruct_outside_the_grid(work, tmp_path):
    params = ["--teff", "7000", "--logg", "4.2", "--feh", "0"]
    fails(
        ["reconstruct", work["manifold"], *params, "--out", tmp_path / "x.npz"],
        "teff = 7000.0 is outside the grid range [5000.0, 5500.0]",
    )
    assert not (tmp_path / "x.npz").exists()


def test_infer_spectrum_outside_the_manifold(work, tmp_path):
    path = tmp_path / "far.npz"
    write_spectrum(path, np.linspace(8700.0, 8760.0, 500), np.ones(500))
    fails(["infer", work["manifold"], path, *FAST_INFER], "8700.000", "beyond the generator")


def test_infer_teff_prior_outside_the_grid(work, star):
    argv = ["infer", work["manifold"], star["npz"], "--teff-prior", "9000", *FAST_INFER]
    fails(argv, "teff_prior = 9000.0 K is outside the grid range [5000.0, 5500.0]")


@pytest.mark.parametrize("command", ["reconstruct", "infer"])
def test_truncated_manifold(work, star, tmp_path, command):
    path = tmp_path / "truncated.npz"
    data = work["manifold"].read_bytes()
    path.write_bytes(data[: len(data) // 2])
    if command == "reconstruct":
        argv = ["reconstruct", path, "--teff", "5000", "--logg", "4", "--feh", "0"]
        argv += ["--out", tmp_path / "x.npz"]
    else:
        argv = ["infer", path, star["npz"], *FAST_INFER]
    fails(argv, str(path), "unreadable jblase manifold")


def test_missing_manifold(work, star, tmp_path):
    fails(["infer", tmp_path / "nothing.npz", star["npz"]], "nothing.npz: no such file")


def test_clone_of_an_empty_selection(work, tmp_path):
    out = tmp_path / "clones"
    fails(
        ["clone", work["grid"], "--out", out, "--teff", "9000", "9500", *CLONE_ARGS],
        "no spectra in",
        "teff_range=(9000, 9500)",
        "teff [5000, 5500]",
    )
    assert not out.exists()


def test_build_of_a_directory_without_clones(tmp_path):
    fails(["build", tmp_path, "--out", tmp_path / "m.npz"], str(tmp_path), "no clone manifest")


def test_compile_cache_location_follows_the_environment(monkeypatch, tmp_path):
    for name in ("JBLASE_NO_COMPILE_CACHE", "JAX_COMPILATION_CACHE_DIR", "JBLASE_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache_dir() == tmp_path / "xdg" / "jblase" / "jax"
    monkeypatch.setenv("JBLASE_CACHE_DIR", str(tmp_path / "mine"))
    assert compile_cache_dir() == tmp_path / "mine"
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "theirs"))
    assert compile_cache_dir() is None  # the user's own JAX setting wins
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    monkeypatch.setenv("JBLASE_NO_COMPILE_CACHE", "1")
    assert compile_cache_dir() is None


_CACHE_SCRIPT = """
import jax, jax.numpy as jnp
from jblase.cli import enable_compile_cache
print(enable_compile_cache(min_compile_seconds=0.0))
x = jnp.linspace(0.0, 1.0, 64)
print(float(jax.jit(lambda v: jnp.sum(jnp.sin(v) * jnp.cos(v[::-1])))(x)))
"""


def test_compiled_programs_are_kept_between_runs(tmp_path):
    """A second process finds the first one's compiled program in the cache (no new entry)."""
    cache = tmp_path / "cache"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("JBLASE_NO_COMPILE_CACHE", "JAX_COMPILATION_CACHE_DIR")
    }
    env["JBLASE_CACHE_DIR"] = str(cache)
    outputs = []
    for _ in range(2):
        run = subprocess.run(
            [sys.executable, "-c", _CACHE_SCRIPT],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr
        outputs.append(run.stdout.split())
        if len(outputs) == 1:
            first = sorted(p.name for p in cache.iterdir())
    assert outputs[0][0] == str(cache) and outputs[0][1] == outputs[1][1]
    assert first, "nothing was written to the compilation cache"
    assert sorted(p.name for p in cache.iterdir()) == first
