"""Line detection (pipeline step 2): find absorption lines and their initial Voigt guesses.

``detect_lines`` follows DESIGN.md step 2 and the original code exactly: ``find_peaks`` on the
negated normalised flux (distance 4, the given prominence), prominences and FWHM widths, then
ln a = ln(0.14 * prominence), w = FWHM_pixels * dlambda / 2.355 / sqrt(2), ln sigma = ln(1.28 w),
ln gamma = ln(1.52 w). Lines within 30 A of either end are dropped. The pre-optimisation centre,
rounded to 0.01 A, becomes the line's identity across the grid. NumPy/SciPy, float64.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import find_peaks, peak_prominences, peak_widths

from jblase._checks import check_spectrum
from jblase.linelist import LineList

__all__ = ["EDGE_BUFFER_AA", "LOSS_BUFFER_AA", "active_region", "detect_lines"]

#: Lines closer than this to either end of the spectrum are not kept (A).
EDGE_BUFFER_AA = 30.0
#: The cloning loss uses only pixels more than this inside either end (A).
LOSS_BUFFER_AA = 60.0

AMPLITUDE_FACTOR = 0.14
SIGMA_FACTOR = 1.28
GAMMA_FACTOR = 1.52
_FWHM_PER_SIGMA = 2.355


def active_region(wavelength_aa: np.ndarray, buffer_aa: float = LOSS_BUFFER_AA) -> np.ndarray:
    """Bool mask (n_pix,) of pixels more than ``buffer_aa`` inside either end."""
    wl = np.asarray(wavelength_aa)
    return (wl > wl[0] + buffer_aa) & (wl < wl[-1] - buffer_aa)


def detect_lines(
    wavelength_aa: np.ndarray,
    normalized_flux: np.ndarray,
    prominence: float = 0.005,
    edge_buffer_aa: float = EDGE_BUFFER_AA,
) -> LineList:
    """Detect absorption lines and return their initial guesses as a :class:`LineList`.

    Args:
        wavelength_aa: vacuum wavelengths in A, strictly increasing (n_pix,).
        normalized_flux: continuum-normalised flux (n_pix,), finite.
        prominence: minimum line prominence in normalised flux (0.005 in the paper).
        edge_buffer_aa: lines within this distance of either end are dropped (A).
    """
    if not prominence > 0:
        raise ValueError(f"prominence must be positive, got {prominence!r}")
    wl, flux = check_spectrum(wavelength_aa, normalized_flux, name="normalized_flux")
    peaks, _ = find_peaks(-flux, distance=4, prominence=prominence)
    prominences = peak_prominences(-flux, peaks)
    fwhm_pixels = peak_widths(-flux, peaks, prominence_data=prominences)[0]
    keep = (wl[peaks] > wl[0] + edge_buffer_aa) & (wl[peaks] < wl[-1] - edge_buffer_aa)
    peaks, fwhm_pixels, prom = peaks[keep], fwhm_pixels[keep], prominences[0][keep]
    pixel_step = np.diff(wl)[np.minimum(peaks, wl.size - 2)]
    width = fwhm_pixels * pixel_step / _FWHM_PER_SIGMA / np.sqrt(2.0)
    center = wl[peaks]
    return LineList(
        center=center,
        ln_amplitude=np.log(AMPLITUDE_FACTOR * prom),
        ln_sigma=np.log(SIGMA_FACTOR * width),
        ln_gamma=np.log(GAMMA_FACTOR * width),
        identity_center=np.round(center, 2),
    )
