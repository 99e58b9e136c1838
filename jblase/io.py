"""File input/output: PyTorch ``blase`` clones (read without torch), jblase clone files, spectra.

Sits at both ends of the pipeline: it imports the published PyTorch clones (and the observed
spectra they are fitted to) and writes jblase's own clone files, atomically. Wavelengths are
vacuum Angstrom in float64 throughout. Every reader raises ``ValueError`` naming the file when
the file is missing, truncated, corrupt or in the wrong format.

PyTorch ``.pt`` files are pickles, and unpickling runs code. :func:`read_torch_state_dict`
therefore uses a restricted unpickler that resolves only the few globals needed to rebuild
tensors (into NumPy arrays) and refuses every other global with :class:`UnsafePickleError`
before it can be called.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import pickle
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from jblase.linelist import LineList

__all__ = [
    "BLASE_IDENTITY_KEY",
    "CLONE_FORMAT",
    "CLONE_FORMAT_VERSION",
    "SPECTRUM_SUFFIXES",
    "UnsafePickleError",
    "atomic_write",
    "line_list_from_blase",
    "load_line_list",
    "read_blase_clone",
    "read_spectrum",
    "read_torch_state_dict",
    "save_line_list",
    "write_json_atomic",
    "write_spectrum",
]

#: Value of the ``format`` entry of a jblase clone file, and its current version.
CLONE_FORMAT = "jblase-clone"
CLONE_FORMAT_VERSION = 1
#: File name endings :func:`read_spectrum` and :func:`write_spectrum` understand.
SPECTRUM_SUFFIXES = (".npz", ".csv", ".fits", ".fit", ".fits.gz", ".fit.gz")

_LINE_FIELDS = ("identity_center", "center", "ln_amplitude", "ln_sigma", "ln_gamma")
_BLASE_KEYS = {
    "center": "lam_centers",
    "ln_amplitude": "amplitudes",
    "ln_sigma": "sigma_widths",
    "ln_gamma": "gamma_widths",
}
#: The state-dict key of the paper's pre-optimisation line centres (vacuum A), the lines'
#: identities; clones made before it was stored lack it.
BLASE_IDENTITY_KEY = "pre_line_centers"
# Errors that reading a damaged file can raise from zipfile, zlib, numpy or astropy.
_READ_ERRORS = (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile, zlib.error)


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global outside the tensor-rebuilding allow-list; nothing was run."""


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise ValueError(f"{path}: no such file")


# --------------------------------------------------------------------------- atomic writes


def atomic_write(path: str | os.PathLike, write_fn: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` atomically: ``write_fn(fh)`` fills ``<path>.tmp`` (binary), then it replaces.

    The temporary file sits in the same directory, is fsynced and moved over ``path`` with
    ``os.replace``, so readers see either the old file or the complete new one. On any error the
    temporary file is removed and the error re-raised.
    """
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            write_fn(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable; not possible on every platform
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _jsonable(obj: Any) -> Any:
    """Convert NumPy/JAX scalars and arrays, tuples and paths to plain JSON types, recursively."""
    if isinstance(obj, Mapping):
        return {str(_jsonable(k)): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray) or hasattr(obj, "__array__"):
        return np.asarray(obj).tolist()
    return obj


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int = 2) -> None:
    """Write ``obj`` as UTF-8 JSON to ``path`` atomically; NumPy/JAX values become plain JSON."""
    text = json.dumps(_jsonable(obj), indent=indent) + "\n"
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


# --------------------------------------------------------------------------- PyTorch reading


class _StorageType(NamedTuple):
    """What a ``torch.<X>Storage`` global resolves to: its name and element dtype."""

    name: str
    dtype: np.dtype


class _Storage(NamedTuple):
    """A storage record: its raw bytes, element type and element count."""

    data: bytes
    type: _StorageType
    numel: int


_STORAGE_DTYPES = {
    "DoubleStorage": "f8",
    "FloatStorage": "f4",
    "HalfStorage": "f2",
    "BFloat16Storage": "u2",  # converted to float32 after indexing
    "LongStorage": "i8",
    "IntStorage": "i4",
    "ShortStorage": "i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
    "ComplexDoubleStorage": "c16",
    "ComplexFloatStorage": "c8",
}


class _Global(NamedTuple):
    """An allowed callable, immutable so that a pickle's BUILD opcode cannot alter it."""

    fn: Callable[..., Any]

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


class _TorchUnpickler(pickle.Unpickler):
    """Unpickles a torch ``data.pkl`` into NumPy arrays; refuses every other global."""

    def __init__(self, file: BinaryIO, archive: zipfile.ZipFile, prefix: str, source: Path):
        super().__init__(file)
        self._archive = archive
        self._prefix = prefix
        self._source = source
        self._byteorder = "<"
        if f"{prefix}/byteorder" in archive.namelist():
            if archive.read(f"{prefix}/byteorder").strip() == b"big":
                self._byteorder = ">"
        # Only immutable objects (tuples) are handed to the pickle, so BUILD cannot tamper
        # with them or with anything shared between loads.
        self._allowed: dict[tuple[str, str], Any] = {
            ("collections", "OrderedDict"): _Global(OrderedDict),
            ("torch._utils", "_rebuild_tensor_v2"): _Global(self._rebuild_tensor_v2),
            ("torch._utils", "_rebuild_parameter"): _Global(self._rebuild_parameter),
            ("torch._utils", "_rebuild_parameter_with_state"): _Global(self._rebuild_parameter),
        }
        for name, code in _STORAGE_DTYPES.items():
            dtype = np.dtype(code).newbyteorder(self._byteorder)
            self._allowed["torch", name] = _StorageType(name, dtype)

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[module, name]
        except KeyError:
            raise UnsafePickleError(
                f"{self._source}: refused to load global {module}.{name}; only the globals "
                "that rebuild tensors and state dicts are allowed"
            ) from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ValueError(f"{self._source}: unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise ValueError(f"{self._source}: storage {key!r} has no known storage type")
        if not isinstance(numel, int) or numel < 0:
            raise ValueError(f"{self._source}: storage {key!r} has bad size {numel!r}")
        record = f"{self._prefix}/data/{key}"
        try:
            data = self._archive.read(record)
        except KeyError:
            raise ValueError(f"{self._source}: missing storage record {record!r}") from None
        need = numel * storage_type.dtype.itemsize
        if len(data) < need:
            raise ValueError(
                f"{self._source}: storage record {record!r} holds {len(data)} bytes, "
                f"{need} needed for {numel} x {storage_type.name}"
            )
        return _Storage(data, storage_type, numel)

    def _rebuild_tensor_v2(
        self,
        storage: _Storage,
        storage_offset: int,
        size: tuple[int, ...],
        stride: tuple[int, ...],
        requires_grad: bool = False,
        backward_hooks: Any = None,
        metadata: Any = None,
    ) -> np.ndarray:
        if not isinstance(storage, _Storage):
            raise ValueError(f"{self._source}: tensor built from {type(storage).__name__}")
        size, stride = tuple(size), tuple(stride)
        ints = all(isinstance(v, int) for v in (storage_offset, *size, *stride))
        if (
            not ints
            or len(size) != len(stride)
            or min((storage_offset, *size, *stride), default=0) < 0
        ):
            raise ValueError(
                f"{self._source}: bad tensor layout offset={storage_offset!r} size={size!r} "
                f"stride={stride!r}"
            )
        dtype = storage.type.dtype
        if 0 in size:
            out = np.empty(size, dtype=dtype.newbyteorder("="))
        else:
            last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
            if last >= storage.numel:
                raise ValueError(
                    f"{self._source}: tensor of size {size} (offset {storage_offset}, stride "
                    f"{stride}) reaches element {last} of a storage of {storage.numel}"
                )
            flat = np.frombuffer(storage.data, dtype=dtype, count=storage.numel)
            view = np.lib.stride_tricks.as_strided(
                flat[storage_offset:],
                shape=size,
                strides=tuple(s * dtype.itemsize for s in stride),
                writeable=False,
            )
            out = np.array(view, dtype=dtype.newbyteorder("="), order="C")  # native-order copy
        if storage.type.name == "BFloat16Storage":
            out = (out.astype(np.uint32) << 16).view(np.float32)
        return out

    @staticmethod
    def _rebuild_parameter(data: np.ndarray, requires_grad: bool, backward_hooks: Any, *_) -> Any:
        return data


def _find_prefix(archive: zipfile.ZipFile, source: Path) -> str:
    pkls = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if not pkls:
        raise ValueError(f"{source}: no '<folder>/data.pkl' record; not a PyTorch zip checkpoint")
    if len(pkls) > 1:
        raise ValueError(f"{source}: several data.pkl records {pkls}; expected exactly one")
    return pkls[0].split("/")[0]


def read_torch_state_dict(
    path: str | os.PathLike, *, fileobj: BinaryIO | None = None
) -> dict[str, np.ndarray]:
    """Read a PyTorch zip-format state dict (``torch.save(model.state_dict())``) without torch.

    Tensors become NumPy arrays with their stored dtype (bfloat16 becomes float32), shape and
    values, in native byte order; 0-d tensors become 0-d arrays. Only tensors, parameters and
    (ordered) dicts are rebuilt: any other global in the pickle raises :class:`UnsafePickleError`
    before it is called. A file that is not such an archive, or whose records are missing or
    short, raises ``ValueError`` naming the file.

    ``fileobj``, a seekable binary file (e.g. a member of a zip of clones read into
    ``io.BytesIO``), is read instead of opening ``path``, which then only names it in errors.
    """
    path = Path(path)
    if fileobj is None:
        _require_file(path)
    try:
        archive = zipfile.ZipFile(path if fileobj is None else fileobj)
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"{path}: not a PyTorch zip checkpoint ({err})") from err
    with archive:
        prefix = _find_prefix(archive, path)
        try:
            pkl = archive.read(f"{prefix}/data.pkl")
            obj = _TorchUnpickler(io.BytesIO(pkl), archive, prefix, path).load()
        except UnsafePickleError:
            raise
        except ValueError as err:
            if str(err).startswith(str(path)):
                raise
            raise ValueError(f"{path}: corrupt checkpoint ({err})") from err
        except (pickle.UnpicklingError, AttributeError, IndexError, *_READ_ERRORS) as err:
            raise ValueError(f"{path}: corrupt checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    out: dict[str, np.ndarray] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not (
            isinstance(value, np.ndarray) and value.dtype.kind in "biufc"
        ):
            raise ValueError(
                f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor; only flat "
                "state dicts of tensors are supported"
            )
        out[key] = value
    return out


def line_list_from_blase(state_dict: Mapping[str, ArrayLike]) -> LineList:
    """Build a :class:`LineList` from a PyTorch ``blase`` clone's state dict.

    Uses ``lam_centers`` (tuned, vacuum A) as the centres, ``amplitudes`` (ln a),
    ``sigma_widths`` (ln sigma, A) and ``gamma_widths`` (ln gamma, A), all shape (n_lines,), as
    float64. The identity centres are, as in the paper, the pre-optimisation centres
    ``pre_line_centers`` rounded to 0.01 A; older clones lack that key, and their identities
    are the tuned centres rounded to 0.01 A instead (see :data:`BLASE_IDENTITY_KEY`). Other keys
    (radial velocity, continuum coefficients) are ignored. Missing keys or unequal shapes raise
    ``ValueError``.
    """
    missing = [k for k in _BLASE_KEYS.values() if k not in state_dict]
    if missing:
        raise ValueError(f"blase state dict lacks {missing}; it has {sorted(state_dict)}")
    keys = dict(_BLASE_KEYS)
    if BLASE_IDENTITY_KEY in state_dict:
        keys["identity_center"] = BLASE_IDENTITY_KEY
    arrays = {f: np.asarray(state_dict[k], dtype=np.float64) for f, k in keys.items()}
    shapes = {keys[f]: a.shape for f, a in arrays.items()}
    if len(set(shapes.values())) != 1 or arrays["center"].ndim != 1:
        raise ValueError(f"blase line arrays must be 1-D and the same shape, got {shapes}")
    identity = arrays.pop("identity_center", arrays["center"])
    return LineList(identity_center=np.round(identity, 2), **arrays)


def read_blase_clone(path: str | os.PathLike) -> LineList:
    """Read a PyTorch ``blase`` clone file (``.pt``) as a :class:`LineList`, without torch."""
    state = read_torch_state_dict(path)
    try:
        return line_list_from_blase(state)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


# --------------------------------------------------------------------------- jblase clone files


def save_line_list(
    path: str | os.PathLike, lines: LineList, metadata: Mapping[str, Any] | None = None
) -> None:
    """Save one line list (its real lines only) and JSON metadata to a ``.npz`` atomically.

    Arrays ``identity_center``, ``center`` (A), ``ln_amplitude``, ``ln_sigma``, ``ln_gamma``
    (ln A) are float64 of shape (n_lines,); ``metadata`` is a JSON string (NumPy values are
    converted) in a 0-d unicode array; ``format`` and ``format_version`` identify the file.
    """
    compact = lines.compact()
    arrays = {f: np.asarray(getattr(compact, f), dtype=np.float64) for f in _LINE_FIELDS}
    arrays["metadata"] = np.array(json.dumps(_jsonable(dict(metadata or {}))))
    arrays["format"] = np.array(CLONE_FORMAT)
    arrays["format_version"] = np.array(CLONE_FORMAT_VERSION, dtype=np.int64)
    atomic_write(path, lambda fh: np.savez(fh, **arrays))


def load_line_list(path: str | os.PathLike) -> tuple[LineList, dict[str, Any]]:
    """Load a clone file written by :func:`save_line_list`: ``(lines, metadata)``.

    Never unpickles. A missing, truncated or corrupt file, or one of another format or a newer
    version, raises ``ValueError`` naming the file.
    """
    path = Path(path)
    _require_file(path)
    try:
        # Open the handle ourselves: np.load leaks the one it opens when the zip is unreadable.
        with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as npz:
            fmt = str(npz["format"][()]) if "format" in npz.files else None
            if fmt == CLONE_FORMAT:
                version = int(npz["format_version"])
                arrays = {f: np.asarray(npz[f], dtype=np.float64) for f in _LINE_FIELDS}
                metadata = json.loads(str(npz["metadata"][()]))
    except AttributeError as err:  # np.load returned a bare .npy array, not an archive
        raise ValueError(f"{path}: not a jblase clone file ({err})") from err
    except _READ_ERRORS as err:
        kind = type(err).__name__
        raise ValueError(f"{path}: unreadable jblase clone file ({kind}: {err})") from err
    if fmt != CLONE_FORMAT:
        raise ValueError(f"{path}: format is {fmt!r}, not {CLONE_FORMAT!r}")
    if version > CLONE_FORMAT_VERSION:
        raise ValueError(
            f"{path}: format version {version} is newer than this jblase reads "
            f"({CLONE_FORMAT_VERSION})"
        )
    shapes = {f: a.shape for f, a in arrays.items()}
    if len(set(shapes.values())) != 1 or arrays["center"].ndim != 1:
        raise ValueError(f"{path}: line arrays must be 1-D and the same shape, got {shapes}")
    if not isinstance(metadata, dict):
        raise ValueError(f"{path}: metadata is a {type(metadata).__name__}, not an object")
    return LineList(**arrays), metadata


# --------------------------------------------------------------------------- spectra


@contextlib.contextmanager
def unreadable_as_value_error(path: Path, kind: str):
    """Re-raise what reading a ``kind`` spectrum file raises as a ``ValueError`` naming it."""
    try:
        yield
    except ValueError as err:
        if str(err).startswith(str(path)):
            raise
        raise ValueError(f"{path}: unreadable {kind} spectrum ({err})") from err
    except (AttributeError, *_READ_ERRORS) as err:
        raise ValueError(
            f"{path}: unreadable {kind} spectrum ({type(err).__name__}: {err})"
        ) from err


def _spectrum_kind(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(SPECTRUM_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return "fits" if ".fit" in suffix else suffix[1:]
    raise ValueError(
        f"{path}: unknown spectrum file type; supported: {', '.join(SPECTRUM_SUFFIXES)}"
    )


def _pick_columns(path: Path, columns: Mapping[str, Any]) -> dict[str, Any]:
    """Select wavelength/flux[/uncertainty] from ``columns`` (matched case-insensitively)."""
    lower = {str(k).strip().lower(): v for k, v in columns.items()}
    missing = [c for c in ("wavelength", "flux") if c not in lower]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(columns)}")
    return {c: lower[c] for c in ("wavelength", "flux", "uncertainty") if c in lower}


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    with open(path, encoding="utf-8") as fh:
        header = fh.readline().lstrip("#").strip()
        names = [n.strip().strip('"').strip("'") for n in header.split(",")]
        table = np.loadtxt(fh, delimiter=",", ndmin=2, dtype=np.float64)
    if table.size and table.shape[1] != len(names):
        raise ValueError(f"{path}: header has {len(names)} columns, rows have {table.shape[1]}")
    return {n: table[:, i] if table.size else np.empty(0) for i, n in enumerate(names)}


def _read_fits(path: Path) -> dict[str, np.ndarray]:
    from astropy.io import fits

    with fits.open(path, memmap=False) as hdul:
        tables = [h for h in hdul if isinstance(h, fits.BinTableHDU | fits.TableHDU)]
        if not tables:
            raise ValueError(f"{path}: no table HDU")
        data = tables[0].data
        return {n: np.array(data[n], dtype=np.float64) for n in data.columns.names}


def read_spectrum(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Read ``(wavelength (A), flux, uncertainty or None)``, each float64 of shape (n_pix,).

    Supports ``.npz`` (keys ``wavelength``, ``flux``, optional ``uncertainty``), ``.csv`` (a
    header row naming those columns, comma-separated) and FITS (``.fits``, ``.fit``, optionally
    gzipped: the first table HDU, column names matched case-insensitively). Values are not
    validated beyond shape; see :func:`jblase._checks.check_spectrum`.
    """
    path = Path(path)
    kind = _spectrum_kind(path)
    _require_file(path)
    with unreadable_as_value_error(path, kind):
        if kind == "npz":
            with np.load(path, allow_pickle=False) as npz:
                columns = _pick_columns(path, {k: npz[k] for k in npz.files})
        elif kind == "csv":
            columns = _pick_columns(path, _read_csv(path))
        else:
            columns = _pick_columns(path, _read_fits(path))
    out = {}
    for name, col in columns.items():
        arr = np.asarray(col, dtype=np.float64)
        if arr.ndim == 2 and arr.shape[0] == 1:  # a one-row table of array columns
            arr = arr[0]
        if arr.ndim != 1:
            raise ValueError(f"{path}: column {name!r} has shape {arr.shape}, expected 1-D")
        out[name] = arr
    shapes = {n: a.shape for n, a in out.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"{path}: columns have different lengths {shapes}")
    return out["wavelength"], out["flux"], out.get("uncertainty")


def write_spectrum(
    path: str | os.PathLike,
    wavelength: ArrayLike,
    flux: ArrayLike,
    uncertainty: ArrayLike | None = None,
) -> None:
    """Write a spectrum (wavelength in A; all float64 of shape (n_pix,)) atomically.

    The format follows the file name as in :func:`read_spectrum`; FITS files get an empty
    primary HDU and a binary table with ``wavelength`` in unit Angstrom.
    """
    path = Path(path)
    kind = _spectrum_kind(path)
    cols = {"wavelength": wavelength, "flux": flux}
    if uncertainty is not None:
        cols["uncertainty"] = uncertainty
    cols = {n: np.asarray(v, dtype=np.float64) for n, v in cols.items()}
    shapes = {n: a.shape for n, a in cols.items()}
    if len(set(shapes.values())) != 1 or cols["wavelength"].ndim != 1:
        raise ValueError(f"spectrum arrays must be 1-D and the same shape, got {shapes}")

    if kind == "npz":
        atomic_write(path, lambda fh: np.savez(fh, **cols))
    elif kind == "csv":
        table = np.column_stack(list(cols.values()))
        header = ",".join(cols)

        def write_csv(fh: BinaryIO) -> None:
            np.savetxt(fh, table, delimiter=",", fmt="%.17g", header=header, comments="")

        atomic_write(path, write_csv)
    else:
        from astropy.io import fits

        hdu = fits.BinTableHDU.from_columns(
            [
                fits.Column(
                    name=n, format="D", array=a, unit="Angstrom" if n == "wavelength" else None
                )
                for n, a in cols.items()
            ]
        )
        buf = io.BytesIO()
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buf)
        data = buf.getvalue()
        if path.name.lower().endswith(".gz"):
            data = gzip.compress(data, mtime=0)  # fixed mtime: same input, same bytes
        atomic_write(path, lambda fh: fh.write(data))
