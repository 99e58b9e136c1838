"""The small protocol every spectral grid source follows: its points, its wavelengths, one flux."""

from __future__ import annotations

from typing import NamedTuple, Protocol

import numpy as np

__all__ = ["GridPoint", "SpectralGrid"]


class GridPoint(NamedTuple):
    """One grid point: effective temperature (K), log surface gravity (cgs dex), [Fe/H] (dex)."""

    teff: float
    logg: float
    feh: float

    def label(self) -> str:
        """A filesystem-safe name, e.g. ``T04100_g2.50_Z-0.5``."""
        return f"T{self.teff:05.0f}_g{self.logg:.2f}_Z{self.feh:+.1f}"


class SpectralGrid(Protocol):
    """A source of synthetic spectra on a shared wavelength grid."""

    def points(self) -> list[GridPoint]:
        """The selected grid points, sorted by (teff, logg, feh)."""
        ...

    def wavelength(self) -> np.ndarray:
        """Vacuum wavelengths in A, float64, shape (n_pix,), after any crop."""
        ...

    def load_flux(self, point: GridPoint) -> np.ndarray:
        """Raw flux at ``point`` on :meth:`wavelength`, float64, shape (n_pix,)."""
        ...
