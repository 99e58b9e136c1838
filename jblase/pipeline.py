"""Whole-grid jobs: clone every selected spectrum of a grid into a clones directory, resumably.

Sits on top of the per-spectrum steps (preprocess -> detect -> clone) and writes what the
manifold step reads. Each finished grid point is written atomically as soon as it is done,
so an interrupted run loses at most the batch in flight and resumes where it stopped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from jblase.clone import CloneSettings, clone_many, loss_weight
from jblase.grids.base import GridPoint, SpectralGrid
from jblase.manifold import (
    list_clones,
    read_clones_manifest,
    write_clone,
    write_clones_manifest,
)
from jblase.preprocess import normalize

__all__ = ["clone_grid"]


_MISSING = object()


def clone_grid(
    grid: SpectralGrid,
    clones_dir: str | Path,
    settings: CloneSettings | None = None,
    *,
    batch_size: int = 8,
    group_size: int = 64,
    source: dict | None = None,
    progress: bool = True,
) -> dict:
    """Clone every point of ``grid`` into ``clones_dir``; skip points already done.

    Args:
        grid: the spectra (e.g. :class:`jblase.grids.phoenix.PhoenixGrid`).
        clones_dir: output directory: ``manifest.json``, ``wavelength.npy`` and one ``.npz``
            per grid point.
        settings: clone settings; must equal those of an existing ``clones_dir``.
        batch_size: spectra cloned together in one program.
        group_size: spectra loaded and normalised at a time (bounds memory).
        source: free-form description stored in the manifest (e.g. the grid path).

    Returns:
        ``{"done": n already present, "cloned": n cloned now, "total": n selected}``.
    """
    settings = settings or CloneSettings()
    clones_dir = Path(clones_dir)
    wavelength = np.asarray(grid.wavelength())
    points = list(grid.points())
    if not points:
        raise ValueError("the grid selection is empty: no spectra to clone")
    loss_weight(wavelength)  # a range too short to clone fails before anything is written
    if (clones_dir / "manifest.json").exists():
        manifest = read_clones_manifest(clones_dir)
        stored_settings = CloneSettings.from_dict(manifest.get("settings") or {}).as_dict()
        wanted = settings.as_dict()
        if stored_settings != wanted:
            differ = "; ".join(
                f"{key}: stored {stored_settings.get(key, '(not recorded)')!r}, "
                f"requested {wanted.get(key, '(not a setting)')!r}"
                for key in sorted(set(stored_settings) | set(wanted))
                if stored_settings.get(key, _MISSING) != wanted.get(key, _MISSING)
            )
            raise ValueError(
                f"{clones_dir} holds clones made with different settings ({differ}); use "
                "another --out directory, or the stored settings to resume"
            )
        stored = np.load(clones_dir / "wavelength.npy")
        if stored.shape != wavelength.shape or not np.array_equal(stored, wavelength):
            raise ValueError(
                f"{clones_dir} holds clones on a different wavelength grid "
                f"({stored.size} pixels, {stored[0]:.3f}-{stored[-1]:.3f} A)"
            )
    else:
        write_clones_manifest(clones_dir, settings, wavelength, source or {})
    done = set(list_clones(clones_dir))
    todo = [p for p in points if GridPoint(*p) not in done]
    bar = tqdm(total=len(todo), desc="cloning grid", unit="spectrum", disable=not progress)
    with bar:
        for start in range(0, len(todo), group_size):
            group = todo[start : start + group_size]
            fluxes = np.stack([normalize(wavelength, grid.load_flux(p), p.teff) for p in group])

            def save(i: int, result, group=group) -> None:
                write_clone(clones_dir, GridPoint(*group[i]), result)
                bar.update(1)

            clone_many(
                wavelength, fluxes, settings, batch_size=batch_size, progress=False, on_result=save
            )
    return {"done": len(points) - len(todo), "cloned": len(todo), "total": len(points)}
