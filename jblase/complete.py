"""Completing a grid's clones (between cloning and the manifold): every line, every corner.

Independent clones leave most lines absent at most grid points: a line is detected only where
it is deeper than the detection threshold, and the manifold then has no value for it at the
other corners of the cells it crosses. Interpolating ln a (the physics: line strengths vary
roughly exponentially with Teff) is then impossible there, and interpolating a fades a line
linearly to zero. This step gives each line a *fitted* value at every grid point next to one
where it was detected:

1. match the tuned lines of all clones into identities (:func:`jblase.identity.match_identities`);
2. for each grid point, collect the identities present at its neighbours (every node within one
   step along each axis, i.e. every corner of every cell touching the point) and missing here;
   start each from its nearest neighbour's tuned line with ``start_fraction`` of its amplitude;
3. refit the point's spectrum with its own tuned lines plus these (``epochs`` more epochs),
   so weak lines take the strength the spectrum gives them, however small.

The result is a clones directory like :func:`jblase.pipeline.clone_grid`'s (one file per grid
point, written atomically, resumable), with the matched identities, from which
:func:`jblase.manifold.build_manifold` builds a manifold whose lines are present at (nearly)
every corner of every cell they touch.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from jblase.clone import CloneSettings, clone_lines_many
from jblase.grids.base import GridPoint, SpectralGrid
from jblase.identity import (
    DEFAULT_MATCH_TOLERANCE_PX,
    IDENTITY_KEYS_PER_AA,
    IdentityMatch,
    identity_keys,
    match_identities,
)
from jblase.io import load_line_list
from jblase.linelist import LineList
from jblase.manifold import (
    MANIFEST_NAME,
    list_clones,
    read_clones_manifest,
    read_clones_wavelength,
    write_clone,
    write_clones_manifest,
)
from jblase.preprocess import normalize

__all__ = [
    "CompletionSettings",
    "complete_grid",
    "completion_plan",
    "open_refit_dir",
    "refit_points",
]


@dataclasses.dataclass(frozen=True)
class CompletionSettings:
    """How :func:`complete_grid` completes a clones directory.

    Attributes:
        epochs: refit epochs per grid point (the clone's own learning rate, profile, ...);
            the point's own lines start converged, so fewer than the clone's own suffice.
        start_fraction: a line added at a point starts at this fraction of its nearest
            neighbour's amplitude a (the fit then grows or shrinks it).
        tolerance_px: identity matching tolerance (pixels; see
            :func:`jblase.identity.match_identities`).
        identities: ``"match"`` groups the clones' tuned centres into identities (independent
            clones); ``"keep"`` keeps the identities the clones carry (propagated clones,
            whose identities were inherited along the grid and would be split by a new
            match); ``"auto"`` (default): ``"keep"`` for a directory written by
            :func:`jblase.propagate.propagate_grid`, else ``"match"``.
    """

    epochs: int = 50
    start_fraction: float = 0.1
    tolerance_px: float = DEFAULT_MATCH_TOLERANCE_PX
    identities: str = "auto"

    def __post_init__(self):
        if self.epochs < 0 or not 0 < self.start_fraction <= 1 or self.tolerance_px < 0:
            raise ValueError(
                f"need epochs >= 0, 0 < start_fraction <= 1 and tolerance_px >= 0; got "
                f"{self.epochs}, {self.start_fraction}, {self.tolerance_px}"
            )
        if self.identities not in ("auto", "match", "keep"):
            raise ValueError(
                f"identities must be 'auto', 'match' or 'keep', got {self.identities!r}"
            )


def _read_clones(clones_dir: Path) -> tuple[list[GridPoint], list[LineList]]:
    """The grid points and tuned line lists of every clone file in ``clones_dir``."""
    files = list_clones(clones_dir)
    if not files:
        raise ValueError(f"{clones_dir}: no clone files to complete")
    points = list(files)
    lines = [load_line_list(files[p])[0] for p in points]
    return points, lines


def completion_plan(
    points: list[GridPoint],
    lines: list[LineList],
    wavelength_aa: np.ndarray,
    settings: CompletionSettings,
) -> list[LineList]:
    """The initial line list of every grid point: its own tuned lines, under matched
    identities, plus the lines of its neighbours that it lacks (see the module docstring).

    Args:
        points: the grid points, one per clone (they need not fill a rectilinear grid).
        lines: the tuned line list of each point (compact).
        wavelength_aa: the clones' wavelength grid (A).
        settings: start fraction and matching tolerance.

    Returns:
        One compact :class:`LineList` per point, ``identity_center`` the matched identity.
    """
    if settings.identities == "keep":
        match = _kept_identities(lines)
    else:
        match = match_identities(
            [np.asarray(ll.center) for ll in lines], wavelength_aa, settings.tolerance_px
        )
    axes = [np.unique([p[d] for p in points]) for d in range(3)]
    index = np.array([[np.searchsorted(axes[d], p[d]) for d in range(3)] for p in points])
    fields = ("center", "ln_amplitude", "ln_sigma", "ln_gamma")
    values = [np.stack([np.asarray(getattr(ll, f)) for f in fields], -1) for ll in lines]
    ln_start = math.log(settings.start_fraction)
    out = []
    for k in range(len(points)):
        step = np.abs(index - index[k]).max(axis=1)
        near = np.flatnonzero((step <= 1) & (np.arange(len(points)) != k))
        own = match.groups[k]
        if near.size:
            dist = ((index[near] - index[k]) ** 2).sum(axis=1)
            cand_g = np.concatenate([match.groups[q] for q in near])
            cand_v = np.concatenate([values[q] for q in near])
            cand_d = np.concatenate(
                [np.full(match.groups[q].size, d) for q, d in zip(near, dist, strict=True)]
            )
            order = np.lexsort((cand_d, cand_g))
            cand_g, cand_v = cand_g[order], cand_v[order]
            first = np.r_[True, cand_g[1:] != cand_g[:-1]]
            new = first & ~np.isin(cand_g, own)
            add_g, add_v = cand_g[new], cand_v[new].copy()
            add_v[:, 1] += ln_start
        else:
            add_g, add_v = np.zeros(0, np.int64), np.zeros((0, 4))
        g = np.concatenate([own, add_g])
        v = np.concatenate([values[k], add_v])
        order = np.argsort(v[:, 0], kind="stable")
        g, v = g[order], v[order]
        out.append(
            LineList(
                center=v[:, 0],
                ln_amplitude=v[:, 1],
                ln_sigma=v[:, 2],
                ln_gamma=v[:, 3],
                identity_center=match.identity[g],
            )
        )
    return out


def _kept_identities(lines: list[LineList]) -> IdentityMatch:
    """The identities the line lists carry, as a match (group = identity key)."""
    keys = [identity_keys(ll.identity_center) for ll in lines]
    unique = np.unique(np.concatenate(keys))
    for k in keys:
        if np.unique(k).size != k.size:
            raise ValueError(
                "identities='keep' needs clones whose lines have distinct identities; "
                f"a clone has {k.size - np.unique(k).size} repeated (use identities='match')"
            )
    groups = [np.searchsorted(unique, k) for k in keys]
    return IdentityMatch(unique / IDENTITY_KEYS_PER_AA, groups)


def open_refit_dir(
    grid: SpectralGrid,
    out_dir: Path,
    clone_settings: CloneSettings,
    wavelength: np.ndarray,
    source: dict,
    key: str,
) -> None:
    """Start (or check, to resume) a refitted clones directory: the grid's wavelengths must be
    the clones', and an existing ``out_dir`` must hold the same settings and ``source[key]``."""
    grid_wl = np.asarray(grid.wavelength())
    if grid_wl.shape != wavelength.shape or not np.array_equal(grid_wl, wavelength):
        raise ValueError(f"the clones for {out_dir} were made on another wavelength grid")
    if (out_dir / MANIFEST_NAME).exists():
        stored = read_clones_manifest(out_dir)
        if stored.get("settings") != clone_settings.as_dict() or stored.get("source", {}).get(
            key
        ) != json.loads(json.dumps(source[key])):
            raise ValueError(f"{out_dir} holds a {key} with other settings")
    else:
        write_clones_manifest(out_dir, clone_settings, wavelength, source)


def refit_points(
    grid: SpectralGrid,
    out_dir: Path,
    points: list[GridPoint],
    initial: list[LineList],
    clone_settings: CloneSettings,
    *,
    batch_size: int = 8,
    group_size: int = 64,
    on_saved=None,
) -> None:
    """Tune ``initial[i]`` on the normalised spectrum of ``points[i]`` and write each result to
    ``out_dir`` atomically as it finishes (``on_saved(point)`` after each); ``group_size``
    spectra are loaded at a time. Shared by completion and propagation."""
    wavelength = np.asarray(grid.wavelength())
    for start in range(0, len(points), group_size):
        group = [GridPoint(*(float(v) for v in p)) for p in points[start : start + group_size]]
        fluxes = np.stack([normalize(wavelength, grid.load_flux(p), p.teff) for p in group])

        def save(i: int, result, group=group) -> None:
            write_clone(out_dir, group[i], result)
            if on_saved is not None:
                on_saved(group[i])

        clone_lines_many(
            wavelength,
            fluxes,
            initial[start : start + group_size],
            clone_settings,
            batch_size=batch_size,
            progress=False,
            on_result=save,
            full_batches=True,
        )


def complete_grid(
    grid: SpectralGrid,
    clones_dir: str | Path,
    out_dir: str | Path,
    settings: CompletionSettings | None = None,
    *,
    batch_size: int = 8,
    group_size: int = 64,
    progress: bool = True,
) -> dict:
    """Complete the clones of ``grid`` in ``clones_dir`` into ``out_dir`` (resumable).

    Args:
        grid: the spectra that were cloned (the same points and wavelengths).
        clones_dir: a directory written by :func:`jblase.pipeline.clone_grid`.
        out_dir: the completed clones directory (manifest, wavelength, one file per point);
            points already there are skipped.
        settings: :class:`CompletionSettings`.
        batch_size, group_size: as :func:`jblase.pipeline.clone_grid`.

    Returns:
        ``{"done": n already present, "completed": n refitted now, "total": n,
        "identities": n matched identities}``.
    """
    settings = settings or CompletionSettings()
    clones_dir, out_dir = Path(clones_dir), Path(out_dir)
    manifest = read_clones_manifest(clones_dir)
    wavelength = read_clones_wavelength(clones_dir)
    # The refit is one pass: residual lines were added when the clones were made.
    clone_settings = dataclasses.replace(
        CloneSettings.from_dict(manifest["settings"]), epochs=settings.epochs, residual_rounds=0
    )
    points, lines = _read_clones(clones_dir)
    if settings.identities == "auto":
        kept = "propagated_from" in manifest.get("source", {})
        settings = dataclasses.replace(settings, identities="keep" if kept else "match")
    plan = completion_plan(points, lines, wavelength, settings)
    source = {"completed_from": str(clones_dir), "completion": dataclasses.asdict(settings)}
    open_refit_dir(grid, out_dir, clone_settings, wavelength, source, "completion")
    done = set(list_clones(out_dir))
    todo = [k for k, p in enumerate(points) if GridPoint(*p) not in done]
    bar = tqdm(total=len(todo), desc="completing clones", unit="spectrum", disable=not progress)
    with bar:
        refit_points(
            grid,
            out_dir,
            [points[k] for k in todo],
            [plan[k] for k in todo],
            clone_settings,
            batch_size=batch_size,
            group_size=group_size,
            on_saved=lambda _: bar.update(1),
        )
    n_ident = len({float(x) for ll in plan for x in np.asarray(ll.identity_center)})
    return {
        "done": len(points) - len(todo),
        "completed": len(todo),
        "total": len(points),
        "identities": n_ident,
    }
