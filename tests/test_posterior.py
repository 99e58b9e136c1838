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


def test_nuts_recovers_a_correlated_gaussian():
    mean = np.array([1.0, -2.0, 0.5])
    cov = np.array([[1.0, 0.6, 0.0], [0.6, 1.0, 0.3], [0.0, 0.3, 0.25]])
    prec = jnp.asarray(np.linalg.inv(cov))

    def logdensity(x):
        d = x - mean
        return -0.5 * d @ prec @ d

    out = nuts(logdensity, mean + 0.5, np.eye(3), PosteriorSettings(draws=1000, warmup=300))
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
    assert set(out["posterior"]) == {"rhat", "ess", "divergences", "acceptance", "chains", "draws"}
