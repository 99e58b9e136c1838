"""Cheap, picklable fitters for the survey tests (importable by spawned Dask workers)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MeanFitter:
    """Reads a ``.npz`` spectrum and returns a fit-like dict from its flux (deterministic);
    raises on an unreadable file or non-finite flux, as a real fit would."""

    delay_s: float = 0.0

    def __call__(self, path) -> dict:
        time.sleep(self.delay_s)
        with np.load(path) as z:
            flux = np.asarray(z["flux"], float)
        if not np.all(np.isfinite(flux)):
            raise ValueError(f"{path}: non-finite flux")
        return {
            "rv_kms": float(flux.mean()),
            "rv_kms_err": float(flux.std() / np.sqrt(flux.size)),
            "chi2_reduced": 1.0,
            "n_pixels": int(flux.size),
            "fitted": ["rv_kms"],
        }
