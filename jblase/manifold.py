# ruff: noqa: F722  (jaxtyping shape strings are not Python expressions)
"""Line manifolds (pipeline step 4): every cloned line, as a dense tensor over the grid.

Sits between cloning and the generator. A clone directory holds one line list per grid point
(:func:`write_clone`, :func:`write_clones_manifest`); :func:`build_manifold` (or, for line
lists in memory, :func:`manifold_from_line_lists`) identifies lines across the grid by their
identity centre (0.01 A), and lays each line's (mu' - identity, ln a, ln sigma, ln gamma) out
on the grid's own (Teff, log g, [Fe/H]) axes. Where a grid point lacks a line its ln a is -1000
(the line vanishes a hair away from where it was detected) and its other three parameters are
copied from the nearest grid point that has it, so everything stays finite and interpolates
smoothly. A :class:`Manifold` saves to and loads from one compressed, digest-checked ``.npz``
file.

Clone directory layout::

    CLONES_DIR/manifest.json      {"format": "jblase-clones", "format_version": 1,
                                   "settings": CloneSettings.as_dict(), "jblase_version", "source"}
    CLONES_DIR/wavelength.npy     float64 (n_pix,): the vacuum wavelengths (A) cloned on
    CLONES_DIR/<label>.npz        one clone per grid point, GridPoint.label() names it
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float
from tqdm.auto import tqdm

from jblase._checks import check_wavelength
from jblase.clone import CloneResult, CloneSettings
from jblase.grids.base import GridPoint
from jblase.identity import IDENTITY_KEYS_PER_AA, identity_keys
from jblase.interp import interpolate_lines
from jblase.io import atomic_write, load_line_list, save_line_list, write_json_atomic
from jblase.linelist import LineList

__all__ = [
    "ABSENT_LN_AMPLITUDE",
    "CLONES_FORMAT",
    "CLONES_FORMAT_VERSION",
    "MANIFOLD_FORMAT",
    "MANIFOLD_FORMAT_VERSION",
    "Manifold",
    "build_manifold",
    "directory_size",
    "is_clone_complete",
    "list_clones",
    "manifold_from_line_lists",
    "read_clones_manifest",
    "read_clones_wavelength",
    "write_clone",
    "write_clones_manifest",
]

#: ln a of a line at a grid point where it was not detected (the paper's fill).
ABSENT_LN_AMPLITUDE = -1000.0
CLONES_FORMAT = "jblase-clones"
CLONES_FORMAT_VERSION = 1
MANIFOLD_FORMAT = "jblase-manifold"
MANIFOLD_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
WAVELENGTH_NAME = "wavelength.npy"

#: The four per-line parameters, in the order of the last axis of ``Manifold.params``.
PARAMETERS = ("center_offset", "ln_amplitude", "ln_sigma", "ln_gamma")
_AXIS_NAMES = ("teff", "logg", "feh")
_LABEL = re.compile(r"^T\d{5,}_g-?\d+\.\d\d_Z[+-]\d+\.\d$")
_READ_ERRORS = (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile, zlib.error)
# Elements of one intermediate of the nearest-present search; bounds memory to ~8 MB.
_FILL_BUDGET = 2**21


def _version() -> str:
    from jblase import __version__  # late: jblase/__init__ may import this module

    return __version__


# --------------------------------------------------------------------------- clone directories


def write_clone(clones_dir: str | os.PathLike, point: GridPoint, result: CloneResult) -> Path:
    """Write one grid point's clone to ``clones_dir/<point.label()>.npz`` atomically.

    The metadata holds ``teff`` (K), ``logg``, ``feh`` (dex), ``rms``, ``rms_initial``
    (normalised flux), ``n_lines``, ``loss_history`` (list of floats), ``settings`` and
    ``jblase_version``. Returns the path written.
    """
    clones_dir = Path(clones_dir)
    clones_dir.mkdir(parents=True, exist_ok=True)
    point = GridPoint(*(float(v) for v in point))
    path = clones_dir / f"{point.label()}.npz"
    metadata = {
        "teff": point.teff,
        "logg": point.logg,
        "feh": point.feh,
        "rms": float(result.rms),
        "rms_initial": float(result.rms_initial),
        "n_lines": int(result.lines.n_lines),
        "loss_history": [float(x) for x in np.asarray(result.loss_history).ravel()],
        "settings": result.settings.as_dict(),
        "jblase_version": _version(),
    }
    save_line_list(path, result.lines, metadata)
    return path


def write_clones_manifest(
    clones_dir: str | os.PathLike,
    settings: CloneSettings | Mapping[str, Any],
    wavelength: ArrayLike,
    source: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``wavelength.npy`` (float64 (n_pix,), A) and then ``manifest.json``, each atomically.

    ``settings`` are the clone settings shared by every clone; ``source`` is free-form JSON
    (e.g. the grid's location and crop). Returns the manifest's path.
    """
    clones_dir = Path(clones_dir)
    clones_dir.mkdir(parents=True, exist_ok=True)
    wl = check_wavelength(wavelength)
    atomic_write(clones_dir / WAVELENGTH_NAME, lambda fh: np.save(fh, wl, allow_pickle=False))
    settings = settings.as_dict() if isinstance(settings, CloneSettings) else dict(settings)
    manifest = {
        "format": CLONES_FORMAT,
        "format_version": CLONES_FORMAT_VERSION,
        "settings": settings,
        "jblase_version": _version(),
        "source": dict(source or {}),
    }
    path = clones_dir / MANIFEST_NAME
    write_json_atomic(path, manifest)
    return path


def _require_dir(clones_dir: Path) -> None:
    if not clones_dir.is_dir():
        raise ValueError(f"{clones_dir}: no such clone directory")


def read_clones_manifest(clones_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``clones_dir/manifest.json``; ``ValueError`` naming the file if it is bad."""
    clones_dir = Path(clones_dir)
    _require_dir(clones_dir)
    path = clones_dir / MANIFEST_NAME
    if not path.is_file():
        raise ValueError(
            f"{path}: no clone manifest; is {clones_dir} a jblase clone directory "
            "(see write_clones_manifest)?"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable clone manifest ({err})") from err
    if not isinstance(manifest, dict) or manifest.get("format") != CLONES_FORMAT:
        fmt = manifest.get("format") if isinstance(manifest, dict) else manifest
        raise ValueError(f"{path}: format is {fmt!r}, not {CLONES_FORMAT!r}")
    version = manifest.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= CLONES_FORMAT_VERSION:
        raise ValueError(
            f"{path}: format version {version!r} is not one this jblase reads "
            f"(1 to {CLONES_FORMAT_VERSION})"
        )
    if not isinstance(manifest.get("settings"), dict):
        raise ValueError(f"{path}: 'settings' must be an object, got {manifest.get('settings')!r}")
    return manifest


def read_clones_wavelength(clones_dir: str | os.PathLike) -> np.ndarray:
    """The clone directory's wavelengths (vacuum A), float64 of shape (n_pix,), checked."""
    path = Path(clones_dir) / WAVELENGTH_NAME
    if not path.is_file():
        raise ValueError(f"{path}: no such file (written by write_clones_manifest)")
    try:
        wl = np.load(path, allow_pickle=False)
        return check_wavelength(wl, name=str(path))
    except ValueError as err:
        if str(err).startswith(str(path)):
            raise
        raise ValueError(f"{path}: unreadable wavelength file ({err})") from err
    except _READ_ERRORS as err:
        raise ValueError(f"{path}: unreadable wavelength file ({err})") from err


def _point_from_label(stem: str) -> GridPoint | None:
    if not _LABEL.match(stem):
        return None
    t, g, z = stem.split("_")
    point = GridPoint(float(t[1:]), float(g[1:]), float(z[1:]))
    return point if point.label() == stem else None


def list_clones(clones_dir: str | os.PathLike) -> dict[GridPoint, Path]:
    """Map each grid point with a clone file in ``clones_dir`` to that file, sorted by point.

    Points come from the file names (:meth:`GridPoint.label`, so Teff to 1 K, log g to 0.01 dex,
    [Fe/H] to 0.1 dex). Files not named like a label (and temporary ``*.tmp`` files) are
    ignored. A missing directory or manifest raises ``ValueError``. Files are not opened: see
    :func:`is_clone_complete`.
    """
    clones_dir = Path(clones_dir)
    read_clones_manifest(clones_dir)
    found = {}
    for path in clones_dir.glob("*.npz"):
        point = _point_from_label(path.stem)
        if point is not None and path.is_file():
            found[point] = path
    return dict(sorted(found.items()))


def is_clone_complete(path: str | os.PathLike) -> bool:
    """True if ``path`` is a readable jblase clone file whose line count matches its metadata."""
    # is_zipfile first: it rejects truncated files without np.load leaking a file handle.
    if not (Path(path).is_file() and zipfile.is_zipfile(path)):
        return False
    try:
        lines, metadata = load_line_list(path)
    except ValueError:
        return False
    n = metadata.get("n_lines")
    return n is None or n == len(lines)


def directory_size(path: str | os.PathLike) -> int:
    """Total size in bytes of every regular file under ``path`` (recursively, no symlinks)."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path}: no such directory")
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(root, name))
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


# --------------------------------------------------------------------------- the manifold


def _is_tracer(x) -> bool:
    return isinstance(x, jax.core.Tracer)


class Manifold(eqx.Module):
    """Every line of a cloned grid as a dense tensor over (Teff, log g, [Fe/H]).

    Attributes:
        params: float32 (n_lines, n_teff, n_logg, n_feh, 4): per line and grid point,
            (centre - identity_center [A], ln a, ln sigma [ln A], ln gamma [ln A]). The centre
            is an offset so float32 keeps ~1e-7 A; ln a is -1000 where the line is absent, and
            the other three are copied from the nearest grid point (index space) holding it.
        present: bool (n_lines, n_teff, n_logg, n_feh): the line was cloned at that point.
        identity_center: float64 (n_lines,), strictly increasing: each line's identity (A).
        axes: three strictly increasing float64 arrays: Teff (K), log g (dex), [Fe/H] (dex).
        wavelength: float64 (n_pix,): vacuum wavelengths (A) the clones were fitted on.
        rms: float32 (n_teff, n_logg, n_feh): each clone's RMS residual; NaN where the grid
            point had no clone (``build_manifold(fill_missing=True)``) or its clone recorded
            none (the original code's ``.pt`` clones).
        settings_json: the clone settings as a JSON string (static); see :attr:`settings`.
    """

    params: Float[Array, "n_lines n_teff n_logg n_feh 4"]
    present: Bool[Array, "n_lines n_teff n_logg n_feh"]
    identity_center: Float[Array, " n_lines"]
    axes: tuple[Float[Array, " n_teff"], Float[Array, " n_logg"], Float[Array, " n_feh"]]
    wavelength: Float[Array, " n_pix"]
    rms: Float[Array, "n_teff n_logg n_feh"]
    settings_json: str = eqx.field(static=True)

    def __init__(self, params, present, identity_center, axes, wavelength, rms, settings=None):
        self.params = jnp.asarray(params, dtype=jnp.float32)
        self.present = jnp.asarray(present, dtype=bool)
        self.identity_center = jnp.asarray(identity_center, dtype=jnp.float64)
        self.axes = tuple(jnp.asarray(a, dtype=jnp.float64) for a in axes)
        self.wavelength = jnp.asarray(wavelength, dtype=jnp.float64)
        self.rms = jnp.asarray(rms, dtype=jnp.float32)
        if isinstance(settings, str):
            settings = json.loads(settings)
        self.settings_json = json.dumps(dict(settings or {}), sort_keys=True)

    def __check_init__(self):
        if len(self.axes) != 3:
            raise ValueError(f"need 3 axes (teff, logg, feh), got {len(self.axes)}")
        grid = tuple(a.shape[0] for a in self.axes)
        n = self.identity_center.shape[0] if self.identity_center.ndim == 1 else -1
        want = {
            "params": (n, *grid, 4),
            "present": (n, *grid),
            "identity_center": (n,),
            "rms": grid,
        }
        for name, shape in want.items():
            if getattr(self, name).shape != shape:
                raise ValueError(
                    f"Manifold.{name} has shape {getattr(self, name).shape}, expected {shape}"
                )
        if self.wavelength.ndim != 1:
            raise ValueError(f"Manifold.wavelength must be 1-D, got {self.wavelength.shape}")
        for name, arr in zip(
            ("identity_center", *_AXIS_NAMES), (self.identity_center, *self.axes), strict=True
        ):
            if arr.ndim != 1 or _is_tracer(arr):
                continue
            a = np.asarray(arr)
            if not (np.isfinite(a).all() and (np.diff(a) > 0).all()):
                raise ValueError(f"Manifold {name} must be finite and strictly increasing")

    # ------------------------------------------------------------------ views

    @property
    def settings(self) -> dict[str, Any]:
        """The clone settings (e.g. ``profile``, ``wing_cut``), a fresh dict."""
        return json.loads(self.settings_json)

    @property
    def n_lines(self) -> int:
        """Number of distinct line identities in the grid."""
        return int(self.identity_center.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid shape (n_teff, n_logg, n_feh)."""
        return tuple(int(a.shape[0]) for a in self.axes)  # type: ignore[return-value]

    @property
    def center_offset(self) -> Float[Array, "n_lines n_teff n_logg n_feh"]:
        """Centre minus identity centre (A), float32."""
        return self.params[..., 0]

    @property
    def ln_amplitude(self) -> Float[Array, "n_lines n_teff n_logg n_feh"]:
        """ln a; -1000 where the line is absent."""
        return self.params[..., 1]

    @property
    def ln_sigma(self) -> Float[Array, "n_lines n_teff n_logg n_feh"]:
        """ln sigma (ln A)."""
        return self.params[..., 2]

    @property
    def ln_gamma(self) -> Float[Array, "n_lines n_teff n_logg n_feh"]:
        """ln gamma (ln A)."""
        return self.params[..., 3]

    def points(self) -> list[GridPoint]:
        """All grid points of the rectilinear product, Teff slowest then log g then [Fe/H]."""
        t, g, z = (np.asarray(a).tolist() for a in self.axes)
        return [GridPoint(a, b, c) for a in t for b in g for c in z]

    def index_of(self, point: GridPoint | ArrayLike) -> tuple[int, int, int]:
        """Grid indices (i, j, k) of a grid point; ``ValueError`` if it is not on the grid."""
        out = []
        for name, axis, value in zip(_AXIS_NAMES, self.axes, point, strict=True):
            a = np.asarray(axis)
            i = int(np.argmin(np.abs(a - float(value))))
            if not abs(a[i] - float(value)) <= 1e-9 * max(1.0, abs(float(value))):
                raise ValueError(f"{name} = {float(value)!r} is not a grid value {a.tolist()}")
            out.append(i)
        return tuple(out)  # type: ignore[return-value]

    def line_counts(self) -> np.ndarray:
        """Number of lines present at each grid point, int64 (n_teff, n_logg, n_feh)."""
        return np.asarray(self.present).sum(axis=0, dtype=np.int64)

    def at_point(self, i: int, j: int, k: int) -> LineList:
        """The lines present at grid point (i, j, k), with float64 centres = identity + offset."""
        keep = np.asarray(self.present[:, i, j, k])
        p = np.asarray(self.params[:, i, j, k])[keep].astype(np.float64)
        ident = np.asarray(self.identity_center)[keep]
        return LineList(
            center=ident + p[:, 0],
            ln_amplitude=p[:, 1],
            ln_sigma=p[:, 2],
            ln_gamma=p[:, 3],
            identity_center=ident,
        )

    def interpolate(self, point: Float[ArrayLike, " 3"]) -> Float[Array, "n_lines 4"]:
        """Every line's (offset [A], ln a, ln sigma, ln gamma) at (Teff [K], log g, [Fe/H]).

        Trilinear on the grid's own axes, float32 (n_lines, 4); jit- and grad-friendly, and
        extrapolates linearly outside the grid (no bounds check).
        """
        return interpolate_lines(self.params, self.axes, jnp.asarray(point, dtype=jnp.float64))

    # ------------------------------------------------------------------ files

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {
            "format": np.array(MANIFOLD_FORMAT),
            "format_version": np.array(MANIFOLD_FORMAT_VERSION, dtype=np.int64),
            "jblase_version": np.array(_version()),
            "settings": np.array(self.settings_json),
            "identity_center": np.asarray(self.identity_center, dtype=np.float64),
            "wavelength": np.asarray(self.wavelength, dtype=np.float64),
            "rms": np.asarray(self.rms, dtype=np.float32),
            "params": np.asarray(self.params, dtype=np.float32),
            "present": np.packbits(np.asarray(self.present, dtype=bool).ravel()),
        }
        for name, axis in zip(_AXIS_NAMES, self.axes, strict=True):
            arrays[f"axis_{name}"] = np.asarray(axis, dtype=np.float64)
        return arrays

    def save(self, path: str | os.PathLike) -> Path:
        """Save to one compressed ``.npz`` atomically; returns the path.

        Arrays: ``params`` float32, ``present`` bit-packed (``np.packbits``, C order),
        ``identity_center``, ``axis_teff``/``axis_logg``/``axis_feh``, ``wavelength`` float64,
        ``rms`` float32; strings ``format``, ``format_version`` (int), ``jblase_version``,
        ``settings`` (JSON); and ``digest``, the SHA-256 of all the others.
        """
        path = Path(path)
        arrays = self._arrays()
        arrays["digest"] = np.array(_digest(arrays))
        atomic_write(path, lambda fh: np.savez_compressed(fh, **arrays))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Manifold:
        """Load a file written by :meth:`save`; never unpickles.

        A missing, truncated, corrupt or tampered-with file (digest mismatch), another format
        or version, or missing arrays raise ``ValueError`` naming the file.
        """
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: no such file")
        arrays = _read_npz(path)
        try:
            return _from_arrays(arrays)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}: inconsistent jblase manifold ({err})") from err


_REQUIRED = (
    "format_version",
    "jblase_version",
    "settings",
    "identity_center",
    "wavelength",
    "rms",
    "params",
    "present",
    "axis_teff",
    "axis_logg",
    "axis_feh",
    "digest",
)


def _digest(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over every array's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.reshape(-1).view(np.uint8).data)
    return h.hexdigest()


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        # Our own handle: np.load leaks the one it opens when the zip directory is unreadable.
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as npz:
            names = set(npz.files)
            fmt = str(npz["format"][()]) if "format" in names else None
            if fmt != MANIFOLD_FORMAT:
                raise ValueError(f"{path}: format is {fmt!r}, not {MANIFOLD_FORMAT!r}")
            version = int(npz["format_version"]) if "format_version" in names else None
            if version != MANIFOLD_FORMAT_VERSION:
                raise ValueError(
                    f"{path}: format version {version!r} is not one this jblase reads "
                    f"({MANIFOLD_FORMAT_VERSION})"
                )
            missing = [n for n in _REQUIRED if n not in names]
            if missing:
                raise ValueError(f"{path}: missing arrays {missing}")
            arrays = {n: npz[n] for n in npz.files}
    except AttributeError as err:  # a bare .npy array, not an archive
        raise ValueError(f"{path}: not a jblase manifold ({err})") from err
    except _READ_ERRORS as err:
        if isinstance(err, ValueError) and str(err).startswith(str(path)):
            raise
        kind = type(err).__name__
        raise ValueError(f"{path}: unreadable jblase manifold ({kind}: {err})") from err
    stored = str(arrays.pop("digest")[()])
    actual = _digest(arrays)
    if stored != actual:
        raise ValueError(
            f"{path}: SHA-256 digest mismatch (stored {stored[:16]}..., contents give "
            f"{actual[:16]}...); the file was altered or damaged"
        )
    return arrays


def _from_arrays(arrays: dict[str, np.ndarray]) -> Manifold:
    params = arrays["params"]
    if params.dtype != np.float32 or params.ndim != 5 or params.shape[-1] != 4:
        raise ValueError(
            f"params must be float32 (n_lines, T, G, Z, 4), got {params.dtype} {params.shape}"
        )
    n_present = math.prod(params.shape[:4])
    packed = arrays["present"]
    if packed.dtype != np.uint8 or packed.shape != ((n_present + 7) // 8,):
        raise ValueError(
            f"present holds {packed.shape} {packed.dtype}, need "
            f"({(n_present + 7) // 8},) uint8 for {params.shape[:4]}"
        )
    present = np.unpackbits(packed, count=n_present).astype(bool).reshape(params.shape[:4])
    return Manifold(
        params=params,
        present=present,
        identity_center=arrays["identity_center"],
        axes=tuple(arrays[f"axis_{n}"] for n in _AXIS_NAMES),
        wavelength=arrays["wavelength"],
        rms=arrays["rms"],
        settings=json.loads(str(arrays["settings"][()])),
    )


# --------------------------------------------------------------------------- building


def _axis_costs(shape: tuple[int, int, int], dtype) -> list[np.ndarray]:
    """Per-axis (n, n) integer costs ``(p - q)**2 * P + q * stride`` (see _nearest_present)."""
    n_points = math.prod(shape)
    strides = (shape[1] * shape[2], shape[2], 1)
    costs = []
    for n, stride in zip(shape, strides, strict=True):
        i = np.arange(n, dtype=np.int64)
        costs.append(
            ((i[:, None] - i[None, :]) ** 2 * n_points + i[None, :] * stride).astype(dtype)
        )
    return costs


def _key_dtype(shape: tuple[int, int, int]) -> type:
    """int32 when every key (and 2**30 + any key) fits, which is twice as fast; else int64."""
    n_points = math.prod(shape)
    largest = sum((n - 1) ** 2 for n in shape) * n_points + n_points
    return np.int32 if 2 * largest < 2**30 else np.int64


def _nearest_present(present: np.ndarray, costs: list[np.ndarray], inf) -> np.ndarray:
    """Flat index of the nearest present grid point, for a chunk of lines.

    ``present`` is (n_teff, n_logg, n_feh, n_chunk) (lines last, so the arithmetic runs along
    contiguous memory). Nearest means the smallest squared Euclidean distance in index units,
    ties going to the smallest flat (C-order) index: the key ``d2 * n_points + flat_index`` is
    a sum of one term per axis, so its minimum over present points is found one axis at a time
    (a separable min-plus transform, O(n_points * (n_teff + n_logg + n_feh)) per line).
    """
    cost_t, cost_g, cost_z = costs
    key = np.where(present[:, :, None, :, :], cost_z[None, None, :, :, None], inf).min(axis=3)
    key = (key[:, None] + cost_g[None, :, :, None, None]).min(axis=2)
    key = (key[None] + cost_t[:, :, None, None, None]).min(axis=1)
    return key % math.prod(present.shape[:3])


def _fill_absent(params: np.ndarray, present: np.ndarray, shape, progress: bool) -> None:
    """In place: absent (line, point) entries get ln a = -1000 and the nearest present values."""
    n_lines, n_points = present.shape
    if n_lines == 0:
        return
    dtype = _key_dtype(shape)
    costs = _axis_costs(shape, dtype)
    inf = dtype(2**30 if dtype == np.int32 else 2**61)  # INF + every cost still fits
    chunk = max(1, _FILL_BUDGET // (n_points * max(shape)))
    starts = range(0, n_lines, chunk)
    for s in tqdm(starts, desc="filling absent lines", unit="chunk", disable=not progress):
        pres = present[s : s + chunk]
        lines_last = np.ascontiguousarray(pres.T).reshape(*shape, -1)
        src = _nearest_present(lines_last, costs, inf).reshape(n_points, -1).T
        block = np.take_along_axis(params[s : s + chunk], src[..., None], axis=1)
        block[..., 1] = np.where(pres, block[..., 1], np.float32(ABSENT_LN_AMPLITUDE))
        params[s : s + chunk] = block


def _line_entries(lines: LineList, where: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(identity keys int64 (n,), values float64 (n, 4), n_duplicates) of one line list.

    Values are (centre [A], ln a, ln sigma, ln gamma); of lines sharing an identity key, the
    one with the largest ln a is kept (ties: the first).
    """
    lines = lines.compact()
    ident = np.asarray(lines.identity_center)
    values = np.stack([np.asarray(getattr(lines, f)) for f in ("center", *PARAMETERS[1:])], axis=-1)
    bad = ~np.isfinite(values).all(axis=-1) | ~np.isfinite(ident)
    if bad.any():
        raise ValueError(f"{where}: {int(bad.sum())} lines with non-finite parameters")
    keys = identity_keys(ident)
    order = np.lexsort((-values[:, 1], keys))
    first = np.ones(order.size, dtype=bool)
    first[1:] = keys[order][1:] != keys[order][:-1]
    keep = order[first]
    return keys[keep], values[keep], int((~first).sum())


def _read_clone(path: Path, label_point: GridPoint, settings: dict):
    """(point, rms, identity keys int64 (n,), values float64 (n, 4), n_duplicates) of one file."""
    lines, metadata = load_line_list(path)
    clone_settings = metadata.get("settings")
    if clone_settings is not None and clone_settings != settings:
        raise ValueError(
            f"{path}: clone settings {clone_settings} differ from the manifest's {settings}"
        )
    point = GridPoint(
        *(float(metadata.get(n, v)) for n, v in zip(_AXIS_NAMES, label_point, strict=True))
    )
    if point.label() != path.stem:
        raise ValueError(f"{path}: metadata say grid point {tuple(point)}, not {path.stem}")
    rms = float(metadata.get("rms", np.nan))
    return point, rms, *_line_entries(lines, str(path))


def build_manifold(
    clones_dir: str | os.PathLike, fill_missing: bool = False, progress: bool = True
) -> Manifold:
    """Build the line manifold of a clone directory.

    Lines are identified across the grid by ``identity_center`` rounded to 0.001 A
    (:data:`jblase.identity.IDENTITY_KEYS_PER_AA`; the paper's identities are multiples of
    0.01 A, matched ones from :mod:`jblase.complete` of 0.001 A); a
    spectrum holding one identity twice keeps the line with the larger ln a (one warning counts
    them). The axes are the sorted distinct Teff (K), log g and [Fe/H] (dex) of the clone
    files; non-uniform steps are fine.

    Args:
        clones_dir: a directory written by :func:`write_clones_manifest` and :func:`write_clone`.
        fill_missing: if the clones do not fill the rectilinear product of the axes, raise
            ``ValueError`` naming the missing points (default), or treat them as points where
            every line is absent (a warning counts them; their ``rms`` is NaN).
        progress: show progress bars.

    Returns:
        A :class:`Manifold`; ``params`` is float32 (n_lines, n_teff, n_logg, n_feh, 4), about
        16 bytes per line and grid point in memory.
    """
    clones_dir = Path(clones_dir)
    manifest = read_clones_manifest(clones_dir)
    wavelength = read_clones_wavelength(clones_dir)
    files = list_clones(clones_dir)
    if not files:
        raise ValueError(
            f"{clones_dir}: no clone files (named like {GridPoint(5000, 4.5, 0).label()}.npz)"
        )
    settings = manifest["settings"]
    clones = [
        _read_clone(path, label_point, settings)
        for label_point, path in tqdm(
            files.items(), desc="reading clones", unit="file", disable=not progress
        )
    ]
    return _assemble(clones, wavelength, settings, fill_missing, progress, str(clones_dir))


def manifold_from_line_lists(
    line_lists: Mapping[GridPoint, LineList],
    wavelength: ArrayLike,
    settings: Mapping[str, Any],
    *,
    rms: Mapping[GridPoint, float] | None = None,
    fill_missing: bool = False,
    progress: bool = True,
    source: str = "line lists",
) -> Manifold:
    """Build a manifold from line lists held in memory, one per grid point.

    The full-control twin of :func:`build_manifold` (which reads them from a clone directory):
    identities, duplicates, axes and missing points are handled exactly as there.

    Args:
        line_lists: (Teff K, log g dex, [Fe/H] dex) -> that grid point's lines.
        wavelength: float64 (n_pix,), vacuum A: the wavelengths the lines were fitted on.
        settings: the clone settings (JSON); the generator takes ``wing_cut`` and ``profile``
            from them.
        rms: each clone's RMS residual (normalised flux); NaN where not given.
        fill_missing, progress: as :func:`build_manifold`.
        source: what the lists came from, named in errors and warnings.
    """
    if not line_lists:
        raise ValueError(f"{source}: no line lists")
    wavelength = check_wavelength(wavelength)
    rms = dict(rms or {})
    clones = []
    for point, lines in line_lists.items():
        point = GridPoint(*(float(v) for v in point))
        where = f"{source} at {tuple(point)}"
        clones.append((point, float(rms.get(point, np.nan)), *_line_entries(lines, where)))
    return _assemble(clones, wavelength, dict(settings), fill_missing, progress, source)


def _assemble(clones, wavelength, settings, fill_missing, progress, source) -> Manifold:
    """The manifold of ``clones``, a list of :func:`_read_clone` tuples."""
    n_duplicates = sum(c[4] for c in clones)
    if n_duplicates:
        n_dup_files = sum(c[4] > 0 for c in clones)
        warnings.warn(
            f"{source}: {n_duplicates} duplicate line identities in {n_dup_files} clone "
            "files; kept the line with the larger ln_amplitude of each",
            stacklevel=3,
        )

    axes = tuple(np.unique([c[0][d] for c in clones]) for d in range(3))
    shape = tuple(len(a) for a in axes)
    index = np.array([[np.searchsorted(axes[d], c[0][d]) for d in range(3)] for c in clones])
    flat = np.ravel_multi_index(index.T, shape)
    missing = np.setdiff1d(np.arange(math.prod(shape)), flat)
    if missing.size:
        names = [
            GridPoint(
                *(float(axes[d][i]) for d, i in enumerate(np.unravel_index(m, shape)))
            ).label()
            for m in missing
        ]
        if not fill_missing:
            more = f" and {missing.size - 10} more" if missing.size > 10 else ""
            raise ValueError(
                f"{source}: the clones do not fill the {shape[0]} x {shape[1]} x {shape[2]} "
                f"grid of their own axes; {missing.size} of {math.prod(shape)} points missing: "
                f"{', '.join(names[:10])}{more} (build_manifold(fill_missing=True) treats them "
                "as points where every line is absent)"
            )
        warnings.warn(
            f"{source}: {missing.size} of {math.prod(shape)} grid points have no clone "
            f"(e.g. {names[0]}); every line is treated as absent there",
            stacklevel=3,
        )

    keys = np.unique(np.concatenate([c[2] for c in clones]))
    identity = keys / IDENTITY_KEYS_PER_AA
    n_points = math.prod(shape)
    params = np.zeros((keys.size, n_points, 4), dtype=np.float32)
    present = np.zeros((keys.size, n_points), dtype=bool)
    rms = np.full(n_points, np.nan, dtype=np.float32)
    for p, (_, clone_rms, clone_keys, values, _) in zip(flat, clones, strict=True):
        rows = np.searchsorted(keys, clone_keys)
        values = values.copy()
        values[:, 0] -= identity[rows]  # offset in float64, then float32
        params[rows, p] = values.astype(np.float32)
        present[rows, p] = True
        rms[p] = clone_rms
    _fill_absent(params, present, shape, progress)
    return Manifold(
        params=params.reshape(keys.size, *shape, 4),
        present=present.reshape(keys.size, *shape),
        identity_center=identity,
        axes=axes,
        wavelength=wavelength,
        rms=rms.reshape(shape),
        settings=settings,
    )
