"""Inference (pipeline step 6): stellar parameters from a normalised spectrum.

The paper's protocol, made fast: ``n_random`` random points inside the bounds are evaluated as
one vmapped batch and handed to scikit-optimize's ``gp_minimize`` as ``x0``/``y0``, followed by
``n_guided`` surrogate-guided calls minimising the RMS loss of eq. 4. Then jblase refines the
best point with L-BFGS-B on gradients taken through the differentiable generator, inside the
grid. The model is resampled (linearly) onto the data's wavelengths, and only the lines near the
data's range are evaluated.

``gp_minimize`` settings: with its defaults (``acq_optimizer="lbfgs"`` from 10,000 points with
five restarts, and a surrogate whose kernel hyperparameters are refitted from three starts at
every call) the surrogate costs seconds per guided call. jblase fits the kernel from one start
(``gp_restarts=0``: the fit is redone at each call anyway, on a growing data set) and maximises
``acq_func="EI"`` by ``acq_optimizer="sampling"`` over ``n_points=2000`` random candidates, a
dense cover of the 3-D box; the gradient refinement then takes care of the last digits. The
surrogate's small matrices are factorised with one BLAS thread (:data:`SURROGATE_BLAS_THREADS`).

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
import scipy.optimize
from threadpoolctl import threadpool_limits

from jblase._checks import check_wavelength
from jblase.generator import Generator, default_batch_size

__all__ = ["InferenceResult", "infer", "rms_loss"]

PARAM_NAMES = ("teff", "logg", "feh")
#: BLAS threads for the surrogate: its linear algebra is on ~120 x 120 matrices, where
#: OpenBLAS's thread start-up costs more than it saves (``benchmarks/inference.py`` reports the
#: surrogate's seconds).
SURROGATE_BLAS_THREADS = 1


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


def _search_bounds(generator: Generator, teff_prior, teff_window) -> np.ndarray:
    bounds = generator.bounds.copy()
    if teff_prior is not None:
        lo, hi = bounds[0]
        if not lo <= teff_prior <= hi:
            raise ValueError(
                f"teff_prior = {teff_prior} K is outside the grid range [{lo}, {hi}] K"
            )
        if not teff_window > 0:
            raise ValueError(f"teff_window must be positive, got {teff_window}")
        bounds[0] = [max(lo, teff_prior - teff_window), min(hi, teff_prior + teff_window)]
    return bounds


def infer(
    generator: Generator,
    wavelength,
    flux,
    teff_prior: float | None = None,
    teff_window: float = 500.0,
    n_random: int = 100,
    n_guided: int = 20,
    refine: bool = True,
    seed: int = 0,
    *,
    batch_size: int | None = None,
    acq_func: str = "EI",
    acq_optimizer: str = "sampling",
    n_points: int = 2000,
    gp_restarts: int = 0,
    max_refine_iterations: int = 50,
    search_dtype: str | None = "float32",
) -> InferenceResult:
    """Infer (Teff, log g, [Fe/H]) of a normalised spectrum.

    Args:
        generator: the spectral generator; its wavelength range must cover the data.
        wavelength: data wavelengths in A (vacuum, same frame as the grid), strictly increasing.
        flux: continuum-normalised data flux; non-finite pixels are left out of the loss
            (with a warning).
        teff_prior: centre of the Teff search window in K (None: the whole grid).
        teff_window: half-width of the Teff window in K (the paper's +-500 K).
        n_random: random points, evaluated as one batch and passed to gp_minimize as x0/y0.
        n_guided: surrogate-guided gp_minimize calls after them.
        refine: run the gradient refinement (L-BFGS-B through the generator).
        seed: seeds the random points and gp_minimize.
        batch_size: spectra per compiled step when evaluating the random points (default
            :func:`jblase.generator.default_batch_size`: 2 on CPU, 256 on accelerators).
        acq_func, acq_optimizer, n_points: passed to ``gp_minimize`` (see module docstring).
        gp_restarts: restarts of the surrogate's kernel-hyperparameter fit at every guided call
            (scikit-optimize's default is 2; each restart costs a full fit).
        max_refine_iterations: L-BFGS-B iteration cap.
        search_dtype: profile arithmetic of the random and guided phases (``"float32"`` or
            ``"float64"``; None: the generator's own). The refinement and the reported losses
            always use the generator's ``compute_dtype``.
    """
    from skopt import gp_minimize
    from skopt.space import Space
    from skopt.utils import cook_estimator

    t_start = time.perf_counter()
    if n_random < 1 or n_guided < 0:
        raise ValueError(f"need n_random >= 1 and n_guided >= 0, got {n_random}, {n_guided}")
    wl, fl, weight, n_masked = _prepare_data(generator, wavelength, flux)
    bounds = _search_bounds(generator, teff_prior, teff_window)
    gen_wl = np.asarray(generator.wavelength)
    gen = generator.restrict(max(wl[0] - 1.0, gen_wl[0]), min(wl[-1] + 1.0, gen_wl[-1]))
    search = gen
    if search_dtype is not None and search_dtype != gen.compute_dtype:
        if search_dtype not in ("float32", "float64"):
            raise ValueError(f"search_dtype must be float32, float64 or None, got {search_dtype!r}")
        search = dataclasses.replace(gen, compute_dtype=search_dtype)
    wl_j, fl_j, w_j = jnp.asarray(wl), jnp.asarray(fl), jnp.asarray(weight)

    rng = np.random.default_rng(seed)
    x0 = rng.uniform(bounds[:, 0], bounds[:, 1], size=(n_random, 3))
    if batch_size is None:
        batch_size = default_batch_size()
    y0 = np.asarray(_loss_batch(search, wl_j, fl_j, w_j, jnp.asarray(x0), batch_size))
    t_random = time.perf_counter()

    def objective(x):
        return float(_loss_one(search, wl_j, fl_j, w_j, jnp.asarray(x, jnp.float64)))

    # A grid axis with one value (or a zero-width window) is held fixed: scikit-optimize
    # cannot search a zero-width dimension.
    free = bounds[:, 1] > bounds[:, 0]

    def full(x_free):
        x = bounds[:, 0].copy()
        x[free] = x_free
        return x

    n_evaluations = n_random
    if n_guided > 0:
        with (
            warnings.catch_warnings(),
            threadpool_limits(limits=SURROGATE_BLAS_THREADS, user_api="blas"),
        ):
            warnings.filterwarnings("ignore", message="The objective has been evaluated")
            dimensions = [tuple(b) for b in bounds[free]]
            surrogate = cook_estimator(
                "GP",
                space=Space(dimensions),
                random_state=seed,
                noise="gaussian",
                n_restarts_optimizer=gp_restarts,
            )
            res = gp_minimize(
                lambda x: objective(full(np.asarray(x, float))),
                dimensions,
                base_estimator=surrogate,
                x0=[list(x) for x in x0[:, free]],
                y0=[float(y) for y in y0],
                n_calls=n_guided,
                n_initial_points=0,
                acq_func=acq_func,
                acq_optimizer=acq_optimizer,
                n_points=n_points,
                random_state=seed,
            )
        best_x, best_y = full(np.asarray(res.x, float)), float(res.fun)
        n_evaluations += n_guided
    else:
        i = int(np.argmin(y0))
        best_x, best_y = x0[i], float(y0[i])
    t_gp = time.perf_counter()
    gp = dict(zip(PARAM_NAMES, map(float, best_x), strict=True), loss=best_y)

    final_x, final_y, n_grad = best_x, best_y, 0
    if refine:
        # Optimise in unit-box coordinates so the three parameters are on the same scale.
        span = bounds[:, 1] - bounds[:, 0]
        span = np.where(span > 0, span, 1.0)
        lo_j, span_j = jnp.asarray(bounds[:, 0]), jnp.asarray(span)

        def mse_and_grad(u):
            return _mse_and_grad_unit(gen, wl_j, fl_j, w_j, lo_j, span_j, jnp.asarray(u))

        def rms_at(x):
            """RMS loss at x in the generator's own dtype (the refinement's program)."""
            return float(np.sqrt(mse_and_grad((x - bounds[:, 0]) / span)[0]))

        if search is not gen:
            final_y = best_y = rms_at(best_x)
        # The MSE is ~1e-5 at a good fit: scale it to ~1 so L-BFGS-B's tolerances bite.
        scale = max(best_y**2, 1e-300)

        def fun(u):
            value, grad = mse_and_grad(u)
            return float(value) / scale, np.asarray(grad, dtype=np.float64) / scale

        opt = scipy.optimize.minimize(
            fun,
            (best_x - bounds[:, 0]) / span,
            jac=True,
            method="L-BFGS-B",
            bounds=[(0.0, 1.0) if f else (0.0, 0.0) for f in free],
            options={"maxiter": max_refine_iterations, "gtol": 1e-9, "ftol": 1e-12},
        )
        n_grad = int(opt.nfev)
        x = bounds[:, 0] + np.clip(opt.x, 0.0, 1.0) * span
        y = rms_at(x)
        if y < best_y:
            final_x, final_y = x, y
    t_end = time.perf_counter()
    return InferenceResult(
        teff=float(final_x[0]),
        logg=float(final_x[1]),
        feh=float(final_x[2]),
        loss=float(final_y),
        gp=gp,
        n_evaluations=n_evaluations,
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
