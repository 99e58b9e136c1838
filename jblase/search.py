"""The search stages shared by :func:`jblase.inference.infer` and :func:`jblase.fit.fit`.

The paper's protocol over a box of parameters: a **random phase** (``n_random`` points drawn
uniformly inside the box, evaluated as one batch), a **guided phase** (scikit-optimize's
``gp_minimize`` seeded with those points as ``x0``/``y0``, ``n_guided`` surrogate-guided calls),
and a **box refinement** (L-BFGS-B on gradients, in unit-box coordinates so every parameter has
the same scale). Each stage takes plain functions of a parameter vector, so the same code serves
a normalised noise-free spectrum (an RMS loss) and an observed one (a chi-square with nuisance
parameters profiled out).

``gp_minimize`` settings: with its defaults (``acq_optimizer="lbfgs"`` from 10,000 points with
five restarts, and a surrogate whose kernel hyperparameters are refitted from three starts at
every call) the surrogate costs seconds per guided call. jblase fits the kernel from one start
(``gp_restarts=0``: the fit is redone at each call anyway, on a growing data set) and maximises
``acq_func="EI"`` by ``acq_optimizer="sampling"`` over ``n_points=2000`` random candidates, a
dense cover of a 3-D box; the gradient refinement then takes care of the last digits. The
surrogate's small matrices are factorised with one BLAS thread (:data:`SURROGATE_BLAS_THREADS`).

A **throughput search** (``method="multistart"``) replaces the guided phase for surveys: from
the ``n_starts`` best random points that lie apart from each other (at least
``start_separation`` of the box in unit coordinates), one gradient fit each (L-BFGS-B on the
search's float32 program), keeping the best. It spends no time on a surrogate;
``benchmarks/search_paths.py`` compares its accuracy and speed with the GP protocol on the
same spectra. The GP protocol stays the default.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.optimize
from threadpoolctl import threadpool_limits

__all__ = [
    "RefineSettings",
    "SearchResult",
    "SearchSettings",
    "SEARCH_METHODS",
    "distinct_starts",
    "guided_phase",
    "multistart_phase",
    "random_phase",
    "refine_in_box",
    "search_bounds",
    "split_settings",
]

#: BLAS threads for the surrogate: its linear algebra is on ~120 x 120 matrices, where
#: OpenBLAS's thread start-up costs more than it saves (``benchmarks/inference.py`` reports the
#: surrogate's seconds).
SURROGATE_BLAS_THREADS = 1


#: Search methods after the random phase: the paper's GP-guided calls, or gradient fits from
#: the best random points (the throughput search).
SEARCH_METHODS = ("gp", "multistart")


@dataclass(frozen=True)
class SearchSettings:
    """The random and guided phases (the paper's protocol: 100 random points, 20 guided calls).

    Attributes:
        n_random: random points, evaluated as one batch and passed to gp_minimize as x0/y0.
        n_guided: surrogate-guided gp_minimize calls after them (0: keep the best random point).
        seed: seeds the random points and gp_minimize.
        batch_size: spectra per compiled step when evaluating the random points (None:
            :func:`jblase.generator.default_batch_size`: 2 on CPU, 256 on accelerators).
        acq_func, acq_optimizer, n_points: passed to ``gp_minimize`` (see module docstring).
        gp_restarts: restarts of the surrogate's kernel-hyperparameter fit at every guided call
            (scikit-optimize's default is 2; each restart costs a full fit).
        search_dtype: profile arithmetic of the two phases (``"float32"`` or ``"float64"``;
            None: the generator's own). Refinements and reported losses use the generator's
            ``compute_dtype``.
        method: ``"gp"`` (the paper's guided phase) or ``"multistart"`` (gradient fits from
            the best random points; ``n_guided`` is then unused).
        n_starts: gradient fits of the multistart search.
        start_separation: its starts lie at least this far apart in unit-box coordinates
            (Euclidean; fewer starts where the random points do not allow as many).
        start_iterations: L-BFGS-B iterations of each multistart fit.
    """

    n_random: int = 100
    n_guided: int = 20
    seed: int = 0
    batch_size: int | None = None
    acq_func: str = "EI"
    acq_optimizer: str = "sampling"
    n_points: int = 2000
    gp_restarts: int = 0
    search_dtype: str | None = "float32"
    method: str = "gp"
    n_starts: int = 2
    start_separation: float = 0.15
    start_iterations: int = 15

    def __post_init__(self):
        if self.n_random < 1 or self.n_guided < 0:
            raise ValueError(
                f"need n_random >= 1 and n_guided >= 0, got {self.n_random}, {self.n_guided}"
            )
        if self.method not in SEARCH_METHODS:
            raise ValueError(f"method must be one of {SEARCH_METHODS}, got {self.method!r}")
        if self.n_starts < 1 or self.start_iterations < 1 or self.start_separation < 0:
            raise ValueError(
                "need n_starts >= 1, start_iterations >= 1 and start_separation >= 0, got "
                f"{self.n_starts}, {self.start_iterations}, {self.start_separation}"
            )
        if self.search_dtype not in (None, "float32", "float64"):
            raise ValueError(
                f"search_dtype must be float32, float64 or None, got {self.search_dtype!r}"
            )


@dataclass(frozen=True)
class RefineSettings:
    """The gradient refinement after the search.

    Attributes:
        enabled: run it (False: report the search's best point).
        max_iterations: iteration cap of the optimiser.
    """

    enabled: bool = True
    max_iterations: int = 50

    def __post_init__(self):
        if self.max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1, got {self.max_iterations}")


@dataclass(frozen=True)
class SearchResult:
    """Best point of the random and guided phases.

    Attributes:
        x: (n_params,) best parameters; loss: the loss there; n_evaluations: loss evaluations.
    """

    x: np.ndarray
    loss: float
    n_evaluations: int


def split_settings(
    search: SearchSettings | None, refine: RefineSettings | bool | None, overrides: dict
) -> tuple[SearchSettings, RefineSettings]:
    """Settings objects with keyword overrides applied by field name.

    ``refine`` may be a bool (``enabled``); an override ``refine=False`` and
    ``max_refine_iterations=N`` are accepted for the older keyword interface. An unknown
    keyword is a ``TypeError`` naming it.
    """
    search = search or SearchSettings()
    if isinstance(refine, bool):
        refine = RefineSettings(enabled=refine)
    refine = refine or RefineSettings()
    overrides = dict(overrides)
    refine_kw = {}
    if "refine" in overrides:
        refine_kw["enabled"] = bool(overrides.pop("refine"))
    if "max_refine_iterations" in overrides:
        refine_kw["max_iterations"] = int(overrides.pop("max_refine_iterations"))
    names = {f.name for f in dataclasses.fields(SearchSettings)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"unknown search option(s) {unknown}; known: {sorted(names)}")
    return dataclasses.replace(search, **overrides), dataclasses.replace(refine, **refine_kw)


def search_bounds(grid_bounds, teff_prior: float | None, teff_window: float) -> np.ndarray:
    """The (3, 2) search box: the grid's ``(teff, logg, feh)`` bounds with Teff narrowed to
    ``teff_prior +- teff_window`` K (the paper's prior; None: the whole grid)."""
    bounds = np.array(grid_bounds, dtype=np.float64)
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


def random_phase(
    batch_loss: Callable[[np.ndarray], np.ndarray], bounds: np.ndarray, settings: SearchSettings
) -> tuple[np.ndarray, np.ndarray]:
    """``(x0 (n_random, d), y0 (n_random,))``: uniform points in ``bounds`` (d, 2) and losses.

    ``batch_loss`` maps (n, d) parameters to (n,) losses in one call.
    """
    rng = np.random.default_rng(settings.seed)
    x0 = rng.uniform(bounds[:, 0], bounds[:, 1], size=(settings.n_random, len(bounds)))
    y0 = np.asarray(batch_loss(x0), dtype=np.float64)
    return x0, y0


def guided_phase(
    loss: Callable[[np.ndarray], float],
    bounds: np.ndarray,
    x0: np.ndarray,
    y0: np.ndarray,
    settings: SearchSettings,
) -> SearchResult:
    """gp_minimize seeded with the random phase; an axis of zero width is held fixed.

    Non-finite random-phase losses are replaced by the worst finite one (the surrogate cannot
    take them).
    """
    y0 = np.asarray(y0, dtype=np.float64)
    finite = np.isfinite(y0)
    if not finite.any():
        raise ValueError("every random-phase loss is non-finite; the model cannot fit the data")
    y0 = np.where(finite, y0, y0[finite].max())
    i = int(np.argmin(y0))
    if settings.n_guided == 0:
        return SearchResult(x0[i].copy(), float(y0[i]), len(y0))

    from skopt import gp_minimize
    from skopt.space import Space
    from skopt.utils import cook_estimator

    free = bounds[:, 1] > bounds[:, 0]

    def full(x_free):
        x = bounds[:, 0].astype(np.float64).copy()
        x[free] = x_free
        return x

    with (
        warnings.catch_warnings(),
        threadpool_limits(limits=SURROGATE_BLAS_THREADS, user_api="blas"),
    ):
        warnings.filterwarnings("ignore", message="The objective has been evaluated")
        dimensions = [tuple(b) for b in bounds[free]]
        surrogate = cook_estimator(
            "GP",
            space=Space(dimensions),
            random_state=settings.seed,
            noise="gaussian",
            n_restarts_optimizer=settings.gp_restarts,
        )
        res = gp_minimize(
            lambda x: float(loss(full(np.asarray(x, float)))),
            dimensions,
            base_estimator=surrogate,
            x0=[list(x) for x in x0[:, free]],
            y0=[float(y) for y in y0],
            n_calls=settings.n_guided,
            n_initial_points=0,
            acq_func=settings.acq_func,
            acq_optimizer=settings.acq_optimizer,
            n_points=settings.n_points,
            random_state=settings.seed,
        )
    return SearchResult(full(np.asarray(res.x, float)), float(res.fun), len(y0) + settings.n_guided)


def refine_in_box(
    value_and_grad_unit: Callable[[np.ndarray], tuple[float, np.ndarray]],
    x_start: np.ndarray,
    bounds: np.ndarray,
    settings: RefineSettings,
    scale: float = 1.0,
) -> tuple[np.ndarray, int]:
    """L-BFGS-B in unit-box coordinates ``x = lo + u * span``; returns ``(x, n_evaluations)``.

    ``value_and_grad_unit(u)`` gives the objective and its gradient with respect to ``u``.
    ``scale`` divides both, so that the optimiser's tolerances bite (an MSE near 1e-5 scaled to
    about 1). Axes of zero width stay fixed.
    """
    span = bounds[:, 1] - bounds[:, 0]
    free = span > 0
    span = np.where(free, span, 1.0)
    scale = max(float(scale), 1e-300)

    def fun(u):
        value, grad = value_and_grad_unit(u)
        return float(value) / scale, np.asarray(grad, dtype=np.float64) / scale

    opt = scipy.optimize.minimize(
        fun,
        (np.asarray(x_start, float) - bounds[:, 0]) / span,
        jac=True,
        method="L-BFGS-B",
        bounds=[(0.0, 1.0) if f else (0.0, 0.0) for f in free],
        options={"maxiter": settings.max_iterations, "gtol": 1e-9, "ftol": 1e-12},
    )
    return bounds[:, 0] + np.clip(opt.x, 0.0, 1.0) * span, int(opt.nfev)


def distinct_starts(x0: np.ndarray, y0: np.ndarray, bounds: np.ndarray, settings) -> np.ndarray:
    """Indices of up to ``settings.n_starts`` random points, best loss first, each at least
    ``settings.start_separation`` (unit-box coordinates) from those taken before it;
    non-finite losses are never taken."""
    y0 = np.asarray(y0, dtype=np.float64)
    span = bounds[:, 1] - bounds[:, 0]
    unit = (np.asarray(x0, float) - bounds[:, 0]) / np.where(span > 0, span, 1.0)
    taken: list[int] = []
    for i in np.argsort(np.where(np.isfinite(y0), y0, np.inf), kind="stable"):
        if not np.isfinite(y0[i]):
            break
        if all(np.linalg.norm(unit[i] - unit[j]) >= settings.start_separation for j in taken):
            taken.append(int(i))
            if len(taken) == settings.n_starts:
                break
    if not taken:
        raise ValueError("every random-phase loss is non-finite; the model cannot fit the data")
    return np.asarray(taken)


def multistart_phase(
    fit_from: Callable[[np.ndarray], tuple[np.ndarray, float, int]],
    bounds: np.ndarray,
    x0: np.ndarray,
    y0: np.ndarray,
    settings: SearchSettings,
) -> SearchResult:
    """The throughput search: ``fit_from(x)`` -> ``(x_fit, loss, n_evaluations)`` from each of
    :func:`distinct_starts`; the best fit (or the best random point, if no fit beats it)."""
    starts = distinct_starts(x0, y0, bounds, settings)
    best_x, best_y = np.asarray(x0[starts[0]], float), float(y0[starts[0]])
    n = len(y0)
    for i in starts:
        x, y, n_fit = fit_from(np.asarray(x0[i], float))
        n += n_fit
        if np.isfinite(y) and y < best_y:
            best_x, best_y = np.asarray(x, float), float(y)
    return SearchResult(best_x, best_y, n)
