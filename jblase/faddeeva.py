"""The Faddeeva function w(z) = exp(-z^2) erfc(-i z) in the upper half-plane, in pure ``jnp``.

Used by the exact Voigt profile (:func:`jblase.profiles.voigt`) and by the forward model's
``"voigt"`` profile. Two pieces, chosen per point by ``|z|``:

* ``|z| < ASYMPTOTIC_RADIUS``: Weideman's rational approximation (SIAM J. Numer. Anal. 31,
  1497, 1994) with ``N = 32`` terms, ``w ~ 2 p(Z) / (L - i z)^2 + 1 / (sqrt(pi) (L - i z))``
  with ``Z = (L + i z) / (L - i z)``, ``L = N^(1/2) 2^(-1/4)`` and the polynomial ``p`` from
  an FFT of ``(L^2 + t^2) exp(-t^2)`` (computed once here, in NumPy).
* ``|z| >= ASYMPTOTIC_RADIUS``: the asymptotic series ``w ~ i / (sqrt(pi) z) sum_k (2k-1)!! /
  (2 z^2)^k``, first :data:`ASYMPTOTIC_TERMS` terms, written in real arithmetic: with ``d =
  |z|^2``, ``c = x / |z|`` and Chebyshev polynomials (``sin((2k+1) theta) = sin(theta)
  U_2k(cos theta)``)::

      Re w ~ y / (sqrt(pi) d) * sum_k (2k-1)!! (1 / (2 d))^k U_2k(c)
      Im w ~ x / (sqrt(pi) d) * sum_k (2k-1)!! (1 / (2 d))^k T_(2k+1)(c) / c

  Both sums are polynomials in ``c^2 = x^2 / d``, so the real part needs ``x^2`` only: the
  forward model evaluates the wings of its ``"voigt"`` lines with it (one division per pixel).

Accuracy against ``scipy.special.wofz`` (float64, measured in ``tests/test_voigt.py``): the real
part within 1e-7 relative for ``1e-3 <= y <= 1e2`` and ``|x| <= 1e4`` (the series term by term
within 8e-8 beyond the radius, Weideman within 2e-9 inside it); for y -> 0 the error relative
to ``w(0) = 1`` stays below 1e-13 (there Re w = exp(-x^2) underflows any relative bound).
Everything is elementwise, broadcasts, runs in the dtype of its inputs (float32 or float64),
and is jit-, vmap- and grad-friendly: both pieces are evaluated everywhere and the one not
taken sees a harmless argument ("double where"), so gradients stay finite. Both pieces carry
analytic derivatives (``jax.custom_jvp``: w' = -2 z w + 2 i / sqrt(pi) for Weideman's, the
series' own recurrence for the series), so the backward pass costs little more than the
forward one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "ASYMPTOTIC_RADIUS",
    "ASYMPTOTIC_TERMS",
    "asymptotic_voigt",
    "faddeeva",
    "faddeeva_real",
]

#: |z| from which the asymptotic series replaces Weideman's approximation.
ASYMPTOTIC_RADIUS = 6.5
#: Terms of the asymptotic series (k = 0 ... ASYMPTOTIC_TERMS - 1).
ASYMPTOTIC_TERMS = 7
_WEIDEMAN_N = 32
# Python floats: NumPy float64 scalars would promote float32 arithmetic to float64.
_INV_SQRT_PI = float(1.0 / np.sqrt(np.pi))


def _weideman_coefficients(n: int) -> tuple[float, tuple[float, ...]]:
    """``(L, a)``: Weideman's ``L`` and the coefficients of ``p``, highest degree first."""
    m = 2 * n
    length = np.sqrt(n / np.sqrt(2.0))
    theta = np.arange(-m + 1, m) * np.pi / m
    t = length * np.tan(0.5 * theta)
    samples = np.concatenate([[0.0], np.exp(-t * t) * (length * length + t * t)])
    a = np.real(np.fft.fft(np.fft.fftshift(samples))) / (2 * m)
    return float(length), tuple(float(v) for v in a[1 : n + 1][::-1])


_L, _A = _weideman_coefficients(_WEIDEMAN_N)


@jax.custom_jvp
def _weideman(x, y):
    """``(Re w, Im w)`` by Weideman's approximation, for y >= 0 (accurate for small |z|).

    Differentiated through ``w'(z) = -2 z w(z) + 2 i / sqrt(pi)`` rather than through the
    polynomial: a small backward pass, as accurate as w itself here (|z| < 6.5 loses at
    most two digits to cancellation)."""
    # g = 1 / (L - i z) = ((L + y) + i x) / ((L + y)^2 + x^2); Z = ((L - y) + i x) g.
    p_ = _L + y
    inv = 1.0 / (p_ * p_ + x * x)
    g_re, g_im = p_ * inv, x * inv
    m_ = _L - y
    z_re, z_im = m_ * g_re - x * g_im, m_ * g_im + x * g_re
    p_re, p_im = jnp.full_like(x, _A[0]), jnp.zeros_like(x)
    for coefficient in _A[1:]:
        p_re, p_im = p_re * z_re - p_im * z_im + coefficient, p_re * z_im + p_im * z_re
    # w = g (2 p g + 1 / sqrt(pi))
    h_re = 2.0 * (p_re * g_re - p_im * g_im) + _INV_SQRT_PI
    h_im = 2.0 * (p_re * g_im + p_im * g_re)
    return g_re * h_re - g_im * h_im, g_re * h_im + g_im * h_re


@_weideman.defjvp
def _weideman_jvp(primals, tangents):
    x, y = primals
    dx, dy = tangents
    w_re, w_im = _weideman(x, y)
    d_re = -2.0 * (x * w_re - y * w_im)
    d_im = 2.0 * _INV_SQRT_PI - 2.0 * (x * w_im + y * w_re)
    # dw = w'(z) (dx + i dy)
    return (w_re, w_im), (d_re * dx - d_im * dy, d_im * dx + d_re * dy)


def _imaginary_sum(t, q):
    """``sum_k (2k-1)!! t^k T_(2k+1)(c) / c`` given ``q = 4 c^2 - 2`` (the recurrence
    ``P_(k+1) = q P_k - P_(k-1)`` with ``P_(-1) = P_0 = 1``)."""
    previous, current, scale, total = 1.0, 1.0, 1.0, 1.0
    for k in range(1, ASYMPTOTIC_TERMS):
        previous, current = current, q * current - previous
        scale = scale * (2 * k - 1) * t
        total = total + scale * current
    return total


def _series_terms(x2, g2, s2):
    """``(inv, q, S, t dS/dt, dS/dq)`` of ``S = sum_k (2k-1)!! t^k U_2k(c)`` with
    ``inv = 1 / (x2 + g2)``, ``t = s2 inv`` and ``q = 4 c^2 - 2 = 2 - 4 g2 inv``.

    ``P_k = U_2k(c)`` obeys ``P_(k+1) = q P_k - P_(k-1)`` (``P_(-1) = -1``, ``P_0 = 1``), so
    ``P'_(k+1) = P_k + q P'_k - P'_(k-1)``. ``q`` is written so that ``x2 = inf`` gives 2.
    """
    inv = 1.0 / (x2 + g2)
    t = s2 * inv
    q = 2.0 - 4.0 * g2 * inv
    p_prev, p, dp_prev, dp = -1.0, 1.0, 0.0, 0.0
    scale, total, k_total, dq_total = 1.0, 1.0, 0.0, 0.0
    for k in range(1, ASYMPTOTIC_TERMS):
        p_prev, p, dp_prev, dp = p, q * p - p_prev, dp, p + q * dp - dp_prev
        scale = scale * (2 * k - 1) * t
        term = scale * p
        total = total + term
        k_total = k_total + k * term
        dq_total = dq_total + scale * dp
    return inv, q, total, k_total, dq_total


@jax.custom_jvp
def asymptotic_voigt(x2, c_l, g2, s2):
    """The Voigt profile's asymptotic series, real arithmetic, one division::

        c_l / d * sum_k (2k-1)!! (s2 / d)^k U_2k(sqrt(x2 / d)),   d = x2 + g2,

    first :data:`ASYMPTOTIC_TERMS` terms. With ``(x^2, a gamma / pi, gamma^2, sigma^2)`` (offset
    units) it is a V(x); with ``(x^2, y / sqrt(pi), y^2, 1 / 2)`` it is Re w(x + i y). Within
    8e-8 relative of the exact value where ``d >= 2 s2 ASYMPTOTIC_RADIUS^2``. Differentiated
    analytically (the derivatives come out of the same recurrence): a small backward pass.
    """
    inv, _, total, _, _ = _series_terms(x2, g2, s2)
    return c_l * inv * total


@asymptotic_voigt.defjvp
def _asymptotic_voigt_jvp(primals, tangents):
    x2, c_l, g2, s2 = primals
    dx2, dc_l, dg2, ds2 = tangents
    inv, q, total, k_total, dq_total = _series_terms(x2, g2, s2)
    value = c_l * inv * total
    # t dS/dt = k_total; d/dx2 and d/dg2 act through inv, t = s2 inv and q.
    outer = c_l * inv * inv
    d_x2 = -outer * (total + k_total - (2.0 - q) * dq_total)
    d_g2 = -outer * (total + k_total + (2.0 + q) * dq_total)
    d_s2 = (c_l / s2) * inv * k_total
    return value, d_x2 * dx2 + inv * total * dc_l + d_g2 * dg2 + d_s2 * ds2


def _asymptotic(x, y, imaginary: bool):
    x2 = x * x
    y2 = y * y
    re = asymptotic_voigt(x2, _INV_SQRT_PI * y, y2, jnp.full_like(x2, 0.5))
    if not imaginary:
        return re, None
    inv = 1.0 / (x2 + y2)
    return re, (_INV_SQRT_PI * x) * inv * _imaginary_sum(0.5 * inv, 2.0 - 4.0 * y2 * inv)


def _pieces(x, y, imaginary: bool):
    x, y = jnp.asarray(x), jnp.asarray(y)
    x, y = jnp.broadcast_arrays(x, y)
    far = x * x + y * y >= ASYMPTOTIC_RADIUS**2
    # Each piece sees a harmless argument where the other is taken: finite values, gradients.
    x_near = jnp.where(far, 0.0, x)
    x_far = jnp.where(far, x, ASYMPTOTIC_RADIUS)
    near = _weideman(x_near, y)
    distant = _asymptotic(x_far, y, imaginary)
    re = jnp.where(far, distant[0], near[0])
    if not imaginary:
        return re
    return re, jnp.where(far, distant[1], near[1])


def faddeeva(x, y):
    """``(Re w(z), Im w(z))`` of the Faddeeva function at ``z = x + i y``, ``y >= 0``.

    Args:
        x, y: real and imaginary parts (dimensionless), broadcastable; float32 or float64.

    Returns:
        Two arrays of the broadcast shape and dtype.
    """
    return _pieces(x, y, imaginary=True)


def faddeeva_real(x, y):
    """``Re w(x + i y)`` for ``y >= 0`` (the Voigt function ``K(x, y)``), as :func:`faddeeva`
    but only the real part, which is cheaper."""
    return _pieces(x, y, imaginary=False)
