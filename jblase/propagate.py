"""Propagating clones across a grid (between cloning and the manifold): one decomposition.

Independent clones decompose each spectrum on its own. Where the line formation is not the
clone's line form (blends whose opacities add, saturated cores), a spectrum has many nearly
equivalent decompositions into pseudo-Voigt lines, and neighbouring grid points pick different
ones: the residual lines of one point are not those of the next, and interpolating their
parameters mixes unrelated entries. Propagation makes the decomposition one continuous family:

1. a tree over the grid points (:func:`propagation_tree`): from a seed point (by default the
   one nearest the middle of every axis) along the first axis of ``axis_order`` (Teff), then
   from each of those along the second, then the third; every point's parent is a neighbour one
   step closer to the seed;
2. the seed is refitted from its own clone; every other point starts from its parent's
   *propagated* lines (centres, strengths, widths and identities) and is refitted on its own
   spectrum, so a line moves, grows or fades continuously from point to point instead of being
   re-detected;
3. each refit ends with the clones' ``residual_rounds`` rounds of residual-driven line
   addition, so lines that appear away from the seed are added (new identities) and inherited
   from there on.

Lines that fade keep a small fitted strength rather than disappearing, so the manifold has a
value for them at the corners of the cells they cross. Points are refitted level by level
(every point at the same tree depth in one batch), each result written atomically as soon as it
is done; an interrupted run resumes where it stopped. The result is a clones directory like
:func:`jblase.pipeline.clone_grid`'s.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from jblase.clone import LR_SCHEDULES, CloneSettings
from jblase.complete import open_refit_dir, refit_points
from jblase.grids.base import GridPoint, SpectralGrid
from jblase.identity import identity_keys
from jblase.io import load_line_list
from jblase.manifold import list_clones, read_clones_manifest, read_clones_wavelength

__all__ = [
    "PropagationSettings",
    "identity_presence",
    "propagate_grid",
    "propagation_seed",
    "propagation_tree",
]


@dataclasses.dataclass(frozen=True)
class PropagationSettings:
    """How :func:`propagate_grid` propagates a clones directory.

    Attributes:
        epochs: epochs of each refit pass; None: the clones' own.
        learning_rate: None: the clones' own.
        lr_schedule: one of :data:`jblase.clone.LR_SCHEDULES`; None: the clones' own.
        residual_rounds: rounds of residual-driven line addition after each refit; None: the
            clones' own.
        residual_min_separation_px: a residual line is added only this many pixels or more
            from the point's inherited lines (see
            :attr:`jblase.clone.CloneSettings.residual_min_separation_px`); None: the
            clones' own. Without it (0), residual rounds level after level pile second
            lines onto inherited ones (on the fine benchmark grid, 40% of the lines at its
            coolest points sat within a pixel of another), and one physical line's share
            between the two drifts from point to point.
        seed: the grid point the propagation starts from (Teff, log g, [Fe/H]); None: the
            point nearest the middle of every axis.
        axis_order: the axes (0 Teff, 1 log g, 2 [Fe/H]) in the order the tree spreads along
            them from the seed.
    """

    epochs: int | None = None
    learning_rate: float | None = None
    lr_schedule: str | None = None
    residual_rounds: int | None = None
    residual_min_separation_px: float | None = 2.0
    seed: tuple[float, float, float] | None = None
    axis_order: tuple[int, int, int] = (0, 1, 2)

    def __post_init__(self):
        if self.epochs is not None and self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.lr_schedule is not None and self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.residual_rounds is not None and self.residual_rounds < 0:
            raise ValueError(f"residual_rounds must be >= 0, got {self.residual_rounds}")
        if self.residual_min_separation_px is not None:
            if self.residual_min_separation_px < 0:
                raise ValueError(
                    "residual_min_separation_px must be >= 0, got "
                    f"{self.residual_min_separation_px}"
                )
            # 2 and 2.0 are one setting (one directory key, one stored manifest).
            object.__setattr__(
                self, "residual_min_separation_px", float(self.residual_min_separation_px)
            )
        if sorted(self.axis_order) != [0, 1, 2]:
            raise ValueError(f"axis_order must order the axes 0, 1, 2; got {self.axis_order}")

    def as_dict(self) -> dict:
        """The fields, less those added later while at their default (so directories
        propagated before they existed still compare equal)."""
        out = dataclasses.asdict(self)
        if out["residual_min_separation_px"] is None:
            del out["residual_min_separation_px"]
        return out

    def clone_settings(self, base: CloneSettings) -> CloneSettings:
        """The clones' settings with this refit's epochs, learning rate and rounds."""
        changes = {}
        for name in (
            "epochs",
            "learning_rate",
            "lr_schedule",
            "residual_rounds",
            "residual_min_separation_px",
        ):
            if getattr(self, name) is not None:
                changes[name] = getattr(self, name)
        return dataclasses.replace(base, **changes)


def propagation_tree(
    points: list[tuple[float, float, float]],
    seed: tuple[float, float, float] | None = None,
    axis_order: tuple[int, int, int] = (0, 1, 2),
) -> tuple[np.ndarray, np.ndarray]:
    """The tree :func:`propagate_grid` refits along.

    Points are neighbours when their indices on the sorted distinct values of each axis differ
    by one along exactly one axis. Depths are breadth-first distances from the seed over the
    given points; a point's parent is a neighbour one level closer, the one that differs along
    the latest axis of ``axis_order`` (so on a full rectilinear grid the tree runs along the
    first axis from the seed, then the second, then the third).

    Args:
        points: the grid points (they need not fill a rectilinear grid).
        seed: the root (one of ``points``); None: the point nearest the middle of every axis.
        axis_order: the axes in spreading order.

    Returns:
        ``(parent, depth)``: int64 (n,) each; ``parent`` is -1 at the seed. A point that no
        path of neighbours joins to the seed raises ``ValueError``.
    """
    pts = np.asarray(points, np.float64).reshape(-1, 3)
    axes = [np.unique(pts[:, d]) for d in range(3)]
    index = np.stack([np.searchsorted(axes[d], pts[:, d]) for d in range(3)], axis=1)
    lookup = {tuple(i): k for k, i in enumerate(index.tolist())}
    if seed is None:
        middle = np.array([len(a) // 2 for a in axes])
        root = int(np.argmin(np.abs(index - middle).sum(axis=1)))
    else:
        hits = np.flatnonzero(np.all(np.isclose(pts, np.asarray(seed, np.float64)), axis=1))
        if not hits.size:
            raise ValueError(f"the propagation seed {tuple(seed)} is not one of the grid points")
        root = int(hits[0])
    rank = {axis: r for r, axis in enumerate(axis_order)}

    def neighbours(k):
        """(axis, point) of every neighbour of point k."""
        for axis in range(3):
            for step in (-1, 1):
                j = index[k].copy()
                j[axis] += step
                q = lookup.get(tuple(j.tolist()))
                if q is not None:
                    yield axis, q

    depth = np.full(len(pts), -1, np.int64)
    parent = np.full(len(pts), -1, np.int64)
    depth[root] = 0
    queue = deque([root])
    while queue:
        k = queue.popleft()
        for _, q in neighbours(k):
            if depth[q] < 0:
                depth[q] = depth[k] + 1
                queue.append(q)
    if np.any(depth < 0):
        lost = [tuple(map(float, p)) for p in pts[depth < 0][:5]]
        raise ValueError(f"grid points not joined to the seed by neighbours: {lost}")
    for k in range(len(pts)):
        closer = [(rank[axis], q) for axis, q in neighbours(k) if depth[q] == depth[k] - 1]
        if closer:
            parent[k] = max(closer, key=lambda c: c[0])[1]  # the first of the latest axis
    return parent, depth


def propagation_seed(
    points: list[GridPoint], settings: PropagationSettings | None = None
) -> GridPoint:
    """The point a propagation over ``points`` starts from (``settings.seed`` or the middle):
    the one grid point that needs a clone of its own."""
    settings = settings or PropagationSettings()
    parent, _ = propagation_tree(points, settings.seed, settings.axis_order)
    return _root(points, parent)


def _root(points, parent: np.ndarray) -> GridPoint:
    return GridPoint(*(float(v) for v in points[int(np.flatnonzero(parent < 0)[0])]))


def propagate_grid(
    grid: SpectralGrid,
    clones_dir: str | Path,
    out_dir: str | Path,
    settings: PropagationSettings | None = None,
    *,
    points: list[GridPoint] | None = None,
    batch_size: int = 8,
    group_size: int = 64,
    progress: bool = True,
) -> dict:
    """Propagate a clone of ``grid`` across the grid into ``out_dir`` (resumable).

    Only the seed's clone is read from ``clones_dir`` (with the clones' settings and
    wavelengths): ``clones_dir`` may hold the whole grid's independent clones or the seed's
    alone (``jblase clone GRID --teff T T --logg G G --feh Z Z``). Every other point is refitted
    from its parent's result (see the module docstring).

    Args:
        grid: the spectra (the clones' wavelengths).
        clones_dir: a directory written by :func:`jblase.pipeline.clone_grid` holding at least
            the seed's clone.
        out_dir: the propagated clones directory; points already there are kept and serve as
            parents.
        settings: :class:`PropagationSettings`.
        points: the grid points to propagate over (default: every point of ``grid``).
        batch_size, group_size: as :func:`jblase.pipeline.clone_grid`.

    Returns:
        ``{"done", "propagated", "total", "identities", "levels", "lines_per_identity",
        "presence_fraction"}``: presence is the fraction of (identity, point) pairs present.
    """
    settings = settings or PropagationSettings()
    clones_dir, out_dir = Path(clones_dir), Path(out_dir)
    manifest = read_clones_manifest(clones_dir)
    wavelength = read_clones_wavelength(clones_dir)
    clone_settings = settings.clone_settings(CloneSettings.from_dict(manifest["settings"]))
    points = [GridPoint(*(float(v) for v in p)) for p in (points or grid.points())]
    if not points:
        raise ValueError("no grid points to propagate over")
    parent, depth = propagation_tree(points, settings.seed, settings.axis_order)
    seed = _root(points, parent)
    cloned = list_clones(clones_dir)
    if seed not in cloned:
        raise ValueError(
            f"{clones_dir} has no clone of the propagation seed {tuple(seed)}: clone it first "
            f"(jblase clone GRID --out {clones_dir} --teff {seed.teff:g} {seed.teff:g} "
            f"--logg {seed.logg:g} {seed.logg:g} --feh {seed.feh:g} {seed.feh:g})"
        )
    propagation = {**settings.as_dict(), "seed": list(seed)}
    open_refit_dir(
        grid,
        out_dir,
        clone_settings,
        wavelength,
        {"propagated_from": str(clones_dir), "propagation": propagation},
        "propagation",
    )
    done = set(list_clones(out_dir))
    n_todo = sum(p not in done for p in points)
    bar = tqdm(total=n_todo, desc="propagating clones", unit="spectrum", disable=not progress)
    with bar:
        for level in range(int(depth.max()) + 1):
            todo = [k for k in np.flatnonzero(depth == level) if points[k] not in done]
            if not todo:
                continue
            # The seed starts from its own clone, every other point from its parent's result.
            files = cloned if level == 0 else list_clones(out_dir)
            sources = [points[k] if level == 0 else points[parent[k]] for k in todo]
            initial = [load_line_list(files[p])[0] for p in sources]
            refit_points(
                grid,
                out_dir,
                [points[k] for k in todo],
                initial,
                clone_settings,
                batch_size=batch_size,
                group_size=group_size,
                on_saved=lambda _: bar.update(1),
            )
            done |= {points[k] for k in todo}
    return {
        "done": len(points) - n_todo,
        "propagated": n_todo,
        "total": len(points),
        "levels": int(depth.max()) + 1,
        **identity_presence(out_dir),
    }


def identity_presence(clones_dir: str | Path) -> dict:
    """``{"identities", "lines_per_identity", "presence_fraction"}`` of a clones directory:
    identities keyed as the manifold keys them; presence over (identity, point) pairs."""
    keys = [
        np.unique(identity_keys(load_line_list(f)[0].identity_center))
        for f in list_clones(Path(clones_dir)).values()
    ]
    n_ident = int(np.unique(np.concatenate(keys)).size) if keys else 0
    n_lines = sum(k.size for k in keys)
    return {
        "identities": n_ident,
        "lines_per_identity": n_lines / max(n_ident, 1),
        "presence_fraction": n_lines / max(n_ident * len(keys), 1),
    }
