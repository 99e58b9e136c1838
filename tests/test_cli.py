"""Tests for the ``jblase`` command: help, the whole synth-grid -> infer chain, and error exits.

Commands run in-process through :func:`jblase.cli.main`; only the installed entry point is run
as a subprocess. One small synthetic grid (2 x 2 x 2 points, 8500-8640 A) is written, cloned
and built once for the module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from jblase.blase_archive import build_blase_manifold
from jblase.cli import compile_cache_dir, main
from jblase.clone import CloneSettings
from jblase.demo import run_demo
from jblase.detect import detect_lines
from jblase.generator import Generator
from jblase.grids.base import GridPoint
from jblase.grids.phoenix import PhoenixGrid
from jblase.grids.synthetic import load_model
from jblase.io import load_line_list, read_spectrum, write_spectrum
from jblase.manifold import (
    Manifold,
    list_clones,
    read_clones_manifest,
    read_clones_wavelength,
    write_clones_manifest,
)
from jblase.preprocess import normalize

from .test_blase_archive import _clones as _blase_clones
from .test_blase_archive import _name as _blase_name
from .test_blase_archive import _wavelength as _blase_wavelength
from .test_blase_archive import _write_dir as _write_blase_dir
from .torch_format import op_global, op_str, write_pt

pytestmark = pytest.mark.filterwarnings("ignore:only .* continuum maxima:UserWarning")

GRID_AXES = ["--teff", "5000", "5500", "500", "--logg", "4.0", "4.5", "0.5"]
GRID_AXES += ["--feh", "-0.5", "0.0", "0.5", "--wl", "8500", "8640"]
# One pass (the paper's), so the clones' lines are the detected ones; the residual round
# itself is tested in tests/test_clone_residual.py.
CLONE_ARGS = ["--epochs", "10", "--wing-cut", "1000", "--batch", "8", "--residual-rounds", "0"]
CLONE_ARGS += ["--quiet"]
N_POINTS = 8
#: An off-grid star inside the grid: (Teff K, log g dex, [Fe/H] dex).
STAR = (5250.0, 4.2, -0.2)
#: The grid's steps (Teff K, log g dex, [Fe/H] dex). An inferred parameter must lie within
#: half a step of the truth: closer than the farther node of the truth's cell, i.e. at least as
#: good as picking the right node (Teff: 5250 K is midway, so a node answer fails). Measured:
#: GP + gradient (5257 K, 4.07, -0.253); GP alone over seeds 0-5 at most 107 K, 0.21, 0.15 off.
STEP = np.array([500.0, 0.5, 0.5])
HALF_STEP = STEP / 2
FAST_INFER = ["--n-random", "20", "--n-guided", "2", "--quiet"]

#: Options each command's --help must mention.
HELP_OPTIONS = {
    None: ["fetch", "synth-grid", "clone", "complete", "propagate", "build", "reconstruct"]
    + ["infer", "fit", "demo"],
    "fetch": ["--out", "--teff", "--logg", "--feh", "--base-url", "--quiet"],
    "synth-grid": ["--out", "--teff", "--logg", "--feh", "--wl", "--resolution", "--seed"]
    + ["--quick", "--quiet"],
    "clone": ["grid_dir", "--out", "--teff", "--logg", "--feh", "--wl", "--prominence"]
    + ["--wing-cut", "--epochs", "--lr", "--batch", "--profile", "--line-form", "--optimizer"]
    + ["--dtype"]
    + ["--fixed-centers", "--residual-rounds", "--residual-prominence", "--quiet"],
    "complete": ["grid_dir", "clones_dir", "--out", "--epochs", "--start-fraction"]
    + ["--tolerance-px", "--batch", "--quiet"],
    "propagate": ["grid_dir", "clones_dir", "--out", "--epochs", "--learning-rate"]
    + ["--lr-schedule", "--residual-rounds", "--residual-min-separation", "--seed", "--batch"]
    + ["--quiet"],
    "build": ["clones_dir", "--out", "--fill-missing", "--wavelength", "--wl", "--table"]
    + ["--wing-cut", "--quiet"],
    "reconstruct": ["manifold", "--teff", "--logg", "--feh", "--wl", "--out", "--interpolation"]
    + ["--quiet"],
    "infer": ["manifold", "spectrum", "--teff-prior", "--teff-window", "--n-random"]
    + ["--n-guided", "--no-refine", "--seed", "--json", "--interpolation", "--quiet"],
    "fit": ["spectrum", "--manifold", "--lines", "--teff-prior", "--teff-window", "--orders"]
    + ["--berv", "--resolving-power", "--fit-resolution", "--vsini", "--fixed-vsini"]
    + ["--continuum-degree", "--mask-file", "--robust", "--n-random", "--n-guided", "--seed"]
    + ["--plot", "--json", "--interpolation", "--quiet"],
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
def generator(work) -> Generator:
    return Generator.from_manifold(Manifold.load(work["manifold"]))


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


#: Two of the grid's points (Teff 5500, log g 4.5, both [Fe/H]) and a 130 A crop: lines are
#: detected more than 30 A inside each end (8535-8605 A), the loss is 8565-8575 A.
OPTION_SELECTION = ["--teff", "5500", "5500", "--logg", "4.5", "4.5", "--feh", "-0.5", "0"]
OPTION_SELECTION += ["--wl", "8505", "8635"]
OPTION_POINTS = [GridPoint(5500.0, 4.5, -0.5), GridPoint(5500.0, 4.5, 0.0)]
#: The options of `jblase clone` and the CloneSettings field each sets.
CLONE_OPTIONS = [
    (["--profile", "blase"], "profile", "blase"),
    (["--optimizer", "amsgrad"], "optimizer", "amsgrad"),
    (["--dtype", "float32"], "compute_dtype", "float32"),
    (["--fixed-centers"], "tune_centers", False),
    (["--prominence", "0.01"], "prominence", 0.01),
    (["--lr", "0.2"], "learning_rate", 0.2),
    (["--residual-rounds", "2"], "residual_rounds", 2),
    (["--residual-prominence", "0.003"], "residual_prominence", 0.003),
]


@pytest.mark.parametrize(("options", "field", "value"), CLONE_OPTIONS, ids=lambda v: str(v))
def test_clone_options_reach_the_settings(work, monkeypatch, tmp_path, options, field, value):
    """Each option sets its own CloneSettings field, nothing else (the cloning itself is
    replaced here; test_clone_selection_crop_and_options runs it)."""
    seen = {}

    def fake_clone_grid(grid, clones_dir, settings, **kwargs):
        seen.update(grid=grid, settings=settings)
        return {"done": 0, "cloned": len(grid), "total": len(grid)}

    monkeypatch.setattr("jblase.pipeline.clone_grid", fake_clone_grid)
    ok(["clone", work["grid"], "--out", tmp_path, *OPTION_SELECTION, *CLONE_ARGS, *options])
    default = CloneSettings(epochs=10, wing_cut=1000, residual_rounds=0)
    assert seen["settings"] == dataclasses.replace(default, **{field: value})
    assert seen["grid"].points() == OPTION_POINTS
    assert seen["grid"].wl_range == (8505.0, 8635.0)


def test_clone_selection_crop_and_options(work, tmp_path):
    """One real run (each combination of these options compiles its own programs): the
    selected points only, on the cropped pixels, with every model option recorded with each
    clone (the settings its cloning used) and the centres kept where they were detected."""
    root = tmp_path / "clones"
    options = [opt for opts, *_ in CLONE_OPTIONS[:4] for opt in opts]
    ok(["clone", work["grid"], "--out", root, *OPTION_SELECTION, *CLONE_ARGS, *options])
    files = list_clones(root)
    assert list(files) == OPTION_POINTS  # --teff/--logg/--feh select exactly these points
    manifest = read_clones_manifest(root)
    assert manifest["source"]["wl_range"] == [8505.0, 8635.0]
    full = load_model(work["grid"]).wavelength()
    cropped = full[(full >= 8505.0) & (full <= 8635.0)]
    np.testing.assert_array_equal(read_clones_wavelength(root), cropped)
    wanted = CloneSettings(
        epochs=10, wing_cut=1000, residual_rounds=0, **{f: v for _, f, v in CLONE_OPTIONS[:4]}
    )
    assert manifest["settings"] == wanted.as_dict()
    grid = PhoenixGrid(work["grid"], wl_range=(8505.0, 8635.0))
    for point, path in files.items():
        lines, meta = load_line_list(path)
        assert meta["settings"] == wanted.as_dict()
        assert np.isfinite(meta["rms"]) and meta["rms"] < meta["rms_initial"]
        detected = detect_lines(cropped, normalize(cropped, grid.load_flux(point), point.teff))
        assert detected.n_lines > 5
        np.testing.assert_array_equal(lines.identity_center, detected.identity_center)
        np.testing.assert_array_equal(lines.center, detected.center)  # --fixed-centers
        assert not np.array_equal(lines.ln_sigma, detected.ln_sigma)  # the widths were fitted


def test_clone_of_too_short_a_range_fails_before_writing(work, tmp_path):
    """The cloning loss leaves out 60 A at each end: a 100 A crop has no pixel to fit."""
    out = tmp_path / "clones"
    argv = ["clone", work["grid"], "--out", out, "--wl", "8520", "8620", *CLONE_ARGS]
    fails(argv, "A, too short for the cloning loss", "wider than 120 A")
    assert not out.exists()


@pytest.mark.parametrize("suffix", [".npz", ".csv", ".fits"])
def test_reconstruct_writes_a_readable_spectrum(work, generator, tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    params = ["--teff", "5250", "--logg", "4.2", "--feh", "-0.2"]
    out = ok(["reconstruct", work["manifold"], *params, "--out", path, "--quiet"])
    assert out.startswith("wrote 8169 pixels at Teff=5250 logg=4.2 [Fe/H]=-0.2")
    wl, flux, uncertainty = read_spectrum(path)
    assert uncertainty is None
    np.testing.assert_array_equal(wl, np.asarray(generator.wavelength))
    np.testing.assert_array_equal(flux, np.asarray(generator(np.array(STAR))))
    assert np.all(flux > 0) and np.all(flux <= 1)
    assert flux.min() < 0.95  # it has lines


def test_reconstruct_with_the_papers_interpolation(work, generator, tmp_path):
    from jblase.generator import Generator
    from jblase.manifold import Manifold

    path = tmp_path / "log.npz"
    params = ["--teff", "5250", "--logg", "4.2", "--feh", "-0.2", "--interpolation", "log"]
    ok(["reconstruct", work["manifold"], *params, "--out", path, "--quiet"])
    _, flux, _ = read_spectrum(path)
    paper = Generator.from_manifold(Manifold.load(work["manifold"]), amplitude_interpolation="log")
    np.testing.assert_array_equal(flux, np.asarray(paper(np.array(STAR))))
    assert np.abs(flux - np.asarray(generator(np.array(STAR)))).max() > 1e-4  # not the default
    code, _, err = run(
        ["reconstruct", work["manifold"], *params[:6], "--interpolation", "cubic", "--out", path]
    )
    assert code == 2 and "invalid choice" in err


def test_reconstruct_wl_crops_the_output(work, generator, tmp_path):
    path = tmp_path / "part.npz"
    params = ["--teff", "5250", "--logg", "4.2", "--feh", "-0.2", "--wl", "8560", "8580"]
    out = ok(["reconstruct", work["manifold"], *params, "--out", path, "--quiet"])
    wl, flux, _ = read_spectrum(path)
    full_wl = np.asarray(generator.wavelength)
    inside = (full_wl >= 8560.0) & (full_wl <= 8580.0)
    assert out.startswith(f"wrote {inside.sum()} pixels")
    np.testing.assert_array_equal(wl, full_wl[inside])
    # The same spectrum as the full reconstruction there (lines outside the crop included).
    np.testing.assert_allclose(flux, np.asarray(generator(np.array(STAR)))[inside], atol=1e-13)


def _loss_at(generator, path, params=STAR) -> float:
    """RMS residual (eq. 4) of the generator at ``params`` (default: the truth) against the
    star in ``path``."""
    wl, flux, _ = read_spectrum(path)
    model = np.interp(wl, np.asarray(generator.wavelength), np.asarray(generator(np.array(params))))
    return float(np.sqrt(np.mean((model - flux) ** 2)))


def test_infer_json(work, generator, star):
    out = ok(["infer", work["manifold"], star["npz"], "--json", *FAST_INFER])
    result = json.loads(out)
    assert set(result) == {"teff", "logg", "feh", "loss", "gp", "n_evaluations", "seconds"}
    assert set(result["gp"]) >= {"teff", "logg", "feh"}
    assert result["n_evaluations"] == 22
    assert result["seconds"] > 0
    for fit in (result, result["gp"]):
        error = np.array([fit["teff"], fit["logg"], fit["feh"]]) - STAR
        assert np.all(np.abs(error) < HALF_STEP), (fit, error)
    # The fit explains the star at least as well as the true parameters do (measured: 9.1e-4
    # against 1.24e-3; the generator's interpolation error makes the truth no minimum).
    assert 0 < result["loss"] <= result["gp"]["loss"] <= _loss_at(generator, star["npz"])


def test_infer_human_readable(work, star):
    out = ok(["infer", work["manifold"], star["fits"], *FAST_INFER])
    lines = out.splitlines()
    assert [line.split("=")[0].strip() for line in lines[:3]] == ["Teff", "log g", "[Fe/H]"]
    assert "GP only" in lines[0] and lines[3].startswith("RMS loss")
    fit = [float(line.split("=")[1].split()[0]) for line in lines[:3]]
    gp = [float(line.split("GP only")[1].strip(" )")) for line in lines[:3]]
    for values in (fit, gp):
        assert np.all(np.abs(np.array(values) - STAR) < HALF_STEP), values


def test_infer_on_a_grid_with_one_metallicity(work, generator, star, tmp_path):
    clones = shutil.copytree(work["clones"], tmp_path / "clones")
    for path in clones.glob("*_Z-0.5.npz"):
        path.unlink()
    ok(["build", clones, "--out", tmp_path / "m.npz", "--quiet"])
    assert Manifold.load(tmp_path / "m.npz").shape == (2, 2, 1)
    result = json.loads(ok(["infer", tmp_path / "m.npz", star["npz"], "--json", *FAST_INFER]))
    # [Fe/H] has the one value 0, the star's -0.2 is off it, so Teff and log g compensate (the
    # fit went to the corner 5500 K, 4.0). It must still fit at least as well as the true Teff
    # and log g at [Fe/H] 0 do: the full generator there has the same lines (the [Fe/H] 0
    # nodes have weight 1). Measured: 1.34e-3 against 3.2e-3.
    assert result["feh"] == 0.0
    projected = np.array([STAR[0], STAR[1], 0.0])
    assert 0 < result["loss"] <= _loss_at(generator, star["npz"], projected)


def test_build_fill_missing(work, tmp_path):
    clones = shutil.copytree(work["clones"], tmp_path / "clones")
    hole = GridPoint(5500.0, 4.5, 0.0)
    (clones / f"{hole.label()}.npz").unlink()
    argv = ["build", clones, "--out", tmp_path / "m.npz", "--quiet"]
    fails(argv, "1 of 8 points missing", hole.label())
    assert not (tmp_path / "m.npz").exists()
    with pytest.warns(UserWarning, match="1 of 8 grid points have no clone"):
        ok(["build", clones, "--out", tmp_path / "m.npz", "--fill-missing", "--quiet"])
    holed = Manifold.load(tmp_path / "m.npz")
    full = Manifold.load(work["manifold"])
    assert holed.shape == full.shape == (2, 2, 2)
    counts = full.line_counts()
    counts[1, 1, 1] = 0  # every line is absent at the hole, the other points keep theirs
    np.testing.assert_array_equal(holed.line_counts(), counts)
    rms = np.asarray(holed.rms)
    assert np.isnan(rms[1, 1, 1]) and np.isfinite(rms.ravel()[:-1]).all()
    # At the hole the generator has no line at all (so its flux is 1); at the other nodes it
    # has the same lines as before.
    holed_gen = Generator.from_manifold(holed)
    assert not np.asarray(holed_gen.line_parameters(np.array(hole))[-1]).any()
    for node, index in (((5000.0, 4.0, -0.5), (0, 0, 0)), ((5500.0, 4.5, -0.5), (1, 1, 0))):
        center, ln_a, _, _, mask = (np.asarray(a) for a in holed_gen.line_parameters(node))
        expected = full.at_point(*index)
        np.testing.assert_allclose(center[mask], expected.center, rtol=0, atol=1e-9)
        # The interpolation weighs float32 values: within one float32 step (ln a > -16).
        np.testing.assert_allclose(ln_a[mask], expected.ln_amplitude, rtol=0, atol=2e-6)


def test_demo_end_to_end_at_a_tiny_size(work, tmp_path, capsys):
    """run_demo (what `jblase demo` runs) on the module's grid, with its clones copied in (the
    demo resumes them: the seed's clone is done, the propagation refits the rest), one star,
    the random search alone (compiling the guided search and the refinement would triple the
    time)."""
    out = tmp_path / "demo"
    shutil.copytree(work["grid"], out / "grid")
    shutil.copytree(work["clones"], out / "clones")
    model = load_model(work["grid"])
    axes = ((5000.0, 5500.0), (4.0, 4.5), (-0.5, 0.0))
    summary = run_demo(
        out,
        progress=False,
        axes=axes,
        model=model,
        clone_settings=CloneSettings(epochs=10, wing_cut=1000, residual_rounds=0),
        n_stars=1,
        infer_options={"n_random": 8, "n_guided": 0, "refine": False},
    )
    printed = capsys.readouterr().out
    assert "seed (5500.0, 4.5, 0.0): 0 cloned, 1 already done" in printed
    assert f"{N_POINTS} refitted, 0 already done" in printed
    assert "true Teff" in printed and "mean |error|: GP + gradient" in printed
    assert json.loads((out / "summary.json").read_text()) == json.loads(
        json.dumps(summary, default=float)
    )
    (star,) = summary["stars"]
    truth = np.array(star["truth"])
    lo, hi = np.array([a[0] for a in axes]), np.array([a[-1] for a in axes])
    assert np.all((truth > lo) & (truth < hi))  # an off-grid star inside the grid
    # Finite errors, estimates inside the grid. No accuracy bound: the star is the simulator's
    # whole window, whose lines within 30 A of either end no clone holds.
    for fit in (star, star["gp"]):
        estimate = np.array([fit["teff"], fit["logg"], fit["feh"]])
        assert np.all(np.isfinite(estimate - truth)), fit
        assert np.all((estimate >= lo) & (estimate <= hi)), fit
    assert np.isfinite(star["loss"]) and star["loss"] > 0
    names = ["reconstruction.png", "inference_errors.png", "line_counts.png"]
    assert summary["plots"] == [str(out / name) for name in names]
    for name in names:
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000, name


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


def test_build_from_original_pt_clones_directory_and_zip(tmp_path):
    """`jblase build` of a directory and of a zip of .pt clones (one named otherwise, given
    by --table) writes the manifold build_blase_manifold makes; tests/test_blase_archive.py
    checks that its generator reproduces each clone."""
    clones = _blase_clones()
    pt_dir = tmp_path / "pt"
    _write_blase_dir(pt_dir, clones)
    odd = next(iter(clones))
    (pt_dir / _blase_name(odd)).rename(pt_dir / "first.pt")
    table = tmp_path / "grid.csv"
    table.write_text(f"file,teff,logg,feh\nfirst.pt,{odd.teff},{odd.logg},{odd.feh}\n")
    wl = tmp_path / "wl.npy"
    np.save(wl, _blase_wavelength())
    shutil.make_archive(str(tmp_path / "pt"), "zip", tmp_path, "pt")  # members pt/*.pt

    want = build_blase_manifold(pt_dir, _blase_wavelength(), table=table, progress=False)
    for source in (pt_dir, tmp_path / "pt.zip"):
        out = tmp_path / f"{source.name}.npz"
        printed = ok(["build", source, "--out", out, "--wavelength", wl, "--table", table])
        assert printed.startswith(f"manifold: {want.n_lines} lines x (2, 2, 2) grid -> {out}")
        got = Manifold.load(out)
        for name in ("params", "present", "identity_center", "wavelength", "axes"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
        assert (
            got.settings
            == want.settings
            == {
                "origin": "blase .pt clones",
                "profile": "blase",
                "wing_cut": 6000,
            }
        )

    out = tmp_path / "m.npz"
    cropped = ["--wavelength", wl, "--wl", "8510", "8560", "--wing-cut", "500", "--quiet"]
    ok(["build", pt_dir, "--out", out, "--table", table, *cropped])
    m = Manifold.load(out)
    assert m.settings["wing_cut"] == 500
    assert 8510 <= float(m.wavelength[0]) < float(m.wavelength[-1]) <= 8560


def test_build_from_pt_clones_errors(tmp_path):
    clones = _blase_clones()
    pt_dir = tmp_path / "pt"
    _write_blase_dir(pt_dir, clones)
    np.save(tmp_path / "wl.npy", _blase_wavelength())
    out = ["--out", tmp_path / "m.npz"]
    fails(["build", pt_dir, *out], "original-code .pt clones", "pass --wavelength")
    (pt_dir / _blase_name(next(iter(clones)))).rename(pt_dir / "first.pt")
    err = fails(["build", pt_dir, *out, "--wavelength", tmp_path / "wl.npy"], "'first.pt'")
    assert "names no grid point" in err and "--table" in err
    assert not (tmp_path / "m.npz").exists()

    # A pickle that would run code is refused, naming the file; nothing of it runs.
    (pt_dir / "first.pt").unlink()
    marker = tmp_path / "hacked"
    evil = b"\x80\x02" + op_global("os", "system") + op_str(f"touch {marker}") + b"\x85R."
    write_pt(pt_dir / "T9000G4.50Z0.00.pt", evil, {})
    argv = ["build", pt_dir, *out, "--wavelength", tmp_path / "wl.npy", "--quiet"]
    err = fails(argv, "os.system")
    assert "T9000G4.50Z0.00.pt: refused to load global" in err
    assert not marker.exists()

    jblase_dir = tmp_path / "jblase_clones"
    write_clones_manifest(jblase_dir, CloneSettings(), _blase_wavelength())
    fails(
        ["build", jblase_dir, *out, "--table", tmp_path / "t.csv", "--wing-cut", "10"],
        "--table --wing-cut apply only to original-code .pt clones",
    )


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
