"""``jblase fit-many`` (jblase.survey): inputs, the resumable table, error rows, a killed run,
Dask workers against an in-process run, and one real fit against ``jblase.fit`` directly.

The engine tests use a cheap deterministic fitter (tests/_survey_fitters.py) so that Dask's
spawned workers and the kill-and-resume cycle cost seconds; the real fit runs once.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from jblase.fit import FitSettings, FitWarning, fit
from jblase.manifold import Manifold
from jblase.spectra import read_observed
from jblase.survey import (
    COLUMNS,
    FitJob,
    ResultTable,
    SurveySettings,
    fit_batch,
    list_inputs,
    read_table,
    run_survey,
)

from ._survey_fitters import MeanFitter
from .test_cli import run

ROOT = Path(__file__).resolve().parents[1]


def _write_spectra(folder: Path, n: int, corrupt: tuple[int, ...] = ()) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        path = folder / f"star{i:03d}.npz"
        if i in corrupt:
            path.write_bytes(b"not an npz file")
        else:
            rng = np.random.default_rng(i)
            wl = np.linspace(8500.0, 8600.0, 50)
            np.savez(path, wavelength=wl, flux=1 + 0.01 * rng.standard_normal(50))
        names.append(path.name)
    return names


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------- inputs


def test_list_inputs_directory_sorted_and_filtered(tmp_path):
    _write_spectra(tmp_path, 3)
    (tmp_path / "notes.txt").write_text("not a spectrum")
    (tmp_path / "b.FITS").write_bytes(b"")
    names = [n for n, _ in list_inputs(tmp_path)]
    assert names == ["b.FITS", "star000.npz", "star001.npz", "star002.npz"]


def test_list_inputs_list_file(tmp_path):
    _write_spectra(tmp_path / "data", 2)
    listing = tmp_path / "list.txt"
    listing.write_text("# my stars\ndata/star001.npz\n\n data/star000.npz  # second\n")
    pairs = list_inputs(listing)
    assert [n for n, _ in pairs] == ["data/star001.npz", "data/star000.npz"]
    assert pairs[0][1] == tmp_path / "data" / "star001.npz"


@pytest.mark.parametrize(
    "content, match",
    [("a.npz\na.npz\n", "listed twice"), ("# nothing\n\n", "names no spectra")],
)
def test_list_inputs_bad_list_files(tmp_path, content, match):
    listing = tmp_path / "list.txt"
    listing.write_text(content)
    with pytest.raises(ValueError, match=match):
        list_inputs(listing)


def test_list_inputs_missing_and_empty(tmp_path):
    with pytest.raises(ValueError, match="no such directory or list file"):
        list_inputs(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no spectra in this directory"):
        list_inputs(tmp_path / "empty")


# --------------------------------------------------------------------------- the table


def test_table_drops_a_half_written_row(tmp_path):
    out = tmp_path / "t.csv"
    names = _write_spectra(tmp_path / "d", 3)
    run_survey(tmp_path / "d", out, MeanFitter(), SurveySettings(workers=0, progress=False))
    text = out.read_text()
    out.write_text(text + "star999.npz,ok,,0.5")  # a run killed while writing its next row
    with pytest.warns(UserWarning, match="half-written"):
        table = ResultTable(out)
    assert sorted(table.rows) == names
    assert out.read_text() == text  # repaired on disk


def test_table_with_another_header_is_refused(tmp_path):
    out = tmp_path / "t.csv"
    out.write_text("file,answer\nx,42\n")
    with pytest.raises(ValueError, match="not a jblase fit-many table"):
        ResultTable(out)


def test_error_rows_and_resume_in_process(tmp_path):
    names = _write_spectra(tmp_path / "d", 5, corrupt=(3,))
    out = tmp_path / "t.csv"
    settings = SurveySettings(workers=0, batch_size=2, progress=False)
    done = run_survey(tmp_path / "d", out, MeanFitter(), settings)
    assert done == {"total": 5, "skipped": 0, "fitted": 5, "failed": 1, "table": str(out)}
    rows = _rows(out)
    assert [r["file"] for r in rows] == names  # the input order
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "error", "ok"]
    assert rows[3]["error"] and rows[3]["rv_kms"] == ""
    assert list(rows[0]) == list(COLUMNS)
    again = run_survey(tmp_path / "d", out, MeanFitter(), settings)
    assert again["skipped"] == 5 and again["fitted"] == 0
    parsed = read_table(out)
    assert parsed[0]["fitted"] == ["rv_kms"] and math.isnan(parsed[0]["teff"])
    assert parsed[0]["rv_kms"] == pytest.approx(MeanFitter()(tmp_path / "d" / names[0])["rv_kms"])


def test_fit_batch_keeps_warnings():
    def warns(path):
        import warnings

        warnings.warn("uncertainties estimated", UserWarning, stacklevel=1)
        return {"rv_kms": 1.0}

    (row,) = fit_batch([("a", "a.npz")], warns)
    assert row["status"] == "ok" and json.loads(row["warnings"]) == ["uncertainties estimated"]


def test_unknown_result_keys_are_refused():
    (row,) = fit_batch([("a", "a.npz")], lambda path: {"colour": "red"})
    assert row["status"] == "error" and "without a table column" in row["error"]


def test_bad_survey_settings():
    with pytest.raises(ValueError, match="workers"):
        SurveySettings(workers=-1)
    with pytest.raises(ValueError, match="batch_size"):
        SurveySettings(batch_size=0)


# --------------------------------------------------------------------------- interrupted runs


def test_killed_run_resumes_with_every_spectrum_exactly_once(tmp_path):
    names = _write_spectra(tmp_path / "d", 8)
    out = tmp_path / "t.csv"
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from tests._survey_fitters import MeanFitter;"
        "from jblase.survey import SurveySettings, run_survey;"
        "run_survey(sys.argv[2], sys.argv[3], MeanFitter(0.4),"
        " SurveySettings(workers=0, batch_size=1, progress=False))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(ROOT), str(tmp_path / "d"), str(out)],
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_text().count("\n") >= 3:  # header + 2 rows
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    before = {r["file"]: r for r in _rows(out)}
    assert 2 <= len(before) < len(names)

    calls = []

    def counting(path):
        calls.append(Path(path).name)
        return MeanFitter()(path)

    done = run_survey(tmp_path / "d", out, counting, SurveySettings(workers=0, progress=False))
    rows = _rows(out)
    assert [r["file"] for r in rows] == names  # every spectrum exactly once, in order
    assert sorted(calls) == sorted(set(names) - set(before))  # nothing finished is redone
    assert done["skipped"] == len(before)
    for r in rows:
        if r["file"] in before:
            assert r == before[r["file"]]


def test_resuming_with_other_settings_is_refused(tmp_path):
    manifold = tmp_path / "m.npz"
    manifold.write_bytes(b"pretend")
    out = tmp_path / "t.csv"
    _write_spectra(tmp_path / "d", 1)
    from jblase.survey import _check_sidecar

    _check_sidecar(out, FitJob(manifold=str(manifold), search={"n_random": 10}))
    _check_sidecar(out, FitJob(manifold=str(manifold), search={"n_random": 10}))  # same: fine
    with pytest.raises(ValueError, match="fitted with other settings.*search"):
        _check_sidecar(out, FitJob(manifold=str(manifold), search={"n_random": 20}))


# --------------------------------------------------------------------------- Dask


def test_dask_two_workers_equal_one_process(tmp_path):
    pytest.importorskip("distributed")
    _write_spectra(tmp_path / "d", 9, corrupt=(4,))
    serial, parallel = tmp_path / "serial.csv", tmp_path / "dask.csv"
    run_survey(tmp_path / "d", serial, MeanFitter(), SurveySettings(workers=0, progress=False))
    done = run_survey(
        tmp_path / "d",
        parallel,
        MeanFitter(0.05),
        SurveySettings(workers=2, batch_size=2, progress=False),
    )
    assert done["fitted"] == 9 and done["failed"] == 1
    assert parallel.read_text() == serial.read_text()  # row for row, byte for byte


def test_missing_dask_is_a_clear_error(tmp_path, monkeypatch):
    _write_spectra(tmp_path / "d", 1)
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed
    with pytest.raises(ImportError, match=r"jblase\[survey\].*--workers 0"):
        run_survey(tmp_path / "d", tmp_path / "t.csv", MeanFitter(), SurveySettings(workers=2))


# --------------------------------------------------------------------------- a real fit


def _small_manifold(path: Path) -> Path:
    from .test_generator import AXES, _random_manifold

    identity, values, wl = _random_manifold(n_lines=150, n_pix=16000, seed=3)
    identity, keep = np.unique(identity, return_index=True)  # identities rounded to 0.01 A
    values = values[keep]
    present = values[..., 1] > -100
    Manifold(values, present, identity, AXES, wl, np.zeros([a.size for a in AXES])).save(path)
    return path


def _corrupt_only(tmp_path):
    """A manifold, a directory holding one unreadable spectrum (no fit ever runs), the table
    path and the fit-many command line for them."""
    manifold = _small_manifold(tmp_path / "m.npz")
    folder = tmp_path / "spectra"
    folder.mkdir()
    (folder / "b.npz").write_bytes(b"truncated")
    out = tmp_path / "t.csv"
    return (
        manifold,
        folder,
        out,
        ["fit-many", folder, "--manifold", manifold, "--out", out, "--workers", "0"],
    )


def test_fit_many_command(tmp_path):
    """The command end to end without a fit: a corrupt file becomes an error row (reading it
    fails before the model is needed), the summary line, a bad worker count."""
    manifold, folder, out, argv = _corrupt_only(tmp_path)
    code, text, err = run([*argv, "--quiet"])
    assert code == 0, err
    assert "1 spectra: 1 fitted (1 failed), 0 already in the table" in text
    (row,) = read_table(out)
    assert row["status"] == "error" and "unreadable" in row["error"]
    code, text, err = run([*argv, "--quiet"])  # resumed: nothing left to fit
    assert code == 0 and "0 fitted (0 failed), 1 already in the table" in text
    code, _, err = run([*argv[:-1], "-1", "--quiet"])
    assert code == 2 and "workers must be an integer >= 0" in err
    code, _, err = run(["fit-many", folder, "--manifold", tmp_path / "no.npz", "--out", out])
    assert code == 2 and "no such file" in err


def test_fit_many_posterior_options(tmp_path):
    """--posterior nuts reaches every fit (the sidecar records it); --draws-dir needs it, and
    two inputs whose draws files would collide are refused."""
    manifold, folder, out, argv = _corrupt_only(tmp_path)
    code, _, err = run([*argv, "--posterior", "nuts", "--draws", "300", "--quiet"])
    assert code == 0, err
    sidecar = json.loads(out.with_name(out.name + ".settings.json").read_text())
    assert sidecar["posterior"]["draws"] == 300 and sidecar["posterior"]["chains"] == 4
    code, _, err = run([*argv, "--draws-dir", tmp_path / "d", "--quiet"])
    assert code == 2 and "--draws-dir needs --posterior nuts" in err
    (tmp_path / "x").mkdir()
    listed = tmp_path / "list.txt"
    listed.write_text("spectra/b.npz\nx/b.npz\n")
    (tmp_path / "x" / "b.npz").write_bytes(b"truncated")
    job = FitJob(manifold=str(manifold), posterior=object(), draws_dir=str(tmp_path / "d"))
    with pytest.raises(ValueError, match="share the file name 'b.npz'"):
        run_survey(listed, tmp_path / "u.csv", job, SurveySettings(workers=0, progress=False))


@pytest.mark.slow  # one real fit's compile; benchmarks/survey.py fits real spectra through FitJob
def test_fit_job_row_matches_a_direct_fit(tmp_path):
    manifold = _small_manifold(tmp_path / "m.npz")
    gen_wl = np.asarray(Manifold.load(manifold).wavelength)
    rng = np.random.default_rng(0)
    wl = np.linspace(gen_wl[0] + 80.0, gen_wl[-1] - 80.0, 400)  # inside the fitted range
    flux = 1 + 0.01 * rng.standard_normal(wl.size)
    path = tmp_path / "a.npz"
    np.savez(path, wavelength=wl, flux=flux, uncertainty=np.full(wl.size, 0.01))
    # One profile dtype (no float32 search program) and a tiny search: a cheap compile.
    search = {"n_random": 4, "n_guided": 0, "search_dtype": None}
    settings = FitSettings(resolving_power=55000.0, fit_vsini=False)
    job = FitJob(manifold=str(manifold), settings=settings, search=search)
    out = tmp_path / "t.csv"
    run_survey([("a.npz", path)], out, job, SurveySettings(workers=0, progress=False))
    (row,) = read_table(out)
    assert row["status"] == "ok", row["error"]
    with warnings.catch_warnings():  # a noise spectrum: the search may end on the box's edge
        warnings.simplefilter("ignore", FitWarning)
        direct = fit(job.model(), read_observed(path), settings, **search).to_json()
    for key, value in direct.items():
        if key == "seconds":
            continue
        if isinstance(value, float):
            assert row[key] == pytest.approx(value, rel=1e-9, nan_ok=True), key
        else:
            assert row[key] == value, key
