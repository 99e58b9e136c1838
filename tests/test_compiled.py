"""The mapping-limit guard of long jobs (jblase._compiled)."""

import jax
import jax.numpy as jnp

from jblase import _compiled


def test_map_count_reads_this_process():
    counts = _compiled.map_count()
    assert counts is not None  # Linux: /proc is there
    count, limit = counts
    assert 0 < count < limit


def test_release_clears_compiled_programs_only_when_crowded(monkeypatch):
    f = jax.jit(lambda x: x + 1)
    f(jnp.ones(3))
    assert f._cache_size() == 1
    assert not _compiled.release_if_crowded()  # far below half the limit
    assert f._cache_size() == 1
    monkeypatch.setattr(_compiled, "map_count", lambda: (900, 1000))
    assert _compiled.release_if_crowded()
    assert f._cache_size() == 0
