"""NUTS posteriors (jblase.posterior, ``fit(..., posterior=...)``): an analytic Gaussian, and an
extrinsic fit at high S/N, where the posterior is nearly Gaussian and must agree with Laplace."""

from __future__ import annotations

import sys

import jax.numpy as jnp
import numpy as np
import pytest

from jblase.fit import FitSettings, fit
from jblase.posterior import PosteriorSettings, nuts

from .test_fit import SMALL, _observe, _spectrum, fixed_model, generator  # noqa: F401

pytest.importorskip("blackjax")


@pytest.mark.parametrize("adapt", ["window", "laplace"])
def test_nuts_recovers_a_correlated_gaussian(adapt):
    """ "window": the mass matrix learnt from an identity start; "laplace": the true covariance
    given (as the fit gives the Laplace one) and kept, the step size tuned alone."""
    mean = np.array([1.0, -2.0, 0.5])
    cov = np.array([[1.0, 0.6, 0.0], [0.6, 1.0, 0.3], [0.0, 0.3, 0.25]])
    prec = jnp.asarray(np.linalg.inv(cov))

    def logdensity(x):
        d = x - mean
        return -0.5 * d @ prec @ d

    settings = PosteriorSettings(draws=1000, warmup=300, adapt_mass_matrix=adapt)
    out = nuts(logdensity, mean + 0.5, np.eye(3) if adapt == "window" else cov, settings)
    flat = out["samples"].reshape(-1, 3)
    assert out["samples"].shape == (4, 1000, 3)
    assert np.all(out["rhat"] < 1.01)
    assert np.all(out["ess"] > 800)
    assert out["divergences"] == 0
    np.testing.assert_allclose(flat.mean(0), mean, atol=0.06)
    np.testing.assert_allclose(np.cov(flat.T), cov, atol=0.06)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"draws": 0}, "draws"),
        ({"chains": 1}, "chains must be >= 2"),
        ({"target_acceptance": 1.0}, "target_acceptance"),
        ({"start_scale": -1.0}, "start_scale"),
        ({"adapt_mass_matrix": "stan"}, "adapt_mass_matrix"),
    ],
)
def test_bad_posterior_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PosteriorSettings(**kwargs)


def test_missing_blackjax_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "blackjax", None)  # as if not installed
    with pytest.raises(ImportError, match=r"jblase\[sampling\]"):
        nuts(lambda x: -0.5 * x @ x, np.zeros(2))


def test_fit_posterior_agrees_with_laplace_at_high_snr(fixed_model):  # noqa: F811
    wl, flux = fixed_model
    c, f, s = _observe(wl, flux, 200.0, 3)
    settings = FitSettings(resolving_power=55_000.0, **SMALL)
    result = fit(
        (wl, flux),
        _spectrum(c, f, s),
        settings,
        posterior=PosteriorSettings(draws=250, warmup=150, chains=2),
    )
    post = result.posterior
    assert result.fitted == ("rv_kms", "vsini_kms")
    assert result.posterior_draws.shape == (2, 250, 2)
    for name in result.fitted:
        assert post["rhat"][name] < 1.01, (name, post["rhat"])
        half = 0.5 * (post["p84"][name] - post["p16"][name])
        laplace = result.errors[name]
        # a Gaussian posterior: the 16-84 half-width is the Laplace error (to sampling noise)
        assert 0.8 < half / laplace < 1.25, (name, half, laplace)
        assert abs(post["median"][name] - result.values[name]) < 0.5 * laplace
    out = result.to_json()
    for name in result.fitted:
        assert out[f"{name}_p16"] < out[f"{name}_median"] < out[f"{name}_p84"]
    assert set(out["posterior"]) == {"rhat", "ess", "divergences", "acceptance", "chains"} | {
        "integration_steps",
        "adaptation",
        "draws",
    }
    assert out["posterior"]["adaptation"] == "laplace"


def test_a_slow_rotator_posterior_starts_at_its_mode_and_converges(fixed_model):  # noqa: F811
    """v sin i = 0: the fit's optimum sits on the edge of v sin i's range, where the
    likelihood's Hessian in the unconstrained (softplus) coordinate vanishes. NUTS starts from
    the posterior's mode instead (the Jacobian puts it inward), so the chains meet (started
    from the likelihood's Hessian they scattered into the flat tail: R-hat 195, median v sin i
    16,765 km/s), and the posterior ends at the observation model's max_vsini_kms."""
    import jblase.fit as fit_module

    wl, flux = fixed_model
    c, f, s = _observe(wl, flux, 100.0, 3, vsini_kms=0.0)
    settings = FitSettings(resolving_power=55_000.0, **SMALL)
    result = fit(
        (wl, flux),
        _spectrum(c, f, s),
        settings,
        posterior=PosteriorSettings(draws=250, warmup=150, chains=4),
    )
    post = result.posterior
    assert result.values["vsini_kms"] < 0.01  # the optimum: on the edge
    assert max(post["rhat"].values()) < 1.05, post["rhat"]  # 1.01-1.03 over XLA threadings
    assert 0.0 < post["p16"]["vsini_kms"] < post["median"]["vsini_kms"]
    assert post["p84"]["vsini_kms"] < 1.0
    assert abs(post["median"]["rv_kms"] - result.values["rv_kms"]) < result.errors["rv_kms"]
    # The prior ends where the rotation kernel does: beyond max_vsini_kms the density is 0.
    problem, values, _, _ = fit_module._setup((wl, flux), _spectrum(c, f, s), settings, None)
    layout = problem.layout
    weight = problem.weight
    for vsini, finite in (
        (0.5 * SMALL["max_vsini_kms"], True),
        (1.5 * SMALL["max_vsini_kms"], False),
    ):
        u = jnp.asarray(layout.to_unconstrained({**values, "rv_kms": 12.3, "vsini_kms": vsini}))
        assert bool(jnp.isfinite(fit_module._log_posterior(problem, u, weight))) is finite


def test_fit_many_rows_carry_the_posterior(fixed_model, tmp_path):  # noqa: F811
    """A survey row of a NUTS fit (``jblase fit-many --posterior nuts``): the medians and
    percentiles in their columns, the diagnostics decoded, the draws file as the fit's."""
    from jblase.survey import fit_batch, read_table, run_survey, save_draws

    wl, flux = fixed_model
    c, f, s = _observe(wl, flux, 200.0, 4)
    settings = FitSettings(resolving_power=55_000.0, **SMALL)
    posterior = PosteriorSettings(draws=60, warmup=60, chains=2)
    results = {}

    def fitter(path):
        results[path] = fit((wl, flux), _spectrum(c, f, s), settings, posterior=posterior)
        save_draws(tmp_path / "draws" / f"{path}.draws.npz", results[path])
        return results[path].to_json()

    (row,) = fit_batch([("star", "star")], fitter)
    assert row["status"] == "ok", row["error"]
    out = tmp_path / "t.csv"
    run_survey([("star", "star")], out, fitter, _survey_settings())
    (parsed,) = read_table(out)
    result = results["star"]
    for name in result.fitted:
        for q in ("median", "p16", "p84"):
            assert parsed[f"{name}_{q}"] == pytest.approx(result.posterior[q][name], rel=1e-12)
        assert parsed["posterior"]["rhat"][name] == pytest.approx(result.posterior["rhat"][name])
    assert np.isnan(parsed["teff_median"])  # not fitted: empty
    saved = np.load(tmp_path / "draws" / "star.draws.npz")
    np.testing.assert_array_equal(saved["draws"], result.posterior_draws)
    assert tuple(saved["names"]) == result.fitted


def _survey_settings():
    from jblase.survey import SurveySettings

    return SurveySettings(workers=0, progress=False)


def test_a_fit_on_a_grid_node_is_detected():
    """An optimum on an interior node (the interpolation's kink) is flagged, so that NUTS
    learns its mass matrix there instead of trusting the Hessian; edges and off-node values,
    a fixed parameter and a fixed-model fit are not."""
    from types import SimpleNamespace

    from jblase.fit import NODE_TOLERANCE, on_grid_nodes

    axes = (np.array([4000.0, 4500.0, 5000.0]), np.array([4.0, 4.5, 5.0]), np.array([-0.5, 0.0]))
    problem = SimpleNamespace(
        generator=SimpleNamespace(axes=axes),
        layout=SimpleNamespace(free=("teff", "logg", "feh", "rv_kms")),
    )
    near = 4500.0 + 0.5 * NODE_TOLERANCE * 500.0
    assert on_grid_nodes(problem, {"teff": near, "logg": 4.2, "feh": 0.0}) == ("teff",)
    assert on_grid_nodes(problem, {"teff": 4500.2, "logg": 4.5, "feh": -0.5}) == ("logg",)
    assert on_grid_nodes(problem, {"teff": 4000.0, "logg": 5.0, "feh": -0.2}) == ()  # edges
    problem.layout.free = ("logg", "rv_kms")
    assert on_grid_nodes(problem, {"teff": 4500.0, "logg": 4.2, "feh": 0.0}) == ()
    problem.generator = None
    assert on_grid_nodes(problem, {"teff": 4500.0, "logg": 4.5, "feh": 0.0}) == ()
