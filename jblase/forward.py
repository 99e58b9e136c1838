"""Forward model: line parameters + wavelengths -> normalised flux, windowed and chunked.

Used by cloning (step 3) and by the generator (step 5). The model spectrum is a product of
absorption lines, evaluated in log space::

    flux(lambda) = exp( sum_j ln(1 - clip(a_j V_j(lambda - mu_j), 0, 1 - 1e-9)) )

where line j only touches a window of ``wing_cut`` pixels centred on the pixel nearest its
centre (pixels of the window beyond either end of the spectrum are dropped). Each window is read
and added back as one contiguous slice. Lines are processed ``chunk_size`` at a time inside a
``lax.scan``, so memory stays at about ``chunk_size * wing_cut`` elements whatever the number of
lines; masked (absent) lines are moved behind the active ones and chunks holding none are
skipped. Parameters may carry a leading batch axis (several spectra on the same pixels).

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
    "DEFAULT_WING_CUT",
    "WINDOW_SIZES",
    "ln_flux",
    "ln_flux_grouped",
    "required_half_width_aa",
    "synthesize",
    "synthesize_lines",
    "window_groups",
]

DEFAULT_WING_CUT = 6000
#: Largest absorption a_j V_j kept before the log (DESIGN.md step 3).
MAX_ABSORPTION = 1.0 - 1e-9
#: Elements (lines x window pixels) evaluated per scan step when ``chunk_size`` is not given.
_ELEMENTS_PER_CHUNK = 1 << 20
#: The same on GPUs/TPUs, where each scan step costs kernel launches: fewer, larger steps.
_ELEMENTS_PER_CHUNK_ACCELERATOR = 1 << 23
#: Gather / scatter of one contiguous window (the last axis) per line start index.
_WINDOW_GATHER = jax.lax.GatherDimensionNumbers(
    offset_dims=(1,), collapsed_slice_dims=(), start_index_map=(0,)
)
_WINDOW_SCATTER = jax.lax.ScatterDimensionNumbers(
    update_window_dims=(1,), inserted_window_dims=(), scatter_dims_to_operand_dims=(0,)
)


def default_chunk_elements(cpu: int = _ELEMENTS_PER_CHUNK, accelerator: int | None = None) -> int:
    """Lines x window pixels per scan step: ``cpu`` on a CPU, ``accelerator`` (default 8M)
    on a GPU/TPU."""
    if jax.default_backend() == "cpu":
        return cpu
    return accelerator or _ELEMENTS_PER_CHUNK_ACCELERATOR


def _chunking(
    n_lines: int, wing_cut: int, chunk_size: int | None, chunk_elements: int
) -> tuple[int, int]:
    """(n_chunks, chunk_size) with balanced chunks covering ``n_lines``: ``chunk_size`` lines,
    or as many as fit ``chunk_elements`` window elements."""
    cap = chunk_size or max(1, chunk_elements // wing_cut)
    n_chunks = max(1, -(-n_lines // cap))
    return n_chunks, max(1, -(-n_lines // n_chunks))


def _line_coefficients(ln_amplitude, ln_sigma, ln_gamma, weight, profile: str, dtype):
    """Per-line constants so that a V(x) = c_l / (h2 + x^2) + c_g exp(-x^2 k_g)."""
    eta, hwhm, gauss_sigma = get_components(profile)(jnp.exp(ln_sigma), jnp.exp(ln_gamma))
    amplitude = jnp.exp(ln_amplitude) * weight
    c_l = amplitude * eta * hwhm / np.pi
    c_g = amplitude * (1.0 - eta) / (np.sqrt(2.0 * np.pi) * gauss_sigma)
    k_g = 0.5 / gauss_sigma**2
    return tuple(c.astype(dtype) for c in (c_l, hwhm * hwhm, c_g, k_g))


def _nearest_pixel(wavelength_aa, center):
    """Index of the pixel nearest to each centre (ties to the lower pixel)."""
    right = jnp.clip(jnp.searchsorted(wavelength_aa, center), 1, wavelength_aa.shape[0] - 1)
    closer_left = (center - wavelength_aa[right - 1]) <= (wavelength_aa[right] - center)
    return jnp.where(closer_left, right - 1, right)


@partial(
    jax.jit,
    static_argnames=("wing_cut", "profile", "chunk_size", "compute_dtype", "chunk_elements"),
)
def ln_flux(
    wavelength_aa,
    center,
    ln_amplitude,
    ln_sigma,
    ln_gamma,
    mask=None,
    *,
    wing_cut: int = DEFAULT_WING_CUT,
    profile: str = "pseudo_voigt",
    chunk_size: int | None = None,
    compute_dtype=jnp.float64,
    chunk_elements: int | None = None,
):
    """Natural log of the model flux, shape (n_pix,), or (n_batch, n_pix) for a batch.

    Args:
        wavelength_aa: strictly increasing wavelengths, float64 (n_pix,).
        center: line centres in A, float64 (n_lines,), or (n_batch, n_lines) for a batch of
            spectra on the same pixels.
        ln_amplitude, ln_sigma, ln_gamma: ln a, ln sigma (A), ln gamma (A), shaped as ``center``.
        mask: optional bool, shaped as ``center``; False lines contribute nothing.
        wing_cut: window width in pixels, centred on each line.
        profile: profile name (see :mod:`jblase.profiles`).
        chunk_size: lines per scan step (default: about 1M window elements per step).
        compute_dtype: dtype of the profile arithmetic.
        chunk_elements: lines x window elements per step, over the whole batch, when
            ``chunk_size`` is not given (default about 1M; divide it by the batch size under
            ``vmap``).

    Each spectrum's active lines are moved to the front, and chunks where no spectrum of the
    batch has an active line are skipped. Pass a batch as a leading axis rather than through
    ``jax.vmap``: under ``vmap`` the skip becomes a select and absent lines cost full price.
    """
    wavelength_aa = jnp.asarray(wavelength_aa, jnp.float64)
    center = jnp.asarray(center, jnp.float64)
    batched = center.ndim == 2
    if not batched:
        center, ln_amplitude, ln_sigma, ln_gamma = (
            x[None] for x in (center, ln_amplitude, ln_sigma, ln_gamma)
        )
        mask = None if mask is None else mask[None]
    n_batch, n_lines = center.shape
    n_pix = wavelength_aa.shape[0]
    if mask is None:
        mask = jnp.ones((n_batch, n_lines), dtype=bool)
    if n_lines == 0:
        total = jnp.zeros((n_batch, n_pix), compute_dtype)
        return total if batched else total[0]
    elements = chunk_elements or default_chunk_elements()
    n_chunks, size = _chunking(n_lines, wing_cut, chunk_size, max(1, elements // n_batch))
    n_pad = n_chunks * size - n_lines

    # Padding and masked lines get finite, harmless parameters and zero weight, so gradients
    # through them stay finite (the "double where" pattern).
    safe = lambda x, fill: jnp.where(mask, x, fill)  # noqa: E731
    columns = (
        (safe(center, wavelength_aa[0]), wavelength_aa[0]),
        (safe(ln_amplitude, -30.0), -30.0),
        (safe(ln_sigma, -3.0), -3.0),
        (safe(ln_gamma, -3.0), -3.0),
        (mask.astype(jnp.float64), 0.0),
    )
    # Active lines first in every spectrum, so chunks where no spectrum of the batch has an
    # active line are skipped by a real branch (lax.cond on an unbatched predicate).
    padded_mask = jnp.concatenate([mask, jnp.zeros((n_batch, n_pad), bool)], axis=1)
    order = jnp.argsort(~padded_mask, axis=1, stable=True)

    def _prep(x, fill):
        x = jnp.concatenate([x, jnp.full((n_batch, n_pad), fill, x.dtype)], axis=1)
        x = jnp.take_along_axis(x, order, axis=1)
        return jnp.moveaxis(x.reshape(n_batch, n_chunks, size), 1, 0)

    chunks = tuple(_prep(x, fill) for x, fill in columns)
    n_active = jnp.max(jnp.sum(mask, axis=1))
    half = wing_cut // 2
    window = jnp.arange(wing_cut) - half
    # Edge values (not sentinels) in the padding keep x, and so every gradient, finite there.
    padded_wl = jnp.concatenate(
        [
            jnp.full((half,), wavelength_aa[0]),
            wavelength_aa,
            jnp.full((wing_cut - half,), wavelength_aa[-1]),
        ]
    )
    max_abs = min(MAX_ABSORPTION, 1.0 - 2.0 * float(jnp.finfo(compute_dtype).eps))

    def add_one(total, mu, ln_a, ln_s, ln_g, w):
        """Add one spectrum's chunk of lines to its padded ln-flux (n_pix + wing_cut,)."""
        c_l, h2, c_g, k_g = _line_coefficients(ln_a, ln_s, ln_g, w, profile, compute_dtype)
        nearest = _nearest_pixel(wavelength_aa, jax.lax.stop_gradient(mu))
        pixel = nearest[:, None] + window[None, :]
        inside = (pixel >= 0) & (pixel < n_pix)
        # Line i's window is padded_wl[nearest_i : nearest_i + wing_cut]: one contiguous
        # slice per line, cheaper than a gather per element.
        wl_window = jax.lax.gather(
            padded_wl,
            nearest[:, None],
            _WINDOW_GATHER,
            (wing_cut,),
            mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS,
        )
        x = (wl_window - mu[:, None]).astype(compute_dtype)
        x2 = x * x
        absorption = c_l[:, None] / (h2[:, None] + x2) + c_g[:, None] * jnp.exp(-x2 * k_g[:, None])
        contrib = jnp.log1p(-jnp.clip(absorption, 0.0, max_abs))
        contrib = jnp.where(inside, contrib, 0.0)
        # In the padded total line i's window starts at its nearest pixel. A windowed
        # scatter (one index per line) is several times faster on CPU than scattering every
        # element with its own index.
        return jax.lax.scatter_add(
            total,
            nearest[:, None],
            contrib,
            _WINDOW_SCATTER,
            indices_are_sorted=False,
            unique_indices=False,
            mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS,
        )

    add_batch = jax.vmap(add_one)

    def step(total, inputs):
        k, chunk = inputs
        skip = lambda t: t  # noqa: E731
        return jax.lax.cond(k * size < n_active, lambda t: add_batch(t, *chunk), skip, total), None

    steps = (jnp.arange(n_chunks), chunks)
    # Padded by ``half`` on the left and ``wing_cut - half`` on the right, so every window is
    # inside the array; the padding (pixels beyond the spectrum, zero contributions) is cut off.
    padded = jnp.zeros((n_batch, n_pix + wing_cut), compute_dtype)
    total, _ = jax.lax.scan(jax.checkpoint(step), padded, steps)
    total = total[:, half : half + n_pix]
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
    chunk_size: int | None = None,
    compute_dtype=jnp.float64,
):
    """Model flux (normalised, in (0, 1]) on ``wavelength_aa``, shape (n_pix,).

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
            chunk_size=chunk_size,
            compute_dtype=compute_dtype,
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
#: Window sizes (pixels) that lines are grouped into; the largest group uses ``wing_cut``.
WINDOW_SIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
#: Default flux tolerance of adaptive windows against the full ``wing_cut`` windows.
DEFAULT_FLUX_TOLERANCE = 1e-4
#: Share of the flux tolerance that one line's truncated wing may use at its window edge;
#: the rest is headroom for the wings of many lines overlapping at one pixel.
_LINE_SHARE = 0.05


def required_half_width_aa(ln_amplitude, ln_sigma, ln_gamma, profile: str, tolerance: float):
    """Distance (A) beyond which one line's absorption a V(x) stays below ``tolerance``.

    NumPy, float64, shape (n_lines,). Lorentzian wing: c_l / (h^2 + x^2) < tol / 2; Gaussian
    wing: c_g exp(-k x^2) < tol / 2 (both from the per-line mixture coefficients).
    """
    c_l, h2, c_g, k_g = (
        np.asarray(c, np.float64)
        for c in _line_coefficients(
            jnp.asarray(ln_amplitude),
            jnp.asarray(ln_sigma),
            jnp.asarray(ln_gamma),
            jnp.ones(np.shape(ln_amplitude)),
            profile,
            jnp.float64,
        )
    )
    half_tol = 0.5 * tolerance
    x2_l = c_l / half_tol - h2
    with np.errstate(divide="ignore"):
        x2_g = np.log(np.maximum(c_g, 1e-300) / half_tol) / k_g
    return np.sqrt(np.maximum(np.maximum(x2_l, x2_g), 0.0))


def window_groups(
    wavelength_aa,
    center,
    ln_amplitude,
    ln_sigma,
    ln_gamma,
    mask=None,
    *,
    wing_cut: int = DEFAULT_WING_CUT,
    profile: str = "pseudo_voigt",
    flux_tolerance: float = DEFAULT_FLUX_TOLERANCE,
    sizes: tuple[int, ...] = WINDOW_SIZES,
    margin: float = 1.0,
) -> tuple[tuple[int, np.ndarray], ...]:
    """Group lines by the window (pixels) their wings need; NumPy, outside ``jit``.

    Args:
        center, ln_amplitude, ln_sigma, ln_gamma: line parameters, shape (..., n_lines); a
            leading batch axis gives groups shared by the batch (each line slot gets the
            largest window any spectrum needs for it).
        mask: optional bool (..., n_lines); masked lines need no window.
        flux_tolerance: target max |flux - flux(wing_cut windows)| (normalised flux).
        sizes: candidate window widths; lines needing more than the largest get ``wing_cut``.
        margin: factor on the required half-width (headroom for parameters that will change).

    Returns:
        ``((window, indices), ...)`` with ``indices`` int arrays of line slots, one per
        non-empty window size, in increasing window order.
    """
    windows, choice = _window_choice(
        wavelength_aa,
        center,
        ln_amplitude,
        ln_sigma,
        ln_gamma,
        mask,
        wing_cut,
        profile,
        flux_tolerance,
        sizes,
        margin,
    )
    choice = choice.reshape(-1, choice.shape[-1]).max(axis=0)
    return tuple(
        (windows[i], np.flatnonzero(choice == i))
        for i in range(len(windows))
        if (choice == i).any()
    )


def _window_choice(
    wavelength_aa,
    center,
    ln_amplitude,
    ln_sigma,
    ln_gamma,
    mask,
    wing_cut,
    profile,
    flux_tolerance,
    sizes,
    margin,
):
    """(windows, index into windows per line (..., n_lines); -1 for masked lines)."""
    wl = np.asarray(wavelength_aa, np.float64)
    half_aa = margin * required_half_width_aa(
        ln_amplitude, ln_sigma, ln_gamma, profile, flux_tolerance * _LINE_SHARE
    )
    center = np.asarray(center, np.float64)
    nearest = np.clip(np.searchsorted(wl, center), 1, wl.size - 1)
    step = wl[nearest] - wl[nearest - 1]
    need = 2.0 * np.ceil(half_aa / step) + 2.0
    windows = sorted({int(s) for s in sizes if s < wing_cut} | {int(wing_cut)})
    choice = np.minimum(np.searchsorted(np.array(windows), need), len(windows) - 1)
    if mask is not None:
        choice = np.where(np.asarray(mask), choice, -1)
    return windows, choice


def ln_flux_grouped(
    wavelength_aa,
    center,
    ln_amplitude,
    ln_sigma,
    ln_gamma,
    mask,
    groups,
    *,
    profile: str = "pseudo_voigt",
    chunk_size: int | None = None,
    compute_dtype=jnp.float64,
    chunk_elements: int | None = None,
):
    """:func:`ln_flux` with each group of lines on its own window width (batch axis allowed).

    ``groups`` is ``((window, indices), ...)`` from :func:`window_groups`; the windows are
    static, the index arrays may be traced (their shapes are static). Lines outside every group
    contribute nothing. Jit-friendly, differentiable.
    """
    total = 0.0
    mask = jnp.ones(center.shape, bool) if mask is None else mask
    for window, idx in groups:
        idx = jnp.asarray(idx)
        total = total + ln_flux(
            wavelength_aa,
            center[..., idx],
            ln_amplitude[..., idx],
            ln_sigma[..., idx],
            ln_gamma[..., idx],
            mask[..., idx],
            wing_cut=int(window),
            profile=profile,
            chunk_size=chunk_size,
            compute_dtype=compute_dtype,
            chunk_elements=chunk_elements,
        )
    return total
