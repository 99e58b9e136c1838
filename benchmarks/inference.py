"""Inference benchmark: the paper's protocol with jblase's generator against the paper's design.

The paper inferred (Teff, log g, [Fe/H]) with scikit-optimize ``gp_minimize``: 100 random points
(evaluated as one batch and passed as ``x0``/``y0``), then 20 surrogate-guided calls, Teff within
+-500 K of a prior, log g and [Fe/H] free; about 200 s per spectrum (Ryzen 9 7950X3D; quoted,
not rerun). Here one driver, :func:`paper_protocol`, runs that protocol around any loss and is
called with the SAME seeds, bounds and surrogate settings for every contender, so only the
generator differs:

* ``jblase paper work``: ``Generator.from_manifold(m, amplitude_interpolation="log",
  flux_tolerance=None)`` (baseline_paper.equivalent_generator): the baseline's work, jitted RMS
  loss; the random batch through ``generator.batch``;
* ``jblase default``: ``Generator.from_manifold(m)`` (adaptive windows, the default amplitude
  interpolation; the README's figures were measured when it was linear a);
* ``jblase default f32``: the same with ``compute_dtype="float32"`` (profile arithmetic in
  float32: about 1e-6 in flux, faster on CPU);
* ``baseline``: benchmarks/baseline_paper.py (one scipy ``RegularGridInterpolator`` per line,
  NumPy sparse pseudo-Voigt), NumPy RMS loss; the random batch through ``PaperBaseline.spectra``.

Then ``jblase.inference.infer`` itself (default and paper-work generators; its own surrogate
settings, which the driver copies by default; with and without the gradient refinement;
``--quick`` takes the refine=False figures from the phases of the refine=True run, the same
code path up to the refinement).

jblase's random batch runs with ``jblase.generator.default_batch_size()`` spectra per compiled
step (2 on CPU, 256 on accelerators), for the driver and for ``infer`` alike.

The data: the baseline's spectrum at an off-grid truth on a stand-in manifold
(benchmarks/_realistic_manifold.py: the shapes and sparsity of a cloned grid, NOT a clone),
noise-free, on the manifold's own pixels; the Teff prior is the truth + 180 K. The baseline
interpolates ln a, so the paper-work generator models these data exactly and the default
generator (linear in a) does not: its errors include that model difference. Times are wall
seconds per inference after compilation (compile time is reported apart: a user pays it once
per generator and data shape); the "surrogate" time is the guided phase minus its loss calls.

    python benchmarks/inference.py --quick      # 2,000 lines over 20,000 pixels, 1 seed
    python benchmarks/inference.py              # 10,000 lines over 60,000 pixels, 3 seeds
    python benchmarks/inference.py --surrogate skopt   # gp_minimize's own defaults for all
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from _common import peak_rss_mb, print_table, write_results
from _realistic_manifold import DEFAULT_AXES, describe, make_manifold
from baseline_paper import PaperBaseline, equivalent_generator
from threadpoolctl import threadpool_limits

from jblase import Generator
from jblase.generator import default_batch_size
from jblase.inference import infer
from jblase.search import SURROGATE_BLAS_THREADS

#: The paper's inference time per spectrum (Ryzen 9 7950X3D), quoted, not rerun.
PAPER_SECONDS_INFERENCE = 200.0
RESOLUTION = 500_000.0
TRUTH = (5432.0, 4.23, -0.17)
PRIOR_OFFSET_K = 180.0
TEFF_WINDOW_K = 500.0

QUICK = {
    "lines": 2_000,
    "pixels": 20_000,
    "seeds": (0,),
    "infer_generators": ("default", "paper work"),
    "infer_no_refine_run": False,
}
FULL = {
    "lines": 10_000,
    "pixels": 60_000,
    "seeds": (0, 1, 2),
    "infer_generators": ("default", "paper work"),
    "infer_no_refine_run": True,
}


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- the protocol


def surrogate_settings(name: str, dims, seed: int) -> dict:
    """``gp_minimize`` keyword arguments: ``"jblase"`` (infer's) or ``"skopt"`` (its defaults)."""
    if name == "skopt":
        return {}
    from skopt.space import Space
    from skopt.utils import cook_estimator

    return {
        "base_estimator": cook_estimator(
            "GP", space=Space(dims), random_state=seed, noise="gaussian", n_restarts_optimizer=0
        ),
        "acq_func": "EI",
        "acq_optimizer": "sampling",
        "n_points": 2000,
    }


def paper_protocol(
    loss_one, loss_batch, bounds, seed: int, n_random=100, n_guided=20, surrogate="jblase"
) -> dict:
    """The paper's search: ``n_random`` random points as one batch -> ``x0``/``y0`` ->
    ``gp_minimize(n_calls=n_guided, n_initial_points=0)``.

    Args:
        loss_one: params (3,) -> RMS loss (float).
        loss_batch: params (n, 3) -> RMS losses (n,).
        bounds: (3, 2) search box (Teff K, log g dex, [Fe/H] dex).
        seed: seeds the random points (``np.random.default_rng(seed)``, as ``infer``) and
            ``gp_minimize``.
    """
    from skopt import gp_minimize

    bounds = np.asarray(bounds, float)
    dims = [tuple(map(float, b)) for b in bounds]
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(bounds[:, 0], bounds[:, 1], size=(n_random, 3))
    t0 = time.perf_counter()
    y0 = np.asarray(loss_batch(x0), dtype=float)
    t_random = time.perf_counter() - t0
    loss_seconds = []

    def objective(x):
        t = time.perf_counter()
        y = float(loss_one(np.asarray(x, float)))
        loss_seconds.append(time.perf_counter() - t)
        return y

    # jblase's surrogate settings include infer's single BLAS thread (for every contender).
    threads = SURROGATE_BLAS_THREADS if surrogate == "jblase" else None
    t1 = time.perf_counter()
    with warnings.catch_warnings(), threadpool_limits(limits=threads, user_api="blas"):
        warnings.filterwarnings("ignore", message="The objective has been evaluated")
        res = gp_minimize(
            objective,
            dims,
            x0=[list(x) for x in x0],
            y0=[float(y) for y in y0],
            n_calls=n_guided,
            n_initial_points=0,
            random_state=seed,
            **surrogate_settings(surrogate, dims, seed),
        )
    t_guided = time.perf_counter() - t1
    return {
        "x": [float(v) for v in res.x],
        "loss": float(res.fun),
        "n_evaluations": n_random + len(loss_seconds),
        "seconds": {
            "total": t_random + t_guided,
            "random_batch": t_random,
            "guided": t_guided,
            "guided_loss": sum(loss_seconds),
            "surrogate": t_guided - sum(loss_seconds),
            "loss_per_guided_call": statistics.median(loss_seconds) if loss_seconds else None,
        },
    }


# --------------------------------------------------------------------------- losses


@eqx.filter_jit
def _rms_one(gen: Generator, flux, params):
    resid = gen(params) - flux
    return jnp.sqrt(jnp.mean(resid * resid))


@eqx.filter_jit
def _rms_batch(gen: Generator, flux, params, batch_size: int):
    resid = gen.batch(params, batch_size) - flux
    return jnp.sqrt(jnp.mean(resid * resid, axis=1))


def jblase_losses(gen: Generator, flux: np.ndarray, batch_size: int):
    flux_j = jnp.asarray(flux)

    def one(x):
        return float(_rms_one(gen, flux_j, jnp.asarray(x, jnp.float64)))

    def batch(xs):
        return np.asarray(_rms_batch(gen, flux_j, jnp.asarray(xs, jnp.float64), batch_size))

    return one, batch


def baseline_losses(base: PaperBaseline, flux: np.ndarray):
    def one(x):
        return float(np.sqrt(np.mean((base.spectrum(x) - flux) ** 2)))

    def batch(xs):
        return np.sqrt(np.mean((base.spectra(xs) - flux) ** 2, axis=1))

    return one, batch


# --------------------------------------------------------------------------- benchmark


def _errors(x, truth) -> dict:
    d = np.asarray(x, float) - np.asarray(truth, float)
    return {"d_teff": float(d[0]), "d_logg": float(d[1]), "d_feh": float(d[2])}


def _median_runs(runs: list[dict]) -> dict:
    keys = runs[0]["seconds"]
    return {
        k: statistics.median(r["seconds"][k] for r in runs)
        for k in keys
        if runs[0]["seconds"][k] is not None
    }


def run(args) -> dict:
    preset = QUICK if args.quick else FULL
    lines = args.lines or preset["lines"]
    pixels = args.pixels or preset["pixels"]
    seeds = tuple(args.seeds or preset["seeds"])
    wl_range = (8300.0, 8300.0 * math.exp((pixels - 0.5) * math.log1p(1.0 / RESOLUTION)))
    t = time.perf_counter()
    manifold = make_manifold(lines, wl_range, RESOLUTION, DEFAULT_AXES, seed=args.seed)
    n_pix = int(manifold.wavelength.shape[0])
    _log(
        f"stand-in manifold: {manifold.n_lines} lines, {n_pix} pixels "
        f"({wl_range[0]:.0f}-{wl_range[1]:.0f} A), grid {manifold.shape} "
        f"({time.perf_counter() - t:.1f} s)"
    )
    t = time.perf_counter()
    base = PaperBaseline.from_manifold(manifold)
    baseline_build_s = time.perf_counter() - t
    truth = np.array(TRUTH)
    flux = base.spectrum(truth)
    wavelength = np.asarray(manifold.wavelength)
    prior = TRUTH[0] + PRIOR_OFFSET_K
    bounds = np.array([[a[0], a[-1]] for a in (np.asarray(ax) for ax in manifold.axes)], float)
    bounds[0] = [max(bounds[0, 0], prior - TEFF_WINDOW_K), min(bounds[0, 1], prior + TEFF_WINDOW_K)]
    protocol = {"n_random": args.n_random, "n_guided": args.n_guided, "surrogate": args.surrogate}
    _log(f"jblase batch_size {args.batch_size} ({jax.default_backend()})")

    contenders: dict[str, dict] = {}
    gens = {
        "paper work": equivalent_generator(manifold, "float64"),
        "default": Generator.from_manifold(manifold),
        "default f32": Generator.from_manifold(manifold, compute_dtype="float32"),
    }
    for gen_name, gen in gens.items():
        name = f"jblase {gen_name}"
        one, batch = jblase_losses(gen, flux, args.batch_size)
        t = time.perf_counter()
        one(truth)
        batch(np.tile(truth, (args.n_random, 1)))  # compiles the (n_random, 3) batch
        compile_s = time.perf_counter() - t
        runs = []
        for seed in seeds:
            runs.append(paper_protocol(one, batch, bounds, seed, **protocol))
            _log(f"{name} seed {seed}: {runs[-1]['seconds']['total']:.2f} s, x = {runs[-1]['x']}")
        contenders[name] = {
            "runs": runs,
            "compile_s": compile_s,
            "loss_at_truth": one(truth),
            "settings": {
                "compute_dtype": gen.compute_dtype,
                "amplitude_interpolation": gen.amplitude_interpolation,
                "flux_tolerance": gen.flux_tolerance,
                "max_tiles": gen.max_tiles,
                "batch_size": args.batch_size,
            },
        }
    one, batch = baseline_losses(base, flux)
    runs = []
    for seed in seeds:
        runs.append(paper_protocol(one, batch, bounds, seed, **protocol))
        _log(f"baseline seed {seed}: {runs[-1]['seconds']['total']:.2f} s, x = {runs[-1]['x']}")
    contenders["baseline"] = {
        "runs": runs,
        "compile_s": 0.0,
        "build_s": baseline_build_s,
        "loss_at_truth": one(truth),
    }

    # ---- jblase.inference.infer itself
    infer_first_s = {}
    for gen_name in preset["infer_generators"]:
        gen = gens[gen_name]
        kwargs = {
            "teff_prior": prior,
            "teff_window": TEFF_WINDOW_K,
            "n_random": args.n_random,
            "n_guided": args.n_guided,
            "batch_size": args.batch_size,
        }
        # Warm-up: compiles the random batch, the single loss and the refinement's gradient
        # (no guided calls: they compile nothing new).
        t = time.perf_counter()
        infer(gen, wavelength, flux, **{**kwargs, "n_guided": 0}, seed=seeds[0])
        infer_first_s[gen_name] = time.perf_counter() - t
        _log(f"infer warm-up ({gen_name}): {infer_first_s[gen_name]:.1f} s")
        modes = (True, False) if preset["infer_no_refine_run"] else (True,)
        for refine in modes:
            runs = []
            for seed in seeds:
                res = infer(gen, wavelength, flux, **kwargs, refine=refine, seed=seed)
                runs.append(
                    {
                        "x": res.params.tolist(),
                        "loss": res.loss,
                        "gp": res.gp,
                        "n_evaluations": res.n_evaluations,
                        "n_gradient_evaluations": res.n_gradient_evaluations,
                        "seconds": res.seconds,
                    }
                )
                _log(
                    f"infer({gen_name}, refine={refine}) seed {seed}: "
                    f"{res.seconds['total']:.2f} s, x = {runs[-1]['x']}"
                )
            contenders[f"infer {gen_name} refine={refine}"] = {
                "runs": runs,
                "compile_s": infer_first_s[gen_name],
                "note": f"jblase.inference.infer with the {gen_name} generator, "
                f"batch_size={args.batch_size}; warm-up call (compilation) timed apart",
            }
        if not preset["infer_no_refine_run"]:
            # The refine=False run is the refine=True run up to the refinement: its phases.
            contenders[f"infer {gen_name} refine=False"] = {
                "runs": [
                    {
                        "x": [r["gp"][k] for k in ("teff", "logg", "feh")],
                        "loss": r["gp"]["loss"],
                        "n_evaluations": r["n_evaluations"],
                        "seconds": {
                            "random": r["seconds"]["random"],
                            "gp": r["seconds"]["gp"],
                            "total": r["seconds"]["random"] + r["seconds"]["gp"],
                        },
                    }
                    for r in contenders[f"infer {gen_name} refine=True"]["runs"]
                ],
                "compile_s": infer_first_s[gen_name],
                "note": "derived: the random + GP phases of the refine=True runs (same code "
                "path up to the refinement); --quick does not rerun it",
            }

    # ---- rows
    base_s = _median_runs(contenders["baseline"]["runs"])
    rows = []
    for name, c in contenders.items():
        sec = _median_runs(c["runs"])
        errs = [_errors(r["x"], truth) for r in c["runs"]]
        row = {
            "contender": name,
            "s_per_inference": sec["total"],
            "random_batch_s": sec.get("random_batch", sec.get("random")),
            "guided_loss_s": sec.get("guided_loss"),
            "surrogate_s": sec.get("surrogate"),
            "refine_s": sec.get("refine"),
            "compile_s": c["compile_s"],
            "speedup_vs_baseline": base_s["total"] / sec["total"],
            "loss_speedup": (base_s["random_batch"] + base_s["guided_loss"])
            / (sec["random_batch"] + sec["guided_loss"])
            if "guided_loss" in sec
            else None,
            "evaluations": c["runs"][0]["n_evaluations"],
            **{k: statistics.median(abs(e[k]) for e in errs) for k in errs[0]},
            "loss": statistics.median(r["loss"] for r in c["runs"]),
        }
        c["median_seconds"] = sec
        c["errors"] = errs
        rows.append(row)
    by = {r["contender"]: r for r in rows}
    eq, bl = contenders["jblase paper work"]["runs"], contenders["baseline"]["runs"]
    # The guided phase's surrogate does the same work for every driver contender (same seeds,
    # same losses to float precision), so differences in its time are the machine's noise:
    # these ratios charge every contender the same (median) surrogate time.
    drivers = ("jblase paper work", "jblase default", "jblase default f32", "baseline")
    shared = statistics.median(by[n]["surrogate_s"] for n in drivers)

    def shared_speedup(name):
        def loss_s(n):
            return by[n]["random_batch_s"] + by[n]["guided_loss_s"]

        return (loss_s("baseline") + shared) / (loss_s(name) + shared)

    summary = {
        "speedup_inference": by["jblase paper work"]["speedup_vs_baseline"],
        "speedup_inference_shared_surrogate": shared_speedup("jblase paper work"),
        "speedup_inference_default_shared_surrogate": shared_speedup("jblase default"),
        "surrogate_s_shared": shared,
        "speedup_inference_default": by["jblase default"]["speedup_vs_baseline"],
        "speedup_inference_default_f32": by["jblase default f32"]["speedup_vs_baseline"],
        "speedup_inference_best": max(
            by[n]["speedup_vs_baseline"] for n in drivers if n != "baseline"
        ),
        "speedup_infer_refine": by["infer default refine=True"]["speedup_vs_baseline"],
        "speedup_infer_no_refine": by["infer default refine=False"]["speedup_vs_baseline"],
        "speedup_loss_evaluations": by["jblase paper work"]["loss_speedup"],
        "seconds_jblase": by["jblase paper work"]["s_per_inference"],
        "seconds_jblase_default": by["jblase default"]["s_per_inference"],
        "seconds_baseline": by["baseline"]["s_per_inference"],
        "seconds_infer_refine": by["infer default refine=True"]["s_per_inference"],
        "seconds_infer_no_refine": by["infer default refine=False"]["s_per_inference"],
        "seconds_surrogate_baseline": by["baseline"]["surrogate_s"],
        "seconds_surrogate_jblase": by["jblase paper work"]["surrogate_s"],
        "compile_s_jblase": contenders["jblase paper work"]["compile_s"],
        "infer_first_call_s": infer_first_s,
        "max_abs_x_diff_jblase_vs_baseline": [
            float(v)
            for v in np.max(np.abs(np.array([r["x"] for r in eq]) - [r["x"] for r in bl]), axis=0)
        ],
        "abs_errors_infer_refine": {
            k: by["infer default refine=True"][k] for k in ("d_teff", "d_logg", "d_feh")
        },
        "abs_errors_infer_refine_paper_work": {
            k: by["infer paper work refine=True"][k] for k in ("d_teff", "d_logg", "d_feh")
        },
        "seconds_infer_refine_paper_work": by["infer paper work refine=True"]["s_per_inference"],
        "abs_errors_baseline": {k: by["baseline"][k] for k in ("d_teff", "d_logg", "d_feh")},
        "paper_seconds_inference": PAPER_SECONDS_INFERENCE,
        "peak_rss_mb": peak_rss_mb(),
    }
    return {
        "manifold": {
            **describe(manifold, wl_range),
            "present_fraction": float(np.asarray(manifold.present).mean()),
        },
        "data": {
            "truth": list(TRUTH),
            "made_by": "PaperBaseline.spectrum (noise-free)",
            "teff_prior": prior,
            "bounds": bounds.tolist(),
        },
        "protocol": {**protocol, "seeds": list(seeds), "jblase_batch_size": args.batch_size},
        "baseline_build_s": baseline_build_s,
        "contenders": contenders,
        "rows": rows,
        "summary": summary,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="2,000 lines, 20k pixels, 1 seed")
    parser.add_argument("--lines", type=int, help="lines in the stand-in manifold")
    parser.add_argument("--pixels", type=int, help="pixels (from 8300 A at R = 500,000)")
    parser.add_argument("--seeds", type=int, nargs="+", help="one inference per seed")
    parser.add_argument("--n-random", type=int, default=100)
    parser.add_argument("--n-guided", type=int, default=20)
    parser.add_argument(
        "--surrogate",
        choices=("jblase", "skopt"),
        default="jblase",
        help="gp_minimize settings for every contender: infer's (default) or skopt's defaults",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        help="spectra per compiled step in jblase's random batch, for the driver and infer "
        "(default 2 on CPU, 256 otherwise)",
    )
    parser.add_argument("--seed", type=int, default=0, help="stand-in manifold seed")
    parser.add_argument("--out", help="output directory (default benchmarks/results)")
    args = parser.parse_args()
    if args.batch_size is None:
        args.batch_size = default_batch_size()
    result = run(args)
    m = result["manifold"]
    print(
        f"\nper-inference wall time, paper protocol ({args.n_random} random + {args.n_guided} "
        f"guided, Teff +-{TEFF_WINDOW_K:.0f} K), stand-in {m['n_lines']} lines x {m['n_pix']} "
        f"pixels; medians over seeds {result['protocol']['seeds']}; |errors| vs truth {TRUTH}"
    )
    columns = [
        "contender",
        "s_per_inference",
        "speedup_vs_baseline",
        "random_batch_s",
        "guided_loss_s",
        "surrogate_s",
        "refine_s",
        "compile_s",
        "loss_speedup",
        "d_teff",
        "d_logg",
        "d_feh",
        "loss",
    ]
    print_table(
        [{c: r.get(c) if r.get(c) is not None else "-" for c in columns} for r in result["rows"]],
        columns,
    )
    s = result["summary"]
    print(
        f"(paper: about {PAPER_SECONDS_INFERENCE:.0f} s per inference on a Ryzen 9 7950X3D)\n"
        f"speedup with the same surrogate time ({s['surrogate_s_shared']:.1f} s) charged to all: "
        f"paper work {s['speedup_inference_shared_surrogate']:.2f}x, default "
        f"{s['speedup_inference_default_shared_surrogate']:.2f}x; loss evaluations alone: "
        f"{s['speedup_loss_evaluations']:.2f}x"
    )
    write_results("inference" + ("_quick" if args.quick else ""), result, args.out)


if __name__ == "__main__":
    main()
