"""The simulator's line-formation laws: per-line (the demo's), summed opacity, Milne-Eddington."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from scipy.special import voigt_profile

from jblase.cli import main
from jblase.grids import synthetic
from jblase.grids.synthetic import (
    D_MAX,
    LINE_FORMATIONS,
    SETTINGS_FILENAME,
    SyntheticGridModel,
    load_model,
    write_grid,
)

WL_RANGE = (8500.0, 8560.0)
N_LINES = 400


def dense_tau(model: SyntheticGridModel, point, wl: np.ndarray) -> np.ndarray:
    """Every line's optical depth on every pixel, (n_lines, n_pix), with no windowing."""
    strength = model.line_strengths(*point)
    sigma, gamma = model.line_widths(*point)
    x = wl[None, :] - model.lines.center[:, None]
    return strength[:, None] * voigt_profile(x, sigma[:, None], gamma[:, None])


def reference_flux(law: str, tau: np.ndarray) -> np.ndarray:
    """The laws written out directly from their definitions; ``tau`` (n_lines, n_pix)."""
    if law == "per_line":
        return np.prod(1.0 - D_MAX * (1.0 - np.exp(-tau)), axis=0)
    total = tau.sum(axis=0)
    if law == "summed_opacity":
        return 1.0 - D_MAX * (1.0 - np.exp(-total))
    assert law == "milne_eddington"
    return 1.0 - D_MAX * total / (1.0 + total)


def two_lines(tau_peak: float, separation_aa: float, wl: np.ndarray):
    """Two equal lines 8530 -/+ separation/2 A with peak optical depth ``tau_peak`` each."""
    center = np.array([8530.0 - separation_aa / 2, 8530.0 + separation_aa / 2])
    sigma, gamma = np.full(2, 0.05), np.full(2, 0.02)
    strength = np.full(2, tau_peak / voigt_profile(0.0, 0.05, 0.02))
    tau = strength[:, None] * voigt_profile(wl[None, :] - center[:, None], 0.05, 0.02)
    return (center, strength, sigma, gamma), tau


@pytest.fixture(scope="module")
def wl() -> np.ndarray:
    return SyntheticGridModel(wl_range=WL_RANGE, n_lines=0).wavelength()


@pytest.mark.parametrize("law", LINE_FORMATIONS)
@pytest.mark.parametrize("point", [(4000.0, 3.0, 0.0), (7500.0, 4.5, -0.5)])
def test_each_law_matches_a_dense_reference(law, point):
    """The windowed renderer against all lines x all pixels and the law's formula."""
    model = SyntheticGridModel(wl_range=WL_RANGE, n_lines=N_LINES, seed=5, line_formation=law)
    wl = model.wavelength()[500:2500]
    expected = reference_flux(law, dense_tau(model, point, wl))
    np.testing.assert_allclose(model.line_spectrum(*point, wavelength=wl), expected, rtol=2e-5)


def test_default_is_the_per_line_law_unchanged():
    """No argument, the explicit per-line law and the per-line formula give the same spectra."""
    default = SyntheticGridModel(wl_range=WL_RANGE, n_lines=N_LINES, seed=5)
    explicit = SyntheticGridModel(
        wl_range=WL_RANGE, n_lines=N_LINES, seed=5, line_formation="per_line"
    )
    assert default.line_formation == "per_line" == LINE_FORMATIONS[0]
    point = (4500.0, 4.0, 0.2)
    np.testing.assert_array_equal(default.flux(*point), explicit.flux(*point))
    wl = default.wavelength()
    expected = reference_flux("per_line", dense_tau(default, point, wl))
    np.testing.assert_allclose(default.line_spectrum(*point), expected, rtol=2e-5)


@pytest.mark.parametrize("law", LINE_FORMATIONS)
def test_weak_isolated_lines_agree_with_the_linear_limit(law, wl):
    """For tau << 1 every law is 1 - D_MAX tau, to second order in tau."""
    tau_peak = 1e-3
    lines, tau = two_lines(tau_peak, 20.0, wl)
    flux = synthetic._render(wl, *lines, law)
    linear = 1.0 - D_MAX * tau.sum(axis=0)
    # Second-order terms: D tau^2 / 2 (exp), D tau^2 (Milne-Eddington), D^2 tau_1 tau_2 (blend);
    # plus the wings beyond each line's window, where its depth is below _DEPTH_CUT.
    tol = 2 * D_MAX * tau_peak**2 + 2 * synthetic._DEPTH_CUT
    np.testing.assert_allclose(flux, linear, rtol=0, atol=tol)
    assert 1.0 - flux.min() == pytest.approx(D_MAX * tau_peak, rel=2 * tau_peak)


def test_blended_strong_lines_are_shallower_when_opacities_add(wl):
    """Physics: opacities of blended lines add, so a saturated blend cannot fall below the
    source-function floor 1 - D_MAX; forming each line on its own over-darkens the blend.

    For two lines with x_j = 1 - exp(-tau_j), the summed law exceeds the per-line product by
    exactly D_MAX (1 - D_MAX) x_1 x_2 at every pixel."""
    lines, tau = two_lines(3.0, 0.05, wl)
    per_line = synthetic._render(wl, *lines, "per_line")
    summed = synthetic._render(wl, *lines, "summed_opacity")
    x = 1.0 - np.exp(-tau)
    excess = D_MAX * (1.0 - D_MAX) * x[0] * x[1]
    np.testing.assert_allclose(summed - per_line, excess, rtol=0, atol=1e-6)
    core = np.argmin(per_line)
    assert summed[core] - per_line[core] > 0.05  # the blend's core: ~0.09 brighter
    assert per_line.min() < 1.0 - D_MAX - 0.05  # below the floor: (1 - 0.9 x)^2
    assert summed.min() >= 1.0 - D_MAX - 1e-12
    milne = synthetic._render(wl, *lines, "milne_eddington")
    assert milne.min() >= 1.0 - D_MAX - 1e-12
    # A Milne-Eddington line approaches D_MAX only as 1 / tau: shallower than the exponential.
    assert (milne >= summed - 1e-12).all() and milne[core] > summed[core] + 0.05


@pytest.mark.parametrize("law", LINE_FORMATIONS)
def test_settings_roundtrip_keeps_the_law(law):
    model = SyntheticGridModel(wl_range=WL_RANGE, n_lines=50, seed=2, line_formation=law)
    settings = json.loads(json.dumps(model.settings()))
    assert settings["line_formation"] == law
    rebuilt = SyntheticGridModel.from_settings(settings)
    assert rebuilt == model and rebuilt.line_formation == law
    np.testing.assert_array_equal(rebuilt.flux(5100, 4.1, -0.3), model.flux(5100, 4.1, -0.3))
    for other in set(LINE_FORMATIONS) - {law}:
        assert SyntheticGridModel.from_settings({**settings, "line_formation": other}) != model


def test_settings_without_the_key_are_the_default_law():
    settings = SyntheticGridModel(wl_range=WL_RANGE, n_lines=50, seed=2).settings()
    del settings["line_formation"]
    assert SyntheticGridModel.from_settings(settings).line_formation == "per_line"
    with pytest.raises(ValueError, match="line_formation"):
        SyntheticGridModel(wl_range=WL_RANGE, line_formation="lte")
    with pytest.raises(ValueError, match="unknown"):
        SyntheticGridModel.from_settings({**settings, "law": "per_line"})


def test_write_grid_resumes_a_grid_written_before_the_setting(tmp_path):
    """An older settings file (no line_formation) describes the default law: resuming it works,
    while a model of another law is refused."""
    model = SyntheticGridModel(wl_range=WL_RANGE, n_lines=50, seed=2)
    out = write_grid(tmp_path / "g", (5000.0,), (4.5,), (0.0,), model=model, progress=False)
    meta_path = out / SETTINGS_FILENAME
    meta = json.loads(meta_path.read_text())
    del meta["settings"]["line_formation"]
    meta_path.write_text(json.dumps(meta))
    assert load_model(out) == model
    write_grid(out, (5000.0, 5500.0), (4.5,), (0.0,), model=model, progress=False)
    assert load_model(out).line_formation == "per_line"
    other = SyntheticGridModel(
        wl_range=WL_RANGE, n_lines=50, seed=2, line_formation="summed_opacity"
    )
    with pytest.raises(ValueError, match="another model"):
        write_grid(out, (5000.0,), (4.5,), (0.0,), model=other, progress=False)


def run_cli(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue()


def test_cli_synth_grid_line_formation(tmp_path):
    code, text = run_cli(["synth-grid", "--help"])
    assert code == 0 and "--line-formation" in text
    assert all(law in text for law in LINE_FORMATIONS)
    axes = ["--teff", "5000", "5000", "500", "--logg", "4.5", "4.5", "0.5"]
    axes += ["--feh", "0.0", "0.0", "0.5", "--wl", *map(str, WL_RANGE), "--quiet"]
    for law in ("milne_eddington", None):
        out = tmp_path / str(law)
        extra = [] if law is None else ["--line-formation", law]
        code, _ = run_cli(["synth-grid", "--out", out, *axes, *extra])
        assert code == 0
        assert load_model(out).line_formation == (law or "per_line")
    code, _ = run_cli(["synth-grid", "--out", tmp_path / "bad", *axes, "--line-formation", "x"])
    assert code == 2
