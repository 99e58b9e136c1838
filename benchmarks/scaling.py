"""Scaling benchmark: how reconstruction and cloning times grow with lines, pixels and batch.

Each axis is varied with the others held fixed, and the log-log slope of time against size
(``np.polyfit(log size, log time, 1)``) is reported: 1 is linear, below 1 sub-linear. Every
size is compiled (warmed up) before it is timed; times are medians of a few repeats.

Reconstruction (one generator call, jitted), on stand-in manifolds
(``benchmarks/_realistic_manifold.py``: the shapes and sparsity of a cloned grid, NOT a clone):

* ``lines``: ``make_manifold(n_lines, wl_range)`` with the pixels fixed;
* ``pixels``: the line count fixed, the wavelength span (so the pixel count) varied;
* ``batch``: ``generator.batch(params (n, 3), batch_size)`` for n spectra (the same few points
  tiled), either as one batched step (``batch_size=n``, "one step") or one spectrum per
  compiled step (``batch_size=1``, "per spectrum").

Two generators: ``paper_work`` (``Generator.from_manifold(m, amplitude_interpolation="log",
flux_tolerance=None)``: every line gets the full ``wing_cut`` = 6000-pixel window, the paper's
work) and ``default`` (``Generator.from_manifold(m)``: adaptive windows, linear amplitudes).
With fixed 6000-pixel windows the work is lines x 6000, so time should barely grow with pixels.
The generator skips chunks of lines that vanish at the evaluated point, so the work follows the
lines *active* there (reported as ``active_lines``; the same evaluation points at every size):
with the paper's log-amplitude interpolation a line vanishes unless it was cloned at all eight
corners of the cell, so only ~7% of the lines are active at an off-grid point.

Cloning (seconds per Adam epoch = time of ``epochs`` epochs / epochs, so it includes the
per-call setup: initial and final loss, window grouping), float32 profile arithmetic, on
synthetic spectra made of random pseudo-Voigt lines (NumPy synthesis, baseline_paper.py):

* ``lines`` and ``pixels``: ``clone_lines`` from the true lines perturbed (exact line counts);
* ``batch``: ``clone_many`` of b different spectra with ``batch_size=b`` (detection inside;
  the detected counts are reported).

    python benchmarks/scaling.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import jax
import numpy as np
from _common import peak_rss_mb, print_table, timeit, write_results
from _realistic_manifold import make_manifold
from baseline_paper import equivalent_generator, ln_flux_numpy

from jblase import Generator
from jblase.clone import CloneSettings, clone_lines, clone_many
from jblase.linelist import LineList

#: Resolving power of the stand-ins and synthetic spectra (PHOENIX-like).
RESOLUTION = 500_000.0
WL_START = 8300.0

QUICK = {
    "recon_lines": (1000, 2000, 4000),
    "recon_fixed_lines": 2000,
    "recon_pixels": (6_000, 12_000, 24_000),
    "recon_fixed_pixels": 12_000,
    "recon_batch": (2, 8),
    "recon_batch_contenders": ("default",),
    "recon_points": 4,
    "clone_lines": (100, 200, 400),
    "clone_fixed_lines": 200,
    "clone_pixels": (10_000, 20_000),
    "clone_fixed_pixels": 20_000,
    "clone_batch": (1, 4),
    "epochs": 5,
    "repeats": 3,
}
FULL = {
    "recon_lines": (1000, 2000, 4000, 8000, 16000),
    "recon_fixed_lines": 4000,
    "recon_pixels": (12_000, 24_000, 48_000, 96_000),
    "recon_fixed_pixels": 48_000,
    "recon_batch": (2, 4, 8, 16, 32),
    "recon_batch_contenders": ("paper_work", "default"),
    "recon_points": 8,
    "clone_lines": (100, 200, 400, 800, 1600),
    "clone_fixed_lines": 400,
    "clone_pixels": (10_000, 20_000, 40_000, 80_000),
    "clone_fixed_pixels": 40_000,
    "clone_batch": (1, 2, 4, 8),
    "epochs": 10,
    "repeats": 5,
}


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def wl_range_for(n_pix: int) -> tuple[float, float]:
    """A wavelength span starting at WL_START that holds about ``n_pix`` pixels at RESOLUTION."""
    return WL_START, WL_START * math.exp((n_pix - 0.5) * math.log1p(1.0 / RESOLUTION))


def wavelength(n_pix: int) -> np.ndarray:
    return WL_START * np.exp(np.arange(n_pix) * np.log1p(1.0 / RESOLUTION))


def slope(sizes, times) -> float:
    return float(np.polyfit(np.log(np.asarray(sizes, float)), np.log(np.asarray(times)), 1)[0])


# --------------------------------------------------------------------------- reconstruction

_GENERATORS = {
    "paper_work": lambda m: equivalent_generator(m, "float64"),
    "default": lambda m: Generator.from_manifold(m),
}


def eval_points(axes, n: int, seed: int) -> np.ndarray:
    """``n`` fixed off-grid points (teff, logg, feh) inside ``axes``, the same for every size."""
    rng = np.random.default_rng(seed)
    lo = np.array([float(a[0]) for a in axes])
    hi = np.array([float(a[-1]) for a in axes])
    return lo + (hi - lo) * rng.random((n, 3))


def time_serial(gen, points: np.ndarray, repeats: int) -> dict:
    """Mean over ``points`` of the median time of ``gen(p)``, after compiling.

    Absent lines cost (almost) nothing (the generator skips chunks of lines that vanish at
    ``p``), so the time depends on the point; the same points are used at every size.
    """
    t = time.perf_counter()
    jax.block_until_ready(gen(points[0]))
    first = time.perf_counter() - t
    per_point = [
        timeit(lambda p=p: jax.block_until_ready(gen(p)), repeats, warmup=0) for p in points
    ]
    medians = [t["median"] for t in per_point]
    active = [int(np.asarray(gen.line_parameters(p)[-1]).sum()) for p in points]
    return {
        "seconds": float(np.mean(medians)),
        "seconds_min": float(np.mean([t["min"] for t in per_point])),
        "spread_over_points": [min(medians), max(medians)],
        "first_call_s": first,
        "active_lines": float(np.mean(active)),
    }


def time_batch(gen, points: np.ndarray, batch_size: int, repeats: int) -> dict:
    """Median time of ``gen.batch(points, batch_size)``, after compiling."""
    call = lambda: jax.block_until_ready(gen.batch(points, batch_size=batch_size))  # noqa: E731
    t = time.perf_counter()
    call()
    first = time.perf_counter() - t
    res = timeit(call, repeats, warmup=0)
    active = [int(np.asarray(gen.line_parameters(p)[-1]).sum()) for p in points]
    return {
        "seconds": res["median"],
        "seconds_min": res["min"],
        "spread": [res["min"], res["max"]],
        "first_call_s": first,
        "active_lines": float(np.mean(active)),
    }


def bench_reconstruction(cfg: dict, seed: int) -> tuple[list[dict], dict, dict]:
    rows: list[dict] = []
    slopes: dict[str, dict[str, float]] = {}
    slopes_min: dict[str, dict[str, float]] = {}
    manifolds: dict[tuple[int, int], object] = {}
    serial: dict[tuple[int, int, str], dict] = {}

    def manifold(n_lines, n_pix):
        if (n_lines, n_pix) not in manifolds:
            manifolds[n_lines, n_pix] = make_manifold(
                n_lines, wl_range_for(n_pix), RESOLUTION, seed=seed
            )
        return manifolds[n_lines, n_pix]

    def add_axis(axis, contender, sizes, results, n_lines, n_pix, batch):
        slopes.setdefault(axis, {})[contender] = slope(sizes, [r["seconds"] for r in results])
        slopes_min.setdefault(axis, {})[contender] = slope(
            sizes, [r["seconds_min"] for r in results]
        )
        for i, (size, r) in enumerate(zip(sizes, results, strict=True)):
            rows.append(
                {
                    "task": "reconstruct",
                    "axis": axis,
                    "contender": contender,
                    "size": size,
                    "lines": n_lines[i] if isinstance(n_lines, list) else n_lines,
                    "pixels": n_pix[i] if isinstance(n_pix, list) else n_pix,
                    "batch": batch[i] if isinstance(batch, list) else batch,
                    **r,
                    "seconds_per_unit": r["seconds"] / size,
                }
            )

    points = eval_points(
        manifold(cfg["recon_fixed_lines"], cfg["recon_fixed_pixels"]).axes,
        max(cfg["recon_points"], max(cfg["recon_batch"])),
        seed + 1,
    )
    for name, build in _GENERATORS.items():
        for axis, grid in (
            ("lines", [(n, cfg["recon_fixed_pixels"]) for n in cfg["recon_lines"]]),
            ("pixels", [(cfg["recon_fixed_lines"], p) for p in cfg["recon_pixels"]]),
        ):
            results, n_pix = [], []
            for n_lines, pix in grid:
                if (n_lines, pix, name) not in serial:
                    m = manifold(n_lines, pix)
                    serial[n_lines, pix, name] = {
                        **time_serial(build(m), points[: cfg["recon_points"]], cfg["repeats"]),
                        "n_pix": int(m.wavelength.shape[0]),
                    }
                    r = serial[n_lines, pix, name]
                    _log(
                        f"reconstruct {name} lines={n_lines} pixels={r['n_pix']}: "
                        f"{r['seconds']:.3g} s ({r['active_lines']:.0f} active lines)"
                    )
                results.append(serial[n_lines, pix, name])
                n_pix.append(serial[n_lines, pix, name]["n_pix"])
            sizes = [g[0] for g in grid] if axis == "lines" else n_pix
            add_axis(axis, name, sizes, results, [g[0] for g in grid], n_pix, 1)
        if name not in cfg["recon_batch_contenders"]:
            continue
        m = manifold(cfg["recon_fixed_lines"], cfg["recon_fixed_pixels"])
        gen = build(m)
        n_pix = int(m.wavelength.shape[0])
        for mode in ("one step", "per spectrum"):
            results = []
            for n in cfg["recon_batch"]:
                bs = n if mode == "one step" else 1
                # the same few points tiled, so every batch has the same mix of workloads
                base = points[: min(cfg["recon_batch"])]
                batch_points = np.tile(base, (-(-n // len(base)), 1))[:n]
                results.append(time_batch(gen, batch_points, bs, cfg["repeats"]))
                _log(
                    f"reconstruct {name} batch n={n} batch_size={bs}: "
                    f"{results[-1]['seconds']:.3g} s per batch"
                )
            add_axis(
                f"batch ({mode})",
                name,
                list(cfg["recon_batch"]),
                results,
                cfg["recon_fixed_lines"],
                n_pix,
                list(cfg["recon_batch"]),
            )
    return rows, slopes, slopes_min


# --------------------------------------------------------------------------- cloning


def random_lines(n_lines: int, wl: np.ndarray, rng) -> dict[str, np.ndarray]:
    """Random pseudo-Voigt lines (centre A, ln a, ln sigma, ln gamma) inside ``wl``.

    Depths of about 0.01-0.5 at PHOENIX sampling (sigma 15-45 mA, gamma 5-30 mA).
    """
    margin = min(2.0, 0.05 * (wl[-1] - wl[0]))
    return {
        "center": np.sort(rng.uniform(wl[0] + margin, wl[-1] - margin, n_lines)),
        "ln_amplitude": np.log(rng.uniform(0.001, 0.03, n_lines)),
        "ln_sigma": np.log(rng.uniform(0.015, 0.045, n_lines)),
        "ln_gamma": np.log(rng.uniform(0.005, 0.03, n_lines)),
    }


def synthetic_spectrum(lines: dict, wl: np.ndarray, wing_cut: int = 6000) -> np.ndarray:
    return np.exp(ln_flux_numpy(wl, **lines, wing_cut=wing_cut))


def perturbed(lines: dict, rng) -> LineList:
    n = lines["center"].size
    return LineList(
        lines["center"] + rng.normal(0.0, 0.003, n),
        lines["ln_amplitude"] + rng.normal(0.0, 0.2, n),
        lines["ln_sigma"] + rng.normal(0.0, 0.1, n),
        lines["ln_gamma"] + rng.normal(0.0, 0.1, n),
    )


def bench_cloning(cfg: dict, seed: int) -> tuple[list[dict], dict, dict]:
    settings = CloneSettings(epochs=cfg["epochs"], compute_dtype="float32")
    rows: list[dict] = []
    cache: dict[tuple[int, int, int | None], dict] = {}

    def measure(n_lines: int, n_pix: int, batch: int | None) -> dict:
        key = (n_lines, n_pix, batch)
        if key in cache:
            return cache[key]
        rng = np.random.default_rng(seed + n_lines + n_pix)
        wl = wavelength(n_pix)
        if batch is None:
            lines = random_lines(n_lines, wl, rng)
            flux = synthetic_spectrum(lines, wl)
            init = perturbed(lines, rng)

            def call():
                return [clone_lines(wl, flux, init, settings)]
        else:
            fluxes = np.stack(
                [synthetic_spectrum(random_lines(n_lines, wl, rng), wl) for _ in range(batch)]
            )

            def call():
                return clone_many(wl, fluxes, settings, batch_size=batch, progress=False)

        t = time.perf_counter()
        results = call()  # compile
        first = time.perf_counter() - t
        times = []
        for _ in range(cfg["repeats"]):
            t = time.perf_counter()
            call()
            times.append(time.perf_counter() - t)
        cache[key] = {
            "seconds": statistics.median(times),
            "seconds_min": min(times),
            "spread": [min(times), max(times)],
            "first_call_s": first,
            "lines_cloned": [r.n_lines for r in results],
            "rms_initial": float(np.median([r.rms_initial for r in results])),
            "rms": float(np.median([r.rms for r in results])),
        }
        _log(
            f"clone lines={n_lines} pixels={n_pix} batch={batch}: "
            f"{cache[key]['seconds'] / settings.epochs:.3g} s/epoch (compile {first:.1f} s)"
        )
        return cache[key]

    axes = {
        "lines": [(n, cfg["clone_fixed_pixels"], None) for n in cfg["clone_lines"]],
        "pixels": [(cfg["clone_fixed_lines"], p, None) for p in cfg["clone_pixels"]],
        "batch": [
            (cfg["clone_fixed_lines"], cfg["clone_fixed_pixels"], b) for b in cfg["clone_batch"]
        ],
    }
    slopes: dict[str, float] = {}
    slopes_min: dict[str, float] = {}
    for axis, points in axes.items():
        results = [measure(*p) for p in points]
        sizes = [{"lines": p[0], "pixels": p[1], "batch": p[2]}[axis] for p in points]
        per_epoch = [r["seconds"] / settings.epochs for r in results]
        slopes[axis] = slope(sizes, per_epoch)
        slopes_min[axis] = slope(sizes, [r["seconds_min"] / settings.epochs for r in results])
        for p, r, size, t in zip(points, results, sizes, per_epoch, strict=True):
            rows.append(
                {
                    "task": "clone",
                    "axis": axis,
                    "contender": "float32",
                    "size": size,
                    "lines": p[0],
                    "pixels": p[1],
                    "batch": p[2] or 1,
                    "lines_cloned": float(np.mean(r["lines_cloned"])),
                    "seconds": t,
                    "seconds_min": r["seconds_min"] / settings.epochs,
                    "seconds_per_unit": t / size,
                    "spread": [s / settings.epochs for s in r["spread"]],
                    "first_call_s": r["first_call_s"],
                    "rms_initial": r["rms_initial"],
                    "rms": r["rms"],
                }
            )
    return rows, slopes, slopes_min


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 sizes per axis, small sizes")
    parser.add_argument("--skip-clone", action="store_true", help="reconstruction only")
    parser.add_argument("--skip-reconstruct", action="store_true", help="cloning only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="output directory (default benchmarks/results)")
    args = parser.parse_args()
    cfg = QUICK if args.quick else FULL
    t0 = time.perf_counter()
    recon_rows, recon_slopes, recon_slopes_min = [], {}, {}
    clone_rows, clone_slopes, clone_slopes_min = [], {}, {}
    if not args.skip_reconstruct:
        recon_rows, recon_slopes, recon_slopes_min = bench_reconstruction(cfg, args.seed)
    if not args.skip_clone:
        clone_rows, clone_slopes, clone_slopes_min = bench_cloning(cfg, args.seed)
    rows = recon_rows + clone_rows
    columns = [
        "task",
        "axis",
        "contender",
        "size",
        "lines",
        "pixels",
        "batch",
        "active_lines",
        "lines_cloned",
        "seconds",
    ]
    print("\ntimes (reconstruct: s per generator call; clone: s per epoch), medians")
    print_table([{c: r.get(c, "-") for c in columns} for r in rows], columns)
    slope_rows = []
    for stat, recon, clone in (
        ("median", recon_slopes, clone_slopes),
        ("min", recon_slopes_min, clone_slopes_min),
    ):
        for name in _GENERATORS:
            if recon:
                by_axis = {a: s[name] for a, s in recon.items() if name in s}
                slope_rows.append(
                    {"task": "reconstruct", "contender": name, "times": stat, **by_axis}
                )
        if clone:
            slope_rows.append({"task": "clone", "contender": "float32", "times": stat, **clone})
    slope_columns = ["task", "contender", "times"] + list(
        dict.fromkeys(k for r in slope_rows for k in r if k not in ("task", "contender", "times"))
    )
    print(
        "\nlog-log slopes d log(time) / d log(size) (1 = linear), from the median times and "
        "from the minimum times (less sensitive to other jobs on a shared machine)"
    )
    print_table([{c: r.get(c, "-") for c in slope_columns} for r in slope_rows], slope_columns)
    summary = {
        "reconstruct_slopes": recon_slopes,
        "clone_slopes": clone_slopes,
        "reconstruct_slopes_from_min": recon_slopes_min,
        "clone_slopes_from_min": clone_slopes_min,
        **{
            f"slope_reconstruct_{axis.replace(' (', '_').rstrip(')')}_{name}": s
            for axis, by in recon_slopes.items()
            for name, s in by.items()
        },
        **{f"slope_clone_{axis}": s for axis, s in clone_slopes.items()},
        "max_slope": max(
            [s for by in recon_slopes.values() for s in by.values()] + list(clone_slopes.values()),
            default=None,
        ),
        "seconds_total": time.perf_counter() - t0,
        "peak_rss_mb": peak_rss_mb(),
    }
    write_results(
        "scaling" + ("_quick" if args.quick else ""),
        {
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
            "resolution": RESOLUTION,
            "wing_cut": 6000,
            "stand_in_note": "reconstruction on timing stand-ins from "
            "benchmarks/_realistic_manifold.py, not clones",
            "rows": rows,
            "summary": summary,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
