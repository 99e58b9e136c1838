"""The throughput search against the paper's GP protocol, on the same observed spectra.

Injected spectra as in ``injection.py`` (the demo simulator at random off-grid truths, with RV,
v sin i, R = 55,000 and noise at one S/N), each fitted by ``jblase.fit`` twice in this
process: with the GP protocol (100 random points, 20 GP-guided calls; the default) and with
``method="multistart"`` (the same random points, then gradient fits from the best few). Both
then run the same joint refinement and Laplace errors. Reported per method: bias, scatter and
mean absolute error per parameter, the Laplace coverage, the median chi-square, the median
seconds per fit (warm: one fit per method first, untimed, compiles its programs), and the
ratio of the two methods' seconds; and how often the two land on the same answer.

    python benchmarks/search_paths.py [--quick] [--n 30] [--snr 100] [--manifold M.npz]

Writes ``results/search_paths[_quick].json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from injection import (  # noqa: E402
    PARAMS,
    _fit_one,
    _manifold,
    _observation,
    _truths,
    add_injected_set_args,
)

METHODS = ("gp", "multistart")  # the two it compares (jblase.search.SEARCH_METHODS)


def _row(result, truth) -> dict:
    row = {f"true_{p}": float(v) for p, v in zip(PARAMS, truth, strict=True)}
    row.update({p: result.values[p] for p in PARAMS})
    row.update({f"{p}_err": result.errors[p] for p in PARAMS})
    row.update(chi2_reduced=result.chi2_reduced, seconds=result.seconds["total"])
    row["search_seconds"] = result.seconds["search"]
    return row


def _summary(rows: list[dict]) -> dict:
    out = {}
    for p in PARAMS:
        err = np.array([r[p] - r[f"true_{p}"] for r in rows])
        sig = np.array([r[f"{p}_err"] for r in rows])
        ok = np.isfinite(sig)
        q16, q84 = np.percentile(err, [16, 84])
        out[p] = {
            "bias": float(np.median(err)),
            "scatter": float(0.5 * (q84 - q16)),
            "mean_abs_error": float(np.mean(np.abs(err))),
            "coverage_1sigma_stat": (
                float(np.mean(np.abs(err[ok]) <= sig[ok])) if ok.any() else None
            ),
        }
    out["median_chi2_reduced"] = float(np.median([r["chi2_reduced"] for r in rows]))
    out["median_seconds_per_fit"] = float(np.median([r["seconds"] for r in rows]))
    out["median_search_seconds"] = float(np.median([r["search_seconds"] for r in rows]))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser = add_injected_set_args(parser, "default 30, quick 4", 2000)
    args = parser.parse_args(argv)
    n = args.n or (4 if args.quick else 30)

    from jblase.generator import Generator
    from jblase.search import SearchSettings

    manifold, model, manifold_path = _manifold(args)
    generator = Generator.from_manifold(manifold)
    base = SearchSettings(n_random=40, n_guided=8) if args.quick else SearchSettings()
    searches = {m: SearchSettings(**{**base.__dict__, "method": m}) for m in METHODS}
    truths = _truths(manifold, n, np.random.default_rng(args.seed))

    def observe(k):
        return _observation(model, truths[k], args.snr, np.random.default_rng([args.seed, k]))

    first = {}
    for m, search in searches.items():  # compile each method's programs, untimed
        t = time.perf_counter()
        _fit_one(generator, observe(0), truths[0], search)
        first[m] = time.perf_counter() - t

    rows = {m: [] for m in METHODS}
    for k, truth in enumerate(truths):
        spectrum = observe(k)
        for m, search in searches.items():
            rows[m].append(_row(_fit_one(generator, spectrum, truth, search), truth))
        if (k + 1) % 10 == 0:
            print(f"  {k + 1}/{n} spectra", flush=True)

    summary = {m: _summary(r) for m, r in rows.items()}
    gp, ms = rows["gp"], rows["multistart"]
    same = [
        abs(a["teff"] - b["teff"]) <= max(a["teff_err"], 1.0)
        and abs(a["logg"] - b["logg"]) <= max(a["logg_err"], 1e-3)
        for a, b in zip(gp, ms, strict=True)
    ]
    chi2_ratio = [b["chi2_reduced"] / a["chi2_reduced"] for a, b in zip(gp, ms, strict=True)]
    comparison = {
        "seconds_per_fit_ratio_gp_over_multistart": summary["gp"]["median_seconds_per_fit"]
        / summary["multistart"]["median_seconds_per_fit"],
        "search_seconds_ratio_gp_over_multistart": summary["gp"]["median_search_seconds"]
        / summary["multistart"]["median_search_seconds"],
        "fraction_same_answer": float(np.mean(same)),
        "fraction_multistart_chi2_not_worse": float(np.mean(np.array(chi2_ratio) <= 1 + 1e-6)),
        "median_chi2_ratio_multistart_over_gp": float(np.median(chi2_ratio)),
    }
    table = [{"method": m, "param": p, **summary[m][p]} for m in METHODS for p in PARAMS]
    _common.print_table(
        table, ["method", "param", "bias", "scatter", "mean_abs_error", "coverage_1sigma_stat"]
    )
    print(
        "\n"
        + "\n".join(
            f"{m}: median {summary[m]['median_seconds_per_fit']:.2f} s per fit "
            f"({summary[m]['median_search_seconds']:.2f} s search), median chi2_red "
            f"{summary[m]['median_chi2_reduced']:.4f}"
            for m in METHODS
        )
    )
    print(", ".join(f"{k} {v:.3g}" for k, v in comparison.items()))
    _common.write_results(
        "search_paths_quick" if args.quick else "search_paths",
        {
            "manifold": manifold_path,
            "n": n,
            "snr": args.snr,
            "seed": args.seed,
            "search": {m: s.__dict__ for m, s in searches.items()},
            "first_fit_with_compilation_seconds": first,
            "summary": summary,
            "comparison": comparison,
            "rows": rows,
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
