"""The paper's published clones as a manifold source: ``.pt`` files of the original code.

Sits beside cloning, feeding the manifold step (pipeline step 4) with clones that the original
PyTorch ``blase`` code made, so its archive (1,314 PHOENIX clones on Zenodo, record 11246174)
becomes a jblase generator without re-cloning. Each clone is a state dict saved by
``torch.save``, read without torch by :func:`jblase.io.read_torch_state_dict`:
``lam_centers`` (tuned centres, A), ``amplitudes`` (ln a), ``sigma_widths`` (ln sigma),
``gamma_widths`` (ln gamma) and, in all but the oldest clones, ``pre_line_centers``, the
pre-optimisation centres whose rounding to 0.01 A is each line's identity across the grid (the
manifold keys it to 0.001 A, :data:`jblase.identity.IDENTITY_KEYS_PER_AA`, where a multiple of
0.01 A stays itself). Clones without it take the rounded tuned centres instead, with a warning.

The original code names a clone ``T{teff}G{logg}Z{feh}.pt`` (``T4700G4.50Z0.00.pt``,
``T3000G5.0Z-0.5.pt``) and read the grid point back by splitting the name on T, G and Z; a
table (CSV ``file,teff,logg,feh``) gives the point of files named otherwise. The clones were
tuned under the original code's pseudo-Voigt (profile ``"blase"``, see
:mod:`jblase.profiles`) with 6000-pixel windows on the PHOENIX wavelengths, which the files do
not hold: the manifold takes them from the caller (:func:`read_wavelength_file` reads the
PHOENIX ``WAVE_...fits`` file, among others).
"""

from __future__ import annotations

import csv
import io
import os
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike
from tqdm.auto import tqdm

from jblase._checks import check_wavelength
from jblase.grids.base import GridPoint
from jblase.io import (
    BLASE_IDENTITY_KEY,
    SPECTRUM_SUFFIXES,
    line_list_from_blase,
    read_spectrum,
    read_torch_state_dict,
)
from jblase.linelist import LineList
from jblase.manifold import Manifold, manifold_from_line_lists

__all__ = [
    "BLASE_PROFILE",
    "BLASE_WING_CUT",
    "blase_grid_point",
    "build_blase_manifold",
    "is_blase_source",
    "read_blase_clones",
    "read_grid_table",
    "read_wavelength_file",
]

#: The line profile and window (pixels) the original code tuned its clones with.
BLASE_PROFILE = "blase"
BLASE_WING_CUT = 6000

_NUMBER = r"([+-]?\d+(?:\.\d*)?)"
_NAME = re.compile(rf"^T{_NUMBER}G{_NUMBER}Z{_NUMBER}\.pt$")
_TABLE_COLUMNS = ("file", "teff", "logg", "feh")


def blase_grid_point(name: str) -> GridPoint | None:
    """The grid point a file name of the original code gives, or None if it is not one.

    ``"T4700G4.50Z0.00.pt"`` -> (4700.0, 4.5, 0.0); ``"T3000G5.0Z-0.5.pt"`` -> (3000.0, 5.0,
    -0.5). Only the base name is read; Teff in K, log g and [Fe/H] in dex.
    """
    match = _NAME.match(Path(name).name)
    if match is None:
        return None
    # + 0.0 turns a "-0.0" [Fe/H] into 0.0: one grid value, one label.
    return GridPoint(*(float(v) + 0.0 for v in match.groups()))


def read_grid_table(path: str | os.PathLike) -> dict[str, GridPoint]:
    """Read a CSV table ``file,teff,logg,feh`` (a header row, then one row per clone file).

    Returns ``{file base name: GridPoint(Teff K, log g dex, [Fe/H] dex)}``. Column names are
    matched case-insensitively, in any order. A missing file or column, a value that is not a
    finite number or a file listed twice raises ``ValueError`` naming the table (and row).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such grid table")
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"{path}: unreadable grid table ({err})") from err
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise ValueError(f"{path}: empty grid table; need a header row {','.join(_TABLE_COLUMNS)}")
    header = [cell.strip().lower() for cell in rows[0]]
    missing = [c for c in _TABLE_COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{path}: grid table lacks column(s) {missing}; its header is {rows[0]}")
    where = {c: header.index(c) for c in _TABLE_COLUMNS}
    table: dict[str, GridPoint] = {}
    for line, row in enumerate(rows[1:], start=2):
        try:
            name = Path(row[where["file"]].strip()).name
            values = [float(row[where[c]]) for c in _TABLE_COLUMNS[1:]]
        except (IndexError, ValueError) as err:
            raise ValueError(f"{path}, row {line}: {row} is not file,teff,logg,feh") from err
        if not name or not np.isfinite(values).all():
            raise ValueError(f"{path}, row {line}: {row} is not file,teff,logg,feh")
        if name in table:
            raise ValueError(f"{path}, row {line}: {name!r} is listed twice")
        table[name] = GridPoint(*(v + 0.0 for v in values))
    return table


def is_blase_source(path: str | os.PathLike) -> bool:
    """True for a ``.zip`` or ``.pt`` file, or a directory holding ``.pt`` files but no
    jblase clone manifest."""
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() in (".zip", ".pt")
    return (
        path.is_dir()
        and not (path / "manifest.json").exists()
        and any(p.is_file() for p in path.glob("*.pt"))
    )


def _members(source: Path) -> list[tuple[str, str]]:
    """(base name, zip member or file path) of every ``.pt`` clone of ``source``."""
    if source.is_dir():
        found = [(p.name, str(p)) for p in sorted(source.glob("*.pt")) if p.is_file()]
    elif source.suffix.lower() == ".pt":
        found = [(source.name, str(source))]
    else:
        try:
            with zipfile.ZipFile(source) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError) as err:
            raise ValueError(f"{source}: not a zip archive of .pt clones ({err})") from err
        # Any folder depth; macOS resource forks (__MACOSX/, ._name) are not clones.
        found = sorted(
            (Path(n).name, n)
            for n in names
            if n.lower().endswith(".pt")
            and not n.endswith("/")
            and not n.startswith("__MACOSX/")
            and not Path(n).name.startswith("._")
        )
    if not found:
        raise ValueError(f"{source}: no .pt clone files")
    seen: dict[str, str] = {}
    for name, member in found:
        if name in seen:
            raise ValueError(f"{source}: two clones named {name!r} ({seen[name]}, {member})")
        seen[name] = member
    return found


def _points(source: Path, names: list[str], table: Mapping[str, GridPoint]) -> list[GridPoint]:
    """The grid point of each file: the table's entry, else the file name's."""
    unused = sorted(set(table) - set(names))
    if unused:
        raise ValueError(
            f"the grid table lists {len(unused)} file(s) that {source} lacks: {unused[:5]}"
        )
    points, owner = [], {}
    for name in names:
        point = table.get(name) or blase_grid_point(name)
        if point is None:
            raise ValueError(
                f"{source}: {name!r} names no grid point (the original code's "
                "T{teff}G{logg}Z{feh}.pt, e.g. T4700G4.50Z0.00.pt) and no grid table lists "
                "it; pass a table (CSV file,teff,logg,feh; `jblase build --table`)"
            )
        if point in owner:
            raise ValueError(
                f"{source}: {owner[point]!r} and {name!r} are both grid point {tuple(point)}"
            )
        owner[point] = name
        points.append(point)
    return points


def read_blase_clones(
    source: str | os.PathLike,
    table: Mapping[str, GridPoint] | str | os.PathLike | None = None,
    *,
    progress: bool = True,
) -> dict[GridPoint, LineList]:
    """Read every ``.pt`` clone of ``source`` as ``{grid point: lines}``, sorted by point.

    Args:
        source: a directory (its ``*.pt`` files; sub-folders are not searched), a ``.zip`` of
            ``.pt`` files (at any folder depth) or one ``.pt`` file.
        table: ``{file base name: grid point}`` or the path of a CSV table
            (:func:`read_grid_table`) for files not named ``T{teff}G{logg}Z{feh}.pt``; its
            entries win over the names.
        progress: show a progress bar.

    Returns:
        Line lists as :func:`jblase.io.line_list_from_blase` makes them: tuned centres and
        widths as stored, identities from ``pre_line_centers`` rounded to 0.01 A. One warning
        counts the clones that lack ``pre_line_centers`` (identities from the tuned centres).

    Raises:
        ValueError: naming the file, for a file that is no clone, one whose name gives no grid
            point and that the table does not list, two files at one grid point, or table
            entries for files ``source`` lacks.
        jblase.io.UnsafePickleError: naming the file, for a pickle that asks for anything but
            tensors (nothing of it is run).
    """
    source = Path(source)
    if not source.exists():
        raise ValueError(f"{source}: no such directory or file")
    if table is not None and not isinstance(table, Mapping):
        table = read_grid_table(table)
    members = _members(source)
    points = _points(source, [name for name, _ in members], dict(table or {}))
    zipped = source.is_file() and source.suffix.lower() == ".zip"
    archive = zipfile.ZipFile(source) if zipped else None
    clones: dict[GridPoint, LineList] = {}
    without_identity = []
    try:
        for point, (name, member) in tqdm(
            list(zip(points, members, strict=True)),
            desc="reading .pt clones",
            unit="file",
            disable=not progress,
        ):
            if archive is None:
                where, state = member, read_torch_state_dict(member)
            else:
                where = f"{source}/{member}"
                state = read_torch_state_dict(where, fileobj=io.BytesIO(archive.read(member)))
            try:
                clones[point] = line_list_from_blase(state)
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from err
            if BLASE_IDENTITY_KEY not in state:
                without_identity.append(name)
    finally:
        if archive is not None:
            archive.close()
    if without_identity:
        warnings.warn(
            f"{source}: {len(without_identity)} of {len(members)} clones (e.g. "
            f"{without_identity[0]}) lack {BLASE_IDENTITY_KEY!r}, the pre-optimisation centres; "
            "their line identities are the tuned centres rounded to 0.01 A instead",
            stacklevel=2,
        )
    return dict(sorted(clones.items()))


def read_wavelength_file(
    path: str | os.PathLike, wl_range: tuple[float, float] | None = None
) -> np.ndarray:
    """Read a wavelength grid (vacuum A): float64 (n_pix,), strictly increasing.

    ``path`` is a ``.npy`` array, a FITS file whose primary HDU is a 1-D array (the PHOENIX
    ``WAVE_PHOENIX-ACES-AGSS-COND-2011.fits``), or a spectrum file that
    :func:`jblase.io.read_spectrum` reads (its ``wavelength`` column). ``wl_range`` (lo, hi) A
    keeps the pixels inside it (inclusive). ``ValueError`` naming the file if it is unreadable,
    not increasing or the crop keeps fewer than 2 pixels.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such wavelength file")
    name = path.name.lower()
    try:
        if name.endswith(".npy"):
            wl = np.load(path, allow_pickle=False)
        else:
            wl = None
            if ".fit" in name:
                from astropy.io import fits

                with fits.open(path, memmap=False) as hdul:
                    if hdul[0].data is not None and hdul[0].data.ndim == 1:
                        wl = np.array(hdul[0].data, dtype=np.float64)
            if wl is None:
                if not name.endswith(SPECTRUM_SUFFIXES):
                    raise ValueError(
                        "not a .npy, FITS or spectrum file "
                        f"({', '.join(('.npy', *SPECTRUM_SUFFIXES))})"
                    )
                wl = read_spectrum(path)[0]
        wl = check_wavelength(np.asarray(wl, dtype=np.float64), name=str(path))
    except ValueError as err:
        if str(err).startswith(str(path)):
            raise
        raise ValueError(f"{path}: unreadable wavelength file ({err})") from err
    except (OSError, EOFError, TypeError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: unreadable wavelength file ({err})") from err
    if wl_range is not None:
        lo, hi = wl_range
        wl = wl[(wl >= lo) & (wl <= hi)]
        if wl.size < 2:
            raise ValueError(f"{path}: wl_range {tuple(wl_range)} A keeps {wl.size} pixel(s)")
    return wl


def build_blase_manifold(
    source: str | os.PathLike,
    wavelength: ArrayLike,
    *,
    table: Mapping[str, GridPoint] | str | os.PathLike | None = None,
    wing_cut: int = BLASE_WING_CUT,
    fill_missing: bool = False,
    progress: bool = True,
) -> Manifold:
    """Build a :class:`~jblase.manifold.Manifold` from the original code's ``.pt`` clones.

    Args:
        source, table: as :func:`read_blase_clones`.
        wavelength: float64 (n_pix,), vacuum A: the wavelengths the clones were fitted on (the
            PHOENIX grid over the clones' band for the paper's; see
            :func:`read_wavelength_file`). The generator's output pixels.
        wing_cut: pixels per line window the clones were tuned with (the paper's 6000).
        fill_missing, progress: as :func:`jblase.manifold.build_manifold`.

    Returns:
        A manifold whose settings name profile ``"blase"`` and ``wing_cut``, so
        :meth:`jblase.generator.Generator.from_manifold` evaluates the lines as the original
        code tuned them; its ``rms`` is NaN (the files do not record it).
    """
    if int(wing_cut) < 1:
        raise ValueError(f"wing_cut must be >= 1 pixel, got {wing_cut}")
    clones = read_blase_clones(source, table, progress=progress)
    settings = {"origin": "blase .pt clones", "profile": BLASE_PROFILE, "wing_cut": int(wing_cut)}
    return manifold_from_line_lists(
        clones,
        wavelength,
        settings,
        fill_missing=fill_missing,
        progress=progress,
        source=str(source),
    )
