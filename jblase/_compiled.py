"""Keeping long jobs below Linux's per-process limit on memory mappings.

Every program XLA compiles for the CPU holds memory mappings of its own, and JAX keeps every
program it compiled. A long job that compiles many shapes (cloning a large grid: one program
per batch, padded line count and tile bound) can reach ``vm.max_map_count`` (65,530 by
default), after which the next compilation fails inside LLVM ("Cannot allocate memory").
:func:`release_if_crowded`, called between batches, drops the compiled programs once the
process holds more than a share of the limit; they are compiled again when next needed.
"""

from __future__ import annotations

from pathlib import Path

import jax

__all__ = ["map_count", "release_if_crowded"]

_MAPS = Path("/proc/self/maps")
_LIMIT = Path("/proc/sys/vm/max_map_count")


def map_count() -> tuple[int, int] | None:
    """(memory mappings of this process, the kernel's limit), or None where unknown."""
    try:
        with _MAPS.open("rb") as fh:
            count = sum(1 for _ in fh)
        return count, int(_LIMIT.read_text())
    except (OSError, ValueError):
        return None


def release_if_crowded(share: float = 0.5) -> bool:
    """``jax.clear_caches()`` if this process holds more than ``share`` of its mapping limit;
    True if it did."""
    counts = map_count()
    if counts is None or counts[0] <= share * counts[1]:
        return False
    jax.clear_caches()
    return True
