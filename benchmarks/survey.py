"""Survey throughput: ``jblase fit-many`` on a Dask local cluster of 1 and of 2 workers.

Injected spectra (as ``injection.py`` makes them: simulator truths at random off-grid points,
RV, v sin i, R = 55,000, S/N 100) are written to a directory with one corrupt file, and fitted
with the demo manifold by :func:`jblase.survey.run_survey` three times in this process: a
warm-up on one spectrum (fills JAX's persistent compilation cache, so neither timed run pays
for compiling from scratch), then every spectrum with 1 worker and with 2 workers. It reports
spectra fitted per second of wall time for each and their ratio, and checks that the two
tables agree row for row (status, error and every fitted value; only ``seconds`` differs).

    python benchmarks/survey.py [--quick] [--n 12] [--manifold M.npz] [--batch-size 2]
        [--workers 1 2] [--search gp|multistart]

Writes ``results/survey[_quick].json``.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from injection import _manifold, _observation, _truths  # noqa: E402

from jblase.search import SEARCH_METHODS  # noqa: E402

SNR = 100.0


def _write_inputs(folder: Path, manifold, model, n: int, seed: int) -> list[str]:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    names = []
    for k, truth in enumerate(_truths(manifold, n, rng)):
        s = _observation(model, truth, SNR, np.random.default_rng([seed, k]))
        name = f"star{k:03d}.npz"
        np.savez(
            folder / name,
            wavelength=s.wavelength[0],
            flux=s.flux[0],
            uncertainty=s.uncertainty[0],
        )
        names.append(name)
    (folder / "corrupt.npz").write_bytes(b"a truncated download")
    return names


def _same(a: list[dict], b: list[dict]) -> tuple[bool, float]:
    """Whether two tables agree row for row (``seconds`` aside), and the largest relative
    difference of their numbers."""
    worst = 0.0
    if [r["file"] for r in a] != [r["file"] for r in b]:
        return False, math.inf
    for ra, rb in zip(a, b, strict=True):
        for key, va in ra.items():
            vb = rb[key]
            if key == "seconds":
                continue
            if isinstance(va, float) and isinstance(vb, float):
                if math.isnan(va) and math.isnan(vb):
                    continue
                worst = max(worst, abs(va - vb) / max(abs(va), abs(vb), 1e-300))
            elif va != vb and key != "gp":
                return False, math.inf
    return worst < 1e-6, worst


def main(argv=None) -> int:
    parser = _common.add_common_args(argparse.ArgumentParser(description=__doc__))
    parser.add_argument("--n", type=int, default=None, help="spectra (default 12; quick 4)")
    parser.add_argument("--manifold", type=Path, default=None, help="a built demo manifold")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1, 2],
        help="local cluster sizes to run, the first the reference (default 1 2; on a GPU "
        "machine 1 and the number of GPUs: one worker per device)",
    )
    parser.add_argument("--search", choices=SEARCH_METHODS, default="gp", help="the fits' search")
    args = parser.parse_args(argv)
    from jblase.fit import FitSettings
    from jblase.survey import FitJob, SurveySettings, read_table, run_survey

    n = args.n or (4 if args.quick else 12)
    manifold, model, manifold_path = _manifold(args)
    work = _common.RESULTS / ("survey_work" + ("_quick" if args.quick else ""))
    names = _write_inputs(work / "spectra", manifold, model, n, args.seed)
    job = FitJob(
        manifold=manifold_path,
        settings=FitSettings(resolving_power=55_000.0),
        search={"n_random": 100, "n_guided": 20, "method": args.search},
    )
    runs = {}
    warm = work / "warmup.csv"
    for path in (warm, warm.with_name(warm.name + ".settings.json")):
        path.unlink(missing_ok=True)
    t = time.perf_counter()
    run_survey(
        [(names[0], str(work / "spectra" / names[0]))],
        warm,
        job,
        SurveySettings(workers=0, progress=False),
    )
    warmup_s = time.perf_counter() - t
    print(f"warm-up (one fit in this process, compiling): {warmup_s:.1f} s")
    for workers in args.workers:
        out = work / f"workers{workers}.csv"
        for path in (out, out.with_name(out.name + ".settings.json")):
            path.unlink(missing_ok=True)
        t = time.perf_counter()
        done = run_survey(
            work / "spectra",
            out,
            job,
            SurveySettings(workers=workers, batch_size=args.batch_size, progress=False),
        )
        wall = time.perf_counter() - t
        rows = read_table(out)
        fit_s = [r["seconds"] for r in rows if r["status"] == "ok"]
        runs[workers] = {
            "wall_s": wall,
            "spectra": done["total"],
            "failed": done["failed"],
            "spectra_per_s": done["total"] / wall,
            "median_fit_s": float(np.median(fit_s)) if fit_s else None,
            "rows": rows,
        }
        print(
            f"{workers} worker(s): {done['total']} spectra ({done['failed']} failed) in "
            f"{wall:.1f} s"
        )
    ref, last = args.workers[0], args.workers[-1]
    checks = [_same(runs[ref]["rows"], runs[w]["rows"]) for w in args.workers[1:]]
    same = all(ok for ok, _ in checks)
    worst = max((w for _, w in checks), default=0.0)
    ratio = runs[last]["spectra_per_s"] / runs[ref]["spectra_per_s"]
    table = [
        {
            "workers": w,
            "spectra": r["spectra"],
            "failed": r["failed"],
            "spectra/s": r["spectra_per_s"],
            f"vs {ref} worker(s)": r["spectra_per_s"] / runs[ref]["spectra_per_s"],
            "median fit s": r["median_fit_s"],
        }
        for w, r in runs.items()
    ]
    _common.print_table(table, list(table[0]))
    print(f"tables equal row for row: {same} (largest relative difference {worst:.2g})")
    payload = {
        "benchmark": "survey",
        "machine": _common.machine_info(),
        "manifold": manifold_path,
        "snr": SNR,
        "n_spectra": n + 1,
        "batch_size": args.batch_size,
        "warmup_s": warmup_s,
        "throughput": table,
        "workers": args.workers,
        "search": args.search,
        "jax_devices": len(jax.devices()),
        f"ratio_{last}_workers_vs_{ref}": ratio,
        "tables_equal": same,
        "largest_relative_difference": worst,
        "runs": {str(w): r for w, r in runs.items()},
    }
    name = "survey_quick" if args.quick else "survey"
    path = _common.write_results(name, payload, args.out)
    print(f"wrote {path}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
