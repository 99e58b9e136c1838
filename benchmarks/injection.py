"""Injection and recovery of observed spectra: bias, scatter and coverage of ``jblase.fit``.

Truths at random off-grid (Teff, log g, [Fe/H]) inside the demo grid, with a random radial
velocity and v sin i, are made by the demo simulator (the grid's own physics, not the
generator), observed by ``_inject.py`` (NumPy: rotation, R = 55,000, Doppler shift, 2.5 pixels
per resolution element, a Chebyshev continuum, Gaussian noise at each S/N) and fitted with the
generator built from the grid (stellar parameters, RV, v sin i and the continuum free; R held
at its known value). For each S/N the script reports, per parameter, the bias (median of fit -
truth), the scatter (half the 16-84 percentile range), the median reported error, and the
coverage: the fraction of injections whose truth lies inside the reported 1-sigma interval
(68.3% for calibrated Gaussian errors). It also times one fit of one order and of two orders.

The Laplace errors treat the generator as exact; its interpolation error between grid points
does not fall with S/N. A calibration stage (``--calibrate N``, 0 to skip) first fits N
injections with their own truths and noise (``--calibration-seed``, never the reported set's)
at ``--calibration-snr`` (300: there the Laplace errors are smallest, so the residuals measure
the model's error most directly) and derives a per-parameter systematic floor from them
(:func:`jblase.calibrate.calibrate_floors`: the smallest floor that puts 68.3% of the
calibration truths inside sqrt(stat^2 + floor^2)). The reported set is fitted once; its
coverage is given both for the Laplace errors alone (``_stat``) and with the floor added in
quadrature, from the same fits (the floor changes the reported errors, not the fit).

    python benchmarks/injection.py [--quick] [--n 100] [--manifold M.npz] [--snr 50 100 300]
        [--calibrate 40] [--calibration-snr 300] [--calibration-seed SEED+1000] [--no-timing]
        [--tag T]

Writes ``results/injection[_quick][_<tag>].json`` (also after the calibration and after each
S/N, with ``"complete": false`` until the end).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _inject import inject  # noqa: E402

PARAMS = ("teff", "logg", "feh", "rv_kms", "vsini_kms")
WL_RANGE = (8430.0, 8770.0)
RESOLVING_POWER = 55_000.0


def _manifold(args):
    from jblase.demo import prepare_manifold
    from jblase.grids.synthetic import SyntheticGridModel
    from jblase.manifold import Manifold

    if args.manifold is not None:
        return Manifold.load(args.manifold), SyntheticGridModel(), str(args.manifold)
    # The quick grid is another grid: its own work directory, not the full one's.
    work = args.workdir or _common.RESULTS / (
        "injection_work_quick" if args.quick else "injection_work"
    )
    manifold, model = prepare_manifold(work, quick=args.quick, progress=False)
    return manifold, model, str(work / "manifold.npz")


def _truths(manifold, n: int, rng) -> np.ndarray:
    lo = np.array([float(a[0]) for a in manifold.axes])
    hi = np.array([float(a[-1]) for a in manifold.axes])
    hi[0] = min(hi[0], 7000.0)  # the accuracy targets are for Teff < 7000 K
    margin = 0.05 * (hi - lo)
    stellar = rng.uniform(lo + margin, hi - margin, size=(n, 3))
    rv = rng.uniform(-100.0, 100.0, n)
    vsini = rng.uniform(1.0, 15.0, n)
    return np.column_stack([stellar, rv, vsini])


def _observation(model, truth, snr, rng):
    from jblase.spectra import ObservedSpectrum

    wl = model.wavelength()
    flux = model.line_spectrum(*truth[:3])
    c, f, s = inject(
        wl,
        flux,
        rv_kms=truth[3],
        vsini_kms=truth[4],
        resolving_power=RESOLVING_POWER,
        snr=snr,
        wl_range=WL_RANGE,
        rng=rng,
    )
    return ObservedSpectrum(
        wavelength=c[None],
        flux=f[None],
        uncertainty=s[None],
        valid=np.ones((1, c.size), bool),
        orders=(0,),
    )


def _fit_one(generator, spectrum, truth, search, posterior=None):
    from jblase.fit import FitSettings, fit

    prior = float(np.clip(np.round(truth[0] / 250.0) * 250.0, *generator.bounds[0]))
    settings = FitSettings(resolving_power=RESOLVING_POWER, teff_prior=prior)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit(generator, spectrum, settings, search=search, posterior=posterior)


def add_injected_set_args(parser, n_help: str, seed: int):
    """The arguments of a script fitting one injected set (``--n``, ``--snr``, ``--manifold``,
    ``--seed``), besides the common ones."""
    parser = _common.add_common_args(parser)
    parser.add_argument("--n", type=int, default=None, help=f"injections ({n_help})")
    parser.add_argument("--snr", type=float, default=100.0)
    parser.add_argument("--manifold", type=Path, default=None, help="a built demo manifold")
    parser.add_argument("--seed", type=int, default=seed)
    return parser


def _half_range(x: np.ndarray) -> float:
    q16, q84 = np.percentile(x, [16, 84])
    return float(0.5 * (q84 - q16))


def _summary(rows: list[dict]) -> dict:
    """Per parameter: bias, scatter, and the reported errors' size and coverage, for the
    Laplace errors alone (``_stat``) and with the floor (no suffix; the same when none)."""
    out = {}
    for p in PARAMS:
        err = np.array([r[p] - r[f"true_{p}"] for r in rows])
        out[p] = {
            "bias": float(np.median(err)),
            "scatter": _half_range(err),
            "mean_abs_error": float(np.mean(np.abs(err))),
        }
        for suffix in ("_stat", ""):
            sig = np.array([r[f"{p}_err{suffix}"] for r in rows])
            ok = np.isfinite(sig)
            out[p].update(
                {
                    f"median_reported_error{suffix}": (
                        float(np.median(sig[ok])) if ok.any() else float("nan")
                    ),
                    f"coverage_1sigma{suffix}": (
                        float(np.mean(np.abs(err[ok]) <= sig[ok])) if ok.any() else None
                    ),
                    # 1 for calibrated Gaussian errors.
                    f"normalised_scatter{suffix}": (
                        _half_range(err[ok] / sig[ok]) if ok.any() else None
                    ),
                }
            )
        out[p]["n_with_errors"] = int(np.isfinite([r[f"{p}_err_stat"] for r in rows]).sum())
    return out


def _fit_rows(generator, model, truths, snr, seed, search) -> list[dict]:
    """One fit per truth at ``snr``; the noise of truth ``k`` from ``default_rng([seed, k,
    snr])``. Each row holds the truth, the fitted values and the Laplace errors (``_err_stat``)."""
    rows = []
    for k, truth in enumerate(truths):
        spectrum = _observation(model, truth, snr, np.random.default_rng([seed, k, int(snr)]))
        r = _fit_one(generator, spectrum, truth, search)
        row = {f"true_{p}": float(v) for p, v in zip(PARAMS, truth, strict=True)}
        row.update({p: r.values[p] for p in PARAMS})
        row.update({f"{p}_err_stat": r.errors[p] for p in PARAMS})
        row.update(chi2_reduced=r.chi2_reduced, seconds=r.seconds["total"])
        rows.append(row)
        if (k + 1) % 20 == 0:
            print(f"  S/N {snr:g}: {k + 1}/{len(truths)} fits", flush=True)
    return rows


def _apply_floor(rows: list[dict], floors: dict) -> None:
    """``_err``: each row's Laplace error with the floor added in quadrature (no floor: the
    Laplace error itself)."""
    from jblase.fit import with_floor

    for row in rows:
        for p in PARAMS:
            row[f"{p}_err"] = with_floor(row[f"{p}_err_stat"], floors.get(p, 0.0))


def _calibrate(generator, model, manifold, args, search) -> dict | None:
    """The calibration stage: ``args.calibrate`` independent injections -> the floors."""
    from jblase.calibrate import bootstrap_floor, calibrate_floors

    if args.calibrate == 0:
        return None
    seed = args.calibration_seed
    truths = _truths(manifold, args.calibrate, np.random.default_rng(seed))
    t = time.perf_counter()
    rows = _fit_rows(generator, model, truths, args.calibration_snr, seed, search)
    cols = {p: np.array([r[p] for r in rows]) for p in PARAMS}
    true = {p: np.array([r[f"true_{p}"] for r in rows]) for p in PARAMS}
    stat = {p: np.array([r[f"{p}_err_stat"] for r in rows]) for p in PARAMS}
    floors = calibrate_floors(cols, true, stat)
    interval = {p: bootstrap_floor(cols[p], true[p], stat[p]) for p in PARAMS}
    _apply_floor(rows, floors)
    print(
        f"calibration: {len(rows)} fits at S/N {args.calibration_snr:g} (seed {seed}) in "
        f"{time.perf_counter() - t:.0f} s; floors "
        + ", ".join(
            f"{p}={v:.4g} [{interval[p][0]:.3g}, {interval[p][1]:.3g}]" for p, v in floors.items()
        )
    )
    return {
        "n": len(rows),
        "snr": args.calibration_snr,
        "seed": seed,
        "method": "smallest floor putting 68.27% of the calibration truths inside "
        "sqrt(stat^2 + floor^2) (jblase.calibrate.calibrate_floors)",
        "floors": floors,
        "floors_bootstrap_16_84": {p: list(v) for p, v in interval.items()},
        "summary": _summary(rows),
        "rows": rows,
    }


def main(argv=None) -> int:
    parser = _common.add_common_args(argparse.ArgumentParser(description=__doc__))
    parser.add_argument("--n", type=int, default=None, help="injections per S/N (default 100)")
    parser.add_argument("--snr", type=float, nargs="+", default=[50.0, 100.0, 300.0])
    parser.add_argument("--manifold", type=Path, default=None, help="a built demo manifold")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--calibrate",
        type=int,
        default=None,
        metavar="N",
        help="injections (independent of the reported ones) that calibrate the systematic "
        "floor (default 40, --quick 6; 0: no floor)",
    )
    parser.add_argument("--calibration-snr", type=float, default=300.0)
    parser.add_argument(
        "--calibration-seed",
        type=int,
        default=None,
        help="seed of the calibration truths and noise (default --seed + 1000)",
    )
    parser.add_argument(
        "--no-timing",
        action="store_true",
        help="skip the closing one- and two-order timing fits",
    )
    parser.add_argument("--tag", default=None, help="suffix of the JSON name")
    args = parser.parse_args(argv)
    n = args.n or (6 if args.quick else 100)
    if args.calibrate is None:
        args.calibrate = 6 if args.quick else 40
    if args.calibrate < 0:
        parser.error("--calibrate must be >= 0")
    if args.calibration_seed is None:
        args.calibration_seed = args.seed + 1000
    if args.calibrate and args.calibration_seed == args.seed:
        parser.error("--calibration-seed must differ from --seed (independent injections)")

    from jblase.generator import Generator
    from jblase.search import SearchSettings

    manifold, model, manifold_path = _manifold(args)
    generator = Generator.from_manifold(manifold)
    search = SearchSettings(n_random=40, n_guided=8) if args.quick else SearchSettings()
    rng = np.random.default_rng(args.seed)
    truths = _truths(manifold, n, rng)

    t0 = time.perf_counter()
    _fit_one(generator, _observation(model, truths[0], args.snr[0], rng), truths[0], search)
    first_seconds = time.perf_counter() - t0  # includes compilation

    calibration = _calibrate(generator, model, manifold, args, search)
    floors = {} if calibration is None else calibration["floors"]

    def write(seconds, complete=True):
        # Written after the calibration and after each S/N too, so a long run that is stopped
        # keeps what it finished ("complete": false).
        _common.write_results(
            "_".join(t for t in ("injection", "quick" if args.quick else "", args.tag or "") if t),
            {
                "complete": complete,
                "manifold": manifold_path,
                "n_per_snr": n,
                "snr": args.snr,
                "wl_range": WL_RANGE,
                "resolving_power": RESOLVING_POWER,
                "search": {"n_random": search.n_random, "n_guided": search.n_guided},
                "seed": args.seed,
                "systematic_floors": floors or None,
                "calibration": calibration,
                "results": results,
                "seconds": seconds,
            },
            args.out,
        )

    results, table = {}, []
    write({"first_fit_with_compilation": first_seconds}, complete=False)
    for snr in args.snr:
        rows = _fit_rows(generator, model, truths, snr, args.seed, search)
        _apply_floor(rows, floors)
        summary = _summary(rows)
        results[str(int(snr))] = {
            "summary": summary,
            "rows": rows,
            "median_seconds_per_fit": float(np.median([r["seconds"] for r in rows])),
            "median_chi2_reduced": float(np.median([r["chi2_reduced"] for r in rows])),
        }
        for p in PARAMS:
            table.append(
                {
                    "S/N": int(snr),
                    "param": p,
                    **{k: v for k, v in summary[p].items() if k != "n_with_errors"},
                }
            )
        median = results[str(int(snr))]["median_seconds_per_fit"]
        print(f"S/N {snr:g}: {n} fits, median {median:.2f} s per fit", flush=True)
        if snr != args.snr[-1]:
            write({"first_fit_with_compilation": first_seconds}, complete=False)
    _common.print_table(
        table,
        [
            "S/N",
            "param",
            "bias",
            "scatter",
            "median_reported_error_stat",
            "coverage_1sigma_stat",
            "median_reported_error",
            "coverage_1sigma",
        ],
    )
    if floors:
        print(
            "floors (added in quadrature): " + ", ".join(f"{p}={v:.4g}" for p, v in floors.items())
        )

    # Seconds per fit: one order, and the same range split into two orders (warm).
    seconds = {"first_fit_with_compilation": first_seconds}
    if not args.no_timing:
        spectrum = _observation(model, truths[0], 100.0, rng)
        t = time.perf_counter()
        _fit_one(generator, spectrum, truths[0], search)
        seconds["one_order_warm"] = time.perf_counter() - t
        two = _two_orders(spectrum)
        _fit_one(generator, two, truths[0], search)  # compiles the two-order shapes
        t = time.perf_counter()
        _fit_one(generator, two, truths[0], search)
        seconds["two_orders_warm"] = time.perf_counter() - t
        print(
            f"seconds per fit (warm): one order {seconds['one_order_warm']:.2f}, two orders "
            f"{seconds['two_orders_warm']:.2f}; first fit incl. compilation {first_seconds:.1f}"
        )
    write(seconds)
    return 0


def _two_orders(spectrum):
    from jblase.spectra import ObservedSpectrum

    wl, f, s = spectrum.wavelength[0], spectrum.flux[0], spectrum.uncertainty[0]
    half = wl.size // 2
    n = wl.size - half
    rows = [(wl[:half], f[:half], s[:half]), (wl[half:], f[half:], s[half:])]
    pad = lambda a: np.concatenate([a, np.full(n - a.size, np.nan)])  # noqa: E731
    return ObservedSpectrum(
        wavelength=np.stack([pad(r[0]) for r in rows]),
        flux=np.stack([pad(r[1]) for r in rows]),
        uncertainty=np.stack([pad(r[2]) for r in rows]),
        valid=np.stack([pad(np.ones(r[0].size)) == 1 for r in rows]),
        orders=(0, 1),
    )


if __name__ == "__main__":
    raise SystemExit(main())
