"""The paper's NumPy/SciPy baseline (benchmarks/baseline_paper.py) reproduces jblase's generator.

The baseline is what the reconstruction benchmark measures jblase against, so the two must do
the same work: interpolation in ln a (``amplitude_interpolation="log"``), the same full
``wing_cut`` windows (no adaptive windows), clipping and ln a cutoff. Compared on a small
random manifold with absent lines, at grid points and off them, in serial and batch mode.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

from jblase import Manifold
from jblase.manifold import ABSENT_LN_AMPLITUDE
from jblase.profiles import get_components

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from baseline_paper import (  # noqa: E402
    PaperBaseline,
    equivalent_generator,
    pseudo_voigt_components,
)

AXES = (np.array([5000.0, 5500.0, 6500.0]), np.array([4.0, 4.5]), np.array([-0.5, 0.0]))
TOLERANCE = 1e-6


def _manifold(profile: str, wing_cut: int, seed: int = 0) -> Manifold:
    rng = np.random.default_rng(seed)
    wl = 8500.0 * np.exp(np.arange(2500) * np.log1p(1 / 500_000))
    n_lines = 48
    # Identities across the range and a little beyond both ends (their windows are cut).
    identity = np.sort(rng.choice(np.arange(8499.8, wl[-1] + 0.2, 0.01), n_lines, replace=False))
    identity = np.round(identity, 2)
    shape = (n_lines, *(a.size for a in AXES))
    params = np.empty((*shape, 4))
    params[..., 0] = rng.normal(0.0, 0.003, shape)
    params[..., 1] = rng.uniform(-6.0, -2.5, shape)
    params[..., 2] = np.log(rng.uniform(0.01, 0.05, shape))
    params[..., 3] = np.log(rng.uniform(0.002, 0.03, shape))
    params[:3, ..., 1] = -1.0  # saturating lines: a V is clipped at 1 - 1e-9
    present = rng.random(shape) > 0.25
    present[5] = False
    present[5, 1, 0, 1] = True  # a line seen at one grid point only
    params[..., 1] = np.where(present, params[..., 1], ABSENT_LN_AMPLITUDE)
    return Manifold(
        params=params.astype(np.float32),
        present=present,
        identity_center=identity,
        axes=AXES,
        wavelength=wl,
        rms=np.zeros(shape[1:], np.float32),
        settings={"wing_cut": wing_cut, "profile": profile},
    )


def _points(rng, n_off: int = 6) -> np.ndarray:
    grid = np.array([[t, g, z] for t in AXES[0] for g in AXES[1] for z in AXES[2]])
    lo = np.array([a[0] for a in AXES])
    hi = np.array([a[-1] for a in AXES])
    off = lo + (hi - lo) * rng.random((n_off, 3))
    return np.concatenate([grid, off])


@pytest.mark.parametrize(("profile", "wing_cut"), [("pseudo_voigt", 400), ("blase", 301)])
def test_baseline_matches_generator_log_mode(profile, wing_cut):
    manifold = _manifold(profile, wing_cut)
    gen = equivalent_generator(manifold)
    assert gen.amplitude_interpolation == "log"
    assert getattr(gen, "flux_tolerance", None) is None  # full wing_cut windows, as the paper
    base = PaperBaseline.from_manifold(manifold)
    assert base.n_lines == manifold.n_lines == len(base.interpolators)
    assert (base.wing_cut, base.profile) == (wing_cut, profile)

    points = _points(np.random.default_rng(1))
    ours = np.asarray(gen.batch(points, batch_size=5))
    serial = np.stack([base.spectrum(p) for p in points])
    batch = base.spectra(points)

    n_grid = AXES[0].size * AXES[1].size * AXES[2].size
    diff_grid = np.abs(serial[:n_grid] - ours[:n_grid]).max()
    diff_off = np.abs(serial[n_grid:] - ours[n_grid:]).max()
    diff_modes = np.abs(serial - batch).max()
    print(
        f"\n{profile}, wing_cut {wing_cut}: max |baseline - jblase| at grid points "
        f"{diff_grid:.3g}, off grid {diff_off:.3g}; serial vs batch {diff_modes:.3g}"
    )
    assert diff_grid <= TOLERANCE
    assert diff_off <= TOLERANCE
    assert diff_modes <= 1e-12
    # Not a vacuous comparison: deep (clipped) lines and a jitted single call agree too.
    assert serial.min() < 1e-6
    np.testing.assert_allclose(np.asarray(gen(points[-1])), serial[-1], rtol=0, atol=TOLERANCE)


def test_baseline_drops_absent_lines_and_checks_bounds():
    manifold = _manifold("pseudo_voigt", 400)
    base = PaperBaseline.from_manifold(manifold)
    values = base.evaluate_serial([5500.0, 4.5, -0.5])
    assert values.shape == (manifold.n_lines, 4)
    expected = np.asarray(manifold.params)[:, 1, 1, 0]
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-12)
    # Line 5 is absent there (ln a = -1000): below the cutoff it is dropped, whatever its ln a.
    assert values[5, 1] == ABSENT_LN_AMPLITUDE
    nudged = values.copy()
    nudged[5, 1] = -100.5
    np.testing.assert_array_equal(base.synthesize(nudged), base.synthesize(values))
    batch = base.evaluate_batch([[5500.0, 4.5, -0.5], [6000.0, 4.2, -0.1]])
    assert batch.shape == (2, manifold.n_lines, 4)
    np.testing.assert_array_equal(batch[0], values)
    with pytest.raises(ValueError):
        base.spectrum([7000.0, 4.5, 0.0])


@pytest.mark.parametrize("profile", ["pseudo_voigt", "blase"])
def test_numpy_components_match_jblase(profile):
    sigma = np.geomspace(1e-3, 1.0, 7)[:, None]
    gamma = np.geomspace(1e-3, 1.0, 5)[None, :]
    ours = pseudo_voigt_components(sigma, gamma, profile)
    theirs = get_components(profile)(sigma, gamma)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-14)
