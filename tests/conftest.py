"""Shared test fixtures: x64 on (importing jblase does it) and the real reference data."""

import os
from pathlib import Path

import jax
import numpy as np
import pytest

import jblase  # noqa: F401  (turns on float64 in JAX)

# The suite's time is mostly XLA compiling many small programs, each run a few times: compile
# them without LLVM's optimisation passes and with XLA's classic CPU emitters (the same
# operations, results equal to rounding, compiled in much less time; slower to run, which
# tests of small cases barely notice). JAX reads XLA_FLAGS when it starts its backend, at the
# first computation (after these imports); subprocesses (the CLI tests) inherit it.
# Benchmarks and users run JAX's defaults; JBLASE_TEST_DEFAULT_XLA=1 keeps them here too.
TEST_XLA_FLAGS = ("--xla_cpu_use_fusion_emitters=false", "--xla_backend_optimization_level=0")
if os.environ.get("JBLASE_TEST_DEFAULT_XLA", "") in ("", "0"):
    _flags = os.environ.get("XLA_FLAGS", "").split()
    os.environ["XLA_FLAGS"] = " ".join(_flags + [f for f in TEST_XLA_FLAGS if f not in _flags])

# Commands run in-process by the tests must not write a compilation cache into the home
# directory (tests/test_cli.py checks the cache in subprocesses of its own).
os.environ["JBLASE_NO_COMPILE_CACHE"] = "1"


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module.

    Every executable XLA's CPU backend keeps holds its own memory mappings; the whole suite's
    programs together exceed Linux's default limit of 65,530 mappings per process
    (``vm.max_map_count``), and the next compilation then crashes inside XLA.
    """
    yield
    jax.clear_caches()


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PHOENIX_NPZ = SHARED_DATA / "phoenix_T4100_g2.50_Z0.0_normalized.npz"
BLASE_CLONE = SHARED_DATA / "blase_clone_T4700_g4.50_Z0.0_prom0.01_HPF.pt"
HPF_FITS = SHARED_DATA / "hpf_WASP-69_order_8656-8768A.fits"


#: Set to 1 (CI does, in .ci/run) to make a missing reference file fail the tests that need it.
REQUIRE_DATA_ENV = "JBLASE_REQUIRE_DATA"


def require(path: Path) -> Path:
    """``path`` if it is a file; else skip the test (a user who cloned the project alone), or
    fail it when ``$JBLASE_REQUIRE_DATA`` is set (anything but empty or ``0``), naming the path."""
    if path.is_file():
        return path
    where = "../shared/data next to the repository"
    if os.environ.get(REQUIRE_DATA_ENV, "") not in ("", "0"):
        pytest.fail(
            f"reference data {path} is absent ({where}) and {REQUIRE_DATA_ENV}="
            f"{os.environ[REQUIRE_DATA_ENV]} requires it",
            pytrace=False,
        )
    pytest.skip(f"reference data {path} is absent ({where}; {REQUIRE_DATA_ENV}=1 fails instead)")


def rms_to_the_simulator(clone_dirs: dict, model, teffs, logg: float, feh: float) -> dict:
    """``{name: [RMS, one per Teff]}``: the generator built from each clones directory against
    the simulator's normalised spectrum at (teff, logg, feh), over the active region."""
    from jblase.detect import active_region
    from jblase.generator import Generator
    from jblase.manifold import build_manifold
    from jblase.preprocess import normalize

    gens = {
        name: Generator.from_manifold(build_manifold(path, progress=False))
        for name, path in clone_dirs.items()
    }
    wl = np.asarray(next(iter(gens.values())).wavelength)
    act = active_region(wl)
    out = {name: [] for name in gens}
    for teff in teffs:
        truth = normalize(wl, model.flux(teff, logg, feh, wavelength=wl), teff)
        for name, gen in gens.items():
            pred = np.asarray(gen(np.array([teff, logg, feh])))
            out[name].append(float(np.sqrt(np.mean((pred - truth)[act] ** 2))))
    return out


@pytest.fixture(scope="session")
def phoenix_spectrum():
    """The real preprocessed PHOENIX spectrum (Teff 4100, log g 2.5, [Fe/H] 0): (wl, flux)."""
    data = np.load(require(PHOENIX_NPZ))
    return data["wavelength"], data["flux"]
