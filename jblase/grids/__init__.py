"""Spectral grid sources: a PHOENIX mirror/downloader and the embedded synthetic demo grid."""

from jblase.grids.base import GridPoint

__all__ = ["GridPoint"]
