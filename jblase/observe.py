# ruff: noqa: F722  (jaxtyping shape strings are not Python expressions)
"""Observation model: a rest-frame model spectrum -> the pixels of observed echelle orders.

Sits after the generator (or after one line list's forward model) and before a fit to data
(DESIGN.md section 5). The model is a normalised, noise-free spectrum on vacuum wavelengths in A
(float64) at R ~ 500,000; the stages, each a pure ``jnp`` function usable on its own, are

1. :func:`rotation_kernel` -- Gray's rotational broadening (v sin i, linear limb darkening),
2. :func:`gaussian_kernel` -- instrumental broadening at resolving power R,
   both on a grid uniform in ln(wavelength) (:func:`log_lambda_grid`, :func:`to_log_lambda`),
   where a broadening kernel is one kernel in velocity, applied by :func:`broaden`;
3. :func:`redshift_factor` -- the relativistic Doppler shift and the barycentric correction,
4. :func:`bin_average` -- flux-conserving integration over the data's pixels,
5. :func:`chebyshev_continuum` -- a smooth continuum per order.

:class:`ObservationModel` plans them once per set of orders (the ln-lambda segments each order
needs, its pixel edges, static kernel sizes, orders padded to one length with a mask) and then
evaluates all orders in one jitted, differentiable call; :func:`observe` is the one-call version
for a single order. :func:`berv_from_header` computes the barycentric correction from a FITS
header with astropy (eager, NumPy).

Conventions. ``rv_kms`` is the star's barycentric radial velocity, relativistic: the rest-frame
wavelength appears in the barycentre at lambda * sqrt((1 + b) / (1 - b)), b = rv / c.
``berv_kms`` is the barycentric correction exactly as astropy's
``SkyCoord.radial_velocity_correction`` returns it: c * z_B in the optical convention, positive
when the observer moves towards the star, so that (1 + z_bary) = (1 + z_topo) (1 + berv / c)
(Wright & Eastman 2014, eq. 11). The topocentric wavelength is therefore
lambda_obs = lambda_rest * sqrt((1 + b) / (1 - b)) / (1 + berv / c), exactly; to first order the
topocentric velocity is rv - berv. Pass ``berv_kms=0`` for data whose wavelengths are already
barycentric. Model and data wavelengths must be in the same medium (vacuum).

Differentiable radial velocity. The data's pixel edges are moved into the model's rest frame
(divided by the Doppler factor) at every call, and each pixel's mean flux is the difference of
the model's cumulative integral at its two edges, located with ``searchsorted`` on the static
model grid. There is no precomputed sparse operator to rebuild when RV changes: the cost is one
cumulative sum over the order's model segment and two binary searches per data pixel, and the
result is a smooth (C^1, with the default piecewise-linear model) function of rv.

Precision: wavelengths, Doppler factors and cumulative integrals need float64 (importing jblase
enables it); fluxes may be float32 or float64, results follow JAX's promotion with float64.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.signal import fftconvolve
from jax.scipy.special import erfc
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from jblase._checks import check_wavelength

__all__ = [
    "C_KMS",
    "MODEL_INTERPOLATIONS",
    "ObservationModel",
    "ObservationParameters",
    "ObservationSettings",
    "berv_from_header",
    "bin_average",
    "broaden",
    "chebyshev_continuum",
    "doppler_factor",
    "gaussian_kernel",
    "log_lambda_grid",
    "log_step",
    "observe",
    "observed_wavelength",
    "pixel_edges",
    "redshift_factor",
    "rotation_kernel",
    "to_log_lambda",
]

#: Speed of light in km/s (exact, SI).
C_KMS = 299_792.458
#: How :func:`bin_average` reads the model between its pixels: "linear" (straight lines through
#: the pixel values; smooth in rv) or "constant" (each pixel's value over its own bin, the bins'
#: edges midway between pixels; the model of the ``spectres`` package).
MODEL_INTERPOLATIONS = ("linear", "constant")
#: Kernels at or below this many taps are applied by direct convolution, larger ones by FFT.
_DIRECT_CONVOLUTION_TAPS = 64
_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def _is_tracer(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


# --------------------------------------------------------------------------- Doppler shift
def doppler_factor(velocity_kms: ArrayLike) -> Array:
    """Relativistic Doppler factor sqrt((1 + b) / (1 - b)), b = velocity / c.

    ``velocity_kms``: line-of-sight velocity in km/s, positive away from the observer (any
    shape, float64). Returns lambda_observed / lambda_emitted, same shape, float64.
    """
    b = jnp.asarray(velocity_kms, dtype=float) / C_KMS
    return jnp.sqrt((1.0 + b) / (1.0 - b))


def redshift_factor(rv_kms: ArrayLike, berv_kms: ArrayLike = 0.0) -> Array:
    """1 + z of the topocentric (observed) frame: doppler(rv) / (1 + berv / c), float64.

    ``rv_kms``: the star's barycentric radial velocity (relativistic), km/s. ``berv_kms``: the
    barycentric correction in astropy's sense and optical convention (see the module docstring),
    km/s. Broadcasts its arguments.
    """
    return doppler_factor(rv_kms) / (1.0 + jnp.asarray(berv_kms, dtype=float) / C_KMS)


def _log_redshift(rv_kms, berv_kms):
    # ln redshift_factor, exact: ln sqrt((1 + b) / (1 - b)) = atanh(b).
    return jnp.arctanh(rv_kms / C_KMS) - jnp.log1p(berv_kms / C_KMS)


def observed_wavelength(
    rest_wavelength_aa: ArrayLike, rv_kms: ArrayLike, berv_kms: ArrayLike = 0.0
) -> Array:
    """Topocentric wavelengths in A (float64) at which rest-frame wavelengths (A) are seen."""
    return jnp.asarray(rest_wavelength_aa, dtype=float) * redshift_factor(rv_kms, berv_kms)


# --------------------------------------------------------------------------- barycentric correction
_LOCATION_GEOCENTRIC = ("OBSGEO-X", "OBSGEO-Y", "OBSGEO-Z")
#: (longitude east-positive, latitude, elevation in m) key sets, tried in this order.
_LOCATION_GEODETIC = (
    ("OBSGEO-L", "OBSGEO-B", "OBSGEO-H"),
    ("SITELONG", "SITELAT", "SITEELEV"),
    ("LONGITUD", "LATITUDE", "ALTITUDE"),
    ("OBS-LONG", "OBS-LAT", "OBS-ELEV"),
)
_SITE_KEYS = ("OBSERVAT", "TELESCOP")
_COORD_KEYS = (
    ("RA", "DEC"),
    ("OBJRA", "OBJDEC"),
    ("RA_OBJ", "DEC_OBJ"),
    ("RA-OBJ", "DEC-OBJ"),
    ("QRA", "QDEC"),  # HPF: its numeric RA is in hours, its QRA / QDEC sexagesimal
)
_MID_TIME_KEYS = ("MJD-AVG", "DATE-AVG")
_START_TIME_KEYS = ("MJD-OBS", "DATE-OBS", "JD")
_EXPOSURE_KEYS = ("EXPTIME", "EXPOSURE", "ELAPSED")


def _angle(value: Any, unit) -> Any:
    from astropy.coordinates import Angle

    return Angle(value, unit=unit)


def _header_location(header) -> Any:
    import astropy.units as u
    from astropy.coordinates import EarthLocation

    if all(k in header for k in _LOCATION_GEOCENTRIC):
        x, y, z = (float(header[k]) for k in _LOCATION_GEOCENTRIC)
        return EarthLocation.from_geocentric(x, y, z, unit=u.m)
    for lon, lat, height in _LOCATION_GEODETIC:
        if lon in header and lat in header:
            return EarthLocation.from_geodetic(
                _angle(header[lon], u.deg),
                _angle(header[lat], u.deg),
                float(header.get(height, 0.0)) * u.m,
            )
    for key in _SITE_KEYS:
        if key in header:
            try:
                return EarthLocation.of_site(str(header[key]).strip())
            except Exception:  # unknown site, or astropy's site list unavailable
                continue
    tried = [" / ".join(_LOCATION_GEOCENTRIC)] + [" / ".join(k[:2]) for k in _LOCATION_GEODETIC]
    raise ValueError(
        "FITS header lacks the observatory location: none of "
        + "; ".join(tried)
        + f"; nor a site name astropy knows in {' or '.join(_SITE_KEYS)}. "
        "Pass location= (an astropy EarthLocation)"
    )


def _sexagesimal(value) -> bool:
    return isinstance(value, str) and (":" in value or len(value.split()) == 3)


def _header_coordinates(header) -> Any:
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    pairs = [(r, d) for r, d in _COORD_KEYS if r in header and d in header]
    # A sexagesimal RA says its unit (hours); a numeric one is degrees by the FITS convention,
    # which some pipelines (HPF) break, so a sexagesimal pair is preferred where there is one.
    pairs.sort(key=lambda pair: not _sexagesimal(header[pair[0]]))
    for ra_key, dec_key in pairs[:1]:
        ra, dec = header[ra_key], header[dec_key]
        ra_unit = u.hourangle if _sexagesimal(ra) else u.deg
        frame = str(header.get("RADESYS", "ICRS")).strip().lower()
        kwargs = {"equinox": f"J{float(header['EQUINOX'])}"} if frame == "fk5" else {}
        return SkyCoord(_angle(ra, ra_unit), _angle(dec, u.deg), frame=frame, **kwargs)
    raise ValueError(
        "FITS header lacks the target coordinates: none of "
        + ", ".join(f"{r} / {d}" for r, d in _COORD_KEYS)
        + ". Pass coord= (an astropy SkyCoord)"
    )


def _header_time(header, mid_exposure: bool) -> Any:
    import astropy.units as u
    from astropy.time import Time

    scale = str(header.get("TIMESYS", "UTC")).strip().lower()

    def read(key: str) -> Any:
        if key.startswith("MJD"):
            return Time(float(header[key]), format="mjd", scale=scale)
        if key == "JD":
            return Time(float(header[key]), format="jd", scale=scale)
        value = str(header[key]).strip()
        if "T" not in value and "TIME-OBS" in header:  # old style: date and time apart
            value = f"{value}T{str(header['TIME-OBS']).strip()}"
        return Time(value, format="isot" if "T" in value else "iso", scale=scale)

    for key in _MID_TIME_KEYS:
        if key in header:
            return read(key)
    for key in _START_TIME_KEYS:
        if key in header:
            start = read(key)
            exposure = next((header[k] for k in _EXPOSURE_KEYS if k in header), None)
            if mid_exposure and exposure is not None:
                return start + 0.5 * float(exposure) * u.s
            return start
    raise ValueError(
        "FITS header lacks the observation time: none of "
        + ", ".join(_MID_TIME_KEYS + _START_TIME_KEYS)
        + ". Pass obstime= (an astropy Time)"
    )


def berv_from_header(
    header,
    *,
    location: Any = None,
    coord: Any = None,
    obstime: Any = None,
    mid_exposure: bool = True,
    kind: str = "barycentric",
) -> float:
    """Barycentric correction in km/s from a FITS header, with astropy (eager, float64).

    Returns ``coord.radial_velocity_correction(kind, obstime, location)`` in km/s: the
    ``berv_kms`` of :func:`redshift_factor` (optical convention, positive when the observer
    moves towards the star). Each of the three inputs is read from the header unless given:

    - ``location`` (``EarthLocation``): OBSGEO-X/Y/Z (m, geocentric); else longitude (east
      positive), latitude and elevation (m) from OBSGEO-L/B/H, SITELONG/SITELAT/SITEELEV,
      LONGITUD/LATITUDE/ALTITUDE or OBS-LONG/OBS-LAT/OBS-ELEV (degrees or sexagesimal
      strings); else a site name in OBSERVAT or TELESCOP (``EarthLocation.of_site``).
    - ``coord`` (``SkyCoord``): RA/DEC, OBJRA/OBJDEC, RA_OBJ/DEC_OBJ, RA-OBJ/DEC-OBJ or
      QRA/QDEC (a sexagesimal pair first where there is one); numbers in degrees, "hh:mm:ss"
      RA in hours; frame from RADESYS (default ICRS) and EQUINOX.
    - ``obstime`` (``Time``): MJD-AVG or DATE-AVG (mid-exposure); else MJD-OBS, DATE-OBS (with
      TIME-OBS if the date has no time) or JD, the exposure's start, moved to mid-exposure by
      half of EXPTIME / EXPOSURE / ELAPSED (s) when ``mid_exposure``; scale from TIMESYS
      (default UTC).

    Raises ``ValueError`` naming the header keys looked for when one of them is missing.
    """
    import astropy.units as u

    location = _header_location(header) if location is None else location
    coord = _header_coordinates(header) if coord is None else coord
    obstime = _header_time(header, mid_exposure) if obstime is None else obstime
    vcorr = coord.radial_velocity_correction(kind=kind, obstime=obstime, location=location)
    return float(vcorr.to_value(u.km / u.s))


# --------------------------------------------------------------------------- ln-lambda grids
def log_step(wavelength_aa: ArrayLike) -> float:
    """Median step in ln(wavelength) of a strictly increasing grid in A (float64 scalar)."""
    wl = check_wavelength(np.asarray(wavelength_aa), name="wavelength")
    return float(np.median(np.diff(np.log(wl))))


def log_lambda_grid(wl_min_aa: float, wl_max_aa: float, step: float) -> np.ndarray:
    """Wavelengths in A (float64) from ``wl_min_aa``, uniform in ln(lambda) with ``step`` (the
    ln step; c * step is the pixel in km/s), up to the last point not beyond ``wl_max_aa``."""
    if not (step > 0 and np.isfinite(step)):
        raise ValueError(f"ln-lambda step must be positive and finite, got {step!r}")
    if not 0 < wl_min_aa < wl_max_aa:
        raise ValueError(f"need 0 < wl_min_aa < wl_max_aa, got {wl_min_aa!r}, {wl_max_aa!r}")
    n = int(np.floor(np.log(wl_max_aa / wl_min_aa) / step * (1 + 1e-12))) + 1
    return wl_min_aa * np.exp(np.arange(n) * step)


def to_log_lambda(
    wavelength_aa: Float[ArrayLike, " n_model"],
    flux: Float[ArrayLike, " n_model"],
    log_wavelength_aa: Float[ArrayLike, " n_log"],
) -> Float[Array, " n_log"]:
    """A model spectrum linearly interpolated onto a ln-lambda grid (wavelengths in A, float64;
    both grids strictly increasing, the new one inside the old). Pure ``jnp``."""
    return jnp.interp(
        jnp.asarray(log_wavelength_aa, dtype=float), jnp.asarray(wavelength_aa, dtype=float), flux
    )


# --------------------------------------------------------------------------- broadening kernels
@jax.custom_jvp
def _circle_area(x):
    # 2 * integral_{0}^{x} sqrt(1 - t^2) dt for |x| <= 1; its derivative 2 sqrt(1 - x^2) is
    # finite at x = +-1, where the two terms' own derivatives are infinite.
    return x * _safe_sqrt(1.0 - x * x) + jnp.arcsin(x)


def _safe_sqrt(y):
    """sqrt(max(y, 0)) whose derivatives of every order are finite (zero where y <= 0):
    the double ``where`` keeps an infinite sqrt'(0) out of second derivatives (Hessians)."""
    positive = y > 0.0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, y, 1.0)), 0.0)


@_circle_area.defjvp
def _circle_area_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    return _circle_area(x), 2.0 * _safe_sqrt(1.0 - x * x) * dx


def _gray_half_cdf(x, epsilon):
    """Integral of Gray's rotation profile from 0 to x, for 0 <= x <= 1."""
    disc = (1.0 - epsilon) * _circle_area(x)
    limb = 0.5 * jnp.pi * epsilon * (x - x**3 / 3.0)
    return (disc + limb) / (jnp.pi * (1.0 - epsilon / 3.0))


def _gray_second_moment(epsilon):
    """Variance of Gray's profile in units of v sin i squared."""
    return ((1.0 - epsilon) / 4.0 + 2.0 * epsilon / 15.0) / (1.0 - epsilon / 3.0)


def _match_variance(weights, variance_px2):
    """Add a three-tap term a (w[k-1] - 2 w[k] + w[k+1]) so the kernel's variance (pixels^2)
    becomes ``variance_px2`` while its sum and symmetry are kept. The end taps of ``weights``
    must be zero (one spare pixel each side)."""
    k = jnp.arange(weights.shape[-1]) - weights.shape[-1] // 2
    a = 0.5 * (variance_px2 - jnp.sum(k**2 * weights))
    second_difference = jnp.roll(weights, 1) - 2.0 * weights + jnp.roll(weights, -1)
    return weights + a * second_difference


def _symmetric_weights(outer, half_width: int):
    """Pixel weights of a symmetric kernel from ``outer(e)``, its mass beyond the offset e >= 0
    (in pixels; a vectorised function), for pixels -half_width..half_width, normalised to 1.

    Working from the tails keeps small weights accurate; pixels whose two edges have the same
    mass beyond them (past a compact kernel's end) get exactly zero.
    """
    beyond = outer(jnp.arange(0.5, half_width + 1.0, dtype=float))
    side = jnp.where(beyond[:-1] == beyond[1:], 0.0, beyond[:-1] - beyond[1:])
    weights = jnp.concatenate([side[::-1], (1.0 - 2.0 * beyond[:1]), side])
    return weights / jnp.sum(weights)


def rotation_kernel(
    vsini_kms: ArrayLike,
    epsilon: ArrayLike,
    step_kms: float,
    half_width: int,
    match_variance: bool = True,
) -> Float[Array, " 2*half_width+1"]:
    """Gray's rotational broadening kernel integrated over each pixel of a ln-lambda grid.

    ``vsini_kms``: projected equatorial velocity, km/s, >= 0 (scalar, may be traced).
    ``epsilon``: linear limb-darkening coefficient in [0, 1]. ``step_kms``: the grid's pixel,
    c * (ln-lambda step), km/s (static). ``half_width``: static number of pixels each side;
    it must exceed vsini / step + 1.5 (see :meth:`ObservationSettings.rotation_half_width`),
    or the kernel is truncated (and renormalised). Returns weights summing to 1, float64,
    shape (2 half_width + 1,).

    Weight k is the profile's integral over velocities ((k - 1/2) step, (k + 1/2) step), taken
    as differences of its analytic cumulative integral: exactly [0, .., 1, .., 0] while v sin i
    is below half a pixel, and continuously differentiable in v sin i (gradient zero at 0).
    With ``match_variance`` a three-tap term then gives the discrete kernel exactly the
    profile's variance (v sin i^2 times ((1 - eps) / 4 + 2 eps / 15) / (1 - eps / 3)), which
    pixel integration alone misses (by up to the whole variance below half a pixel, and by
    +1/12 pixel^2 for wide kernels); the spectrum's error is then O(pixel^4 f''''). The term
    is zero at v sin i = 0, O(v sin i^2) below half a pixel, and may leave the tap just past a
    wide kernel's edge slightly negative (-1/24 of the edge weight).
    Velocity offsets are c * (ln-lambda offset), first order (relative error < 4e-7 at 300 km/s).
    """
    vsini = jnp.asarray(vsini_kms, dtype=float)
    epsilon = jnp.asarray(epsilon, dtype=float)
    # Below half a pixel the kernel is a delta whatever vsini is; the floor keeps the division
    # (and its gradient) finite at vsini = 0 without changing any weight.
    v = jnp.maximum(vsini, 0.25 * step_kms)

    def outer(e):  # the profile's mass beyond e pixels: exactly 0 past its end
        x = e * step_kms / v
        return jnp.where(x >= 1.0, 0.0, 0.5 - _gray_half_cdf(jnp.minimum(x, 1.0), epsilon))

    weights = _symmetric_weights(outer, half_width)
    if match_variance:
        variance = (vsini / step_kms) ** 2 * _gray_second_moment(epsilon)
        weights = _match_variance(weights, variance)
    return weights


def gaussian_kernel(
    resolving_power: ArrayLike,
    step_kms: float,
    half_width: int,
    match_variance: bool = True,
) -> Float[Array, " 2*half_width+1"]:
    """Instrumental Gaussian (FWHM c / R in velocity) integrated over each pixel of a ln-lambda
    grid: weight k = Phi((k + 1/2) step / sigma) - Phi((k - 1/2) step / sigma), renormalised to
    sum 1 over the static ``half_width`` (choose it for the smallest R, see
    :meth:`ObservationSettings.gaussian_half_width`).

    ``resolving_power``: R > 0 (scalar, may be traced, differentiable). ``step_kms``: the grid's
    pixel in km/s (static). ``match_variance``: as in :func:`rotation_kernel` (exact variance
    sigma^2 on the sampled grid). Returns float64 weights, shape (2 half_width + 1,).
    """
    sigma_px = C_KMS / (jnp.asarray(resolving_power, dtype=float) * _FWHM_PER_SIGMA) / step_kms
    # Below 0.05 pixel the integrated kernel is a delta to double precision; the floor keeps
    # the division finite for R -> infinity.
    scale = math.sqrt(2.0) * jnp.maximum(sigma_px, 0.05)
    weights = _symmetric_weights(lambda e: 0.5 * erfc(e / scale), half_width)
    if match_variance:
        weights = _match_variance(weights, sigma_px**2)
    return weights


def broaden(flux: Float[ArrayLike, " n"], kernel: Float[ArrayLike, " m"]) -> Float[Array, " n"]:
    """Convolve a spectrum on a uniform (ln-lambda) grid with an odd-length symmetric kernel,
    the ends padded with their edge values; same length as ``flux``. Pure ``jnp``; pixels
    within half a kernel of either end see the padding."""
    flux = jnp.asarray(flux)
    kernel = jnp.asarray(kernel)
    half = kernel.shape[0] // 2
    return _convolve_valid(jnp.pad(flux, half, mode="edge"), kernel)


def _convolve_valid(flux, kernel):
    if kernel.shape[-1] <= _DIRECT_CONVOLUTION_TAPS:
        return jnp.convolve(flux, kernel, mode="valid")
    return fftconvolve(flux, kernel, mode="valid")


# --------------------------------------------------------------------------- pixel integration
def pixel_edges(centres_aa: ArrayLike) -> np.ndarray:
    """Bin edges in A (float64, n + 1) of pixels centred at ``centres_aa`` (n, increasing):
    midpoints between neighbours, the two ends half a step outside (as ``spectres``)."""
    c = check_wavelength(np.asarray(centres_aa), name="pixel centres")
    mid = 0.5 * (c[1:] + c[:-1])
    return np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])


def _cumulative_linear(x, f, query):
    # Integral from x[0] of the straight lines through (x, f), at ``query`` (clipped to x).
    dx = jnp.diff(x)
    q = jnp.concatenate([jnp.zeros(1, dtype=f.dtype), jnp.cumsum(0.5 * dx * (f[1:] + f[:-1]))])
    query = jnp.clip(query, x[0], x[-1])
    i = jnp.clip(jnp.searchsorted(x, query, side="right") - 1, 0, x.shape[0] - 2)
    t = (query - x[i]) / dx[i]
    return q[i] + dx[i] * t * (f[i] + 0.5 * (f[i + 1] - f[i]) * t)


def _cumulative_constant(x, f, query):
    # Integral of f as constant over bins with edges midway between x (ends half a step out).
    mid = 0.5 * (x[1:] + x[:-1])
    edges = jnp.concatenate([2.0 * x[:1] - mid[:1], mid, 2.0 * x[-1:] - mid[-1:]])
    q = jnp.concatenate([jnp.zeros(1, dtype=f.dtype), jnp.cumsum(f * jnp.diff(edges))])
    query = jnp.clip(query, edges[0], edges[-1])
    i = jnp.clip(jnp.searchsorted(edges, query, side="right") - 1, 0, x.shape[0] - 1)
    return q[i] + f[i] * (query - edges[i])


def bin_average(
    model_wavelength_aa: Float[ArrayLike, " n_model"],
    model_flux: Float[ArrayLike, " n_model"],
    lo_aa: Float[ArrayLike, " n_pix"],
    hi_aa: Float[ArrayLike, " n_pix"],
    interpolation: str = "linear",
) -> Float[Array, " n_pix"]:
    """Mean model flux over each data pixel [lo, hi] (A, float64, lo < hi): flux-conserving.

    ``interpolation`` (static): how the model is read between its pixels, "linear" (default)
    or "constant" (see :data:`MODEL_INTERPOLATIONS`). Each mean is the difference of the model's
    exact cumulative integral at the two edges over the pixel's width, so any pixel layout
    works (gaps, overlaps) and the result is differentiable in the edges (with "linear", the
    derivative is continuous). Edges beyond the model are clipped to its ends (no error can
    be raised under ``jit``; :class:`ObservationModel` checks its ranges at construction).
    Model wavelengths must be strictly increasing (at least 2). Pure ``jnp``.
    """
    x = jnp.asarray(model_wavelength_aa, dtype=float)
    f = jnp.asarray(model_flux)
    f = f.astype(jnp.result_type(f.dtype, float))
    lo = jnp.asarray(lo_aa, dtype=float)
    hi = jnp.asarray(hi_aa, dtype=float)
    if interpolation == "linear":
        cumulative = _cumulative_linear
    elif interpolation == "constant":
        cumulative = _cumulative_constant
    else:
        raise ValueError(
            f"interpolation must be one of {MODEL_INTERPOLATIONS}, got {interpolation!r}"
        )
    both = cumulative(x, f, jnp.concatenate([lo, hi]))
    n = lo.shape[0]
    return (both[n:] - both[:n]) / (hi - lo)


# --------------------------------------------------------------------------- continuum
def chebyshev_continuum(
    wavelength_aa: Float[ArrayLike, " n"],
    coeffs: Float[ArrayLike, " n_coef"],
    wl_range_aa: tuple[float, float] | Float[ArrayLike, " 2"],
) -> Float[Array, " n"]:
    """sum_k coeffs[k] T_k(x), x = wavelength mapped from ``wl_range_aa`` (lo, hi in A) onto
    [-1, 1]; as ``numpy.polynomial.chebyshev.chebval``. Degree = len(coeffs) - 1 (static).
    Pure ``jnp``, float64."""
    wl = jnp.asarray(wavelength_aa, dtype=float)
    coeffs = jnp.asarray(coeffs, dtype=float)
    lo, hi = wl_range_aa[0], wl_range_aa[1]
    x = (2.0 * wl - (lo + hi)) / (hi - lo)
    t_prev, t = jnp.ones_like(x), x
    total = coeffs[0] * t_prev
    for k in range(1, coeffs.shape[0]):  # over the few coefficients, at trace time
        total = total + coeffs[k] * t
        t_prev, t = t, 2.0 * x * t - t_prev
    return total


# --------------------------------------------------------------------------- the composition
@dataclasses.dataclass(frozen=True)
class ObservationSettings:
    """Static choices of an :class:`ObservationModel` (kernel sizes, margins, interpolation).

    Attributes:
        max_vsini_kms: largest v sin i (km/s) the rotation kernel holds (its static size).
        min_resolving_power: smallest R the instrumental kernel holds (its static size).
        max_velocity_kms: largest |topocentric velocity| (km/s; the v with doppler(v) equal to
            :func:`redshift_factor`, about |rv - berv|) the orders' model segments allow for.
        gaussian_sigmas: the instrumental kernel reaches this many sigma at the smallest R.
        interpolation: how pixel integration reads the model (:data:`MODEL_INTERPOLATIONS`).
        match_variance: give the discrete kernels their profiles' exact variance (see
            :func:`rotation_kernel`).
        log_step: ln-lambda step of the broadening grid; None: the model grid's median step.
            A model grid uniform in ln lambda to ``uniform_rtol`` (the synthetic grid's is) is
            used as it is; any other is linearly interpolated onto the ln-lambda grid.
        uniform_rtol: relative tolerance on the ln steps for "uniform".
    """

    max_vsini_kms: float = 300.0
    min_resolving_power: float = 10_000.0
    max_velocity_kms: float = 500.0
    gaussian_sigmas: float = 6.0
    interpolation: str = "linear"
    match_variance: bool = True
    log_step: float | None = None
    uniform_rtol: float = 1e-6

    def __post_init__(self):
        for name in ("max_vsini_kms", "max_velocity_kms"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
        if not self.max_velocity_kms < C_KMS:
            raise ValueError(f"max_velocity_kms must be below c, got {self.max_velocity_kms!r}")
        if not (np.isfinite(self.min_resolving_power) and self.min_resolving_power > 0):
            raise ValueError(
                f"min_resolving_power must be finite and > 0, got {self.min_resolving_power!r}"
            )
        if not self.gaussian_sigmas > 0:
            raise ValueError(f"gaussian_sigmas must be > 0, got {self.gaussian_sigmas!r}")
        if self.interpolation not in MODEL_INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {MODEL_INTERPOLATIONS}, got {self.interpolation!r}"
            )
        if self.log_step is not None and not self.log_step > 0:
            raise ValueError(f"log_step must be > 0 or None, got {self.log_step!r}")

    def rotation_half_width(self, step_kms: float) -> int:
        """Static half-width (pixels) of the rotation kernel on a grid of ``step_kms``."""
        return int(math.ceil(self.max_vsini_kms / step_kms + 0.5)) + 1

    def gaussian_half_width(self, step_kms: float) -> int:
        """Static half-width (pixels) of the instrumental kernel on a grid of ``step_kms``."""
        sigma_px = C_KMS / (self.min_resolving_power * _FWHM_PER_SIGMA) / step_kms
        return int(math.ceil(self.gaussian_sigmas * sigma_px + 0.5)) + 1


class ObservationParameters(NamedTuple):
    """What an :class:`ObservationModel` fits (a pytree; every field may be traced).

    Attributes:
        rv_kms: the star's barycentric radial velocity, km/s (scalar or (n_orders,)).
        vsini_kms: projected rotation velocity, km/s, >= 0 (scalar or (n_orders,)).
        resolving_power: instrumental R (scalar or (n_orders,)).
        continuum: Chebyshev coefficients per order, (n_orders, degree + 1) (or (degree + 1,)
            shared by all orders).
        epsilon: linear limb-darkening coefficient in [0, 1] (scalar or (n_orders,)).
    """

    rv_kms: ArrayLike
    vsini_kms: ArrayLike
    resolving_power: ArrayLike
    continuum: ArrayLike
    epsilon: ArrayLike = 0.6


def _data_pixels(wavelength_aa, edges_aa) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lo, hi, centre) in A of one order's pixels from centres and/or (n + 1) edges."""
    if edges_aa is None:
        centre = check_wavelength(np.asarray(wavelength_aa), name="data wavelength")
        edges = pixel_edges(centre)
    else:
        edges = check_wavelength(np.asarray(edges_aa), name="data pixel edges")
        centre = 0.5 * (edges[1:] + edges[:-1]) if wavelength_aa is None else wavelength_aa
        centre = np.asarray(centre, dtype=np.float64)
        if centre.shape != (edges.size - 1,):
            raise ValueError(
                f"{edges.size} pixel edges need {edges.size - 1} centres, got {centre.shape}"
            )
    if edges[0] <= 0:
        raise ValueError(f"data wavelengths must be positive, got edge {edges[0]!r}")
    return edges[:-1], edges[1:], centre


def _model_grid(model_wavelength_aa, settings: ObservationSettings):
    """(ln-lambda grid in A, ln step, whether it is the model grid itself)."""
    wl = check_wavelength(np.asarray(model_wavelength_aa), name="model wavelength")
    steps = np.diff(np.log(wl))
    step = float(np.median(steps)) if settings.log_step is None else settings.log_step
    if np.all(np.abs(steps - step) <= settings.uniform_rtol * step):
        return wl, step, True
    return log_lambda_grid(wl[0], wl[-1], step), step, False


def _segments(grid, step, orders, margin_px, settings: ObservationSettings):
    """Start pixel of each order's model segment and their common (static) length."""
    f_lo = math.sqrt((C_KMS - settings.max_velocity_kms) / (C_KMS + settings.max_velocity_kms))
    first, last = [], []
    for o, (lo, hi, _) in enumerate(orders):
        rest_lo, rest_hi = lo[0] * f_lo, hi[-1] / f_lo
        i_lo = int(np.floor(np.log(rest_lo / grid[0]) / step)) - margin_px
        i_hi = int(np.ceil(np.log(rest_hi / grid[0]) / step)) + margin_px
        if i_lo < 0 or i_hi > grid.size - 1:
            raise ValueError(
                f"order {o}: data pixels {lo[0]:.4f}-{hi[-1]:.4f} A need model wavelengths "
                f"{rest_lo * np.exp(-margin_px * step):.4f}-"
                f"{rest_hi * np.exp(margin_px * step):.4f} A (rest frame, for |velocity| <= "
                f"{settings.max_velocity_kms} km/s and "
                f"broadening margins of {margin_px} pixels), but the model covers "
                f"{grid[0]:.4f}-{grid[-1]:.4f} A"
            )
        first.append(i_lo)
        last.append(i_hi)
    length = max(b - a + 1 for a, b in zip(first, last, strict=True))
    return np.array([min(a, grid.size - length) for a in first], dtype=np.int32), length


def _pad(rows: Sequence[np.ndarray], n: int) -> np.ndarray:
    # Padding repeats each order's first value, so padded pixels stay finite and in range.
    return np.stack([np.concatenate([r, np.full(n - r.size, r[0])]) for r in rows])


class ObservationModel(eqx.Module):
    """Static plan of the observation of a rest-frame model spectrum in one or more orders.

    Build with :meth:`build`; call with the model flux (on the model wavelengths the plan was
    built for) and :class:`ObservationParameters`; the call is pure, ``jax.jit``-able (e.g.
    ``eqx.filter_jit``), differentiable in the flux and every parameter, and evaluates all
    orders at once (``vmap``), each on its own segment of the ln-lambda model grid:
    rotation and instrument kernels (combined into one convolution) -> Doppler shift of the
    data's pixel edges into the rest frame -> :func:`bin_average` -> Chebyshev continuum.

    Attributes:
        model_wavelength: the model's wavelengths in A, float64 (n_model,).
        segment_wavelength: each order's ln-lambda model segment, rest frame, A, float64
            (n_orders, segment_length).
        reference: (n_orders,) each segment's first wavelength in A: pixel integration works in
            offsets from it, so that the Doppler-shifted edges keep ~1e-14 A precision instead
            of the 1e-12 A spacing of float64 numbers near 10,000 A.
        segment_offset: ``segment_wavelength - reference`` in A, float64.
        segment_start: int32 (n_orders,): where each segment starts in the ln-lambda grid.
        pixel_lo_offset, pixel_hi_offset: observed-frame pixel edges in A less ``reference``,
            float64 (n_orders, n_max); padded pixels repeat the order's first pixel.
        pixel_centre: observed-frame pixel centres in A, float64 (n_orders, n_max).
        mask: bool (n_orders, n_max): real (True) or padded pixels.
        order_range: (n_orders, 2) wavelengths in A mapped to [-1, 1] for the continuum
            (each order's outer pixel edges).
        log_step: ln-lambda step of the model grid (static); ``step_kms`` = c * log_step.
        uniform: whether the model grid is the ln-lambda grid (else the flux is interpolated).
        rotation_half_width, gaussian_half_width: static kernel half-widths in pixels.
        n_pixels: pixels per order (static).
        settings: the :class:`ObservationSettings` (static).
    """

    model_wavelength: Float[Array, " n_model"]
    segment_wavelength: Float[Array, "n_orders n_segment"]
    reference: Float[Array, " n_orders"]
    segment_offset: Float[Array, "n_orders n_segment"]
    segment_start: Int[Array, " n_orders"]
    pixel_lo_offset: Float[Array, "n_orders n_max"]
    pixel_hi_offset: Float[Array, "n_orders n_max"]
    pixel_centre: Float[Array, "n_orders n_max"]
    mask: Bool[Array, "n_orders n_max"]
    order_range: Float[Array, "n_orders 2"]
    log_step: float = eqx.field(static=True)
    uniform: bool = eqx.field(static=True)
    rotation_half_width: int = eqx.field(static=True)
    gaussian_half_width: int = eqx.field(static=True)
    n_pixels: tuple[int, ...] = eqx.field(static=True)
    settings: ObservationSettings = eqx.field(static=True)

    @classmethod
    def build(
        cls,
        model_wavelength_aa: ArrayLike,
        data_wavelength_aa: Sequence[ArrayLike | None] | ArrayLike | None,
        *,
        data_edges_aa: Sequence[ArrayLike] | None = None,
        settings: ObservationSettings | None = None,
    ) -> ObservationModel:
        """Plan the observation (eager NumPy; raises ``ValueError`` on bad input).

        ``model_wavelength_aa``: the model's rest-frame vacuum wavelengths in A, strictly
        increasing (the generator's ``wavelength``). ``data_wavelength_aa``: one order's pixel
        centres (A, observed frame, strictly increasing), or a sequence of them or a 2-D array,
        one per order (orders may differ in length); their edges are then the midpoints.
        ``data_edges_aa``: instead or as well, each order's n + 1 pixel edges in A (centres
        then default to the edges' midpoints). Every order's pixels, moved
        into the rest frame by any velocity up to ``settings.max_velocity_kms`` and widened by
        the kernels, must lie inside the model.
        """
        settings = settings or ObservationSettings()
        if isinstance(data_wavelength_aa, np.ndarray | jax.Array) and data_wavelength_aa.ndim == 2:
            data_wavelength_aa = list(np.asarray(data_wavelength_aa))  # (n_orders, n_pix)
        if data_edges_aa is not None and not isinstance(data_edges_aa, list | tuple):
            data_edges_aa = [data_edges_aa]
        if data_wavelength_aa is None or not isinstance(data_wavelength_aa, list | tuple):
            n = 1 if data_edges_aa is None else len(data_edges_aa)
            data_wavelength_aa = [data_wavelength_aa] * n
        edges = [None] * len(data_wavelength_aa) if data_edges_aa is None else data_edges_aa
        if len(edges) != len(data_wavelength_aa) or not edges:
            raise ValueError(
                f"got {len(data_wavelength_aa)} orders of centres and {len(edges)} of edges"
            )
        orders = [_data_pixels(c, e) for c, e in zip(data_wavelength_aa, edges, strict=True)]
        model_wl = check_wavelength(np.asarray(model_wavelength_aa), name="model wavelength")
        grid, step, uniform = _model_grid(model_wl, settings)
        step_kms = C_KMS * step
        rot = settings.rotation_half_width(step_kms)
        gau = settings.gaussian_half_width(step_kms)
        start, length = _segments(grid, step, orders, rot + gau + 2, settings)
        n_max = max(o[0].size for o in orders)
        segment = np.stack([grid[s : s + length] for s in start])
        reference = segment[:, :1]
        return cls(
            model_wavelength=jnp.asarray(model_wl),
            segment_wavelength=jnp.asarray(segment),
            reference=jnp.asarray(reference[:, 0]),
            segment_offset=jnp.asarray(segment - reference),
            segment_start=jnp.asarray(start),
            pixel_lo_offset=jnp.asarray(_pad([o[0] for o in orders], n_max) - reference),
            pixel_hi_offset=jnp.asarray(_pad([o[1] for o in orders], n_max) - reference),
            pixel_centre=jnp.asarray(_pad([o[2] for o in orders], n_max)),
            mask=jnp.asarray(np.arange(n_max) < np.array([[o[0].size] for o in orders])),
            order_range=jnp.asarray([[o[0][0], o[1][-1]] for o in orders]),
            log_step=step,
            uniform=uniform,
            rotation_half_width=rot,
            gaussian_half_width=gau,
            n_pixels=tuple(o[0].size for o in orders),
            settings=settings,
        )

    @property
    def n_orders(self) -> int:
        return len(self.n_pixels)

    @property
    def step_kms(self) -> float:
        """The ln-lambda grid's pixel in km/s."""
        return C_KMS * self.log_step

    def check_parameters(self, model_flux, params: ObservationParameters, berv_kms) -> None:
        """Raise ``ValueError`` for a model flux of the wrong shape and for out-of-range
        concrete parameters (traced ones pass unchecked)."""
        if np.shape(model_flux) != self.model_wavelength.shape:
            raise ValueError(
                f"model_flux has shape {np.shape(model_flux)}, the model wavelengths "
                f"{self.model_wavelength.shape}"
            )
        s = self.settings
        limits = {
            "vsini_kms": (params.vsini_kms, 0.0, s.max_vsini_kms),
            "resolving_power": (params.resolving_power, s.min_resolving_power, np.inf),
            "epsilon": (params.epsilon, 0.0, 1.0),
        }
        for name, (value, lo, hi) in limits.items():
            if _is_tracer(value):
                continue
            v = np.asarray(value, dtype=float)
            if not (np.all(np.isfinite(v) | (v == hi)) and np.all((v >= lo) & (v <= hi))):
                raise ValueError(
                    f"{name} must lie in [{lo}, {hi}] (see ObservationSettings), got {value!r}"
                )
        if not (_is_tracer(params.rv_kms) or _is_tracer(berv_kms)):
            b = np.asarray(params.rv_kms, dtype=float) / C_KMS
            factor = np.sqrt((1 + b) / (1 - b)) / (1 + np.asarray(berv_kms, dtype=float) / C_KMS)
            velocity = C_KMS * (factor**2 - 1) / (factor**2 + 1)
            if not np.all(np.abs(velocity) <= s.max_velocity_kms):
                raise ValueError(
                    f"topocentric velocity {velocity} km/s (from rv_kms={params.rv_kms!r}, "
                    f"berv_kms={berv_kms!r}) exceeds max_velocity_kms={s.max_velocity_kms}"
                )
        coef_shape = np.shape(params.continuum)
        if len(coef_shape) not in (1, 2) or (
            len(coef_shape) == 2 and coef_shape[0] != self.n_orders
        ):
            raise ValueError(
                f"continuum must have shape (n_coef,) or ({self.n_orders}, n_coef), "
                f"got {coef_shape}"
            )

    def _segment_flux(self, model_flux):
        if self.uniform:
            take = lambda s: jax.lax.dynamic_slice(model_flux, (s,), (self.segment_length,))
            return jax.vmap(take)(self.segment_start)
        return jax.vmap(lambda wl: to_log_lambda(self.model_wavelength, model_flux, wl))(
            self.segment_wavelength
        )

    @property
    def segment_length(self) -> int:
        return self.segment_wavelength.shape[1]

    def _observe_order(self, flux, offset, reference, lo, hi, centre, order_range, p):
        step = self.step_kms
        match = self.settings.match_variance
        kernel = jnp.convolve(
            rotation_kernel(p.vsini_kms, p.epsilon, step, self.rotation_half_width, match),
            gaussian_kernel(p.resolving_power, step, self.gaussian_half_width, match),
            mode="full",
        )
        half = kernel.shape[0] // 2
        broadened = _convolve_valid(flux, kernel)
        # Rest-frame edges as offsets from the reference: lambda / F - ref =
        # (lambda - ref + ref (1 - F)) / F, with 1 - F = -expm1(ln F) to full precision.
        log_factor = _log_redshift(p.rv_kms, p.berv_kms)
        factor = jnp.exp(log_factor)
        shift = -reference * jnp.expm1(log_factor)
        mean = bin_average(
            offset[half : offset.shape[0] - half],
            broadened,
            (lo + shift) / factor,
            (hi + shift) / factor,
            self.settings.interpolation,
        )
        return mean * chebyshev_continuum(centre, p.continuum, order_range)

    def __call__(
        self,
        model_flux: Float[ArrayLike, " n_model"],
        params: ObservationParameters,
        berv_kms: ArrayLike = 0.0,
    ) -> Float[Array, "n_orders n_max"]:
        """Model flux in every data pixel, (n_orders, n_max) float64; padded pixels are 0.

        ``model_flux``: rest-frame normalised flux on :attr:`model_wavelength` (n_model,).
        ``params``: :class:`ObservationParameters`. ``berv_kms``: barycentric correction in
        km/s, scalar or (n_orders,) (see :func:`berv_from_header`). Concrete inputs are
        checked (``ValueError``); traced ones cannot be, and a v sin i or R beyond the
        settings' limits then gives truncated kernels.
        """
        self.check_parameters(model_flux, params, berv_kms)
        # Arrays, not Python floats, so that new parameter values reuse the compiled program.
        params = jax.tree.map(lambda x: jnp.asarray(x, dtype=float), params)
        return _evaluate(self, jnp.asarray(model_flux), params, jnp.asarray(berv_kms, dtype=float))

    def unpad(self, values: Float[ArrayLike, "n_orders n_max"]) -> list[np.ndarray]:
        """Per-order NumPy arrays of an (n_orders, n_max) result, padding dropped."""
        values = np.asarray(values)
        return [values[o, :n] for o, n in enumerate(self.n_pixels)]


class _OrderParameters(NamedTuple):
    rv_kms: Array
    berv_kms: Array
    vsini_kms: Array
    resolving_power: Array
    epsilon: Array
    continuum: Array


@eqx.filter_jit
def _evaluate(model: ObservationModel, model_flux, params: ObservationParameters, berv_kms):
    # Jitted so that an eager call compiles once instead of dispatching op by op.
    n = model.n_orders
    per_order = lambda x: jnp.broadcast_to(jnp.asarray(x, dtype=float), (n,))
    continuum = jnp.asarray(params.continuum, dtype=float)
    per = _OrderParameters(
        rv_kms=per_order(params.rv_kms),
        berv_kms=per_order(berv_kms),
        vsini_kms=per_order(params.vsini_kms),
        resolving_power=per_order(params.resolving_power),
        epsilon=per_order(params.epsilon),
        continuum=jnp.broadcast_to(continuum, (n, continuum.shape[-1])),
    )
    out = jax.vmap(model._observe_order)(
        model._segment_flux(model_flux),
        model.segment_offset,
        model.reference,
        model.pixel_lo_offset,
        model.pixel_hi_offset,
        model.pixel_centre,
        model.order_range,
        per,
    )
    return jnp.where(model.mask, out, 0.0)


def observe(
    model_wavelength_aa: ArrayLike,
    model_flux: ArrayLike,
    data_wavelength_aa: ArrayLike,
    params: ObservationParameters,
    berv_kms: float = 0.0,
    *,
    settings: ObservationSettings | None = None,
) -> np.ndarray:
    """One order's model flux at its data pixels (eager; float64, (n_pix,)).

    Builds an :class:`ObservationModel` for the pixels centred at ``data_wavelength_aa`` (A,
    observed frame) and evaluates it; build the model once and call it (under ``jit``) to fit.
    """
    model = ObservationModel.build(model_wavelength_aa, data_wavelength_aa, settings=settings)
    return model.unpad(model(model_flux, params, berv_kms))[0]
