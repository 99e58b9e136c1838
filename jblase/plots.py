"""Figures of a fit (pipeline step 7, after :func:`jblase.fit.fit`): data, model, residuals.

Drawn with matplotlib's object interface (a bare :class:`matplotlib.figure.Figure`, no
``pyplot``), so it works headless and leaves the caller's backend alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jblase.fit import FitResult
from jblase.spectra import ObservedSpectrum

__all__ = ["plot_fit"]

_MASKED = "0.75"  # grey of pixels the fit did not use


def _order_pixels(spectrum: ObservedSpectrum, result: FitResult, i: int) -> dict:
    """Order ``i``'s pixels of finite wavelength with their model values and weights.

    The fit lays each order out as its pixels of finite wavelength, in file order, padded to
    the longest order: the first ``n`` entries of ``result.model[i]`` are those pixels.
    """
    keep = np.flatnonzero(np.isfinite(spectrum.wavelength[i]))
    n = keep.size
    if result.model.shape[0] != spectrum.n_orders or result.model.shape[1] < n:
        raise ValueError(
            f"the fit's model {result.model.shape} does not match the spectrum's "
            f"{spectrum.n_orders} orders of up to {n} pixels: was it fitted on this spectrum?"
        )
    flux = spectrum.flux[i, keep]
    model = result.model[i, :n]
    residual = flux - model
    if spectrum.uncertainty is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            residual = residual / spectrum.uncertainty[i, keep]
    return {
        "wavelength": spectrum.wavelength[i, keep],
        "flux": flux,
        "model": model,
        "residual": residual,
        "used": result.weight[i, :n] > 0,
    }


def _title(result: FitResult) -> str:
    parts = []
    for name, label, fmt in (
        ("teff", "Teff", ".0f"),
        ("logg", "log g", ".2f"),
        ("feh", "[Fe/H]", "+.2f"),
        ("rv_kms", "RV", ".3f"),
        ("vsini_kms", "v sin i", ".2f"),
        ("resolving_power", "R", ".0f"),
    ):
        if name in result.fitted:
            parts.append(f"{label} = {result.values[name]:{fmt}}")
    parts.append(f"chi2_red = {result.chi2_reduced:.3g}")
    return ",  ".join(parts)


def plot_fit(spectrum: ObservedSpectrum, result: FitResult, path: str | Path, *, dpi: int = 110):
    """Save a figure of a fit to ``path`` (format from its ending, e.g. ``.png``, ``.pdf``).

    One column per order: above, the data (black; pixels the fit left out in grey) and the
    model with its continuum (``result.model``); below, the residual (data - model) / sigma,
    or data - model when the spectrum has no uncertainties. Wavelengths in A, in the data's
    frame. Returns the path.
    """
    from matplotlib.figure import Figure

    n = spectrum.n_orders
    fig = Figure(figsize=(max(6.0, 4.5 * n), 5.0), layout="constrained")
    axes = fig.subplots(2, n, sharex="col", height_ratios=(3, 1), squeeze=False)
    ylabel = "(data - model) / sigma" if spectrum.uncertainty is not None else "data - model"
    for i in range(n):
        p = _order_pixels(spectrum, result, i)
        top, bottom = axes[0, i], axes[1, i]
        wl, used = p["wavelength"], p["used"]
        top.plot(wl, np.where(used, p["flux"], np.nan), "k", lw=0.7, label="data")
        masked = "masked" if not used.all() else "_nolegend_"
        top.plot(wl, np.where(used, np.nan, p["flux"]), color=_MASKED, lw=0.7, label=masked)
        top.plot(wl, p["model"], "C1", lw=0.9, label="model")
        bottom.plot(wl, np.where(used, p["residual"], np.nan), "k", lw=0.6)
        bottom.plot(wl, np.where(used, np.nan, p["residual"]), color=_MASKED, lw=0.6)
        bottom.axhline(0.0, color="C1", lw=0.8)
        top.set_title(f"order {spectrum.orders[i]}", fontsize=9)
        bottom.set_xlabel("wavelength (A)")
        if i == 0:
            top.set_ylabel("flux")
            bottom.set_ylabel(ylabel)
            top.legend(loc="lower left", fontsize=7)
    fig.suptitle(_title(result), fontsize=9)
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    return path
