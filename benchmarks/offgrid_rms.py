"""Generator accuracy off the grid: RMS of the generator against the simulator's true spectrum.

The demo grid's simulator evaluates any (Teff, log g, [Fe/H]), so the generator can be compared
with the truth away from the grid points, which the paper could not do. Truths are drawn inside
the grid; both spectra are normalised the way the pipeline normalises its inputs; the RMS is
over the active region (60 A inside either end). Reported by Teff bin, for the paper's
interpolation in ln a and for jblase's default interpolation in a, and at the grid points
themselves (the clone's own RMS against its spectrum) for scale.

    python benchmarks/offgrid_rms.py [--quick] [--workdir DIR] [--n N]
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import RESULTS, print_table, write_results

from jblase.demo import prepare_manifold
from jblase.detect import active_region
from jblase.generator import Generator
from jblase.preprocess import normalize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--n", type=int, default=None, help="off-grid truths")
    args = parser.parse_args()
    workdir = args.workdir or RESULTS / ("accuracy_work_quick" if args.quick else "accuracy_work")
    manifold, model = prepare_manifold(workdir, quick=args.quick, progress=False)
    generators = {
        mode: Generator.from_manifold(manifold, amplitude_interpolation=mode)
        for mode in ("log", "linear")
    }
    wl = np.asarray(generators["linear"].wavelength)
    active = active_region(wl)
    n = args.n or (12 if args.quick else 60)
    rng = np.random.default_rng(5)
    lo = np.array([a[0] for a in manifold.axes])
    hi = np.array([a[-1] for a in manifold.axes])
    truths = rng.uniform(lo, hi, size=(n, 3))
    rows = []
    for t in truths:
        truth = normalize(wl, model.flux(*t, wavelength=wl), t[0])
        row = {"teff": t[0], "logg": t[1], "feh": t[2]}
        for mode, gen in generators.items():
            resid = np.asarray(gen(t)) - truth
            row[f"rms_{mode}"] = float(np.sqrt(np.mean(resid[active] ** 2)))
        rows.append(row)
    edges = np.unique(np.r_[np.asarray(manifold.axes[0]), hi[0] + 1])
    table = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        sel = [r for r in rows if a <= r["teff"] < b]
        if sel:
            table.append(
                {
                    "Teff bin": f"{a:.0f}-{b:.0f}",
                    "n": len(sel),
                    "median RMS, a-interp (jblase)": float(
                        np.median([r["rms_linear"] for r in sel])
                    ),
                    "median RMS, ln a-interp (paper)": float(
                        np.median([r["rms_log"] for r in sel])
                    ),
                }
            )
    clone_rms = np.asarray(manifold.rms)
    print(f"off-grid generator RMS against the simulator truth ({n} truths)")
    print_table(table, list(table[0]))
    print(f"clone RMS at the grid points (median): {np.nanmedian(clone_rms):.4g}")
    write_results(
        "offgrid_rms" + ("_quick" if args.quick else ""),
        {
            "rows": rows,
            "table": table,
            "summary": {
                "median_rms_linear": float(np.median([r["rms_linear"] for r in rows])),
                "median_rms_log": float(np.median([r["rms_log"] for r in rows])),
                "median_clone_rms_at_grid_points": float(np.nanmedian(clone_rms)),
            },
        },
    )


if __name__ == "__main__":
    main()
