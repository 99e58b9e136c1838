"""Posteriors by NUTS (blackjax): the sampler behind ``jblase fit --posterior nuts``.

Where it sits: after :mod:`jblase.fit` has found the optimum and its Laplace covariance. The
fit hands over a log density on its unconstrained coordinates (the same ones its optimiser and
Hessian use), the optimum and the Laplace covariance there; this module adapts NUTS once
(blackjax's window adaptation: step size and a dense mass matrix, starting from the Laplace
covariance), then runs ``chains`` chains vmapped in one compiled ``lax.scan`` from starts
drawn around the adapted position, and reports the split R-hat and the effective sample size
of every coordinate (blackjax's diagnostics) and the divergences.

blackjax is an optional dependency: ``pip install "jblase[sampling]"``.

Precision: float64 (the fit's chi-square sums thousands of squared residuals).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["PosteriorSettings", "nuts"]


@dataclass(frozen=True)
class PosteriorSettings:
    """NUTS settings.

    Attributes:
        draws: draws kept per chain.
        warmup: adaptation steps (one chain, from the optimum).
        chains: chains run after the adaptation (vmapped), for R-hat.
        seed: the random seed.
        target_acceptance: the adaptation's target acceptance rate.
        start_scale: the chains start at the adapted position plus this many Laplace
            standard deviations of Gaussian scatter (over-dispersed starts make R-hat
            meaningful).
    """

    draws: int = 1000
    warmup: int = 500
    chains: int = 4
    seed: int = 0
    target_acceptance: float = 0.8
    start_scale: float = 1.0

    def __post_init__(self):
        for name in ("draws", "warmup", "chains"):
            value = getattr(self, name)
            if not (isinstance(value, (int, np.integer)) and value >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.chains < 2:
            raise ValueError(f"chains must be >= 2 (R-hat compares chains), got {self.chains}")
        if not 0 < self.target_acceptance < 1:
            raise ValueError(f"target_acceptance must be in (0, 1), got {self.target_acceptance!r}")
        if not (math.isfinite(self.start_scale) and self.start_scale >= 0):
            raise ValueError(f"start_scale must be finite and >= 0, got {self.start_scale!r}")


def _require_blackjax():
    try:
        import blackjax
    except ImportError as err:
        raise ImportError(
            'NUTS posteriors need blackjax: pip install "jblase[sampling]" (or blackjax)'
        ) from err
    return blackjax


def _covariance_or_none(cov) -> np.ndarray | None:
    if cov is None:
        return None
    cov = np.asarray(cov, float)
    if not np.all(np.isfinite(cov)):
        return None
    try:
        np.linalg.cholesky(0.5 * (cov + cov.T))
    except np.linalg.LinAlgError:
        return None
    return 0.5 * (cov + cov.T)


def nuts(
    logdensity: Callable[[jax.Array], jax.Array],
    position,
    covariance=None,
    settings: PosteriorSettings | None = None,
) -> dict:
    """Sample ``logdensity`` (a jittable function of an (n,) vector) with NUTS.

    Args:
        logdensity: log posterior density (up to a constant) on unconstrained coordinates.
        position: (n,) the starting point (the optimum).
        covariance: (n, n) the Laplace covariance at ``position`` in the same coordinates
            (the initial inverse mass matrix and the scale of the chains' starts); None or
            not positive definite: the identity.
        settings: :class:`PosteriorSettings`.

    Returns:
        ``{"samples": (chains, draws, n), "rhat": (n,), "ess": (n,), "divergences": int,
        "acceptance": float, "step_size": float, "inverse_mass_matrix": (n, n),
        "settings": PosteriorSettings}``.
    """
    blackjax = _require_blackjax()
    settings = settings or PosteriorSettings()
    x0 = jnp.asarray(position, jnp.float64)
    n = x0.shape[0]
    cov = _covariance_or_none(covariance)
    start_cov = np.eye(n) if cov is None else cov
    key = jax.random.PRNGKey(settings.seed)
    k_adapt, k_start, k_run = jax.random.split(key, 3)

    adaptation = blackjax.window_adaptation(
        blackjax.nuts,
        logdensity,
        is_mass_matrix_diagonal=False,
        initial_inverse_mass_matrix=jnp.asarray(start_cov),
        target_acceptance_rate=settings.target_acceptance,
        initial_step_size=0.5,
    )
    (state, parameters), _ = adaptation.run(k_adapt, x0, num_steps=settings.warmup)
    kernel = blackjax.nuts(logdensity, **parameters)

    chol = np.linalg.cholesky(start_cov)
    noise = np.asarray(jax.random.normal(k_start, (settings.chains, n)))
    starts = np.asarray(state.position)[None] + settings.start_scale * noise @ chol.T
    states = jax.vmap(kernel.init)(jnp.asarray(starts))
    samples, divergent, acceptance = _run_chains(kernel, states, k_run, settings)
    samples = np.asarray(samples)

    from blackjax.diagnostics import effective_sample_size, potential_scale_reduction

    chains_first = jnp.asarray(samples)  # (chains, draws, n)
    rhat = np.asarray(potential_scale_reduction(chains_first, chain_axis=0, sample_axis=1))
    ess = np.asarray(effective_sample_size(chains_first, chain_axis=0, sample_axis=1))
    return {
        "samples": samples,
        "rhat": rhat,
        "ess": ess,
        "divergences": int(np.sum(divergent)),
        "acceptance": float(np.mean(acceptance)),
        "step_size": float(parameters["step_size"]),
        "inverse_mass_matrix": np.asarray(parameters["inverse_mass_matrix"]),
        "settings": settings,
    }


def _run_chains(kernel, states, key, settings: PosteriorSettings):
    """``draws`` NUTS steps of every chain (vmapped) in one compiled scan."""
    keys = jax.random.split(key, settings.chains)

    def one_chain(state, chain_key):
        def step(s, k):
            s, info = kernel.step(k, s)
            return s, (s.position, info.is_divergent, info.acceptance_rate)

        _, out = jax.lax.scan(step, state, jax.random.split(chain_key, settings.draws))
        return out

    return jax.jit(jax.vmap(one_chain))(states, keys)
