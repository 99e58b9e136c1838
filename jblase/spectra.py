"""Observed spectra: echelle orders read from files and checked, ready for inference.

Sits where a generator meets data (pipeline step 6). :func:`read_observed` reads one or several
orders of an observed spectrum into an :class:`ObservedSpectrum`: per-order wavelength (vacuum
or air as in the file, converted to A), flux, optional uncertainty, a mask of the pixels that
can be used, order labels and the FITS header (for a later barycentric correction).

File layouts understood (found from the file name's ending, as :func:`jblase.io.read_spectrum`):

* ``.npz`` -- arrays ``wavelength``, ``flux``, optional ``uncertainty``: 1-D (one order) or
  2-D (order x pixel); optional ``order``, the integer label of each row (2-D) or of each
  pixel (1-D: a long table, one order per distinct label).
* ``.csv`` -- a header row naming ``wavelength``, ``flux``, optional ``uncertainty`` and
  ``order`` columns (one order, or a long table with an ``order`` column).
* FITS (``.fits``, ``.fit``, optionally gzipped) -- the first table HDU with ``wavelength``
  and ``flux`` columns (names matched case-insensitively): scalar columns (one order, or long
  with an ``order`` column) or array columns (one row per order). Without such a table, the
  image HDUs of an instrument pipeline product: ``Sci Flux`` and ``Sci Wavl`` (order x pixel,
  e.g. HPF's 28 orders of 2048 pixels, not normalised, NaN at order edges) with ``Sci Error``
  (standard deviation) or ``Sci Variance`` (its square root is taken).

Wavelength units: a FITS table's ``TUNIT`` or an image HDU's ``BUNIT`` is honoured (nm, um and
other lengths are converted with :mod:`astropy.units`); files that record none are in
``wavelength_unit`` (A by default). No air/vacuum conversion is made.

Checks, per order (labels in every message):

* non-finite wavelength, flux or uncertainty: the pixel is masked, with one
  :class:`MaskedPixelsWarning` counting the pixels of each order;
* an order left with no valid pixel: ``ValueError``;
* uncertainty zero or negative on an otherwise valid pixel: ``ValueError`` (a zero error would
  give that pixel infinite weight; NaN ones are masked as above);
* wavelength zero or negative on a valid pixel, or two valid pixels at one wavelength:
  ``ValueError``;
* wavelengths not increasing within an order: the order's pixels are sorted by wavelength
  (pixels with a non-finite wavelength last), with one :class:`UnsortedWavelengthWarning`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jblase.io import _read_csv, _require_file, _spectrum_kind, unreadable_as_value_error

__all__ = [
    "MaskedPixelsWarning",
    "ObservedSpectrum",
    "UnsortedWavelengthWarning",
    "read_observed",
]

_COLUMNS = ("wavelength", "flux", "uncertainty", "order")
#: EXTNAMEs of a pipeline product's science fibre (matched case-insensitively).
_IMAGE_FLUX, _IMAGE_WAVELENGTH = "sci flux", "sci wavl"
_IMAGE_ERROR, _IMAGE_VARIANCE = "sci error", "sci variance"
#: Spellings of wavelength units seen in spectrum files that astropy does not parse as meant
#: ("A" would be the ampere).
_UNIT_ALIASES = {"a": "Angstrom", "å": "Angstrom", "angstroms": "Angstrom", "microns": "micron"}


class MaskedPixelsWarning(UserWarning):
    """Pixels with a non-finite wavelength, flux or uncertainty were masked."""


class UnsortedWavelengthWarning(UserWarning):
    """An order's wavelengths were not increasing; its pixels were sorted."""


@dataclass(frozen=True, eq=False)
class ObservedSpectrum:
    """An observed spectrum of one or several orders, on a common (order, pixel) layout.

    Attributes:
        wavelength: float64 (n_orders, n_pix), A; increasing within each order over its
            pixels of finite wavelength.
        flux: float64 (n_orders, n_pix), as in the file (pipeline products are not
            continuum-normalised).
        uncertainty: float64 (n_orders, n_pix), one standard deviation in flux units, or None
            when the file has none; positive on every valid pixel.
        valid: bool (n_orders, n_pix): pixels whose wavelength, flux and uncertainty are
            finite. Masked pixels keep the file's values (they may be NaN) and must not be
            used; shorter orders of a long table are padded with NaN, masked.
        orders: the integer label of each row (the file's order number, or its row index).
        header: the FITS header (primary header updated with the data HDU's keywords), or an
            empty dict for ``.npz`` and ``.csv`` files.
        source: the file read.
    """

    wavelength: np.ndarray
    flux: np.ndarray
    uncertainty: np.ndarray | None
    valid: np.ndarray
    orders: tuple[int, ...]
    header: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self):
        shape = self.wavelength.shape
        arrays = {"flux": self.flux, "valid": self.valid}
        if self.uncertainty is not None:
            arrays["uncertainty"] = self.uncertainty
        if len(shape) != 2 or any(a.shape != shape for a in arrays.values()):
            shapes = {n: a.shape for n, a in {"wavelength": self.wavelength, **arrays}.items()}
            raise ValueError(f"ObservedSpectrum arrays must share one 2-D shape, got {shapes}")
        if len(self.orders) != shape[0]:
            raise ValueError(f"{len(self.orders)} order labels for {shape[0]} orders")

    @property
    def n_orders(self) -> int:
        """Number of orders (rows)."""
        return int(self.wavelength.shape[0])

    def index(self, order: int) -> int:
        """Row of the order labelled ``order``; ``ValueError`` listing the labels if none."""
        try:
            return self.orders.index(int(order))
        except ValueError:
            raise ValueError(f"no order {order!r}; orders are {list(self.orders)}") from None

    def order(self, order: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(wavelength (A), flux, uncertainty or None)`` of one order's valid pixels, each
        float64 (n_valid,), wavelengths strictly increasing: what :func:`jblase.inference.infer`
        takes."""
        i = self.index(order)
        keep = self.valid[i]
        unc = None if self.uncertainty is None else self.uncertainty[i, keep]
        return self.wavelength[i, keep], self.flux[i, keep], unc


# --------------------------------------------------------------------------- file layouts


def _lower(columns: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k).strip().lower(): v for k, v in columns.items()}


def _labels(values: np.ndarray, where: str) -> np.ndarray:
    """Integer order labels; ``ValueError`` if any is not a finite integer."""
    values = np.asarray(values)
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    with np.errstate(invalid="ignore"):
        as_float = values.astype(np.float64)
    if not (np.isfinite(as_float).all() and (as_float == np.round(as_float)).all()):
        raise ValueError(f"{where}: order labels must be integers, got {values[:5].tolist()}...")
    return as_float.astype(np.int64)


def _to_orders(path: Path, columns: dict[str, np.ndarray]) -> dict[str, Any]:
    """Columns (wavelength, flux[, uncertainty][, order]) -> 2-D order x pixel arrays."""
    missing = [c for c in ("wavelength", "flux") if c not in columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(columns)}")
    data = {c: np.asarray(columns[c], dtype=np.float64) for c in _COLUMNS[:3] if c in columns}
    shapes = {n: a.shape for n, a in data.items()}
    if len(set(shapes.values())) != 1 or data["flux"].ndim not in (1, 2):
        raise ValueError(
            f"{path}: wavelength/flux/uncertainty must be 1-D or 2-D and the same "
            f"shape, got {shapes}"
        )
    if data["flux"].size == 0:
        raise ValueError(f"{path}: no pixels")
    label = columns.get("order")
    if data["flux"].ndim == 2:
        n_orders = data["flux"].shape[0]
        labels = np.arange(n_orders) if label is None else _labels(np.ravel(label), str(path))
        if labels.shape != (n_orders,):
            raise ValueError(f"{path}: {labels.size} order labels for {n_orders} orders")
        if np.unique(labels).size != labels.size:
            raise ValueError(f"{path}: order labels repeat: {labels.tolist()}")
        return {**data, "orders": labels, "pad": np.zeros(data["flux"].shape, bool)}
    if label is None:
        return {
            **{n: a[None] for n, a in data.items()},
            "orders": np.zeros(1, np.int64),
            "pad": np.zeros((1, data["flux"].size), bool),
        }
    label = _labels(label, str(path))
    if label.shape != data["flux"].shape:
        raise ValueError(f"{path}: 'order' has shape {label.shape}, not {data['flux'].shape}")
    # A long table: one order per label, in increasing label; shorter orders padded.
    orders, counts = np.unique(label, return_counts=True)
    width = int(counts.max()) if counts.size else 0
    pad = np.ones((orders.size, width), bool)
    out = {n: np.full((orders.size, width), np.nan) for n in data}
    for i, o in enumerate(orders):
        rows = np.flatnonzero(label == o)
        pad[i, : rows.size] = False
        for n, a in data.items():
            out[n][i, : rows.size] = a[rows]
    return {**out, "orders": orders, "pad": pad}


def _length_scale(unit: str, where: str) -> float:
    """Factor that converts wavelengths in ``unit`` to A (an exact power of ten for nm, um)."""
    import astropy.units as u

    name = _UNIT_ALIASES.get(unit.strip().lower(), unit.strip())
    try:
        parsed = u.Unit(name, parse_strict="raise")
    except ValueError:
        try:
            parsed = u.Unit(name, format="fits", parse_strict="raise")
        except ValueError as err:
            raise ValueError(f"{where}: unknown wavelength unit {unit!r}") from err
    try:
        scale = parsed.to(u.AA)
    except u.UnitConversionError as err:
        raise ValueError(f"{where}: wavelength unit {unit!r} is not a length") from err
    return float(f"{scale:.15g}")  # 9.999999999999998 -> 10.0


def _merged_header(primary, extension):
    """The primary header updated with an extension's non-structural keywords."""
    merged = primary.copy()
    merged.strip()
    ext = extension.copy()
    ext.strip()
    merged.extend(ext, update=True)
    return merged


def _image(hdul, name: str):
    for hdu in hdul:
        if str(hdu.name).strip().lower() == name and hdu.data is not None:
            return hdu
    return None


def _read_fits(path: Path) -> tuple[dict[str, Any], str | None, Any]:
    """(columns, wavelength unit or None, header) of a FITS table or pipeline product."""
    from astropy.io import fits

    with fits.open(path, memmap=False) as hdul:
        for hdu in hdul:
            if not isinstance(hdu, fits.BinTableHDU | fits.TableHDU):
                continue
            names = {n.strip().lower(): n for n in hdu.columns.names}
            if "wavelength" in names and "flux" in names:
                columns = {c: np.array(hdu.data[names[c]]) for c in _COLUMNS if c in names}
                unit = hdu.columns[names["wavelength"]].unit or None
                return columns, unit, _merged_header(hdul[0].header, hdu.header)
        flux, wavl = _image(hdul, _IMAGE_FLUX), _image(hdul, _IMAGE_WAVELENGTH)
        if flux is None or wavl is None:
            found = [str(h.name) for h in hdul]
            raise ValueError(
                f"{path}: neither a table HDU with 'wavelength' and 'flux' columns nor image "
                f"HDUs 'Sci Flux' and 'Sci Wavl'; HDUs are {found}"
            )
        columns = {"wavelength": np.array(wavl.data), "flux": np.array(flux.data)}
        error, variance = _image(hdul, _IMAGE_ERROR), _image(hdul, _IMAGE_VARIANCE)
        if error is not None:
            columns["uncertainty"] = np.array(error.data, dtype=np.float64)
        elif variance is not None:
            var = np.array(variance.data, dtype=np.float64)
            with np.errstate(invalid="ignore"):
                # Negative variance becomes a negative uncertainty, refused by the checks.
                columns["uncertainty"] = np.sign(var) * np.sqrt(np.abs(var))
        unit = wavl.header.get("BUNIT") or None
        return columns, unit, _merged_header(hdul[0].header, flux.header)


def _read_columns(path: Path, kind: str) -> tuple[dict[str, Any], str | None, Mapping]:
    """(columns, wavelength unit or None, header) of any supported file."""
    if kind == "npz":
        with np.load(path, allow_pickle=False) as npz:
            return _lower({k: npz[k] for k in npz.files}), None, {}
    if kind == "csv":
        return _lower(_read_csv(path)), None, {}
    return _read_fits(path)


# --------------------------------------------------------------------------- checks


def _select(data: dict[str, Any], orders, path: Path) -> dict[str, Any]:
    labels = [int(o) for o in data["orders"]]
    if orders is None:
        return data
    wanted = [orders] if np.ndim(orders) == 0 else list(orders)
    if not wanted:
        raise ValueError(f"{path}: orders selects no order")
    rows = []
    for o in wanted:
        if o not in labels:
            raise ValueError(f"{path}: no order {o!r}; orders are {labels}")
        if labels.index(o) in rows:
            raise ValueError(f"{path}: order {o!r} selected twice")
        rows.append(labels.index(o))
    return {n: (a[rows] if a is not None else None) for n, a in data.items()}


def _per_order(counts: np.ndarray, labels: Sequence[int]) -> str:
    return ", ".join(f"order {o}: {int(n)}" for o, n in zip(labels, counts, strict=True) if n)


def _check(data: dict[str, Any], path: Path) -> dict[str, Any]:
    wl, flux, unc, pad = data["wavelength"], data["flux"], data.get("uncertainty"), data["pad"]
    labels = [int(o) for o in data["orders"]]
    finite = np.isfinite(wl) & np.isfinite(flux)
    if unc is not None:
        finite &= np.isfinite(unc)
    bad = ~finite & ~pad
    if bad.any():
        warnings.warn(
            f"{path}: masked {int(bad.sum())} pixels with a non-finite wavelength, flux or "
            f"uncertainty ({_per_order(bad.sum(axis=1), labels)})",
            MaskedPixelsWarning,
            stacklevel=3,
        )
    valid = finite & ~pad
    empty = [o for o, row in zip(labels, valid, strict=True) if not row.any()]
    if empty:
        raise ValueError(f"{path}: order(s) {empty} have no valid pixel")
    if unc is not None:
        nonpositive = valid & ~(unc > 0)
        if nonpositive.any():
            raise ValueError(
                f"{path}: uncertainty zero or negative on otherwise valid pixels "
                f"({_per_order(nonpositive.sum(axis=1), labels)})"
            )
    nonpositive = valid & ~(wl > 0)
    if nonpositive.any():
        raise ValueError(
            f"{path}: wavelength zero or negative ({_per_order(nonpositive.sum(axis=1), labels)})"
        )
    unsorted = []
    for i, row in enumerate(wl):
        known = row[np.isfinite(row)]
        if (np.diff(known) < 0).any():
            unsorted.append(labels[i])
            order = np.argsort(np.where(np.isfinite(row), row, np.inf), kind="stable")
            for n in ("wavelength", "flux", "uncertainty"):
                if data.get(n) is not None:
                    data[n][i] = data[n][i][order]
            valid[i] = valid[i][order]
    if unsorted:
        warnings.warn(
            f"{path}: wavelengths of order(s) {unsorted} were not increasing; their pixels were "
            "sorted by wavelength",
            UnsortedWavelengthWarning,
            stacklevel=3,
        )
    repeated = [
        (o, int((np.diff(row[keep]) == 0).sum()))
        for o, row, keep in zip(labels, data["wavelength"], valid, strict=True)
    ]
    repeated = [(o, n) for o, n in repeated if n]
    if repeated:
        listed = ", ".join(f"order {o}: {n}" for o, n in repeated)
        raise ValueError(f"{path}: valid pixels share a wavelength ({listed})")
    return {**data, "valid": valid}


# --------------------------------------------------------------------------- the reader


def read_observed(
    path: str | os.PathLike,
    orders: int | Sequence[int] | None = None,
    *,
    wavelength_unit: str | None = None,
) -> ObservedSpectrum:
    """Read an observed spectrum of one or several orders; see the module docstring.

    Args:
        path: a ``.npz``, ``.csv`` or FITS file in one of the layouts of the module docstring.
        orders: the label (or labels, in the order wanted) of the orders to keep; None keeps
            all. Unselected orders are not checked.
        wavelength_unit: the unit of wavelengths in files that record none (``.npz``,
            ``.csv``, FITS without ``TUNIT``/``BUNIT``); None means A. A unit the file records
            wins, and must then agree with this one if it is given.

    Returns:
        An :class:`ObservedSpectrum` with wavelengths in A.

    Raises:
        ValueError: naming the file (and the order) for a missing, unreadable or malformed
            file, an unknown order label, an order with no valid pixel, an uncertainty zero or
            negative, or a non-positive or repeated wavelength on valid pixels.
    """
    path = Path(path)
    kind = _spectrum_kind(path)
    _require_file(path)
    with unreadable_as_value_error(path, kind):
        columns, file_unit, header = _read_columns(path, kind)
        data = _to_orders(path, columns)
    scale = _length_scale(file_unit or wavelength_unit or "Angstrom", str(path))
    if file_unit and wavelength_unit and scale != _length_scale(wavelength_unit, str(path)):
        raise ValueError(
            f"{path}: the file's wavelengths are in {file_unit!r}, not {wavelength_unit!r}"
        )
    data = _select(data, orders, path)
    if scale != 1.0:
        data["wavelength"] = data["wavelength"] * scale
    data = _check({n: (np.array(a) if a is not None else None) for n, a in data.items()}, path)
    return ObservedSpectrum(
        wavelength=data["wavelength"],
        flux=data["flux"],
        uncertainty=data.get("uncertainty"),
        valid=data["valid"],
        orders=tuple(int(o) for o in data["orders"]),
        header=header,
        source=str(path),
    )
