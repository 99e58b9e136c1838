"""Input validation shared by the pipeline steps: clear errors that name what is wrong."""

from __future__ import annotations

import numpy as np

__all__ = ["check_spectrum", "check_wavelength"]


def check_wavelength(wavelength_aa: np.ndarray, name: str = "wavelength") -> np.ndarray:
    """Return ``wavelength_aa`` as float64, checked 1-D, finite and strictly increasing."""
    wl = np.asarray(wavelength_aa, dtype=np.float64)
    if wl.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {wl.shape}")
    if wl.size < 2:
        raise ValueError(f"{name} needs at least 2 pixels, got {wl.size}")
    bad = ~np.isfinite(wl)
    if bad.any():
        raise ValueError(
            f"{name} has {bad.sum()} non-finite values (first at index {np.argmax(bad)})"
        )
    step = np.diff(wl)
    if (step <= 0).any():
        i = int(np.argmax(step <= 0))
        kind = "duplicate" if step[i] == 0 else "unsorted"
        raise ValueError(
            f"{name} must be strictly increasing: {kind} values at index {i} "
            f"({wl[i]!r} then {wl[i + 1]!r})"
        )
    return wl


def check_spectrum(
    wavelength_aa: np.ndarray,
    flux: np.ndarray,
    *,
    name: str = "flux",
    allow_negative: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Validate a spectrum; return (wavelength float64, flux float64) or raise ``ValueError``."""
    wl = check_wavelength(wavelength_aa)
    fl = np.asarray(flux, dtype=np.float64)
    if fl.shape != wl.shape:
        raise ValueError(f"{name} has shape {fl.shape} but wavelength has shape {wl.shape}")
    bad = ~np.isfinite(fl)
    if bad.any():
        raise ValueError(
            f"{name} has {bad.sum()} non-finite values (NaN or inf), first at index "
            f"{np.argmax(bad)} (wavelength {wl[np.argmax(bad)]:.4f} A)"
        )
    if not allow_negative and (fl < 0).any():
        i = int(np.argmax(fl < 0))
        raise ValueError(f"{name} has negative values, first at index {i} ({fl[i]!r})")
    return wl, fl
