"""Forward model: line parameters + wavelengths -> normalised flux, in windows of pixels.

Used by cloning (step 3) and by the generator (step 5). The model spectrum is a product of
absorption lines, evaluated in log space::

    flux(lambda) = exp( sum_j ln(1 - clip(a_j V_j(lambda - mu_j), 0, 1 - 1e-9)) )

(the paper's ``"absorption"`` line form), or with ``line_form="optical_depth"``::

    flux(lambda) = exp( - sum_j a_j V_j(lambda - mu_j) )

(each line an optical depth: the absorption form's weak-line limit, which a strong line's core
approaches smoothly instead of hitting the clip, so its gradient never vanishes and its core
flattens and widens with strength as a saturated line's does).

where line j only touches a window of ``w_j`` pixels centred on the pixel nearest its centre
(offsets ``-(w_j // 2) ... w_j - w_j // 2 - 1``; pixels beyond either end of the spectrum are
dropped). The paper gives every line ``wing_cut = 6000`` pixels. With ``flux_tolerance`` each
line's window instead follows its current parameters: the smallest multiple of ``tile`` pixels
outside which its absorption stays below 5% of the tolerance (never more than ``wing_cut``).

How it is evaluated: every window is cut into tiles of ``tile`` contiguous pixels. The tiles of
present lines (of every spectrum of a batch) are numbered one after another, and a ``lax.scan``
evaluates ``chunk_elements / tile`` of them per step: one contiguous read of the wavelengths and
one contiguous scatter-add per tile. Steps past the last tile are skipped, so the work follows
the lines present and their windows, not the padded array shapes. ``max_tiles`` (static) bounds
the tiles of one spectrum and so the number of steps.

Two tiers: :func:`ln_flux` (and :func:`synthesize`) take arrays and settings and return the
model; a caller that evaluates the same pixels many times (cloning, the generator) builds a
:class:`ForwardPlan` once with :meth:`ForwardPlan.build`, which holds the window rule (window
caps, the tile bound, pixel hints, padded wavelengths), and evaluates ``plan.ln_flux``. The
evaluation runs named stages: line constants, windows, tile layout, the tile-numbering check,
the core and wing streams (a blocked scan of gathers and scatter-adds), and the crop.

Profiles (:mod:`jblase.profiles`): the pseudo-Voigt mixtures cost one division and one
exponential per pixel; the exact Voigt (``"voigt"``) evaluates the Faddeeva function
(:mod:`jblase.faddeeva`) where a line's absorption may reach 1% or ``|z| < 6.5``, and its
asymptotic series (one division) in the rest of its window.

Precision: ``lambda - mu`` is formed in float64 (wavelengths near 10,000 A with 0.01 A
structure); the profile arithmetic runs in ``compute_dtype`` (float64 by default, float32 for
speed where 1e-6 relative accuracy is enough).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jblase.faddeeva import ASYMPTOTIC_RADIUS, asymptotic_voigt, faddeeva_real
from jblase.linelist import LineList
from jblase.profiles import get_components

__all__ = [
    "DEFAULT_FLUX_TOLERANCE",
    "DEFAULT_TILE",
    "DEFAULT_WING_CUT",
    "LINE_FORMS",
    "ForwardPlan",
    "ln_flux",
    "max_batch_spectra",
    "pad_wavelength",
    "required_half_width_aa",
    "synthesize",
    "synthesize_lines",
    "window_px",
]

DEFAULT_WING_CUT = 6000
#: Largest absorption a_j V_j kept before the log (DESIGN.md step 3).
MAX_ABSORPTION = 1.0 - 1e-9
#: How a line's a V makes flux: ``"absorption"`` (1 - a V, the paper's) or ``"optical_depth"``
#: (exp(-a V)).
LINE_FORMS = ("absorption", "optical_depth")
#: Default flux tolerance of adaptive windows against the full ``wing_cut`` windows.
DEFAULT_FLUX_TOLERANCE = 1e-4
#: Share of the flux tolerance that one line's truncated wing may use at its window edge;
#: the rest is headroom for the wings of many lines overlapping at one pixel.
_LINE_SHARE = 0.05
#: Each window is evaluated in two streams of tiles. Core tiles hold every pixel where a line's
#: absorption may reach _SERIES_LIMIT or its Gaussian term _GAUSSIAN_FLOOR; they get the full
#: profile. Wing tiles, the rest, get the Lorentzian term alone (the exact Voigt: its
#: asymptotic series, and its core also holds every pixel with |z| < 6.5) and the series
#: ln(1 - a) = -(a + a^2/2 + ... + a^n/n), no exponential and no logarithm. The series'
#: truncation error relative to ln(1 - a) stays below a^n / (n + 1): 2e-9 (float32, n = 4) and
#: 1e-17 (float64, n = 8) at the limit; the Gaussian term dropped is below the floor.
_SERIES_LIMIT = 0.01
_SERIES_ORDER = {False: 4, True: 8}  # keyed by "compute dtype is 64-bit"
_GAUSSIAN_FLOOR = 1e-16
#: Core tiles are this many times narrower than wing tiles (cores span a few to tens of
#: pixels), and the core stream's steps hold this many times fewer elements (its last,
#: partly empty step costs the dearer full profile).
_CORE_TILE_DIVISOR = 4
_CORE_STEP_DIVISOR = 4
#: Pixels per tile: windows are whole tiles (adaptive windows) or masked within their last one.
DEFAULT_TILE = 64
#: Elements (tiles x tile pixels) evaluated per scan step when ``chunk_elements`` is not given.
_ELEMENTS_PER_CHUNK = 1 << 18
#: The same on GPUs/TPUs, where each scan step costs kernel launches: fewer, larger steps.
_ELEMENTS_PER_CHUNK_ACCELERATOR = 1 << 23
#: Gather / scatter of one contiguous window (the last axis) per start index.
_WINDOW_GATHER = jax.lax.GatherDimensionNumbers(
    offset_dims=(1,), collapsed_slice_dims=(), start_index_map=(0,)
)
_WINDOW_SCATTER = jax.lax.ScatterDimensionNumbers(
    update_window_dims=(1,), inserted_window_dims=(), scatter_dims_to_operand_dims=(0,)
)
_IN_BOUNDS = jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS
#: A Python float: a NumPy float64 scalar would promote float32 arithmetic to float64.
_SQRT_2PI = float(np.sqrt(2.0 * np.pi))
#: The exact Voigt profile's name; every other profile is a Lorentzian/Gaussian mixture.
_VOIGT = "voigt"


def default_chunk_elements(cpu: int = _ELEMENTS_PER_CHUNK, accelerator: int | None = None) -> int:
    """Window elements per scan step: ``cpu`` on a CPU, ``accelerator`` (default 8M) on a
    GPU/TPU."""
    if jax.default_backend() == "cpu":
        return cpu
    return accelerator or _ELEMENTS_PER_CHUNK_ACCELERATOR


def _line_coefficients(ln_amplitude, ln_sigma, ln_gamma, weight, profile: str, dtype):
    """Per-line constants of a V(x).

    Mixtures: ``(c_l, h2, c_g, k_g)`` with a V(x) = c_l / (h2 + x^2) + c_g exp(-x^2 k_g).
    ``"voigt"``: ``(c, k, y, c_l, g2, s2)`` with a V(x) = c Re w(x k + i y) (c = a / (sigma
    sqrt(2 pi)), k = 1 / (sigma sqrt 2), y = gamma k) and, for its wings, c_l = a gamma / pi,
    g2 = gamma^2, s2 = sigma^2 (see :func:`jblase.faddeeva.asymptotic_voigt`).
    """
    if profile == _VOIGT:
        sigma, gamma = jnp.exp(ln_sigma), jnp.exp(ln_gamma)
        amplitude = jnp.exp(ln_amplitude) * weight
        k = (1.0 / np.sqrt(2.0)) / sigma
        c = amplitude / (_SQRT_2PI * sigma)
        coefficients = (c, k, gamma * k, amplitude * gamma / np.pi, gamma * gamma, sigma * sigma)
        return tuple(x.astype(dtype) for x in coefficients)
    eta, hwhm, gauss_sigma = get_components(profile)(jnp.exp(ln_sigma), jnp.exp(ln_gamma))
    amplitude = jnp.exp(ln_amplitude) * weight
    c_l = amplitude * eta * hwhm / np.pi
    c_g = amplitude * (1.0 - eta) / (_SQRT_2PI * gauss_sigma)
    k_g = 0.5 / gauss_sigma**2
    return tuple(c.astype(dtype) for c in (c_l, hwhm * hwhm, c_g, k_g))


def _envelope(coefficients, profile: str):
    """``(c_l, h2, c_g, k_g)`` with a V(x) <= c_l / (h2 + x^2) + c_g exp(-k_g x^2) wherever
    h2 + x^2 > 0 (the window and core rules use it).

    Mixtures: their own two terms. ``"voigt"``: its Lorentzian wing a gamma / (pi (x^2 - 4
    sigma^2)) plus its Gaussian core a exp(-x^2 / (2 sigma^2)) / (sigma sqrt(2 pi)); in
    units of z = (x + i gamma) / (sigma sqrt 2) that is Re w(z) <= y / (sqrt(pi) (Re(z)^2 - 2))
    + exp(-Re(z)^2), which holds on a dense (x, y) grid against scipy
    (``tests/test_voigt.py``). The shift by 4 sigma^2 covers the wing's excess over
    gamma / (pi x^2), a factor 1 + 3 sigma^2 / x^2 + ... .
    """
    if profile != _VOIGT:
        return coefficients
    c, _, _, c_l, _, s2 = coefficients
    return c_l, -4.0 * s2, c, 0.5 / s2


def _half_width(c_l, h2, c_g, k_g, tolerance: float):
    """Distance (A) beyond which a V(x) = c_l / (h2 + x^2) + c_g exp(-k_g x^2) stays below
    ``tolerance``: each term below half of it."""
    half_tol = 0.5 * tolerance
    x2_l = c_l / half_tol - h2
    x2_g = jnp.log(jnp.maximum(c_g, jnp.finfo(c_g.dtype).tiny) / half_tol) / k_g
    return jnp.sqrt(jnp.maximum(jnp.maximum(x2_l, x2_g), 0.0))


def _window_from_half_width(half_aa, pixel_step_aa, tile: int, cap):
    """Window (pixels, whole tiles, at most ``cap``) covering +-``half_aa`` around a line."""
    need = 2.0 * jnp.ceil(half_aa / pixel_step_aa) + 2.0
    # Non-finite parameters get the cap (their flux is non-finite anyway).
    need = jnp.where(jnp.isnan(need), 2.0**30, jnp.minimum(need, 2.0**30))
    tiles = jnp.ceil(need / tile)
    return jnp.minimum(cap, tiles.astype(jnp.int32) * tile)


def _adaptive_window(envelope, pixel_step_aa, flux_tolerance: float, tile: int, cap, margin=None):
    """The adaptive window rule: the smallest whole-tile window (pixels, at most ``cap``)
    outside which a line's absorption, bounded by ``envelope`` (:func:`_envelope`), stays
    below :data:`_LINE_SHARE` of ``flux_tolerance``; ``margin``: a factor on the half-width.
    Used per call (:func:`ln_flux`, in the profile's dtype) and, through :func:`window_px`,
    for the caps of a plan (:meth:`ForwardPlan.build`, float64)."""
    half = _half_width(*envelope, flux_tolerance * _LINE_SHARE)
    if margin is not None:
        half = margin * half
    return _window_from_half_width(half, pixel_step_aa, tile, cap)


def _core_pixels(wavelength_aa, mu, nearest, pixel_step, coefficients, window, min_reach=None):
    """Pixels ``lo ... hi`` (offsets from ``nearest``, within the window) that hold every pixel
    where a line's absorption may reach :data:`_SERIES_LIMIT` or its Gaussian term
    :data:`_GAUSSIAN_FLOOR`: the core stream's; the rest of the window is the wing stream's.
    ``coefficients``: the envelope (:func:`_envelope`). ``min_reach`` (A, shaped as ``mu``):
    also every pixel closer than this (where the wing form is not accurate); such lines always
    have a core.

    The reach in pixels comes from the local spacing and is then checked on the wavelengths:
    the first pixel outside it on each side must lie at least ``reach`` A from the centre
    (beyond it both terms only fall). Where the check fails (a spacing that shrinks away from
    the centre, non-finite parameters) the whole window is core. A line weaker than both
    limits has no core (``lo > hi``). Shapes as ``mu``; int32.
    """
    c_l, h2, c_g, k_g = coefficients
    floor = jnp.asarray(_GAUSSIAN_FLOOR, c_g.dtype)
    gaussian_reach2 = jnp.log(jnp.maximum(c_g, floor) / floor) / k_g
    reach = jnp.maximum(_half_width(c_l, h2, c_g, k_g, _SERIES_LIMIT), jnp.sqrt(gaussian_reach2))
    if min_reach is not None:
        reach = jnp.maximum(reach, min_reach)
    reach = reach.astype(pixel_step.dtype)
    reach_px = jnp.ceil(reach / pixel_step) + 1.0
    reach_px = jnp.where(jnp.isfinite(reach_px), jnp.minimum(reach_px, 2.0**30), 2.0**30)
    off = jnp.minimum(reach_px.astype(jnp.int32), window)
    n = wavelength_aa.shape[0]
    below, above = nearest - off - 1, nearest + off + 1
    checked = ((below < 0) | (mu - wavelength_aa[jnp.clip(below, 0, n - 1)] >= reach)) & (
        (above > n - 1) | (wavelength_aa[jnp.clip(above, 0, n - 1)] - mu >= reach)
    )
    low = -(window // 2)
    lo = jnp.where(checked, jnp.maximum(-off, low), low)
    hi = jnp.where(checked, jnp.minimum(off, low + window - 1), low + window - 1)
    if min_reach is not None:
        return lo, hi
    weak = checked & (c_l / h2 + c_g < _SERIES_LIMIT) & (c_g < floor)
    return jnp.where(weak, 1, lo), jnp.where(weak, 0, hi)


def _nearest_pixel(wavelength_aa, center, hint=None):
    """Index of the pixel nearest to each centre (ties to the lower pixel), and the pixel
    spacing (A) there; both shaped as ``center``.

    ``hint`` (int, shaped as ``center``): a pixel near each centre, e.g. that of the line's
    identity. The pixel is then guessed from the local spacing, moved by one if needed and
    checked (six reads per line instead of a binary search over the spectrum); if any guess
    fails, every centre falls back to the binary search, so the result never depends on the
    hint.
    """
    n = wavelength_aa.shape[0]
    if n < 2:
        return jnp.zeros(center.shape, jnp.int32), jnp.ones(center.shape, wavelength_aa.dtype)

    def search():
        return jnp.clip(jnp.searchsorted(wavelength_aa, center), 1, n - 1).astype(jnp.int32)

    if hint is None:
        right = search()
    else:
        h = jnp.clip(jnp.asarray(hint, jnp.int32), 0, n - 2)
        low, high = wavelength_aa[h], wavelength_aa[h + 1]
        guess = h + jnp.ceil((center - low) / (high - low)).astype(jnp.int32)
        right = jnp.clip(guess, 1, n - 1)
        # One step towards the centre mends guesses off by one where the spacing changes.
        right = jnp.where(
            wavelength_aa[right - 1] >= center,
            right - 1,
            jnp.where(wavelength_aa[right] < center, right + 1, right),
        )
        right = jnp.clip(right, 1, n - 1)
        # right is searchsorted(left) clipped to [1, n - 1] exactly when these hold.
        settled = ((wavelength_aa[right - 1] < center) | (right == 1)) & (
            (center <= wavelength_aa[right]) | (right == n - 1)
        )
        right = jax.lax.cond(jnp.all(settled), lambda: right, search)
    below, above = wavelength_aa[right - 1], wavelength_aa[right]
    nearest = jnp.where((center - below) <= (above - center), right - 1, right)
    return nearest, above - below


def _cumsum(x):
    # An associative scan: XLA's CPU cumsum is several times slower at these sizes.
    return jax.lax.associative_scan(jnp.add, x)


def pad_wavelength(wavelength_aa, wing_cut: int = DEFAULT_WING_CUT, tile: int = DEFAULT_TILE):
    """The pixels :func:`ln_flux` reads windows from: ``wavelength_aa`` (float64, (n_pix,))
    with ``wing_cut // 2`` copies of its first value before it and ``wing_cut - wing_cut // 2
    + tile`` of its last after it, shape (n_pix + wing_cut + tile,).

    Edge values (not sentinels) keep every x, and so every gradient, finite there; what lands
    in the padding is cut off.
    """
    wavelength_aa = jnp.asarray(wavelength_aa, jnp.float64)
    half_cut = wing_cut // 2
    return jnp.concatenate(
        [
            jnp.full((half_cut,), wavelength_aa[0]),
            wavelength_aa,
            jnp.full((wing_cut - half_cut + tile,), wavelength_aa[-1]),
        ]
    )


def default_max_tiles(n_lines: int, wing_cut: int, tile: int = DEFAULT_TILE) -> int:
    """Tiles of one spectrum when every line has the full ``wing_cut`` window."""
    return max(1, n_lines * -(-wing_cut // tile))


#: Tile numbers are int32: one call's tiles, counted in core tiles, stay below this.
_TILE_NUMBER_LIMIT = 2**31


def _tile_numbers_needed(n_tiles: int, tile: int, chunk_elements: int) -> int:
    """The largest tile number one call with ``n_tiles`` (wing) tiles may form: the core
    stream counts in core tiles, and a step may reach past the last tile."""
    core_tile = max(1, tile // _CORE_TILE_DIVISOR)
    return n_tiles * (tile // core_tile) + 2 * max(1, chunk_elements // core_tile)


def max_batch_spectra(
    max_tiles: int, tile: int = DEFAULT_TILE, chunk_elements: int | None = None
) -> int:
    """The most spectra one :func:`ln_flux` call takes when each has up to ``max_tiles`` tiles
    (tile numbers are int32). Larger batches must be split (``Generator.batch`` does)."""
    elements = chunk_elements or default_chunk_elements()
    fixed = _tile_numbers_needed(0, tile, elements)
    per_spectrum = _tile_numbers_needed(max(1, max_tiles), tile, elements) - fixed
    return max(1, (_TILE_NUMBER_LIMIT - 1 - fixed) // per_spectrum)


def tile_bound(window_cap, mask=None, tile: int = DEFAULT_TILE) -> int:
    """A ``max_tiles`` for :func:`ln_flux`: the most tiles any one spectrum's capped windows
    hold. NumPy, eager; ``window_cap`` (..., n_lines) pixels, ``mask`` optional, same shape."""
    tiles = -(-np.asarray(window_cap, np.int64) // tile)
    if mask is not None:
        tiles = np.where(mask, tiles, 0)
    return max(1, int(tiles.reshape(-1, tiles.shape[-1]).sum(axis=-1).max(initial=0)))


def _check_line_form(line_form: str) -> None:
    if line_form not in LINE_FORMS:
        raise ValueError(f"line_form must be one of {LINE_FORMS}, got {line_form!r}")


# --------------------------------------------------------------------------- the plan
class ForwardPlan(eqx.Module):
    """The pixels and line windows of forward-model calls: built once, evaluated many times.

    :meth:`build` holds the window rule (each line's largest window over the parameters it
    must cover, the static tile bound, the pixel hints, the padded wavelengths);
    :meth:`ln_flux` evaluates the model with it. :func:`ln_flux` (the module's easy call) makes
    a plan from its arguments on every call.

    Attributes:
        wavelength_aa: the pixels, strictly increasing wavelengths in A, float64 (n_pix,).
        padded_wavelength_aa: ``pad_wavelength(wavelength_aa, wing_cut, tile)``, float64
            (n_pix + wing_cut + tile,): the pixels windows are read from.
        window_cap: optional int32 pixels, broadcastable to the lines ((n_lines,) or
            (n_batch, n_lines)): each line's largest window (never above ``wing_cut``).
        pixel_hint: optional int32, broadcastable to the lines: a pixel near each line's
            centre, where the search for its nearest pixel starts (the result does not depend
            on it).
        max_tiles: static bound on the tiles of one spectrum (None: every line with
            ``wing_cut`` pixels); tiles beyond it would be dropped.
        wing_cut, tile, profile, line_form, compute_dtype, flux_tolerance: static settings,
            as :func:`ln_flux` (``compute_dtype`` a NumPy dtype, float32 or float64).
    """

    wavelength_aa: jax.Array
    padded_wavelength_aa: jax.Array
    window_cap: jax.Array | None = None
    pixel_hint: jax.Array | None = None
    max_tiles: int | None = eqx.field(static=True, default=None)
    wing_cut: int = eqx.field(static=True, default=DEFAULT_WING_CUT)
    tile: int = eqx.field(static=True, default=DEFAULT_TILE)
    profile: str = eqx.field(static=True, default="pseudo_voigt")
    line_form: str = eqx.field(static=True, default="absorption")
    compute_dtype: np.dtype = eqx.field(
        static=True, default=np.dtype("float64"), converter=jnp.dtype
    )
    flux_tolerance: float | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        _check_line_form(self.line_form)
        stride = self.wavelength_aa.shape[0] + self.wing_cut + self.tile
        if self.padded_wavelength_aa.shape != (stride,):
            raise ValueError(
                f"padded_wavelength_aa has shape {self.padded_wavelength_aa.shape}; expected "
                f"({stride},) from pad_wavelength(wavelength_aa, wing_cut, tile)"
            )

    @classmethod
    def build(
        cls,
        wavelength_aa,
        cover=None,
        present=None,
        *,
        mask=None,
        hint_center=None,
        window_cap=None,
        margin: float = 1.0,
        round_tiles: Callable[[int], int] | None = None,
        wing_cut: int = DEFAULT_WING_CUT,
        tile: int = DEFAULT_TILE,
        profile: str = "pseudo_voigt",
        line_form: str = "absorption",
        compute_dtype="float64",
        flux_tolerance: float | None = None,
    ) -> ForwardPlan:
        """The plan for lines whose parameters stay within those of ``cover``. Eager (NumPy).

        The window rule: without ``flux_tolerance`` every line has ``wing_cut`` pixels and
        the bound is every line's ``wing_cut`` window (so one compiled program serves any
        mask). With it, a line's cap is its largest adaptive window (:func:`window_px`, with
        ``margin`` on the half-width) over its ``cover`` samples, at least one tile and at
        least ``window_cap``; the bound is the most tiles any one spectrum's ``mask``-ed caps
        hold, rounded up by ``round_tiles`` (at most every line's ``wing_cut`` window).

        Args:
            wavelength_aa: strictly increasing wavelengths in A, float64 (n_pix,).
            cover: optional (center [A], ln a, ln sigma [ln A], ln gamma [ln A]), each
                (*lines, n_samples) float64 with ``lines`` (n_lines,) or (n_batch, n_lines):
                parameter samples each line's window must cover (e.g. its values at every
                grid node, or a training segment's current values with ``[..., None]``).
            present: optional bool, shaped as the ``cover`` arrays: samples where a line is
                absent need no window.
            mask: optional bool (*lines): lines that may be present (the tile bound counts
                only those; default all).
            hint_center: optional line centres in A (*lines): the pixel hints' centres.
            window_cap: optional int pixels (*lines): caps to start from (the caps only
                grow); without ``cover`` they are used as they are.
            margin: factor on every sample's half-width (headroom between the samples).
            round_tiles: optional rounding up of the tile bound (fewer distinct programs).
            wing_cut, tile, profile, line_form, compute_dtype, flux_tolerance: as
                :func:`ln_flux`.
        """
        wavelength = jnp.asarray(wavelength_aa, jnp.float64)
        if cover is not None:
            line_shape = np.shape(cover[0])[:-1]
        else:
            given = next((x for x in (window_cap, hint_center, mask) if x is not None), None)
            if given is None:
                raise ValueError("ForwardPlan.build needs cover, window_cap, hint_center or mask")
            line_shape = np.shape(given)
        n_lines = line_shape[-1]
        if flux_tolerance is None:
            cap = np.full(line_shape, wing_cut, np.int32)
            max_tiles = default_max_tiles(n_lines, wing_cut, tile)
        else:
            cap = None if window_cap is None else np.asarray(window_cap, np.int32)
            if cover is not None:
                need = _covering_windows(
                    np.asarray(wavelength),
                    cover,
                    present,
                    margin,
                    wing_cut,
                    tile,
                    profile,
                    flux_tolerance,
                )
                cap = need if cap is None else np.maximum(cap, need)
            if cap is None:
                raise ValueError("with flux_tolerance, ForwardPlan.build needs cover or window_cap")
            max_tiles = tile_bound(cap, mask, tile)
            if round_tiles is not None:
                max_tiles = min(round_tiles(max_tiles), default_max_tiles(n_lines, wing_cut, tile))
        hint = None
        if hint_center is not None:
            hint = _nearest_pixel(wavelength, jnp.asarray(hint_center, jnp.float64))[0]
        return cls(
            wavelength,
            pad_wavelength(wavelength, wing_cut, tile),
            jnp.asarray(cap),
            hint,
            max_tiles=max_tiles,
            wing_cut=wing_cut,
            tile=tile,
            profile=profile,
            line_form=line_form,
            compute_dtype=compute_dtype,
            flux_tolerance=flux_tolerance,
        )

    def ln_flux(
        self, center, ln_amplitude, ln_sigma, ln_gamma, mask=None, chunk_elements: int | None = None
    ):
        """Natural log of the model flux on :attr:`wavelength_aa`: (n_pix,) for lines
        (n_lines,), (n_batch, n_pix) for (n_batch, n_lines); in ``compute_dtype``.

        Arguments (and the jitting, batching and gradients) as :func:`ln_flux`.
        """
        return _ln_flux_jit(self, center, ln_amplitude, ln_sigma, ln_gamma, mask, chunk_elements)


#: Lines per eager evaluation of the window rule (bounds the memory of :meth:`ForwardPlan.build`).
_COVER_CHUNK = 4096


def _covering_windows(wl, cover, present, margin, wing_cut, tile, profile, flux_tolerance):
    """Each line's largest :func:`window_px` over its samples (the last axis of ``cover``),
    at least ``tile``; samples where ``present`` is False need none. NumPy int32 (*lines)."""
    shape = np.shape(cover[0])
    need = np.full(shape[:-1], tile, np.int32)
    for start in range(0, shape[-2], _COVER_CHUNK):
        lines = (..., slice(start, start + _COVER_CHUNK))
        center, ln_a, ln_s, ln_g = (
            np.asarray(x[lines + (slice(None),)], np.float64) for x in cover
        )
        if present is not None:
            here = np.broadcast_to(np.asarray(present, bool), shape)[lines + (slice(None),)]
            ln_a = np.where(here, ln_a, -30.0)
        windows = window_px(
            wl,
            center,
            ln_a,
            ln_s,
            ln_g,
            wing_cut=wing_cut,
            profile=profile,
            flux_tolerance=flux_tolerance,
            tile=tile,
            margin=margin,
        )
        if present is not None:
            windows = np.where(here, windows, 0)
        need[lines] = np.maximum(need[lines], windows.max(axis=-1))
    return need


# --------------------------------------------------------------------------- evaluation
class _LineForm(NamedTuple):
    """ln of one line's transmission from its absorption a = a_j V_j (the module docstring).
    ``series_order`` None: the optical-depth form (ln flux is -a itself)."""

    series_order: int | None
    max_absorption: float

    def series(self, a):
        """ln(1 - a) = -(a + a^2/2 + a^3/3 + ...) for a < _SERIES_LIMIT (Horner form)."""
        if self.series_order is None:
            return -a
        acc = 1.0 / self.series_order
        for k in range(self.series_order - 1, 0, -1):
            acc = 1.0 / k + a * acc
        return -a * acc

    def full(self, a):
        """ln(1 - a) of any absorption; log(1 - a) is cheaper than log1p on XLA's CPU and
        exact enough where a >= _SERIES_LIMIT, the series below."""
        if self.series_order is None:
            return -a
        a = jnp.clip(a, 0.0, self.max_absorption)
        return jnp.where(a < _SERIES_LIMIT, self.series(a), jnp.log(1.0 - a))


def _line_form(line_form: str, compute_dtype) -> _LineForm:
    if line_form == "optical_depth":
        return _LineForm(None, MAX_ABSORPTION)
    max_abs = min(MAX_ABSORPTION, 1.0 - 2.0 * float(jnp.finfo(compute_dtype).eps))
    return _LineForm(_SERIES_ORDER[jnp.dtype(compute_dtype).itemsize >= 8], max_abs)


def _mixture_core(form: _LineForm, x, c_l, h2, c_g, k_g):
    """ln(1 - a V) near a core: the full profile."""
    x2 = x * x
    return form.full(c_l / (h2 + x2) + c_g * jnp.exp(-x2 * k_g))


def _mixture_wing(form: _LineForm, x, c_l, h2, c_g, k_g):
    """ln(1 - a V) in a wing: a < _SERIES_LIMIT and a Gaussian term below _GAUSSIAN_FLOOR,
    so the Lorentzian term and the series."""
    x2 = x * x
    return form.series(c_l / (h2 + x2))


def _voigt_core(form: _LineForm, x, c, k, y, c_l, g2, s2):
    """ln(1 - a V) near a Voigt core: the Faddeeva function."""
    return form.full(c * faddeeva_real(x * k, y))


def _voigt_wing(form: _LineForm, x, c, k, y, c_l, g2, s2):
    """ln(1 - a V) in a Voigt wing: a < _SERIES_LIMIT and |z| >= ASYMPTOTIC_RADIUS, so the
    asymptotic series and the log series. The bounds change no wing pixel; they keep the core
    pixels that a wing tile masks finite (so are their zero gradients)."""
    x2 = jnp.maximum(x * x, (2.0 * ASYMPTOTIC_RADIUS**2) * s2)
    return form.series(jnp.minimum(asymptotic_voigt(x2, c_l, g2, s2), _SERIES_LIMIT))


def _line_constants(wavelength_aa, center, ln_amplitude, ln_sigma, ln_gamma, mask, plan):
    """Stage 1: each line's centre (float64) and profile constants (``compute_dtype``), all
    (n_batch, n_lines).

    Masked lines get finite, harmless parameters and zero weight, so gradients through them
    stay finite (the "double where" pattern). The constants are in the profile's dtype:
    float32 transcendentals are several times cheaper on CPU, and the profile arithmetic
    rounds them to it anyway.
    """
    safe = lambda x, fill: jnp.where(mask, x, fill)  # noqa: E731
    mu = safe(center, wavelength_aa[0])
    inputs = (safe(ln_amplitude, -30.0), safe(ln_sigma, -3.0), safe(ln_gamma, -3.0), mask)
    dtype = plan.compute_dtype
    return mu, _line_coefficients(*(x.astype(dtype) for x in inputs), plan.profile, dtype)


def _windows(wavelength_aa, mu, coefficients, mask, window_cap, pixel_hint, plan):
    """Stage 2 (outside the gradient): each line's nearest pixel, window (pixels) and core
    pixels ``core_lo ... core_hi`` (offsets from the nearest pixel); int32 (n_batch, n_lines).
    """
    shape = mu.shape
    mu_fixed = jax.lax.stop_gradient(mu)
    # Masked lines sit at the first pixel: so must their hints, or the search falls back.
    hint = None if pixel_hint is None else jnp.where(mask, pixel_hint, 0)
    nearest, pixel_step = _nearest_pixel(wavelength_aa, mu_fixed, hint)
    cap = jnp.full(shape, plan.wing_cut, jnp.int32)
    if window_cap is not None:
        cap = jnp.minimum(cap, jnp.broadcast_to(jnp.asarray(window_cap, jnp.int32), shape))
    fixed = tuple(jax.lax.stop_gradient(c) for c in coefficients)
    envelope = _envelope(fixed, plan.profile)
    if plan.flux_tolerance is None:
        window = cap
    else:
        window = _adaptive_window(envelope, pixel_step, plan.flux_tolerance, plan.tile, cap)
    # The Voigt's wing form (its asymptotic series) holds from |z| = ASYMPTOTIC_RADIUS on.
    min_reach = None
    if plan.profile == _VOIGT:
        min_reach = (ASYMPTOTIC_RADIUS * np.sqrt(2.0)) * jnp.sqrt(fixed[5])
    core_lo, core_hi = _core_pixels(
        wavelength_aa, mu_fixed, nearest, pixel_step, envelope, window, min_reach
    )
    return nearest, window, core_lo, core_hi


class _Tiles(NamedTuple):
    """Stage 3's tiling of every (spectrum, line) pair's window, each int32 (n_pairs,) in
    pair order (spectrum-major): ``low`` is the window's first pixel (offset from the nearest
    pixel); core tiles cover ``core_lo ... core_hi``; the wing skips the window tiles
    ``skip_first ... skip_first + n_skip - 1`` inside that range (and masks the core pixels
    of the others). ``counts`` (2, n_pairs): core and wing tiles per pair; ``running`` (4,
    n_pairs): running counts of pairs with core / wing tiles, then of core / wing tiles."""

    low: jax.Array
    window: jax.Array
    core_lo: jax.Array
    core_hi: jax.Array
    skip_first: jax.Array
    n_skip: jax.Array
    counts: jax.Array
    running: jax.Array


def _tile_layout(window, core_lo, core_hi, present, tile: int) -> _Tiles:
    """Stage 3: core and wing tiles of every pair (flat (n_pairs,) int32 inputs)."""
    low = -(window // 2)
    core_tile = max(1, tile // _CORE_TILE_DIVISOR)
    n_core = jnp.where(present, (core_hi - core_lo + core_tile) // core_tile, 0)
    skip_first = (core_lo - low + tile - 1) // tile
    n_skip = jnp.maximum((core_hi + 1 - low) // tile - skip_first, 0)
    n_wing = jnp.where(present, (window + tile - 1) // tile - n_skip, 0)
    # Both streams' running counts at once (one scan instead of four).
    counts = jnp.stack([n_core, n_wing])
    running = jax.lax.associative_scan(
        jnp.add, jnp.concatenate([(counts > 0).astype(jnp.int32), counts]), axis=1
    )
    return _Tiles(low, window, core_lo, core_hi, skip_first, n_skip, counts, running)


def _check_tile_numbering(bound: int, n_batch: int, tile: int, elements: int) -> None:
    """Stage 4: the call's tiles (``bound``, counted in core tiles, up to _CORE_TILE_DIVISOR
    per window tile) must fit the int32 tile numbering."""
    if _tile_numbers_needed(bound, tile, elements) >= _TILE_NUMBER_LIMIT:
        raise ValueError(
            f"{bound} tiles in one call exceed the int32 tile numbering: at most "
            f"{max_batch_spectra(bound // n_batch, tile, elements)} spectra per call here; "
            "split the batch"
        )


def _place_core(tiles: _Tiles, core_tile: int, pair, f):
    """The f-th core tile of each pair: its first pixel (offset from the nearest pixel) and
    which of its ``core_tile`` pixels count."""
    offset = tiles.core_lo[pair] + f * core_tile
    pixel = offset[:, None] + jnp.arange(core_tile)
    return offset, pixel <= tiles.core_hi[pair][:, None]


def _place_wing(tiles: _Tiles, tile: int, pair, f):
    """The f-th wing tile of each pair, as :func:`_place_core`."""
    j = f + jnp.where(f >= tiles.skip_first[pair], tiles.n_skip[pair], 0)
    offset = tiles.low[pair] + j * tile
    pixel = offset[:, None] + jnp.arange(tile)
    lo, hi = tiles.core_lo[pair][:, None], tiles.core_hi[pair][:, None]
    end = (tiles.low + tiles.window)[pair][:, None]
    return offset, (pixel < end) & ((pixel < lo) | (pixel > hi))


class _Pixels(NamedTuple):
    """What a tile reads and where it writes: the padded wavelengths (float64 (stride,)), each
    pair's nearest pixel (int32 (n_pairs,)) and (centre, *profile constants) (n_pairs,)."""

    padded_wavelength_aa: jax.Array
    nearest: jax.Array
    per_pair: tuple
    half_cut: int
    stride: int
    n_lines: int
    compute_dtype: np.dtype


class _Layout(NamedTuple):
    """One stream's pairs with tiles, compacted to the front in order: ``compact`` their pair
    numbers, ``tiles_of`` their tiles, ``cum`` the running tile count, each (n_slots,) int32;
    ``n_tiles`` the stream's tiles; ``n_slice`` the last start of a step's slice."""

    compact: jax.Array
    tiles_of: jax.Array
    cum: jax.Array
    n_tiles: jax.Array
    n_slice: int


def _compact_pairs(count, position, cum_all, per_step: int) -> _Layout:
    """Pairs with tiles compacted to the front (in order), so a step's slots belong to at most
    ``per_step`` consecutive compacted pairs; cum[q] counts the tiles of the first q + 1."""
    n_pairs_max = count.shape[0]
    n_pairs = position[-1]
    slot = jnp.where(count > 0, position - 1, n_pairs_max)
    compact = (
        jnp.zeros(n_pairs_max, jnp.int32)
        .at[slot]
        .set(jnp.arange(n_pairs_max, dtype=jnp.int32), mode="drop")
    )
    live = jnp.arange(n_pairs_max) < n_pairs
    tiles_of = jnp.where(live, count[compact], 0)
    cum = jnp.where(live, cum_all[compact], cum_all[-1])
    n_tiles = cum_all[-1]
    if per_step > n_pairs_max:
        # A step reads per_step consecutive compacted pairs: pad so the slices fit.
        pad = lambda x, v: jnp.concatenate([x, jnp.full((per_step,), v, x.dtype)])  # noqa: E731
        cum, tiles_of, compact = pad(cum, n_tiles), pad(tiles_of, 0), pad(compact, 0)
    return _Layout(compact, tiles_of, cum, n_tiles, cum.shape[0] - per_step)


def _add_tiles(total, k, *, layout: _Layout, place, contribution, width, per_step, pixels):
    """Scan step ``k`` of a stream: evaluate its ``per_step`` tiles of ``width`` pixels (one
    contiguous read of the wavelengths each) and scatter-add them into ``total``."""
    cum, tiles_of, compact = layout.cum, layout.tiles_of, layout.compact
    local_index = jnp.arange(per_step, dtype=jnp.int32)
    first_slot = k * per_step  # int32, like cum: no conversion of cum per step
    # The owners of this step's slots are the pairs from q0 (the first pair whose tiles reach
    # past first_slot) on. Read per_step pairs from q_start <= q0 (earlier pairs own no slot
    # here; the start is clamped so the slice fits), mark each pair's first slot, and take a
    # running maximum.
    q0 = jnp.searchsorted(cum, first_slot, side="right").astype(jnp.int32)
    q_start = jnp.minimum(q0, layout.n_slice)
    cum_local = jax.lax.dynamic_slice(cum, (q_start,), (per_step,))
    start_local = cum_local - jax.lax.dynamic_slice(tiles_of, (q_start,), (per_step,))
    start_local = jnp.clip(start_local - first_slot, 0, per_step)
    owner = jnp.zeros(per_step + 1, jnp.int32).at[start_local].max(local_index)
    q = q_start + jax.lax.associative_scan(jnp.maximum, owner[:per_step])
    slots = first_slot + local_index
    pair = compact[q]
    offset, valid = place(pair, slots - (cum[q] - tiles_of[q]))
    valid = valid & (slots < layout.n_tiles)[:, None]
    # Clipping changes no slot that holds a tile; it keeps the unused ones in bounds.
    start = jnp.clip(pixels.half_cut + pixels.nearest[pair] + offset, 0, pixels.stride - width)
    mu_t, *coefficients_t = (x[pair][:, None] for x in pixels.per_pair)
    wl_tile = jax.lax.gather(
        pixels.padded_wavelength_aa, start[:, None], _WINDOW_GATHER, (width,), mode=_IN_BOUNDS
    )
    x = (wl_tile - mu_t).astype(pixels.compute_dtype)
    contrib = jnp.where(valid, contribution(x, *coefficients_t), 0.0)
    target = (pair // pixels.n_lines) * pixels.stride + start
    return jax.lax.scatter_add(
        total,
        target[:, None],
        contrib,
        _WINDOW_SCATTER,
        indices_are_sorted=False,
        unique_indices=False,
        mode=_IN_BOUNDS,
    )


def _blocked_scan(total, add_step, n_steps: int, per_step: int, n_tiles):
    """Run ``add_step(total, k)`` for k = 0 ... n_steps - 1, skipping steps past the last
    tile. Each skipped step still costs a scan iteration, so the steps run as blocks of about
    sqrt(n_steps), and blocks past the last tile are skipped whole."""
    block = math.isqrt(n_steps - 1) + 1
    n_blocks = -(-n_steps // block)
    skip = lambda t: t  # noqa: E731

    def step(total, k):
        return jax.lax.cond(k * per_step < n_tiles, lambda t: add_step(t, k), skip, total)

    def run_block(total, b):
        def inner(total, i):
            return step(total, b * block + i), None

        def run(total):
            return jax.lax.scan(jax.checkpoint(inner), total, jnp.arange(block))[0]

        return jax.lax.cond(b * block * per_step < n_tiles, run, skip, total), None

    blocks = jnp.arange(n_blocks, dtype=jnp.int32)
    return jax.lax.scan(jax.checkpoint(run_block), total, blocks)[0]


def _add_stream(
    total, stream: int, tiles: _Tiles, place, contribution, width, per_step, bound, pixels: _Pixels
):
    """Stage 5: add one stream's tiles (0 core, 1 wing) of ``width`` pixels, ``per_step`` per
    scan step; ``bound`` (static) bounds the stream's tiles."""
    per_step = min(per_step, bound)
    layout = _compact_pairs(
        tiles.counts[stream], tiles.running[stream], tiles.running[2 + stream], per_step
    )
    add_step = partial(
        _add_tiles,
        layout=layout,
        place=place,
        contribution=contribution,
        width=width,
        per_step=per_step,
        pixels=pixels,
    )
    return _blocked_scan(total, add_step, -(-bound // per_step), per_step, layout.n_tiles)


def _ln_flux(
    plan: ForwardPlan,
    center,
    ln_amplitude,
    ln_sigma,
    ln_gamma,
    mask=None,
    chunk_elements: int | None = None,
):
    """:meth:`ForwardPlan.ln_flux`, traced: the stages in order."""
    wavelength_aa = jnp.asarray(plan.wavelength_aa, jnp.float64)
    center = jnp.asarray(center, jnp.float64)
    window_cap, pixel_hint = plan.window_cap, plan.pixel_hint
    batched = center.ndim == 2
    if not batched:
        center, ln_amplitude, ln_sigma, ln_gamma = (
            jnp.asarray(x)[None] for x in (center, ln_amplitude, ln_sigma, ln_gamma)
        )
        mask = None if mask is None else jnp.asarray(mask)[None]
        window_cap = None if window_cap is None else jnp.asarray(window_cap)[None]
        pixel_hint = None if pixel_hint is None else jnp.asarray(pixel_hint)[None]
    n_batch, n_lines = center.shape
    n_pix = wavelength_aa.shape[0]
    tile, compute_dtype = plan.tile, plan.compute_dtype
    if n_lines == 0:
        total = jnp.zeros((n_batch, n_pix), compute_dtype)
        return total if batched else total[0]
    shape = (n_batch, n_lines)
    mask = jnp.ones(shape, bool) if mask is None else jnp.broadcast_to(mask, shape)

    mu, coefficients = _line_constants(
        wavelength_aa, center, ln_amplitude, ln_sigma, ln_gamma, mask, plan
    )
    nearest, window, core_lo, core_hi = _windows(
        wavelength_aa, mu, coefficients, mask, window_cap, pixel_hint, plan
    )
    flat = lambda x: x.reshape(-1)  # noqa: E731
    window = flat(window)
    tiles = _tile_layout(window, flat(core_lo), flat(core_hi), flat(mask) & (window > 0), tile)

    elements = chunk_elements or default_chunk_elements()
    bound = n_batch * (plan.max_tiles or default_max_tiles(n_lines, plan.wing_cut, tile))
    _check_tile_numbering(bound, n_batch, tile, elements)
    half_cut = plan.wing_cut // 2
    stride = n_pix + plan.wing_cut + tile
    pixels = _Pixels(
        jnp.asarray(plan.padded_wavelength_aa, jnp.float64),
        flat(nearest),
        (flat(mu), *(flat(c) for c in coefficients)),
        half_cut,
        stride,
        n_lines,
        compute_dtype,
    )
    form = _line_form(plan.line_form, compute_dtype)
    core, wing = (
        (_voigt_core, _voigt_wing) if plan.profile == _VOIGT else (_mixture_core, _mixture_wing)
    )
    core_tile = max(1, tile // _CORE_TILE_DIVISOR)
    total = jnp.zeros((n_batch * stride,), compute_dtype)
    total = _add_stream(
        total,
        0,
        tiles,
        partial(_place_core, tiles, core_tile),
        partial(core, form),
        core_tile,
        max(1, elements // core_tile // _CORE_STEP_DIVISOR),
        bound * (tile // core_tile),
        pixels,
    )
    total = _add_stream(
        total,
        1,
        tiles,
        partial(_place_wing, tiles, tile),
        partial(wing, form),
        tile,
        max(1, elements // tile),
        bound,
        pixels,
    )
    # Stage 6: drop the padding.
    total = total.reshape(n_batch, stride)[:, half_cut : half_cut + n_pix]
    return total if batched else total[0]


_ln_flux_jit = eqx.filter_jit(_ln_flux)


@partial(
    jax.jit,
    static_argnames=(
        "wing_cut",
        "profile",
        "line_form",
        "compute_dtype",
        "flux_tolerance",
        "max_tiles",
        "tile",
        "chunk_elements",
    ),
)
def ln_flux(
    wavelength_aa,
    center,
    ln_amplitude,
    ln_sigma,
    ln_gamma,
    mask=None,
    window_cap=None,
    pixel_hint=None,
    *,
    wing_cut: int = DEFAULT_WING_CUT,
    profile: str = "pseudo_voigt",
    line_form: str = "absorption",
    compute_dtype=jnp.float64,
    flux_tolerance: float | None = None,
    max_tiles: int | None = None,
    tile: int = DEFAULT_TILE,
    chunk_elements: int | None = None,
    padded_wavelength_aa=None,
):
    """Natural log of the model flux, shape (n_pix,), or (n_batch, n_pix) for a batch.

    The easy call: it makes a :class:`ForwardPlan` of its arguments every time. A caller that
    evaluates the same pixels many times builds one with :meth:`ForwardPlan.build` (window
    caps, tile bound, pixel hints and padded wavelengths, once) and calls its ``ln_flux``.

    Args:
        wavelength_aa: strictly increasing wavelengths, float64 (n_pix,).
        center: line centres in A, float64 (n_lines,), or (n_batch, n_lines) for a batch of
            spectra on the same pixels.
        ln_amplitude, ln_sigma, ln_gamma: ln a, ln sigma (A), ln gamma (A), shaped as ``center``.
        mask: optional bool, shaped as ``center``; False lines contribute nothing and cost
            nothing.
        window_cap: optional int (broadcastable to ``center``): per-line window limit in
            pixels (never above ``wing_cut``). Traced values are fine.
        pixel_hint: optional int (broadcastable to ``center``): a pixel near each centre, to
            find the nearest pixels faster (see :func:`_nearest_pixel`); the result does not
            depend on it.
        wing_cut: window width in pixels (every line's window when ``flux_tolerance`` is None,
            as the paper; the largest window otherwise).
        profile: profile name (see :mod:`jblase.profiles`).
        line_form: one of :data:`LINE_FORMS` (the module docstring).
        compute_dtype: dtype of the profile arithmetic (float64, or float32 for speed); the
            result is in it.
        flux_tolerance: adaptive windows: each line's window is the smallest multiple of
            ``tile`` pixels outside which its absorption stays below 5% of this (from its
            current parameters, outside the gradient; at most ``wing_cut`` and
            ``window_cap``). The flux then differs from the ``wing_cut`` windows by about this
            at most, and steps by far less when a window gains or loses a tile.
        max_tiles: static upper bound on the tiles of one spectrum (default: every line with
            ``wing_cut`` pixels). Tiles beyond it would be dropped, so pass a true bound, e.g.
            the sum of ``ceil(window_cap / tile)``.
        tile: pixels per tile.
        chunk_elements: tiles x tile pixels per scan step (default about 256k on CPU, 8M on
            accelerators), over the whole batch.
        padded_wavelength_aa: optional ``pad_wavelength(wavelength_aa, wing_cut, tile)``,
            computed once by a caller that evaluates the same pixels many times.

    Jitted and differentiable in every line parameter. Pass a batch as a leading axis rather
    than through ``jax.vmap``: under ``vmap`` the skipped steps become selects and cost full
    price.
    """
    _check_line_form(line_form)
    wavelength_aa = jnp.asarray(wavelength_aa, jnp.float64)
    center = jnp.asarray(center, jnp.float64)
    if center.shape[-1] == 0:
        return jnp.zeros((*center.shape[:-1], wavelength_aa.shape[0]), compute_dtype)
    if padded_wavelength_aa is None:
        padded_wavelength_aa = pad_wavelength(wavelength_aa, wing_cut, tile)
    plan = ForwardPlan(
        wavelength_aa,
        jnp.asarray(padded_wavelength_aa, jnp.float64),
        window_cap,
        pixel_hint,
        max_tiles=max_tiles,
        wing_cut=wing_cut,
        tile=tile,
        profile=profile,
        line_form=line_form,
        compute_dtype=compute_dtype,
        flux_tolerance=flux_tolerance,
    )
    return _ln_flux(plan, center, ln_amplitude, ln_sigma, ln_gamma, mask, chunk_elements)


def synthesize(
    wavelength_aa,
    center,
    ln_amplitude,
    ln_sigma,
    ln_gamma,
    mask=None,
    *,
    wing_cut: int = DEFAULT_WING_CUT,
    profile: str = "pseudo_voigt",
    line_form: str = "absorption",
    compute_dtype=jnp.float64,
    flux_tolerance: float | None = None,
    chunk_elements: int | None = None,
):
    """Model flux (normalised, in (0, 1]) on ``wavelength_aa``, shape (n_pix,) or batched.

    Arguments as :func:`ln_flux`. Jitted, differentiable in every line parameter.
    """
    return jnp.exp(
        ln_flux(
            wavelength_aa,
            center,
            ln_amplitude,
            ln_sigma,
            ln_gamma,
            mask,
            wing_cut=wing_cut,
            profile=profile,
            line_form=line_form,
            compute_dtype=compute_dtype,
            flux_tolerance=flux_tolerance,
            chunk_elements=chunk_elements,
        )
    )


def synthesize_lines(wavelength_aa, lines: LineList, **kwargs):
    """:func:`synthesize` for a :class:`~jblase.linelist.LineList` (one list, not a batch)."""
    return synthesize(
        wavelength_aa,
        lines.center,
        lines.ln_amplitude,
        lines.ln_sigma,
        lines.ln_gamma,
        lines.mask,
        **kwargs,
    )


# --------------------------------------------------------------------------- adaptive windows
def required_half_width_aa(ln_amplitude, ln_sigma, ln_gamma, profile: str, tolerance: float):
    """Distance (A) beyond which one line's absorption a V(x) stays below ``tolerance``.

    NumPy, float64, shape as the inputs. Lorentzian wing: c_l / (h^2 + x^2) < tol / 2;
    Gaussian wing: c_g exp(-k x^2) < tol / 2 (both from the per-line mixture coefficients, or
    the Voigt's envelope, see :func:`_envelope`).
    """
    coefficients = _line_coefficients(
        jnp.asarray(ln_amplitude, jnp.float64),
        jnp.asarray(ln_sigma, jnp.float64),
        jnp.asarray(ln_gamma, jnp.float64),
        1.0,
        profile,
        jnp.float64,
    )
    return np.asarray(_half_width(*_envelope(coefficients, profile), tolerance))


def window_px(
    wavelength_aa,
    center,
    ln_amplitude,
    ln_sigma,
    ln_gamma,
    *,
    wing_cut: int = DEFAULT_WING_CUT,
    profile: str = "pseudo_voigt",
    flux_tolerance: float = DEFAULT_FLUX_TOLERANCE,
    tile: int = DEFAULT_TILE,
    margin: float = 1.0,
) -> np.ndarray:
    """Adaptive window (pixels) of each line, as :func:`ln_flux` chooses it; NumPy, eager.

    Args:
        center, ln_amplitude, ln_sigma, ln_gamma: line parameters, any common shape.
        flux_tolerance, tile, wing_cut: as :func:`ln_flux`.
        margin: factor on the half-width (headroom for parameters that will change).

    Returns:
        int32 windows shaped as ``center``, multiples of ``tile`` up to ``wing_cut``.
    """
    wl = np.asarray(wavelength_aa, np.float64)
    coefficients = _line_coefficients(
        *(jnp.asarray(x, jnp.float64) for x in (ln_amplitude, ln_sigma, ln_gamma)),
        1.0,
        profile,
        jnp.float64,
    )
    _, pixel_step = _nearest_pixel(jnp.asarray(wl), jnp.asarray(center, jnp.float64))
    window = _adaptive_window(
        _envelope(coefficients, profile), pixel_step, flux_tolerance, tile, wing_cut, margin
    )
    return np.asarray(window)
