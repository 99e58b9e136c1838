"""The ``jblase`` command: fetch, synth-grid, clone, complete, propagate, build, reconstruct,
infer, fit, fit-many, demo.

Compiled programs are kept between runs in JAX's persistent compilation cache (compilation is
most of a short command's time on CPU): ``$JBLASE_CACHE_DIR``, by default
``$XDG_CACHE_HOME/jblase/jax`` (``~/.cache/jblase/jax``). ``JBLASE_NO_COMPILE_CACHE=1`` turns
it off; a ``JAX_COMPILATION_CACHE_DIR`` set by the user is left alone.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import sys
from pathlib import Path

from jblase._compiled import compile_cache_dir, enable_compile_cache  # noqa: F401
from jblase.forward import LINE_FORMS
from jblase.profiles import PROFILES
from jblase.search import SEARCH_METHODS

__all__ = ["main"]


def _range(parser: argparse.ArgumentParser, flag: str, what: str) -> None:
    parser.add_argument(flag, nargs=2, type=float, metavar=("LO", "HI"), help=f"{what} (inclusive)")


def _selection_args(parser: argparse.ArgumentParser) -> None:
    _range(parser, "--teff", "Teff range in K")
    _range(parser, "--logg", "log g range in dex")
    _range(parser, "--feh", "[Fe/H] range in dex")


def _cmd_fetch(args) -> int:
    from jblase.grids.phoenix import PAPER_SUBSET, DownloadError, GridSelection, download

    selection = GridSelection.from_ranges(
        teff=args.teff, logg=args.logg, feh=args.feh, base=PAPER_SUBSET
    )
    points = selection.points()
    print(f"fetching {len(points)} PHOENIX spectra (+ wavelength file) into {args.out}")
    base_url = {} if args.base_url is None else {"base_url": args.base_url}
    try:
        paths = download(points, args.out, progress=not args.quiet, **base_url)
    except DownloadError as err:  # a RuntimeError: main() reports only ValueError and OSError
        print(f"jblase fetch: error: {err}", file=sys.stderr)
        return 2
    print(f"done: {len(paths)} files in {args.out}")
    return 0


def _axis(spec, default):
    import numpy as np

    if spec is None:
        return default
    lo, hi, step = spec
    return tuple(float(v) for v in np.round(np.arange(lo, hi + step / 2, step), 6))


def _cmd_synth_grid(args) -> int:
    from jblase.grids import synthetic

    model = synthetic.SyntheticGridModel(
        wl_range=tuple(args.wl) if args.wl else synthetic.SyntheticGridModel().wl_range,
        resolution=args.resolution,
        seed=args.seed,
        line_formation=args.line_formation,
    )
    quick = args.quick
    teffs = _axis(args.teff, synthetic.QUICK_TEFFS if quick else synthetic.DEMO_TEFFS)
    loggs = _axis(args.logg, synthetic.QUICK_LOGGS if quick else synthetic.DEMO_LOGGS)
    fehs = _axis(args.feh, synthetic.QUICK_FEHS if quick else synthetic.DEMO_FEHS)
    out = synthetic.write_grid(args.out, teffs, loggs, fehs, model=model, progress=not args.quiet)
    n = len(teffs) * len(loggs) * len(fehs)
    print(f"wrote {n} spectra ({model.wavelength().size} pixels each) to {out}")
    return 0


def _cmd_clone(args) -> int:
    from jblase.clone import CloneSettings
    from jblase.grids.phoenix import PhoenixGrid
    from jblase.pipeline import clone_grid

    grid = PhoenixGrid(
        args.grid_dir,
        wl_range=tuple(args.wl) if args.wl else None,
        teff_range=args.teff,
        logg_range=args.logg,
        feh_range=args.feh,
    )
    settings = CloneSettings(
        prominence=args.prominence,
        wing_cut=args.wing_cut,
        epochs=args.epochs,
        learning_rate=args.lr,
        tune_centers=not args.fixed_centers,
        profile=args.profile,
        line_form=args.line_form,
        optimizer=args.optimizer,
        compute_dtype=args.dtype,
        residual_rounds=args.residual_rounds,
        residual_prominence=args.residual_prominence,
    )
    summary = clone_grid(
        grid,
        args.out,
        settings,
        batch_size=args.batch,
        source={"grid_dir": str(Path(args.grid_dir).resolve()), "wl_range": args.wl},
        progress=not args.quiet,
        workers=args.workers,
        scheduler=args.scheduler,
    )
    print(
        f"{summary['total']} grid points: {summary['done']} already done, "
        f"{summary['cloned']} cloned now -> {args.out}"
    )
    return 0


def _cmd_complete(args) -> int:
    from jblase.complete import CompletionSettings, complete_grid
    from jblase.manifold import read_clones_manifest

    grid = _clones_grid(args.grid_dir, read_clones_manifest(args.clones_dir))
    settings = CompletionSettings(
        epochs=args.epochs, start_fraction=args.start_fraction, tolerance_px=args.tolerance_px
    )
    summary = complete_grid(
        grid, args.clones_dir, args.out, settings, batch_size=args.batch, progress=not args.quiet
    )
    print(
        f"{summary['total']} grid points, {summary['identities']} line identities: "
        f"{summary['done']} already done, {summary['completed']} completed now -> {args.out}"
    )
    return 0


def _cmd_propagate(args) -> int:
    from jblase.manifold import read_clones_manifest
    from jblase.propagate import PropagationSettings, propagate_grid

    grid = _clones_grid(args.grid_dir, read_clones_manifest(args.clones_dir))
    settings = PropagationSettings(
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        lr_schedule=args.lr_schedule,
        residual_rounds=args.residual_rounds,
        **(
            {}
            if args.residual_min_separation is None
            else {"residual_min_separation_px": args.residual_min_separation}
        ),
        seed=tuple(args.seed) if args.seed else None,
    )
    summary = propagate_grid(
        grid, args.clones_dir, args.out, settings, batch_size=args.batch, progress=not args.quiet
    )
    print(
        f"{summary['total']} grid points in {summary['levels']} levels: {summary['done']} "
        f"already done, {summary['propagated']} propagated now -> {args.out}; "
        f"{summary['identities']} line identities, present at {summary['presence_fraction']:.0%} "
        "of the grid points"
    )
    return 0


def _clones_grid(grid_dir, manifest):
    """The grid a clones directory was made from, cropped as its manifest says."""
    from jblase.grids.phoenix import PhoenixGrid

    source = manifest.get("source", {})
    return PhoenixGrid(
        grid_dir, wl_range=tuple(source["wl_range"]) if source.get("wl_range") else None
    )


_BLASE_ONLY = ("wavelength", "wl", "table", "wing_cut")


def _refit_parser(sub, name: str, help: str):
    """A sub-command that refits a clones directory of a grid into another (``--out``)."""
    p = sub.add_parser(name, help=help)
    p.add_argument("grid_dir", type=Path, help="the grid the clones were made from")
    p.add_argument("clones_dir", type=Path, help="clones directory written by `jblase clone`")
    p.add_argument("--out", required=True, type=Path, help=f"the {name}d clones directory")
    return p


def _cmd_build(args) -> int:
    from jblase.blase_archive import (
        BLASE_WING_CUT,
        build_blase_manifold,
        is_blase_source,
        read_wavelength_file,
    )
    from jblase.manifold import build_manifold, directory_size

    source = args.clones_dir
    if is_blase_source(source):
        if args.wavelength is None:
            raise ValueError(
                f"{source} holds original-code .pt clones, which do not store the wavelengths "
                "they were fitted on; pass --wavelength (e.g. the PHOENIX "
                "WAVE_PHOENIX-ACES-AGSS-COND-2011.fits, cropped with --wl to the clones' band)"
            )
        manifold = build_blase_manifold(
            source,
            read_wavelength_file(args.wavelength, tuple(args.wl) if args.wl else None),
            table=args.table,
            wing_cut=args.wing_cut or BLASE_WING_CUT,
            fill_missing=args.fill_missing,
            progress=not args.quiet,
        )
    else:
        given = [f"--{n.replace('_', '-')}" for n in _BLASE_ONLY if getattr(args, n) is not None]
        if given:
            raise ValueError(
                f"{' '.join(given)} apply only to original-code .pt clones (a directory or "
                f".zip of them); {source} is a jblase clones directory"
            )
        manifold = build_manifold(source, fill_missing=args.fill_missing, progress=not args.quiet)
    manifold.save(args.out)
    size = Path(args.out).stat().st_size
    source_size = directory_size(source) if source.is_dir() else source.stat().st_size
    print(
        f"manifold: {manifold.n_lines} lines x {manifold.shape} grid -> {args.out} "
        f"({size / 1e6:.2f} MB; clones {source_size / 1e6:.2f} MB)"
    )
    return 0


def _load_generator(path, wl_range=None, dtype="float64", interpolation=None):
    from jblase.generator import Generator

    return Generator.load(
        path, wl_range, compute_dtype=dtype, amplitude_interpolation=interpolation
    )


def _interpolation_arg(p) -> None:
    p.add_argument(
        "--interpolation",
        choices=["auto", "logit_depth", "hybrid", "linear", "log"],
        default=None,
        help="how line strengths are interpolated between grid points: auto (default: "
        "logit_depth for the absorption line form, hybrid for the optical-depth one), "
        "logit_depth (the logit of the central depth over the depth the grid's strong lines "
        "saturate towards, where a line is present at every node around the point, a "
        "elsewhere), hybrid (as logit_depth with ln a, and a for lines "
        "deeper than 0.3), both with a cubic spline along Teff where the line is present at "
        "all four nodes of it; linear (a) or log (ln a, the paper's), trilinear",
    )


def _cmd_reconstruct(args) -> int:
    import numpy as np

    from jblase.io import write_spectrum

    gen = _load_generator(
        args.manifold, tuple(args.wl) if args.wl else None, interpolation=args.interpolation
    )
    params = gen.check_params([args.teff, args.logg, args.feh])
    flux = np.asarray(gen(params))
    write_spectrum(args.out, np.asarray(gen.wavelength), flux)
    teff, logg, feh = params
    print(f"wrote {flux.size} pixels at Teff={teff:g} logg={logg:g} [Fe/H]={feh:g} -> {args.out}")
    return 0


def _cmd_infer(args) -> int:
    from jblase.inference import infer
    from jblase.io import read_spectrum

    wavelength, flux, _ = read_spectrum(args.spectrum)
    gen = _load_generator(args.manifold, interpolation=args.interpolation)
    result = infer(
        gen,
        wavelength,
        flux,
        teff_prior=args.teff_prior,
        teff_window=args.teff_window,
        n_random=args.n_random,
        n_guided=args.n_guided,
        refine=not args.no_refine,
        seed=args.seed,
        method=args.search,
    )
    if args.json:
        out = {
            "teff": result.teff,
            "logg": result.logg,
            "feh": result.feh,
            "loss": result.loss,
            "gp": result.gp,
            "n_evaluations": result.n_evaluations,
            "seconds": result.seconds["total"],
        }
        print(json.dumps(out))
    else:
        gp = result.gp
        print(f"Teff   = {result.teff:8.1f} K    (GP only {gp['teff']:8.1f})")
        print(f"log g  = {result.logg:8.3f} dex  (GP only {gp['logg']:8.3f})")
        print(f"[Fe/H] = {result.feh:8.3f} dex  (GP only {gp['feh']:8.3f})")
        print(
            f"RMS loss {result.loss:.5f} (GP only {gp['loss']:.5f}); {result.n_evaluations} "
            f"evaluations + {result.n_gradient_evaluations} gradient steps in "
            f"{result.seconds['total']:.1f} s"
        )
    return 0


#: fit options that only a stellar (--manifold) fit uses.
_MANIFOLD_ONLY = ("teff_prior", "teff_window", "n_random", "n_guided", "seed", "search")
_FIT_ROWS = (  # name, label, unit, format
    ("teff", "Teff", "K", ".1f"),
    ("logg", "log g", "dex", ".3f"),
    ("feh", "[Fe/H]", "dex", ".3f"),
    ("rv_kms", "RV", "km/s", ".4f"),
    ("vsini_kms", "v sin i", "km/s", ".3f"),
    ("resolving_power", "R", "", ".0f"),
)


def _berv_arg(text: str) -> float | str:
    if text.strip().lower() == "header":
        return "header"
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"--berv takes a number (km/s) or 'header', got {text!r}")
    return value


def _systematic_errors_arg(text: str | None) -> dict[str, float] | None:
    """``--systematic-errors teff=60,logg=0.1,feh=0.03`` as a dict (None when not given)."""
    if text is None:
        return None
    from jblase.fit import PARAMETERS

    usage = "--systematic-errors takes NAME=VALUE pairs separated by commas, e.g. teff=60,logg=0.1"
    out: dict[str, float] = {}
    for item in text.split(","):
        name, sep, value = (part.strip() for part in item.partition("="))
        if not item.strip() or not sep or not name or not value:
            raise ValueError(f"{usage}; got {text!r}")
        if name not in PARAMETERS:
            raise ValueError(
                f"--systematic-errors: unknown parameter {name!r}; expected names among "
                f"{', '.join(PARAMETERS)}"
            )
        if name in out:
            raise ValueError(f"--systematic-errors: {name!r} given twice")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not (math.isfinite(number) and number >= 0):
            raise ValueError(f"--systematic-errors: {name}={value!r} must be a finite number >= 0")
        out[name] = number
    return out


def _json_null_nan(obj):
    """``obj`` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: _json_null_nan(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_null_nan(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _print_fit(result) -> None:
    for name, label, unit, fmt in _FIT_ROWS:
        if name not in result.fitted and name in ("teff", "logg", "feh"):
            continue
        value = f"{result.values[name]:{fmt}}"
        if name in result.fitted:
            error = result.errors[name]
            value += f" +/- {error:{fmt}}" if math.isfinite(error) else " +/- ?"
            floor = (result.systematic_errors or {}).get(name)
            if floor is not None and math.isfinite(error):
                value += f" (Laplace {result.errors_stat[name]:{fmt}} + floor {floor:{fmt}})"
        else:
            value += " (fixed)"
        print(f"{label:<8}= {value} {unit}".rstrip())
    print(
        f"chi2_reduced {result.chi2_reduced:.4g} on {result.n_pixels} pixels"
        + (f" ({result.n_clipped} clipped)" if result.n_clipped else "")
        + f"; {result.seconds['total']:.1f} s"
    )
    post = result.posterior
    if post is not None:
        print(
            f"posterior (NUTS, {post['chains']} chains x {post['draws']} draws, "
            f"{post['divergences']} divergent): median [16%, 84%], R-hat, ESS"
        )
        for name, label, unit, fmt in _FIT_ROWS:
            if name in result.fitted:
                print(
                    f"  {label:<8}{post['median'][name]:{fmt}} [{post['p16'][name]:{fmt}}, "
                    f"{post['p84'][name]:{fmt}}] {unit}  R-hat {post['rhat'][name]:.3f}  "
                    f"ESS {post['ess'][name]:.0f}"
                )
    print(f"BERV {result.berv_kms:.4f} km/s ({result.berv_source})")
    if result.uncertainty_estimated:
        print("uncertainties: none in the file; set to the residual scatter (chi2_reduced = 1)")


def _search_arg(p, default) -> None:
    p.add_argument(
        "--search",
        choices=SEARCH_METHODS,
        default=default,
        help="after the random points: 'gp' (the paper's GP-guided calls; the default) or "
        "'multistart' (gradient fits from the best random points: faster, for surveys; "
        "benchmarks/search_paths.py compares them)",
    )


def _fit_settings(args):
    """(FitSettings, search options, mask intervals or None) from the fit options."""
    from jblase.fit import FitSettings, read_mask_file

    settings = FitSettings(
        continuum_degree=args.continuum_degree,
        resolving_power=args.resolving_power,
        fit_resolution=args.fit_resolution,
        vsini_kms=args.vsini,
        fit_vsini=not args.fixed_vsini,
        berv_kms=_berv_arg(args.berv),
        robust=args.robust,
        systematic_errors=_systematic_errors_arg(args.systematic_errors),
        **({} if args.teff_prior is None else {"teff_prior": args.teff_prior}),
        **({} if args.teff_window is None else {"teff_window": args.teff_window}),
    )
    search = {n: getattr(args, n) for n in ("n_random", "n_guided", "seed")}
    search["method"] = args.search
    search = {n: v for n, v in search.items() if v is not None}
    mask = None if args.mask_file is None else read_mask_file(args.mask_file)
    return settings, search, mask


def _posterior_settings(args, draws_flag: str):
    """The NUTS settings of ``--posterior nuts --draws N --chains C`` (None without it)."""
    if args.posterior != "nuts":
        if getattr(args, draws_flag.lstrip("-").replace("-", "_")) is not None:
            raise ValueError(f"{draws_flag} needs --posterior nuts")
        return None
    from jblase.posterior import PosteriorSettings

    return PosteriorSettings(draws=args.draws, warmup=max(200, args.draws // 2), chains=args.chains)


def _cmd_fit(args) -> int:
    from jblase.fit import fit, line_list_model
    from jblase.spectra import read_observed

    if (args.manifold is None) == (args.lines is None):
        raise ValueError("give exactly one model: --manifold FILE or --lines FILE")
    if args.lines is not None:
        given = [f"--{n.replace('_', '-')}" for n in _MANIFOLD_ONLY if getattr(args, n) is not None]
        if given:
            raise ValueError(
                f"{' '.join(given)} apply only to --manifold fits (a --lines fit holds the "
                "stellar parameters fixed)"
            )
    for path in (args.spectrum, args.manifold, args.lines, args.mask_file):
        if path is not None and not path.is_file():
            raise ValueError(f"{path}: no such file")
    settings, search, mask = _fit_settings(args)
    posterior = _posterior_settings(args, "--draws-out")
    spectrum = read_observed(args.spectrum, orders=args.orders)
    if args.lines is not None:
        model = line_list_model(args.lines, spectrum, settings)
    else:
        model = _load_generator(args.manifold, interpolation=args.interpolation)
    result = fit(model, spectrum, settings, mask_intervals=mask, posterior=posterior, **search)
    if args.draws_out is not None:
        from jblase.survey import save_draws

        save_draws(args.draws_out, result)
    if args.plot is not None:
        from jblase.plots import plot_fit

        plot_fit(spectrum, result, args.plot)
    if args.json:
        print(json.dumps(_json_null_nan(result.to_json()), allow_nan=False))
    else:
        _print_fit(result)
        if args.plot is not None:
            print(f"plot -> {args.plot}")
    return 0


def _cmd_fit_many(args) -> int:
    from jblase.survey import FitJob, SurveySettings, run_survey

    for path in (args.manifold, args.mask_file):
        if path is not None and not path.is_file():
            raise ValueError(f"{path}: no such file")
    settings, search, mask = _fit_settings(args)
    job = FitJob(
        manifold=str(args.manifold),
        settings=settings,
        search=search,
        orders=None if args.orders is None else tuple(args.orders),
        mask_intervals=mask,
        interpolation=args.interpolation,
        posterior=_posterior_settings(args, "--draws-dir"),
        draws_dir=None if args.draws_dir is None else str(args.draws_dir),
    )
    engine = SurveySettings(
        workers=args.workers,
        scheduler=args.scheduler,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    done = run_survey(args.inputs, args.out, job, engine)
    print(
        f"{done['total']} spectra: {done['fitted']} fitted ({done['failed']} failed), "
        f"{done['skipped']} already in the table -> {done['table']}"
    )
    return 0


def _cmd_demo(args) -> int:
    from jblase.demo import run_demo

    run_demo(args.out, quick=args.quick, progress=not args.quiet)
    return 0


def _fit_options(p) -> None:
    """The options of a stellar fit, shared by ``fit`` and ``fit-many``."""
    p.add_argument(
        "--teff-prior",
        type=float,
        default=None,
        metavar="T",
        help="centre of the Teff search box (K)",
    )
    p.add_argument(
        "--teff-window",
        type=float,
        default=None,
        metavar="W",
        help="half-width of the Teff box (K; 500)",
    )
    p.add_argument(
        "--orders",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="order labels to fit (default: all)",
    )
    p.add_argument(
        "--berv",
        default="0",
        metavar="KMS|header",
        help="barycentric correction in km/s, or 'header' (BERV / BRVCORR keywords, or computed "
        "by astropy); default 0, right for data already on barycentric wavelengths",
    )
    p.add_argument(
        "--resolving-power",
        type=float,
        default=None,
        metavar="R",
        help="instrumental R, held fixed unless --fit-resolution (default: fitted from 50000)",
    )
    p.add_argument(
        "--fit-resolution", action="store_true", help="fit R, starting at --resolving-power"
    )
    p.add_argument(
        "--vsini",
        type=float,
        default=3.0,
        metavar="V",
        help="v sin i start, or fixed value (km/s; 3)",
    )
    p.add_argument("--fixed-vsini", action="store_true", help="hold v sin i at --vsini")
    p.add_argument(
        "--continuum-degree",
        type=int,
        default=2,
        metavar="D",
        help="Chebyshev degree per order (2)",
    )
    p.add_argument(
        "--mask-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="text file of 'lo hi' wavelength intervals (A, data frame) to leave out",
    )
    p.add_argument(
        "--robust", action="store_true", help="sigma-clip outlying pixels (5 sigma) and refit"
    )
    p.add_argument(
        "--systematic-errors",
        default=None,
        metavar="NAME=ERR,...",
        help="a systematic error floor per parameter (e.g. teff=60,logg=0.1,feh=0.03; names: "
        "teff logg feh rv_kms vsini_kms resolving_power), added in quadrature to the Laplace "
        "errors: the model's own (interpolation) error, calibrated on injections "
        "(benchmarks/injection.py --calibrate); the JSON keeps the Laplace error as NAME_err_stat",
    )
    p.add_argument(
        "--n-random", type=int, default=None, metavar="N", help="random search points (100)"
    )
    p.add_argument(
        "--n-guided", type=int, default=None, metavar="N", help="GP-guided search points (20)"
    )
    p.add_argument("--seed", type=int, default=None, metavar="S", help="search seed (0)")
    _search_arg(p, default=None)
    _interpolation_arg(p)


def _engine_options(p, zero: str, default_workers: int = 0) -> None:
    engine = p.add_mutually_exclusive_group()
    engine.add_argument(
        "--workers",
        type=int,
        default=default_workers,
        metavar="N",
        help=f"local Dask worker processes ({default_workers}); 0: {zero} "
        '(Dask: pip install "jblase[survey]")',
    )
    engine.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="an existing Dask scheduler (tcp://host:8786) instead of a local cluster; its "
        "workers must see the same paths",
    )


def _posterior_options(p, where: str) -> None:
    p.add_argument(
        "--posterior",
        choices=["nuts"],
        default=None,
        help="also sample the posterior of the fitted parameters by NUTS (needs blackjax: "
        f'pip install "jblase[sampling]"); {where} gains NAME_median, NAME_p16, NAME_p84 and '
        "the chains' R-hat and effective sample sizes",
    )
    p.add_argument(
        "--draws", type=int, default=1000, metavar="N", help="NUTS draws per chain (1000)"
    )
    p.add_argument(
        "--chains", type=int, default=4, metavar="C", help="NUTS chains (4), after one warm-up"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jblase",
        description="Clone synthetic stellar spectra into Voigt lines, build differentiable "
        "generators and infer Teff / log g / [Fe/H].",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fetch", help="download a PHOENIX HiRes subset (paper grid by default)")
    p.add_argument("--out", required=True, type=Path, help="local mirror / cache directory")
    _selection_args(p)
    p.add_argument(
        "--base-url", default=None, help="PHOENIX HiResFITS base URL (default: the official server)"
    )
    p.set_defaults(func=_cmd_fetch)

    p = sub.add_parser("synth-grid", help="write the embedded synthetic demo grid (PHOENIX layout)")
    p.add_argument("--out", required=True, type=Path)
    for flag, what in (("--teff", "Teff in K"), ("--logg", "log g"), ("--feh", "[Fe/H]")):
        p.add_argument(flag, nargs=3, type=float, metavar=("LO", "HI", "STEP"), help=f"{what} axis")
    _range(p, "--wl", "wavelength window in A")
    p.add_argument("--resolution", type=float, default=500_000.0, help="sampling lambda/dlambda")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulator's line list")
    p.add_argument(
        "--line-formation",
        default="per_line",
        choices=["per_line", "summed_opacity", "milne_eddington"],
        help="how the lines' optical depths tau_j become flux: per_line (default, the demo's) "
        "prod_j (1 - 0.9 (1 - exp(-tau_j))); or, with blended lines' opacities added first as "
        "in radiative transfer, tau = sum_j tau_j: summed_opacity 1 - 0.9 (1 - exp(-tau)) (a "
        "reversing layer) or milne_eddington 1 - 0.9 tau / (1 + tau)",
    )
    p.add_argument("--quick", action="store_true", help="the small quick-demo axes")
    p.set_defaults(func=_cmd_synth_grid)

    p = sub.add_parser("clone", help="clone every selected grid spectrum (resumable)")
    p.add_argument("grid_dir", type=Path, help="PHOENIX-layout directory (mirror or synth-grid)")
    p.add_argument("--out", required=True, type=Path, help="clones directory")
    _selection_args(p)
    _range(p, "--wl", "wavelength crop in A")
    p.add_argument("--prominence", type=float, default=0.005)
    p.add_argument("--wing-cut", type=int, default=6000, help="pixels per line window")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.05, help="Adam learning rate")
    p.add_argument("--batch", type=int, default=8, help="spectra cloned together in one program")
    _engine_options(p, "clone in this process, without Dask")
    p.add_argument("--profile", default="pseudo_voigt", choices=sorted(PROFILES))
    p.add_argument(
        "--line-form",
        default="absorption",
        choices=list(LINE_FORMS),
        help="how a line's a V makes flux: absorption 1 - a V (the paper's) or optical_depth "
        "exp(-a V)",
    )
    p.add_argument("--optimizer", default="adam", choices=["adam", "amsgrad"])
    p.add_argument(
        "--dtype", default="float64", choices=["float64", "float32"], help="profile arithmetic"
    )
    p.add_argument("--fixed-centers", action="store_true", help="do not tune line centres")
    p.add_argument(
        "--residual-rounds",
        type=int,
        default=1,
        help="rounds of adding the lines found in data / model and refitting (0: the paper's "
        "single pass)",
    )
    p.add_argument(
        "--residual-prominence", type=float, default=0.002, help="their detection threshold"
    )
    p.set_defaults(func=_cmd_clone)

    p = _refit_parser(
        sub,
        "complete",
        "give every line a fitted value at each grid point next to one where it was "
        "detected (matched identities; resumable)",
    )
    p.add_argument("--epochs", type=int, default=50, help="refit epochs per grid point")
    p.add_argument(
        "--start-fraction",
        type=float,
        default=0.1,
        help="an added line starts at this fraction of its neighbour's amplitude",
    )
    p.add_argument(
        "--tolerance-px", type=float, default=2.0, help="identity matching tolerance (pixels)"
    )
    p.add_argument("--batch", type=int, default=8, help="spectra refitted together")
    p.set_defaults(func=_cmd_complete)

    p = _refit_parser(
        sub,
        "propagate",
        "refit the grid point by point from a seed, each point starting from its "
        "neighbour's lines, so the whole grid shares one decomposition (resumable)",
    )
    p.add_argument(
        "--epochs", type=int, default=None, help="epochs per refit pass (default: the clones')"
    )
    p.add_argument("--learning-rate", type=float, default=None, help="default: the clones' own")
    p.add_argument(
        "--lr-schedule",
        default=None,
        help="constant, cosine, exponential or warmup_cosine (default: the clones' own)",
    )
    p.add_argument(
        "--residual-rounds",
        type=int,
        default=None,
        help="rounds of residual line addition after each refit (default: the clones')",
    )
    p.add_argument(
        "--residual-min-separation",
        type=float,
        default=None,
        metavar="PX",
        help="add a residual line only this many pixels or more from the point's inherited "
        "lines (default: PropagationSettings' default)",
    )
    p.add_argument(
        "--seed",
        nargs=3,
        type=float,
        default=None,
        metavar=("TEFF", "LOGG", "FEH"),
        help="the grid point to start from (default: the middle of the grid)",
    )
    p.add_argument("--batch", type=int, default=8, help="spectra refitted together")
    p.set_defaults(func=_cmd_propagate)

    p = sub.add_parser(
        "build",
        help="build the dense line manifold from a clones directory, or from the original "
        "code's .pt clones (a directory or .zip of them, e.g. the paper's Zenodo archive)",
    )
    p.add_argument(
        "clones_dir",
        type=Path,
        help="a jblase clones directory, or a directory or .zip of original-code .pt clones "
        "named T{teff}G{logg}Z{feh}.pt (others via --table)",
    )
    p.add_argument("--out", required=True, type=Path, help="manifold file (.npz)")
    p.add_argument("--fill-missing", action="store_true", help="allow holes in the grid")
    p.add_argument(
        "--wavelength",
        type=Path,
        default=None,
        help=".pt clones: the wavelengths (A) they were fitted on, which they do not store: "
        "the PHOENIX WAVE_...fits, a .npy or a spectrum file (its wavelength column)",
    )
    _range(p, "--wl", ".pt clones: crop of --wavelength in A (the paper's: 8038 12849)")
    p.add_argument(
        "--table",
        type=Path,
        default=None,
        help=".pt clones: CSV with columns file,teff,logg,feh giving the grid point of files "
        "named otherwise",
    )
    p.add_argument(
        "--wing-cut",
        type=int,
        default=None,
        help=".pt clones: pixels per line window they were tuned with (default 6000, the paper's)",
    )
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser("reconstruct", help="generate a spectrum at any (Teff, log g, [Fe/H])")
    p.add_argument("manifold", type=Path)
    p.add_argument("--teff", type=float, required=True)
    p.add_argument("--logg", type=float, required=True)
    p.add_argument("--feh", type=float, required=True)
    _range(p, "--wl", "wavelength range in A")
    p.add_argument("--out", required=True, type=Path, help=".npz, .csv or .fits")
    _interpolation_arg(p)
    p.set_defaults(func=_cmd_reconstruct)

    p = sub.add_parser("infer", help="infer Teff, log g, [Fe/H] of a normalised spectrum")
    p.add_argument("manifold", type=Path)
    p.add_argument("spectrum", type=Path, help=".npz (wavelength, flux), .csv or FITS table")
    p.add_argument("--teff-prior", type=float, default=None, help="centre of the Teff window (K)")
    p.add_argument(
        "--teff-window", type=float, default=500.0, help="half-width of the Teff window (K)"
    )
    p.add_argument("--n-random", type=int, default=100)
    p.add_argument("--n-guided", type=int, default=20)
    p.add_argument("--no-refine", action="store_true", help="skip the gradient refinement")
    p.add_argument("--seed", type=int, default=0)
    _search_arg(p, default="gp")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _interpolation_arg(p)
    p.set_defaults(func=_cmd_infer)

    p = sub.add_parser(
        "fit",
        help="fit an observed spectrum: RV, v sin i, R and continuum, and with a manifold "
        "Teff, log g, [Fe/H] (Laplace errors)",
    )
    p.add_argument(
        "spectrum", type=Path, help="observed spectrum: .npz, .csv or FITS (tables or images)"
    )
    model = p.add_argument_group("model (give exactly one)")
    model.add_argument(
        "--manifold",
        type=Path,
        default=None,
        metavar="FILE",
        help="a manifold (.npz): fit the stellar parameters",
    )
    model.add_argument(
        "--lines",
        type=Path,
        default=None,
        metavar="FILE",
        help="one line list: a jblase clone (.npz) or an original-code clone (.pt); the stellar "
        "parameters stay fixed",
    )
    _fit_options(p)
    _posterior_options(p, "the JSON")
    p.add_argument(
        "--draws-out",
        type=Path,
        default=None,
        metavar="FILE.npz",
        help="save the NUTS draws (chains x draws x parameters, physical units) here",
    )
    p.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="FILE",
        help="save data, model and residuals to this image",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser(
        "fit-many",
        help="fit many observed spectra (a directory or a list file) on a Dask cluster into a "
        "resumable table",
    )
    p.add_argument(
        "inputs",
        type=Path,
        help="a directory of spectra (.npz, .csv, FITS) or a list file (one path per line)",
    )
    p.add_argument("--manifold", type=Path, required=True, metavar="FILE", help="a manifold")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="TABLE",
        help="CSV table, one row per spectrum; an existing table is resumed",
    )
    _engine_options(p, "in this process, without Dask", default_workers=1)
    p.add_argument(
        "--batch-size", type=int, default=4, metavar="B", help="spectra per Dask task (4)"
    )
    _fit_options(p)
    _posterior_options(p, "each row")
    p.add_argument(
        "--draws-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="save each spectrum's NUTS draws here (FILE.draws.npz)",
    )
    p.set_defaults(func=_cmd_fit_many)

    p = sub.add_parser("demo", help="the whole pipeline on the embedded demo grid")
    p.add_argument("--out", type=Path, default=Path("jblase-demo"))
    p.add_argument("--quick", action="store_true", help="a smaller grid (a few minutes)")
    p.set_defaults(func=_cmd_demo)

    for action in sub.choices.values():
        action.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    enable_compile_cache()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted; finished work is kept and a rerun resumes", file=sys.stderr)
        return 130
    # UnpicklingError: an unsafe .pt; ImportError: an optional extra that is not installed.
    except (ValueError, OSError, pickle.UnpicklingError, ImportError) as err:
        print(f"jblase {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
