"""Tests for ``jblase fit``: one real fit (WASP-69, HPF) through the command, error exits that
need no fit, the printed table and JSON, the plot and the line-list model.

The real fit (the original code's T4700 clone on one HPF order, ~30 s, mostly compiling) runs
once for the module, in-process through :func:`jblase.cli.main`.
"""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest

from jblase.cli import _json_null_nan, _print_fit, _systematic_errors_arg
from jblase.fit import PARAMETERS, FitResult, FitSettings, line_list_model, model_flux_from_lines
from jblase.io import save_line_list
from jblase.linelist import LineList
from jblase.spectra import read_observed

from .conftest import BLASE_CLONE, HPF_FITS, require
from .test_cli import run

pytestmark = pytest.mark.filterwarnings("ignore::jblase.spectra.MaskedPixelsWarning")

#: The data are barycentric (berv 0): the systemic RV of WASP-69 is about -9.6 km/s
#: (literature); a fit measured -9.73 +/- 0.004 km/s.
WASP69_RV_KMS = -9.7
JSON_KEYS = ["rv_kms", "rv_kms_err", "vsini_kms", "vsini_kms_err", "resolving_power"]
JSON_KEYS += ["resolving_power_err", "chi2_reduced", "n_pixels", "seconds"]


def _no_nan(text: str):
    def refuse(name):
        raise AssertionError(f"{name} in the JSON output")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def wasp69(tmp_path_factory) -> dict:
    """``jblase fit HPF --lines CLONE --resolving-power 55000 --fit-resolution --json --plot``."""
    spectrum, clone = require(HPF_FITS), require(BLASE_CLONE)
    plot = tmp_path_factory.mktemp("fit") / "out.png"
    argv = ["fit", spectrum, "--lines", clone, "--resolving-power", "55000", "--fit-resolution"]
    code, out, err = run([*argv, "--json", "--plot", plot])
    assert code == 0, err
    return {"out": out, "json": _no_nan(out), "plot": plot}


def test_fit_wasp69_json(wasp69):
    result = wasp69["json"]
    assert wasp69["out"].count("\n") == 1  # one JSON object, one line
    for key in JSON_KEYS:
        assert key in result, key
        assert isinstance(result[key], int | float) and math.isfinite(result[key]), key
    assert "teff" not in result  # the stellar parameters of a lines fit are fixed
    assert result["fitted"] == ["rv_kms", "vsini_kms", "resolving_power"]
    assert abs(result["rv_kms"] - WASP69_RV_KMS) < 0.5
    assert 0 < result["rv_kms_err"] < 0.1
    assert 0 <= result["vsini_kms"] < 5 and result["vsini_kms_err"] > 0
    assert 40_000 < result["resolving_power"] < 70_000 and result["resolving_power_err"] > 0
    assert result["chi2_reduced"] > 1  # model error dominates (see README)
    assert 2000 <= result["n_pixels"] <= 2048
    assert result["berv_kms"] == 0.0 and result["berv_source"] == "given"


def test_fit_wasp69_plot(wasp69):
    data = wasp69["plot"].read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


# --------------------------------------------------------------------------- errors (no fit)


def _small_spectrum(path, lo=5000.0, hi=5100.0, n=200, uncertainty=0.01):
    wl = np.linspace(lo, hi, n)
    np.savez(path, wavelength=wl, flux=np.ones(n), uncertainty=np.full(n, uncertainty))
    return path


def fit_fails(argv, *needles) -> str:
    code, out, err = run(["fit", *argv])
    assert code == 2, (out, err)
    assert not out
    assert err.startswith("jblase fit: error:") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def test_fit_needs_exactly_one_model(tmp_path):
    spectrum = _small_spectrum(tmp_path / "s.npz")
    fit_fails([spectrum], "--manifold", "--lines")
    fit_fails([spectrum, "--manifold", "m.npz", "--lines", "l.pt"], "exactly one")


def test_fit_missing_files(tmp_path):
    missing = tmp_path / "nothing.fits"
    lines = tmp_path / "lines.pt"
    lines.write_bytes(b"")
    fit_fails([missing, "--lines", lines], str(missing), "no such file")
    spectrum = _small_spectrum(tmp_path / "s.npz")
    fit_fails([spectrum, "--manifold", tmp_path / "m.npz"], "m.npz", "no such file")
    fit_fails([spectrum, "--lines", lines, "--mask-file", missing], "no such file")


def test_fit_draws_out_needs_the_posterior(tmp_path):
    """Checked before anything is read or fitted."""
    spectrum = _small_spectrum(tmp_path / "s.npz")
    lines = tmp_path / "lines.pt"
    lines.write_bytes(b"")  # never read: the option error comes first
    argv = [spectrum, "--lines", lines, "--draws-out", tmp_path / "d.npz"]
    fit_fails(argv, "--draws-out needs --posterior nuts")


@pytest.mark.parametrize("berv", ["heder", "nan", "12km"])
def test_fit_bad_berv(tmp_path, berv):
    spectrum = _small_spectrum(tmp_path / "s.npz")
    fit_fails([spectrum, "--lines", BLASE_CLONE, "--berv", berv], "--berv", repr(berv))


def test_systematic_errors_option_parses():
    assert _systematic_errors_arg(None) is None
    assert _systematic_errors_arg("teff=60,logg=0.1,feh=0.03") == {
        "teff": 60.0,
        "logg": 0.1,
        "feh": 0.03,
    }
    assert _systematic_errors_arg(" rv_kms = 0.01 ") == {"rv_kms": 0.01}


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("teff:60", ["NAME=VALUE", "'teff:60'"]),
        ("teff=60,", ["NAME=VALUE"]),
        ("teff=", ["NAME=VALUE"]),
        ("=60", ["NAME=VALUE"]),
        ("tef=60", ["unknown parameter 'tef'", "teff, logg, feh"]),
        ("teff=sixty", ["teff='sixty'", ">= 0"]),
        ("teff=-5", [">= 0"]),
        ("teff=nan", [">= 0"]),
        ("teff=60,teff=70", ["given twice"]),
    ],
)
def test_fit_bad_systematic_errors(tmp_path, text, needles):
    spectrum = _small_spectrum(tmp_path / "s.npz")
    fit_fails([spectrum, "--lines", BLASE_CLONE, "--systematic-errors", text], *needles)


def test_fit_table_shows_the_floor():
    result = _result()
    result.errors_stat = dict(result.errors)
    result.errors = {**result.errors, "rv_kms": float(np.hypot(0.01, 0.02))}
    result.systematic_errors = {"rv_kms": 0.02}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        _print_fit(result)
    assert "RV      = -9.7000 +/- 0.0224 (Laplace 0.0100 + floor 0.0200) km/s" in out.getvalue()
    obj = result.to_json()
    assert obj["rv_kms_err_stat"] == 0.01 and obj["rv_kms_err"] == pytest.approx(0.02236, 1e-3)
    assert obj["systematic_errors"] == {"rv_kms": 0.02}


def test_fit_stellar_options_need_a_manifold(tmp_path):
    spectrum = _small_spectrum(tmp_path / "s.npz")
    lines = tmp_path / "lines.pt"
    fit_fails([spectrum, "--lines", lines, "--teff-prior", "4700"], "--teff-prior", "--manifold")


def test_fit_bad_uncertainties(tmp_path):
    spectrum = _small_spectrum(tmp_path / "s.npz", uncertainty=0.0)
    lines = tmp_path / "lines.pt"
    lines.write_bytes(b"")  # never read: the spectrum fails first
    fit_fails([spectrum, "--lines", lines], "uncertaint")


def test_fit_spectrum_outside_the_line_list(tmp_path):
    clone = require(BLASE_CLONE)
    spectrum = _small_spectrum(tmp_path / "blue.npz")
    err = fit_fails([spectrum, "--lines", clone], "5000.0-5100.0 A", "8068.2-12818.9 A")
    assert "not inside" in err


# --------------------------------------------------------------------------- output pieces


def _result(n_orders=2, n_max=50, fitted=("rv_kms", "vsini_kms")) -> FitResult:
    values = dict(zip(PARAMETERS, [np.nan] * 3 + [-9.7, 1.5, 55_000.0], strict=True))
    errors = dict.fromkeys(PARAMETERS, np.nan) | {"rv_kms": 0.01, "vsini_kms": np.nan}
    model = np.full((n_orders, n_max), 0.9)
    weight = np.ones((n_orders, n_max))
    weight[0, 10:20] = 0.0
    k = len(fitted)
    return FitResult(
        values=values,
        errors=errors,
        fitted=fitted,
        covariance=np.full((k, k), np.nan),
        correlation=np.eye(k),
        chi2=100.0,
        chi2_reduced=1.25,
        n_pixels=90,
        berv_kms=-27.5,
        berv_source="header BRVCORR",
        rv_scan_kms=-9.5,
        gp=None,
        continuum=np.ones((n_orders, 3)),
        model=model,
        weight=weight,
        seconds={"total": 3.0},
    )


def test_fit_table_lists_values_errors_and_berv():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        _print_fit(_result())
    text = out.getvalue()
    assert "RV      = -9.7000 +/- 0.0100 km/s" in text
    assert "v sin i = 1.500 +/- ? km/s" in text  # a NaN error
    assert "R       = 55000 (fixed)" in text
    assert "Teff" not in text
    assert "chi2_reduced 1.25 on 90 pixels; 3.0 s" in text
    assert "BERV -27.5000 km/s (header BRVCORR)" in text


def test_fit_json_has_null_not_nan():
    obj = _json_null_nan(_result().to_json())
    text = json.dumps(obj, allow_nan=False)
    assert _no_nan(text)["vsini_kms_err"] is None
    assert _no_nan(text)["rv_kms_err"] == 0.01


def test_plot_fit_two_orders_with_masked_pixels(tmp_path):
    from jblase.plots import plot_fit

    n = 50
    wl = np.stack([np.linspace(8600, 8610, n), np.linspace(8620, 8630, n)])
    path = tmp_path / "two.npz"
    np.savez(path, wavelength=wl, flux=np.ones((2, n)), uncertainty=np.full((2, n), 0.01))
    spectrum = read_observed(path)
    out = plot_fit(spectrum, _result(n_max=n), tmp_path / "fit.png")
    assert out.read_bytes().startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="does not match"):
        plot_fit(spectrum, _result(n_orders=3, n_max=n), tmp_path / "bad.png")


# --------------------------------------------------------------------------- the line-list model


def test_line_list_model_uses_the_clone_files_profile(tmp_path):
    """A jblase clone's stored profile and wing cut make the model, on the fit's grid."""
    lines = LineList(
        center=np.array([8603.0, 8605.0, 8607.5]),
        ln_amplitude=np.log([0.3, 0.5, 0.2]),
        ln_sigma=np.log([0.05, 0.04, 0.06]),
        ln_gamma=np.log([0.03, 0.05, 0.02]),
    )
    clone = tmp_path / "clone.npz"
    save_line_list(clone, lines, {"settings": {"profile": "blase", "wing_cut": 800}})
    spectrum = read_observed(_small_spectrum(tmp_path / "s.npz", 8604.0, 8606.0, 50))
    settings = FitSettings(line_list_resolution=200_000.0)
    wl, flux = line_list_model(clone, spectrum, settings)
    assert wl[0] < 8604.0 * (1 - 0.002) and wl[-1] > 8606.0 * (1 + 0.002)
    assert np.allclose(np.diff(np.log(wl)), 1 / 200_000.0)
    expected = model_flux_from_lines(lines, wl, profile="blase", wing_cut=800)
    np.testing.assert_allclose(flux, expected, rtol=0, atol=1e-12)
    other = model_flux_from_lines(lines, wl, profile="pseudo_voigt", wing_cut=800)
    assert np.max(np.abs(np.asarray(other) - np.asarray(flux))) > 1e-4
