"""PHOENIX-ACES-AGSS-COND-2011 HiRes grid access: file naming, a local-mirror reader, a downloader.

First step of the pipeline (grid files -> preprocess -> ...). A local mirror keeps the server's
layout below its root::

    ROOT/WAVE_PHOENIX-ACES-AGSS-COND-2011.fits
    ROOT/PHOENIX-ACES-AGSS-COND-2011/Z-0.0/lte05800-4.50-0.0.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits
"""

from __future__ import annotations

__all__ = [
    "LIBRARY",
    "PHOENIX_BASE_URL",
    "WAVELENGTH_FILENAME",
    "feh_tag",
    "phoenix_relpath",
]

LIBRARY = "PHOENIX-ACES-AGSS-COND-2011"
PHOENIX_BASE_URL = "https://phoenix.astro.physik.uni-goettingen.de/data/HiResFITS/"
WAVELENGTH_FILENAME = f"WAVE_{LIBRARY}.fits"


def feh_tag(feh: float) -> str:
    """PHOENIX's metallicity tag: ``-0.0`` for solar, else signed with one decimal (``+0.5``)."""
    if round(feh, 1) == 0.0:
        return "-0.0"
    return f"{feh:+.1f}"


def _alpha_suffix(alpha: float) -> str:
    return "" if round(alpha, 2) == 0.0 else f".Alpha={alpha:+.2f}"


def phoenix_relpath(teff: float, logg: float, feh: float, alpha: float = 0.0) -> str:
    """Path of one spectrum relative to the mirror root (or to ``PHOENIX_BASE_URL``).

    >>> phoenix_relpath(5800, 4.5, 0.0)
    'PHOENIX-ACES-AGSS-COND-2011/Z-0.0/lte05800-4.50-0.0.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits'
    """
    z = feh_tag(feh) + _alpha_suffix(alpha)
    name = f"lte{int(round(teff)):05d}-{logg:.2f}{z}.{LIBRARY}-HiRes.fits"
    return f"{LIBRARY}/Z{z}/{name}"
