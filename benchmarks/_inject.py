"""Injected observations for fit tests and benchmarks, made without jblase's observation model.

A rest-frame spectrum on a ln-uniform grid is broadened by Gray's rotation profile (sampled on
a grid ``oversample`` times finer than the model's, read between its pixels by a cubic spline,
and convolved with NumPy), then by a
Gaussian of FWHM c / R, shifted by the relativistic Doppler factor, averaged over each data
pixel (trapezoid integration of the shifted spectrum between the pixel's edges), multiplied by
a smooth continuum and given Gaussian noise. Every step is plain NumPy, independent of
:mod:`jblase.observe`, so a fit that recovers the truth checks the observation model too.
"""

from __future__ import annotations

import numpy as np
from scipy.interpolate import CubicSpline

C_KMS = 299_792.458


def gray_profile(v_kms: np.ndarray, vsini_kms: float, epsilon: float) -> np.ndarray:
    """Gray's rotational broadening profile G(v) (normalised to unit area), 0 beyond vsini."""
    x = v_kms / vsini_kms
    inside = np.abs(x) < 1
    s = np.sqrt(np.clip(1 - x * x, 0, None))
    g = (2 * (1 - epsilon) * s + 0.5 * np.pi * epsilon * s * s) / (
        np.pi * vsini_kms * (1 - epsilon / 3)
    )
    return np.where(inside, g, 0.0)


def broaden(
    log_wl: np.ndarray,
    flux: np.ndarray,
    vsini_kms: float,
    resolving_power: float,
    epsilon: float = 0.6,
    oversample: int = 8,
) -> np.ndarray:
    """Rotation then instrument on a ln-uniform grid; returns flux on the same grid."""
    step_kms = C_KMS * (log_wl[1] - log_wl[0])
    fine_step = step_kms / oversample
    fine_x = np.arange(flux.size * oversample) * fine_step / step_kms
    # A cubic spline, not straight lines: a piecewise-linear reading of the samples would add
    # its own 1/6 pixel^2 of variance, which a fit would read as extra v sin i.
    fine = CubicSpline(np.arange(flux.size), flux)(fine_x)
    sigma = C_KMS / resolving_power / (2 * np.sqrt(2 * np.log(2)))
    half = int(np.ceil((vsini_kms + 8 * sigma) / fine_step)) + 1
    v = np.arange(-half, half + 1) * fine_step
    kernel = np.exp(-0.5 * (v / sigma) ** 2)
    if vsini_kms > 0:
        kernel = np.convolve(kernel, gray_profile(v, vsini_kms, epsilon), mode="same")
    kernel /= kernel.sum()
    padded = np.pad(fine, half, mode="edge")
    out = np.convolve(padded, kernel, mode="valid")
    return out[::oversample]


def bin_to_pixels(wl: np.ndarray, flux: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Mean of the piecewise-linear spectrum over each [edges[i], edges[i + 1]]."""
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (flux[1:] + flux[:-1]) * np.diff(wl))])

    def integral(x):
        i = np.clip(np.searchsorted(wl, x) - 1, 0, wl.size - 2)
        t = x - wl[i]
        slope = (flux[i + 1] - flux[i]) / (wl[i + 1] - wl[i])
        return cum[i] + flux[i] * t + 0.5 * slope * t * t

    return (integral(edges[1:]) - integral(edges[:-1])) / np.diff(edges)


def data_pixels(lo_aa: float, hi_aa: float, resolving_power: float, per_element: float):
    """(centres, edges) of a ln-uniform data grid with ``per_element`` pixels per c / R."""
    step = 1.0 / (resolving_power * per_element)
    edges = np.exp(np.arange(np.log(lo_aa), np.log(hi_aa), step))
    return 0.5 * (edges[1:] + edges[:-1]), edges


def inject(
    model_wl: np.ndarray,
    model_flux: np.ndarray,
    *,
    rv_kms: float,
    vsini_kms: float,
    resolving_power: float,
    snr: float | None,
    wl_range: tuple[float, float],
    per_element: float = 2.5,
    continuum: tuple[float, ...] = (1.0, 0.03, -0.02),
    epsilon: float = 0.6,
    rng: np.random.Generator | None = None,
):
    """``(centres, flux, uncertainty)`` of one observed order of a rest-frame model spectrum
    (ln-uniform ``model_wl``): barycentric frame (no BERV), Chebyshev continuum over the order,
    Gaussian noise of sigma = continuum / snr (None: noise-free, unit-S/N-free uncertainty 1e-3).
    """
    log_wl = np.log(model_wl)
    broadened = broaden(log_wl, model_flux, vsini_kms, resolving_power, epsilon)
    b = rv_kms / C_KMS
    shifted_wl = model_wl * np.sqrt((1 + b) / (1 - b))
    centres, edges = data_pixels(*wl_range, resolving_power, per_element)
    flux = bin_to_pixels(shifted_wl, broadened, edges)
    x = (2 * centres - (edges[0] + edges[-1])) / (edges[-1] - edges[0])
    cont = np.polynomial.chebyshev.chebval(x, continuum)
    flux = flux * cont
    if snr is None:
        return centres, flux, np.full_like(flux, 1e-3)
    sigma = cont / snr
    rng = rng or np.random.default_rng(0)
    return centres, flux + sigma * rng.standard_normal(flux.size), sigma
