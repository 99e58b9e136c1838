"""NUTS posteriors against the Laplace approximation, on injected observed spectra.

Injected spectra as in ``injection.py`` (the demo simulator at random off-grid truths, with RV,
v sin i, R = 55,000 and noise at one S/N), each fitted by ``jblase.fit`` with
``posterior=PosteriorSettings(...)``: the fit's optimum and Laplace errors, then NUTS
(blackjax) from the posterior's mode in the fit's unconstrained coordinates with the Laplace
covariance there as its mass matrix (window adaptation where the optimum sits on a grid
node; each row records which). Reported
per parameter: the coverage of the Laplace 1-sigma interval and of the NUTS 16-84 percentile
interval over the same injections (both treat the generator as exact, as the Laplace ``_stat``
errors of ``injection.py`` do), the median ratio of the NUTS half-width to the Laplace error;
and over all stars the largest split R-hat, the smallest effective sample size, the
divergences, the NUTS seconds per star (warm: the first star compiles, untimed) and the
effective samples per second (smallest ESS over the parameters / NUTS seconds).

    python benchmarks/posterior.py [--quick] [--n 20] [--snr 100] [--draws 500] [--warmup 300]
        [--chains 4] [--adapt laplace|window] [--manifold M.npz] [--tag T]

Needs blackjax (``pip install "jblase[sampling]"``). Writes
``results/posterior[_quick][_<tag>].json``.
"""

from __future__ import annotations

import argparse
import json
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


def _row(result, truth) -> dict:
    post = result.posterior
    row = {f"true_{p}": float(v) for p, v in zip(PARAMS, truth, strict=True)}
    for p in PARAMS:
        row[p] = result.values[p]
        row[f"{p}_err_stat"] = result.errors[p]
        row[f"{p}_median"] = post["median"][p]
        row[f"{p}_p16"] = post["p16"][p]
        row[f"{p}_p84"] = post["p84"][p]
    row.update(
        rhat_max=max(post["rhat"].values()),
        ess_min=min(post["ess"].values()),
        divergences=int(post["divergences"]),
        adaptation=post["adaptation"],
        integration_steps=float(post["integration_steps"]),
        nuts_seconds=result.seconds["posterior"],
        fit_seconds=result.seconds["total"] - result.seconds["posterior"],
    )
    return row


def _summary(rows: list[dict]) -> dict:
    out = {}
    for p in PARAMS:
        true = np.array([r[f"true_{p}"] for r in rows])
        err = np.array([r[p] for r in rows]) - true
        sig = np.array([r[f"{p}_err_stat"] for r in rows])
        lo, hi = (np.array([r[f"{p}_{q}"] for r in rows]) for q in ("p16", "p84"))
        ok = np.isfinite(sig)
        out[p] = {
            "coverage_laplace": float(np.mean(np.abs(err[ok]) <= sig[ok])) if ok.any() else None,
            "coverage_nuts": float(np.mean((lo <= true) & (true <= hi))),
            "median_nuts_halfwidth_over_laplace": (
                float(np.median(0.5 * (hi - lo)[ok] / sig[ok])) if ok.any() else None
            ),
        }
    nuts = np.array([r["nuts_seconds"] for r in rows])
    ess = np.array([r["ess_min"] for r in rows])
    out["rhat_max"] = float(max(r["rhat_max"] for r in rows))
    out["fraction_rhat_below_1.01"] = float(np.mean([r["rhat_max"] < 1.01 for r in rows]))
    out["ess_min"] = float(ess.min())
    out["divergences"] = int(sum(r["divergences"] for r in rows))
    out["median_integration_steps_per_draw"] = float(
        np.median([r["integration_steps"] for r in rows])
    )
    out["median_nuts_seconds_per_star"] = float(np.median(nuts))
    out["median_fit_seconds_per_star"] = float(np.median([r["fit_seconds"] for r in rows]))
    out["median_ess_per_second"] = float(np.median(ess / nuts))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser = add_injected_set_args(parser, "default 20, quick 2", 3000)
    parser.add_argument("--draws", type=int, default=None, help="per chain (500, quick 100)")
    parser.add_argument("--warmup", type=int, default=None, help="(300, quick 100)")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument(
        "--adapt",
        choices=["laplace", "window"],
        default="laplace",
        help="warm-up: step size alone with the Laplace mass matrix (default), or blackjax's "
        "window adaptation of a dense mass matrix",
    )
    parser.add_argument("--tag", default=None, help="suffix of the JSON name")
    args = parser.parse_args(argv)
    n = args.n or (2 if args.quick else 20)

    from jblase.generator import Generator
    from jblase.posterior import PosteriorSettings
    from jblase.search import SearchSettings

    posterior = PosteriorSettings(
        draws=args.draws or (100 if args.quick else 500),
        warmup=args.warmup or (100 if args.quick else 300),
        chains=args.chains,
        adapt_mass_matrix=args.adapt,
    )
    manifold, model, manifold_path = _manifold(args)
    generator = Generator.from_manifold(manifold)
    search = SearchSettings(n_random=40, n_guided=8) if args.quick else SearchSettings()
    truths = _truths(manifold, n + 1, np.random.default_rng(args.seed))

    def observe(k):
        return _observation(model, truths[k], args.snr, np.random.default_rng([args.seed, k]))

    name = "_".join(t for t in ("posterior", "quick" if args.quick else "", args.tag or "") if t)
    header = {"manifold": manifold_path, "snr": args.snr, "seed": args.seed}
    header["settings"] = posterior.__dict__
    header["generator"] = {
        "amplitude_interpolation": generator.amplitude_interpolation,
        "cubic_axes": list(generator.cubic_axes),
        "depth_ceiling": generator.depth_ceiling,
    }
    partial, rows = _partial_rows(name, header, args.out)
    rows = rows[:n]  # a rerun with a smaller --n summarises the first n stars
    if rows:
        print(f"  resuming: {len(rows)} stars already in {partial.name}")
    t = time.perf_counter()
    if len(rows) < n:
        _fit_one(generator, observe(n), truths[n], search, posterior)  # compiles; not reported
    first = time.perf_counter() - t
    for k in range(len(rows), n):
        rows.append(_row(_fit_one(generator, observe(k), truths[k], search, posterior), truths[k]))
        with partial.open("a") as fh:  # a killed run keeps every finished star
            fh.write(json.dumps(rows[-1], default=float) + "\n")
        print(
            f"  {k + 1}/{n}: R-hat max {rows[-1]['rhat_max']:.4f}, ESS min "
            f"{rows[-1]['ess_min']:.0f}, {rows[-1]['integration_steps']:.1f} gradients per "
            f"draw, NUTS {rows[-1]['nuts_seconds']:.1f} s",
            flush=True,
        )
    summary = _summary(rows)
    _common.print_table(
        [{"param": p, **summary[p]} for p in PARAMS],
        ["param", "coverage_laplace", "coverage_nuts", "median_nuts_halfwidth_over_laplace"],
    )
    print(
        f"R-hat max {summary['rhat_max']:.4f} ({summary['fraction_rhat_below_1.01']:.0%} of "
        f"stars below 1.01), ESS min {summary['ess_min']:.0f}, divergences "
        f"{summary['divergences']}; NUTS {summary['median_nuts_seconds_per_star']:.1f} s per "
        f"star (the fit before it {summary['median_fit_seconds_per_star']:.1f} s), "
        f"{summary['median_ess_per_second']:.1f} effective samples per second"
    )
    _common.write_results(
        name,
        {
            "manifold": manifold_path,
            "n": n,
            "snr": args.snr,
            "seed": args.seed,
            "settings": posterior.__dict__,
            "generator": header["generator"],
            "first_star_with_compilation_seconds": first,
            "summary": summary,
            "rows": rows,
        },
        args.out,
    )
    partial.unlink()
    return 0


def _partial_rows(name: str, header: dict, out_dir) -> tuple[Path, list[dict]]:
    """The finished stars of an interrupted run with the same settings (a JSON-lines file:
    the settings, then one row per star), and its path."""
    path = Path(out_dir or _common.RESULTS) / f"{name}.partial.jsonl"
    head = json.dumps(header, sort_keys=True, default=float)
    if path.exists():
        lines = path.read_text().splitlines()
        if lines and lines[0] == head:
            rows = []
            for line in lines[1:]:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a half-written last line
                    break
            path.write_text("\n".join([head, *map(json.dumps, rows)]) + "\n")
            return path, rows
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head + "\n")
    return path, []


if __name__ == "__main__":
    raise SystemExit(main())
