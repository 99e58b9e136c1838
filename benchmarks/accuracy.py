"""Accuracy benchmark: the paper's inference protocol on the demo grid, and beyond it.

Protocol (DESIGN.md section 1, step 6): for each test spectrum, Teff is searched within +-500 K
of a prior (the truth shifted by a seeded uniform offset of up to 250 K, like a photometric
estimate), log g and [Fe/H] are free; 100 random points (one vmapped batch) + 20 gp_minimize
calls; then jblase's gradient refinement. Two test sets:

* ``grid``: noise-free spectra at the grid points (the paper's test: 210 PHOENIX spectra);
* ``offgrid``: off-grid truths from the simulator that the generator never saw, normalised with
  the same preprocessing (the paper could not do this).

Mean absolute error and standard deviation of Teff, log g and [Fe/H] are split at 7000 K like
the paper, for GP-only and GP + gradient. The demo grid, clones and manifold are made (or
reused) in ``--workdir``.

``--manifold FILE`` takes a manifold that ``benchmarks/fidelity.py`` built in its work
directory (e.g. from propagated clones) instead, on that script's ``--grid`` (``demo``, or
``fine``: the Milne-Eddington grid); the simulator gives the off-grid truths and the grid
files next to FILE the grid-point cases. ``--sets`` picks the test sets and
``--interpolation`` the generator's amplitude interpolation and ``--generator-set`` its other
options (:meth:`jblase.generator.Generator.from_manifold`).

    python benchmarks/accuracy.py [--quick] [--workdir DIR] [--grid demo|fine]
        [--manifold FILE] [--sets grid offgrid] [--interpolation linear|log|hybrid]
        [--generator-set KEY=VALUE ...] [--tag T]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _common import RESULTS, parse_key_values, print_table, write_results

from jblase.demo import prepare_manifold
from jblase.generator import Generator
from jblase.grids.phoenix import PhoenixGrid
from jblase.inference import infer
from jblase.manifold import Manifold
from jblase.preprocess import normalize

PAPER = {
    "below_7000": {"mae": [93.0, 0.24, 0.056], "std": [139.0, 0.40, 0.15]},
    "above_7000": {"mae": [347.0, 0.26, 0.16], "std": [293.0, 0.32, 0.23]},
}


def _summary(rows: list[dict]) -> dict:
    out = {}
    for split, sel in (("below_7000", lambda t: t < 7000), ("above_7000", lambda t: t >= 7000)):
        chosen = [r for r in rows if sel(r["truth"][0])]
        if not chosen:
            continue
        truth = np.array([r["truth"] for r in chosen])
        entry = {"n": len(chosen)}
        for kind in ("gp", "refined"):
            est = np.array([r[kind] for r in chosen])
            err = est - truth
            entry[kind] = {
                "mae": np.mean(np.abs(err), axis=0).tolist(),
                "std": np.std(err, axis=0).tolist(),
            }
        out[split] = entry
    return out


def run_set(name, generator, wavelength, cases, n_random, n_guided, seed0=0) -> list[dict]:
    rows = []
    rng = np.random.default_rng(seed0 + 7)
    lo, hi = generator.bounds[0]
    for k, (truth, flux) in enumerate(cases):
        prior = float(np.clip(truth[0] + rng.uniform(-250, 250), lo, hi))
        res = infer(
            generator,
            wavelength,
            flux,
            teff_prior=prior,
            n_random=n_random,
            n_guided=n_guided,
            seed=seed0 + k,
        )
        rows.append(
            {
                "set": name,
                "truth": list(map(float, truth)),
                "prior": prior,
                "gp": [res.gp["teff"], res.gp["logg"], res.gp["feh"]],
                "refined": [res.teff, res.logg, res.feh],
                "loss_gp": res.gp["loss"],
                "loss": res.loss,
                "seconds": res.seconds["total"],
            }
        )
        d = np.array(rows[-1]["refined"]) - truth
        print(
            f"  {name} {k + 1}/{len(cases)} truth ({truth[0]:.0f}, {truth[1]:.2f}, "
            f"{truth[2]:+.2f}) error ({d[0]:+.0f} K, {d[1]:+.3f}, {d[2]:+.3f}) "
            f"{res.seconds['total']:.1f} s",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--n-offgrid", type=int, default=None)
    parser.add_argument("--grid", choices=["demo", "fine"], default="demo")
    parser.add_argument("--manifold", type=Path, default=None, help="with --grid fine")
    parser.add_argument("--sets", nargs="+", choices=["grid", "offgrid"], default=None)
    parser.add_argument(
        "--interpolation", default=None, help="amplitude interpolation (default: the library's)"
    )
    parser.add_argument(
        "--generator-set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="more Generator.from_manifold options, e.g. log_max_depth=0.3 cubic_axes=teff",
    )
    parser.add_argument("--tag", default=None, help="suffix of the JSON name")
    args = parser.parse_args()
    sets = args.sets or ["grid", "offgrid"]
    t0 = time.perf_counter()
    if args.manifold is not None:
        from fidelity import grid_spec

        manifold = Manifold.load(args.manifold)
        model = grid_spec(args.grid, args.quick).model
        grid_dir = args.manifold.parent / f"grid_{model.line_formation}"
    elif args.grid == "fine":
        raise SystemExit("--grid fine needs --manifold (a manifold fidelity.py built)")
    else:
        workdir = args.workdir or RESULTS / (
            "accuracy_work_quick" if args.quick else "accuracy_work"
        )
        manifold, model = prepare_manifold(workdir, quick=args.quick, progress=False)
        grid_dir = workdir / "grid"
    generator_options = parse_key_values(args.generator_set, "--generator-set")
    if args.interpolation is not None:
        generator_options["amplitude_interpolation"] = args.interpolation
    generator = Generator.from_manifold(manifold, **generator_options)
    wl = np.asarray(generator.wavelength)
    n_random, n_guided = (40, 8) if args.quick else (100, 20)

    grid = PhoenixGrid(grid_dir, wl_range=(float(wl[0]), float(wl[-1])))
    grid_cases = [(np.array(p), normalize(wl, grid.load_flux(p), p.teff)) for p in grid.points()]
    rng = np.random.default_rng(3)
    n_off = args.n_offgrid or (4 if args.quick else 24)
    lo = np.array([a[0] for a in manifold.axes])
    hi = np.array([a[-1] for a in manifold.axes])
    truths = rng.uniform(lo + 0.05 * (hi - lo), hi - 0.05 * (hi - lo), size=(n_off, 3))
    off_cases = [(t, normalize(wl, model.flux(*t, wavelength=wl), t[0])) for t in truths]
    if args.quick:
        grid_cases = grid_cases[:: max(1, len(grid_cases) // 6)]

    rows = []
    if "grid" in sets:
        rows += run_set("grid", generator, wl, grid_cases, n_random, n_guided)
    if "offgrid" in sets:
        rows += run_set("offgrid", generator, wl, off_cases, n_random, n_guided, seed0=1000)

    summary = {s: _summary([r for r in rows if r["set"] == s]) for s in sets}
    table = []
    for s, splits in summary.items():
        for split, entry in splits.items():
            for kind in ("gp", "refined"):
                mae, std = entry[kind]["mae"], entry[kind]["std"]
                table.append(
                    {
                        "set": s,
                        "Teff split": split,
                        "method": kind,
                        "n": entry["n"],
                        "MAE Teff": mae[0],
                        "MAE logg": mae[1],
                        "MAE [Fe/H]": mae[2],
                        "std Teff": std[0],
                        "std logg": std[1],
                        "std [Fe/H]": std[2],
                    }
                )
    for split, ref in PAPER.items():
        table.append(
            {
                "set": "paper",
                "Teff split": split,
                "method": "gp",
                "n": 210,
                "MAE Teff": ref["mae"][0],
                "MAE logg": ref["mae"][1],
                "MAE [Fe/H]": ref["mae"][2],
                "std Teff": ref["std"][0],
                "std logg": ref["std"][1],
                "std [Fe/H]": ref["std"][2],
            }
        )
    print()
    print_table(table, list(table[0]))
    seconds = [r["seconds"] for r in rows]
    name = "accuracy" + ("" if args.grid == "demo" and args.manifold is None else f"_{args.grid}")
    name += ("_quick" if args.quick else "") + (f"_{args.tag}" if args.tag else "")
    write_results(
        name,
        {
            "command": " ".join(["python", "benchmarks/accuracy.py", *sys.argv[1:]]),
            "grid": args.grid,
            "manifold": None if args.manifold is None else str(args.manifold),
            "generator_options": generator_options,
            "protocol": {"n_random": n_random, "n_guided": n_guided, "teff_window": 500.0},
            "grid_axes": [np.asarray(a).tolist() for a in manifold.axes],
            "rows": rows,
            "summary": {
                **summary,
                "paper": PAPER,
                "median_seconds_per_inference": float(np.median(seconds)),
                "total_seconds": time.perf_counter() - t0,
            },
        },
    )


if __name__ == "__main__":
    main()
