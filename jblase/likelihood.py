"""The likelihood of an observed spectrum (used by :mod:`jblase.fit`).

Gaussian per-pixel noise: ``chi2 = sum_i w_i ((d_i - c(x_i) m_i) / s_i)^2``, with the data
``d``, their uncertainties ``s``, a 0/1 weight ``w`` (bad pixels, telluric regions and padding
are zero weights, so shapes stay static under ``jit``), the observation model's flux ``m`` and a
smooth continuum ``c(x) = sum_k c_k B_k(x)`` (a Chebyshev basis ``B``; :mod:`jblase.observe`).

The continuum is linear in its coefficients, so for any ``m`` the best coefficients solve a
small weighted least-squares problem in closed form (:func:`profile_continuum`): the chi-square
is *profiled* over the continuum. For Gaussian noise and a flat prior on the coefficients, the
continuum-marginalised likelihood is this profile times ``det(N)^(-1/2)`` of each order's
normal matrix ``N`` (:func:`continuum_logdet`), which depends on the model only weakly; so
Laplace uncertainties of the other parameters taken from the profile already include the
continuum's freedom, and the NUTS posterior (:mod:`jblase.posterior`) adds the log-det term.

Precision: float64 throughout (the chi-square sums thousands of squared residuals).
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = [
    "chi_square",
    "continuum_logdet",
    "profile_continuum",
    "profiled_residuals",
    "sigma_clip_weight",
]

#: Ridge on the normal equations, relative to their diagonal: keeps the solve finite when an
#: order's valid pixels leave a basis function unconstrained.
CONTINUUM_RIDGE = 1e-12


def _normal(model, w, basis):
    """The continuum's normal matrix (with the ridge) and design matrix of one order."""
    design = basis * model[:, None]
    normal = design.T @ (design * w[:, None])
    return normal + CONTINUUM_RIDGE * jnp.diag(jnp.diag(normal) + 1.0), design


def continuum_logdet(model, inv_sigma, weight, basis):
    """ln det of the continuum's normal matrix of one order (arguments as
    :func:`profile_continuum`): marginalising the continuum coefficients under a flat prior
    multiplies the likelihood by ``det^(-1/2)``. Differentiable."""
    normal, _ = _normal(model, weight * inv_sigma**2, basis)
    return jnp.linalg.slogdet(normal)[1]


def profile_continuum(model, data, inv_sigma, weight, basis):
    """Best continuum coefficients for one order and the continuum they give.

    Args:
        model: (n_pix,) observation-model flux before the continuum.
        data, inv_sigma, weight: (n_pix,) data, 1/uncertainty, 0/1 weights.
        basis: (n_pix, n_coeff) continuum basis at the pixels.

    Returns:
        ``(coefficients (n_coeff,), continuum (n_pix,))``. Differentiable.
    """
    w = weight * inv_sigma**2
    normal, design = _normal(model, w, basis)
    rhs = design.T @ (w * data)
    coeffs = jnp.linalg.solve(normal, rhs)
    return coeffs, basis @ coeffs


def profiled_residuals(model, data, inv_sigma, weight, basis):
    """``(coefficients, continuum * model, z = weighted residual / sigma)`` of one order with
    its continuum profiled out (arguments as :func:`profile_continuum`)."""
    coeffs, continuum = profile_continuum(model, data, inv_sigma, weight, basis)
    full = continuum * model
    return coeffs, full, (data - full) * inv_sigma * weight


def chi_square(model, data, inv_sigma, weight, basis):
    """Chi-square of one order with its continuum profiled out; ``(chi2, residual/sigma)``."""
    _, _, z = profiled_residuals(model, data, inv_sigma, weight, basis)
    return jnp.sum(z * z), z


def sigma_clip_weight(z, weight, clip: float):
    """Weights with pixels whose |residual / sigma| exceeds ``clip`` set to zero."""
    return jnp.where(jnp.abs(z) > clip, 0.0, weight)
