"""Forward model: line parameters + wavelengths -> normalised flux, windowed and chunked.

Used by cloning (step 3) and by the generator (step 5). The model spectrum is a product of
absorption lines, evaluated in log space::

    flux(lambda) = exp( sum_j ln(1 - clip(a_j V_j(lambda - mu_j), 0, 1 - 1e-9)) )

where line j only touches a window of ``wing_cut`` pixels centred on the pixel nearest its
centre (pixels of the window beyond either end of the spectrum are dropped). Lines are processed
``chunk_size`` at a time inside a ``lax.scan``, so memory stays at about
``chunk_size * wing_cut`` elements whatever the number of lines.

Precision: ``lambda - mu`` is formed in float64 (wavelengths near 10,000 A with 0.01 A
structure); the profile arithmetic runs in ``compute_dtype`` (float64 by default, float32 for
speed where 1e-6 relative accuracy is enough).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jblase.linelist import LineList
from jblase.profiles import get_components

__all__ = ["DEFAULT_WING_CUT", "ln_flux", "synthesize", "synthesize_lines"]

DEFAULT_WING_CUT = 6000
#: Largest absorption a_j V_j kept before the log (DESIGN.md step 3).
MAX_ABSORPTION = 1.0 - 1e-9
#: Elements (lines x window pixels) evaluated per scan step when ``chunk_size`` is not given.
_ELEMENTS_PER_CHUNK = 1 << 22


def _chunking(n_lines: int, wing_cut: int, chunk_size: int | None) -> tuple[int, int]:
    """(n_chunks, chunk_size) with balanced chunks covering ``n_lines``."""
    cap = chunk_size or max(1, _ELEMENTS_PER_CHUNK // wing_cut)
    n_chunks = max(1, -(-n_lines // cap))
    return n_chunks, max(1, -(-n_lines // n_chunks))


def _line_coefficients(ln_amplitude, ln_sigma, ln_gamma, weight, profile: str, dtype):
    """Per-line constants so that a V(x) = c_l / (h2 + x^2) + c_g exp(-x^2 k_g)."""
    eta, hwhm, gauss_sigma = get_components(profile)(jnp.exp(ln_sigma), jnp.exp(ln_gamma))
    amplitude = jnp.exp(ln_amplitude) * weight
    c_l = amplitude * eta * hwhm / np.pi
    c_g = amplitude * (1.0 - eta) / (np.sqrt(2.0 * np.pi) * gauss_sigma)
    k_g = 0.5 / gauss_sigma**2
    return tuple(c.astype(dtype) for c in (c_l, hwhm * hwhm, c_g, k_g))


@partial(jax.jit, static_argnames=("wing_cut", "profile", "chunk_size", "compute_dtype"))
def ln_flux(
    wavelength_aa,
    center,
    ln_amplitude,
    ln_sigma,
    ln_gamma,
    mask=None,
    *,
    wing_cut: int = DEFAULT_WING_CUT,
    profile: str = "pseudo_voigt",
    chunk_size: int | None = None,
    compute_dtype=jnp.float64,
):
    """Natural log of the model flux, shape (n_pix,).

    Args:
        wavelength_aa: strictly increasing wavelengths, float64 (n_pix,).
        center: line centres in A, float64 (n_lines,).
        ln_amplitude, ln_sigma, ln_gamma: ln a, ln sigma (A), ln gamma (A), each (n_lines,).
        mask: optional bool (n_lines,); False lines contribute nothing.
        wing_cut: window width in pixels, centred on each line.
        profile: profile name (see :mod:`jblase.profiles`).
        chunk_size: lines per scan step (default: about 4M window elements per step).
        compute_dtype: dtype of the profile arithmetic.
    """
    wavelength_aa = jnp.asarray(wavelength_aa, jnp.float64)
    n_pix = wavelength_aa.shape[0]
    n_lines = center.shape[0]
    if mask is None:
        mask = jnp.ones(n_lines, dtype=bool)
    if n_lines == 0:
        return jnp.zeros(n_pix, compute_dtype)
    n_chunks, size = _chunking(n_lines, wing_cut, chunk_size)
    n_pad = n_chunks * size - n_lines

    def _prep(x, fill):
        x = jnp.concatenate([x, jnp.full((n_pad,), fill, x.dtype)])
        return x.reshape(n_chunks, size)

    # Padding and masked lines get finite, harmless parameters and zero weight, so gradients
    # through them stay finite (the "double where" pattern).
    weight = mask.astype(jnp.float64)
    safe = lambda x, fill: jnp.where(mask, x, fill)  # noqa: E731
    chunks = (
        _prep(safe(jnp.asarray(center, jnp.float64), wavelength_aa[0]), wavelength_aa[0]),
        _prep(safe(ln_amplitude, -30.0), -30.0),
        _prep(safe(ln_sigma, -3.0), -3.0),
        _prep(safe(ln_gamma, -3.0), -3.0),
        _prep(weight, 0.0),
    )
    half = wing_cut // 2
    window = jnp.arange(wing_cut) - half
    max_abs = min(MAX_ABSORPTION, 1.0 - 2.0 * float(jnp.finfo(compute_dtype).eps))

    def step(total, chunk):
        mu, ln_a, ln_s, ln_g, w = chunk
        c_l, h2, c_g, k_g = _line_coefficients(ln_a, ln_s, ln_g, w, profile, compute_dtype)
        nearest = jnp.searchsorted(wavelength_aa, jax.lax.stop_gradient(mu))
        idx = nearest[:, None] + window[None, :]
        inside = (idx >= 0) & (idx < n_pix)
        idx = jnp.clip(idx, 0, n_pix - 1)
        x = (wavelength_aa[idx] - mu[:, None]).astype(compute_dtype)
        x2 = x * x
        absorption = c_l[:, None] / (h2[:, None] + x2) + c_g[:, None] * jnp.exp(-x2 * k_g[:, None])
        contrib = jnp.log1p(-jnp.clip(absorption, 0.0, max_abs))
        contrib = jnp.where(inside, contrib, 0.0)
        return total.at[idx].add(contrib), None

    total, _ = jax.lax.scan(jax.checkpoint(step), jnp.zeros(n_pix, compute_dtype), chunks)
    return total


def synthesize(
    wavelength_aa,
    center,
    ln_amplitude,
    ln_sigma,
    ln_gamma,
    mask=None,
    *,
    wing_cut: int = DEFAULT_WING_CUT,
    profile: str = "pseudo_voigt",
    chunk_size: int | None = None,
    compute_dtype=jnp.float64,
):
    """Model flux (normalised, in (0, 1]) on ``wavelength_aa``, shape (n_pix,).

    Arguments as :func:`ln_flux`. Jitted, differentiable in every line parameter.
    """
    return jnp.exp(
        ln_flux(
            wavelength_aa,
            center,
            ln_amplitude,
            ln_sigma,
            ln_gamma,
            mask,
            wing_cut=wing_cut,
            profile=profile,
            chunk_size=chunk_size,
            compute_dtype=compute_dtype,
        )
    )


def synthesize_lines(wavelength_aa, lines: LineList, **kwargs):
    """:func:`synthesize` for a :class:`~jblase.linelist.LineList` (one list, not a batch)."""
    return synthesize(
        wavelength_aa,
        lines.center,
        lines.ln_amplitude,
        lines.ln_sigma,
        lines.ln_gamma,
        lines.mask,
        **kwargs,
    )
