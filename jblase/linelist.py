"""Line lists: the cloned Voigt lines of one spectrum (or a padded batch), as an equinox pytree.

Sits between detection/cloning and the manifold. Every field has shape ``(..., n_lines)`` so
lists of different lengths can be padded to a common length and stacked; ``mask`` marks real
lines. Wavelengths are vacuum Angstrom in float64; widths are natural logs of Angstrom.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

__all__ = ["LineList", "stack_line_lists"]

#: ln amplitude given to padding lines: exp(-1000) is exactly 0 in float64.
PAD_LN_AMPLITUDE = -1000.0


class LineList(eqx.Module):
    """A set of pseudo-Voigt absorption lines.

    Attributes (all shape ``(..., n_lines)``):
        identity_center: pre-optimisation centre rounded to 0.01 A; the line's identity
            across a grid (float64, A).
        center: tuned line centre (float64, vacuum A).
        ln_amplitude: natural log of the line depth factor a (dimensionless).
        ln_sigma: natural log of the Gaussian width sigma (A).
        ln_gamma: natural log of the Lorentzian half-width gamma (A).
        mask: True for real lines, False for padding.
    """

    identity_center: Float[Array, "... n"]
    center: Float[Array, "... n"]
    ln_amplitude: Float[Array, "... n"]
    ln_sigma: Float[Array, "... n"]
    ln_gamma: Float[Array, "... n"]
    mask: Bool[Array, "... n"]

    def __init__(
        self,
        center,
        ln_amplitude,
        ln_sigma,
        ln_gamma,
        identity_center=None,
        mask=None,
    ):
        self.center = jnp.asarray(center, dtype=jnp.float64)
        self.ln_amplitude = jnp.asarray(ln_amplitude, dtype=jnp.float64)
        self.ln_sigma = jnp.asarray(ln_sigma, dtype=jnp.float64)
        self.ln_gamma = jnp.asarray(ln_gamma, dtype=jnp.float64)
        if identity_center is None:
            identity_center = jnp.round(self.center, 2)
        self.identity_center = jnp.asarray(identity_center, dtype=jnp.float64)
        if mask is None:
            mask = jnp.ones(self.center.shape, dtype=bool)
        self.mask = jnp.asarray(mask, dtype=bool)

    def __check_init__(self):
        shape = self.center.shape
        for name in ("identity_center", "ln_amplitude", "ln_sigma", "ln_gamma", "mask"):
            if getattr(self, name).shape != shape:
                raise ValueError(
                    f"LineList.{name} has shape {getattr(self, name).shape}, expected {shape}"
                )

    @property
    def n_lines(self) -> int:
        """Number of real (unmasked) lines; an int for one list."""
        return int(np.asarray(self.mask).sum())

    def __len__(self) -> int:
        return int(self.center.shape[-1])

    def compact(self) -> LineList:
        """Drop padding lines (one list only, not a batch)."""
        keep = np.asarray(self.mask)
        if keep.ndim != 1:
            raise ValueError("compact() works on a single line list, not a batch")
        return LineList(
            center=np.asarray(self.center)[keep],
            ln_amplitude=np.asarray(self.ln_amplitude)[keep],
            ln_sigma=np.asarray(self.ln_sigma)[keep],
            ln_gamma=np.asarray(self.ln_gamma)[keep],
            identity_center=np.asarray(self.identity_center)[keep],
        )

    def pad(self, length: int) -> LineList:
        """Pad a single list with masked, zero-amplitude lines up to ``length`` lines."""
        n = len(self)
        if length < n:
            raise ValueError(f"cannot pad {n} lines down to {length}")
        extra = length - n
        fill_center = float(np.asarray(self.center)[0]) if n else 0.0

        def _pad(x, value):
            return np.concatenate([np.asarray(x), np.full(extra, value, dtype=np.asarray(x).dtype)])

        return LineList(
            center=_pad(self.center, fill_center),
            ln_amplitude=_pad(self.ln_amplitude, PAD_LN_AMPLITUDE),
            ln_sigma=_pad(self.ln_sigma, 0.0),
            ln_gamma=_pad(self.ln_gamma, 0.0),
            identity_center=_pad(self.identity_center, np.nan),
            mask=_pad(self.mask, False),
        )


def stack_line_lists(lists: list[LineList], length: int | None = None) -> LineList:
    """Pad every list to a common length (default: the longest) and stack along a new axis 0."""
    if not lists:
        raise ValueError("no line lists to stack")
    length = max(len(ll) for ll in lists) if length is None else length
    padded = [ll.pad(length) for ll in lists]
    return LineList(
        center=np.stack([np.asarray(p.center) for p in padded]),
        ln_amplitude=np.stack([np.asarray(p.ln_amplitude) for p in padded]),
        ln_sigma=np.stack([np.asarray(p.ln_sigma) for p in padded]),
        ln_gamma=np.stack([np.asarray(p.ln_gamma) for p in padded]),
        identity_center=np.stack([np.asarray(p.identity_center) for p in padded]),
        mask=np.stack([np.asarray(p.mask) for p in padded]),
    )
