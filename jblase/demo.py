"""``jblase demo``: the whole pipeline on the embedded synthetic grid, end to end.

Writes the demo grid (PHOENIX layout), clones its middle point and propagates that clone over
the grid (:mod:`jblase.propagate`), builds the manifold, then infers
held-out stars at off-grid parameters that the generator never saw, and saves plots. Every
stage resumes: rerunning with the same ``--out`` skips finished work.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

__all__ = ["DEMO_CLONE_SETTINGS", "demo_axes", "prepare_manifold", "run_demo"]


def _demo_clone_settings():
    from jblase.clone import CloneSettings

    # The paper's settings; float32 profile arithmetic (offsets stay float64) for speed.
    return CloneSettings(compute_dtype="float32")


DEMO_CLONE_SETTINGS = _demo_clone_settings()


def _test_stars(axes, n: int, seed: int) -> np.ndarray:
    """``n`` off-grid (Teff, log g, [Fe/H]) truths inside the grid, away from the edges."""
    rng = np.random.default_rng(seed)
    lo = np.array([a[0] for a in axes], float)
    hi = np.array([a[-1] for a in axes], float)
    margin = 0.05 * (hi - lo)
    return rng.uniform(lo + margin, hi - margin, size=(n, 3))


def _stage(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def demo_axes(quick: bool = False) -> tuple[tuple[float, ...], ...]:
    """(teffs, loggs, fehs) of the demo grid (``quick``: the smaller one)."""
    from jblase.grids import synthetic

    if quick:
        return synthetic.QUICK_TEFFS, synthetic.QUICK_LOGGS, synthetic.QUICK_FEHS
    return synthetic.DEMO_TEFFS, synthetic.DEMO_LOGGS, synthetic.DEMO_FEHS


def prepare_manifold(
    out: str | Path,
    quick: bool = False,
    progress: bool = True,
    timings=None,
    *,
    axes=None,
    model=None,
    clone_settings=None,
):
    """Stages 1-3 of the demo (grid, clones, manifold) in ``out``, resuming finished work.

    ``axes`` ((teffs K, loggs dex, fehs dex) tuples), ``model`` (a
    :class:`~jblase.grids.synthetic.SyntheticGridModel`) and ``clone_settings`` (a
    :class:`~jblase.clone.CloneSettings`) replace the demo's grid (:func:`demo_axes`), simulator
    (``SyntheticGridModel()``) and :data:`DEMO_CLONE_SETTINGS`, e.g. for a smaller smoke run.

    Returns ``(manifold, model)``: the loaded :class:`~jblase.manifold.Manifold` and the
    :class:`~jblase.grids.synthetic.SyntheticGridModel` that wrote the grid (the truth).
    """
    from jblase.grids import synthetic
    from jblase.grids.phoenix import PhoenixGrid
    from jblase.manifold import Manifold, build_manifold, directory_size
    from jblase.pipeline import clone_grid
    from jblase.propagate import propagate_grid, propagation_seed

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings = {} if timings is None else timings
    axes = demo_axes(quick) if axes is None else tuple(tuple(float(v) for v in a) for a in axes)
    n_points = int(np.prod([len(a) for a in axes]))
    t = time.perf_counter()
    _stage(f"1/5 writing the synthetic demo grid: {n_points} spectra")
    model = synthetic.SyntheticGridModel() if model is None else model
    grid_dir = synthetic.write_grid(out / "grid", *axes, model=model, progress=progress)
    timings["grid"] = time.perf_counter() - t

    _stage("2/5 cloning the seed point, then propagating it over the grid (resumes if interrupted)")
    t = time.perf_counter()
    grid = PhoenixGrid(grid_dir)
    settings = DEMO_CLONE_SETTINGS if clone_settings is None else clone_settings
    # One grid point is cloned on its own; every other one starts from its neighbour's tuned
    # lines (jblase.propagate), so the whole grid shares one decomposition into lines.
    seed = propagation_seed(grid.points())
    seed_grid = PhoenixGrid(
        grid_dir,
        teff_range=(seed.teff,) * 2,
        logg_range=(seed.logg,) * 2,
        feh_range=(seed.feh,) * 2,
    )
    summary = clone_grid(seed_grid, out / "clones", settings, batch_size=8, progress=progress)
    print(f"   seed {tuple(seed)}: {summary['cloned']} cloned, {summary['done']} already done")
    propagated = propagate_grid(
        grid, out / "clones", out / "propagated", batch_size=8, progress=progress
    )
    print(
        f"   propagated over {propagated['levels']} levels: {propagated['identities']} line "
        f"identities; {propagated['propagated']} refitted, {propagated['done']} already done"
    )
    timings["clone"] = time.perf_counter() - t

    _stage("3/5 building the line manifold")
    t = time.perf_counter()
    manifold_path = out / "manifold.npz"
    if not manifold_path.exists() or propagated["propagated"]:
        build_manifold(out / "propagated", progress=progress).save(manifold_path)
    manifold = Manifold.load(manifold_path)
    grid_shape = "x".join(str(len(a)) for a in axes)
    print(
        f"   {manifold.n_lines} lines x {grid_shape} grid; "
        f"{manifold_path.stat().st_size / 1e6:.2f} MB (propagated clones: "
        f"{directory_size(out / 'propagated') / 1e6:.2f} MB)"
    )
    timings["manifold"] = time.perf_counter() - t
    return manifold, model


def run_demo(
    out: str | Path = "jblase-demo",
    quick: bool = False,
    progress: bool = True,
    *,
    axes=None,
    model=None,
    clone_settings=None,
    n_stars: int | None = None,
    infer_options: dict | None = None,
) -> dict:
    """Run the demo into ``out``; returns the summary written to ``out/summary.json``.

    ``jblase demo`` and ``jblase demo --quick`` set none of the keyword-only arguments, which
    shrink the demo for smoke runs and tests: ``axes``, ``model``, ``clone_settings`` as in
    :func:`prepare_manifold`; ``n_stars`` held-out stars (default 8, quick 4);
    ``infer_options``: further keyword arguments of :func:`jblase.inference.infer` (e.g.
    ``n_random``, ``n_guided``).
    """
    import matplotlib

    matplotlib.use("Agg")

    from jblase.generator import Generator
    from jblase.inference import infer
    from jblase.preprocess import normalize

    out = Path(out)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    manifold, model = prepare_manifold(
        out,
        quick=quick,
        progress=progress,
        timings=timings,
        axes=axes,
        model=model,
        clone_settings=clone_settings,
    )

    generator = Generator.from_manifold(manifold)
    wavelength = np.asarray(generator.wavelength)

    _stage("4/5 inferring held-out stars at off-grid parameters")
    t = time.perf_counter()
    n_stars = (4 if quick else 8) if n_stars is None else int(n_stars)
    truths = _test_stars(manifold.axes, n_stars, seed=1)
    rng = np.random.default_rng(2)
    rows = []
    for k, truth in enumerate(truths):
        flux = normalize(wavelength, model.flux(*truth, wavelength=wavelength), truth[0])
        teff_lo, teff_hi = manifold.axes[0][0], manifold.axes[0][-1]
        prior = float(np.clip(truth[0] + rng.uniform(-250, 250), teff_lo, teff_hi))
        res = infer(generator, wavelength, flux, teff_prior=prior, seed=k, **(infer_options or {}))
        rows.append({"truth": truth.tolist(), "prior": prior, **res.to_dict()})
        print(
            f"   star {k + 1}/{len(truths)}: true ({truth[0]:.0f}, {truth[1]:.2f}, {truth[2]:+.2f})"
            f" -> ({res.teff:.0f}, {res.logg:.2f}, {res.feh:+.2f}) in {res.seconds['total']:.1f} s",
            flush=True,
        )
    timings["inference"] = time.perf_counter() - t

    _stage("5/5 results and plots")
    _print_table(rows)
    plots = _plots(out, manifold, generator, model, truths, rows, normalize)
    timings["total"] = time.perf_counter() - t0
    result = {"stars": rows, "timings_s": timings, "plots": plots, "quick": quick}
    (out / "summary.json").write_text(json.dumps(result, indent=2, default=float))
    print(f"\nplots: {', '.join(plots)}\nsummary: {out / 'summary.json'}")
    print(f"total {timings['total']:.0f} s")
    return result


def _print_table(rows: list[dict]) -> None:
    head = f"{'true Teff':>9} {'logg':>5} {'[Fe/H]':>6} | {'Teff':>6} {'logg':>5} {'[Fe/H]':>6} |"
    print(head + f" {'dTeff':>6} {'dlogg':>6} {'dFeH':>6} | {'GP dTeff':>8} {'RMS':>8}")
    errors, gp_errors = [], []
    for r in rows:
        t = np.array(r["truth"])
        est = np.array([r["teff"], r["logg"], r["feh"]])
        gp = np.array([r["gp"]["teff"], r["gp"]["logg"], r["gp"]["feh"]])
        errors.append(est - t)
        gp_errors.append(gp - t)
        d = est - t
        print(
            f"{t[0]:9.0f} {t[1]:5.2f} {t[2]:+6.2f} | {est[0]:6.0f} {est[1]:5.2f} {est[2]:+6.2f} |"
            f" {d[0]:+6.0f} {d[1]:+6.2f} {d[2]:+6.2f} | {gp[0] - t[0]:+8.0f} {r['loss']:8.5f}"
        )
    mae, gp_mae = np.mean(np.abs(errors), 0), np.mean(np.abs(gp_errors), 0)
    print(
        f"mean |error|: GP + gradient {mae[0]:.0f} K, {mae[1]:.3f} dex, {mae[2]:.3f} dex; "
        f"GP only {gp_mae[0]:.0f} K, {gp_mae[1]:.3f} dex, {gp_mae[2]:.3f} dex"
    )


def _plots(out, manifold, generator, model, truths, rows, normalize) -> list[str]:
    import matplotlib.pyplot as plt

    wl = np.asarray(generator.wavelength)
    paths = []

    truth = truths[0]
    true_flux = normalize(wl, model.flux(*truth, wavelength=wl), truth[0])
    recon = np.asarray(generator(truth))
    fig, (ax, axr) = plt.subplots(2, 1, figsize=(10, 5), sharex=True, height_ratios=(3, 1))
    # A 30 A window around the deepest line of the active region.
    active = (wl > wl[0] + 60) & (wl < wl[-1] - 60)
    deepest = wl[active][np.argmin(true_flux[active])]
    sel = (wl > deepest - 15) & (wl < deepest + 15)
    ax.plot(wl[sel], true_flux[sel], "k", lw=1, label="simulator (truth, off-grid)")
    ax.plot(wl[sel], recon[sel], "C1", lw=1, label="jblase generator")
    ax.set_ylabel("normalised flux")
    ax.set_title(f"Teff={truth[0]:.0f} K, log g={truth[1]:.2f}, [Fe/H]={truth[2]:+.2f}")
    ax.legend(loc="lower left")
    axr.plot(wl[sel], recon[sel] - true_flux[sel], "C1", lw=1)
    axr.set_ylabel("residual")
    axr.set_xlabel("wavelength (A)")
    fig.tight_layout()
    paths.append(str(out / "reconstruction.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    t = np.array([r["truth"] for r in rows])
    for i, (name, unit) in enumerate((("Teff", "K"), ("log g", "dex"), ("[Fe/H]", "dex"))):
        est = np.array([[r["teff"], r["logg"], r["feh"]][i] for r in rows])
        gp = np.array([[r["gp"]["teff"], r["gp"]["logg"], r["gp"]["feh"]][i] for r in rows])
        axes[i].scatter(t[:, 0], gp - t[:, i], marker="x", label="GP only")
        axes[i].scatter(t[:, 0], est - t[:, i], label="GP + gradient")
        axes[i].axhline(0, color="k", lw=0.5)
        axes[i].set_xlabel("true Teff (K)")
        axes[i].set_ylabel(f"inferred - true {name} ({unit})")
    axes[0].legend()
    fig.tight_layout()
    paths.append(str(out / "inference_errors.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    counts = manifold.line_counts()
    fig, ax = plt.subplots(figsize=(6, 4))
    teffs = np.asarray(manifold.axes[0])
    for j, logg in enumerate(np.asarray(manifold.axes[1])):
        for k, feh in enumerate(np.asarray(manifold.axes[2])):
            ax.plot(teffs, counts[:, j, k], "o-", label=f"log g {logg:g}, [Fe/H] {feh:+.1f}")
    ax.set_xlabel("Teff (K)")
    ax.set_ylabel("cloned lines")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(str(out / "line_counts.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths
