"""Fidelity yardstick: is the generator closer to the truth than interpolating the grid's pixels?

For a simulator grid (whose truth is known everywhere), reports by Teff and overall:

* the clones' RMS at the grid points (stored in the manifold, per point);
* at off-grid truths (``--n-per-cell`` random points strictly inside each Teff cell, log g and
  [Fe/H] uniform over the grid, a fixed seed; the truth is the simulator's spectrum normalised
  as the pipeline normalises grid spectra), the RMS over the active region of every generator
  variant, of multilinear interpolation of the normalised grid pixels on the grid's own axes
  (what a user would do without jblase) and of the nearest grid point's normalised spectrum;
* leave-one-out: each interior Teff node (with all its log g and [Fe/H] points) is dropped, the
  manifold is rebuilt from the remaining clones (no re-cloning) and the dropped points are
  predicted by every generator variant, by pixel interpolation of the remaining grid and by the
  nearest remaining node; ``--loo-logg`` does the same for interior log g nodes.

Grids (``--grid``):

* ``demo``: the demo grid (:func:`jblase.demo.demo_axes`, the default
  :class:`~jblase.grids.synthetic.SyntheticGridModel`, per-line line formation), cloned with
  :data:`jblase.demo.DEMO_CLONE_SETTINGS`;
* ``fine``: a PHOENIX-like grid from another seed and another line-formation law (by default
  ``milne_eddington``: opacities of blended lines add and strong lines saturate as 1 / tau, so
  no clone line form matches it by construction; ``--line-formation`` picks another): Teff
  3500-7000 K in 250 K steps, log g 3.5-5.0 in 0.5 dex, [Fe/H] -0.5 and 0, 8400-8700 A.

``--quick`` uses a few grid points and a 200 A crop (a CI-sized run).

Variants, each its own column: ``--interpolation linear log`` (shorthand for
``--variants amplitude_interpolation=linear amplitude_interpolation=log``); ``--variants`` takes
comma-separated ``KEY=VALUE`` lists passed to :meth:`jblase.generator.Generator.from_manifold`;
``--generator-set KEY=VALUE`` applies to every variant; ``--manifold-set KEY=VALUE`` goes to
:func:`jblase.manifold.build_manifold`. Clone settings: ``--clone-epochs``, ``--clone-lr``,
``--clone-profile`` and any field through ``--clone-set KEY=VALUE`` (into
:class:`jblase.clone.CloneSettings`); clones live in a directory keyed by the settings and the
crop, so variants never overwrite each other and reruns skip finished clones. Results that are
not the defaults' go to a JSON named after their settings unless ``--tag`` names it.

Pipelines: independent clones (``--no-complete``), completed (the default: ``jblase.complete``
after cloning), propagated (``--propagate``: ``jblase.propagate`` from the seed's clone, with
``--propagate-set KEY=VALUE`` into :class:`jblase.propagate.PropagationSettings`; add
``--no-complete`` to build from the propagated clones alone). Leave-one-out redoes the
propagation and the completion without the dropped node, so nothing of it reaches the manifold.
The JSON's ``identity_presence`` gives identities, grid points per identity and the presence
fraction of each stage's clones.

    python benchmarks/fidelity.py --grid demo|fine [--quick] [--interpolation linear log hybrid]
        [--propagate [--propagate-set KEY=VALUE ...]] [--no-complete]
        [--variants KEY=VALUE[,KEY=VALUE...] ...] [--clone-epochs N] [--clone-lr LR]
        [--clone-profile NAME] [--clone-set KEY=VALUE ...] [--loo all|none|N] [--loo-logg]
        [--n-per-cell N] [--line-formation LAW] [--wl LO HI] [--workdir DIR] [--out DIR]

Writes ``benchmarks/results/fidelity_<grid>[_quick][_<tag>].json``: per-point rows, tables and
a ``summary``; the work directory is ``benchmarks/results/fidelity_work_<grid>[_quick]/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from _common import (
    RESULTS,
    add_common_args,
    parse_key_values,
    print_table,
    stage,
    write_results,
)
from tqdm.auto import tqdm

from jblase.clone import CloneSettings
from jblase.demo import DEMO_CLONE_SETTINGS, demo_axes
from jblase.detect import active_region
from jblase.generator import AXIS_NAMES
from jblase.grids import synthetic
from jblase.grids.base import GridPoint
from jblase.grids.phoenix import PhoenixGrid
from jblase.preprocess import normalize

PIXEL = "pixel"
#: Pixel interpolation with a cubic Hermite spline along Teff (a stronger baseline, reported
#: beside the issue's trilinear one; wins are counted against the trilinear one).
PIXEL_CUBIC = "pixel_cubic_teff"
NEAREST = "nearest"
BASELINES = (PIXEL, PIXEL_CUBIC, NEAREST)

#: The fine grid: PHOENIX's steps (250 K, 0.5 dex) over the Teff range where lines are many.
FINE_TEFFS = tuple(float(t) for t in range(3500, 7001, 250))
FINE_LOGGS = (3.5, 4.0, 4.5, 5.0)
FINE_FEHS = (-0.5, 0.0)
FINE_WL = (8400.0, 8700.0)
FINE_SEED = 12
FINE_LINE_FORMATION = "milne_eddington"
#: The demo's line density (3,000 random lines over 500 A + 2 x 10 A) on the fine window.
FINE_N_LINES = round(3000 * (FINE_WL[1] - FINE_WL[0] + 20.0) / 520.0)
QUICK_CROP = (8440.0, 8640.0)
OFFGRID_SEED = 5


@dataclasses.dataclass(frozen=True)
class GridSpec:
    """A simulator grid to benchmark: the model, its axes and the wavelength crop cloned."""

    name: str
    model: synthetic.SyntheticGridModel
    axes: tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]
    crop: tuple[float, float] | None
    clone_settings: CloneSettings
    n_per_cell: int


def grid_spec(name: str, quick: bool, line_formation: str | None = None) -> GridSpec:
    """The ``demo`` or ``fine`` grid; ``quick``: a few points and a 200 A crop.

    The epochs stay at the demo's 100 in ``quick`` runs too: compiling dominates a small run,
    and fewer epochs leave the strong lines' clones far from converged."""
    settings = DEMO_CLONE_SETTINGS
    if name == "demo":
        model = synthetic.SyntheticGridModel(line_formation=line_formation or "per_line")
        axes = demo_axes(quick)
        n_per_cell = 2 if quick else 6
    elif name == "fine":
        model = synthetic.SyntheticGridModel(
            wl_range=FINE_WL,
            n_lines=FINE_N_LINES,
            seed=FINE_SEED,
            line_formation=line_formation or FINE_LINE_FORMATION,
        )
        axes = ((5000.0, 5250.0, 5500.0), (4.0, 4.5), FINE_FEHS) if quick else None
        axes = axes or (FINE_TEFFS, FINE_LOGGS, FINE_FEHS)
        n_per_cell = 2 if quick else 3
    else:
        raise ValueError(f"unknown grid {name!r}: demo or fine")
    return GridSpec(name, model, axes, QUICK_CROP if quick else None, settings, n_per_cell)


def propagation_key(settings) -> str:
    """The text of :class:`~jblase.propagate.PropagationSettings` that names work directories:
    its ``repr``, less ``residual_min_separation_px=None`` (the field came later, and
    directories made before it keep their names)."""
    return repr(settings).replace(", residual_min_separation_px=None", "")


def settings_key(*parts) -> str:
    """A short, stable hash of JSON-serialisable ``parts`` (names the clone directories)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


# ------------------------------------------------------------------------- the baselines


def pixel_interpolate(cube: np.ndarray, axes, points: np.ndarray, cubic=()) -> np.ndarray:
    """Multilinear interpolation of grid spectra, node by node on the grid's own axes
    (``cubic``: axes interpolated by a cubic Hermite spline instead).

    Args:
        cube: (n_teff, n_logg, n_feh, n_pix) normalised grid spectra.
        axes: the three strictly increasing node arrays (K, dex, dex).
        points: (n, 3) (Teff, log g, [Fe/H]) inside the grid.

    Returns:
        (n, n_pix) float64, via :func:`jblase.interp.interpolate_batch`.
    """
    from jblase.interp import interpolate_batch

    points = np.atleast_2d(np.asarray(points, np.float64))
    axes = tuple(np.asarray(a, np.float64) for a in axes)
    return np.asarray(interpolate_batch(np.asarray(cube, np.float64), axes, points, cubic))


def _baselines(cube: np.ndarray, axes) -> dict:
    """The predictors a user has without jblase, by name (:data:`BASELINES`)."""
    return {
        PIXEL: lambda pts: pixel_interpolate(cube, axes, pts),
        PIXEL_CUBIC: lambda pts: pixel_interpolate(cube, axes, pts, (0,)),
        NEAREST: lambda pts: nearest_spectra(cube, axes, pts),
    }


def nearest_index(axes, points: np.ndarray) -> np.ndarray:
    """(n, 3) int: per axis the nearest node (ties to the lower one), hence the nearest grid
    point of a rectilinear grid under any metric that adds up axis by axis."""
    points = np.atleast_2d(np.asarray(points, np.float64))
    out = np.empty(points.shape, dtype=np.int64)
    for d, axis in enumerate(axes):
        axis = np.asarray(axis, np.float64)
        out[:, d] = np.argmin(np.abs(points[:, d, None] - axis[None, :]), axis=1)
    return out


def nearest_spectra(cube: np.ndarray, axes, points: np.ndarray) -> np.ndarray:
    """(n, n_pix): the nearest grid point's spectrum for each point."""
    i, j, k = nearest_index(axes, points).T
    return np.asarray(cube)[i, j, k]


def rms(pred: np.ndarray, truth: np.ndarray, active: np.ndarray) -> np.ndarray:
    """(n,) RMS over the ``active`` pixels of (n, n_pix) predictions against truths."""
    resid = np.asarray(pred, np.float64)[:, active] - np.asarray(truth, np.float64)[:, active]
    return np.sqrt(np.mean(resid * resid, axis=1))


def offgrid_points(axes, n_per_cell: int, seed: int = OFFGRID_SEED) -> np.ndarray:
    """(n_cells * n_per_cell, 3) points strictly inside the grid, ``n_per_cell`` per Teff cell.

    Teff uniform inside each cell, log g and [Fe/H] uniform over the grid's range; a fixed
    seed, so every run and variant sees the same truths.
    """
    rng = np.random.default_rng(seed)
    teffs = np.asarray(axes[0], np.float64)
    out = []
    for a, b in zip(teffs[:-1], teffs[1:], strict=True):
        for _ in range(n_per_cell):
            p = [rng.uniform(a, b)]
            p += [rng.uniform(float(ax[0]), float(ax[-1])) for ax in axes[1:]]
            out.append(p)
    pts = np.array(out, dtype=np.float64).reshape(-1, 3)
    for d, ax in enumerate(axes):
        # Strictly inside: never on a node of a multi-node axis (measure zero, but be sure).
        on_node = np.isin(pts[:, d], np.asarray(ax)) & (len(ax) > 1)
        pts[on_node, d] = np.nextafter(pts[on_node, d], np.inf)
    return pts


def drop_node(axes, cube: np.ndarray, axis: int, index: int):
    """``(axes, cube)`` without node ``index`` of ``axis`` (0 Teff, 1 log g, 2 [Fe/H])."""
    new_axes = [np.asarray(a, np.float64) for a in axes]
    new_axes[axis] = np.delete(new_axes[axis], index)
    return tuple(new_axes), np.delete(np.asarray(cube), index, axis=axis)


def node_slice(axes, cube: np.ndarray, axis: int, index: int):
    """The grid points on node ``index`` of ``axis`` and their spectra.

    Returns ``(points (m, 3), spectra (m, n_pix))``, rows in the same (C) order.
    """
    points = grid_points(axes)
    points = points[points[:, axis] == np.asarray(axes[axis], np.float64)[index]]
    spectra = np.moveaxis(np.asarray(cube), axis, 0)[index]
    return points, spectra.reshape(points.shape[0], -1)


def grid_points(axes) -> np.ndarray:
    """(n_teff * n_logg * n_feh, 3) every grid point, C order (Teff slowest)."""
    mesh = np.meshgrid(*[np.asarray(a, np.float64) for a in axes], indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=-1)


def loo_clones_dir(clones_dir: Path, dest: Path, drop: list[GridPoint]) -> Path:
    """A clone directory ``dest`` holding every clone of ``clones_dir`` but ``drop``'s.

    The manifest and wavelength file come along; files are symlinked (copied where links are
    not possible). ``dest`` is replaced if it exists.
    """
    from jblase.manifold import MANIFEST_NAME, WAVELENGTH_NAME, list_clones

    dest = Path(dest)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    dropped = {GridPoint(*(float(v) for v in p)) for p in drop}
    files = [clones_dir / MANIFEST_NAME, clones_dir / WAVELENGTH_NAME]
    files += [path for point, path in list_clones(clones_dir).items() if point not in dropped]
    for path in files:
        try:
            os.symlink(path.resolve(), dest / path.name)
        except OSError:
            shutil.copy2(path, dest / path.name)
    return dest


# ------------------------------------------------------------------------- evaluation


def evaluate(predictors: dict, points: np.ndarray, truth: np.ndarray, active) -> dict:
    """``{name: (n,) RMS}`` of each predictor (a callable (n, 3) -> (n, n_pix))."""
    return {name: rms(fn(points), truth, active) for name, fn in predictors.items()}


def point_rows(points: np.ndarray, scores: dict, **extra) -> list[dict]:
    """One JSON row per point: its parameters, ``extra`` and ``rms_<method>``."""
    rows = []
    for n, p in enumerate(points):
        row = dict(zip(AXIS_NAMES, map(float, p), strict=True))
        row.update(extra)
        row.update({f"rms_{m}": float(v[n]) for m, v in scores.items()})
        rows.append(row)
    return rows


def _median(values) -> float | None:
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.median(values)) if values else None


def summarise(rows: list[dict], methods: list[str], key: str) -> dict:
    """Per ``key`` value and overall: n, median RMS per method, and per generator variant the
    number of points where it beats pixel interpolation."""

    def block(sel: list[dict]) -> dict:
        out = {"n": len(sel)}
        for m in methods:
            out[f"median_rms_{m}"] = _median([r.get(f"rms_{m}") for r in sel])
        for m in methods:
            if m in BASELINES or not sel or f"rms_{PIXEL}" not in sel[0]:
                continue
            out[f"wins_{m}_vs_{PIXEL}"] = int(sum(r[f"rms_{m}"] < r[f"rms_{PIXEL}"] for r in sel))
        return out

    bins = {}
    for r in rows:
        bins.setdefault(r[key], []).append(r)
    return {"overall": block(rows), "by_bin": {b: block(sel) for b, sel in bins.items()}}


def table_rows(summary: dict, methods: list[str], label: str, extra: dict | None = None):
    """Printable rows (one per bin, then "all") from :func:`summarise` output."""
    out = []
    for name, block in [*summary["by_bin"].items(), ("all", summary["overall"])]:
        row = {label: name, "n": block["n"]}
        if extra and name in extra:
            row.update(extra[name])
        row.update({m: block.get(f"median_rms_{m}") for m in methods})
        out.append(row)
    return out


def _cell_label(teffs: np.ndarray, teff: float) -> str:
    i = int(np.clip(np.searchsorted(teffs, teff, side="right") - 1, 0, teffs.size - 2))
    return f"{teffs[i]:.0f}-{teffs[i + 1]:.0f}"


# ------------------------------------------------------------------------- main


def _variants(args) -> dict[str, dict]:
    variants = {}
    for mode in args.interpolation or ():
        variants[f"gen_{mode}"] = {"amplitude_interpolation": mode}
    for spec in args.variants or ():
        kwargs = parse_key_values(spec.split(","), "--variants item")
        name = "gen_" + "_".join(f"{k}={v}" for k, v in kwargs.items())
        variants[name] = kwargs
    if not variants:
        raise SystemExit("no generator variants: give --interpolation and/or --variants")
    common = parse_key_values(args.generator_set, "--generator-set")
    return {name: {**common, **kw} for name, kw in variants.items()}


def _clone_settings(base: CloneSettings, args) -> CloneSettings:
    changes = parse_key_values(args.clone_set, "--clone-set")
    for field, value in (
        ("epochs", args.clone_epochs),
        ("learning_rate", args.clone_lr),
        ("profile", args.clone_profile),
    ):
        if value is not None:
            changes[field] = value
    names = {f.name: f for f in dataclasses.fields(CloneSettings)}
    unknown = sorted(set(changes) - set(names))
    if unknown:
        raise SystemExit(f"unknown CloneSettings fields {unknown}; known: {sorted(names)}")
    for key, value in changes.items():
        default = getattr(base, key)
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            changes[key] = float(value)
    return dataclasses.replace(base, **changes)


def _generators(manifold, variants: dict) -> dict:
    from jblase.generator import Generator

    out = {}
    for name, kwargs in variants.items():
        gen = Generator.from_manifold(manifold, **kwargs)
        out[name] = lambda pts, gen=gen: np.asarray(gen.batch(np.asarray(pts, np.float64)))
    return out


def _point_grid(grid_dir: Path, crop, point: GridPoint) -> PhoenixGrid:
    """The grid at ``grid_dir`` restricted to the one point ``point`` (a seed to clone)."""
    return PhoenixGrid(
        grid_dir,
        wl_range=crop,
        teff_range=(point.teff,) * 2,
        logg_range=(point.logg,) * 2,
        feh_range=(point.feh,) * 2,
    )


def _normalised_cube(grid: PhoenixGrid, axes, wl: np.ndarray, progress: bool) -> np.ndarray:
    """(n_teff, n_logg, n_feh, n_pix) normalised grid spectra, as :func:`clone_grid` sees them."""
    shape = tuple(len(a) for a in axes)
    cube = np.empty((*shape, wl.size))
    for idx in tqdm(list(np.ndindex(shape)), desc="normalising grid", disable=not progress):
        p = GridPoint(*(float(axes[d][i]) for d, i in enumerate(idx)))
        cube[idx] = normalize(wl, grid.load_flux(p), p.teff)
    return cube


def _loo_nodes(n: int, how: str) -> list[int]:
    interior = list(range(1, n - 1))
    if how == "none":
        return []
    if how == "all":
        return interior
    k = int(how)
    if k >= len(interior):
        return interior
    # k nodes spread over the interior.
    return sorted({interior[int(round(x))] for x in np.linspace(0, len(interior) - 1, k)})


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser)
    parser.add_argument("--grid", choices=["demo", "fine"], default="demo")
    parser.add_argument(
        "--interpolation",
        nargs="*",
        default=None,
        metavar="MODE",
        help="generator amplitude interpolations, one column each (default: linear log)",
    )
    parser.add_argument(
        "--variants",
        nargs="*",
        default=None,
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="more generator variants: Generator.from_manifold keyword lists",
    )
    parser.add_argument(
        "--generator-set", nargs="*", default=[], metavar="KEY=VALUE", help="for every variant"
    )
    parser.add_argument(
        "--manifold-set", nargs="*", default=[], metavar="KEY=VALUE", help="to build_manifold"
    )
    parser.add_argument("--clone-epochs", type=int, default=None)
    parser.add_argument("--clone-lr", type=float, default=None, help="clone learning rate")
    parser.add_argument("--clone-profile", default=None, help="clone line profile")
    parser.add_argument(
        "--clone-set", nargs="*", default=[], metavar="KEY=VALUE", help="any CloneSettings field"
    )
    parser.add_argument("--batch", type=int, default=8, help="spectra cloned together")
    parser.add_argument(
        "--loo",
        default="all",
        help="leave-one-out interior Teff nodes: all, none or a number spread over the interior",
    )
    parser.add_argument("--loo-logg", action="store_true", help="also leave out log g nodes")
    parser.add_argument(
        "--no-complete",
        dest="complete",
        action="store_false",
        help="build the manifold from the independent clones (no jblase.complete step)",
    )
    parser.add_argument(
        "--propagate",
        action="store_true",
        help="propagate the clones across the grid (jblase.propagate) before any completion",
    )
    parser.add_argument(
        "--seed-only",
        action="store_true",
        help="with --propagate --no-complete: clone only the propagation seed (what the "
        "propagated pipeline needs; no independent clones to report); leave-one-out folds "
        "then start from that seed too (without it, from the middle of the kept grid)",
    )
    parser.add_argument(
        "--propagate-set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="PropagationSettings fields (epochs, learning_rate, lr_schedule, residual_rounds)",
    )
    parser.add_argument(
        "--complete-set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="CompletionSettings fields (epochs, start_fraction, tolerance_px, identities)",
    )
    parser.add_argument("--n-per-cell", type=int, default=None, help="off-grid truths per cell")
    parser.add_argument(
        "--line-formation",
        choices=list(synthetic.LINE_FORMATIONS),
        default=None,
        help="simulator law (default: per_line for demo, milne_eddington for fine)",
    )
    parser.add_argument("--wl", nargs=2, type=float, default=None, help="crop to clone, in A")
    parser.add_argument("--tag", default=None, help="suffix of the JSON name")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.interpolation is None and args.variants is None:
        args.interpolation = ["linear", "log"]
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    from jblase.cli import enable_compile_cache
    from jblase.complete import CompletionSettings, complete_grid
    from jblase.manifold import Manifold, build_manifold
    from jblase.pipeline import clone_grid
    from jblase.propagate import (
        PropagationSettings,
        identity_presence,
        propagate_grid,
        propagation_seed,
    )

    enable_compile_cache()
    warnings.filterwarnings("ignore", message="only .* continuum maxima")
    progress = not args.quiet
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}
    t_cpu = time.process_time()

    spec = grid_spec(args.grid, args.quick, args.line_formation)
    crop = tuple(args.wl) if args.wl else spec.crop
    settings = _clone_settings(spec.clone_settings, args)
    variants = _variants(args)
    manifold_kwargs = parse_key_values(args.manifold_set, "--manifold-set")
    n_per_cell = args.n_per_cell or spec.n_per_cell
    suffix = "_quick" if args.quick else ""
    workdir = Path(args.workdir or RESULTS / f"fidelity_work_{spec.name}{suffix}")
    clone_key = settings_key(settings.as_dict(), crop)
    clones_dir = workdir / f"clones_{clone_key}"
    manifold_key = settings_key(clone_key, manifold_kwargs)
    default_spec = grid_spec(args.grid, args.quick)
    default_run = (settings, crop, spec.model, manifold_kwargs) == (
        default_spec.clone_settings,
        default_spec.crop,
        default_spec.model,
        {},
    )
    tag = args.tag or ("" if default_run else settings_key(manifold_key, spec.model.settings()))
    propagation = (
        PropagationSettings(**parse_key_values(args.propagate_set, "--propagate-set"))
        if args.propagate
        else None
    )
    if propagation is not None and not args.tag:
        short = settings_key(propagation_key(propagation))[:4]
        tag = "_".join(t for t in (tag, "propagated" + short) if t)
    if not args.complete and not args.tag:
        tag = "_".join(t for t in (tag, "independent") if t)
    grid_name = f"grid_{spec.model.line_formation}"

    with stage(timings, "grid", cpu=cpu, message=f"1/5 simulator grid {spec.name}: {spec.model!r}"):
        grid_dir = synthetic.write_grid(
            workdir / grid_name, *spec.axes, model=spec.model, progress=progress
        )
        grid = PhoenixGrid(grid_dir, wl_range=crop)
        wl = np.asarray(grid.wavelength())
        axes = tuple(np.asarray(a, np.float64) for a in spec.axes)
        active = active_region(wl)
        print(
            f"   {len(grid)} spectra, {wl.size} pixels ({wl[0]:.1f}-{wl[-1]:.1f} A), "
            f"{int(active.sum())} active"
        )

    if args.seed_only and (propagation is None or args.complete):
        raise SystemExit("--seed-only needs --propagate and --no-complete")
    clone_source = grid
    clone_info = {"benchmark": "fidelity", "grid": spec.name, "crop": crop}  # the manifests'
    if args.seed_only:
        seed = GridPoint(*(propagation.seed or propagation_seed(grid.points())))
        clone_source = _point_grid(grid_dir, crop, seed)
    with stage(timings, "clone", cpu=cpu, message=f"2/5 cloning into {clones_dir} ({settings})"):
        summary = clone_grid(
            clone_source,
            clones_dir,
            settings,
            batch_size=args.batch,
            source=clone_info,
            progress=progress,
        )
        print(f"   {summary['cloned']} cloned, {summary['done']} already done")

    completion = (
        CompletionSettings(**parse_key_values(args.complete_set, "--complete-set"))
        if args.complete
        else None
    )
    source_dir = clones_dir
    refit_key = clone_key
    presence = {"independent": identity_presence(clones_dir)}
    print(
        f"   independent clones: {presence['independent']['identities']} identities, "
        f"{presence['independent']['lines_per_identity']:.1f} points per identity"
    )
    if propagation is not None:
        with stage(timings, "propagate", cpu=cpu, message="2a/5 propagating the clones"):
            refit_key = settings_key(clone_key, propagation_key(propagation))
            source_dir = workdir / f"propagated_{refit_key}"
            done = propagate_grid(grid, clones_dir, source_dir, propagation, progress=progress)
            print(
                f"   {done['identities']} identities, {done['lines_per_identity']:.1f} points "
                f"per identity; {done['propagated']} refitted in {done['levels']} levels"
            )
            presence["propagated"] = identity_presence(source_dir)
            summary["cloned"] += done["propagated"]
        manifold_key = settings_key(manifold_key, propagation_key(propagation))
    if completion is not None:
        with stage(timings, "complete", cpu=cpu, message="2b/5 completing the clones"):
            completed_dir = workdir / f"completed_{settings_key(refit_key, completion)}"
            done = complete_grid(grid, source_dir, completed_dir, completion, progress=progress)
            source_dir = completed_dir
            presence["completed"] = identity_presence(source_dir)
            print(f"   {done['identities']} identities; {done['completed']} refitted")
            summary["cloned"] += done["completed"]
        manifold_key = settings_key(manifold_key, completion)

    with stage(timings, "manifold", cpu=cpu, message="3/5 manifold and normalised grid"):
        manifold_path = workdir / f"manifold_{manifold_key}.npz"
        if summary["cloned"] or not manifold_path.exists():
            build_manifold(source_dir, progress=progress, **manifold_kwargs).save(manifold_path)
        manifold = Manifold.load(manifold_path)
        cube = _normalised_cube(grid, axes, wl, progress)
        clone_rms = np.asarray(manifold.rms, np.float64)
        # The truths' recipe at two grid nodes must give the grid's own normalised spectra
        # (up to the float32 files): a check of the off-grid truths below.
        check = grid_points(axes)[[0, -1]]
        truth_check = max(
            float(np.max(np.abs(normalize(wl, spec.model.flux(*p, wavelength=wl), p[0]) - c)))
            for p, c in zip(check, cube.reshape(-1, wl.size)[[0, -1]], strict=True)
        )
        print(f"   truth recipe at grid nodes vs grid files: max |diff| {truth_check:.2g}")
        print(
            f"   {manifold.n_lines} line identities; median clone RMS {np.nanmedian(clone_rms):.4g}"
        )

    methods = [*variants, *BASELINES]
    with stage(timings, "offgrid", cpu=cpu, message="4/5 off-grid truths"):
        points = offgrid_points(axes, n_per_cell)
        truth = np.stack(
            [
                normalize(wl, spec.model.flux(*p, wavelength=wl), p[0])
                for p in tqdm(points, desc="simulator truths", disable=not progress)
            ]
        )
        predictors = {**_generators(manifold, variants), **_baselines(cube, axes)}
        scores = evaluate(predictors, points, truth, active)
        off_rows = point_rows(points, scores)
        for r in off_rows:
            r["cell"] = _cell_label(axes[0], r["teff"])

    loo_rows = []
    loo_plan = [(0, i) for i in _loo_nodes(len(axes[0]), args.loo)]
    if args.loo_logg:
        loo_plan += [(1, i) for i in _loo_nodes(len(axes[1]), "all")]
    with stage(timings, "loo", cpu=cpu, message=f"5/5 leave-one-out: {len(loo_plan)} nodes"):
        for axis, i in tqdm(loo_plan, desc="leave-one-out", disable=not progress):
            node = float(axes[axis][i])
            dropped, true = node_slice(axes, cube, axis, i)
            sub_axes, sub_cube = drop_node(axes, cube, axis, i)
            loo_dir = loo_clones_dir(
                clones_dir, workdir / "loo" / f"{clone_key}_{AXIS_NAMES[axis]}{i}", dropped
            )
            if propagation is not None:
                # Propagated again without the node: nothing of it may reach its neighbours.
                propagated_dir = loo_dir.with_name(loo_dir.name + "_propagated")
                shutil.rmtree(propagated_dir, ignore_errors=True)
                gone = {GridPoint(*map(float, q)) for q in dropped}
                kept = [q for q in grid.points() if q not in gone]
                fold = propagation
                if args.seed_only and propagation.seed is None:
                    # Only the full grid's seed was cloned: the fold starts from it too, or,
                    # where the dropped node holds the seed, from the remaining grid's own
                    # seed, cloned into the fold (nothing of the dropped spectra in it).
                    fold_seed = seed
                    if seed in gone:
                        fold_seed = propagation_seed(kept)
                        clone_grid(
                            _point_grid(grid_dir, crop, fold_seed),
                            loo_dir,
                            settings,
                            batch_size=args.batch,
                            source=clone_info,
                            progress=False,
                        )
                    fold = dataclasses.replace(propagation, seed=tuple(fold_seed))
                propagate_grid(grid, loo_dir, propagated_dir, fold, points=kept, progress=False)
                shutil.rmtree(loo_dir, ignore_errors=True)
                loo_dir = propagated_dir
            if completion is not None:
                # Completed again without the node: nothing of it may reach its neighbours.
                completed_dir = loo_dir.with_name(loo_dir.name + "_completed")
                shutil.rmtree(completed_dir, ignore_errors=True)
                complete_grid(grid, loo_dir, completed_dir, completion, progress=False)
                shutil.rmtree(loo_dir, ignore_errors=True)
                loo_dir = completed_dir
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sub_manifold = build_manifold(loo_dir, progress=False, **manifold_kwargs)
            shutil.rmtree(loo_dir, ignore_errors=True)
            predictors = {**_generators(sub_manifold, variants), **_baselines(sub_cube, sub_axes)}
            scores = evaluate(predictors, dropped, true, active)
            label = f"{node:.0f}" if axis == 0 else f"{node:.2f}"
            loo_rows += point_rows(dropped, scores, dropped_axis=AXIS_NAMES[axis], node=label)
        shutil.rmtree(workdir / "loo", ignore_errors=True)

    grid_rows = [
        {**dict(zip(AXIS_NAMES, map(float, p), strict=True)), "clone_rms": float(v)}
        for p, v in zip(grid_points(axes), clone_rms.ravel(), strict=True)
    ]
    off_summary = summarise(off_rows, methods, "cell")
    loo_teff = [r for r in loo_rows if r["dropped_axis"] == "teff"]
    loo_summary = summarise(loo_teff, methods, "node") if loo_teff else None
    loo_logg = [r for r in loo_rows if r["dropped_axis"] == "logg"]
    loo_logg_summary = summarise(loo_logg, methods, "node") if loo_logg else None
    clone_by_teff = {
        f"{t:.0f}": {"clone RMS": float(np.nanmedian(clone_rms[n]))} for n, t in enumerate(axes[0])
    }

    print(f"\noff-grid truths ({len(off_rows)}): median RMS over the active region by Teff cell")
    print_table(table_rows(off_summary, methods, "Teff cell"), ["Teff cell", "n", *methods])
    if loo_summary:
        print("\nleave-one-out (Teff node dropped): median RMS at the dropped points, by node")
        rows = table_rows(loo_summary, methods, "Teff node")
        for row in rows:
            row["clone RMS"] = clone_by_teff.get(row["Teff node"], {}).get("clone RMS")
        rows[-1]["clone RMS"] = float(np.nanmedian(clone_rms[1:-1]))  # the interior nodes
        print_table(rows, ["Teff node", "n", "clone RMS", *methods])
    if loo_logg_summary:
        print("\nleave-one-out (log g node dropped): median RMS at the dropped points")
        rows = table_rows(loo_logg_summary, methods, "log g node")
        print_table(rows, ["log g node", "n", *methods])
    print("\nclone RMS at the grid points by Teff node (median):")
    print_table([{"Teff": k, **v} for k, v in clone_by_teff.items()], ["Teff", "clone RMS"])
    for m in variants:
        line = f"{m}: beats pixel interpolation at "
        line += f"{off_summary['overall'][f'wins_{m}_vs_{PIXEL}']}/{len(off_rows)} off-grid"
        if loo_summary:
            line += f", {loo_summary['overall'][f'wins_{m}_vs_{PIXEL}']}/{len(loo_teff)} LOO"
        print(line)

    timings["total"] = time.perf_counter() - t_start
    cpu["total"] = time.process_time() - t_cpu
    name = f"fidelity_{spec.name}{suffix}" + (f"_{tag}" if tag else "")
    payload = {
        "command": " ".join(["python", "benchmarks/fidelity.py", *(argv or sys.argv[1:])]),
        "grid": {
            "name": spec.name,
            "model": spec.model.settings(),
            "axes": [list(map(float, a)) for a in axes],
            "crop": crop,
            "n_pix": int(wl.size),
            "n_active": int(active.sum()),
        },
        "clone_settings": settings.as_dict(),
        "completion": None if completion is None else dataclasses.asdict(completion),
        "propagation": None if propagation is None else dataclasses.asdict(propagation),
        "clones_dir": os.path.relpath(clones_dir, Path(__file__).resolve().parents[1]),
        "manifold_set": manifold_kwargs,
        "variants": variants,
        "n_line_identities": manifold.n_lines,
        "identity_presence": presence,
        "offgrid_seed": OFFGRID_SEED,
        "truth_check_max_abs_diff_at_nodes": truth_check,
        "timings_s": timings,
        "cpu_seconds": cpu,
        "rows": {"offgrid": off_rows, "loo": loo_rows, "grid": grid_rows},
        "summary": {
            "methods": methods,
            "median_clone_rms": float(np.nanmedian(clone_rms)),
            "clone_rms_by_teff": {k: v["clone RMS"] for k, v in clone_by_teff.items()},
            "offgrid": off_summary,
            "loo_teff": loo_summary,
            "loo_logg": loo_logg_summary,
        },
    }
    print("\nwall (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    print("CPU (s): " + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items()))
    write_results(name, payload, args.out)
    return payload


if __name__ == "__main__":
    main()
