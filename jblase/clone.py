"""Cloning (pipeline step 3): tune detected Voigt lines so their product matches a spectrum.

One spectrum (:func:`clone_spectrum`) or many grid spectra at once (:func:`clone_batch`). The
loss is the mean squared error over the active region (pixels more than 60 A inside either end),
minimised with optax Adam (or AMSGrad, as the original code) over ln a, ln sigma, ln gamma and,
by default, the centres. The whole epoch loop is one compiled ``lax.scan``; the batched form
``vmap``s it across spectra whose line lists are padded to a common length with a mask, grouping
spectra of similar line counts so padding wastes little work. Compiled once per
(batch size, padded line count, epochs per segment).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jblase._checks import check_spectrum
from jblase.detect import active_region, detect_lines
from jblase.forward import (
    DEFAULT_FLUX_TOLERANCE,
    DEFAULT_WING_CUT,
    WINDOW_SIZES,
    _window_choice,
    default_chunk_elements,
    ln_flux_grouped,
)
from jblase.linelist import LineList, stack_line_lists

__all__ = [
    "CloneResult",
    "CloneSettings",
    "clone_batch",
    "clone_lines",
    "clone_many",
    "clone_spectrum",
]

OPTIMIZERS = ("adam", "amsgrad")


@dataclass(frozen=True)
class CloneSettings:
    """Settings of a clone; stored next to every cloned line list."""

    prominence: float = 0.005
    wing_cut: int = DEFAULT_WING_CUT
    epochs: int = 100
    learning_rate: float = 0.05
    tune_centers: bool = True
    profile: str = "pseudo_voigt"
    optimizer: str = "adam"
    compute_dtype: str = "float64"
    #: Adaptive windows (see :func:`jblase.forward.window_groups`): each line gets the
    #: smallest window its wings need for the model to stay within about this of the
    #: ``wing_cut`` windows; regrouped every training segment. None: ``wing_cut`` for every
    #: line, exactly as the paper.
    flux_tolerance: float | None = DEFAULT_FLUX_TOLERANCE
    #: Centres are tuned as ``center + center_scale_aa * shift``: Adam then moves them by about
    #: learning_rate * center_scale_aa (0.005 A, a third of a PHOENIX pixel) per epoch.
    center_scale_aa: float = 0.1

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.compute_dtype not in ("float32", "float64"):
            raise ValueError(
                f"compute_dtype must be float32 or float64, got {self.compute_dtype!r}"
            )
        if self.flux_tolerance is not None and not self.flux_tolerance > 0:
            raise ValueError(f"flux_tolerance must be positive or None, got {self.flux_tolerance}")
        if self.epochs < 0 or self.wing_cut < 1 or not self.learning_rate > 0:
            raise ValueError(
                f"need epochs >= 0, wing_cut >= 1 and learning_rate > 0; got {self.epochs}, "
                f"{self.wing_cut}, {self.learning_rate}"
            )

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class CloneResult:
    """A cloned spectrum.

    Attributes:
        lines: the tuned lines (a compact :class:`LineList`, all ``mask`` True).
        rms: RMS residual over the active region after cloning (normalised flux).
        rms_initial: the same before cloning, with the detection guesses.
        loss_history: mean squared error at the start of each epoch, shape (epochs,).
        settings: the :class:`CloneSettings` used.
    """

    lines: LineList
    rms: float
    rms_initial: float
    loss_history: np.ndarray
    settings: CloneSettings = field(default_factory=CloneSettings)

    @property
    def n_lines(self) -> int:
        return self.lines.n_lines


def _make_optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
    return optax.amsgrad(learning_rate) if name == "amsgrad" else optax.adam(learning_rate)


def _segment_length(epochs: int, longest: int = 25) -> int:
    """Largest divisor of ``epochs`` up to ``longest``: equal segments, one compilation."""
    return max(d for d in range(1, min(epochs, longest) + 1) if epochs % d == 0)


def _mse(
    params, fixed, wavelength, flux, weight, mask, settings: CloneSettings, chunk_size, windows
):
    center = _center(params, fixed, settings)
    ln_model = ln_flux_grouped(
        wavelength,
        center,
        params["ln_amplitude"],
        params["ln_sigma"],
        params["ln_gamma"],
        mask,
        tuple(zip(windows, fixed["window_idx"], strict=True)),
        profile=settings.profile,
        chunk_elements=chunk_size,
        compute_dtype=jnp.dtype(settings.compute_dtype),
    )
    resid = jnp.exp(ln_model.astype(jnp.float64)) - flux
    return jnp.sum(weight * resid * resid) / jnp.sum(weight)


def _center(params, fixed, settings: CloneSettings):
    if not settings.tune_centers:
        return fixed["center"]
    return fixed["center"] + settings.center_scale_aa * params["center_shift"]


def _split(lines: LineList, tune_centers: bool):
    params = {
        "ln_amplitude": lines.ln_amplitude,
        "ln_sigma": lines.ln_sigma,
        "ln_gamma": lines.ln_gamma,
    }
    fixed = {"center": lines.center}
    if tune_centers:
        params["center_shift"] = jnp.zeros_like(lines.center)
    return params, fixed


@partial(jax.jit, static_argnames=("settings", "n_steps", "chunk_size", "windows"))
def _run_segment(
    params,
    opt_state,
    fixed,
    wavelength,
    flux,
    weight,
    mask,
    *,
    settings,
    n_steps,
    chunk_size,
    windows,
):
    """``n_steps`` Adam epochs for one spectrum; returns (params, opt_state, losses)."""
    optimizer = _make_optimizer(settings.optimizer, settings.learning_rate)
    loss_and_grad = jax.value_and_grad(_mse)

    def epoch(carry, _):
        p, s = carry
        loss, grads = loss_and_grad(
            p, fixed, wavelength, flux, weight, mask, settings, chunk_size, windows
        )
        updates, s = optimizer.update(grads, s, p)
        return (optax.apply_updates(p, updates), s), loss

    (params, opt_state), losses = jax.lax.scan(epoch, (params, opt_state), None, length=n_steps)
    return params, opt_state, losses


@partial(jax.jit, static_argnames=("settings", "n_steps", "chunk_size", "windows"))
def _batched_segment(
    params,
    opt_state,
    fixed,
    wavelength,
    flux,
    weight,
    mask,
    *,
    settings,
    n_steps,
    chunk_size,
    windows,
):
    run = partial(
        _run_segment, settings=settings, n_steps=n_steps, chunk_size=chunk_size, windows=windows
    )
    return jax.vmap(run, in_axes=(0, 0, 0, None, 0, None, 0))(
        params, opt_state, fixed, wavelength, flux, weight, mask
    )


@partial(jax.jit, static_argnames=("settings", "chunk_size", "windows"))
def _batched_mse(params, fixed, wavelength, flux, weight, mask, *, settings, chunk_size, windows):
    f = partial(_mse, settings=settings, chunk_size=chunk_size, windows=windows)
    return jax.vmap(f, in_axes=(0, 0, None, 0, None, 0))(
        params, fixed, wavelength, flux, weight, mask
    )


_init_batched = jax.jit(
    lambda params, name, lr: jax.vmap(_make_optimizer(name, lr).init)(params),
    static_argnames=("name", "lr"),
)


def _train(
    wavelength: np.ndarray,
    flux: np.ndarray,
    lines: LineList,
    settings: CloneSettings,
    chunk_size: int,
    progress: tqdm | None,
):
    """Train a batch (axis 0) of padded line lists; return (lines, history, mse0, mse)."""
    weight = jnp.asarray(active_region(wavelength), jnp.float64)
    wl = jnp.asarray(wavelength)
    fl = jnp.asarray(flux)
    params, fixed = _split(lines, settings.tune_centers)

    state = None

    def regroup(params):
        """Window groups for the current parameters (fixed ``wing_cut`` if no tolerance)."""
        nonlocal state
        windows, idx, state = _window_groups(wavelength, params, fixed, lines.mask, settings, state)
        return windows, {**fixed, "window_idx": idx}

    windows, fixed_w = regroup(params)
    kw = dict(settings=settings, chunk_size=chunk_size)
    mse0 = _batched_mse(params, fixed_w, wl, fl, weight, lines.mask, windows=windows, **kw)
    history = []
    if settings.epochs:
        opt_state = _init_batched(params, settings.optimizer, settings.learning_rate)
        n_steps = _segment_length(settings.epochs)
        for _ in range(settings.epochs // n_steps):
            windows, fixed_w = regroup(params)
            params, opt_state, losses = _batched_segment(
                params,
                opt_state,
                fixed_w,
                wl,
                fl,
                weight,
                lines.mask,
                n_steps=n_steps,
                windows=windows,
                **kw,
            )
            history.append(np.asarray(losses))
            if progress is not None:
                progress.update(n_steps)
    windows, fixed_w = regroup(params)
    mse = _batched_mse(params, fixed_w, wl, fl, weight, lines.mask, windows=windows, **kw)
    center = _center(params, fixed, settings)
    tuned = LineList(
        center=center,
        ln_amplitude=params["ln_amplitude"],
        ln_sigma=params["ln_sigma"],
        ln_gamma=params["ln_gamma"],
        identity_center=lines.identity_center,
        mask=lines.mask,
    )
    losses = np.concatenate(history, axis=-1) if history else np.zeros((flux.shape[0], 0))
    return tuned, losses, np.asarray(mse0), np.asarray(mse)


@dataclass
class _Windows:
    """Window assignment of a training batch, kept across segments so shapes rarely change."""

    choice: np.ndarray  # (batch, n_lines) index into ``sizes``; -1 for masked lines
    capacity: dict  # window -> slots per spectrum


def _window_groups(wavelength, params, fixed, mask, settings: CloneSettings, state=None):
    """(static windows, per-spectrum line indices, state) for a batch of padded line lists.

    With ``settings.flux_tolerance`` None every line gets ``wing_cut`` pixels (the paper).
    Otherwise lines are grouped by the window their current wings need: a margin of 2 on the
    half-width at the start, lines only ever move to wider windows, and group capacities only
    grow (bucketed), so the compiled training step is reused across segments.
    """
    mask = np.asarray(mask)
    n_batch, n_lines = mask.shape
    if settings.flux_tolerance is None:
        idx = np.broadcast_to(np.arange(n_lines, dtype=np.int32), (n_batch, n_lines))
        return (settings.wing_cut,), (jnp.asarray(idx),), None
    sizes, choice = _window_choice(
        wavelength,
        np.asarray(_center(params, fixed, settings)),
        np.asarray(params["ln_amplitude"]),
        np.asarray(params["ln_sigma"]),
        np.asarray(params["ln_gamma"]),
        mask,
        settings.wing_cut,
        settings.profile,
        settings.flux_tolerance,
        WINDOW_SIZES,
        2.0 if state is None else 1.25,
    )
    capacity = {} if state is None else dict(state.capacity)
    if state is not None:
        choice = np.maximum(choice, state.choice)
    windows, indices = [], []
    for i, window in enumerate(sizes):
        members = [np.flatnonzero(row == i) for row in choice]
        count = max(len(m) for m in members)
        if count == 0 and window not in capacity:
            continue
        capacity[window] = max(capacity.get(window, 0), _bucket_length(count))
        idx = np.full((n_batch, capacity[window]), n_lines - 1, dtype=np.int32)  # masked slot
        for b, m in enumerate(members):
            idx[b, : len(m)] = m
        windows.append(window)
        indices.append(jnp.asarray(idx))
    return tuple(windows), tuple(indices), _Windows(choice, capacity)


def _chunk_for(batch: int) -> int:
    """Window elements per scan step and spectrum, so a vmapped step holds about
    :func:`~jblase.forward.default_chunk_elements` (1M on CPU, 8M on accelerators)."""
    return max(1, default_chunk_elements() // batch)


def _unbatch(tuned: LineList, i: int) -> LineList:
    return jax.tree_util.tree_map(lambda x: np.asarray(x[i]), tuned).compact()


def clone_lines(
    wavelength_aa: np.ndarray,
    normalized_flux: np.ndarray,
    lines: LineList,
    settings: CloneSettings | None = None,
    progress: bool = False,
) -> CloneResult:
    """Tune a given initial line list against one spectrum (the full-control form)."""
    settings = settings or CloneSettings()
    wl, flux = check_spectrum(wavelength_aa, normalized_flux, name="normalized_flux")
    batch = stack_line_lists([lines], length=len(lines) + 1)  # + a masked sentinel slot
    bar = tqdm(total=settings.epochs, desc="cloning", unit="epoch", disable=not progress)
    with bar:
        tuned, losses, mse0, mse = _train(wl, flux[None], batch, settings, _chunk_for(1), bar)
    return CloneResult(
        _unbatch(tuned, 0), float(np.sqrt(mse[0])), float(np.sqrt(mse0[0])), losses[0], settings
    )


def clone_spectrum(
    wavelength: np.ndarray,
    normalized_flux: np.ndarray,
    prominence: float = 0.005,
    wing_cut: int = DEFAULT_WING_CUT,
    epochs: int = 100,
    learning_rate: float = 0.05,
    tune_centers: bool = True,
    *,
    profile: str = "pseudo_voigt",
    optimizer: str = "adam",
    compute_dtype: str = "float64",
    flux_tolerance: float | None = DEFAULT_FLUX_TOLERANCE,
    progress: bool = False,
) -> CloneResult:
    """Detect the lines of one normalised spectrum and clone them.

    Args:
        wavelength: vacuum wavelengths in A, strictly increasing, float64 (n_pix,).
        normalized_flux: continuum-normalised flux (n_pix,).
        prominence: detection threshold in normalised flux.
        wing_cut: pixels per line window (6000 in the paper).
        epochs, learning_rate: Adam schedule (100 epochs at 0.05 in the paper).
        tune_centers: also tune line centres.
        profile: ``"pseudo_voigt"`` (paper eq. 2) or ``"blase"`` (original code's variant).
        optimizer: ``"adam"`` or ``"amsgrad"`` (what the original code used).
        compute_dtype: ``"float64"`` or ``"float32"`` profile arithmetic (offsets stay float64).
        flux_tolerance: adaptive line windows within about this of ``wing_cut`` windows
            (normalised flux); ``None`` gives every line ``wing_cut`` pixels, as the paper.
        progress: show a progress bar over epochs.
    """
    settings = CloneSettings(
        prominence,
        wing_cut,
        epochs,
        learning_rate,
        tune_centers,
        profile,
        optimizer,
        compute_dtype,
        flux_tolerance,
    )
    lines = detect_lines(wavelength, normalized_flux, prominence=prominence)
    return clone_lines(wavelength, normalized_flux, lines, settings, progress=progress)


def _bucket_length(n: int) -> int:
    """Round a line count up to one of a few sizes (2^k * {1, 1.25, 1.5, 1.75}), at least 16."""
    n = max(n, 16)
    base = 2 ** math.floor(math.log2(n))
    for factor in (1.0, 1.25, 1.5, 1.75, 2.0):
        if base * factor >= n:
            return int(base * factor)
    return 2 * base  # pragma: no cover


def clone_batch(
    wavelength: np.ndarray,
    normalized_fluxes: np.ndarray,
    prominence: float = 0.005,
    wing_cut: int = DEFAULT_WING_CUT,
    epochs: int = 100,
    learning_rate: float = 0.05,
    tune_centers: bool = True,
    *,
    batch_size: int = 8,
    profile: str = "pseudo_voigt",
    optimizer: str = "adam",
    compute_dtype: str = "float64",
    flux_tolerance: float | None = DEFAULT_FLUX_TOLERANCE,
    progress: bool = True,
    on_result: Callable[[int, CloneResult], None] | None = None,
) -> list[CloneResult]:
    """Clone many spectra on one wavelength grid, ``batch_size`` at a time under ``vmap``.

    Spectra are sorted by detected line count and batched in that order; each batch is padded
    to a bucketed line count (masked lines cost compute but change nothing), and a short last
    batch is filled with copies so every batch has one compiled shape. Results are identical,
    to optimiser tolerance, to :func:`clone_spectrum` on each spectrum.

    Args:
        normalized_fluxes: (n_spectra, n_pix) normalised fluxes on ``wavelength``.
        on_result: called as ``on_result(index, result)`` as soon as each spectrum is done,
            e.g. to write it to disk, so an interrupted run loses only the batch in flight.
        Other arguments as :func:`clone_spectrum`.

    Returns:
        One :class:`CloneResult` per input spectrum, in input order.
    """
    settings = CloneSettings(
        prominence,
        wing_cut,
        epochs,
        learning_rate,
        tune_centers,
        profile,
        optimizer,
        compute_dtype,
        flux_tolerance,
    )
    return clone_many(
        wavelength,
        normalized_fluxes,
        settings,
        batch_size=batch_size,
        progress=progress,
        on_result=on_result,
    )


def clone_many(
    wavelength: np.ndarray,
    normalized_fluxes: np.ndarray,
    settings: CloneSettings,
    *,
    batch_size: int = 8,
    progress: bool = True,
    on_result: Callable[[int, CloneResult], None] | None = None,
) -> list[CloneResult]:
    """:func:`clone_batch` with a :class:`CloneSettings` (the full-control form)."""
    prominence = settings.prominence
    fluxes = np.asarray(normalized_fluxes, dtype=np.float64)
    if fluxes.ndim != 2 or fluxes.shape[0] == 0:
        raise ValueError(
            f"normalized_fluxes must be (n_spectra, n_pix) with n_spectra > 0, got {fluxes.shape}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    wl = None
    for i, f in enumerate(fluxes):
        try:
            wl, _ = check_spectrum(wavelength, f, name=f"normalized_fluxes[{i}]")
        except ValueError as err:
            raise ValueError(f"spectrum {i}: {err}") from None
    detected = [detect_lines(wl, f, prominence=prominence) for f in fluxes]
    order = np.argsort([len(d) for d in detected], kind="stable")
    batch_size = min(batch_size, len(order))
    chunk = _chunk_for(batch_size)
    results: list[CloneResult | None] = [None] * len(order)
    bar = tqdm(total=len(order), desc="cloning", unit="spectrum", disable=not progress)
    with bar:
        for start in range(0, len(order), batch_size):
            idx = list(order[start : start + batch_size])
            filled = idx + [idx[-1]] * (batch_size - len(idx))
            length = _bucket_length(max(len(detected[i]) for i in idx) + 1)
            lines = stack_line_lists([detected[i] for i in filled], length=length)
            tuned, losses, mse0, mse = _train(wl, fluxes[filled], lines, settings, chunk, None)
            for k, i in enumerate(idx):
                res = CloneResult(
                    _unbatch(tuned, k),
                    float(np.sqrt(mse[k])),
                    float(np.sqrt(mse0[k])),
                    losses[k],
                    settings,
                )
                results[i] = res
                if on_result is not None:
                    on_result(int(i), res)
                bar.update(1)
    return results  # type: ignore[return-value]
