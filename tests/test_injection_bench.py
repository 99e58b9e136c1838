"""benchmarks/injection.py's bookkeeping (no fit): the floor applied to the same rows, and the
summary's keys for the Laplace-only and the floored errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import injection  # noqa: E402


def _rows(n=400, floor=100.0, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        row = {}
        for p in injection.PARAMS:
            stat = rng.uniform(5.0, 20.0)
            row[f"true_{p}"] = 0.0
            row[p] = np.hypot(stat, floor if p == "teff" else 0.0) * rng.standard_normal()
            row[f"{p}_err_stat"] = stat
        rows.append(row)
    return rows


def test_summary_with_and_without_the_floor():
    rows = _rows()
    injection._apply_floor(rows, {"teff": 100.0})
    assert rows[0]["teff_err"] == pytest.approx(np.hypot(rows[0]["teff_err_stat"], 100.0))
    assert rows[0]["logg_err"] == rows[0]["logg_err_stat"]
    s = injection._summary(rows)
    keys = {"bias", "scatter", "mean_abs_error", "n_with_errors"}
    for suffix in ("_stat", ""):
        keys |= {f"median_reported_error{suffix}", f"coverage_1sigma{suffix}"}
        keys |= {f"normalised_scatter{suffix}"}
    assert set(s["teff"]) == keys
    assert s["teff"]["coverage_1sigma_stat"] < 0.25
    assert 0.6 < s["teff"]["coverage_1sigma"] < 0.76
    assert s["logg"]["coverage_1sigma"] == s["logg"]["coverage_1sigma_stat"]
    assert s["teff"]["normalised_scatter"] == pytest.approx(1.0, abs=0.15)


def test_calibration_must_use_another_seed():
    with pytest.raises(SystemExit):
        injection.main(["--calibration-seed", "0", "--seed", "0"])
