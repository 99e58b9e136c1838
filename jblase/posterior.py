"""Posteriors by NUTS (blackjax): the sampler behind ``jblase fit --posterior nuts``.

Where it sits: after :mod:`jblase.fit` has found the optimum and its Laplace covariance. The
fit hands over a log density on its unconstrained coordinates (the same ones its optimiser and
Hessian use), the optimum and the Laplace covariance there; this module warms NUTS up once
(by default the step size alone, by dual averaging, with the Laplace covariance as the mass
matrix; or blackjax's window adaptation of the step size and a dense mass matrix, starting from
the Laplace covariance), then runs ``chains`` chains vmapped in one ``lax.scan`` from starts
drawn around the adapted position (warm-up and chains one compiled program, reused by every
star of the same shapes), and reports the split R-hat and the effective sample size
of every coordinate (blackjax's diagnostics) and the divergences.

blackjax is an optional dependency: ``pip install "jblase[sampling]"``.

Precision: float64 (the fit's chi-square sums thousands of squared residuals).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import equinox as eqx
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
        adapt_mass_matrix: ``"laplace"`` (default): the mass matrix stays the Laplace
            covariance and the warm-up adapts the step size alone (dual averaging); a short
            warm-up cannot estimate a dense covariance better than the Hessian at the
            optimum. ``"window"``: blackjax's window adaptation (Stan's schedule) estimates
            a dense mass matrix from the warm-up draws, starting from the Laplace one; it
            needs a long warm-up. Without a usable Laplace covariance both start from the
            identity.
        max_tree_depth: NUTS's largest trajectory doubling (at most 2**depth gradients per
            draw). A low-dimensional posterior with a good mass matrix needs a few; the cap
            bounds a star's cost where the posterior is kinked (the generator's grid nodes),
            at the price of a smaller effective sample size there.
    """

    draws: int = 1000
    warmup: int = 500
    chains: int = 4
    seed: int = 0
    target_acceptance: float = 0.8
    start_scale: float = 1.0
    adapt_mass_matrix: str = "laplace"
    max_tree_depth: int = 6

    def __post_init__(self):
        if self.adapt_mass_matrix not in ("laplace", "window"):
            raise ValueError(
                f"adapt_mass_matrix must be 'laplace' or 'window', got {self.adapt_mass_matrix!r}"
            )
        for name in ("draws", "warmup", "chains", "max_tree_depth"):
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
    logdensity: Callable,
    position,
    covariance=None,
    settings: PosteriorSettings | None = None,
    data=None,
) -> dict:
    """Sample ``logdensity`` with NUTS.

    Args:
        logdensity: log posterior density (up to a constant) on unconstrained coordinates:
            ``logdensity(x)`` of an (n,) vector, or with ``data`` ``logdensity(x, data)``.
        position: (n,) the starting point (the optimum).
        covariance: (n, n) the Laplace covariance at ``position`` in the same coordinates
            (the initial inverse mass matrix and the scale of the chains' starts); None or
            not positive definite: the identity.
        settings: :class:`PosteriorSettings`.
        data: a pytree of arrays ``logdensity`` reads (the spectrum, the model). The
            adaptation and the chains are one compiled program per ``logdensity`` (a
            module-level function), settings and data shapes, so every later star of a
            survey reuses it; a ``logdensity`` that closes over its data instead is a new
            program each call.

    Returns:
        ``{"samples": (chains, draws, n), "rhat": (n,), "ess": (n,), "divergences": int,
        "acceptance": float, "step_size": float, "inverse_mass_matrix": (n, n),
        "integration_steps": float (the mean leapfrog steps, i.e. gradients, per draw),
        "settings": PosteriorSettings}``.
    """
    _require_blackjax()
    settings = settings or PosteriorSettings()
    x0 = jnp.asarray(position, jnp.float64)
    n = x0.shape[0]
    cov = _covariance_or_none(covariance)
    start_cov = jnp.asarray(np.eye(n) if cov is None else cov)
    if data is None:
        logdensity, data = _closed(logdensity), ()
    key = jax.random.PRNGKey(settings.seed)
    samples, divergent, acceptance, steps, parameters = _sample(
        logdensity, data, x0, start_cov, key, settings
    )
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
        "integration_steps": float(np.mean(steps)),
        "settings": settings,
    }


@dataclass(frozen=True)
class _closed:
    """``logdensity(x)`` as ``logdensity(x, data)`` (data unused)."""

    fn: Callable

    def __call__(self, x, data):
        return self.fn(x)


def _step_size_warmup(fn, x0, inverse_mass_matrix, key, settings: PosteriorSettings):
    """``warmup`` NUTS steps from ``x0`` with a fixed mass matrix, the step size tuned by dual
    averaging (Hoffman & Gelman 2014) to the target acceptance; returns the last state and
    blackjax's ``{"step_size", "inverse_mass_matrix"}``."""
    from blackjax.adaptation.step_size import dual_averaging_adaptation
    from blackjax.mcmc import hmc
    from blackjax.mcmc import nuts as nuts_module

    kernel = nuts_module.build_kernel()
    state = hmc.init(x0, fn)
    # The unit-Gaussian scale: with the Laplace mass matrix a step of ~0.5 is about right.
    step0 = 0.5
    da_init, da_update, da_final = dual_averaging_adaptation(settings.target_acceptance)

    def step(carry, k):
        s, da = carry
        s, info = kernel(
            k, s, fn, jnp.exp(da.log_step_size), inverse_mass_matrix, settings.max_tree_depth
        )
        return (s, da_update(da, info.acceptance_rate)), None

    (state, da), _ = jax.lax.scan(
        step, (state, da_init(step0)), jax.random.split(key, settings.warmup)
    )
    return state, {"step_size": da_final(da), "inverse_mass_matrix": inverse_mass_matrix}


@eqx.filter_jit
def _sample(logdensity, data, x0, start_cov, key, settings: PosteriorSettings):
    """The warm-up (``settings.adapt_mass_matrix``: the step size alone on ``start_cov``, or
    blackjax's window adaptation from it), then ``chains`` chains vmapped from over-dispersed
    starts: one program."""
    import blackjax

    def fn(x):
        return logdensity(x, data)

    k_adapt, k_start, k_run = jax.random.split(key, 3)
    if settings.adapt_mass_matrix == "window":
        adaptation = blackjax.window_adaptation(
            blackjax.nuts,
            fn,
            is_mass_matrix_diagonal=False,
            initial_inverse_mass_matrix=start_cov,
            target_acceptance_rate=settings.target_acceptance,
            initial_step_size=0.5,
            max_num_doublings=settings.max_tree_depth,
        )
        (state, parameters), _ = adaptation.run(k_adapt, x0, num_steps=settings.warmup)
    else:
        state, parameters = _step_size_warmup(fn, x0, start_cov, k_adapt, settings)
    kernel = blackjax.nuts(fn, **{**parameters, "max_num_doublings": settings.max_tree_depth})
    chol = jnp.linalg.cholesky(start_cov)
    noise = jax.random.normal(k_start, (settings.chains, x0.shape[0]))
    starts = state.position[None] + settings.start_scale * noise @ chol.T
    states = jax.vmap(kernel.init)(starts)
    keys = jax.random.split(k_run, settings.chains)

    def one_chain(state, chain_key):
        def step(s, k):
            s, info = kernel.step(k, s)
            return s, (
                s.position,
                info.is_divergent,
                info.acceptance_rate,
                info.num_integration_steps,
            )

        _, out = jax.lax.scan(step, state, jax.random.split(chain_key, settings.draws))
        return out

    samples, divergent, acceptance, steps = jax.vmap(one_chain)(states, keys)
    return samples, divergent, acceptance, steps, parameters
