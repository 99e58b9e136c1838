"""Forward model: line parameters + wavelengths -> normalised flux, in windows of pixels.

Used by cloning (step 3) and by the generator (step 5). The model spectrum is a product of
absorption lines, evaluated in log space::

    flux(lambda) = exp( sum_j ln(1 - clip(a_j V_j(lambda - mu_j), 0, 1 - 1e-9)) )

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

Precision: ``lambda - mu`` is formed in float64 (wavelengths near 10,000 A with 0.01 A
structure); the profile arithmetic runs in ``compute_dtype`` (float64 by default, float32 for
speed where 1e-6 relative accuracy is enough).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jblase.linelist import LineList
from jblase.profiles import get_components

__all__ = [
    "DEFAULT_FLUX_TOLERANCE",
    "DEFAULT_TILE",
    "DEFAULT_WING_CUT",
    "ln_flux",
    "required_half_width_aa",
    "synthesize",
    "synthesize_lines",
    "window_px",
]

DEFAULT_WING_CUT = 6000
#: Largest absorption a_j V_j kept before the log (DESIGN.md step 3).
MAX_ABSORPTION = 1.0 - 1e-9
#: Default flux tolerance of adaptive windows against the full ``wing_cut`` windows.
DEFAULT_FLUX_TOLERANCE = 1e-4
#: Share of the flux tolerance that one line's truncated wing may use at its window edge;
#: the rest is headroom for the wings of many lines overlapping at one pixel.
_LINE_SHARE = 0.05
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


def default_chunk_elements(cpu: int = _ELEMENTS_PER_CHUNK, accelerator: int | None = None) -> int:
    """Window elements per scan step: ``cpu`` on a CPU, ``accelerator`` (default 8M) on a
    GPU/TPU."""
    if jax.default_backend() == "cpu":
        return cpu
    return accelerator or _ELEMENTS_PER_CHUNK_ACCELERATOR


def _line_coefficients(ln_amplitude, ln_sigma, ln_gamma, weight, profile: str, dtype):
    """Per-line constants so that a V(x) = c_l / (h2 + x^2) + c_g exp(-x^2 k_g)."""
    eta, hwhm, gauss_sigma = get_components(profile)(jnp.exp(ln_sigma), jnp.exp(ln_gamma))
    amplitude = jnp.exp(ln_amplitude) * weight
    c_l = amplitude * eta * hwhm / np.pi
    c_g = amplitude * (1.0 - eta) / (np.sqrt(2.0 * np.pi) * gauss_sigma)
    k_g = 0.5 / gauss_sigma**2
    return tuple(c.astype(dtype) for c in (c_l, hwhm * hwhm, c_g, k_g))


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


def default_max_tiles(n_lines: int, wing_cut: int, tile: int = DEFAULT_TILE) -> int:
    """Tiles of one spectrum when every line has the full ``wing_cut`` window."""
    return max(1, n_lines * -(-wing_cut // tile))


def tile_bound(window_cap, mask=None, tile: int = DEFAULT_TILE) -> int:
    """A ``max_tiles`` for :func:`ln_flux`: the most tiles any one spectrum's capped windows
    hold. NumPy, eager; ``window_cap`` (..., n_lines) pixels, ``mask`` optional, same shape."""
    tiles = -(-np.asarray(window_cap, np.int64) // tile)
    if mask is not None:
        tiles = np.where(mask, tiles, 0)
    return max(1, int(tiles.reshape(-1, tiles.shape[-1]).sum(axis=-1).max(initial=0)))


@partial(
    jax.jit,
    static_argnames=(
        "wing_cut",
        "profile",
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
    compute_dtype=jnp.float64,
    flux_tolerance: float | None = None,
    max_tiles: int | None = None,
    tile: int = DEFAULT_TILE,
    chunk_elements: int | None = None,
):
    """Natural log of the model flux, shape (n_pix,), or (n_batch, n_pix) for a batch.

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
        compute_dtype: dtype of the profile arithmetic.
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

    Jitted and differentiable in every line parameter. Pass a batch as a leading axis rather
    than through ``jax.vmap``: under ``vmap`` the skipped steps become selects and cost full
    price.
    """
    wavelength_aa = jnp.asarray(wavelength_aa, jnp.float64)
    center = jnp.asarray(center, jnp.float64)
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
    if n_lines == 0:
        total = jnp.zeros((n_batch, n_pix), compute_dtype)
        return total if batched else total[0]
    shape = (n_batch, n_lines)
    mask = jnp.ones(shape, bool) if mask is None else jnp.broadcast_to(mask, shape)

    # Masked lines get finite, harmless parameters and zero weight, so gradients through them
    # stay finite (the "double where" pattern).
    safe = lambda x, fill: jnp.where(mask, x, fill)  # noqa: E731
    mu = safe(center, wavelength_aa[0])
    # Per-line constants in the profile's dtype: float32 transcendentals are several times
    # cheaper on CPU, and the profile arithmetic rounds them to it anyway.
    inputs = (safe(ln_amplitude, -30.0), safe(ln_sigma, -3.0), safe(ln_gamma, -3.0), mask)
    c_l, h2, c_g, k_g = _line_coefficients(
        *(x.astype(compute_dtype) for x in inputs), profile, compute_dtype
    )
    mu_fixed = jax.lax.stop_gradient(mu)
    # Masked lines sit at the first pixel: so must their hints, or the search falls back.
    hint = None if pixel_hint is None else jnp.where(mask, pixel_hint, 0)
    nearest, pixel_step = _nearest_pixel(wavelength_aa, mu_fixed, hint)

    cap = jnp.full(shape, wing_cut, jnp.int32)
    if window_cap is not None:
        cap = jnp.minimum(cap, jnp.broadcast_to(jnp.asarray(window_cap, jnp.int32), shape))
    if flux_tolerance is None:
        window = cap
    else:
        coefficients = (jax.lax.stop_gradient(c) for c in (c_l, h2, c_g, k_g))
        half = _half_width(*coefficients, flux_tolerance * _LINE_SHARE)
        window = _window_from_half_width(half, pixel_step, tile, cap)

    # Number the tiles of present lines: pairs (spectrum, line) with a window are compacted to
    # the front (in order), and cum[q] counts the tiles of the first q + 1 of them.
    n_pairs_max = n_batch * n_lines
    present = (mask & (window > 0)).reshape(-1)
    position = _cumsum(present.astype(jnp.int32))
    n_pairs = position[-1]
    slot = jnp.where(present, position - 1, n_pairs_max)
    compact = (
        jnp.zeros(n_pairs_max, jnp.int32)
        .at[slot]
        .set(jnp.arange(n_pairs_max, dtype=jnp.int32), mode="drop")
    )
    flat = lambda x: x.reshape(-1)  # noqa: E731
    window, nearest, c_l, h2, c_g, k_g = (flat(x) for x in (window, nearest, c_l, h2, c_g, k_g))
    tiles_of = jnp.where(
        jnp.arange(n_pairs_max) < n_pairs, (window[compact] + tile - 1) // tile, 0
    ).astype(jnp.int32)
    cum = _cumsum(tiles_of)
    n_tiles = cum[-1]

    elements = chunk_elements or default_chunk_elements()
    per_step = max(1, elements // tile)
    bound = n_batch * (max_tiles or default_max_tiles(n_lines, wing_cut, tile))
    per_step = min(per_step, bound)
    n_steps = -(-bound // per_step)
    if (n_steps + 1) * per_step >= 2**31:
        raise ValueError(
            f"{bound} tiles in one call exceed the int32 tile numbering; split the batch"
        )
    # A step reads per_step consecutive compacted pairs from q0 on: pad so slices stay inside.
    pad = lambda x, v: jnp.concatenate([x, jnp.full((per_step,), v, x.dtype)])  # noqa: E731
    cum_p = pad(cum, jnp.iinfo(jnp.int32).max)
    tiles_p = pad(tiles_of, 0)
    compact_p = pad(compact, 0)
    per_pair = (flat(mu), c_l, h2, c_g, k_g)
    low = -(window // 2)

    half_cut = wing_cut // 2
    stride = half_cut + n_pix + (wing_cut - half_cut) + tile
    # Edge values (not sentinels) in the padding keep x, and so every gradient, finite there;
    # contributions that land in the padding are cut off at the end.
    padded_wl = jnp.concatenate(
        [
            jnp.full((half_cut,), wavelength_aa[0]),
            wavelength_aa,
            jnp.full((stride - half_cut - n_pix,), wavelength_aa[-1]),
        ]
    )
    in_tile = jnp.arange(tile)
    local_index = jnp.arange(per_step, dtype=jnp.int32)
    max_abs = min(MAX_ABSORPTION, 1.0 - 2.0 * float(jnp.finfo(compute_dtype).eps))

    def add_tiles(total, k):
        first_slot = k * per_step  # int32, like cum: no conversion of cum per step
        q0 = jnp.searchsorted(cum, first_slot, side="right").astype(jnp.int32)
        # Which of the pairs q0, q0 + 1, ... owns each slot of this step: mark each pair's
        # first slot, then a running maximum.
        cum_local = jax.lax.dynamic_slice(cum_p, (q0,), (per_step,))
        start_local = cum_local - jax.lax.dynamic_slice(tiles_p, (q0,), (per_step,))
        start_local = jnp.clip(start_local - first_slot, 0, per_step)
        owner = jnp.zeros(per_step + 1, jnp.int32).at[start_local].max(local_index)
        q = q0 + jax.lax.associative_scan(jnp.maximum, owner[:per_step])
        slots = first_slot + local_index
        j = slots - (cum_p[q] - tiles_p[q])  # tile number within its line's window
        pair = compact_p[q]
        offset = low[pair] + j * tile
        n_valid = jnp.where(slots < n_tiles, jnp.minimum(tile, window[pair] - j * tile), 0)
        # Clipping changes no slot that holds a tile; it keeps the unused ones in bounds.
        start = jnp.clip(half_cut + nearest[pair] + offset, 0, stride - tile)
        mu_t, c_l_t, h2_t, c_g_t, k_g_t = (x[pair][:, None] for x in per_pair)
        wl_tile = jax.lax.gather(
            padded_wl, start[:, None], _WINDOW_GATHER, (tile,), mode=_IN_BOUNDS
        )
        x = (wl_tile - mu_t).astype(compute_dtype)
        x2 = x * x
        absorption = c_l_t / (h2_t + x2) + c_g_t * jnp.exp(-x2 * k_g_t)
        contrib = jnp.log1p(-jnp.clip(absorption, 0.0, max_abs))
        contrib = jnp.where(in_tile[None, :] < n_valid[:, None], contrib, 0.0)
        target = (pair // n_lines) * stride + start
        return jax.lax.scatter_add(
            total,
            target[:, None],
            contrib,
            _WINDOW_SCATTER,
            indices_are_sorted=False,
            unique_indices=False,
            mode=_IN_BOUNDS,
        )

    def step(total, k):
        skip = lambda t: t  # noqa: E731
        return jax.lax.cond(k * per_step < n_tiles, lambda t: add_tiles(t, k), skip, total), None

    total = jnp.zeros((n_batch * stride,), compute_dtype)
    total, _ = jax.lax.scan(jax.checkpoint(step), total, jnp.arange(n_steps, dtype=jnp.int32))
    total = total.reshape(n_batch, stride)[:, half_cut : half_cut + n_pix]
    return total if batched else total[0]


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
    Gaussian wing: c_g exp(-k x^2) < tol / 2 (both from the per-line mixture coefficients).
    """
    coefficients = _line_coefficients(
        jnp.asarray(ln_amplitude, jnp.float64),
        jnp.asarray(ln_sigma, jnp.float64),
        jnp.asarray(ln_gamma, jnp.float64),
        1.0,
        profile,
        jnp.float64,
    )
    return np.asarray(_half_width(*coefficients, tolerance))


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
    half = margin * required_half_width_aa(
        ln_amplitude, ln_sigma, ln_gamma, profile, flux_tolerance * _LINE_SHARE
    )
    _, pixel_step = _nearest_pixel(jnp.asarray(wl), jnp.asarray(center, jnp.float64))
    return np.asarray(_window_from_half_width(jnp.asarray(half), pixel_step, tile, wing_cut))
