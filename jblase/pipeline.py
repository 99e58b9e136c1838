"""Whole-grid jobs: clone every selected spectrum of a grid into a clones directory, resumably.

Sits on top of the per-spectrum steps (preprocess -> detect -> clone) and writes what the
manifold step reads. Each finished grid point is written atomically as soon as it is done,
so an interrupted run loses at most the batch in flight and resumes where it stopped.

``workers`` / ``scheduler`` spread the grid over a Dask cluster (:mod:`jblase._dask`: a local
cluster of spawned worker processes, or an existing cluster's scheduler): each task clones
``batch_size`` grid points in one program on one worker and writes each point's clone into the
clones directory atomically, as the in-process run does, so the directory (which every worker
must see at the same path) is the same whichever engine wrote it, and a killed run resumes the
same way.
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

__all__ = ["clone_grid", "clone_points"]


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
    workers: int = 0,
    scheduler: str | None = None,
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
        progress: show a progress bar.
        workers: Dask worker processes of a local cluster (0, the default: clone in this
            process, without Dask). The grid object travels to the workers (it must pickle:
            :class:`~jblase.grids.phoenix.PhoenixGrid` does) and reads its files there.
        scheduler: address of an existing Dask scheduler instead (``tcp://host:8786``).

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
    if not (isinstance(workers, (int, np.integer)) and workers >= 0):
        raise ValueError(f"workers must be an integer >= 0, got {workers!r}")
    bar = tqdm(total=len(todo), desc="cloning grid", unit="spectrum", disable=not progress)
    with bar:
        if scheduler is None and workers == 0:
            for start in range(0, len(todo), group_size):
                clone_points(
                    grid, clones_dir, settings, todo[start : start + group_size], batch_size, bar
                )
        elif todo:
            _clone_on_dask(grid, clones_dir, settings, todo, batch_size, workers, scheduler, bar)
    return {"done": len(points) - len(todo), "cloned": len(todo), "total": len(points)}


def clone_points(grid, clones_dir, settings, points, batch_size: int = 8, bar=None) -> int:
    """Load, normalise and clone ``points`` of ``grid``; write each clone as it finishes.

    The unit of work of :func:`clone_grid` (in this process, or one Dask task). Returns the
    number of clones written."""
    clones_dir = Path(clones_dir)
    wavelength = np.asarray(grid.wavelength())
    fluxes = np.stack([normalize(wavelength, grid.load_flux(p), p.teff) for p in points])

    def save(i: int, result) -> None:
        write_clone(clones_dir, GridPoint(*points[i]), result)
        if bar is not None:
            bar.update(1)

    clone_many(wavelength, fluxes, settings, batch_size=batch_size, progress=False, on_result=save)
    return len(points)


def _clone_task(points, grid, clones_dir, settings, batch_size) -> int:
    from jblase._compiled import enable_compile_cache

    enable_compile_cache()  # workers of one machine share the compiled clone programs
    return clone_points(grid, clones_dir, settings, points, batch_size)


def _clone_on_dask(grid, clones_dir, settings, todo, batch_size, workers, scheduler, bar) -> None:
    """One task per ``batch_size`` points (the batches of the in-process run); finished
    clones are on disk whatever happens to the others, and a failed task is reported after
    every other task has finished."""
    from jblase._dask import dask_client, run_tasks

    tasks = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    failed = []
    with dask_client(
        workers, scheduler, "jblase clone with workers", "--workers 0 clones in this process"
    ) as client:
        for points, _, err in run_tasks(
            client, _clone_task, tasks, grid, str(clones_dir), settings, batch_size
        ):
            if err is not None:
                failed.append((points, err))
            bar.update(len(points))
    if failed:
        points, err = failed[0]
        first = GridPoint(*points[0]).label()
        raise RuntimeError(
            f"{sum(len(p) for p, _ in failed)} grid points were not cloned, in {len(failed)} "
            f"of {len(tasks)} tasks (the first, {first} and {len(points) - 1} more: "
            f"{type(err).__name__}: {err}); every other clone is written: rerun to retry them"
        )
