"""Line profiles: unit-area Gaussian, Lorentzian, pseudo-Voigt and the exact Voigt.

Used by the forward model (clone, generator). All JAX functions are pure, elementwise and
broadcast over their arguments; ``x`` is the offset from line centre and the widths share its
unit (A in jblase). They run in the dtype of their inputs (float32 or float64).

Two pseudo-Voigt variants exist (see DESIGN.md):

* ``"pseudo_voigt"`` (default) -- the paper's eq. 2 (Ida et al. 2000): a Lorentzian and a Gaussian
  that share the total FWHM ``f`` of the Voigt, mixed with weight ``eta``.
* ``"blase"`` -- what the original PyTorch code evaluated: the Lorentzian with half-width
  ``gamma`` and the Gaussian with standard deviation ``sigma``, mixed with the same ``eta``.
  The published clones were tuned under this variant.

and the exact Voigt, ``"voigt"``: the convolution of a Gaussian (standard deviation ``sigma``)
and a Lorentzian (half-width ``gamma``), ``V = Re w((x + i gamma) / (sigma sqrt 2)) / (sigma
sqrt(2 pi))`` with the Faddeeva function of :mod:`jblase.faddeeva` (about 1e-7 relative in
float64). It is not a Lorentzian/Gaussian mixture, so it has no :func:`get_components`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
from scipy.special import voigt_profile

from jblase.faddeeva import faddeeva_real

__all__ = [
    "PROFILES",
    "blase_components",
    "gaussian",
    "get_components",
    "get_profile",
    "lorentzian",
    "mixture",
    "paper_components",
    "pseudo_voigt",
    "pseudo_voigt_blase",
    "pseudo_voigt_width",
    "voigt",
    "voigt_exact",
]

# Python floats, not NumPy scalars: a NumPy float64 would promote float32 arithmetic to float64.
_FWHM_PER_SIGMA = float(2.0 * np.sqrt(2.0 * np.log(2.0)))
_INV_SQRT_2PI = float(1.0 / np.sqrt(2.0 * np.pi))
_INV_SQRT_2 = float(1.0 / np.sqrt(2.0))


def gaussian(x, sigma):
    """Unit-area Gaussian with standard deviation ``sigma`` (same unit as ``x``)."""
    u = x / sigma
    return _INV_SQRT_2PI / sigma * jnp.exp(-0.5 * u * u)


def lorentzian(x, gamma):
    """Unit-area Lorentzian with half-width at half-maximum ``gamma`` (same unit as ``x``)."""
    u = x / gamma
    return (1.0 / np.pi) / (gamma * (1.0 + u * u))


def pseudo_voigt_width(sigma, gamma):
    """Total FWHM ``f`` and Lorentzian fraction ``eta`` of the paper's eq. 2 (Ida et al. 2000).

    Args:
        sigma: Gaussian standard deviation.
        gamma: Lorentzian half-width at half-maximum (same unit).

    Returns:
        ``(f, eta)``: the pseudo-Voigt FWHM (same unit) and the mixing weight in [0, 1].
    """
    f_g = _FWHM_PER_SIGMA * sigma
    f_l = 2.0 * gamma
    # The quintic in units of the larger width lies in [1, 12]: no underflow for narrow lines
    # in float32, and the fifth root is exp(log / 5), far cheaper than a general power.
    scale = jnp.maximum(f_g, f_l)
    g, lo = f_g / scale, f_l / scale
    quintic = (
        g**5
        + 2.69269 * g**4 * lo
        + 2.42843 * g**3 * lo**2
        + 4.47163 * g**2 * lo**3
        + 0.07842 * g * lo**4
        + lo**5
    )
    f = scale * jnp.exp(0.2 * jnp.log(quintic))
    r = f_l / f
    eta = 1.36603 * r - 0.47719 * r**2 + 0.11116 * r**3
    return f, eta


def paper_components(sigma, gamma):
    """``(eta, lorentz_hwhm, gauss_sigma)`` of the paper's pseudo-Voigt: both share FWHM ``f``."""
    f, eta = pseudo_voigt_width(sigma, gamma)
    return eta, 0.5 * f, f / _FWHM_PER_SIGMA


def blase_components(sigma, gamma):
    """``(eta, lorentz_hwhm, gauss_sigma)`` of the original variant: ``(eta, gamma, sigma)``."""
    _, eta = pseudo_voigt_width(sigma, gamma)
    return eta, gamma, sigma


def mixture(x, eta, lorentz_hwhm, gauss_sigma):
    """``eta * L(x; lorentz_hwhm) + (1 - eta) * G(x; gauss_sigma)``, unit area."""
    return eta * lorentzian(x, lorentz_hwhm) + (1.0 - eta) * gaussian(x, gauss_sigma)


def pseudo_voigt(x, sigma, gamma):
    """The paper's pseudo-Voigt (eq. 2): unit area, ~1% of the exact Voigt.

    ``eta * L(x; hwhm=f/2) + (1 - eta) * G(x; std=f / 2.3548)`` with ``(f, eta)`` from
    :func:`pseudo_voigt_width`.
    """
    return mixture(x, *paper_components(sigma, gamma))


def pseudo_voigt_blase(x, sigma, gamma):
    """The original blase code's variant: ``eta * L(x; gamma) + (1 - eta) * G(x; sigma)``."""
    return mixture(x, *blase_components(sigma, gamma))


def voigt(x, sigma, gamma):
    """Exact unit-area Voigt profile, pure ``jnp`` (jit-, vmap- and grad-friendly).

    ``Re w(z) / (sigma sqrt(2 pi))`` with ``z = (x + i gamma) / (sigma sqrt 2)``; ``x``,
    ``sigma`` (Gaussian standard deviation) and ``gamma`` (Lorentzian HWHM) share one unit
    and broadcast. About 1e-7 relative to :func:`voigt_exact` in float64 for ``gamma /
    (sigma sqrt 2)`` in [1e-3, 1e2] and ``|x| / (sigma sqrt 2)`` up to 1e4 (see
    :mod:`jblase.faddeeva`).
    """
    k = _INV_SQRT_2 / sigma
    return (_INV_SQRT_2PI / sigma) * faddeeva_real(x * k, gamma * k)


def voigt_exact(x, sigma, gamma) -> np.ndarray:
    """Exact unit-area Voigt profile (Faddeeva function via ``scipy.special.voigt_profile``).

    NumPy only, float64; for checks, not for the differentiable path.
    """
    return voigt_profile(np.asarray(x, float), np.asarray(sigma, float), np.asarray(gamma, float))


#: Profile names accepted by the forward model, clone and generator.
PROFILES: dict[str, Callable] = {
    "pseudo_voigt": pseudo_voigt,
    "blase": pseudo_voigt_blase,
    "voigt": voigt,
}

_COMPONENTS: dict[str, Callable] = {
    "pseudo_voigt": paper_components,
    "blase": blase_components,
}


def _check_name(name: str) -> None:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")


def get_profile(name: str) -> Callable:
    """Return the profile function ``f(x, sigma, gamma)`` called ``name`` (see :data:`PROFILES`)."""
    _check_name(name)
    return PROFILES[name]


def get_components(name: str) -> Callable:
    """Return ``(sigma, gamma) -> (eta, lorentz_hwhm, gauss_sigma)`` for profile ``name``.

    The pseudo-Voigt profiles are such Lorentzian/Gaussian mixtures; the forward model uses
    this per-line form so the per-pixel work is one division and one exponential. The exact
    ``"voigt"`` is none (a ValueError says so).
    """
    _check_name(name)
    if name not in _COMPONENTS:
        raise ValueError(
            f"profile {name!r} is not a Lorentzian/Gaussian mixture; the mixtures are "
            f"{sorted(_COMPONENTS)}"
        )
    return _COMPONENTS[name]
