"""Inference (pipeline step 6): stellar parameters from a normalised spectrum.

The paper's protocol, made fast: ``n_random`` random points inside the bounds are evaluated as
one vmapped batch and handed to scikit-optimize's ``gp_minimize`` as ``x0``/``y0``, followed by
``n_guided`` surrogate-guided calls minimising the RMS loss of eq. 4. Then jblase refines the
best point with L-BFGS-B on gradients taken through the differentiable generator, inside the
grid. The model is resampled (linearly) onto the data's wavelengths, and only the lines near the
data's range are evaluated.

The stages and their settings live in :mod:`jblase.search` (shared with :mod:`jblase.fit`).

The search (random and guided phases) runs the generator with float32 profile arithmetic by
default (``search_dtype``): about 1e-6 in flux, far below any residual a search can tell apart,
and 2-3x faster on CPU. The refinement and every reported loss use the generator's own
``compute_dtype``.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import asdict, dataclass, field

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jblase._checks import check_wavelength
from jblase.generator import Generator, default_batch_size
from jblase.search import (
    RefineSettings,
    SearchSettings,
    guided_phase,
    multistart_phase,
    random_phase,
    refine_in_box,
    search_bounds,
    split_settings,
)

__all__ = ["InferenceResult", "RefineSettings", "SearchSettings", "infer", "rms_loss"]

PARAM_NAMES = ("teff", "logg", "feh")


@dataclass
class InferenceResult:
    """Inferred parameters.

    Attributes:
        teff, logg, feh: final estimate (K, dex, dex): refined if refinement improved the loss.
        loss: RMS residual (normalised flux) at the estimate (in the generator's
            ``compute_dtype`` when refined; otherwise from the search).
        gp: the GP-only estimate, ``{"teff", "logg", "feh", "loss"}`` (loss from the search).
        n_evaluations: generator evaluations in the random + guided search.
        n_gradient_evaluations: loss-and-gradient evaluations in the refinement.
        seconds: wall time per phase (``random``, ``gp``, ``refine``, ``total``).
        bounds: the (3, 2) search box used.
        n_masked_pixels: data pixels left out of the loss because they were not finite.
    """

    teff: float
    logg: float
    feh: float
    loss: float
    gp: dict
    n_evaluations: int
    n_gradient_evaluations: int
    seconds: dict
    bounds: list = field(default_factory=list)
    n_masked_pixels: int = 0

    @property
    def params(self) -> np.ndarray:
        return np.array([self.teff, self.logg, self.feh])

    def to_dict(self) -> dict:
        return asdict(self)


def rms_loss(generator: Generator, wavelength_aa, flux, weight, params):
    """RMS residual (eq. 4) between the generator resampled to ``wavelength_aa`` and ``flux``.

    ``weight`` (n_data,) is 1 for pixels in the loss and 0 otherwise. Jit-friendly.
    """
    model = jnp.interp(wavelength_aa, generator.wavelength, generator(params))
    resid = (model - flux) * weight
    return jnp.sqrt(jnp.sum(resid * resid) / jnp.sum(weight))


# Module-level jitted kernels: data enter as arguments, so every star with the same number of
# pixels (and the same generator shapes) reuses one compilation.
_loss_one = eqx.filter_jit(rms_loss)


def _loss_batch(gen: Generator, wavelength_aa, flux, weight, params, batch_size: int):
    """RMS loss (n,) at params (n, 3): spectra from ``gen.batch``, compared by one kernel."""
    models = gen.batch(params, batch_size)
    return _rms_of_models(gen.wavelength, wavelength_aa, flux, weight, models)


@jax.jit
def _rms_of_models(model_wavelength, wavelength_aa, flux, weight, models):
    models = jax.vmap(lambda m: jnp.interp(wavelength_aa, model_wavelength, m))(models)
    resid = (models - flux) * weight
    return jnp.sqrt(jnp.sum(resid * resid, axis=1) / jnp.sum(weight))


@eqx.filter_jit
def _mse_and_grad_unit(gen: Generator, wavelength_aa, flux, weight, lo, span, unit):
    """MSE and its gradient in unit-box coordinates ``params = lo + unit * span``."""
    return jax.value_and_grad(
        lambda u: rms_loss(gen, wavelength_aa, flux, weight, lo + u * span) ** 2
    )(unit)


def _prepare_data(generator: Generator, wavelength, flux):
    wl = check_wavelength(wavelength)
    fl = np.asarray(flux, dtype=np.float64)
    if fl.shape != wl.shape:
        raise ValueError(f"flux has shape {fl.shape} but wavelength has shape {wl.shape}")
    good = np.isfinite(fl)
    if good.sum() < 10:
        raise ValueError(f"flux has only {good.sum()} finite pixels; cannot infer parameters")
    if not good.all():
        warnings.warn(
            f"{(~good).sum()} non-finite flux pixels are left out of the loss", stacklevel=3
        )
    gen_wl = np.asarray(generator.wavelength)
    lo, hi = wl[good][0], wl[good][-1]
    if lo < gen_wl[0] or hi > gen_wl[-1]:
        raise ValueError(
            f"data wavelengths [{lo:.3f}, {hi:.3f}] A extend beyond the generator's range "
            f"[{gen_wl[0]:.3f}, {gen_wl[-1]:.3f}] A"
        )
    n_bad = int((~good).sum())
    if generator.fitted_range is not None:
        # The clones were fitted only inside this range; beyond it the model lacks lines.
        f_lo, f_hi = generator.fitted_range
        good &= (wl > f_lo) & (wl < f_hi)
        if good.sum() < 10:
            raise ValueError(
                f"only {good.sum()} finite data pixels lie inside the range the clones were "
                f"fitted on, [{f_lo:.3f}, {f_hi:.3f}] A; cannot infer parameters"
            )
    return wl, np.where(good, fl, 1.0), good.astype(np.float64), n_bad


def _restricted_generators(generator: Generator, wl: np.ndarray, search_dtype):
    """(generator restricted to the data's range, its twin in the search's dtype)."""
    gen_wl = np.asarray(generator.wavelength)
    gen = generator.restrict(max(wl[0] - 1.0, gen_wl[0]), min(wl[-1] + 1.0, gen_wl[-1]))
    if search_dtype is None or search_dtype == gen.compute_dtype:
        return gen, gen
    return gen, dataclasses.replace(gen, compute_dtype=search_dtype)


def _random_phase(gen: Generator, data, bounds, settings: SearchSettings):
    batch_size = settings.batch_size or default_batch_size()
    return random_phase(
        lambda x: _loss_batch(gen, *data, jnp.asarray(x), batch_size), bounds, settings
    )


def _guided_phase(gen: Generator, data, bounds, x0, y0, settings: SearchSettings):
    return guided_phase(
        lambda x: _loss_one(gen, *data, jnp.asarray(x, jnp.float64)), bounds, x0, y0, settings
    )


def _unit_mse_and_grad(gen: Generator, data, bounds):
    """(u -> (MSE, gradient) in unit-box coordinates, x -> u)."""
    span = bounds[:, 1] - bounds[:, 0]
    span = np.where(span > 0, span, 1.0)
    lo_j, span_j = jnp.asarray(bounds[:, 0]), jnp.asarray(span)

    def mse_and_grad(u):
        return _mse_and_grad_unit(gen, *data, lo_j, span_j, jnp.asarray(u))

    return mse_and_grad, lambda x: (np.asarray(x, float) - bounds[:, 0]) / span


def _multistart_phase(gen: Generator, data, bounds, x0, y0, settings: SearchSettings):
    """The throughput search (:func:`jblase.search.multistart_phase`) on the search's
    generator: L-BFGS-B from each start, RMS losses."""
    mse_and_grad, to_unit = _unit_mse_and_grad(gen, data, bounds)
    start_refine = RefineSettings(max_iterations=settings.start_iterations)

    def fit_from(x):
        scale = float(mse_and_grad(to_unit(x))[0])
        x_fit, n = refine_in_box(mse_and_grad, x, bounds, start_refine, scale=scale)
        return x_fit, float(np.sqrt(mse_and_grad(to_unit(x_fit))[0])), n + 2

    return multistart_phase(fit_from, bounds, x0, y0, settings)


def _refine(gen: Generator, data, bounds, best, settings: RefineSettings, other_dtype: bool):
    """L-BFGS-B from the search's best point; ``(x, loss, n_evaluations)``, kept only if better."""
    mse_and_grad, to_unit = _unit_mse_and_grad(gen, data, bounds)

    def rms_at(x):
        """RMS loss at x in the generator's own dtype (the refinement's program)."""
        return float(np.sqrt(mse_and_grad(to_unit(x))[0]))

    best_y = rms_at(best.x) if other_dtype else best.loss
    # The MSE is ~1e-5 at a good fit: scale it to ~1 so L-BFGS-B's tolerances bite.
    x, n_grad = refine_in_box(mse_and_grad, best.x, bounds, settings, scale=best_y**2)
    y = rms_at(x)
    if y < best_y:
        return x, y, n_grad
    return best.x, best_y, n_grad


def infer(
    generator: Generator,
    wavelength,
    flux,
    teff_prior: float | None = None,
    teff_window: float = 500.0,
    *,
    search: SearchSettings | None = None,
    refine: RefineSettings | bool | None = None,
    **options,
) -> InferenceResult:
    """Infer (Teff, log g, [Fe/H]) of a normalised spectrum.

    Args:
        generator: the spectral generator; its wavelength range must cover the data.
        wavelength: data wavelengths in A (vacuum, same frame as the grid), strictly increasing.
        flux: continuum-normalised data flux; non-finite pixels are left out of the loss
            (with a warning).
        teff_prior: centre of the Teff search window in K (None: the whole grid).
        teff_window: half-width of the Teff window in K (the paper's +-500 K).
        search: the random and guided phases (:class:`jblase.search.SearchSettings`; the
            paper's 100 random points and 20 guided calls by default).
        refine: the gradient refinement (:class:`jblase.search.RefineSettings`, or a bool).
        **options: fields of either settings object by name (``n_random=40``, ``seed=3``,
            ``refine=False``, ``max_refine_iterations=20``), overriding them.
    """
    t_start = time.perf_counter()
    search, refine = split_settings(search, refine, options)
    wl, fl, weight, n_masked = _prepare_data(generator, wavelength, flux)
    bounds = search_bounds(generator.bounds, teff_prior, teff_window)
    gen, fast = _restricted_generators(generator, wl, search.search_dtype)
    data = tuple(jnp.asarray(a) for a in (wl, fl, weight))

    x0, y0 = _random_phase(fast, data, bounds, search)
    t_random = time.perf_counter()
    if search.method == "gp":
        best = _guided_phase(fast, data, bounds, x0, y0, search)
    else:
        best = _multistart_phase(fast, data, bounds, x0, y0, search)
    t_gp = time.perf_counter()
    gp = dict(zip(PARAM_NAMES, map(float, best.x), strict=True), loss=best.loss)

    final_x, final_y, n_grad = best.x, best.loss, 0
    if refine.enabled:
        final_x, final_y, n_grad = _refine(gen, data, bounds, best, refine, fast is not gen)
    t_end = time.perf_counter()
    return InferenceResult(
        teff=float(final_x[0]),
        logg=float(final_x[1]),
        feh=float(final_x[2]),
        loss=float(final_y),
        gp=gp,
        n_evaluations=best.n_evaluations,
        n_gradient_evaluations=n_grad,
        seconds={
            "random": t_random - t_start,
            "gp": t_gp - t_random,
            "refine": t_end - t_gp,
            "total": t_end - t_start,
        },
        bounds=bounds.tolist(),
        n_masked_pixels=n_masked,
    )
