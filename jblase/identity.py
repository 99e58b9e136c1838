"""Line identities across a grid (between cloning and the manifold).

The paper names a line by its pre-optimisation centre rounded to 0.01 A. Detection snaps that
centre to a pixel, so one physical line whose detected peak moves by a pixel between two grid
points becomes two identities, each present at only some of the grid points, and interpolation
then mixes unrelated entries. :func:`match_identities` instead groups the *tuned* centres of
every clone of a grid: lines of different spectra whose centres lie within a tolerance of a
group's first line join it, and a group never takes two lines of the same spectrum.

Pure NumPy (it runs once per grid, not in a hot path); wavelengths are vacuum A, float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "DEFAULT_MATCH_TOLERANCE_PX",
    "IDENTITY_KEYS_PER_AA",
    "IdentityMatch",
    "identity_keys",
    "match_identities",
    "unique_identities",
]

#: Lines of different grid points are one identity when their tuned centres lie within this
#: many pixels of the group's first line: a detected peak moving by one pixel stays one line.
DEFAULT_MATCH_TOLERANCE_PX = 2.0
#: The manifold keys identities as ``round(identity * IDENTITY_KEYS_PER_AA)`` (0.001 A).
IDENTITY_KEYS_PER_AA = 1000


class IdentityMatch:
    """The result of :func:`match_identities`.

    Attributes:
        identity: float64 (n_groups,) increasing, the mean tuned centre of each group (A),
            rounded to 0.001 A and unique at that resolution.
        groups: one int64 array per spectrum, (n_k,): the group of each of its lines.
    """

    def __init__(self, identity: np.ndarray, groups: list[np.ndarray]):
        self.identity = identity
        self.groups = groups

    @property
    def n_groups(self) -> int:
        return int(self.identity.size)

    def lines_per_identity(self) -> float:
        """Mean number of spectra in which each identity is present."""
        return float(sum(g.size for g in self.groups) / max(self.n_groups, 1))


def match_identities(
    centers: Sequence[np.ndarray],
    wavelength_aa: np.ndarray,
    tolerance_px: float = DEFAULT_MATCH_TOLERANCE_PX,
) -> IdentityMatch:
    """Group the lines of several spectra into identities.

    Args:
        centers: one float64 array (n_k,) of tuned line centres (A) per spectrum.
        wavelength_aa: the spectra's common wavelength grid (A), strictly increasing; sets the
            local pixel step of the tolerance.
        tolerance_px: a line joins a group when its centre lies within this many local pixels
            of the group's first (bluest) line and the group holds no line of its spectrum yet.

    Returns:
        An :class:`IdentityMatch`. Sweeping the lines in wavelength order, each either joins
        the open group or opens a new one; so no group ever holds two lines of one spectrum,
        and a line shifted by a pixel between spectra stays one identity.
    """
    if tolerance_px < 0:
        raise ValueError(f"tolerance_px must be >= 0, got {tolerance_px}")
    wl = np.asarray(wavelength_aa, np.float64)
    step = np.gradient(wl)
    c = [np.asarray(x, np.float64).ravel() for x in centers]
    sizes = np.array([x.size for x in c], dtype=np.int64)
    flat = np.concatenate(c) if c else np.zeros(0)
    if not np.all(np.isfinite(flat)):
        raise ValueError("line centres must be finite")
    owner = np.repeat(np.arange(len(c)), sizes)
    order = np.argsort(flat, kind="stable")
    tol = tolerance_px * np.interp(flat, wl, step)
    group = np.empty(flat.size, dtype=np.int64)
    n_groups = 0
    first = -np.inf
    first_tol = 0.0
    members: set[int] = set()
    # One pass in wavelength order; the sets stay small (at most one line per spectrum).
    for i in order:
        if flat[i] - first <= first_tol and owner[i] not in members:
            members.add(int(owner[i]))
        else:
            n_groups += 1
            first, first_tol, members = flat[i], tol[i], {int(owner[i])}
        group[i] = n_groups - 1
    counts = np.bincount(group, minlength=n_groups)
    mean = np.bincount(group, weights=flat, minlength=n_groups) / np.maximum(counts, 1)
    identity = unique_identities(mean)
    splits = np.cumsum(sizes)[:-1]
    return IdentityMatch(identity, list(np.split(group, splits)))


def identity_keys(identity_center) -> np.ndarray:
    """int64 keys of identities (A) as the manifold keys them: ``round(identity * 1000)``."""
    return np.rint(np.asarray(identity_center, np.float64) * IDENTITY_KEYS_PER_AA).astype(np.int64)


def unique_identities(values: np.ndarray) -> np.ndarray:
    """``values`` (increasing A) rounded to 0.001 A, nudged up where two would collide."""
    keys = identity_keys(values)
    # A running maximum of (key_i - i) keeps keys strictly increasing with the fewest nudges.
    idx = np.arange(keys.size)
    keys = np.maximum.accumulate(keys - idx) + idx
    return keys / IDENTITY_KEYS_PER_AA
