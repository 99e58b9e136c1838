"""Preprocessing (pipeline step 1): divide a raw grid spectrum by its blackbody and continuum.

``normalize`` follows DESIGN.md step 1: S_bar = S / (B * Q), with B the Planck function at the
spectrum's Teff and Q a degree-4 polynomial least-squares fit through the local maxima of S / B
that are at least 5001 pixels apart. NumPy/SciPy, float64.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.signal import find_peaks

from jblase._checks import check_spectrum

__all__ = ["blackbody", "continuum_fit", "normalize"]

_H = 6.62607015e-27  # erg s
_C = 2.99792458e10  # cm / s
_K_B = 1.380649e-16  # erg / K

CONTINUUM_PEAK_DISTANCE = 5001
CONTINUUM_DEGREE = 4


def blackbody(wavelength_aa: np.ndarray, teff: float) -> np.ndarray:
    """Planck B_lambda(T) in erg / s / cm^2 / cm / sr at vacuum wavelengths in A, shape (n_pix,)."""
    if not np.isfinite(teff) or teff <= 0:
        raise ValueError(f"teff must be a positive temperature in K, got {teff!r}")
    lam_cm = np.asarray(wavelength_aa, dtype=np.float64) * 1e-8
    return 2.0 * _H * _C**2 / lam_cm**5 / np.expm1(_H * _C / (lam_cm * _K_B * teff))


def continuum_fit(
    wavelength_aa: np.ndarray,
    flux: np.ndarray,
    distance: int = CONTINUUM_PEAK_DISTANCE,
    degree: int = CONTINUUM_DEGREE,
) -> np.ndarray:
    """Polynomial through the local maxima of ``flux`` at least ``distance`` pixels apart.

    The fit is the original code's ``numpy.vander(x, degree + 1)`` least squares, done on
    wavelengths scaled to [-1, 1] (the same polynomial, better conditioned). When fewer than
    ``degree + 1`` maxima exist (a short spectrum), the degree drops to (maxima - 1) with a
    warning. Returns the continuum on every pixel, shape (n_pix,).
    """
    peaks, _ = find_peaks(flux, distance=distance)
    if peaks.size == 0:
        peaks = np.array([int(np.argmax(flux))])
    if peaks.size < degree + 1:
        warnings.warn(
            f"only {peaks.size} continuum maxima {distance} pixels apart in a {flux.size}-pixel "
            f"spectrum; fitting degree {peaks.size - 1} instead of {degree}",
            stacklevel=2,
        )
        degree = peaks.size - 1
    lo, hi = wavelength_aa[0], wavelength_aa[-1]
    x = (2.0 * wavelength_aa - (lo + hi)) / (hi - lo)
    coeffs, *_ = np.linalg.lstsq(np.vander(x[peaks], degree + 1), flux[peaks], rcond=None)
    return np.vander(x, degree + 1) @ coeffs


def normalize(wavelength_aa: np.ndarray, flux: np.ndarray, teff: float) -> np.ndarray:
    """Blackbody- and continuum-normalised flux, float64 (n_pix,).

    Args:
        wavelength_aa: vacuum wavelengths in A, strictly increasing (n_pix,).
        flux: raw flux (any units proportional to erg/s/cm^2/cm), finite, >= 0 (n_pix,).
        teff: effective temperature in K for the blackbody.
    """
    wl, fl = check_spectrum(wavelength_aa, flux)
    bb = blackbody(wl, teff)
    ratio = fl / (bb / bb.max())
    continuum = continuum_fit(wl, ratio)
    if not (continuum > 0).all():
        raise ValueError(
            "continuum fit is not positive everywhere; the spectrum may be too short or not a "
            "stellar spectrum with a continuum"
        )
    return ratio / continuum
