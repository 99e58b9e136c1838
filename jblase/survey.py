"""Many spectra: fit a directory (or a list) of observed spectra on a Dask cluster, resumably.

Where it sits: after the generator and the observation model. Each spectrum is fitted by
:func:`jblase.fit.fit`, exactly as ``jblase fit --json`` would fit it; this module only
distributes the fits and keeps the table. It is what ``jblase fit-many`` runs.

* **The table** (:class:`ResultTable`): CSV, one row per spectrum: ``file`` (as listed),
  ``status`` (``ok`` or ``error``), ``error`` (the exception, for a failed spectrum) and every
  key of ``jblase fit --json`` (:data:`COLUMNS`; lists and mappings JSON-encoded). Rows are
  appended, flushed and synced to disk as their fits complete, so a killed run loses at most
  the fits in flight; a rerun reads the table, drops a half-written last line, skips every
  spectrum that has a row and fits only the rest. When the run ends the table is rewritten in
  the input order (atomically), so two runs over the same inputs give the same file whatever
  the workers and the order of completion. A sidecar ``<table>.settings.json`` records what the
  rows were fitted with; resuming with other settings is an error rather than a mixed table.
* **The engine**: Dask distributed. ``workers=N`` starts a local cluster of N worker processes
  (spawned, never forked from a process that has initialised JAX; one thread each, as a fit
  uses the cores through XLA; ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` so workers sharing a GPU
  do not each claim all of its memory, and with several GPUs worker i sees only GPU
  ``i mod n``); ``scheduler=ADDRESS`` uses an existing cluster (``dask scheduler`` plus
  ``dask worker`` processes, or dask-jobqueue on an HPC system), whose workers must have jblase
  installed and the manifold and spectra at the same paths. ``workers=0`` fits in this process,
  without Dask. Dask is an optional dependency: ``pip install "jblase[survey]"``.
* **Batches**: each task fits ``batch_size`` spectra one after another on one worker; a worker
  loads the model once and keeps its compiled programs for every later task (and the JAX
  persistent compilation cache shares them between workers of one machine).

A failed spectrum (unreadable file, no valid pixels, a fit error) gets an ``error`` row and the
run goes on; a worker that dies takes its batch's spectra to ``error`` rows once Dask gives up
retrying them.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "COLUMNS",
    "SPECTRUM_SUFFIXES",
    "FitJob",
    "ResultTable",
    "SurveySettings",
    "list_inputs",
    "run_survey",
    "save_draws",
]

#: File endings taken from an INPUTS directory (case-insensitive).
SPECTRUM_SUFFIXES = (".npz", ".csv", ".fits", ".fit", ".fts", ".fits.gz")
_PARAMETERS = ("teff", "logg", "feh", "rv_kms", "vsini_kms", "resolving_power")
_SCALARS = (
    "chi2_reduced",
    "n_pixels",
    "seconds",
    "berv_kms",
    "berv_source",
    "rv_scan_kms",
    "n_clipped",
    "uncertainty_estimated",
)
_ENCODED = ("fitted", "correlation", "systematic_errors", "gp", "posterior", "warnings")
_QUANTILES = ("median", "p16", "p84")
#: The table's columns, in order.
COLUMNS = (
    "file",
    "status",
    "error",
    *(f"{p}{s}" for p in _PARAMETERS for s in ("", "_err", "_err_stat")),
    *(f"{p}_{q}" for p in _PARAMETERS for q in _QUANTILES),
    *_SCALARS,
    *_ENCODED,
)
_OK, _ERROR = "ok", "error"


# --------------------------------------------------------------------------- inputs


def list_inputs(inputs: str | os.PathLike) -> list[tuple[str, Path]]:
    """The spectra to fit: ``(name, path)`` pairs in a stable order.

    ``inputs`` is a directory (its files ending in one of :data:`SPECTRUM_SUFFIXES`, sorted by
    name; the name is the file name) or a list file (one path per line, relative to the list
    file's directory unless absolute; blank lines and ``#`` comments ignored; the name is the
    line as written). A name listed twice is an error: its row would be ambiguous.
    """
    path = Path(inputs)
    if path.is_dir():
        files = sorted(
            p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(SPECTRUM_SUFFIXES)
        )
        pairs = [(p.name, p) for p in files]
        if not pairs:
            raise ValueError(
                f"{path}: no spectra in this directory (files ending in "
                f"{', '.join(SPECTRUM_SUFFIXES)})"
            )
        return pairs
    if not path.is_file():
        raise ValueError(f"{path}: no such directory or list file")
    pairs = []
    for line in path.read_text().splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            p = Path(name)
            pairs.append((name, p if p.is_absolute() else path.parent / p))
    if not pairs:
        raise ValueError(f"{path}: the list file names no spectra")
    seen: set[str] = set()
    for name, _ in pairs:
        if name in seen:
            raise ValueError(f"{path}: {name!r} is listed twice")
        seen.add(name)
    return pairs


# --------------------------------------------------------------------------- the table


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, allow_nan=True)
    return str(value)


def row_from_fit(name: str, fit_json: Mapping[str, Any], caught: Sequence[str] = ()) -> dict:
    """A table row (column -> text) from the dict of ``jblase fit --json``."""
    unknown = set(fit_json) - set(COLUMNS)
    if unknown:
        raise ValueError(f"fit result keys without a table column: {sorted(unknown)}")
    row = {c: "" for c in COLUMNS}
    row.update(file=name, status=_OK)
    row.update({k: _cell(v) for k, v in fit_json.items()})
    if caught:
        row["warnings"] = _cell(list(caught))
    return row


def error_row(name: str, err: BaseException | str) -> dict:
    """The row of a spectrum whose fit failed."""
    text = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    row = {c: "" for c in COLUMNS}
    row.update(file=name, status=_ERROR, error=" ".join(str(text).split()))
    return row


class ResultTable:
    """The CSV table of a survey run, appended to as fits complete (see the module docstring).

    Opening an existing table checks its header, drops a half-written last line (a run killed
    while writing) and rows of the wrong width, and keeps every finished row.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.rows: dict[str, dict] = {}
        if self.path.exists() and self.path.stat().st_size > 0:
            self._read()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._rewrite([])

    def _read(self) -> None:
        with self.path.open(newline="") as fh:
            text = fh.read()
        complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]
        lines = list(csv.reader(io.StringIO(complete)))
        if not lines or tuple(lines[0]) != COLUMNS:
            raise ValueError(
                f"{self.path}: not a jblase fit-many table (its header differs from this "
                "version's columns); give another --out or remove the file"
            )
        dropped = len(text) != len(complete)
        for values in lines[1:]:
            if len(values) != len(COLUMNS):
                dropped = True
                continue
            row = dict(zip(COLUMNS, values, strict=True))
            self.rows[row["file"]] = row
        if dropped:
            warnings.warn(
                f"{self.path}: dropped a half-written row (an interrupted run); its spectrum "
                "is fitted again",
                stacklevel=3,
            )
            self._rewrite(list(self.rows.values()))

    def _rewrite(self, rows: Iterable[dict]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def append(self, rows: Iterable[dict]) -> None:
        """Write ``rows`` at the end of the file and sync it to disk."""
        rows = list(rows)
        with self.path.open("a", newline="") as fh:
            csv.DictWriter(fh, COLUMNS, lineterminator="\n").writerows(rows)
            fh.flush()
            os.fsync(fh.fileno())
        for row in rows:
            self.rows[row["file"]] = row

    def finalise(self, order: Sequence[str]) -> None:
        """Rewrite the table with its rows in ``order`` (names first, any others after)."""
        rank = {name: i for i, name in enumerate(order)}
        rows = sorted(self.rows.values(), key=lambda r: (rank.get(r["file"], len(rank)), r["file"]))
        self._rewrite(rows)


def read_table(path: str | os.PathLike) -> list[dict]:
    """The rows of a fit-many table, numbers as floats (NaN where empty) and the JSON columns
    decoded; for analysis in Python (``pandas.read_csv`` reads the file too)."""
    table = ResultTable.__new__(ResultTable)
    table.path, table.rows = Path(path), {}
    table._read()
    out = []
    for row in table.rows.values():
        parsed: dict[str, Any] = {}
        for k, v in row.items():
            if k in ("file", "status", "error", "berv_source"):
                parsed[k] = v
            elif k in _ENCODED:
                parsed[k] = json.loads(v) if v else None
            elif k == "uncertainty_estimated":
                parsed[k] = None if v == "" else v == "true"
            else:
                parsed[k] = float(v) if v != "" else math.nan
        out.append(parsed)
    return out


# --------------------------------------------------------------------------- the fits


@dataclass(frozen=True)
class FitJob:
    """How every spectrum is fitted: the manifold and the options of ``jblase fit``.

    Picklable (it travels to the workers). Calling it on a path returns the dict of
    ``jblase fit --json`` for that spectrum; each process loads the model once.

    Attributes:
        manifold: path of the manifold (.npz).
        settings: a :class:`jblase.fit.FitSettings` (None: its defaults).
        search: search options of :func:`jblase.fit.fit` (``n_random``, ``n_guided``,
            ``seed``).
        orders: order labels to fit (None: all).
        mask_intervals: (n, 2) wavelength intervals (A) to leave out, or None.
        interpolation: the generator's amplitude interpolation (None: the library default).
        posterior: a :class:`jblase.posterior.PosteriorSettings` to sample every spectrum's
            posterior by NUTS after its fit (``jblase fit-many --posterior nuts``): the rows
            gain ``NAME_median``, ``NAME_p16``, ``NAME_p84`` and the ``posterior``
            diagnostics (R-hat, ESS, divergences). None: Laplace errors only.
        draws_dir: with ``posterior``, a directory for each spectrum's draws
            (``<file>.draws.npz``: ``draws`` (chains, draws, n_fitted) in physical units,
            ``names``, ``rhat``, ``ess``; written atomically), or None.
    """

    manifold: str
    settings: Any = None
    search: Mapping[str, Any] = field(default_factory=dict)
    orders: tuple[int, ...] | None = None
    mask_intervals: Any = None
    interpolation: str | None = None
    posterior: Any = None
    draws_dir: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "manifold", str(self.manifold))
        if self.draws_dir is not None:
            if self.posterior is None:
                raise ValueError("draws_dir needs a posterior (--draws-dir needs --posterior nuts)")
            object.__setattr__(self, "draws_dir", str(self.draws_dir))
        if self.mask_intervals is not None:
            mask = np.asarray(self.mask_intervals, float).reshape(-1, 2)
            object.__setattr__(self, "mask_intervals", tuple(map(tuple, mask.tolist())))
        if self.orders is not None:
            object.__setattr__(self, "orders", tuple(int(o) for o in self.orders))

    def __call__(self, path: str | os.PathLike) -> dict:
        from jblase.fit import fit
        from jblase.spectra import read_observed

        spectrum = read_observed(path, orders=self.orders)
        model = self.model()
        mask = None if self.mask_intervals is None else np.asarray(self.mask_intervals)
        result = fit(
            model,
            spectrum,
            self.settings,
            mask_intervals=mask,
            posterior=self.posterior,
            **dict(self.search),
        )
        if self.draws_dir is not None:
            save_draws(Path(self.draws_dir) / f"{Path(path).name}.draws.npz", result)
        return result.to_json()

    def model(self):
        """The :class:`~jblase.generator.Generator` of the manifold (loaded once per process)."""
        return _generator(self.manifold, self.interpolation)

    def describe(self) -> dict:
        """What the rows are fitted with, as JSON (the table's sidecar)."""
        settings = self.settings
        return {
            "manifold": str(Path(self.manifold).resolve()),
            "manifold_digest": _file_digest(self.manifold),
            "settings": None if settings is None else _jsonable(dataclasses.asdict(settings)),
            "search": _jsonable(dict(self.search)),
            "orders": None if self.orders is None else list(self.orders),
            "mask_intervals": None
            if self.mask_intervals is None
            else np.asarray(self.mask_intervals, float).tolist(),
            "interpolation": self.interpolation,
            "posterior": None
            if self.posterior is None
            else _jsonable(dataclasses.asdict(self.posterior)),
        }


def save_draws(path: str | os.PathLike, result) -> Path:
    """Write a fit's NUTS draws to ``path`` (.npz, atomically): ``draws`` (chains, draws,
    n_fitted) in physical units, ``names`` (the fitted parameters), ``rhat`` and ``ess``."""
    if result.posterior_draws is None:
        raise ValueError("this fit has no posterior draws (fit it with posterior=...)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(
        tmp,
        draws=result.posterior_draws,
        names=np.array(result.fitted),
        rhat=np.array([result.posterior["rhat"][n] for n in result.fitted]),
        ess=np.array([result.posterior["ess"][n] for n in result.fitted]),
    )
    os.replace(tmp, path)
    return path


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def _file_digest(path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=4)
def _generator(manifold: str, interpolation: str | None):
    """The generator of ``manifold``, loaded once per process (its compiled programs with it)."""
    from jblase._compiled import enable_compile_cache
    from jblase.generator import Generator

    enable_compile_cache()
    return Generator.load(manifold, amplitude_interpolation=interpolation)


def fit_batch(items: Sequence[tuple[str, str]], fitter: Callable[[str], Mapping]) -> list[dict]:
    """Rows for ``items`` (``(name, path)`` pairs) fitted one after another by ``fitter``
    (a picklable callable: path -> the dict of ``jblase fit --json``). A spectrum whose fit
    raises gets an error row; warnings are kept in the row."""
    rows = []
    for name, path in items:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = fitter(path)
                messages = list(dict.fromkeys(str(w.message) for w in caught))
                rows.append(row_from_fit(name, result, messages))
            except Exception as err:  # one bad spectrum must not stop the survey
                rows.append(error_row(name, err))
    return rows


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class SurveySettings:
    """How a survey runs (not how each spectrum is fitted: that is the :class:`FitJob`).

    Attributes:
        workers: local Dask worker processes (1 by default); 0 fits in this process without
            Dask. Ignored with ``scheduler``.
        scheduler: address of an existing Dask scheduler (``tcp://host:8786``), or None.
        batch_size: spectra per task (a task runs on one worker, one fit after another).
        progress: show a progress bar.
    """

    workers: int = 1
    scheduler: str | None = None
    batch_size: int = 4
    progress: bool = True

    def __post_init__(self):
        if not (isinstance(self.workers, (int, np.integer)) and self.workers >= 0):
            raise ValueError(f"workers must be an integer >= 0, got {self.workers!r}")
        if not (isinstance(self.batch_size, (int, np.integer)) and self.batch_size >= 1):
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")


def _batches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _check_draw_names(pairs) -> None:
    """Each spectrum's draws go to ``<file name>.draws.npz``: file names must not repeat."""
    seen: dict[str, str] = {}
    for name, path in pairs:
        base = Path(path).name
        if base in seen:
            raise ValueError(
                f"{seen[base]!r} and {name!r} share the file name {base!r}, so their draws "
                "would overwrite each other in --draws-dir; rename one"
            )
        seen[base] = name


def _check_sidecar(out: Path, fitter) -> None:
    if not hasattr(fitter, "describe"):
        return
    sidecar = out.with_name(out.name + ".settings.json")
    described = _jsonable(fitter.describe())
    if sidecar.exists():
        before = json.loads(sidecar.read_text())
        if before != described:
            keys = set(before) | set(described)
            changed = sorted(k for k in keys if before.get(k) != described.get(k))
            raise ValueError(
                f"{out}: its rows were fitted with other settings ({', '.join(changed)} "
                f"differ; see {sidecar.name}); give another --out or remove both files"
            )
        return
    tmp = sidecar.with_name(sidecar.name + ".tmp")
    tmp.write_text(json.dumps(described, indent=1, sort_keys=True))
    os.replace(tmp, sidecar)


def run_survey(
    inputs: str | os.PathLike | Sequence[tuple[str, str | os.PathLike]],
    out: str | os.PathLike,
    fitter: Callable[[str], Mapping],
    settings: SurveySettings | None = None,
) -> dict:
    """Fit every spectrum of ``inputs`` that ``out`` has no row for; see the module docstring.

    Args:
        inputs: a directory or list file (:func:`list_inputs`), or ``(name, path)`` pairs.
        out: the CSV table (created, or resumed).
        fitter: a picklable callable path -> the dict of ``jblase fit --json``: a
            :class:`FitJob` for the usual fit.
        settings: :class:`SurveySettings`.

    Returns ``{"total", "skipped" (rows already there), "fitted", "failed", "table"}``.
    """
    settings = settings or SurveySettings()
    pairs = list_inputs(inputs) if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    pairs = [(str(n), str(p)) for n, p in pairs]
    out = Path(out)
    if getattr(fitter, "draws_dir", None) is not None:
        _check_draw_names(pairs)
    _check_sidecar(out, fitter)
    table = ResultTable(out)
    todo = [(n, p) for n, p in pairs if n not in table.rows]
    skipped = len(pairs) - len(todo)
    batches = _batches(todo, settings.batch_size)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc="fit-many", unit="spectrum", disable=not settings.progress)
    try:
        if settings.scheduler is None and settings.workers == 0:
            for batch in batches:
                table.append(fit_batch(batch, fitter))
                bar.update(len(batch))
        elif batches:  # no cluster when every row is already there
            _run_dask(batches, fitter, settings, table, bar)
    finally:
        bar.close()
    table.finalise([n for n, _ in pairs])
    names = {n for n, _ in todo}
    failed = sum(1 for n in names if table.rows.get(n, {}).get("status") == _ERROR)
    return {
        "total": len(pairs),
        "skipped": skipped,
        "fitted": len(todo),
        "failed": failed,
        "table": str(out),
    }


def _run_dask(batches, fitter, settings: SurveySettings, table: ResultTable, bar) -> None:
    from jblase._dask import dask_client, run_tasks

    with dask_client(
        settings.workers,
        settings.scheduler,
        "jblase fit-many with workers",
        "--workers 0 fits in this process",
    ) as client:
        for batch, rows, err in run_tasks(client, fit_batch, batches, fitter):
            if err is not None:  # the worker died (or the task could not run)
                why = f"worker lost: {type(err).__name__}: {err}"
                rows = [error_row(name, why) for name, _ in batch]
            table.append(rows)
            bar.update(len(batch))
