"""PHOENIX-ACES-AGSS-COND-2011 HiRes grid access: file naming, a local-mirror reader, a downloader.

First step of the pipeline (grid files -> preprocess -> ...). A local mirror keeps the server's
layout below its root::

    ROOT/WAVE_PHOENIX-ACES-AGSS-COND-2011.fits
    ROOT/PHOENIX-ACES-AGSS-COND-2011/Z-0.0/lte05800-4.50-0.0.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits

:class:`PhoenixGrid` reads such a mirror (any Teff/log g/[Fe/H] present); :func:`download` fills
one for chosen points with the standard library only (cached, resumable, atomic).
"""

from __future__ import annotations

import http.client
import os
import re
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from tqdm.auto import tqdm

from jblase._checks import check_wavelength
from jblase.grids.base import GridPoint

__all__ = [
    "LIBRARY",
    "PAPER_SUBSET",
    "PHOENIX_BASE_URL",
    "WAVELENGTH_FILENAME",
    "DownloadError",
    "GridFileError",
    "GridSelection",
    "PhoenixGrid",
    "download",
    "feh_tag",
    "parse_phoenix_filename",
    "phoenix_relpath",
    "url_for",
]

LIBRARY = "PHOENIX-ACES-AGSS-COND-2011"
PHOENIX_BASE_URL = "https://phoenix.astro.physik.uni-goettingen.de/data/HiResFITS/"
WAVELENGTH_FILENAME = f"WAVE_{LIBRARY}.fits"

Range = tuple[float, float]
# Inclusive range ends and alpha matching tolerate float noise in user-given values.
_EPS = 1e-6


class GridFileError(ValueError):
    """A grid file or directory is missing, unreadable, or inconsistent; the message names it."""


class DownloadError(RuntimeError):
    """A download failed for good; the message names the URL and any partial file kept."""


# --------------------------------------------------------------------------------------------
# Naming


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


_NAME_RE = re.compile(
    r"^lte(?P<teff>\d{4,6})-(?P<logg>\d+\.\d{2})(?P<feh>[+-]\d+\.\d)"
    r"(?:\.Alpha=(?P<alpha>[+-]\d+\.\d{2}))?\." + re.escape(LIBRARY) + r"-HiRes\.fits$"
)


def parse_phoenix_filename(name: str | os.PathLike[str]) -> tuple[GridPoint, float]:
    """Inverse of :func:`phoenix_relpath`'s file name: ``(GridPoint, alpha)``.

    ``name`` may be a bare file name or a path (only its last component is read). Teff in K,
    log g in cgs dex, [Fe/H] and alpha in dex. Raises ``ValueError`` if it is not a PHOENIX
    HiRes spectrum name.
    """
    base = Path(name).name
    m = _NAME_RE.match(base)
    if m is None:
        raise ValueError(
            f"not a {LIBRARY} HiRes spectrum file name: {base!r} "
            f"(expected e.g. 'lte05800-4.50-0.0.{LIBRARY}-HiRes.fits')"
        )
    alpha = float(m["alpha"]) + 0.0 if m["alpha"] else 0.0
    return _point(m["teff"], m["logg"], m["feh"]), alpha


def url_for(point: GridPoint, base_url: str = PHOENIX_BASE_URL, alpha: float = 0.0) -> str:
    """URL of the HiRes spectrum at ``point`` (Teff K, log g dex, [Fe/H] dex) below ``base_url``."""
    return _join_url(base_url, phoenix_relpath(*point, alpha=alpha))


def _join_url(base_url: str, relpath: str) -> str:
    return base_url.rstrip("/") + "/" + relpath


def _point(teff: float | str, logg: float | str, feh: float | str) -> GridPoint:
    """A GridPoint rounded to PHOENIX's name precision, so equal points compare and hash equal."""
    # ``+ 0.0`` turns PHOENIX's "-0.0" into 0.0.
    return GridPoint(
        float(round(float(teff))), round(float(logg), 2) + 0.0, round(float(feh), 1) + 0.0
    )


# --------------------------------------------------------------------------------------------
# Selections


def _check_range(rng: Range | None, name: str) -> Range | None:
    if rng is None:
        return None
    if len(rng) != 2:
        raise ValueError(f"{name} must be a (lo, hi) pair, got {rng!r}")
    lo, hi = float(rng[0]), float(rng[1])
    if not lo <= hi:
        raise ValueError(f"{name} must have lo <= hi, got {rng!r}")
    return lo, hi


def _in_range(value: float, rng: Range | None) -> bool:
    return rng is None or (rng[0] - _EPS <= value <= rng[1] + _EPS)


def _fmt_values(values: Iterable[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def _fmt_ranges(**ranges: Range | None) -> str:
    given = [f"{k}=({v[0]:g}, {v[1]:g})" for k, v in ranges.items() if v is not None]
    return ", ".join(given) if given else "no range limits"


@dataclass(frozen=True)
class GridSelection:
    """A rectangular set of grid points: Teff values (K), log g values (dex), [Fe/H] values (dex).

    The axes are stored as sorted tuples of floats; ``alpha`` ([alpha/M], dex) is shared by all.
    """

    teffs: tuple[float, ...]
    loggs: tuple[float, ...]
    fehs: tuple[float, ...]
    alpha: float = 0.0

    def __post_init__(self) -> None:
        for name in ("teffs", "loggs", "fehs"):
            values = tuple(sorted({float(v) + 0.0 for v in getattr(self, name)}))
            if not values:
                raise ValueError(f"GridSelection.{name} is empty")
            object.__setattr__(self, name, values)
        object.__setattr__(self, "alpha", float(self.alpha) + 0.0)

    def __len__(self) -> int:
        return len(self.teffs) * len(self.loggs) * len(self.fehs)

    def points(self) -> list[GridPoint]:
        """All ``len(self)`` points, sorted by (teff, logg, feh)."""
        return [_point(t, g, z) for t in self.teffs for g in self.loggs for z in self.fehs]

    @classmethod
    def from_ranges(
        cls,
        teff: Range | None = None,
        logg: Range | None = None,
        feh: Range | None = None,
        base: GridSelection | None = None,
    ) -> GridSelection:
        """The values of ``base`` (default :data:`PAPER_SUBSET`) inside inclusive ranges.

        ``teff`` in K, ``logg`` and ``feh`` in dex, each ``(lo, hi)`` or ``None`` for all values.
        Raises ``ValueError`` naming the ranges and the available values if an axis is emptied.
        """
        base = PAPER_SUBSET if base is None else base
        ranges = {
            "teff": _check_range(teff, "teff"),
            "logg": _check_range(logg, "logg"),
            "feh": _check_range(feh, "feh"),
        }
        axes = {"teff": base.teffs, "logg": base.loggs, "feh": base.fehs}
        kept = {k: tuple(v for v in axes[k] if _in_range(v, ranges[k])) for k in axes}
        empty = [k for k in kept if not kept[k]]
        if empty:
            avail = "; ".join(f"{k} values {_fmt_values(axes[k])}" for k in empty)
            raise ValueError(
                f"empty grid selection for {_fmt_ranges(**ranges)}: no {', '.join(empty)} "
                f"value in range; available {avail}"
            )
        return cls(kept["teff"], kept["logg"], kept["feh"], alpha=base.alpha)


PAPER_SUBSET = GridSelection(
    teffs=tuple(float(t) for t in [*range(2300, 7001, 100), *range(7200, 12001, 200)]),
    loggs=tuple(2.0 + 0.5 * i for i in range(9)),
    fehs=(-0.5, 0.0),
)
"""The paper's grid (Table 1): Teff 2300-7000 K step 100 then 7200-12000 K step 200 (73 values),
log g 2.0-6.0 step 0.5 (9), [Fe/H] -0.5 and 0.0, alpha 0: 1,314 points."""


# --------------------------------------------------------------------------------------------
# Reading FITS


def _read_primary(path: Path) -> tuple[np.ndarray, fits.Header]:
    """Primary HDU of ``path`` as (1-D float64 array, header); ``GridFileError`` if unreadable."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with fits.open(path, memmap=False) as hdul:
                header = hdul[0].header.copy()
                data = hdul[0].data
                data = None if data is None else np.array(data, dtype=np.float64)
    except FileNotFoundError as exc:
        raise GridFileError(f"file not found: {path}") from exc
    except (OSError, ValueError, TypeError, IndexError) as exc:
        noted = "".join(f"; {w.message}" for w in caught)
        raise GridFileError(
            f"cannot read FITS file {path} (truncated or corrupt?): {exc}{noted}"
        ) from exc
    # astropy only warns on a truncated file and may hand back short or zero-padded data.
    truncated = [str(w.message) for w in caught if "truncat" in str(w.message).lower()]
    if truncated:
        raise GridFileError(f"truncated FITS file {path}: {truncated[0]}")
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if data is None or data.ndim != 1:
        shape = None if data is None else data.shape
        raise GridFileError(f"{path}: primary HDU must hold a 1-D array, got shape {shape}")
    naxis1 = header.get("NAXIS1")
    if naxis1 is not None and data.size != naxis1:
        raise GridFileError(f"{path}: truncated, read {data.size} values but NAXIS1 = {naxis1}")
    return data, header


_HEADER_KEYS = ("PHXTEFF", "PHXLOGG", "PHXM_H", "PHXALPHA")


def _check_header(path: Path, header: fits.Header, point: GridPoint, alpha: float) -> None:
    expected = {"PHXTEFF": point.teff, "PHXLOGG": point.logg, "PHXM_H": point.feh}
    expected["PHXALPHA"] = alpha
    # Half a step of the name's precision (Teff: integer K, log g: 0.01, [Fe/H]: 0.1, alpha: 0.01).
    tol = {"PHXTEFF": 0.5, "PHXLOGG": 0.005, "PHXM_H": 0.05, "PHXALPHA": 0.005}
    bad = [
        f"{key}={header[key]!r} (file name says {expected[key]:g})"
        for key in _HEADER_KEYS
        if key in header and abs(float(header[key]) - expected[key]) > tol[key]
    ]
    if bad:
        raise GridFileError(f"{path}: header disagrees with file name: {', '.join(bad)}")


# --------------------------------------------------------------------------------------------
# Local mirror


class PhoenixGrid:
    """Reader for a local PHOENIX HiRes mirror; follows :class:`jblase.grids.base.SpectralGrid`.

    Scans ``root/PHOENIX-ACES-AGSS-COND-2011/Z*/`` for spectra with the given ``alpha`` and keeps
    those inside the inclusive ranges ``teff_range`` (K), ``logg_range`` and ``feh_range`` (dex).
    ``wl_range`` (A, vacuum, inclusive) crops the wavelength and every flux to the same pixels.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        wl_range: Range | None = None,
        teff_range: Range | None = None,
        logg_range: Range | None = None,
        feh_range: Range | None = None,
        alpha: float = 0.0,
    ) -> None:
        self.root = Path(root)
        self.alpha = float(alpha) + 0.0
        self.wl_range = _check_range(wl_range, "wl_range")
        self.teff_range = _check_range(teff_range, "teff_range")
        self.logg_range = _check_range(logg_range, "logg_range")
        self.feh_range = _check_range(feh_range, "feh_range")
        self._wavelength: np.ndarray | None = None
        self._crop: slice | None = None
        self._n_full: int | None = None

        if not self.root.is_dir():
            raise GridFileError(f"PHOENIX mirror root is not a directory: {self.root}")
        found = self._scan()
        if not found:
            raise GridFileError(
                f"no {LIBRARY} HiRes files with alpha={self.alpha:+.2f} under "
                f"{self.root / LIBRARY}/Z*/ (expected e.g. {phoenix_relpath(5800, 4.5, 0.0)})"
            )
        self._paths = {
            p: path
            for p, path in found.items()
            if _in_range(p.teff, self.teff_range)
            and _in_range(p.logg, self.logg_range)
            and _in_range(p.feh, self.feh_range)
        }
        if not self._paths:
            avail = [sorted({getattr(p, k) for p in found}) for k in ("teff", "logg", "feh")]
            ranges = _fmt_ranges(
                teff_range=self.teff_range, logg_range=self.logg_range, feh_range=self.feh_range
            )
            raise GridFileError(
                f"no spectra in {self.root} for {ranges}; {len(found)} files available with "
                f"teff {_fmt_values(avail[0])}, logg {_fmt_values(avail[1])}, "
                f"feh {_fmt_values(avail[2])}"
            )
        self._points = sorted(self._paths)

    def _scan(self) -> dict[GridPoint, Path]:
        found: dict[GridPoint, Path] = {}
        for path in sorted(self.root.glob(f"{LIBRARY}/Z*/*.fits")):
            try:
                point, alpha = parse_phoenix_filename(path.name)
            except ValueError:
                continue
            if abs(alpha - self.alpha) > _EPS:
                continue
            if point in found:
                raise GridFileError(f"two files for {point}: {found[point]} and {path}")
            found[point] = path
        return found

    def __len__(self) -> int:
        return len(self._points)

    def __repr__(self) -> str:
        return f"PhoenixGrid({str(self.root)!r}, {len(self)} points, wl_range={self.wl_range})"

    def points(self) -> list[GridPoint]:
        """The selected grid points, sorted by (teff, logg, feh)."""
        return list(self._points)

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unique sorted (teffs K, loggs dex, fehs dex) of the selected points, float64 arrays."""
        arr = np.asarray(self._points, dtype=np.float64)
        return np.unique(arr[:, 0]), np.unique(arr[:, 1]), np.unique(arr[:, 2])

    def path(self, point: GridPoint | Sequence[float]) -> Path:
        """Local file of ``point`` (Teff K, log g dex, [Fe/H] dex); ``GridFileError`` if absent."""
        key = _point(*point)
        try:
            return self._paths[key]
        except KeyError:
            teffs, loggs, fehs = self.axes()
            raise GridFileError(
                f"{key} is not in the selected grid under {self.root} (it would be "
                f"{self.root / phoenix_relpath(*key, alpha=self.alpha)}); selected teff "
                f"{_fmt_values(teffs)}, logg {_fmt_values(loggs)}, feh {_fmt_values(fehs)}"
            ) from None

    def header(self, point: GridPoint | Sequence[float]) -> dict[str, float]:
        """The PHOENIX keys present in the header of ``point``'s file (PHXTEFF, PHXLOGG, ...).

        Raises ``GridFileError`` if they disagree with the file name.
        """
        path = self.path(point)
        try:
            header = fits.getheader(path, 0)
        except (OSError, ValueError) as exc:
            raise GridFileError(f"cannot read FITS header of {path}: {exc}") from exc
        _check_header(path, header, _point(*point), self.alpha)
        return {key: float(header[key]) for key in _HEADER_KEYS if key in header}

    def wavelength(self) -> np.ndarray:
        """Vacuum wavelengths in A, float64, shape (n_pix,), cropped to ``wl_range`` (read-only)."""
        if self._wavelength is None:
            path = self.root / WAVELENGTH_FILENAME
            if not path.is_file():
                raise GridFileError(f"PHOENIX wavelength file not found: {path}")
            wl, _ = _read_primary(path)
            try:
                wl = check_wavelength(wl, name=str(path))
            except ValueError as exc:
                raise GridFileError(str(exc)) from exc
            lo, hi = (-np.inf, np.inf) if self.wl_range is None else self.wl_range
            start, stop = np.searchsorted(wl, lo, "left"), np.searchsorted(wl, hi, "right")
            if stop - start < 2:
                raise GridFileError(
                    f"wl_range={self.wl_range} selects {max(stop - start, 0)} pixel(s) of {path}, "
                    f"which covers {wl[0]:.4f}-{wl[-1]:.4f} A; need at least 2"
                )
            self._n_full, self._crop = wl.size, slice(int(start), int(stop))
            cropped = wl[self._crop].copy()
            cropped.setflags(write=False)
            self._wavelength = cropped
        return self._wavelength

    def load_flux(self, point: GridPoint | Sequence[float]) -> np.ndarray:
        """Raw flux at ``point`` on :meth:`wavelength`, float64, shape (n_pix,).

        Units as in the file (PHOENIX: erg/s/cm^2/cm). Raises ``GridFileError`` naming the file if
        it is truncated, its length differs from the wavelength file's, or its header disagrees
        with its name.
        """
        path = self.path(point)
        self.wavelength()
        flux, header = _read_primary(path)
        _check_header(path, header, _point(*point), self.alpha)
        if flux.size != self._n_full:
            raise GridFileError(
                f"{path} has {flux.size} pixels but {self.root / WAVELENGTH_FILENAME} has "
                f"{self._n_full}"
            )
        return flux[self._crop].copy()


# --------------------------------------------------------------------------------------------
# Downloading

_CHUNK = 1 << 20
_RETRYABLE = (OSError, http.client.HTTPException)
_CONTENT_RANGE_RE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class _Incomplete(OSError):
    """The body ended before Content-Length bytes arrived (kept as a resumable .part)."""


def _fetch_once(
    opener: urllib.request.OpenerDirector, url: str, part: Path, timeout: float
) -> None:
    """One request for ``url`` into ``part``, resuming from its size; raise if not all arrived."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "jblase"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        resp = opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            # Range past the end: the .part is complete if its size is the server's total.
            m = re.search(r"/(\d+)", exc.headers.get("Content-Range", "") if exc.headers else "")
            if m and int(m[1]) == offset:
                return
            part.unlink()
        raise
    with resp:
        length = resp.headers.get("Content-Length")
        if resp.status == 206:
            m = _CONTENT_RANGE_RE.match(resp.headers.get("Content-Range", ""))
            if m is None or int(m[1]) != offset:
                part.unlink(missing_ok=True)
                raise _Incomplete(f"unexpected Content-Range {resp.headers.get('Content-Range')!r}")
            total = int(m[3]) if m[3] != "*" else None
            mode = "ab"
        else:
            # 200: the server ignored Range (or there was none): start from zero.
            total = int(length) if length is not None else None
            mode = "wb"
        with open(part, mode) as f:
            # read1: whatever has arrived (up to _CHUNK), so a stalled body keeps what came.
            while chunk := resp.read1(_CHUNK):
                f.write(chunk)
    size = part.stat().st_size
    if total is not None and size != total:
        raise _Incomplete(f"got {size} of {total} bytes")


def _reason(exc: BaseException | None, timeout: float) -> str:
    """Why a request failed, in words; a timeout says how long the server sent nothing."""
    cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(cause, TimeoutError):
        return f"timed out: the server sent nothing for {timeout:g} s (timeout={timeout:g})"
    return repr(exc)


def _fetch(
    opener: urllib.request.OpenerDirector,
    url: str,
    dest: Path,
    timeout: float,
    retries: int,
    backoff: float,
) -> None:
    """Download ``url`` to ``dest`` via ``dest.part`` and an atomic rename; resume on retry."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last: BaseException | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            _fetch_once(opener, url, part, timeout)
            break
        except urllib.error.HTTPError as exc:
            last = exc
            if 400 <= exc.code < 500 and exc.code not in (408, 416, 429):
                raise DownloadError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from exc
        except _RETRYABLE as exc:
            last = exc
    else:
        kept = f"; partial data kept in {part}, call again to resume" if part.exists() else ""
        raise DownloadError(
            f"cannot download {url} after {retries + 1} attempt(s): {_reason(last, timeout)}{kept}"
        ) from last
    try:
        _read_primary(part)
    except GridFileError as exc:
        part.unlink()
        raise DownloadError(f"downloaded {url} is not a readable FITS file: {exc}") from exc
    os.replace(part, dest)


def download(
    points: Iterable[GridPoint],
    cache_dir: str | os.PathLike[str],
    base_url: str = PHOENIX_BASE_URL,
    alpha: float = 0.0,
    progress: bool = True,
    timeout: float = 60.0,
    retries: int = 3,
    backoff: float = 1.0,
) -> list[Path]:
    """Fetch the wavelength file and the spectra at ``points`` into a mirror at ``cache_dir``.

    Files already at their final name are skipped without a request. Each file is written to
    ``NAME.part`` and renamed atomically once its byte count equals Content-Length and it opens
    as FITS; a leftover ``.part`` is resumed with an HTTP Range request. Failed requests are
    retried ``retries`` times, sleeping ``backoff * 2**k`` seconds; then :class:`DownloadError`
    names the URL and the ``.part`` is kept for the next call. ``timeout`` (s) bounds each wait
    for the server (to connect, for the response, for each chunk of the body): a server that
    stalls fails that attempt after ``timeout`` seconds, and the error says it timed out.

    Returns the local paths: the wavelength file first, then one per unique point, in order.
    """
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    root = Path(cache_dir)
    unique = list(dict.fromkeys(_point(*p) for p in points))
    relpaths = [WAVELENGTH_FILENAME] + [phoenix_relpath(*p, alpha=alpha) for p in unique]
    opener = urllib.request.build_opener()
    paths = []
    for rel in tqdm(relpaths, desc="PHOENIX files", unit="file", disable=not progress):
        dest = root / rel
        if not dest.is_file():
            _fetch(opener, _join_url(base_url, rel), dest, timeout, retries, backoff)
        paths.append(dest)
    return paths
