"""Cloning (pipeline step 3): tune detected Voigt lines so their product matches a spectrum.

One spectrum (:func:`clone_spectrum`) or many grid spectra at once (:func:`clone_batch`). The
loss is the mean squared error over the active region (pixels more than 60 A inside either end),
minimised with optax Adam (or AMSGrad, as the original code) over ln a, ln sigma, ln gamma and,
by default, the centres. The whole epoch loop is one compiled ``lax.scan``. A batch of spectra
is one program on the forward model's batch axis: line lists are padded to a common length with
a mask (padded lines cost nothing), each spectrum's loss depends only on its own lines, and Adam
acts element by element, so every spectrum trains exactly as it would alone. Compiled once per
(batch size, padded line count, epochs per segment, tile bound).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jblase._checks import check_spectrum
from jblase._compiled import release_if_crowded
from jblase._devices import BATCHED, REPLICATED, batch_mesh
from jblase.detect import LOSS_BUFFER_AA, active_region, detect_lines
from jblase.forward import (
    DEFAULT_FLUX_TOLERANCE,
    DEFAULT_WING_CUT,
    LINE_FORMS,
    ForwardPlan,
    synthesize_lines,
)
from jblase.identity import IDENTITY_KEYS_PER_AA, identity_keys
from jblase.linelist import LineList, stack_line_lists
from jblase.profiles import get_profile

__all__ = [
    "CloneResult",
    "CloneSettings",
    "add_residual_lines",
    "clone_batch",
    "clone_lines",
    "clone_lines_many",
    "clone_many",
    "clone_spectrum",
    "loss_weight",
]

OPTIMIZERS = ("adam", "amsgrad")
#: Learning-rate schedules over a clone's epochs (see :attr:`CloneSettings.lr_schedule`).
LR_SCHEDULES = ("constant", "cosine", "exponential", "warmup_cosine")
#: Final learning rate of the decaying schedules, as a fraction of ``learning_rate``.
_FINAL_LR_FRACTION = 0.01


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
    #: Adaptive windows (see :func:`jblase.forward.ln_flux`): each line gets the smallest
    #: window its current wings need for the model to stay within about this of the
    #: ``wing_cut`` windows. None: ``wing_cut`` for every line, exactly as the paper.
    flux_tolerance: float | None = DEFAULT_FLUX_TOLERANCE
    #: Centres are tuned as ``center + center_scale_aa * shift``: Adam then moves them by about
    #: learning_rate * center_scale_aa (0.005 A, a third of a PHOENIX pixel) per epoch.
    center_scale_aa: float = 0.1
    #: Residual-driven line addition: after each pass, lines are detected in data / model (at
    #: ``residual_prominence``), added, and every line is refitted for ``epochs`` more
    #: epochs; this many rounds. 0 is the paper's single pass. A pseudo-Voigt fits a
    #: saturated core or a blend poorly, and the lines this adds absorb what it misses.
    residual_rounds: int = 1
    residual_prominence: float = 0.002
    #: Learning rate over the epochs: ``"constant"`` (the paper's), ``"cosine"`` (cosine
    #: decay from ``learning_rate`` to 1% of it at the last epoch), ``"exponential"`` (the
    #: same end points, geometric), ``"warmup_cosine"`` (linear rise from 10% over the first
    #: 5% of the epochs, then the cosine). Written to clone files only when not
    #: ``"constant"``, so settings stored before it existed still compare equal.
    lr_schedule: str = "constant"
    #: A residual line is added only this many pixels or more from every line the spectrum
    #: already has (0: anywhere). Where a line's core is under-fitted its residual peaks on
    #: the line itself; a second line there fits the point but splits one physical line in
    #: two whose shares drift from grid point to grid point (propagation adds lines level
    #: after level), which interpolation between points then mixes. Written to clone files
    #: only when not 0.
    residual_min_separation_px: float = 0.0
    #: How a line makes flux (:data:`jblase.forward.LINE_FORMS`): ``"absorption"`` (1 - a V,
    #: the paper's) or ``"optical_depth"`` (exp(-a V)). Written to clone files only when not
    #: ``"absorption"``; the manifold and generator take it from there.
    line_form: str = "absorption"

    def __post_init__(self):
        get_profile(self.profile)  # "unknown profile ..." for a bad name
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.compute_dtype not in ("float32", "float64"):
            raise ValueError(
                f"compute_dtype must be float32 or float64, got {self.compute_dtype!r}"
            )
        if self.flux_tolerance is not None and not self.flux_tolerance > 0:
            raise ValueError(f"flux_tolerance must be positive or None, got {self.flux_tolerance}")
        if self.line_form not in LINE_FORMS:
            raise ValueError(f"line_form must be one of {LINE_FORMS}, got {self.line_form!r}")
        if self.residual_min_separation_px < 0:
            raise ValueError(
                f"residual_min_separation_px must be >= 0, got {self.residual_min_separation_px}"
            )
        if self.residual_rounds < 0 or not self.residual_prominence > 0:
            raise ValueError(
                f"need residual_rounds >= 0 and residual_prominence > 0; got "
                f"{self.residual_rounds}, {self.residual_prominence}"
            )
        if self.epochs < 0 or self.wing_cut < 1 or not self.learning_rate > 0:
            raise ValueError(
                f"need epochs >= 0, wing_cut >= 1 and learning_rate > 0; got {self.epochs}, "
                f"{self.wing_cut}, {self.learning_rate}"
            )

    def as_dict(self) -> dict:
        settings = dict(self.__dict__)
        for name in _OMITTED_AT_DEFAULT:
            if settings[name] == getattr(CloneSettings, name):
                del settings[name]
        return settings

    @classmethod
    def from_dict(cls, stored: dict) -> CloneSettings:
        """Settings as stored by :meth:`as_dict`; keys that older versions did not store take
        the value those versions used (a single pass: no residual rounds)."""
        unknown = set(stored) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown clone settings {sorted(unknown)} (a newer jblase?)")
        return cls(**{**_LEGACY_SETTINGS, **stored})


#: What clone settings stored before a field existed meant (see CloneSettings.from_dict).
_LEGACY_SETTINGS = {"residual_rounds": 0}
#: Fields added after clone files were first written: left out of the stored settings while at
#: their default, so files written before them still compare equal.
_OMITTED_AT_DEFAULT = ("lr_schedule", "residual_min_separation_px", "line_form")


@dataclass
class CloneResult:
    """A cloned spectrum.

    Attributes:
        lines: the tuned lines (a compact :class:`LineList`, all ``mask`` True).
        rms: RMS residual over the active region after cloning (normalised flux).
        rms_initial: the same before cloning, with the detection guesses.
        loss_history: mean squared error at the start of each epoch, shape (epochs * passes,)
            (passes: 1 plus the residual rounds that added lines).
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


def _learning_rate(settings: CloneSettings):
    """The learning rate (a float) or schedule (epoch -> rate) of ``settings``."""
    lr, epochs, kind = settings.learning_rate, max(settings.epochs, 1), settings.lr_schedule
    end = _FINAL_LR_FRACTION * lr
    if kind == "cosine":
        return optax.cosine_decay_schedule(lr, epochs, alpha=_FINAL_LR_FRACTION)
    if kind == "exponential":
        return optax.exponential_decay(lr, epochs, _FINAL_LR_FRACTION)
    if kind == "warmup_cosine":
        warmup = max(1, epochs // 20)
        return optax.warmup_cosine_decay_schedule(0.1 * lr, lr, warmup, epochs, end)
    return lr


def _make_optimizer(settings: CloneSettings) -> optax.GradientTransformation:
    lr = _learning_rate(settings)
    return optax.amsgrad(lr) if settings.optimizer == "amsgrad" else optax.adam(lr)


def _segment_length(epochs: int, longest: int = 25) -> int:
    """Largest divisor of ``epochs`` up to ``longest``: equal segments, one compilation."""
    return max(d for d in range(1, min(epochs, longest) + 1) if epochs % d == 0)


def _mse(params, fixed, plan: ForwardPlan, flux, weight, mask, settings: CloneSettings):
    """Mean squared error of each spectrum of the batch, shape (n_batch,)."""
    center = _center(params, fixed, settings)
    ln_model = plan.ln_flux(
        center, params["ln_amplitude"], params["ln_sigma"], params["ln_gamma"], mask
    )
    resid = jnp.exp(ln_model.astype(jnp.float64)) - flux
    return jnp.sum(weight * resid * resid, axis=-1) / jnp.sum(weight)


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


def _segment(params, opt_state, fixed, plan, flux, weight, mask, *, settings, n_steps):
    """``n_steps`` Adam epochs for a batch; returns (params, opt_state, losses (n_batch, n))."""
    optimizer = _make_optimizer(settings)

    def total_loss(p):
        mse = _mse(p, fixed, plan, flux, weight, mask, settings)
        return jnp.sum(mse), mse

    def epoch(carry, _):
        p, s = carry
        (_, mse), grads = jax.value_and_grad(total_loss, has_aux=True)(p)
        updates, s = optimizer.update(grads, s, p)
        return (optax.apply_updates(p, updates), s), mse

    (params, opt_state), losses = jax.lax.scan(epoch, (params, opt_state), None, length=n_steps)
    return params, opt_state, losses.T


_run_segment = jax.jit(_segment, static_argnames=("settings", "n_steps"))
_batched_mse = jax.jit(_mse, static_argnames=("settings",))


def _batch_spec(x):
    """Arrays with a batch axis (every per-spectrum array is 2-D or more: params, Adam's
    moments, fluxes, masks, window caps) split over the mesh; the rest (wavelengths, the loss
    weight, Adam's step count) replicated."""
    return BATCHED if jnp.ndim(x) >= 2 else REPLICATED


def _sharded(fn, mesh, out_specs):
    """``fn`` (a function of the training arrays) under ``jax.shard_map`` over ``mesh``: each
    device trains its share of the spectra (their losses and gradients are independent)."""

    def run(*args):
        in_specs = jax.tree_util.tree_map(_batch_spec, args)
        return jax.shard_map(
            fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs(*args), check_vma=False
        )(*args)

    return run


@partial(jax.jit, static_argnames=("settings", "n_steps", "mesh"))
def _run_segment_sharded(
    params, opt_state, fixed, plan, flux, weight, mask, *, settings, n_steps, mesh
):
    def out_specs(params, opt_state, *_):
        spec = partial(jax.tree_util.tree_map, _batch_spec)
        return spec(params), spec(opt_state), BATCHED

    fn = partial(_segment, settings=settings, n_steps=n_steps)
    return _sharded(fn, mesh, out_specs)(params, opt_state, fixed, plan, flux, weight, mask)


@partial(jax.jit, static_argnames=("settings", "mesh"))
def _batched_mse_sharded(params, fixed, plan, flux, weight, mask, *, settings, mesh):
    fn = partial(_mse, settings=settings)
    return _sharded(fn, mesh, lambda *_: BATCHED)(params, fixed, plan, flux, weight, mask)


def _training_mesh(n_batch: int):
    """A one-axis mesh over every local device when there are several and they divide the
    batch (:func:`clone_lines_many` rounds its batches up to a multiple of them); else None."""
    n_devices = len(jax.local_devices())
    if n_devices < 2 or n_batch % n_devices:
        return None
    return batch_mesh()


_init_optimizer = jax.jit(
    lambda params, settings: _make_optimizer(settings).init(params),
    static_argnames=("settings",),
)


def loss_weight(wavelength: np.ndarray) -> np.ndarray:
    """The cloning loss's pixels (the active region, :func:`jblase.detect.active_region`) as a
    bool mask (n_pix,); ``ValueError`` if the range is too short to hold any."""
    weight = active_region(wavelength)
    if not weight.any():
        wl = np.asarray(wavelength)
        raise ValueError(
            f"the spectrum covers {wl[0]:.3f}-{wl[-1]:.3f} A, too short for the cloning loss, "
            f"which leaves out {LOSS_BUFFER_AA:g} A at each end: use a range wider than "
            f"{2 * LOSS_BUFFER_AA:g} A"
        )
    return weight


def _train(
    wavelength: np.ndarray,
    flux: np.ndarray,
    lines: LineList,
    settings: CloneSettings,
    progress: tqdm | None,
):
    """Train a batch (axis 0) of padded line lists; return (lines, history, mse0, mse)."""
    weight = jnp.asarray(loss_weight(wavelength), jnp.float64)
    fl = jnp.asarray(flux)
    params, fixed = _split(lines, settings.tune_centers)
    plans = _TrainingPlans(wavelength, lines, settings)
    mesh = _training_mesh(flux.shape[0])
    kw = dict(settings=settings) if mesh is None else dict(settings=settings, mesh=mesh)
    batched_mse = _batched_mse if mesh is None else _batched_mse_sharded
    run_segment = _run_segment if mesh is None else _run_segment_sharded
    mse0 = batched_mse(params, fixed, plans.update(params, fixed), fl, weight, lines.mask, **kw)
    history = []
    if settings.epochs:
        opt_state = _init_optimizer(params, settings)
        n_steps = _segment_length(settings.epochs)
        for _ in range(settings.epochs // n_steps):
            params, opt_state, losses = run_segment(
                params,
                opt_state,
                fixed,
                plans.update(params, fixed),
                fl,
                weight,
                lines.mask,
                n_steps=n_steps,
                **kw,
            )
            history.append(np.asarray(losses))
            if progress is not None:
                progress.update(n_steps)
    mse = batched_mse(params, fixed, plans.update(params, fixed), fl, weight, lines.mask, **kw)
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


class _TrainingPlans:
    """The forward plans of a training batch's segments (:class:`jblase.forward.ForwardPlan`).

    Adaptive windows follow the parameters at every epoch (inside the compiled loop), but the
    number of scan steps must be static: so each training segment's plan caps every line's
    window at its need for the current parameters with a margin (2 on the half-width at the
    start, 1.25 later), caps only grow (each plan starts from the last one's), and the tile
    bound (the largest sum of tiles over the batch) is rounded up to a few sizes, so the
    compiled step is reused across segments. Without a tolerance every line has ``wing_cut``
    pixels. The pixel hints are those of the initial centres.
    """

    def __init__(self, wavelength, lines: LineList, settings: CloneSettings):
        self.wavelength = np.asarray(wavelength)
        self.mask = np.asarray(lines.mask)
        self.hint_center = lines.center
        self.settings = settings
        self.plan: ForwardPlan | None = None

    def update(self, params, fixed) -> ForwardPlan:
        """The plan for ``params`` (arrays (n_batch, n_lines))."""
        s = self.settings
        cover = None
        if s.flux_tolerance is not None:
            current = (_center(params, fixed, s), *(params[k] for k in _WIDTH_KEYS))
            cover = tuple(np.asarray(x)[..., None] for x in current)
        self.plan = ForwardPlan.build(
            self.wavelength,
            cover,
            mask=self.mask,
            hint_center=self.hint_center,
            window_cap=None if self.plan is None else np.asarray(self.plan.window_cap),
            margin=2.0 if self.plan is None else 1.25,
            round_tiles=_bucket_length,
            wing_cut=s.wing_cut,
            profile=s.profile,
            line_form=s.line_form,
            compute_dtype=s.compute_dtype,
            flux_tolerance=s.flux_tolerance,
        )
        return self.plan


#: The tuned parameters that set a line's window, besides its centre.
_WIDTH_KEYS = ("ln_amplitude", "ln_sigma", "ln_gamma")


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
    return _clone_passes(wl, flux[None], [lines], settings, progress=progress)[0]


def _clone_passes(
    wl: np.ndarray,
    fluxes: np.ndarray,
    initial: list[LineList],
    settings: CloneSettings,
    progress: bool = False,
) -> list[CloneResult]:
    """Train one batch of spectra: the first pass, then up to ``settings.residual_rounds``
    rounds of residual-driven line addition, each a full training pass of every line. A
    spectrum that gains no line in a round stops there (another pass would only restart Adam
    on converged lines): it may still ride along in the batch, but its result is the one it
    had, so every spectrum ends exactly as it would alone."""
    n_pass = 1 + settings.residual_rounds
    n = len(initial)
    bar = tqdm(total=settings.epochs * n_pass, desc="cloning", unit="epoch", disable=not progress)
    lists, active = list(initial), [True] * n
    history: list[list[np.ndarray]] = [[] for _ in range(n)]
    mse0, mse = np.zeros(n), np.zeros(n)
    with bar:
        for k in range(n_pass):
            if k:
                grown = [
                    add_residual_lines(wl, f, ll, settings) if a else ll
                    for f, ll, a in zip(fluxes, lists, active, strict=True)
                ]
                active = [len(g) > len(ll) for g, ll in zip(grown, lists, strict=True)]
                if not any(active):
                    bar.update(settings.epochs * (n_pass - k))
                    break
                lists = grown
            length = _bucket_length(max(len(ll) for ll in lists) + 1)  # + a masked sentinel
            batch = stack_line_lists(lists, length=length)
            tuned, losses, first_mse, last_mse = _train(wl, fluxes, batch, settings, bar)
            if k == 0:
                mse0 = first_mse
            for i in range(n):
                if active[i]:
                    lists[i] = _unbatch(tuned, i)
                    history[i].append(losses[i])
                    mse[i] = last_mse[i]
    return [
        CloneResult(
            lists[i],
            float(np.sqrt(mse[i])),
            float(np.sqrt(mse0[i])),
            np.concatenate(history[i]) if history[i] else np.zeros(0),
            settings,
        )
        for i in range(n)
    ]


def add_residual_lines(
    wavelength_aa: np.ndarray,
    normalized_flux: np.ndarray,
    lines: LineList,
    settings: CloneSettings,
) -> LineList:
    """``lines`` plus the lines detected in data / model at ``settings.residual_prominence``.

    The ratio is capped at 1 (only missing absorption can be added); the new lines get the
    detector's initial guesses and identities (their pre-optimisation centres rounded to
    0.01 A), moved by 0.001 A steps where one would repeat an identity of the spectrum.
    """
    padded = lines.pad(_bucket_length(len(lines) + 1))  # a few compiled shapes, not one each
    model = np.asarray(
        synthesize_lines(
            wavelength_aa,
            padded,
            wing_cut=settings.wing_cut,
            profile=settings.profile,
            line_form=settings.line_form,
            flux_tolerance=settings.flux_tolerance,
        )
    )
    ratio = np.minimum(normalized_flux / np.maximum(model, 1e-300), 1.0)
    new = detect_lines(wavelength_aa, ratio, prominence=settings.residual_prominence)
    if settings.residual_min_separation_px > 0 and len(new) and len(lines):
        new = _apart_from(new, np.asarray(lines.center), wavelength_aa, settings)
    old_keys = identity_keys(lines.identity_center)
    new_keys = identity_keys(new.identity_center)
    taken = set(old_keys.tolist())
    for i, key in enumerate(new_keys):
        while key in taken:
            key += 1
        taken.add(int(key))
        new_keys[i] = key
    fields = ("center", "ln_amplitude", "ln_sigma", "ln_gamma")
    joined = {f: np.r_[np.asarray(getattr(lines, f)), np.asarray(getattr(new, f))] for f in fields}
    identity = np.r_[old_keys, new_keys] / IDENTITY_KEYS_PER_AA
    order = np.argsort(joined["center"], kind="stable")
    return LineList(**{f: v[order] for f, v in joined.items()}, identity_center=identity[order])


def _apart_from(
    new: LineList, centers: np.ndarray, wavelength_aa: np.ndarray, settings: CloneSettings
) -> LineList:
    """The lines of ``new`` at least ``residual_min_separation_px`` local pixel widths from
    every one of ``centers`` (A)."""
    c = np.sort(np.asarray(centers, np.float64))
    x = np.asarray(new.center, np.float64)
    right = np.clip(np.searchsorted(c, x), 0, c.size - 1)
    left = np.clip(right - 1, 0, c.size - 1)
    gap = np.minimum(np.abs(x - c[left]), np.abs(x - c[right]))
    px = np.clip(np.searchsorted(wavelength_aa, x), 1, wavelength_aa.size - 1)
    pixel = wavelength_aa[px] - wavelength_aa[px - 1]
    keep = np.flatnonzero(gap >= settings.residual_min_separation_px * pixel)
    fields = ("center", "ln_amplitude", "ln_sigma", "ln_gamma", "identity_center")
    return LineList(**{f: np.asarray(getattr(new, f))[keep] for f in fields})


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
    residual_rounds: int = 1,
    residual_prominence: float = 0.002,
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
        profile: ``"pseudo_voigt"`` (paper eq. 2), ``"blase"`` (original code's variant) or
            ``"voigt"`` (the exact Voigt profile).
        optimizer: ``"adam"`` or ``"amsgrad"`` (what the original code used).
        compute_dtype: ``"float64"`` or ``"float32"`` profile arithmetic (offsets stay float64).
        flux_tolerance: adaptive line windows within about this of ``wing_cut`` windows
            (normalised flux); ``None`` gives every line ``wing_cut`` pixels, as the paper.
        residual_rounds, residual_prominence: rounds of residual-driven line addition and
            their detection threshold (see :class:`CloneSettings`); 0 rounds is the paper's
            single pass.
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
        residual_rounds=residual_rounds,
        residual_prominence=residual_prominence,
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
    residual_rounds: int = 1,
    residual_prominence: float = 0.002,
    progress: bool = True,
    on_result: Callable[[int, CloneResult], None] | None = None,
) -> list[CloneResult]:
    """Clone many spectra on one wavelength grid, ``batch_size`` at a time in one program.

    Spectra are sorted by detected line count and batched in that order; each batch is padded
    to a bucketed line count (masked lines change nothing and cost next to nothing), and a
    short last batch is filled with copies so every batch has one compiled shape. Results are
    identical, to optimiser tolerance, to :func:`clone_spectrum` on each spectrum.

    With several local devices (GPUs, or CPU devices forced with
    ``XLA_FLAGS=--xla_force_host_platform_device_count=N``), ``batch_size`` is rounded up to a
    multiple of their number and each batch is split over them by a named sharding of the
    batch axis (``jax.shard_map`` over a one-axis mesh ``"batch"``): each device trains its
    share, with the single-device results.

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
        residual_rounds=residual_rounds,
        residual_prominence=residual_prominence,
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
    return clone_lines_many(
        wl,
        fluxes,
        detected,
        settings,
        batch_size=batch_size,
        progress=progress,
        on_result=on_result,
    )


def clone_lines_many(
    wavelength: np.ndarray,
    normalized_fluxes: np.ndarray,
    initial: list[LineList],
    settings: CloneSettings,
    *,
    batch_size: int = 8,
    progress: bool = True,
    on_result: Callable[[int, CloneResult], None] | None = None,
    full_batches: bool = False,
) -> list[CloneResult]:
    """Tune given initial line lists, one per spectrum, ``batch_size`` spectra per program.

    The batched twin of :func:`clone_lines` (``initial[i]`` starts spectrum ``i``; identities
    are kept). Spectra are batched in order of line count, as :func:`clone_batch` does.

    Args:
        wavelength: vacuum A, float64 (n_pix,), strictly increasing.
        normalized_fluxes: (n_spectra, n_pix) normalised fluxes.
        initial: n_spectra line lists (compact, all ``mask`` True).
        settings, batch_size, progress, on_result: as :func:`clone_many`.
        full_batches: run fewer than ``batch_size`` spectra as a full batch too (the last one
            repeated): for callers with many small calls, one compiled shape instead of one
            per count (each spectrum still ends as it would alone).
    """
    wl = np.asarray(wavelength, np.float64)
    fluxes = np.asarray(normalized_fluxes, np.float64)
    if len(initial) != fluxes.shape[0]:
        raise ValueError(f"{len(initial)} initial line lists for {fluxes.shape[0]} spectra")
    order = np.argsort([len(d) for d in initial], kind="stable")
    batch_size = batch_size if full_batches else min(batch_size, len(order))
    n_devices = len(jax.local_devices())
    if n_devices > 1:  # every device a share of each batch (the filling copies cost nothing more)
        batch_size = -(-batch_size // n_devices) * n_devices
    results: list[CloneResult | None] = [None] * len(order)
    bar = tqdm(total=len(order), desc="cloning", unit="spectrum", disable=not progress)
    with bar:
        for start in range(0, len(order), batch_size):
            idx = list(order[start : start + batch_size])
            filled = idx + [idx[-1]] * (batch_size - len(idx))
            release_if_crowded()  # a grid's many batch shapes can exhaust the mapping limit
            done = _clone_passes(wl, fluxes[filled], [initial[i] for i in filled], settings)
            for k, i in enumerate(idx):
                results[i] = done[k]
                if on_result is not None:
                    on_result(int(i), done[k])
                bar.update(1)
    return results  # type: ignore[return-value]
