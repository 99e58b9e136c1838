"""Reconstruction throughput at paper scale: spectra per second from ``Generator.batch``.

The paper's manifold held 128,723 line identities over 8038-12849 A at R = 500,000 (about
236,000 pixels). This script builds a stand-in manifold of that size
(benchmarks/_realistic_manifold.py: the shapes and sparsity of a cloned grid, NOT a clone), then
times ``generator.batch(params, batch_size)`` on random in-grid parameters for several batch
sizes and generator settings, on whatever JAX backend is present (meant for a GPU; ``--quick``
runs a small size on a CPU). No baseline runs here: the target (1,000 spectra/s at paper scale
on a GPU) is absolute; ``reconstruct.py`` holds the ratios against the paper's design.

The grid axes are 3 x 2 x 2 points (Teff 4000-7000 K, log g 3.5-5, [Fe/H] -0.5-0): the
generator's cost does not depend on the number of grid points as such (trilinear interpolation
reads the eight corners of one cell), and the stand-in simulator needs about a minute of CPU per
100 points at this line count. The cells are large, so a line present at any corner is active
in the whole cell (default, linear amplitudes): more active lines per spectrum than on a fine
grid, so these figures are conservative.

Contenders: ``default`` (adaptive windows, float64 profile arithmetic), ``default_f32``
(adaptive windows, float32), ``paper_work_f32`` (the paper's 6000-pixel windows and ln-a
interpolation, float32). Times are medians over repeats after a warm-up call (compile time is
reported apart), with the device's peak memory where the backend reports it.

    python benchmarks/throughput.py --quick                 # ~1 min on 2 CPU cores
    python benchmarks/throughput.py                         # paper scale (GPU)
"""

from __future__ import annotations

import argparse
import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np
from _common import peak_rss_mb, print_table, timeit, write_results
from _realistic_manifold import describe, make_manifold
from baseline_paper import equivalent_generator

import jblase.generator
from jblase import Generator
from jblase.generator import generator_chunk_elements

PAPER = {"lines": 128_723, "wl_range": (8038.0, 12849.0), "batches": (1, 32, 128, 512)}
#: Small grid: the generator's cost is independent of the grid size (see the module docstring).
AXES = ((4000.0, 5500.0, 7000.0), (3.5, 5.0), (-0.5, 0.0))
QUICK = {"lines": 3_000, "wl_range": (8300.0, 8815.0), "batches": (1, 8, 32)}


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _device_peak_mb() -> float | None:
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**20


def random_points(axes, n: int, seed: int) -> jnp.ndarray:
    rng = np.random.default_rng(seed)
    return jnp.asarray(np.stack([rng.uniform(a[0], a[-1], n) for a in axes], axis=1))


def run(args) -> dict:
    t = time.perf_counter()
    manifold = make_manifold(args.lines, tuple(args.wl_range), axes=AXES, seed=args.seed)
    build_s = time.perf_counter() - t
    present = np.asarray(manifold.present).reshape(manifold.n_lines, -1).sum(axis=0)
    n_pix = int(manifold.wavelength.shape[0])
    _log(
        f"stand-in manifold: {manifold.n_lines} lines, {n_pix} pixels, "
        f"{present.mean():.0f} present per grid point ({build_s:.0f} s)"
    )
    contenders = {
        "default": lambda: Generator.from_manifold(manifold),
        "default_f32": lambda: Generator.from_manifold(manifold, compute_dtype="float32"),
        "paper_work_f32": lambda: equivalent_generator(manifold, "float32"),
    }
    rows = []
    for name in args.contenders:
        t = time.perf_counter()
        gen = contenders[name]()
        setup_s = time.perf_counter() - t
        for batch, chunk in itertools.product(args.batches, args.chunk_elements or [None]):
            n = max(batch * args.steps, batch)
            params = random_points(manifold.axes, n, args.seed + batch)
            run_batch = lambda g=gen, p=params, b=batch, c=chunk: jax.block_until_ready(  # noqa: E731
                g.batch(p, batch_size=b, chunk_elements=c)
            )
            t = time.perf_counter()
            run_batch()
            first_s = time.perf_counter() - t
            timing = timeit(run_batch, repeats=args.repeats, warmup=0)
            per = timing["median"] / n
            row = {
                "contender": name,
                "batch_size": batch,
                "chunk_elements": chunk or generator_chunk_elements(batch),
                "spectra_per_step": gen.spectra_per_step(batch, chunk),
                "n_spectra": n,
                "seconds_per_spectrum": per,
                "spectra_per_s": 1.0 / per,
                "spread_spectra_per_s": [n / timing["max"], n / timing["min"]],
                "first_call_s": first_s,
                "setup_s": setup_s,
                "max_tiles": gen.max_tiles,
                "device_peak_mb": _device_peak_mb(),
            }
            rows.append(row)
            _log(
                f"{name} batch {batch}, {row['chunk_elements']} elements per step: "
                f"{row['spectra_per_s']:.1f} spectra/s"
            )
    best = max(rows, key=lambda r: r["spectra_per_s"])
    return {
        "manifold": {**describe(manifold, args.wl_range), "build_s": build_s},
        "rows": rows,
        "summary": {
            "spectra_per_s_best": best["spectra_per_s"],
            "best": {k: best[k] for k in ("contender", "batch_size", "chunk_elements")},
            "spectra_per_s_default_best": max(
                (r["spectra_per_s"] for r in rows if r["contender"] == "default"), default=None
            ),
            "n_lines": manifold.n_lines,
            "n_pix": n_pix,
            "peak_rss_mb": peak_rss_mb(),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3,000 lines, 30k pixels")
    parser.add_argument("--lines", type=int)
    parser.add_argument("--wl-range", type=float, nargs=2, metavar=("LO", "HI"))
    parser.add_argument("--batches", type=int, nargs="+")
    parser.add_argument("--steps", type=int, default=4, help="batches per timed call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--contenders", nargs="+", default=["default", "default_f32", "paper_work_f32"]
    )
    parser.add_argument(
        "--chunk-elements",
        type=int,
        nargs="+",
        help="window elements per forward-model step to compare (Generator.batch's "
        "chunk_elements; default: the generator's own choice, generator_chunk_elements)",
    )
    parser.add_argument("--name", help="JSON name (default throughput[_quick])")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="output directory (default benchmarks/results)")
    args = parser.parse_args()
    preset = QUICK if args.quick else PAPER
    args.lines = args.lines or preset["lines"]
    args.wl_range = args.wl_range or preset["wl_range"]
    args.batches = args.batches or preset["batches"]
    payload = run(args)
    print(
        f"\nthroughput: {payload['manifold']['n_lines']} lines, {payload['manifold']['n_pix']} "
        f"pixels (stand-in manifold), {jax.default_backend()}"
    )
    print_table(
        payload["rows"],
        [
            "contender",
            "batch_size",
            "spectra_per_step",
            "chunk_elements",
            "n_spectra",
            "spectra_per_s",
            "first_call_s",
            "device_peak_mb",
        ],
    )
    payload["settings"] = {
        "chunk_elements_accelerator": jblase.generator.GENERATOR_CHUNK_ELEMENTS_ACCELERATOR,
        "chunk_elements_per_spectrum_accelerator": (
            jblase.generator.GENERATOR_CHUNK_ELEMENTS_PER_SPECTRUM_ACCELERATOR
        ),
    }
    name = args.name or "throughput" + ("_quick" if args.quick else "")
    write_results(name, payload, out_dir=args.out)


if __name__ == "__main__":
    main()
