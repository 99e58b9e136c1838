"""A stand-in line manifold for speed benchmarks, built WITHOUT cloning.

THIS IS NOT A CLONE. Cloning a 20,000-line grid is a GPU job; a reconstruction benchmark only
needs a :class:`jblase.manifold.Manifold` with the shapes and sparsity of a cloned one. So the
lines of :class:`jblase.grids.synthetic.SyntheticGridModel` are mapped straight to pseudo-Voigt
parameters at every grid point:

* line depth at the centre, ``d = D_MAX (1 - exp(-S V(0; sigma, gamma)))`` with the simulator's
  integrated strength ``S`` (A) and exact Voigt peak ``V(0)``, so strong lines saturate;
* amplitude ``a = d / PV(0)``, ``PV`` the manifold's pseudo-Voigt with the simulator's
  ``(sigma, gamma)`` (so the model line has depth ``d``; for a pure Gaussian this is
  ``a = d sqrt(2 pi) sigma``);
* a line is *present* at a point where ``d >= min_depth`` (0.005, the paper's detection
  prominence); elsewhere its ln a is -1000 (the paper's fill), so lines appear and vanish
  across the grid like a real one (about 10-25 % of the lines at each point, the paper had 7 %);
* ln sigma, ln gamma: the simulator's widths (smooth over the grid, so finite everywhere);
* identity = the true centre rounded to 0.01 A; centre offset = true centre - identity plus
  a small per-point scatter (1 mA), as cloned centres wander a little.

Lines never present anywhere are dropped (a manifold only holds lines seen somewhere), as are
duplicate identities; more lines are drawn until ``n_lines`` remain, then ``n_lines`` of them
are kept at random. Use it for timing and memory, never for accuracy claims.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import voigt_profile

from jblase.grids.synthetic import D_MAX, SyntheticGridModel
from jblase.manifold import ABSENT_LN_AMPLITUDE, Manifold
from jblase.profiles import get_components

__all__ = ["DEFAULT_AXES", "describe", "make_manifold"]

#: Teff 4000-7000 K step 250 (13) x log g 3.5-5 step 0.5 (4) x [Fe/H] -0.5, 0 (2): 104 points.
DEFAULT_AXES = (
    tuple(np.arange(4000.0, 7001.0, 250.0)),
    (3.5, 4.0, 4.5, 5.0),
    (-0.5, 0.0),
)
_OFFSET_SCATTER_AA = 1e-3


def _pv_peak(sigma: np.ndarray, gamma: np.ndarray, profile: str) -> np.ndarray:
    """Peak height PV(0) (1/A) of the unit-area pseudo-Voigt ``profile``."""
    eta, hwhm, gsig = (np.asarray(c) for c in get_components(profile)(sigma, gamma))
    return eta / (np.pi * hwhm) + (1.0 - eta) / (np.sqrt(2.0 * np.pi) * gsig)


def _line_table(model: SyntheticGridModel, axes, profile: str, rng) -> np.ndarray:
    """(n_model_lines, nt, ng, nz, 5): (offset, ln a, ln sigma, ln gamma, depth) per point."""
    center = model.lines.center
    shape = tuple(len(a) for a in axes)
    out = np.empty((center.size, *shape, 5), dtype=np.float32)
    for i, t in enumerate(axes[0]):
        for j, g in enumerate(axes[1]):
            for k, z in enumerate(axes[2]):
                strength = model.line_strengths(t, g, z)
                sigma, gamma = model.line_widths(t, g, z)
                depth = D_MAX * -np.expm1(-strength * voigt_profile(0.0, sigma, gamma))
                amplitude = depth / _pv_peak(sigma, gamma, profile)
                out[:, i, j, k] = np.stack(
                    [
                        _OFFSET_SCATTER_AA * rng.standard_normal(center.size),
                        np.log(np.maximum(amplitude, 1e-300)),
                        np.log(sigma),
                        np.log(gamma),
                        depth,
                    ],
                    axis=-1,
                )
    return out


def make_manifold(
    n_lines: int = 20_000,
    wl_range: tuple[float, float] = (8300.0, 10200.0),
    resolution: float = 500_000.0,
    axes=DEFAULT_AXES,
    seed: int = 0,
    *,
    wing_cut: int = 6000,
    profile: str = "pseudo_voigt",
    min_depth: float = 0.005,
) -> Manifold:
    """A stand-in :class:`~jblase.manifold.Manifold` with ``n_lines`` lines, for timing only.

    Args:
        n_lines: number of line identities in the manifold (each present at >= 1 grid point).
        wl_range: (start, stop) vacuum wavelengths in A; pixels at constant resolving power.
        resolution: R = lambda / d lambda (500,000 like PHOENIX HiRes: about 50,000 pixels per
            1,000 A near 9,000 A).
        axes: (teff [K], logg [dex], feh [dex]) grid axes; default :data:`DEFAULT_AXES`.
        seed: seed of the simulator's line list and of the choices made here.
        wing_cut, profile: stored in ``settings`` (the generator's defaults).
        min_depth: central depth below which a line counts as absent at a grid point.

    Returns:
        A Manifold (params float32 (n_lines, nt, ng, nz, 4)); ``settings`` holds ``wing_cut``,
        ``profile`` and ``"stand_in": true`` with this module named as its source.
    """
    axes = tuple(np.asarray(a, dtype=np.float64) for a in axes)
    rng = np.random.default_rng(seed)
    n_draw = max(int(n_lines), 1)
    for _ in range(8):
        model = SyntheticGridModel(
            wl_range=wl_range, resolution=resolution, n_lines=n_draw, seed=seed
        )
        table = _line_table(model, axes, profile, np.random.default_rng(seed + 1))
        present = table[..., 4] >= min_depth
        keys = np.rint(model.lines.center * 100.0).astype(np.int64)
        seen = present.reshape(keys.size, -1).any(axis=1)
        # Duplicated identities (two lines within 0.005 A): keep the first, like build_manifold
        # keeps one line per identity.
        unique = np.zeros(keys.size, dtype=bool)
        unique[np.unique(keys, return_index=True)[1]] = True
        eligible = np.flatnonzero(seen & unique)
        if eligible.size >= n_lines:
            break
        n_draw = math.ceil(n_draw * 1.1 * n_lines / max(eligible.size, 1))
    else:
        raise ValueError(
            f"could not find {n_lines} lines present somewhere on the grid in {wl_range} A "
            f"(got {eligible.size} from {n_draw} drawn); widen the range or lower min_depth"
        )
    chosen = np.sort(rng.choice(eligible, size=n_lines, replace=False))
    identity = keys[chosen] / 100.0
    table, present = table[chosen], present[chosen]
    params = table[..., :4].astype(np.float64)
    rounding = model.lines.center[chosen] - identity
    params[..., 0] += rounding[:, None, None, None]
    params[..., 1] = np.where(present, params[..., 1], ABSENT_LN_AMPLITUDE)
    return Manifold(
        params=params.astype(np.float32),
        present=present,
        identity_center=identity,
        axes=axes,
        wavelength=model.wavelength(),
        rms=np.zeros(tuple(a.size for a in axes), dtype=np.float32),
        settings={
            "wing_cut": int(wing_cut),
            "profile": profile,
            "stand_in": True,
            "source": "benchmarks/_realistic_manifold.py (timing stand-in, not a clone)",
            "model": model.settings(),
            "min_depth": min_depth,
        },
    )


def describe(manifold: Manifold, wl_range) -> dict:
    """JSON-ready summary of a stand-in manifold for the benchmarks' output."""
    present = np.asarray(manifold.present).reshape(manifold.n_lines, -1).sum(axis=0)
    return {
        "stand_in": True,
        "note": "timing stand-in from benchmarks/_realistic_manifold.py, not a clone",
        "n_lines": manifold.n_lines,
        "n_pix": int(manifold.wavelength.shape[0]),
        "wl_range": list(wl_range),
        "grid_shape": list(manifold.shape),
        "present_per_point": {
            "mean": float(present.mean()),
            "min": int(present.min()),
            "max": int(present.max()),
        },
    }
