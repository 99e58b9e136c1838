"""Fit an observed spectrum (pipeline step 7): stellar and extrinsic parameters, with errors.

The model of every data pixel is ``continuum(x) * observe(model_flux(teff, logg, feh))``: the
generator's rest-frame spectrum (or one fixed line list's) goes through the observation model
(:mod:`jblase.observe`: rotation, instrument, Doppler shift, pixel integration) and a Chebyshev
continuum per order that is profiled out in closed form (:mod:`jblase.likelihood`). The fit
runs in named stages:

1. **data** (:func:`prepare_data`): orders, uncertainties, masks (non-finite pixels, telluric
   intervals, pixels outside the range the clones were fitted on) as zero weights;
2. **rv scan** (:func:`_rv_scan`): the chi-square on a grid of radial velocities at a starting
   stellar point: a cross-correlation with the continuum profiled, whose minimum starts RV;
3. **nuisance** (:func:`_minimise`): RV, v sin i (and R) by L-BFGS at that stellar point
   (the generator evaluated once);
4. **search** (:mod:`jblase.search`): the paper's random + GP-guided search over (Teff, log g,
   [Fe/H]) with the nuisance parameters held at their values;
5. **joint refinement** (:func:`_minimise`): every free parameter together, by L-BFGS on the
   gradient of one jitted program, in unconstrained coordinates (grid box -> logistic, v sin i ->
   softplus, R -> log);
6. **uncertainties** (:func:`laplace`): the Hessian of the negative log-likelihood by autodiff
   at the optimum, checked positive definite, inverted, and carried to physical units by the
   transform's Jacobian; standard errors and correlations;
7. **posterior** (optional, :func:`_sample_posterior`): the posterior's mode in the
   unconstrained coordinates (:func:`_posterior_mode`: flat priors on the physical parameters
   within the model's ranges, the transform's Jacobian included), then NUTS from it
   (:mod:`jblase.posterior`).

With a single line list instead of a generator the stellar parameters are fixed and stages 4
and the stellar part of 5 are skipped. Optional sigma clipping (``robust``) repeats stage 5
after zeroing the weights of outlying pixels.

Precision: float64 throughout (chi-squares of thousands of pixels, wavelength shifts); the
generator runs in its own ``compute_dtype`` (the search in ``SearchSettings.search_dtype``).
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from jblase.generator import Generator, default_batch_size
from jblase.likelihood import (
    chi_square,
    continuum_logdet,
    profiled_residuals,
    sigma_clip_weight,
)
from jblase.observe import (
    ObservationModel,
    ObservationParameters,
    ObservationSettings,
    chebyshev_continuum,
    log_lambda_grid,
)
from jblase.search import (
    RefineSettings,
    SearchSettings,
    guided_phase,
    multistart_phase,
    random_phase,
    search_bounds,
    split_settings,
)
from jblase.spectra import ObservedSpectrum

__all__ = [
    "FitResult",
    "FitSettings",
    "PARAMETERS",
    "fit",
    "laplace",
    "line_list_model",
    "model_flux_from_lines",
    "prepare_data",
    "read_mask_file",
    "with_floor",
]

#: Every parameter a fit may report, in this order.
PARAMETERS = ("teff", "logg", "feh", "rv_kms", "vsini_kms", "resolving_power")
_STELLAR = PARAMETERS[:3]
#: R is fitted as ln(R / _R_UNIT) and v sin i as softplus(u) * _VSINI_UNIT.
_R_UNIT = 1e4
_VSINI_UNIT = 1.0
#: Hessian condition number above which the uncertainties come with a warning.
ILL_CONDITIONED = 1e12


class FitWarning(UserWarning):
    """Something about a fit a user should know (masked data, ill-conditioning, edges)."""


@dataclass(frozen=True)
class FitSettings:
    """What a :func:`fit` fits and how (every option of ``jblase fit``).

    Attributes:
        continuum_degree: degree of each order's Chebyshev continuum (profiled out).
        resolving_power: instrumental R: held fixed at this value unless ``fit_resolution``;
            None: fitted, starting from :attr:`resolving_power_start`.
        fit_resolution: fit R (starting from ``resolving_power`` when given).
        resolving_power_start: R's starting value when ``resolving_power`` is None.
        vsini_kms: v sin i's starting value (km/s), or its fixed value when not ``fit_vsini``.
        fit_vsini: fit v sin i.
        limb_darkening: linear limb-darkening coefficient of the rotation kernel (fixed).
        rv_kms: RV's starting value (km/s, barycentric); None: from the cross-correlation scan.
        rv_range_kms, rv_step_kms: the scan's half-range and step (km/s).
        berv_kms: barycentric correction (km/s, astropy's sign convention; see
            :mod:`jblase.observe`), or ``"header"``: recorded in or computed from the
            spectrum's header (:func:`header_berv`). The default 0 is right for data already
            on barycentric wavelengths (many reduced products, e.g. the HPF order in
            ``../shared/data``); the RV is then relative to the data's frame.
        teff_prior, teff_window: centre and half-width (K) of the Teff search box (None: the
            whole grid).
        robust: sigma-clip outlying pixels (|residual| > ``clip_sigma`` uncertainties) and
            refit, up to ``clip_iterations`` times.
        uncertainties: compute Laplace uncertainties.
        hessian: how (:func:`_hessian`): ``"autodiff"`` (``jax.hessian``, exact, one more
            compiled program) or ``"differences"`` (central differences of the gradient).
        line_list_resolution: resolving power of the ln-uniform model grid a single line list
            is synthesised on.
        max_vsini_kms, min_resolving_power, max_velocity_kms: limits of the observation model's
            static kernels and margins (:class:`jblase.observe.ObservationSettings`).
        systematic_errors: a per-parameter systematic error floor (physical units, e.g.
            ``{"teff": 60.0, "logg": 0.1, "feh": 0.03}``; names from :data:`PARAMETERS`),
            added in quadrature to the Laplace error of each fitted parameter it names:
            reported error = sqrt(stat^2 + floor^2) (:func:`with_floor`). It stands for the
            model's own error, chiefly the generator's interpolation error between grid
            points, which the Laplace errors (computed as if the model were exact) leave out
            and which does not fall with S/N; it is not pixel noise and does not change the
            fit, only the reported errors. Calibrate it on injections independent of the
            data it is applied to (:func:`jblase.calibrate.calibrate_floors`,
            ``benchmarks/injection.py --calibrate``). None (default): Laplace errors only.
    """

    continuum_degree: int = 2
    resolving_power: float | None = None
    fit_resolution: bool = False
    resolving_power_start: float = 50_000.0
    vsini_kms: float = 3.0
    fit_vsini: bool = True
    limb_darkening: float = 0.6
    rv_kms: float | None = None
    rv_range_kms: float = 300.0
    rv_step_kms: float = 1.0
    berv_kms: float | str = 0.0
    teff_prior: float | None = None
    teff_window: float = 500.0
    robust: bool = False
    clip_sigma: float = 5.0
    clip_iterations: int = 3
    uncertainties: bool = True
    hessian: str = "autodiff"
    line_list_resolution: float = 500_000.0
    max_vsini_kms: float = 100.0
    min_resolving_power: float = 15_000.0
    max_velocity_kms: float = 400.0
    # Left out of the hash (a dict is not hashable); equality still compares it.
    systematic_errors: Mapping[str, float] | None = field(default=None, hash=False)

    def __post_init__(self):
        object.__setattr__(self, "systematic_errors", _check_floors(self.systematic_errors))
        if self.continuum_degree < 0:
            raise ValueError(f"continuum_degree must be >= 0, got {self.continuum_degree}")
        if self.resolving_power is not None and not self.resolving_power > 0:
            raise ValueError(f"resolving_power must be > 0, got {self.resolving_power}")
        if not 0 <= self.vsini_kms <= self.max_vsini_kms:
            raise ValueError(
                f"vsini_kms must lie in [0, max_vsini_kms={self.max_vsini_kms}], "
                f"got {self.vsini_kms}"
            )
        if not 0 <= self.limb_darkening <= 1:
            raise ValueError(f"limb_darkening must lie in [0, 1], got {self.limb_darkening}")
        if not (self.rv_step_kms > 0 and self.rv_range_kms > 0):
            raise ValueError("rv_step_kms and rv_range_kms must be > 0")
        if isinstance(self.berv_kms, str) and self.berv_kms != "header":
            raise ValueError(f"berv_kms must be a number (km/s) or 'header', got {self.berv_kms!r}")
        if self.hessian not in ("autodiff", "differences"):
            raise ValueError(f"hessian must be 'autodiff' or 'differences', got {self.hessian!r}")
        if not self.clip_sigma > 0:
            raise ValueError(f"clip_sigma must be > 0, got {self.clip_sigma}")

    def systematic_error(self, name: str) -> float:
        """The systematic floor of parameter ``name`` (0 where none is set)."""
        return float((self.systematic_errors or {}).get(name, 0.0))

    @property
    def fits_resolution(self) -> bool:
        return self.fit_resolution or self.resolving_power is None

    @property
    def resolution_start(self) -> float:
        return self.resolving_power or self.resolving_power_start

    def observation(self) -> ObservationSettings:
        return ObservationSettings(
            max_vsini_kms=self.max_vsini_kms,
            min_resolving_power=self.min_resolving_power,
            max_velocity_kms=self.max_velocity_kms,
        )


def _check_floors(floors) -> dict[str, float] | None:
    """``systematic_errors`` as a plain dict in :data:`PARAMETERS` order, or a clear error."""
    if floors is None:
        return None
    if not isinstance(floors, Mapping):
        raise TypeError(
            f"systematic_errors must be a mapping of parameter name -> error, got "
            f"{type(floors).__name__}"
        )
    unknown = [k for k in floors if k not in PARAMETERS]
    if unknown:
        raise ValueError(
            f"systematic_errors: unknown parameter(s) {', '.join(map(repr, unknown))}; "
            f"expected names among {', '.join(PARAMETERS)}"
        )
    out = {}
    for name in PARAMETERS:
        if name not in floors:
            continue
        try:
            value = float(floors[name])
        except (TypeError, ValueError):
            raise ValueError(
                f"systematic_errors[{name!r}] must be a number, got {floors[name]!r}"
            ) from None
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(
                f"systematic_errors[{name!r}] must be finite and >= 0, got {floors[name]!r}"
            )
        out[name] = value
    return out


def with_floor(stat, floor):
    """The reported error of a parameter: its statistical (Laplace) error ``stat`` and its
    systematic floor ``floor`` added in quadrature, ``sqrt(stat^2 + floor^2)``.

    A NaN ``stat`` (no uncertainty computed) stays NaN: a floor alone is not an uncertainty.
    Works on floats and on NumPy arrays (broadcast).
    """
    stat = np.asarray(stat, dtype=float)
    out = np.hypot(stat, np.asarray(floor, dtype=float))
    out = np.where(np.isnan(stat), np.nan, out)
    return float(out) if out.ndim == 0 else out


@dataclass
class FitResult:
    """A fit's answer.

    Attributes:
        values: every parameter in :data:`PARAMETERS` (fixed ones at their fixed value).
        errors: the reported 1-sigma errors of the fitted parameters (NaN where not
            computed): the Laplace errors, with the settings' systematic floor added in
            quadrature where one is set (:attr:`FitSettings.systematic_errors`).
        fitted: the names of the fitted parameters, in the covariance's order.
        covariance, correlation: (n_fitted, n_fitted) in physical units: the Laplace
            (statistical) ones; the systematic floor is not in them.
        chi2, chi2_reduced, n_pixels: chi-square at the optimum, per degree of freedom, and
            the pixels in it.
        berv_kms, berv_source: the barycentric correction used and where it came from.
        rv_scan_kms: RV at the scan's minimum; gp: the search's best point (or None).
        continuum: (n_orders, degree + 1) profiled Chebyshev coefficients at the optimum.
        model: per order, the model flux at every data pixel (continuum included; NaN where
            the order has no pixel); weight: the final 0/1 weights.
        n_clipped: pixels removed by sigma clipping.
        uncertainty_estimated: the data had no uncertainties: they were set to the residual
            scatter (chi2_reduced is then 1 by construction).
        seconds: wall time per stage.
        errors_stat: the Laplace (statistical) errors alone (None: the same as ``errors``).
        systematic_errors: the floor used (:attr:`FitSettings.systematic_errors`), or None.
        posterior: with ``fit(..., posterior=PosteriorSettings())``: per fitted parameter its
            posterior ``median``, ``p16`` and ``p84``, and the sampler's ``rhat``, ``ess``
            (per parameter), ``divergences``, ``acceptance``, ``chains`` and ``draws``; or None.
        posterior_draws: (chains, draws, n_fitted) the NUTS draws in physical units, in
            :attr:`fitted` order; or None.
    """

    values: dict
    errors: dict
    fitted: tuple
    covariance: np.ndarray
    correlation: np.ndarray
    chi2: float
    chi2_reduced: float
    n_pixels: int
    berv_kms: float
    berv_source: str
    rv_scan_kms: float
    gp: dict | None
    continuum: np.ndarray
    model: np.ndarray
    weight: np.ndarray
    n_clipped: int = 0
    uncertainty_estimated: bool = False
    seconds: dict = field(default_factory=dict)
    errors_stat: dict | None = None
    systematic_errors: dict | None = None
    posterior: dict | None = None
    posterior_draws: np.ndarray | None = None

    def to_json(self) -> dict:
        """The object ``jblase fit --json`` prints: each parameter with an ``_err`` twin.

        With a systematic floor, ``_err`` is the reported (floored) error and each parameter
        also has an ``_err_stat`` twin (the Laplace error alone), and ``systematic_errors``
        holds the floor used.
        """
        out: dict = {}
        floored = self.systematic_errors is not None
        stat = self.errors if self.errors_stat is None else self.errors_stat
        for name in PARAMETERS:
            if name in _STELLAR and name not in self.fitted:
                continue
            out[name] = float(self.values[name])
            out[f"{name}_err"] = float(self.errors.get(name, float("nan")))
            if floored:
                out[f"{name}_err_stat"] = float(stat.get(name, float("nan")))
        out.update(
            chi2_reduced=float(self.chi2_reduced),
            n_pixels=int(self.n_pixels),
            seconds=float(self.seconds.get("total", float("nan"))),
            berv_kms=float(self.berv_kms),
            berv_source=self.berv_source,
            rv_scan_kms=float(self.rv_scan_kms),
            fitted=list(self.fitted),
            correlation=np.asarray(self.correlation).tolist(),
            n_clipped=int(self.n_clipped),
            uncertainty_estimated=bool(self.uncertainty_estimated),
        )
        if floored:
            out["systematic_errors"] = dict(self.systematic_errors)
        if self.posterior is not None:
            for name in self.fitted:
                for q in ("median", "p16", "p84"):
                    out[f"{name}_{q}"] = float(self.posterior[q][name])
            out["posterior"] = {k: self.posterior[k] for k in POSTERIOR_SUMMARY}
        if self.gp is not None:
            out["gp"] = self.gp
        return out


#: The sampler's summary in ``to_json()["posterior"]`` (per-parameter dicts, then scalars).
POSTERIOR_SUMMARY = (
    "rhat",
    "ess",
    "divergences",
    "acceptance",
    "integration_steps",
    "adaptation",
    "chains",
    "draws",
)


# --------------------------------------------------------------------------- stage 1: data


@dataclass(frozen=True)
class FitData:
    """The data of a fit on the observation model's padded (order, pixel) layout.

    Attributes:
        observation: the :class:`ObservationModel` planned for these pixels.
        flux, inv_sigma, weight: (n_orders, n_max) float64; zero weight on masked and padded
            pixels (whose flux is set to 0 so that nothing non-finite enters a sum).
        basis: (n_orders, n_max, degree + 1) Chebyshev basis of the continuum.
        orders: the order labels; uncertainty_estimated: see :class:`FitResult`.
    """

    observation: ObservationModel
    flux: np.ndarray
    inv_sigma: np.ndarray
    weight: np.ndarray
    basis: np.ndarray
    orders: tuple
    uncertainty_estimated: bool


def read_mask_file(path: str | Path) -> np.ndarray:
    """Wavelength intervals to leave out (telluric bands, bad columns): (n, 2) in A.

    A text file of ``lo hi`` pairs (A, the data's frame), one per line, whitespace or comma
    separated; ``#`` starts a comment.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask file not found: {path}")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].replace(",", " ").strip()
        if not line:
            continue
        parts = line.split()
        try:
            lo, hi = (float(p) for p in parts)
        except ValueError:
            raise ValueError(
                f"{path}:{n}: expected two wavelengths 'lo hi', got {line!r}"
            ) from None
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise ValueError(f"{path}:{n}: need finite lo < hi, got {lo}, {hi}")
        rows.append((lo, hi))
    return np.asarray(rows, dtype=np.float64).reshape(-1, 2)


def _continuum_basis(observation: ObservationModel, degree: int) -> np.ndarray:
    eye = jnp.eye(degree + 1)
    per_order = jax.vmap(
        lambda centre, span: jax.vmap(lambda c: chebyshev_continuum(centre, c, span))(eye).T
    )
    return np.asarray(per_order(observation.pixel_centre, observation.order_range))


def _check_uncertainty(unc: np.ndarray, valid: np.ndarray, orders) -> None:
    bad = valid & ~(np.isfinite(unc) & (unc > 0))
    if bad.any():
        rows = {int(orders[i]): int(n) for i, n in enumerate(bad.sum(axis=1)) if n}
        raise ValueError(
            f"uncertainties must be finite and > 0 on every valid pixel; bad pixels per order: "
            f"{rows}"
        )


def prepare_data(
    spectrum: ObservedSpectrum,
    model_wavelength_aa,
    settings: FitSettings,
    *,
    fitted_range: tuple[float, float] | None = None,
    mask_intervals: np.ndarray | None = None,
) -> FitData:
    """Stage 1: the padded data arrays and the observation model of ``spectrum``'s orders.

    Pixels of finite wavelength make each order's pixel edges; pixels that are not ``valid``,
    fall in ``mask_intervals`` (observed frame, A) or outside ``fitted_range`` (rest frame, A,
    where the clones were fitted) get zero weight. An order left with no pixel is an error
    naming it; data beyond the model's wavelengths (for the velocities and kernels the settings
    allow) is an error from :meth:`ObservationModel.build`.
    """
    wl_all = np.asarray(spectrum.wavelength, dtype=np.float64)
    has_wl = np.isfinite(wl_all)
    valid = np.asarray(spectrum.valid, bool) & has_wl
    if spectrum.uncertainty is not None:
        _check_uncertainty(np.asarray(spectrum.uncertainty, float), valid, spectrum.orders)
    keep_rows, wl_rows = [], []
    for i in range(spectrum.n_orders):
        keep = np.flatnonzero(has_wl[i])
        keep_rows.append(keep)
        wl_rows.append(wl_all[i, keep])
    observation = ObservationModel.build(
        model_wavelength_aa, wl_rows, settings=settings.observation()
    )
    n_orders, n_max = observation.mask.shape
    flux = np.zeros((n_orders, n_max))
    inv_sigma = np.ones((n_orders, n_max))
    weight = np.zeros((n_orders, n_max))
    for i, keep in enumerate(keep_rows):
        n = keep.size
        w = valid[i, keep].astype(float)
        wl = wl_rows[i]
        if mask_intervals is not None and len(mask_intervals):
            inside = (wl[:, None] >= mask_intervals[:, 0]) & (wl[:, None] <= mask_intervals[:, 1])
            w[inside.any(axis=1)] = 0.0
        if fitted_range is not None:
            # Rest frame: the shift is at most max_velocity; be generous by that margin only
            # inside, so a pixel kept is one whose model lines exist.
            margin = wl * settings.max_velocity_kms / 299_792.458
            w[(wl - margin < fitted_range[0]) | (wl + margin > fitted_range[1])] = 0.0
        if not w.any():
            where = (
                ""
                if fitted_range is None
                else (
                    f" or within {settings.max_velocity_kms} km/s of the edges of the range the "
                    f"clones were fitted on, {fitted_range[0]:.2f}-{fitted_range[1]:.2f} A"
                )
            )
            raise ValueError(
                f"order {spectrum.orders[i]} has no valid pixel left to fit (all are non-finite, "
                f"masked{where})"
            )
        f = np.asarray(spectrum.flux[i, keep], float)
        flux[i, :n] = np.where(w > 0, f, 0.0)
        if spectrum.uncertainty is not None:
            s = np.asarray(spectrum.uncertainty[i, keep], float)
            inv_sigma[i, :n] = np.where(w > 0, 1.0 / np.where(w > 0, s, 1.0), 1.0)
        weight[i, :n] = w
    return FitData(
        observation=observation,
        flux=flux,
        inv_sigma=inv_sigma,
        weight=weight,
        basis=_continuum_basis(observation, settings.continuum_degree),
        orders=tuple(spectrum.orders),
        uncertainty_estimated=spectrum.uncertainty is None,
    )


# --------------------------------------------------------------------------- the problem


class _Layout(eqx.Module):
    """Which parameters are free and the stellar box (static), the fixed values (traced)."""

    base: jax.Array  # (6,) every parameter's value; the free ones are overridden
    box: jax.Array  # (3, 2) the stellar search box (lo, hi) of teff, logg, feh
    free: tuple = eqx.field(static=True)

    def to_physical(self, u) -> dict:
        """Unconstrained vector (n_free,) -> every parameter (jnp scalars)."""
        out = {k: self.base[i] for i, k in enumerate(PARAMETERS)}
        for i, name in enumerate(self.free):
            out[name] = _forward(name, u[i], self.box)
        return out

    def to_unconstrained(self, values: dict) -> np.ndarray:
        box = np.asarray(self.box)
        return np.array([_inverse(n, float(values[n]), box) for n in self.free])


def _layout(values: dict, free, box) -> _Layout:
    base = jnp.asarray([float(values[k]) for k in PARAMETERS], dtype=float)
    return _Layout(base=base, box=jnp.asarray(box, dtype=float), free=tuple(free))


def _forward(name, u, box):
    if name in _STELLAR:
        lo, hi = box[_STELLAR.index(name)]
        return lo + (hi - lo) * jax.nn.sigmoid(u)
    if name == "vsini_kms":
        return _VSINI_UNIT * jax.nn.softplus(u)
    if name == "resolving_power":
        return _R_UNIT * jnp.exp(u)
    return u  # rv_kms


def _inverse(name, x, box) -> float:
    if name in _STELLAR:
        lo, hi = box[_STELLAR.index(name)]
        p = np.clip((x - lo) / (hi - lo), 1e-9, 1 - 1e-9)
        return float(np.log(p / (1 - p)))
    if name == "vsini_kms":
        y = max(x / _VSINI_UNIT, 1e-9)
        return float(y + np.log(-np.expm1(-y)))  # softplus^-1
    if name == "resolving_power":
        return float(np.log(x / _R_UNIT))
    return float(x)


class _Problem(eqx.Module):
    """Everything the objective needs, as one pytree (data arrays traced, layout static)."""

    generator: Generator | None
    fixed_flux: jax.Array | None
    observation: ObservationModel
    flux: jax.Array
    inv_sigma: jax.Array
    weight: jax.Array
    basis: jax.Array
    berv_kms: jax.Array
    epsilon: jax.Array
    layout: _Layout

    def model_flux(self, stellar):
        if self.generator is None:
            return self.fixed_flux
        return self.generator(stellar)

    def observed(self, model_flux, p: dict):
        params = ObservationParameters(
            rv_kms=p["rv_kms"],
            vsini_kms=p["vsini_kms"],
            resolving_power=p["resolving_power"],
            continuum=jnp.ones((1,)),
            epsilon=self.epsilon,
        )
        return self.observation(model_flux, params, self.berv_kms)

    def chi2_of(self, model_flux, p: dict, weight=None):
        """Total chi-square (continuum profiled per order) and z = residual / sigma."""
        weight = self.weight if weight is None else weight
        observed = self.observed(model_flux, p)
        chi2, z = jax.vmap(chi_square)(observed, self.flux, self.inv_sigma, weight, self.basis)
        return jnp.sum(chi2), z

    def chi2(self, u, weight=None):
        p = self.layout.to_physical(u)
        stellar = jnp.stack([p[k] for k in _STELLAR])
        return self.chi2_of(self.model_flux(stellar), p, weight)[0]


@eqx.filter_jit
def _chi2_at_stellar(problem: _Problem, stellar, nuisance: dict, weight):
    return problem.chi2_of(problem.model_flux(stellar), nuisance, weight)[0]


@eqx.filter_jit
def _chi2_of_models(problem: _Problem, models, nuisance: dict, weight):
    return jax.vmap(lambda m: problem.chi2_of(m, nuisance, weight)[0])(models)


@eqx.filter_jit
def _chi2_over_rv(problem: _Problem, model_flux, rvs, nuisance: dict, weight):
    def one(rv):
        return problem.chi2_of(model_flux, {**nuisance, "rv_kms": rv}, weight)[0]

    return jax.lax.map(one, rvs)


@eqx.filter_jit
def _residuals(problem: _Problem, u, weight):
    """(model incl. continuum (n_orders, n_max), z, continuum coefficients) at u."""
    p = problem.layout.to_physical(u)
    stellar = jnp.stack([p[k] for k in _STELLAR])
    observed = problem.observed(problem.model_flux(stellar), p)
    coeffs, model, z = jax.vmap(profiled_residuals)(
        observed, problem.flux, problem.inv_sigma, weight, problem.basis
    )
    return model, z, coeffs


@eqx.filter_jit
def _chi2_and_grad(problem: _Problem, u, weight):
    return jax.value_and_grad(lambda v: problem.chi2(v, weight))(u)


def _chi2(problem: _Problem, u, weight) -> float:
    """chi2 at u from the refinement's own compiled program (no second program to compile)."""
    return float(_chi2_and_grad(problem, jnp.asarray(u), weight)[0])


def _minimise(problem: _Problem, u0, weight, max_iterations: int, scale: float) -> np.ndarray:
    """L-BFGS (scipy) on chi2 / max(scale, 1) from u0 with gradients from one jitted
    ``value_and_grad`` (``scale``: chi2 at u0, so the optimiser's tolerances bite).

    A host loop around one compiled program: an optax L-BFGS ``while_loop`` (its zoom line
    search holds further copies of the generator) took about three times as long to compile
    on CPU, which dominates a single fit.
    """
    u0 = np.asarray(u0, dtype=np.float64)
    scale = max(scale, 1.0)

    def fun(u):
        value, grad = _chi2_and_grad(problem, jnp.asarray(u), weight)
        return float(value) / scale, np.asarray(grad, dtype=np.float64) / scale

    opt = scipy.optimize.minimize(
        fun,
        u0,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iterations, "gtol": 1e-10, "ftol": 1e-14},
    )
    return opt.x


@eqx.filter_jit
def _hessian_autodiff(problem: _Problem, u, weight):
    return jax.hessian(lambda v: 0.5 * problem.chi2(v, weight))(u)


def _hessian(problem: _Problem, u, weight, method: str = "autodiff") -> np.ndarray:
    """Hessian of the negative log-likelihood 0.5 chi2 in unconstrained coordinates.

    ``"autodiff"``: ``jax.hessian`` (exact; its own compiled program). ``"differences"``:
    central differences (step 1e-4) of the autodiff gradient the refinement already compiled:
    no further compilation, and an O(1e-8) relative error for these smooth transforms.
    """
    if method == "autodiff":
        return np.asarray(_hessian_autodiff(problem, u, weight))
    u = np.asarray(u, dtype=np.float64)
    h = 1e-4
    columns = []
    for i in range(u.size):
        e = np.zeros_like(u)
        e[i] = h
        hi = np.asarray(_chi2_and_grad(problem, jnp.asarray(u + e), weight)[1])
        lo = np.asarray(_chi2_and_grad(problem, jnp.asarray(u - e), weight)[1])
        columns.append(0.25 * (hi - lo) / h)  # 0.5 chi2, central difference
    hess = np.stack(columns, axis=1)
    return 0.5 * (hess + hess.T)


@eqx.filter_jit
def _jacobian(problem: _Problem, u):
    """d(physical free parameters)/du, (n_free, n_free) (diagonal)."""
    layout = problem.layout
    return jax.jacfwd(lambda v: jnp.stack([layout.to_physical(v)[n] for n in layout.free]))(u)


# --------------------------------------------------------------------------- stage 6


def laplace(hessian: np.ndarray, jacobian: np.ndarray, names) -> dict:
    """Covariance, errors and correlations from the NLL Hessian in unconstrained coordinates.

    ``hessian`` (n, n) of the negative log-likelihood; ``jacobian`` (n, n) of the physical
    parameters with respect to the unconstrained ones. A Hessian that is not positive definite
    gives NaN errors and a warning; one whose condition number exceeds
    :data:`ILL_CONDITIONED` gives a warning (some combination is barely constrained).
    Returns ``{"covariance", "correlation", "errors" (name -> error), "condition"}``.
    """
    h = 0.5 * (np.asarray(hessian, float) + np.asarray(hessian, float).T)
    n = h.shape[0]
    nan = np.full((n, n), np.nan)
    if n == 0:
        return {"covariance": nan, "correlation": nan, "errors": {}, "condition": 1.0}
    if not np.all(np.isfinite(h)):
        warnings.warn("the Hessian has non-finite entries; no uncertainties", FitWarning, 3)
        return {
            "covariance": nan,
            "correlation": nan,
            "errors": dict.fromkeys(names, np.nan),
            "condition": np.inf,
        }
    # Scale to unit diagonal before testing, so the condition number is about correlations.
    d = np.sqrt(np.abs(np.diag(h)))
    d = np.where(d > 0, d, 1.0)
    eig = np.linalg.eigvalsh(h / np.outer(d, d))
    if eig[0] <= 0:
        warnings.warn(
            f"the Hessian is not positive definite at the optimum (smallest scaled eigenvalue "
            f"{eig[0]:.3g}): the fit is not at a minimum in every direction, or a parameter is "
            "unconstrained; no uncertainties",
            FitWarning,
            3,
        )
        return {
            "covariance": nan,
            "correlation": nan,
            "errors": dict.fromkeys(names, np.nan),
            "condition": np.inf,
        }
    condition = float(eig[-1] / eig[0])
    if condition > ILL_CONDITIONED:
        warnings.warn(
            f"the Hessian is ill-conditioned (condition number {condition:.3g}); the "
            "uncertainties of strongly correlated parameters are unreliable",
            FitWarning,
            3,
        )
    cov_u = np.linalg.inv(h / np.outer(d, d)) / np.outer(d, d)
    j = np.asarray(jacobian, float)
    cov = j @ cov_u @ j.T
    err = np.sqrt(np.clip(np.diag(cov), 0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = cov / np.outer(err, err)
    return {
        "covariance": cov,
        "correlation": corr,
        "errors": dict(zip(names, map(float, err), strict=True)),
        "condition": condition,
    }


# --------------------------------------------------------------------------- helpers


def header_berv(header) -> tuple[float, str] | None:
    """The barycentric correction recorded in (or computed from) a header: (km/s, source).

    Recorded keywords first: ``BERV`` (km/s), ``HIERARCH ESO DRS BERV`` (km/s), ``BRVCORR``
    (m/s, the HPF pipeline's). Otherwise :func:`jblase.observe.berv_from_header` (astropy,
    from the observatory, the target's position and the time). None when neither works.
    """
    if not header:
        return None
    for key, scale in (("BERV", 1.0), ("ESO DRS BERV", 1.0), ("BRVCORR", 1e-3)):
        if key in header:
            try:
                return float(header[key]) * scale, f"header {key}"
            except (TypeError, ValueError):
                continue
    try:
        from jblase.observe import berv_from_header

        return float(berv_from_header(header)), "astropy (header location, target, time)"
    except Exception:  # noqa: BLE001 -- any failure means "not computable from this header"
        return None


def _berv(settings: FitSettings, spectrum: ObservedSpectrum) -> tuple[float, str]:
    if isinstance(settings.berv_kms, str):
        found = header_berv(spectrum.header)
        if found is None:
            raise ValueError(
                f"berv_kms='header' but {spectrum.source or 'the spectrum'}'s header records "
                "no barycentric correction (BERV, HIERARCH ESO DRS BERV, BRVCORR) and lacks "
                "what astropy needs to compute one (observatory, RA/DEC, time); give it in km/s"
            )
        return found
    return float(settings.berv_kms), "given"


def model_flux_from_lines(
    lines, wavelength_aa, *, profile: str, wing_cut: int, line_form: str = "absorption"
):
    """One line list's rest-frame flux on ``wavelength_aa`` (the fixed model of a lines fit)."""
    from jblase.forward import synthesize_lines

    return synthesize_lines(
        wavelength_aa, lines, profile=profile, wing_cut=wing_cut, line_form=line_form
    )


def line_list_model(
    lines_path: str | Path, spectrum: ObservedSpectrum, settings: FitSettings | None = None
) -> tuple[np.ndarray, jax.Array]:
    """The fixed model of a lines fit: ``(wavelength_aa, rest_flux)``, each (n_model,).

    ``lines_path`` is a jblase clone (``.npz``, synthesised with the profile and wing cut in
    its metadata's ``settings``) or an original-code clone (``.pt``, with that code's profile
    variant and 6000-pixel windows). The flux is synthesised on :func:`_line_list_grid`: an
    ln-uniform grid at ``settings.line_list_resolution`` covering the data for every velocity
    and kernel the settings allow. Pass the result to :func:`fit` as its ``model``.

    Raises:
        ValueError: the data's wavelengths are not inside the span of the lines' centres
            (naming both ranges), or the file is not a clone.
    """
    from jblase.blase_archive import BLASE_PROFILE, BLASE_WING_CUT
    from jblase.forward import DEFAULT_WING_CUT
    from jblase.io import load_line_list, read_blase_clone

    settings = settings or FitSettings()
    path = Path(lines_path)
    if path.suffix.lower() == ".pt":
        lines, profile, wing_cut = read_blase_clone(path), BLASE_PROFILE, BLASE_WING_CUT
        line_form = "absorption"
    else:
        lines, meta = load_line_list(path)
        stored = meta.get("settings") or {}
        profile = stored.get("profile", "pseudo_voigt")
        wing_cut = int(stored.get("wing_cut", DEFAULT_WING_CUT))
        line_form = stored.get("line_form", "absorption")
    centres = np.asarray(lines.center)[np.asarray(lines.mask, bool)]
    lo, hi = _data_range(spectrum)
    if centres.size == 0 or lo < centres.min() or hi > centres.max():
        span = f"{centres.min():.1f}-{centres.max():.1f} A" if centres.size else "no lines"
        raise ValueError(
            f"{spectrum.source or 'the spectrum'}'s wavelengths {lo:.1f}-{hi:.1f} A are not "
            f"inside the range of {path}'s lines ({span})"
        )
    grid = _line_list_grid(spectrum, settings)
    flux = model_flux_from_lines(
        lines, jnp.asarray(grid), profile=profile, wing_cut=wing_cut, line_form=line_form
    )
    return grid, flux


def _line_list_grid(spectrum: ObservedSpectrum, settings: FitSettings) -> np.ndarray:
    """An ln-uniform model grid covering the data for every velocity and kernel allowed."""
    lo, hi = _data_range(spectrum)
    reach = _reach(settings)
    return log_lambda_grid(lo * (1 - reach), hi * (1 + reach), 1.0 / settings.line_list_resolution)


# --------------------------------------------------------------------------- the fit


def fit(
    model,
    spectrum: ObservedSpectrum,
    settings: FitSettings | None = None,
    *,
    search: SearchSettings | None = None,
    refine: RefineSettings | bool | None = None,
    mask_intervals: np.ndarray | None = None,
    posterior=None,
    **options,
) -> FitResult:
    """Fit an observed spectrum.

    Args:
        model: a :class:`jblase.generator.Generator` (stellar and extrinsic parameters are
            fitted) or a tuple ``(wavelength_aa, rest_flux)`` of one fixed model spectrum
            (extrinsic parameters and continuum only; see :func:`model_flux_from_lines`).
        spectrum: the data (:func:`jblase.spectra.read_observed`).
        settings: :class:`FitSettings`.
        search, refine: the stellar search and the refinements
            (:class:`jblase.search.SearchSettings`, :class:`jblase.search.RefineSettings`).
        mask_intervals: (n, 2) wavelength intervals (A, observed frame) to leave out.
        posterior: a :class:`jblase.posterior.PosteriorSettings` to sample the posterior of
            the fitted parameters by NUTS after the fit (stage 7; needs blackjax), or None.
        **options: fields of :class:`FitSettings` or of the search settings, by name.
    """
    t0 = time.perf_counter()
    settings, search, refine = _split_options(settings, search, refine, options)
    seconds: dict = {}
    problem, values, (berv, berv_source), estimated = _setup(
        model, spectrum, settings, mask_intervals
    )
    seconds["data"] = time.perf_counter() - t0

    t = time.perf_counter()
    if settings.rv_kms is None:
        values["rv_kms"] = _rv_scan(problem, values, settings)
    rv_scan = values["rv_kms"]
    seconds["rv_scan"] = time.perf_counter() - t

    t = time.perf_counter()
    weight = problem.weight
    nuisance = tuple(n for n in problem.layout.free if n not in _STELLAR)
    values = _optimise(problem, values, nuisance, refine, weight)
    seconds["nuisance"] = time.perf_counter() - t

    t = time.perf_counter()
    gp = None
    if problem.generator is not None:
        best = _stellar_search(problem, values, search, weight)
        values.update(zip(_STELLAR, map(float, best.x), strict=True))
        gp = {**dict(zip(_STELLAR, map(float, best.x), strict=True)), "chi2": best.loss}
    seconds["search"] = time.perf_counter() - t

    t = time.perf_counter()
    n_clipped = 0
    if refine.enabled and set(problem.layout.free) != set(nuisance):
        values = _optimise(problem, values, problem.layout.free, refine, weight)
    if settings.robust:
        for _ in range(settings.clip_iterations):
            _, z, _ = _residuals(problem, _u(problem, values), weight)
            clipped = sigma_clip_weight(z, weight, settings.clip_sigma)
            newly = int(jnp.sum(weight) - jnp.sum(clipped))
            if newly == 0:
                break
            n_clipped += newly
            weight = clipped
            values = _optimise(problem, values, problem.layout.free, refine, weight)
    seconds["refine"] = time.perf_counter() - t

    t = time.perf_counter()
    if estimated:
        problem = _with_estimated_noise(problem, values, weight)
    result = _assemble(problem, values, weight, settings, (berv, berv_source), rv_scan, gp)
    result.uncertainty_estimated = estimated
    result.n_clipped = n_clipped
    seconds["uncertainties"] = time.perf_counter() - t

    if posterior is not None:
        t = time.perf_counter()
        _sample_posterior(problem, values, weight, settings, posterior, result)
        seconds["posterior"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    result.seconds = seconds
    return result


def _split_options(settings, search, refine, options):
    fit_fields = {f.name for f in dataclasses.fields(FitSettings)}
    settings = dataclasses.replace(
        settings or FitSettings(), **{k: v for k, v in options.items() if k in fit_fields}
    )
    search, refine = split_settings(
        search, refine, {k: v for k, v in options.items() if k not in fit_fields}
    )
    return settings, search, refine


def _u(problem: _Problem, values: dict) -> jax.Array:
    return jnp.asarray(problem.layout.to_unconstrained(values))


def _reach(settings: FitSettings) -> float:
    """Relative wavelength margin a data pixel needs in the model (velocities and kernels)."""
    return (settings.max_velocity_kms + 2 * settings.max_vsini_kms) / 299_792.458 + 0.002


def _data_range(spectrum: ObservedSpectrum) -> tuple[float, float]:
    wl = np.asarray(spectrum.wavelength)[
        np.asarray(spectrum.valid) & np.isfinite(spectrum.wavelength)
    ]
    if wl.size == 0:
        raise ValueError(f"{spectrum.source or 'the spectrum'} has no valid pixel")
    return float(wl.min()), float(wl.max())


def _restrict(generator: Generator, spectrum: ObservedSpectrum, settings) -> Generator:
    lo, hi = _data_range(spectrum)
    reach = _reach(settings)
    gen_wl = np.asarray(generator.wavelength)
    return generator.restrict(max(lo * (1 - reach), gen_wl[0]), min(hi * (1 + reach), gen_wl[-1]))


def _setup(model, spectrum, settings: FitSettings, mask_intervals):
    """Stage 1 and the problem: data arrays, free parameters, starting values."""
    berv = _berv(settings, spectrum)
    if isinstance(model, Generator):
        gen, fixed_flux = _restrict(model, spectrum, settings), None
        model_wl, fitted_range = np.asarray(gen.wavelength), model.fitted_range
        box = search_bounds(gen.bounds, settings.teff_prior, settings.teff_window)
    else:
        model_wl, flux = (np.asarray(a, float) for a in model)
        if model_wl.shape != flux.shape:
            raise ValueError(f"model wavelength {model_wl.shape} and flux {flux.shape} differ")
        gen, fixed_flux, fitted_range = None, jnp.asarray(flux), None
        box = np.zeros((3, 2))
    data = prepare_data(
        spectrum, model_wl, settings, fitted_range=fitted_range, mask_intervals=mask_intervals
    )
    values = dict(zip(_STELLAR, box.mean(axis=1) if gen is not None else [np.nan] * 3, strict=True))
    values.update(
        rv_kms=0.0 if settings.rv_kms is None else float(settings.rv_kms),
        vsini_kms=float(settings.vsini_kms),
        resolving_power=float(settings.resolution_start),
    )
    free = [n for n, (lo, hi) in zip(_STELLAR, box, strict=True) if hi > lo]
    free += ["rv_kms"] + ["vsini_kms"] * settings.fit_vsini
    free += ["resolving_power"] * settings.fits_resolution
    layout = _layout(values, free, box)
    problem = _Problem(
        generator=gen,
        fixed_flux=fixed_flux,
        observation=data.observation,
        flux=jnp.asarray(data.flux),
        inv_sigma=jnp.asarray(data.inv_sigma),
        weight=jnp.asarray(data.weight),
        basis=jnp.asarray(data.basis),
        berv_kms=jnp.asarray(berv[0], dtype=float),
        epsilon=jnp.asarray(settings.limb_darkening, dtype=float),
        layout=layout,
    )
    return problem, values, berv, data.uncertainty_estimated


def _nuisance(values: dict) -> dict:
    return {k: jnp.asarray(values[k], dtype=float) for k in PARAMETERS[3:]}


def _stellar(values: dict) -> jax.Array:
    return jnp.asarray([values[k] for k in _STELLAR], dtype=float)


def _rv_scan(problem: _Problem, values: dict, settings: FitSettings) -> float:
    """Stage 2: RV at the minimum of the chi-square over a grid of velocities.

    The velocity range is clipped to what the observation model allows. A parabola through
    the minimum and its neighbours gives a sub-step start.
    """
    limit = settings.max_velocity_kms - abs(float(problem.berv_kms)) - settings.rv_step_kms
    half = min(settings.rv_range_kms, max(limit, settings.rv_step_kms))
    rvs = np.arange(-half, half + 0.5 * settings.rv_step_kms, settings.rv_step_kms)
    stellar = _stellar(values) if problem.generator is not None else None
    flux = problem.model_flux(stellar)
    chi2 = np.asarray(
        _chi2_over_rv(problem, flux, jnp.asarray(rvs), _nuisance(values), problem.weight)
    )
    if not np.isfinite(chi2).any():
        raise ValueError("the chi-square is non-finite at every RV of the scan")
    i = int(np.nanargmin(chi2))
    if 0 < i < rvs.size - 1:
        y0, y1, y2 = chi2[i - 1 : i + 2]
        den = y0 - 2 * y1 + y2
        if den > 0:
            return float(rvs[i] + 0.5 * settings.rv_step_kms * (y0 - y2) / den)
    return float(rvs[i])


def _sub_problem(problem: _Problem, values: dict, names) -> _Problem:
    """The problem with only ``names`` free and everything else fixed at ``values``."""
    layout = _layout(values, names, problem.layout.box)
    problem = eqx.tree_at(lambda p: p.layout, problem, layout)
    if problem.generator is not None and not set(names) & set(_STELLAR):
        # Stellar parameters fixed: evaluate the generator once, not at every step.
        flux = problem.model_flux(_stellar(values))
        problem = eqx.tree_at(
            lambda p: (p.generator, p.fixed_flux),
            problem,
            (None, flux),
            is_leaf=lambda x: x is None,
        )
    return problem


def _optimise(
    problem: _Problem, values: dict, names, refine: RefineSettings, weight, iterations=None
) -> dict:
    """Stages 3 and 5: L-BFGS over ``names`` from ``values`` (``iterations``, default twice
    ``refine.max_iterations``); kept only where chi2 improves."""
    if not names:
        return values
    sub = _sub_problem(problem, values, names)
    u0 = _u(sub, values)
    start = _chi2(sub, u0, weight)
    u = _minimise(sub, u0, weight, iterations or 2 * refine.max_iterations, start)
    end = _chi2(sub, u, weight)
    if not (np.isfinite(end) and end <= start):
        return values
    physical = sub.layout.to_physical(jnp.asarray(u))
    return {**values, **{n: float(physical[n]) for n in names}}


def _stellar_search(problem: _Problem, values: dict, search: SearchSettings, weight):
    """Stage 4: the random and guided phases over (Teff, log g, [Fe/H]), chi2 per pixel."""
    gen = problem.generator
    box = np.asarray(problem.layout.box, float)
    fast = problem
    if search.search_dtype is not None and search.search_dtype != gen.compute_dtype:
        fast = eqx.tree_at(
            lambda p: p.generator,
            problem,
            dataclasses.replace(gen, compute_dtype=search.search_dtype),
        )
    nuisance = _nuisance(values)
    n = max(float(jnp.sum(weight)), 1.0)
    batch_size = search.batch_size or default_batch_size()

    def batch_loss(x):
        models = fast.generator.batch(jnp.asarray(x), batch_size)
        return np.asarray(_chi2_of_models(fast, models, nuisance, weight)) / n

    def loss(x):
        return float(_chi2_at_stellar(fast, jnp.asarray(x, float), nuisance, weight)) / n

    x0, y0 = random_phase(batch_loss, box, search)
    if search.method == "gp":
        return guided_phase(loss, box, x0, y0, search)
    names = tuple(k for k in _STELLAR if k in problem.layout.free)

    def fit_from(x):  # nuisance fixed, as in the random phase; evaluations not counted
        start = {**values, **dict(zip(_STELLAR, map(float, x), strict=True))}
        end = _optimise(fast, start, names, RefineSettings(), weight, search.start_iterations)
        x_fit = np.array([end[k] for k in _STELLAR])
        return x_fit, loss(x_fit), 0

    return multistart_phase(fit_from, box, x0, y0, search)


def _with_estimated_noise(problem: _Problem, values: dict, weight) -> _Problem:
    """Unit uncertainties replaced by the residual scatter (chi2_reduced becomes 1)."""
    chi2 = _chi2(problem, _u(problem, values), weight)
    dof = max(
        float(jnp.sum(weight))
        - len(problem.layout.free)
        - problem.basis.shape[0] * problem.basis.shape[-1],
        1.0,
    )
    sigma = math.sqrt(chi2 / dof)
    warnings.warn(
        f"the spectrum has no uncertainties: they are set to the residual scatter "
        f"({sigma:.4g} in flux units), so chi2_reduced is 1 by construction",
        FitWarning,
        3,
    )
    return eqx.tree_at(lambda p: p.inv_sigma, problem, problem.inv_sigma / sigma)


def _assemble(problem, values, weight, settings, berv, rv_scan, gp) -> FitResult:
    """Stage 6 and the result: chi-square, Laplace uncertainties, model, continuum."""
    u = _u(problem, values)
    model, z, coeffs = _residuals(problem, u, weight)
    chi2 = float(jnp.sum(z * z))
    n_pix = int(jnp.sum(weight))
    n_par = len(problem.layout.free) + int(np.prod(coeffs.shape))
    names = problem.layout.free
    if settings.uncertainties:
        hessian = _hessian(problem, u, weight, settings.hessian)
        stats = laplace(hessian, np.asarray(_jacobian(problem, u)), names)
    else:
        nan = np.full((len(names), len(names)), np.nan)
        stats = {"covariance": nan, "correlation": nan, "errors": dict.fromkeys(names, np.nan)}
    _warn_at_edges(problem, values)
    for name in on_grid_nodes(problem, values):
        warnings.warn(
            f"{name} = {values[name]:.6g} sits on a grid node of the manifold, where the "
            "interpolation between nodes has a kink (its slope changes): a kink can hold an "
            "optimiser, and its Laplace error is not meaningful; see the NUTS posterior "
            "(--posterior nuts) or refit from another start (--seed)",
            FitWarning,
            3,
        )
    model = np.where(np.asarray(problem.observation.mask), np.asarray(model), np.nan)
    stat = {k: float(stats["errors"].get(k, np.nan)) for k in PARAMETERS}
    floors = settings.systematic_errors
    errors = stat if floors is None else _floored(stat, floors)
    return FitResult(
        values={k: float(values[k]) for k in PARAMETERS},
        errors=errors,
        errors_stat=dict(stat),
        systematic_errors=None if floors is None else dict(floors),
        fitted=tuple(names),
        covariance=stats["covariance"],
        correlation=stats["correlation"],
        chi2=chi2,
        chi2_reduced=chi2 / max(n_pix - n_par, 1),
        n_pixels=n_pix,
        berv_kms=float(berv[0]),
        berv_source=berv[1],
        rv_scan_kms=float(rv_scan),
        gp=gp,
        continuum=np.asarray(coeffs),
        model=model,
        weight=np.asarray(weight),
    )


# --------------------------------------------------------------------------- stage 7


@eqx.filter_jit
def _log_posterior(problem: _Problem, u, weight):
    """ln p(u | data) up to a constant, on the fit's unconstrained coordinates: Gaussian
    noise with each order's continuum marginalised under a flat prior on its coefficients
    (``-chi2 / 2 - ln det N / 2``, :mod:`jblase.likelihood`), flat priors on the physical
    parameters inside the ranges the observation model holds (the stellar ones inside the
    search box, 0 <= v sin i <= ``max_vsini_kms``, R >= ``min_resolving_power``; beyond them
    the model's kernels stop changing, so a flat prior there would be improper) and the
    Jacobian of the map to them."""
    layout = problem.layout
    p = layout.to_physical(u)
    limits = problem.observation.settings
    inside = (p["vsini_kms"] <= limits.max_vsini_kms) & (
        p["resolving_power"] >= limits.min_resolving_power
    )
    stellar = jnp.stack([p[k] for k in _STELLAR])
    observed = problem.observed(problem.model_flux(stellar), p)
    chi2, _ = jax.vmap(chi_square)(observed, problem.flux, problem.inv_sigma, weight, problem.basis)
    logdet = jax.vmap(continuum_logdet)(observed, problem.inv_sigma, weight, problem.basis)
    ln_jacobian = sum(
        jnp.log(jnp.abs(jax.grad(lambda v, n=name: _forward(n, v, layout.box))(u[i])))
        for i, name in enumerate(layout.free)
    )
    return jnp.where(inside, -0.5 * jnp.sum(chi2) - 0.5 * jnp.sum(logdet) + ln_jacobian, -jnp.inf)


def _log_posterior_of(u, data):
    """:func:`_log_posterior` as NUTS calls it: ``data`` is ``(problem, weight)``."""
    problem, weight = data
    return _log_posterior(problem, u, weight)


@eqx.filter_jit
def _log_posterior_and_grad(problem: _Problem, u, weight):
    return jax.value_and_grad(lambda v: _log_posterior(problem, v, weight))(u)


@eqx.filter_jit
def _log_posterior_hessian(problem: _Problem, u, weight):
    return jax.hessian(lambda v: _log_posterior(problem, v, weight))(u)


#: The posterior mode's search starts with every stellar coordinate within this many logistic
#: units of the box's centre (5e-5 of the box from its edges) and v sin i's above minus this
#: (softplus: 4.5e-5 km/s): an optimum on the edge of its range maps to a far, flat tail of
#: the unconstrained coordinate.
MODE_START_LIMIT = 10.0


def _posterior_mode(problem: _Problem, u, weight) -> tuple[np.ndarray, np.ndarray | None]:
    """The mode of :func:`_log_posterior` in unconstrained coordinates and its Laplace
    covariance there (None where the Hessian is not negative definite), by scipy's
    trust-region Newton method from ``u`` (the fit's optimum).

    The fit's optimum maximises the likelihood of the physical parameters; NUTS samples the
    posterior of the unconstrained ones, whose density carries the Jacobian of the map. The
    two agree inside the box, but where the optimum sits on the box's edge (the likelihood
    still rising there) the posterior's mode lies inward, where the density has an O(1)
    width: the likelihood's Hessian at the edge is nearly zero, and chains started from its
    inverse scatter into the flat tail and never meet."""
    u0 = np.asarray(u, np.float64).copy()
    for i, name in enumerate(problem.layout.free):
        if name in _STELLAR:
            u0[i] = np.clip(u0[i], -MODE_START_LIMIT, MODE_START_LIMIT)
        elif name == "vsini_kms":  # v sin i = 0 maps to u = -inf (softplus)
            u0[i] = max(u0[i], -MODE_START_LIMIT)

    def negative(v):
        value, grad = _log_posterior_and_grad(problem, jnp.asarray(v), weight)
        return -float(value), -np.asarray(grad, np.float64)

    def hessian(v):
        return -np.asarray(_log_posterior_hessian(problem, jnp.asarray(v), weight), np.float64)

    found = scipy.optimize.minimize(
        negative, u0, jac=True, hess=hessian, method="trust-exact", options={"maxiter": 50}
    )
    mode = np.asarray(found.x, np.float64)
    if not np.all(np.isfinite(mode)) or not np.isfinite(found.fun):
        return u0, None
    h = hessian(mode)
    try:
        np.linalg.cholesky(0.5 * (h + h.T))
    except np.linalg.LinAlgError:
        return mode, None
    return mode, np.linalg.inv(0.5 * (h + h.T))


def _sample_posterior(problem, values, weight, settings, posterior, result: FitResult) -> None:
    """Stage 7: NUTS (:func:`jblase.posterior.nuts`) from the posterior's mode in
    unconstrained coordinates (:func:`_posterior_mode`, started at the fit's optimum), the
    Laplace covariance there as its initial mass matrix; fills ``result.posterior``."""
    from jblase.posterior import nuts

    u, cov_u = _posterior_mode(problem, _u(problem, values), weight)
    if cov_u is None:
        try:
            cov_u = np.linalg.inv(_hessian(problem, _u(problem, values), weight, settings.hessian))
        except np.linalg.LinAlgError:
            cov_u = None
    adaptation = posterior.adapt_mass_matrix
    if adaptation == "laplace" and on_grid_nodes(problem, values):
        # The Hessian at a kink says nothing of the posterior's width: learn the mass matrix.
        adaptation = "window"
    run = dataclasses.replace(posterior, adapt_mass_matrix=adaptation)
    out = nuts(_log_posterior_of, u, cov_u, run, data=(problem, weight))
    samples = jnp.asarray(out["samples"])  # (chains, draws, n_free)
    layout = problem.layout
    physical = jax.vmap(
        jax.vmap(lambda v: jnp.stack([layout.to_physical(v)[n] for n in layout.free]))
    )(samples)
    draws = np.asarray(physical)
    flat = draws.reshape(-1, draws.shape[-1])
    names = layout.free
    q16, q50, q84 = np.percentile(flat, [15.865, 50.0, 84.135], axis=0)
    rhat = dict(zip(names, map(float, out["rhat"]), strict=True))
    result.posterior = {
        "median": dict(zip(names, map(float, q50), strict=True)),
        "p16": dict(zip(names, map(float, q16), strict=True)),
        "p84": dict(zip(names, map(float, q84), strict=True)),
        "rhat": rhat,
        "ess": dict(zip(names, map(float, out["ess"]), strict=True)),
        "divergences": out["divergences"],
        "acceptance": out["acceptance"],
        "integration_steps": out["integration_steps"],
        "adaptation": adaptation,
        "chains": posterior.chains,
        "draws": posterior.draws,
    }
    result.posterior_draws = draws
    worst = max(rhat.values()) if rhat else 1.0
    if not worst < 1.01 or out["divergences"]:
        warnings.warn(
            f"NUTS: largest R-hat {worst:.3f} (want < 1.01), {out['divergences']} divergent "
            "transitions: the chains may not have converged; try more --draws or warm-up",
            FitWarning,
            3,
        )


def _floored(stat: dict, floors: Mapping[str, float]) -> dict:
    """Each error in ``stat`` with its floor (if any) added in quadrature (:func:`with_floor`);
    a parameter that was not fitted keeps its NaN."""
    return {k: with_floor(v, floors[k]) if k in floors else v for k, v in stat.items()}


#: A fitted stellar parameter within this fraction of its axis's smallest node spacing of a
#: grid node counts as sitting on the node (an optimiser held by the interpolation's kink).
NODE_TOLERANCE = 1e-4


def on_grid_nodes(problem: _Problem, values: dict) -> tuple[str, ...]:
    """The fitted stellar parameters that sit on an interior grid node of the generator
    (within :data:`NODE_TOLERANCE` of the axis's node spacing)."""
    if problem.generator is None:
        return ()
    out = []
    for name, axis in zip(_STELLAR, problem.generator.axes, strict=True):
        axis = np.asarray(axis, np.float64)
        if name not in problem.layout.free or axis.size < 3:
            continue
        gap = np.abs(axis[1:-1] - float(values[name])).min()
        if gap <= NODE_TOLERANCE * np.diff(axis).min():
            out.append(name)
    return tuple(out)


def _warn_at_edges(problem: _Problem, values: dict) -> None:
    for name, (lo, hi) in zip(_STELLAR, np.asarray(problem.layout.box).tolist(), strict=True):
        if name in problem.layout.free and hi > lo:
            x = (values[name] - lo) / (hi - lo)
            if x < 1e-3 or x > 1 - 1e-3:
                warnings.warn(
                    f"{name} = {values[name]:.4g} is at the edge of the search box "
                    f"[{lo:g}, {hi:g}]: its uncertainty is not meaningful",
                    FitWarning,
                    4,
                )
