"""Compiled programs: JAX's persistent compilation cache, and keeping long jobs below Linux's
per-process limit on memory mappings.

:func:`enable_compile_cache` keeps compiled programs between processes (the ``jblase`` command
and ``jblase fit-many``'s workers; :mod:`jblase.cli` says where and how to turn it off).

Every program XLA compiles for the CPU holds memory mappings of its own, and JAX keeps every
program it compiled. A long job that compiles many shapes (cloning a large grid: one program
per batch, padded line count and tile bound) can reach ``vm.max_map_count`` (65,530 by
default), after which the next compilation fails inside LLVM ("Cannot allocate memory").
:func:`release_if_crowded`, called between batches, drops the compiled programs once the
process holds more than a share of the limit; they are compiled again when next needed.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

__all__ = ["compile_cache_dir", "enable_compile_cache", "map_count", "release_if_crowded"]

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


def compile_cache_dir() -> Path | None:
    """Where the command keeps compiled programs, or None when the cache is off or user-set."""
    if os.environ.get("JBLASE_NO_COMPILE_CACHE") or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return None
    if os.environ.get("JBLASE_CACHE_DIR"):
        return Path(os.environ["JBLASE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jblase" / "jax"


def enable_compile_cache(min_compile_seconds: float = 0.5) -> Path | None:
    """Turn on JAX's persistent compilation cache for this process (in
    :func:`compile_cache_dir`; :mod:`jblase.cli` documents it).

    Programs that took at least ``min_compile_seconds`` to compile are stored. Returns the
    directory, or None when the cache is off or its directory cannot be created (the command
    then just compiles).
    """
    path = compile_cache_dir()
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
    return path
