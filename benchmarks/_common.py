"""Shared helpers for the benchmark scripts: machine info, timing, JSON output, tables, and
the arguments most scripts share (``--quick``, ``--workdir``, ``--out``, ``KEY=VALUE`` lists)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
#: The reference data (``../shared/data`` beside the checkout; JBLASE_SHARED_DATA overrides).
SHARED_DATA = Path(
    os.environ.get("JBLASE_SHARED_DATA")
    or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)


def machine_info() -> dict:
    import equinox
    import optax
    import scipy

    import jblase

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "versions": {
            "jblase": jblase.__version__,
            "jax": jax.__version__,
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "optax": optax.__version__,
            "equinox": equinox.__version__,
        },
    }


def timeit(fn, repeats: int = 5, warmup: int = 1) -> dict:
    """Median, min and max wall time (s) of ``fn()`` (which must block until done)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "n": repeats}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def write_results(name: str, payload: dict, out_dir: Path | None = None) -> Path:
    out_dir = Path(out_dir or os.environ.get("JBLASE_BENCH_OUT", RESULTS))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    payload = {"benchmark": name, "machine": machine_info(), **payload}
    path.write_text(json.dumps(payload, indent=2, default=float))
    print(f"\nwrote {path}")
    return path


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).rjust(w) for c, w in zip(columns, widths, strict=True)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def add_common_args(
    parser: argparse.ArgumentParser, workdir: bool = True, out: bool = True
) -> argparse.ArgumentParser:
    """Add ``--quick`` and, optionally, ``--workdir`` and ``--out`` (Paths, default None)."""
    parser.add_argument("--quick", action="store_true", help="CI-sized run (a minute or two)")
    if workdir:
        parser.add_argument(
            "--workdir",
            type=Path,
            default=None,
            help="work directory for grids, clones and manifolds (reused: reruns resume)",
        )
    if out:
        parser.add_argument(
            "--out", type=Path, default=None, help="JSON output directory (default: results/)"
        )
    return parser


def parse_value(text: str):
    """A command-line value: JSON where it parses (3, 0.05, true, null, "x"), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_key_values(items, what: str = "option") -> dict:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}`` (values by :func:`parse_value`)."""
    out = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"{what} {item!r} is not KEY=VALUE")
        out[key.strip()] = parse_value(value)
    return out


@contextlib.contextmanager
def stage(timings: dict, name: str, message: str | None = None, cpu: dict | None = None):
    """Print ``message`` (default ``name``) as a stage header; add the stage's wall seconds to
    ``timings[name]`` and, if given, this process's CPU seconds to ``cpu[name]`` (on a shared
    machine the CPU time says more about the work than the wall time)."""
    print(f"\n== {message or name}", flush=True)
    t, c = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t
        if cpu is not None:
            cpu[name] = cpu.get(name, 0.0) + time.process_time() - c
