"""Hot paths compile once per shape: repeated calls with new values trigger no compilation."""

import contextlib

import jax.monitoring
import numpy as np

from jblase.clone import clone_batch
from jblase.generator import Generator

from .test_clone import _fake_spectra
from .test_generator import AXES, _random_manifold


@contextlib.contextmanager
def count_compilations():
    events = []

    def listener(name, duration, **kwargs):
        if name == "/jax/core/compile/backend_compile_duration":
            events.append(name)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def test_generator_compiles_once_for_any_parameters():
    identity, values, wl = _random_manifold(n_lines=120, n_pix=6000, seed=2)
    gen = Generator.from_arrays(identity, values, AXES, wl, wing_cut=1500)
    rng = np.random.default_rng(0)
    thetas = np.c_[rng.uniform(4000, 6000, 6), rng.uniform(4.0, 4.5, 6), rng.uniform(-0.5, 0, 6)]
    gen(thetas[0]).block_until_ready()
    gen.batch(thetas[:4], batch_size=2).block_until_ready()
    with count_compilations() as events:
        for theta in thetas[1:]:
            gen(theta).block_until_ready()
        gen.batch(thetas[2:], batch_size=2).block_until_ready()
    assert events == []


def test_batched_cloning_reuses_compiled_steps_across_batches():
    wl, fluxes = _fake_spectra(4, seed=3)
    # One pass: a residual round adds however many lines the residual holds (other shapes).
    kwargs = dict(epochs=4, wing_cut=1000, batch_size=2, progress=False, residual_rounds=0)
    clone_batch(wl, fluxes, **kwargs)
    with count_compilations() as events:
        clone_batch(wl, fluxes * 0.999 + 0.001, **kwargs)  # new values, same line counts
    assert events == []
