"""The paper's reconstruction design in NumPy/SciPy: the baseline jblase is measured against.

DESIGN.md section 4: "a Python list of one scipy ``RegularGridInterpolator`` per line,
evaluated line by line, feeding a NumPy sparse pseudo-Voigt". Written from the paper's
description, not from jblase:

1. :meth:`PaperBaseline.from_manifold` builds ONE ``RegularGridInterpolator(axes,
   values (n_teff, n_logg, n_feh, 4), method="linear")`` per line, from its own float64 copy of
   that line's (centre - identity [A], ln a, ln sigma [ln A], ln gamma [ln A]) and keeps them
   in a Python list (128,723 of them in the paper, 13.2 GB pickled). Interpolation is in ln a,
   like the paper, so it matches ``Generator.from_manifold(..., amplitude_interpolation="log")``.
2. Serial mode (:meth:`~PaperBaseline.spectrum`): loop over the list, each interpolator at one
   point. Batch mode (:meth:`~PaperBaseline.spectra`): loop over the list, each interpolator at
   all n points at once.
3. Drop lines whose interpolated ln a < -100, then synthesise ONE spectrum at a time with a
   NumPy sparse pseudo-Voigt (paper eq. 2, or the original code's ``"blase"`` variant): each
   line touches ``wing_cut`` pixels ``nearest_pixel(centre) + arange(wing_cut) -
   wing_cut // 2`` (pixels beyond either end dropped), ``a V`` is clipped to [0, 1 - 1e-9],
   ``ln flux = sum ln(1 - a V)`` is scattered with ``np.bincount``, ``flux = exp(ln flux)``
   with non-finite pixels set to 1.

Parameters outside the grid raise ``ValueError`` (scipy's ``bounds_error=True``).
:func:`equivalent_generator` builds the jblase generator that does the same work.
"""

from __future__ import annotations

import inspect

import numpy as np
from scipy.interpolate import RegularGridInterpolator

__all__ = [
    "LN_AMPLITUDE_CUTOFF",
    "MAX_ABSORPTION",
    "PaperBaseline",
    "equivalent_generator",
    "ln_flux_numpy",
    "pseudo_voigt_components",
]

LN_AMPLITUDE_CUTOFF = -100.0
MAX_ABSORPTION = 1.0 - 1e-9
#: Window elements (lines x pixels) per vectorised block: bounds the temporaries to ~16 MB each.
_ELEMENTS_PER_BLOCK = 1 << 21
_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


def pseudo_voigt_components(sigma, gamma, profile: str = "pseudo_voigt"):
    """``(eta, lorentz_hwhm, gauss_sigma)`` of a pseudo-Voigt, NumPy float64 arrays.

    ``"pseudo_voigt"`` is the paper's eq. 2 (Ida et al. 2000): f_G = 2 sqrt(2 ln 2) sigma,
    f_L = 2 gamma, f = (f_G^5 + 2.69269 f_G^4 f_L + 2.42843 f_G^3 f_L^2 + 4.47163 f_G^2 f_L^3
    + 0.07842 f_G f_L^4 + f_L^5)^(1/5), eta = 1.36603 r - 0.47719 r^2 + 0.11116 r^3 with
    r = f_L / f; the Lorentzian and Gaussian share the FWHM f. ``"blase"`` (the original code)
    keeps the same eta but uses HWHM gamma and standard deviation sigma. Widths in A.
    """
    sigma = np.asarray(sigma, dtype=np.float64)
    gamma = np.asarray(gamma, dtype=np.float64)
    f_g = _FWHM_PER_SIGMA * sigma
    f_l = 2.0 * gamma
    f = (
        f_g**5
        + 2.69269 * f_g**4 * f_l
        + 2.42843 * f_g**3 * f_l**2
        + 4.47163 * f_g**2 * f_l**3
        + 0.07842 * f_g * f_l**4
        + f_l**5
    ) ** 0.2
    r = f_l / f
    eta = 1.36603 * r - 0.47719 * r**2 + 0.11116 * r**3
    if profile == "pseudo_voigt":
        return eta, 0.5 * f, f / _FWHM_PER_SIGMA
    if profile == "blase":
        return eta, gamma, sigma
    raise ValueError(f"unknown profile {profile!r}; choose 'pseudo_voigt' or 'blase'")


def ln_flux_numpy(
    wavelength_aa: np.ndarray,
    center: np.ndarray,
    ln_amplitude: np.ndarray,
    ln_sigma: np.ndarray,
    ln_gamma: np.ndarray,
    *,
    wing_cut: int,
    profile: str = "pseudo_voigt",
) -> np.ndarray:
    """ln flux (n_pix,) of ONE spectrum: sum over lines of ln(1 - clip(a V, 0, 1 - 1e-9)).

    Args:
        wavelength_aa: increasing wavelengths in A, float64 (n_pix,).
        center, ln_amplitude, ln_sigma, ln_gamma: per line (n_lines,): centre (A), ln a,
            ln sigma (ln A), ln gamma (ln A). Every line given is synthesised.
        wing_cut: window width in pixels, centred on the pixel nearest the centre.
        profile: ``"pseudo_voigt"`` or ``"blase"`` (:func:`pseudo_voigt_components`).

    Vectorised over lines x window in blocks of about 2M elements, scattered with bincount.
    """
    wl = np.asarray(wavelength_aa, dtype=np.float64)
    n_pix = wl.size
    total = np.zeros(n_pix)
    n_lines = len(center)
    if n_lines == 0:
        return total
    eta, hwhm, gsig = pseudo_voigt_components(np.exp(ln_sigma), np.exp(ln_gamma), profile)
    amplitude = np.exp(np.asarray(ln_amplitude, dtype=np.float64))
    c_l = amplitude * eta * hwhm / np.pi
    c_g = amplitude * (1.0 - eta) / (np.sqrt(2.0 * np.pi) * gsig)
    k_g = 0.5 / gsig**2
    h2 = hwhm * hwhm
    center = np.asarray(center, dtype=np.float64)
    right = np.clip(np.searchsorted(wl, center), 1, wl.size - 1)
    nearest = np.where(center - wl[right - 1] <= wl[right] - center, right - 1, right)
    window = np.arange(wing_cut) - wing_cut // 2
    rows = max(1, _ELEMENTS_PER_BLOCK // wing_cut)
    for s in range(0, n_lines, rows):
        b = slice(s, s + rows)
        idx = nearest[b, None] + window
        outside = (idx < 0) | (idx >= n_pix)
        np.clip(idx, 0, n_pix - 1, out=idx)
        x2 = wl[idx]
        x2 -= center[b, None]
        x2 *= x2
        gauss = x2 * -k_g[b, None]
        np.exp(gauss, out=gauss)
        gauss *= c_g[b, None]
        x2 += h2[b, None]
        absorption = np.divide(c_l[b, None], x2, out=x2)
        absorption += gauss
        np.clip(absorption, 0.0, MAX_ABSORPTION, out=absorption)
        np.negative(absorption, out=absorption)
        contrib = np.log1p(absorption, out=absorption)
        contrib[outside] = 0.0
        total += np.bincount(idx.ravel(), weights=contrib.ravel(), minlength=n_pix)
    return total


class PaperBaseline:
    """The paper's generator: a list of per-line scipy interpolators + a NumPy synthesiser.

    Attributes:
        interpolators: list of ``RegularGridInterpolator``, one per line, each over
            (teff [K], logg [dex], feh [dex]) returning (offset [A], ln a, ln sigma, ln gamma).
        identity_center: line identities in A, float64 (n_lines,).
        wavelength: output wavelengths in A, float64 (n_pix,).
        wing_cut, profile: forward-model settings.
    """

    def __init__(self, interpolators, identity_center, wavelength, *, wing_cut, profile):
        self.interpolators = list(interpolators)
        self.identity_center = np.asarray(identity_center, dtype=np.float64)
        self.wavelength = np.asarray(wavelength, dtype=np.float64)
        self.wing_cut = int(wing_cut)
        self.profile = str(profile)
        if len(self.interpolators) != self.identity_center.size:
            raise ValueError(
                f"{len(self.interpolators)} interpolators for {self.identity_center.size} lines"
            )
        pseudo_voigt_components(1.0, 1.0, self.profile)  # validates the profile name

    @classmethod
    def from_manifold(
        cls, manifold, wing_cut: int | None = None, profile: str | None = None
    ) -> PaperBaseline:
        """One ``RegularGridInterpolator(method="linear")`` per line of ``manifold``.

        ``wing_cut`` and ``profile`` default to the manifold's clone settings (6000 and
        ``"pseudo_voigt"`` when absent), like ``Generator.from_manifold``.
        """
        settings = dict(manifold.settings)
        axes = tuple(np.asarray(a, dtype=np.float64) for a in manifold.axes)
        params = np.asarray(manifold.params)
        interpolators = [
            RegularGridInterpolator(axes, np.array(params[j], dtype=np.float64), method="linear")
            for j in range(params.shape[0])
        ]
        return cls(
            interpolators,
            manifold.identity_center,
            manifold.wavelength,
            wing_cut=wing_cut or int(settings.get("wing_cut", 6000)),
            profile=profile or settings.get("profile", "pseudo_voigt"),
        )

    @property
    def n_lines(self) -> int:
        return len(self.interpolators)

    def evaluate_serial(self, params) -> np.ndarray:
        """Every line's (offset, ln a, ln sigma, ln gamma) at one point (3,): (n_lines, 4)."""
        point = np.asarray(params, dtype=np.float64).reshape(1, 3)
        return np.concatenate([interp(point) for interp in self.interpolators])

    def evaluate_batch(self, params) -> np.ndarray:
        """Every line at n points (n, 3) -> (n, n_lines, 4); each interpolator called once."""
        points = np.asarray(params, dtype=np.float64).reshape(-1, 3)
        return np.stack([interp(points) for interp in self.interpolators], axis=1)

    def synthesize(self, line_values) -> np.ndarray:
        """Flux (n_pix,) of one spectrum from interpolated line values (n_lines, 4)."""
        v = np.asarray(line_values, dtype=np.float64)
        keep = v[:, 1] >= LN_AMPLITUDE_CUTOFF
        v = v[keep]
        lnf = ln_flux_numpy(
            self.wavelength,
            self.identity_center[keep] + v[:, 0],
            v[:, 1],
            v[:, 2],
            v[:, 3],
            wing_cut=self.wing_cut,
            profile=self.profile,
        )
        flux = np.exp(lnf)
        flux[~np.isfinite(flux)] = 1.0
        return flux

    def spectrum(self, params) -> np.ndarray:
        """Serial mode: flux (n_pix,) at ``params = (teff [K], logg [dex], feh [dex])``."""
        return self.synthesize(self.evaluate_serial(params))

    def spectra(self, params_batch) -> np.ndarray:
        """Batch mode: fluxes (n, n_pix) for ``params_batch`` (n, 3), one spectrum at a time
        after one batched interpolation per line."""
        values = self.evaluate_batch(params_batch)
        return np.stack([self.synthesize(v) for v in values])


def equivalent_generator(manifold, compute_dtype: str = "float64", **kwargs):
    """The ``jblase.Generator`` that does this baseline's work on ``manifold``.

    Interpolation in ln a (``amplitude_interpolation="log"``) and, where the generator has
    adaptive windows, ``flux_tolerance=None`` so every line gets the full ``wing_cut`` window
    like the paper. Extra keyword arguments go to ``Generator.from_manifold``.
    """
    from jblase import Generator

    if "flux_tolerance" in inspect.signature(Generator.from_manifold).parameters:
        kwargs.setdefault("flux_tolerance", None)
    return Generator.from_manifold(
        manifold, amplitude_interpolation="log", compute_dtype=compute_dtype, **kwargs
    )
