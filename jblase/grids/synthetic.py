"""The embedded demo grid: a toy stellar-spectrum simulator that writes a PHOENIX-layout mirror.

First step of the pipeline (grid files -> preprocess -> ...), standing in for PHOENIX where it
cannot be downloaded (DESIGN.md section 2). A seeded line list (Fe I/II, Si I, Ti I, Ca I/II,
Mg I, Cr I, Ni I, C I, N I, a CN-like molecule, hydrogen Paschen lines and the Ca II triplet)
becomes a spectrum at any continuous (Teff, log g, [Fe/H]) through a toy LTE recipe:

* integrated line strength S (A) = const * abundance (* 10**[Fe/H] for metals) * population
  fraction (Saha at Teff with an electron pressure growing with Teff and g; molecular
  association ~ 10**(theta D0)) * gf * (lambda / 8600 A)**2 * 10**(-theta chi_ex)
  / continuum opacity (H- plus hydrogen bound-free), theta = 5040 / T_ex, T_ex = 0.85 Teff;
* optical depth tau(lambda) = S V(lambda - lambda0; sigma, gamma), V the unit-area Voigt profile,
  sigma = (lambda0 / c) sqrt(k T_ex / m + xi**2 / 2),
  gamma = gamma_ref 10**(0.3 (log g - 4.5)) (Teff / 5777 K)**0.3;
* line formation, selectable (``line_formation``): ``"per_line"`` (default) forms each line
  on its own, saturating depth r_j = D_MAX (1 - exp(-tau_j)), lines-only spectrum
  prod_j (1 - r_j); ``"summed_opacity"`` and ``"milne_eddington"`` add the opacities of all
  lines first, as radiative transfer does, then form the flux as a reversing layer,
  1 - D_MAX (1 - exp(-tau)), or a Milne-Eddington atmosphere, 1 - D_MAX tau / (1 + tau), of
  total line optical depth tau = sum_j tau_j (see :class:`SyntheticGridModel`);
* raw flux = pi B_lambda(Teff) * a smooth Teff-dependent shape * lines, in erg/s/cm^2/cm.

So the number of detectable lines falls steeply with Teff, CN and low-excitation neutral lines
vanish in hot stars while Fe II, C I, N I and Paschen lines appear, and strong lines saturate at
depth D_MAX with damping wings. :func:`write_grid` writes
``ROOT/WAVE_PHOENIX-ACES-AGSS-COND-2011.fits``, ``ROOT/<phoenix_relpath(...)>`` per point and
``ROOT/jblase_synthetic.json``, from which
:func:`load_model` rebuilds the exact simulator, so tests can compare a generator with the *true*
spectrum anywhere, not only at grid points.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from astropy.io import fits
from scipy.special import voigt_profile
from tqdm.auto import tqdm

from jblase._checks import check_wavelength
from jblase.grids.base import GridPoint
from jblase.grids.phoenix import LIBRARY, WAVELENGTH_FILENAME, phoenix_relpath

__all__ = [
    "D_MAX",
    "DEMO_FEHS",
    "DEMO_LOGGS",
    "DEMO_TEFFS",
    "FEH_RANGE",
    "LINE_FORMATIONS",
    "LOGG_RANGE",
    "QUICK_FEHS",
    "QUICK_LOGGS",
    "QUICK_TEFFS",
    "SETTINGS_FILENAME",
    "TEFF_RANGE",
    "SyntheticGridModel",
    "continuum_shape",
    "load_model",
    "planck_flux",
    "write_grid",
]

#: Default demo grid: non-uniform Teff (500 K steps, then 1000 K above 7000 K, like PHOENIX's
#: change of step at 7000 K), 8 x 3 x 2 = 48 points.
DEMO_TEFFS: tuple[float, ...] = (4000.0, 4500.0, 5000.0, 5500.0, 6000.0, 6500.0, 7000.0, 8000.0)
DEMO_LOGGS: tuple[float, ...] = (3.0, 4.0, 5.0)
DEMO_FEHS: tuple[float, ...] = (-0.5, 0.0)
#: Quick grid for tests and smoke runs: 3 x 2 x 2 = 12 points, Teff steps 500 then 1000 K.
QUICK_TEFFS: tuple[float, ...] = (5500.0, 6000.0, 7000.0)
QUICK_LOGGS: tuple[float, ...] = (4.0, 5.0)
QUICK_FEHS: tuple[float, ...] = (-0.5, 0.0)

#: Inclusive parameter ranges the simulator accepts: Teff (K), log g (cgs dex), [Fe/H] (dex).
TEFF_RANGE = (3000.0, 12000.0)
LOGG_RANGE = (1.0, 6.0)
FEH_RANGE = (-2.0, 1.0)

SETTINGS_FILENAME = "jblase_synthetic.json"
_FORMAT = "jblase-synthetic-grid"
#: Bumped whenever the physics changes, so a grid written by another version is not misread.
#: (The ``line_formation`` setting came later without a bump: settings without it describe the
#: default law, whose spectra did not change.)
_VERSION = 1
#: Line-formation laws of :class:`SyntheticGridModel`; the first is the default.
LINE_FORMATIONS: tuple[str, ...] = ("per_line", "summed_opacity", "milne_eddington")
_SETTING_KEYS = ("wl_range", "resolution", "n_lines", "seed", "line_formation", "version")

# Physical constants (cgs unless stated).
_K_B = 1.380649e-16
_AMU = 1.66053906660e-24
_C_CM = 2.99792458e10
_C_KMS = 2.99792458e5
_H_PLANCK = 6.62607015e-27
_RYDBERG_H = 109677.5834  # cm^-1, hydrogen

# Model constants.
D_MAX = 0.9  # depth of a fully saturated line
_T_EX_RATIO = 0.85  # excitation (Boltzmann, thermal width) temperature / Teff
_T_ION_RATIO = 1.0  # ionisation (Saha) temperature / Teff
_TEFF_SUN, _LOGG_SUN = 5777.0, 4.44
_LOG_PE_SUN = 1.3  # log10 electron pressure (dyn/cm^2) at the solar line-forming layer
_PE_TEFF_POWER = 9.0  # Pe ~ Teff**9: electrons from metals, then hydrogen, as Teff rises
_PE_LOGG_SLOPE = 0.5  # d log Pe / d log g
_H_MINUS_EV = 0.754  # H- binding energy (bound-free continuum opacity)
_H_N4_EV = 12.75  # excitation of hydrogen n = 4, whose bound-free opacity covers 8204-14584 A
_LOG_KAPPA_H_SUN = -3.5  # log10 hydrogen / H- continuum opacity in the Sun
_H_LOGGF_BOOST = 1.5  # dex added to hydrogen gf: Paschen lines form deeper than metal lines
_KAPPA_PE_POWER = 0.5  # continuum opacity ~ Pe**0.5 (H- ~ Pe, softened; see line_strengths)
_LOG_STRENGTH_NORM = 9.2  # log10 normalisation of S (A): a solar-like Ca II triplet
_LOGGF_SCALE = 1.0  # dex, e-folding of the random log gf distribution below its top
_LAMBDA_REF = 8600.0  # A
_DEPTH_CUT = 1e-7  # a line is evaluated where its depth may exceed this
_MARGIN_AA = 10.0  # random lines are drawn this far beyond each end of the window
_CHUNK = 1 << 20  # pixels evaluated per vectorised block (bounds memory)


class _Species(NamedTuple):
    name: str
    mass_amu: float
    chi_ion: tuple[float, float]  # first and second ionisation energies, eV (atoms)
    stage: int  # 0 = molecule, 1 = neutral, 2 = singly ionised
    log_eps: float  # solar abundance (molecules: of the rarer atom), log10 N/N_H + 12
    feh_power: float  # abundance scales as 10**(feh_power * [Fe/H])
    u_ratio: float  # partition-function ratio U_II / U_I in the Saha equation
    fraction: float  # share of the random lines
    chi_ex: tuple[float, float]  # excitation-potential range of its random lines, eV
    loggf_top: float  # random log gf = top - Exponential(_LOGGF_SCALE), so weak lines dominate
    log_gamma: float  # mean log10 Lorentzian HWHM (A) at the solar reference
    d0: float = 0.0  # molecules: dissociation energy, eV
    log_k: float = 0.0  # molecules: log10 fraction = theta * d0 + log_k (capped at 0)


# The log gf tops are calibrated (they absorb each species' missing physics) so that every
# species contributes detectable lines somewhere on 4000-8000 K and the counts fall steeply.
_SPECIES: tuple[_Species, ...] = (
    _Species("Fe I", 55.845, (7.902, 16.199), 1, 7.50, 1, 1.0, 0.32, (0.9, 5.5), -4.7, -1.8),
    _Species("Fe II", 55.845, (7.902, 16.199), 2, 7.50, 1, 1.0, 0.05, (2.8, 6.2), -4.7, -2.1),
    _Species("Si I", 28.086, (8.152, 16.346), 1, 7.51, 1, 1.0, 0.08, (4.9, 6.2), -1.5, -1.7),
    _Species("Ti I", 47.867, (6.828, 13.576), 1, 4.95, 1, 1.0, 0.06, (0.0, 2.5), -3.0, -1.9),
    _Species("Ca I", 40.078, (6.113, 11.872), 1, 6.34, 1, 2.0, 0.03, (1.9, 5.0), -1.3, -1.7),
    _Species("Ca II", 40.078, (6.113, 11.872), 2, 6.34, 1, 2.0, 0.01, (3.0, 7.5), -5.0, -2.0),
    _Species("Mg I", 24.305, (7.646, 15.035), 1, 7.60, 1, 1.0, 0.03, (4.3, 6.0), -1.6, -1.6),
    _Species("Cr I", 51.996, (6.767, 16.486), 1, 5.64, 1, 1.0, 0.05, (0.9, 4.0), -2.5, -1.9),
    _Species("Ni I", 58.693, (7.640, 18.169), 1, 6.22, 1, 1.0, 0.07, (1.6, 5.0), -2.4, -1.8),
    _Species("C I", 12.011, (11.260, 24.383), 1, 8.43, 1, 1.0, 0.03, (7.5, 8.8), -1.8, -1.9),
    _Species("N I", 14.007, (14.534, 29.601), 1, 7.83, 1, 1.0, 0.02, (10.3, 10.8), 0.5, -1.9),
    _Species("CN", 26.018, (0.0, 0.0), 0, 7.83, 2, 1.0, 0.25, (0.0, 1.5), -5.4, -1.9, 7.72, -12.4),
    _Species("H I", 1.008, (13.598, 1e9), 1, 12.00, 0, 0.5, 0.0, (0.0, 0.0), 0.0, 0.0),
)
_SPECIES_INDEX = {s.name: i for i, s in enumerate(_SPECIES)}

# Named strong lines (vacuum A, species, chi_ex eV, log gf, log10 gamma A): the Ca II infrared
# triplet and a few strong Mg I / Fe I lines of the 8350-8850 A window.
_STRONG_LINES: tuple[tuple[float, str, float, float, float], ...] = (
    (8500.35, "Ca II", 1.692, -1.318, -1.1),
    (8544.44, "Ca II", 1.700, -0.356, -1.1),
    (8664.52, "Ca II", 1.692, -0.622, -1.1),
    (8809.18, "Mg I", 4.346, -0.140, -1.4),
    (8691.01, "Fe I", 2.176, -1.210, -1.6),
    (8826.64, "Fe I", 2.198, -1.540, -1.6),
)


class _LineList(NamedTuple):
    """The fixed line list, each field shape (n_lines,)."""

    center: np.ndarray  # vacuum A
    species: np.ndarray  # index into _SPECIES
    chi_ex: np.ndarray  # eV
    loggf: np.ndarray
    log_gamma: np.ndarray  # log10 Lorentzian HWHM (A) at the solar reference


def _paschen_lines(lo: float, hi: float) -> list[tuple[float, float, float]]:
    """Hydrogen Paschen lines (3 -> n) in [lo, hi] A: (vacuum A, log gf, log10 gamma A)."""
    out = []
    for n in range(6, 60):
        center = 1e8 / (_RYDBERG_H * (1.0 / 9.0 - 1.0 / n**2))
        if lo <= center <= hi:
            # Kramers' oscillator strength; Stark widths grow steeply with the upper level.
            f = 32.0 / (3.0 * np.pi * np.sqrt(3.0)) / (3**5 * n**3) / (1 / 9 - 1 / n**2) ** 3
            log_gamma = -0.6 + 2.0 * np.log10(n / 12.0)
            out.append((center, np.log10(18.0 * f) + _H_LOGGF_BOOST, log_gamma))
    return out


def _make_line_list(wl_range: tuple[float, float], n_lines: int, seed: int) -> _LineList:
    rng = np.random.default_rng(seed)
    lo, hi = wl_range[0] - _MARGIN_AA, wl_range[1] + _MARGIN_AA
    shares = np.array([s.fraction for s in _SPECIES])
    counts = rng.multinomial(n_lines, shares / shares.sum())
    parts = []
    for i, (s, n) in enumerate(zip(_SPECIES, counts, strict=True)):
        if n == 0:
            continue
        parts.append(
            (
                rng.uniform(lo, hi, n),
                np.full(n, i),
                rng.uniform(*s.chi_ex, n),
                s.loggf_top - rng.exponential(_LOGGF_SCALE, n),
                s.log_gamma + 0.15 * rng.standard_normal(n),
            )
        )
    fixed = [
        (c, _SPECIES_INDEX[sp], chi, gf, gam)
        for c, sp, chi, gf, gam in _STRONG_LINES
        if lo <= c <= hi
    ]
    fixed += [(c, _SPECIES_INDEX["H I"], 12.088, gf, gam) for c, gf, gam in _paschen_lines(lo, hi)]
    if fixed:
        parts.append(tuple(np.array(col) for col in zip(*fixed, strict=True)))
    if not parts:
        return _LineList(*(np.zeros(0, dtype=t) for t in (float, np.int64, float, float, float)))
    cols = [np.concatenate(col) for col in zip(*parts, strict=True)]
    order = np.argsort(cols[0], kind="stable")
    return _LineList(
        center=cols[0][order].astype(np.float64),
        species=cols[1][order].astype(np.int64),
        chi_ex=cols[2][order].astype(np.float64),
        loggf=cols[3][order].astype(np.float64),
        log_gamma=cols[4][order].astype(np.float64),
    )


def _species_array(field: str) -> np.ndarray:
    return np.array([getattr(s, field) for s in _SPECIES], dtype=np.float64)


def _check_params(teff: float, logg: float, feh: float) -> tuple[float, float, float]:
    out = []
    for name, value, (lo, hi) in (
        ("teff", teff, TEFF_RANGE),
        ("logg", logg, LOGG_RANGE),
        ("feh", feh, FEH_RANGE),
    ):
        v = float(value)
        if not np.isfinite(v) or not lo <= v <= hi:
            raise ValueError(f"{name}={value!r} is outside the simulator's range [{lo:g}, {hi:g}]")
        out.append(v)
    return out[0], out[1], out[2]


def _electron_pressure(teff: float, logg: float) -> float:
    """Electron pressure (dyn/cm^2) of the line-forming layer: a power law in Teff and g."""
    log_pe = (
        _LOG_PE_SUN
        + _PE_TEFF_POWER * np.log10(teff / _TEFF_SUN)
        + _PE_LOGG_SLOPE * (logg - _LOGG_SUN)
    )
    return float(10.0**log_pe)


class SyntheticGridModel:
    """A deterministic toy stellar-spectrum simulator on a constant-resolving-power grid.

    Args:
        wl_range: (start, stop) vacuum wavelength window in A; the pixel grid starts at ``start``
            and steps by ``lambda_{i+1} = lambda_i (1 + 1 / resolution)`` up to ``stop``.
        resolution: resolving power R = lambda / d lambda (PHOENIX HiRes: 500,000).
        n_lines: number of random lines, drawn over the window plus 10 A beyond each end (the
            named strong lines and hydrogen Paschen lines that fall there come on top).
        seed: seed of the line list; the same settings always give the same spectra.
        line_formation: how the lines' optical depths tau_j(lambda) = S_j V_j(lambda) become
            the lines-only flux (one of :data:`LINE_FORMATIONS`):

            * ``"per_line"`` (default): prod_j (1 - D_MAX (1 - exp(-tau_j))). Each line is
              formed on its own and blends multiply, so two saturated lines on one pixel reach
              (1 - D_MAX)**2. A clone whose line form is 1 - d (1 - exp(-tau V)) has exactly
              this form, so it can fit such a grid by construction.
            * ``"summed_opacity"``: 1 - D_MAX (1 - exp(-sum_j tau_j)). This is the exact
              solution of the transfer equation for a Schuster-Schwarzschild reversing layer:
              a slab of line optical depth tau(lambda) = sum_j tau_j (opacities add) and
              uniform source function S_L over a continuum of intensity I_c gives
              I / I_c = exp(-tau) + (S_L / I_c) (1 - exp(-tau)) = 1 - D_MAX (1 - exp(-tau))
              with D_MAX = 1 - S_L / I_c. No pixel goes below 1 - D_MAX, however many lines
              blend there. For lines that do not overlap both laws give the same spectrum; in
              a blend the summed law is never deeper: for two lines with x_j = 1 - exp(-tau_j)
              it exceeds the per-line product by exactly D_MAX (1 - D_MAX) x_1 x_2.
            * ``"milne_eddington"``: 1 - D_MAX eta / (1 + eta), eta = sum_j tau_j read as the
              line-to-continuum opacity ratio. The Milne-Eddington atmosphere (eta constant
              with depth, source function linear in continuum optical depth, B = a + b tau_c)
              in the Eddington-Barbier approximation: F / F_c = B(tau = 2/3 along the total
              opacity) / B(tau_c = 2/3) = 1 - D_MAX eta / (1 + eta), D_MAX = (2b/3) /
              (a + 2b/3). Opacities add here too, and a single line already differs from the
              per-line law: its depth approaches D_MAX as 1 / eta, not exponentially, so
              strong lines have rounder cores and its curve of growth is another shape.

            All three agree with 1 - D_MAX sum_j tau_j where every tau is small.

    Attributes:
        lines: the fixed line list, fields of shape (n_lines,) sorted by ``center`` (vacuum A):
            ``species`` (index into :attr:`species_names`), ``chi_ex`` (eV), ``loggf``,
            ``log_gamma`` (log10 Lorentzian HWHM in A at Teff 5777 K, log g 4.5).
    """

    #: Species of :attr:`lines` (``lines.species`` indexes this tuple).
    species_names: tuple[str, ...] = tuple(s.name for s in _SPECIES)

    def __init__(
        self,
        wl_range: tuple[float, float] = (8350.0, 8850.0),
        resolution: float = 500_000.0,
        n_lines: int = 3000,
        seed: int = 0,
        line_formation: str = "per_line",
    ) -> None:
        lo, hi = (float(v) for v in wl_range)
        if not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo < hi):
            raise ValueError(
                f"wl_range must be (start, stop) A with 0 < start < stop, got {wl_range}"
            )
        if not (np.isfinite(resolution) and resolution > 1):
            raise ValueError(f"resolution must be a finite number > 1, got {resolution!r}")
        if int(n_lines) != n_lines or n_lines < 0:
            raise ValueError(f"n_lines must be a non-negative integer, got {n_lines!r}")
        if line_formation not in LINE_FORMATIONS:
            raise ValueError(
                f"line_formation must be one of {LINE_FORMATIONS}, got {line_formation!r}"
            )
        self.line_formation = str(line_formation)
        self.wl_range = (lo, hi)
        self.resolution = float(resolution)
        self.n_lines = int(n_lines)
        self.seed = int(seed)
        n_pix = int(np.floor(np.log(hi / lo) / np.log1p(1.0 / self.resolution) + 1e-9)) + 1
        if n_pix < 2:
            raise ValueError(f"wl_range {wl_range} holds fewer than 2 pixels at R={resolution:g}")
        self._wavelength = lo * np.exp(np.arange(n_pix) * np.log1p(1.0 / self.resolution))
        self._wavelength.setflags(write=False)
        self.lines = _make_line_list(self.wl_range, self.n_lines, self.seed)

    def __repr__(self) -> str:
        return (
            f"SyntheticGridModel(wl_range={self.wl_range}, resolution={self.resolution:g}, "
            f"n_lines={self.n_lines}, seed={self.seed}, line_formation={self.line_formation!r})"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SyntheticGridModel) and self.settings() == other.settings()

    def __hash__(self) -> int:
        return hash(json.dumps(self.settings(), sort_keys=True))

    # -- settings ------------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments (plus the simulator version)."""
        return {
            "wl_range": list(self.wl_range),
            "resolution": self.resolution,
            "n_lines": self.n_lines,
            "seed": self.seed,
            "line_formation": self.line_formation,
            "version": _VERSION,
        }

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> SyntheticGridModel:
        """Rebuild the model described by :meth:`settings`; ``ValueError`` on a version mismatch.

        Settings without ``line_formation`` (written before it existed) describe the default
        ``"per_line"`` law.
        """
        version = settings.get("version", _VERSION)
        if version != _VERSION:
            raise ValueError(
                f"settings were written by simulator version {version}, this is version "
                f"{_VERSION}; rewrite the grid with overwrite=True"
            )
        unknown = set(settings) - set(_SETTING_KEYS)
        if unknown:
            raise ValueError(f"unknown SyntheticGridModel settings: {sorted(unknown)}")
        kwargs = {k: v for k, v in settings.items() if k != "version"}
        if "wl_range" in kwargs:
            kwargs["wl_range"] = tuple(kwargs["wl_range"])
        return cls(**kwargs)

    # -- spectra -------------------------------------------------------------------------------

    def wavelength(self) -> np.ndarray:
        """Vacuum wavelengths in A, float64, shape (n_pix,), lambda / d lambda = R (read-only)."""
        return self._wavelength

    def _grid(self, wavelength: np.ndarray | None) -> np.ndarray:
        if wavelength is None:
            return self._wavelength
        return check_wavelength(wavelength, name="wavelength")

    def line_strengths(self, teff: float, logg: float, feh: float) -> np.ndarray:
        """Integrated line strengths S (A), shape (n_lines,): tau(lambda) = S * Voigt(lambda)."""
        teff, logg, feh = _check_params(teff, logg, feh)
        theta = 5040.0 / (_T_EX_RATIO * teff)
        theta_sun = 5040.0 / (_T_EX_RATIO * _TEFF_SUN)
        theta_ion = 5040.0 / (_T_ION_RATIO * teff)
        pe = _electron_pressure(teff, logg)
        chi1, chi2 = (np.array([s.chi_ion[k] for s in _SPECIES]) for k in (0, 1))
        # Saha: N_{i+1} / N_i = Phi_i / Pe (Gray's form, Pe in dyn/cm^2), three stages.
        phi1 = 1.2020e9 * _species_array("u_ratio") * theta_ion**-2.5 * 10.0 ** (-theta_ion * chi1)
        phi2 = 1.2020e9 * theta_ion**-2.5 * 10.0 ** (-theta_ion * chi2)
        x1 = phi1 / pe
        denom = 1.0 + x1 + x1 * phi2 / pe
        stage = np.array([s.stage for s in _SPECIES])
        frac = np.where(stage == 2, x1, 1.0) / denom
        # Molecules: association grows as 10**(theta * D0) in cool gas.
        log_mol = np.minimum(theta * _species_array("d0") + _species_array("log_k"), 0.0)
        log_frac = np.where(stage == 0, log_mol, np.log10(np.maximum(frac, 1e-300)))
        log_abund = _species_array("log_eps") - 12.0 + _species_array("feh_power") * feh
        # Continuum opacity relative to the Sun's: H- bound-free (~ Pe theta**2.5 10**(0.754
        # theta)) with its Pe dependence softened to Pe**0.5, so that neutral lines of mostly
        # ionised metals weaken, and ionised lines strengthen, at lower gravity; plus hydrogen
        # bound-free from n = 4 (redward of the Paschen jump), which takes over near 7500 K.
        kappa_hm = (
            (pe / 10.0**_LOG_PE_SUN) ** _KAPPA_PE_POWER
            * (theta / theta_sun) ** 2.5
            * 10.0 ** (_H_MINUS_EV * (theta - theta_sun))
        )
        h_neutral = frac[_SPECIES_INDEX["H I"]]
        kappa_h = 10.0 ** (_LOG_KAPPA_H_SUN - _H_N4_EV * (theta - theta_sun)) * h_neutral
        log_kappa = np.log10(kappa_hm + kappa_h)
        ll = self.lines
        log_s = (
            _LOG_STRENGTH_NORM
            + (log_abund + log_frac)[ll.species]
            + ll.loggf
            - theta * ll.chi_ex
            + 2.0 * np.log10(ll.center / _LAMBDA_REF)
            - log_kappa
        )
        return 10.0**log_s

    def line_widths(self, teff: float, logg: float, feh: float) -> tuple[np.ndarray, np.ndarray]:
        """(sigma, gamma) in A, each shape (n_lines,): Gaussian std and Lorentzian HWHM."""
        teff, logg, feh = _check_params(teff, logg, feh)
        ll = self.lines
        mass = _species_array("mass_amu")[ll.species] * _AMU
        xi = _microturbulence(teff, logg)
        v2 = _K_B * _T_EX_RATIO * teff / mass / 1e10 + 0.5 * xi**2  # (km/s)^2
        sigma = ll.center / _C_KMS * np.sqrt(v2)
        gamma = 10.0 ** (ll.log_gamma + 0.3 * (logg - 4.5)) * (teff / _TEFF_SUN) ** 0.3
        return sigma, gamma

    def line_spectrum(
        self, teff: float, logg: float, feh: float, wavelength: np.ndarray | None = None
    ) -> np.ndarray:
        """Normalised lines-only flux in (0, 1], float64, shape (n_pix,).

        ``teff`` in K, ``logg`` in cgs dex, ``feh`` in dex, any values inside :data:`TEFF_RANGE`,
        :data:`LOGG_RANGE`, :data:`FEH_RANGE` (``ValueError`` naming the parameter otherwise).
        ``wavelength``: strictly increasing vacuum A (default :meth:`wavelength`).
        """
        wl = self._grid(wavelength)
        strength = self.line_strengths(teff, logg, feh)
        sigma, gamma = self.line_widths(teff, logg, feh)
        return _render(wl, self.lines.center, strength, sigma, gamma, self.line_formation)

    def continuum(
        self, teff: float, logg: float, feh: float, wavelength: np.ndarray | None = None
    ) -> np.ndarray:
        """Continuum flux pi B_lambda(Teff) * shape, erg/s/cm^2/cm, float64, shape (n_pix,)."""
        teff, logg, feh = _check_params(teff, logg, feh)
        wl = self._grid(wavelength)
        return planck_flux(wl, teff) * continuum_shape(wl, teff, logg)

    def flux(
        self, teff: float, logg: float, feh: float, wavelength: np.ndarray | None = None
    ) -> np.ndarray:
        """Raw flux = :meth:`continuum` * :meth:`line_spectrum`, erg/s/cm^2/cm, shape (n_pix,)."""
        wl = self._grid(wavelength)
        return self.continuum(teff, logg, feh, wl) * self.line_spectrum(teff, logg, feh, wl)


def _microturbulence(teff: float, logg: float) -> float:
    """Microturbulent velocity xi (km/s): ~1 km/s in the Sun, larger in hot and giant stars."""
    xi = 1.0 + 0.4 * (teff - _TEFF_SUN) / 1000.0 - 0.25 * (logg - _LOGG_SUN)
    return float(np.clip(xi, 0.5, 4.0))


def planck_flux(wavelength_aa: np.ndarray, teff: float) -> np.ndarray:
    """Blackbody surface flux pi B_lambda(T) in erg/s/cm^2/cm at vacuum wavelengths in A."""
    lam = np.asarray(wavelength_aa, dtype=np.float64) * 1e-8
    x = _H_PLANCK * _C_CM / (lam * _K_B * teff)
    return np.pi * 2.0 * _H_PLANCK * _C_CM**2 / lam**5 / np.expm1(x)


def continuum_shape(wavelength_aa: np.ndarray, teff: float, logg: float) -> np.ndarray:
    """Smooth positive factor (dimensionless) between the blackbody and the continuum.

    exp(a x + b x**2) with x = ln(lambda / 8500 A): an H- bound-free-like curvature peaking near
    8500 A whose slope, depth and overall level change gently with Teff and log g.
    """
    x = np.log(np.asarray(wavelength_aa, dtype=np.float64) / 8500.0)
    t = _TEFF_SUN / teff
    level = 0.85 + 0.1 * np.tanh((teff - 6000.0) / 2000.0) - 0.02 * (logg - _LOGG_SUN)
    a = 1.5 * (t - 1.0) - 0.4
    b = -12.0 * t
    return level * np.exp(a * x + b * x**2)


def _render(
    wl: np.ndarray,
    center: np.ndarray,
    strength: np.ndarray,
    sigma: np.ndarray,
    gamma: np.ndarray,
    law: str = "per_line",
) -> np.ndarray:
    """prod_j (1 - D_MAX (1 - exp(-S_j V_j))) on ``wl``, each line only where it matters.

    ``law`` (see :data:`LINE_FORMATIONS`): for ``"summed_opacity"`` and ``"milne_eddington"``
    the optical depths tau = sum_j S_j V_j are accumulated on the pixel grid block by block and
    the flux formed once at the end, 1 - D_MAX (1 - exp(-tau)) or 1 - D_MAX tau / (1 + tau).
    """
    summed = law != "per_line"
    # Half-width beyond which D_MAX * S * V < _DEPTH_CUT: the Lorentzian wing, or the Gaussian
    # core for narrow lines, plus 3 sigma for the convolution's spread.
    peak = D_MAX * strength * voigt_profile(0.0, sigma, gamma)
    keep = peak > _DEPTH_CUT
    center, strength, sigma, gamma = center[keep], strength[keep], sigma[keep], gamma[keep]
    amp = D_MAX * strength / _DEPTH_CUT
    half_l = 1.1 * np.sqrt(amp * gamma / np.pi)
    half_g = sigma * np.sqrt(2.0 * np.log(np.maximum(amp / (sigma * np.sqrt(2 * np.pi)), 1.0)))
    half = np.maximum(half_l, half_g) + 3.0 * sigma
    start = np.searchsorted(wl, center - half, "left")
    n = np.searchsorted(wl, center + half, "right") - start
    on = n > 0
    center, strength, sigma, gamma, start, n = (
        a[on] for a in (center, strength, sigma, gamma, start, n)
    )
    # Per pixel: the sum of each line's ln(flux), or (summed) of each line's optical depth.
    total = np.zeros(wl.size)
    # Group lines of similar window length (powers of two) into dense rectangular blocks.
    bucket = np.ceil(np.log2(n)).astype(np.int64)
    for b in np.unique(bucket):
        sel = np.flatnonzero(bucket == b)
        width = int(n[sel].max())
        rows = max(1, _CHUNK // width)
        for k in range(0, sel.size, rows):
            j = sel[k : k + rows]
            offset = np.arange(width)
            valid = offset[None, :] < n[j, None]
            idx = np.minimum(start[j, None] + offset[None, :], wl.size - 1)
            x = wl[idx] - center[j, None]
            tau = strength[j, None] * voigt_profile(x, sigma[j, None], gamma[j, None])
            contrib = tau if summed else np.log1p(D_MAX * np.expm1(-tau))
            total += np.bincount(idx[valid], weights=contrib[valid], minlength=wl.size)
    if law == "summed_opacity":
        return 1.0 + D_MAX * np.expm1(-total)
    if law == "milne_eddington":
        return 1.0 - D_MAX * total / (1.0 + total)
    return np.maximum(np.exp(total), np.finfo(np.float64).tiny)


# ------------------------------------------------------------------------------------------------
# Writing and reading a PHOENIX-layout grid


def _temporary_name(path: Path) -> Path:
    # Hidden and not ending in .fits, so no grid reader mistakes it for a spectrum.
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _atomic_write_fits(path: Path, data: np.ndarray, header: fits.Header) -> None:
    """Write ``data`` as the primary HDU of ``path`` via a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    try:
        fits.PrimaryHDU(data=data, header=header).writeto(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _atomic_write_json(path: Path, obj: dict[str, Any]) -> None:
    tmp = _temporary_name(path)
    try:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_settings_file(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read synthetic-grid settings {path}: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT or "settings" not in meta:
        raise ValueError(f"{path} is not a jblase synthetic-grid settings file")
    return meta


def _with_default_law(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` with the default ``line_formation`` filled in where an older file lacks it."""
    if isinstance(settings, dict) and "line_formation" not in settings:
        return {**settings, "line_formation": LINE_FORMATIONS[0]}
    return settings


def _grid_points(
    teffs: Sequence[float], loggs: Sequence[float], fehs: Sequence[float]
) -> list[GridPoint]:
    """The product of the axes, checked in range and exactly representable in PHOENIX names."""
    # PHOENIX names carry Teff in whole K, log g to 0.01 dex and [Fe/H] to 0.1 dex.
    decimals = {"teffs": 0, "loggs": 2, "fehs": 1}
    axes = {}
    for name, values in (("teffs", teffs), ("loggs", loggs), ("fehs", fehs)):
        values = sorted({float(v) + 0.0 for v in values})
        if not values:
            raise ValueError(f"write_grid: {name} is empty")
        for v in values:
            if not np.isfinite(v) or abs(v - round(v, decimals[name])) > 1e-9:
                raise ValueError(
                    f"write_grid: {name} value {v!r} cannot be named exactly in a PHOENIX file "
                    f"name ({decimals[name]} decimals)"
                )
        axes[name] = values
    points = [
        GridPoint(t, g, z) for t in axes["teffs"] for g in axes["loggs"] for z in axes["fehs"]
    ]
    for p in points:
        _check_params(*p)
    return points


def _spectrum_files(root: Path) -> list[Path]:
    return sorted(root.glob(f"{LIBRARY}/Z*/*.fits"))


def write_grid(
    out_dir: str | os.PathLike[str],
    teffs: Sequence[float] = DEMO_TEFFS,
    loggs: Sequence[float] = DEMO_LOGGS,
    fehs: Sequence[float] = DEMO_FEHS,
    model: SyntheticGridModel | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write the spectra of ``model`` (default: ``SyntheticGridModel()``) as a PHOENIX mirror.

    Writes ``out_dir/WAVE_PHOENIX-ACES-AGSS-COND-2011.fits`` (float64 vacuum A),
    ``out_dir/<phoenix_relpath(teff, logg, feh)>`` for every point of the product of the axes
    (float32 flux in erg/s/cm^2/cm, header PHXTEFF, PHXLOGG, PHXM_H, PHXALPHA) and
    ``out_dir/jblase_synthetic.json`` (model settings and axes; ``"complete": true`` once every
    file is in place). Files already present are kept unless ``overwrite``, so an interrupted
    call resumes; each file is written atomically. Raises ``ValueError``, before writing
    anything, if a point is off-range or not exactly nameable (Teff whole K, log g 0.01 dex,
    [Fe/H] 0.1 dex), if ``out_dir`` holds a grid of another model (``overwrite=True`` replaces
    it when every old spectrum would be replaced), or if it holds PHOENIX files without the
    settings file (a real mirror, never touched). Returns ``out_dir`` as a Path.
    """
    model = SyntheticGridModel() if model is None else model
    root = Path(out_dir)
    points = _grid_points(teffs, loggs, fehs)
    meta_path = root / SETTINGS_FILENAME
    if meta_path.exists():
        old = _with_default_law(_read_settings_file(meta_path)["settings"])
        if old != model.settings():
            if not overwrite:
                raise ValueError(
                    f"{root} holds a synthetic grid of another model ({old}); this model is "
                    f"{model.settings()}; use overwrite=True or another out_dir"
                )
            wanted = {root / phoenix_relpath(*p) for p in points}
            stale = sorted(set(_spectrum_files(root)) - wanted)
            if stale:
                raise ValueError(
                    f"{root} holds {len(stale)} spectra of another model that this call would "
                    f"not replace (e.g. {stale[0]}); remove them or use another out_dir"
                )
    elif (root / WAVELENGTH_FILENAME).exists() or _spectrum_files(root):
        raise ValueError(
            f"refusing to write into {root}: it holds PHOENIX-layout files but no "
            f"{SETTINGS_FILENAME}, so they were not written by jblase.grids.synthetic"
        )
    root.mkdir(parents=True, exist_ok=True)
    axes = {
        "teffs": sorted({p.teff for p in points}),
        "loggs": sorted({p.logg for p in points}),
        "fehs": sorted({p.feh for p in points}),
    }
    meta = {"format": _FORMAT, "settings": model.settings(), **axes, "alpha": 0.0}
    _atomic_write_json(meta_path, {**meta, "complete": False})

    wl_path = root / WAVELENGTH_FILENAME
    if overwrite or not wl_path.exists():
        header = fits.Header()
        header["UNIT"] = ("Angstrom", "vacuum wavelength")
        header["ORIGIN"] = "jblase.grids.synthetic"
        _atomic_write_fits(wl_path, np.asarray(model.wavelength(), dtype=np.float64), header)
    for p in tqdm(points, desc="synthetic grid", unit="spectrum", disable=not progress):
        path = root / phoenix_relpath(p.teff, p.logg, p.feh, alpha=0.0)
        if path.exists() and not overwrite:
            continue
        header = fits.Header()
        header["PHXTEFF"] = (p.teff, "[K] effective temperature")
        header["PHXLOGG"] = (p.logg, "[cm/s^2] log (surface gravity)")
        header["PHXM_H"] = (p.feh, "[M/H] metallicity (rel. solar)")
        header["PHXALPHA"] = (0.0, "[a/M] alpha element enhancement")
        header["BUNIT"] = ("erg/s/cm^2/cm", "flux unit")
        header["ORIGIN"] = "jblase.grids.synthetic"
        _atomic_write_fits(path, model.flux(*p).astype(np.float32), header)
    _atomic_write_json(meta_path, {**meta, "complete": True})
    return root


def load_model(out_dir: str | os.PathLike[str]) -> SyntheticGridModel:
    """The :class:`SyntheticGridModel` that wrote the grid in ``out_dir`` (from its JSON)."""
    path = Path(out_dir) / SETTINGS_FILENAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {out_dir} was not written by jblase.grids.synthetic.write_grid"
        )
    return SyntheticGridModel.from_settings(_read_settings_file(path)["settings"])
