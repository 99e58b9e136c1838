"""The optical-depth line form through cloning, the manifold and the generator."""

import jax.numpy as jnp
import numpy as np
from scipy.special import voigt_profile

from jblase.clone import CloneSettings, clone_lines
from jblase.detect import detect_lines
from jblase.forward import synthesize_lines
from jblase.generator import Generator
from jblase.grids.base import GridPoint
from jblase.manifold import build_manifold, write_clone, write_clones_manifest

WL = 8500.0 * (1 + 1 / 500_000) ** np.arange(9000)


def _optical_depth_spectrum(seed, scale=1.0):
    """exp(-sum tau_j V_j): 30 separate lines, a few past the weak-line limit (core optical
    depth above 1)."""
    rng = np.random.default_rng(seed)
    centers = np.linspace(WL[0] + 63, WL[-1] - 63, 30) + rng.uniform(-0.3, 0.3, 30)
    strength = scale * rng.uniform(0.002, 0.02, 30)
    strength[::6] *= 12.0
    tau = sum(s * voigt_profile(WL - c, 0.03, 0.01) for c, s in zip(centers, strength, strict=True))
    assert tau.max() > 1.0
    return np.exp(-tau)


def test_optical_depth_clones_fit_optical_depth_lines_and_the_generator_keeps_the_form(tmp_path):
    flux = _optical_depth_spectrum(1)
    lines = detect_lines(WL, flux)
    base = dict(epochs=150, wing_cut=1500, residual_rounds=0, compute_dtype="float64")
    tau = clone_lines(WL, flux, lines, CloneSettings(line_form="optical_depth", **base))
    absorption = clone_lines(WL, flux, lines, CloneSettings(**base))
    # The same lines, the same epochs: the form that matches the data fits it better.
    assert tau.rms < 0.6 * absorption.rms, (tau.rms, absorption.rms)
    assert tau.settings.as_dict()["line_form"] == "optical_depth"

    # Two grid points cloned with the form -> the generator renders with it.
    out = tmp_path / "clones"
    write_clones_manifest(out, tau.settings, WL)
    other = clone_lines(
        WL, _optical_depth_spectrum(1, 1.2), lines, CloneSettings(line_form="optical_depth", **base)
    )
    write_clone(out, GridPoint(5000.0, 4.5, 0.0), tau)
    write_clone(out, GridPoint(5500.0, 4.5, 0.0), other)
    gen = Generator.from_manifold(build_manifold(out, progress=False))
    assert gen.line_form == "optical_depth"
    expected = synthesize_lines(
        WL,
        tau.lines,
        wing_cut=1500,
        line_form="optical_depth",
        flux_tolerance=gen.flux_tolerance,
    )
    got = gen(jnp.array([5000.0, 4.5, 0.0]))
    # (the manifold keeps float32 values: a float32 rounding of the parameters)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    absorption_flux = synthesize_lines(WL, tau.lines, wing_cut=1500)
    assert np.abs(np.asarray(absorption_flux) - expected).max() > 1e-2  # the form matters
