"""The spectral generator (pipeline step 5): (Teff, log g, [Fe/H]) -> normalised flux.

Interpolates every line's (centre offset, strength, ln sigma, ln gamma) over the grid
(:mod:`jblase.interp`; by default the logit of its central depth, or ln a, with a cubic spline
along Teff where the line is present around the point, a trilinear one in a where it is not:
:data:`AMPLITUDE_INTERPOLATIONS`), drops lines whose interpolated a < e^-100, synthesises the
spectrum with the windowed forward model (:mod:`jblase.forward`) and sets non-finite pixels
to 1. One jitted function of the parameters, differentiable and ``jax.vmap``-able;
:meth:`Generator.batch` evaluates a batch on the forward model's batch axis, where every
spectrum costs only its own present lines (under ``vmap`` every line's capped window costs
full price).

Precision: line centres are float64 (identity centre + interpolated float32/64 offset); the
manifold values may be float32; the profile arithmetic runs in ``compute_dtype``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jblase._checks import check_wavelength
from jblase._devices import BATCHED, batch_mesh
from jblase.detect import LOSS_BUFFER_AA
from jblase.forward import (
    DEFAULT_FLUX_TOLERANCE,
    DEFAULT_WING_CUT,
    LINE_FORMS,
    ForwardPlan,
    default_chunk_elements,
    max_batch_spectra,
)
from jblase.interp import interpolate_batch
from jblase.profiles import get_profile

__all__ = [
    "AMPLITUDE_INTERPOLATIONS",
    "AUTO_AMPLITUDE_INTERPOLATION",
    "AUTO_CUBIC_AXES",
    "LN_AMPLITUDE_CUTOFF",
    "Generator",
    "default_batch_size",
    "generator_chunk_elements",
    "resolve_interpolation",
]


#: Threads for :meth:`Generator.batch` on CPU outside ``jit`` (None: every core this process
#: may use). XLA's CPU runtime runs one such program on about one core.
BATCH_CPU_THREADS: int | None = None
#: A thread is used only for this many steps or more: starting threads and programs costs a
#: fixed time per call, so small batches ran slower threaded (a check outside the benchmarks).
BATCH_CPU_MIN_STEPS_PER_THREAD = 4


def _cpu_threads() -> int:
    if BATCH_CPU_THREADS is not None:
        return max(1, BATCH_CPU_THREADS)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _aligned_empty(shape: tuple[int, ...], alignment: int = 64) -> np.ndarray:
    """An uninitialised float64 array whose data start on an ``alignment``-byte boundary (so
    ``jax.device_put`` on CPU can use it without a copy)."""
    size = int(np.prod(shape))
    raw = np.empty(size + alignment // 8, np.float64)
    start = (-raw.ctypes.data % alignment) // 8
    return raw[start : start + size].reshape(shape)


def default_batch_size() -> int:
    """Spectra per compiled step of :meth:`Generator.batch`: 2 on CPU, 256 on GPUs/TPUs.

    A step costs each spectrum its own present lines. On 2 CPU cores, steps of 2 spectra ran
    5-10% faster per spectrum than single ones at 20,000 lines x 100,000 pixels (larger steps
    mostly add memory); on an H100 larger batches raised throughput (see
    GENERATOR_CHUNK_ELEMENTS_ACCELERATOR)."""
    return 2 if jax.default_backend() == "cpu" else 256


#: Lines whose interpolated ln a falls below this contribute nothing (DESIGN.md step 5).
LN_AMPLITUDE_CUTOFF = -100.0
#: "log": trilinear in ln a, as the paper (a line absent at any corner of a cell, ln a = -1000,
#: vanishes a hair away from the points where it was detected). "linear": trilinear in a, so a
#: line fades linearly to zero towards the grid points where it was not detected. Both
#: reproduce every grid point's clone exactly. "hybrid": trilinear in ln a inside a cell where
#: the line is present at every corner with a non-zero weight (strengths vary roughly
#: exponentially with Teff), in a elsewhere (a line fades linearly towards the corners that
#: lack it); it carries a and the presence as two more channels. The generator then steps
#: where a point crosses onto a face whose far corners lack a line (by the difference of the
#: two interpolations there). With ``log_max_depth`` (the default), a saturated line (central
#: depth a V(0) above it at some corner) also takes the a branch: its core hides its strength,
#: so its fitted a and widths trade off from node to node and their logs interpolate poorly.
#: "logit_depth": "hybrid" with the all-corners branch in logit d of the central depth
#: d = a V(0) instead of ln a (a = d / V(0) at the interpolated widths): for a weak line it is
#: ln a plus ln V(0); a strong line's depth saturates towards 1 as its opacity grows, and the
#: logit undoes that saturation, so no depth limit is needed (absorption line form only).
AMPLITUDE_INTERPOLATIONS = ("linear", "log", "hybrid", "logit_depth")
#: The modes that carry a and the presence as two more channels and switch branch per cell.
_HYBRID_MODES = ("hybrid", "logit_depth")
#: logit_depth: central depths over the ceiling D are clipped into [_DEPTH_FLOOR,
#: 1 - _DEPTH_CEILING_GAP]; a line at least (1 - gap) D deep at a corner (a clipped core among
#: them) takes the a branch in that cell.
_DEPTH_FLOOR, _DEPTH_CEILING_GAP = 1e-300, 1e-6
#: logit_depth's ``depth_ceiling="auto"`` (the default): the deepest unclipped central depth of
#: any line at any node, times this, at most 1 (:func:`auto_depth_ceiling`).
DEPTH_CEILING_MARGIN = 1.05
#: ``amplitude_interpolation="auto"`` (the default) by line form, chosen by
#: ``benchmarks/fidelity.py`` (off the grid points and at left-out nodes, on both benchmark
#: grids) and ``benchmarks/accuracy.py``: "logit_depth" for absorption lines, "hybrid" for
#: optical-depth lines (whose a V(0) is not a depth).
AUTO_AMPLITUDE_INTERPOLATION = {"absorption": "logit_depth", "optical_depth": "hybrid"}
DEFAULT_AMPLITUDE_INTERPOLATION = "auto"
#: ``cubic_axes="auto"`` (the default) by amplitude interpolation: a cubic Hermite spline
#: along Teff for the hybrid modes (their lines present over a whole four-node stencil; C1
#: there, no kink at the nodes for a fit or a sampler to sit in); trilinear for "linear" and
#: "log", which stay the previous default and the paper's mode exactly.
AUTO_CUBIC_AXES = {"hybrid": ("teff",), "logit_depth": ("teff",), "linear": (), "log": ()}
#: ``log_max_depth="auto"`` by line form: absorption lines clip at the core, so a saturated
#: one's a and widths are poorly constrained; optical-depth lines stay constrained (their
#: logs interpolate well however strong).
DEFAULT_LOG_MAX_DEPTH = {"absorption": 0.3, "optical_depth": None}
#: Grid axis names, in the order of the generator's parameters.
AXIS_NAMES = ("teff", "logg", "feh")
#: Parameter channels of the generator's values per mode.
_CHANNELS = {"linear": 4, "log": 4, "hybrid": 6, "logit_depth": 6}
#: Window elements (tiles x tile pixels) per forward-model step on CPU, over the whole batch.
GENERATOR_CHUNK_ELEMENTS_CPU = 1 << 18
#: The same on accelerators, where per-step costs dominate: at most this many over the batch,
#: and GENERATOR_CHUNK_ELEMENTS_PER_SPECTRUM_ACCELERATOR per spectrum of the batch (a step
#: evaluates all its elements, so a lone spectrum would otherwise pay a large batch's step).
#: On an H100 at paper scale (``benchmarks/throughput.py --chunk-elements``,
#: benchmarks/results/gpu_h100/): one spectrum at a time, 2^22 elements ran 254 spectra/s
#: (float32) against 68 with 2^26; batches of 256 ran 1,507 spectra/s with 2^26 and 1,872
#: with 2^28 (pass ``chunk_elements=1 << 28`` to ``Generator.batch`` for large batches of
#: large manifolds; a smaller manifold's batch of 60 would pay for the unused elements).
GENERATOR_CHUNK_ELEMENTS_ACCELERATOR = 1 << 26
GENERATOR_CHUNK_ELEMENTS_PER_SPECTRUM_ACCELERATOR = 1 << 22


def generator_chunk_elements(n_batch: int = 1) -> int:
    """Window elements (tiles x tile pixels) per forward-model step for ``n_batch`` spectra
    evaluated together, on the current backend."""
    return default_chunk_elements(
        GENERATOR_CHUNK_ELEMENTS_CPU,
        min(
            GENERATOR_CHUNK_ELEMENTS_ACCELERATOR,
            max(1, n_batch) * GENERATOR_CHUNK_ELEMENTS_PER_SPECTRUM_ACCELERATOR,
        ),
    )


class Generator(eqx.Module):
    """A differentiable spectral generator built from a line manifold.

    Attributes:
        identity_center: line identities in A, float64 (n_lines,).
        values: (n_teff, n_logg, n_feh, 4, n_lines) of (centre - identity [A], ln a,
            ln sigma [ln A], ln gamma [ln A]); float32 or float64. ``"hybrid"`` and
            ``"logit_depth"`` amplitude interpolation add a and the presence (1 or 0):
            (..., 6, n_lines).
        axes: (teff [K], logg [dex], feh [dex]) grid axes, float64, strictly increasing.
        wavelength: output wavelengths in A, float64 (n_pix,).
        wavelength_padded: ``wavelength`` plus ``pad_lo`` / ``pad_hi`` extra pixels evaluated
            and dropped, so a restricted generator sees the wings of lines just outside its
            range exactly as the full one does.
        wing_cut, profile, line_form, compute_dtype: forward-model settings (static; the
            clones' own, see :func:`jblase.forward.ln_flux`).
        amplitude_interpolation: ``"logit_depth"`` (``values[..., 1]`` holds logit a V(0);
            the default for absorption lines, :data:`AUTO_AMPLITUDE_INTERPOLATION`),
            ``"hybrid"`` (ln a; the default for optical-depth lines; see
            :data:`AMPLITUDE_INTERPOLATIONS`), ``"linear"`` (``values[..., 1]`` holds a) or
            ``"log"`` (the paper's; ``values[..., 1]`` holds ln a).
        depth_ceiling: ``"logit_depth"``: the central depth D that strong lines saturate
            towards; ``values[..., 1]`` holds logit(a V(0) / D) (see :meth:`from_arrays`; 1
            for the other modes).
        cubic_axes: grid axes (0 Teff, 1 log g, 2 [Fe/H]) along which every channel is
            interpolated by a cubic Hermite spline through four nodes instead of linearly
            (:func:`jblase.interp.interpolate`); empty: trilinear, as the paper. Line strengths
            grow roughly exponentially with Teff, which a straight line between nodes misses,
            and the spline's gradient is continuous across nodes (no kinks to trap a fit).
            :meth:`from_arrays` and :meth:`from_manifold` default to :data:`AUTO_CUBIC_AXES`
            (Teff for the hybrid modes).
            In the hybrid modes only lines on the ln a (logit d) branch at all four nodes of
            the stencil take the spline; the others stay multilinear
            (:meth:`_smooth_where_supported`).
        flux_tolerance: adaptive windows: at every call each line gets the window its
            current parameters need for the spectrum to stay within about this of the full
            ``wing_cut`` windows (normalised flux; see :func:`jblase.forward.ln_flux`). The
            flux then steps by far less than this where a window gains or loses a tile of
            pixels. ``None``: every line gets ``wing_cut`` pixels, exactly as the paper.
        plan: the forward model's plan on ``wavelength_padded``
            (:class:`jblase.forward.ForwardPlan`, built by :meth:`ForwardPlan.build
            <jblase.forward.ForwardPlan.build>`): each line's window cap (its widest need at
            any grid node with a 20% margin on the half-width; ``wing_cut`` without
            ``flux_tolerance``), the static tile bound (the caps' sum), each line's pixel hint
            (the pixel nearest its identity) and the padded wavelengths. Its ``line_form`` and
            ``compute_dtype`` follow the generator's (``dataclasses.replace(gen,
            compute_dtype=...)`` evaluates the same plan in another dtype); ``wing_cut``,
            ``profile`` and ``flux_tolerance`` must match it. Read through
            :attr:`window_cap`, :attr:`max_tiles`, :attr:`pixel_hint` and
            :attr:`window_wavelength`.
    """

    identity_center: jax.Array
    values: jax.Array
    axes: tuple[jax.Array, jax.Array, jax.Array]
    wavelength_padded: jax.Array
    pad_lo: int = eqx.field(static=True)
    pad_hi: int = eqx.field(static=True)
    wing_cut: int = eqx.field(static=True, default=DEFAULT_WING_CUT)
    profile: str = eqx.field(static=True, default="pseudo_voigt")
    line_form: str = eqx.field(static=True, default="absorption")
    compute_dtype: str = eqx.field(static=True, default="float64")
    amplitude_interpolation: str = eqx.field(static=True, default="logit_depth")
    cubic_axes: tuple[int, ...] = eqx.field(static=True, default=())
    plan: ForwardPlan | None = None
    flux_tolerance: float | None = eqx.field(static=True, default=DEFAULT_FLUX_TOLERANCE)
    #: (lo, hi) A: the wavelengths the clones were fitted on (the manifold's range less the
    #: cloning loss's 60 A at each end; set by :meth:`from_manifold`); outside it the
    #: generator lacks lines cloning left out, and inference leaves those pixels out.
    fitted_range: tuple[float, float] | None = eqx.field(static=True, default=None)
    depth_ceiling: float = eqx.field(static=True, default=1.0)

    def __check_init__(self):
        n_lines = self.identity_center.shape[0]
        grid = tuple(a.shape[0] for a in self.axes)
        get_profile(self.profile)  # "unknown profile ..." for a bad name
        if self.line_form not in LINE_FORMS:
            raise ValueError(f"line_form must be one of {LINE_FORMS}, got {self.line_form!r}")
        if self.amplitude_interpolation not in AMPLITUDE_INTERPOLATIONS:
            raise ValueError(
                f"amplitude_interpolation must be one of {AMPLITUDE_INTERPOLATIONS}, "
                f"got {self.amplitude_interpolation!r}"
            )
        if any(d not in (0, 1, 2) for d in self.cubic_axes):
            raise ValueError(f"cubic_axes must name grid axes 0, 1, 2, got {self.cubic_axes}")
        if self.amplitude_interpolation == "logit_depth" and self.line_form != "absorption":
            raise ValueError(
                "amplitude_interpolation='logit_depth' needs the absorption line form (an "
                f"optical-depth line's a V(0) is not a depth); got line_form={self.line_form!r}"
            )
        expected = (*grid, _CHANNELS[self.amplitude_interpolation], n_lines)
        if self.values.shape != expected:
            raise ValueError(f"values has shape {self.values.shape}, expected {expected}")
        if self.wavelength_padded.shape[0] <= self.pad_lo + self.pad_hi:
            raise ValueError("generator has no output pixels")
        if self.plan is None:
            raise ValueError("a Generator needs its forward plan (build it with from_arrays)")
        windows = (self.plan.wing_cut, self.plan.profile, self.plan.flux_tolerance)
        if windows != (self.wing_cut, self.profile, self.flux_tolerance):
            raise ValueError(
                f"the plan's (wing_cut, profile, flux_tolerance) {windows} differ from the "
                f"generator's {(self.wing_cut, self.profile, self.flux_tolerance)}"
            )
        if self.plan.wavelength_aa.shape != self.wavelength_padded.shape:
            raise ValueError("the plan's pixels are not wavelength_padded")

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_arrays(
        cls,
        identity_center,
        values,
        axes,
        wavelength_aa,
        *,
        wing_cut: int = DEFAULT_WING_CUT,
        profile: str = "pseudo_voigt",
        line_form: str = "absorption",
        compute_dtype: str = "float64",
        amplitude_interpolation: str = DEFAULT_AMPLITUDE_INTERPOLATION,
        flux_tolerance: float | None = DEFAULT_FLUX_TOLERANCE,
        fitted_range: tuple[float, float] | None = None,
        log_min_depth: float = 0.0,
        log_max_depth: float | None | str = "auto",
        cubic_axes: Sequence[str | int] | str = "auto",
        depth_ceiling: float | str = "auto",
    ) -> Generator:
        """Build from raw manifold arrays; ``values[..., 1]`` holds ln a (shapes and units as
        the class attributes). ``log_min_depth`` (``"hybrid"`` only): a line counts as present
        at a node for the ln a interpolation only where its central depth a V(0) is at least
        this (a weaker line's strength is barely constrained by its spectrum, so its ln a
        says little about how the line grows); ``log_max_depth``: and at most this (a
        saturated core hides how strong a line is, so its a and widths trade off from node to
        node; ``"auto"``: :data:`DEFAULT_LOG_MAX_DEPTH` for the line form, None: no limit).
        ``amplitude_interpolation``: a mode of :data:`AMPLITUDE_INTERPOLATIONS`, or ``"auto"``
        (:data:`AUTO_AMPLITUDE_INTERPOLATION` for the line form). ``cubic_axes``: axis names
        (``"teff"``, ``"logg"``, ``"feh"``) or indices, ``()`` for trilinear, or ``"auto"``
        (:data:`AUTO_CUBIC_AXES` for the mode); see the class attributes.
        ``depth_ceiling`` (``"logit_depth"`` only): the central depth D that strong lines
        saturate towards, in (0, 1]; the all-corners branch interpolates logit(d / D), and a
        line at least that deep at a corner takes the a branch there. A line formed as
        d = D k / (1 + k), ln k linear in Teff, is then interpolated exactly. ``"auto"``:
        :func:`auto_depth_ceiling` of the nodes (the deepest unclipped line times
        :data:`DEPTH_CEILING_MARGIN`, at most 1): below 1 only where no line of the grid ever
        gets deep; 1 is the plain logit of d."""
        if not (isinstance(depth_ceiling, str) and depth_ceiling == "auto"):
            if not 0.0 < float(depth_ceiling) <= 1.0:
                raise ValueError(f"depth_ceiling must be in (0, 1] or 'auto', got {depth_ceiling}")
            depth_ceiling = float(depth_ceiling)
        amplitude_interpolation, cubic_axes = resolve_interpolation(
            amplitude_interpolation, cubic_axes, line_form
        )
        wl = check_wavelength(wavelength_aa)
        identity = np.asarray(identity_center, np.float64)
        order = np.argsort(identity, kind="stable")
        identity = identity[order]
        values = np.array(values)[order]
        plan = _node_plan(
            wl,
            identity,
            values,
            wing_cut=int(wing_cut),
            profile=profile,
            line_form=line_form,
            compute_dtype=compute_dtype,
            flux_tolerance=flux_tolerance,
        )
        if amplitude_interpolation in _HYBRID_MODES:
            present = values[..., 1:2] >= LN_AMPLITUDE_CUTOFF
            # The ln a branch's presence may be stricter; the a channel keeps every line.
            log_ok = present.copy()
            if log_max_depth == "auto":
                log_max_depth = (
                    DEFAULT_LOG_MAX_DEPTH.get(line_form)
                    if amplitude_interpolation == "hybrid"
                    else None
                )
            logit = amplitude_interpolation == "logit_depth"
            if log_min_depth > 0 or log_max_depth is not None or logit:
                depth = _central_depth(values, profile)[..., None]
                if logit and depth_ceiling == "auto":
                    depth_ceiling = auto_depth_ceiling(depth[..., 0], present[..., 0])
                log_ok &= depth >= log_min_depth
                if log_max_depth is not None:
                    log_ok &= depth <= log_max_depth
                if logit:  # a core at the ceiling (or clipped) has no logit: the a branch
                    log_ok &= depth < depth_ceiling * (1.0 - _DEPTH_CEILING_GAP)
            extra = [np.where(present, np.exp(values[..., 1:2]), 0.0), log_ok]
            if logit:
                d = np.clip(depth[..., 0] / depth_ceiling, _DEPTH_FLOOR, 1.0 - _DEPTH_CEILING_GAP)
                logit_d = np.where(present[..., 0], np.log(d) - np.log1p(-d), -1000.0)
                values[..., 1] = logit_d.astype(values.dtype)
            values = np.concatenate([values, *(x.astype(values.dtype) for x in extra)], -1)
        elif amplitude_interpolation == "linear":
            values[..., 1] = np.exp(values[..., 1])
        return cls(
            identity_center=jnp.asarray(identity),
            # Grid-major, then parameter-major: a cell corner is one contiguous block, and
            # each parameter of every line a contiguous part of it.
            values=jnp.asarray(np.moveaxis(values, 0, -1)),
            axes=tuple(jnp.asarray(np.asarray(a, np.float64)) for a in axes),
            wavelength_padded=plan.wavelength_aa,
            pad_lo=0,
            pad_hi=0,
            wing_cut=int(wing_cut),
            profile=profile,
            line_form=line_form,
            compute_dtype=compute_dtype,
            amplitude_interpolation=amplitude_interpolation,
            cubic_axes=axis_indices(cubic_axes),
            plan=plan,
            flux_tolerance=flux_tolerance,
            fitted_range=fitted_range,
            depth_ceiling=depth_ceiling if amplitude_interpolation == "logit_depth" else 1.0,
        )

    @classmethod
    def from_manifold(
        cls,
        manifold,
        wl_range: tuple[float, float] | None = None,
        *,
        wing_cut: int | None = None,
        profile: str | None = None,
        compute_dtype: str = "float64",
        amplitude_interpolation: str = DEFAULT_AMPLITUDE_INTERPOLATION,
        flux_tolerance: float | None = DEFAULT_FLUX_TOLERANCE,
        log_min_depth: float = 0.0,
        log_max_depth: float | None | str = "auto",
        cubic_axes: Sequence[str | int] | str = "auto",
        depth_ceiling: float | str = "auto",
    ) -> Generator:
        """Build from a :class:`jblase.manifold.Manifold`; wing cut and profile default to the
        clone settings stored in it, so reconstructions at grid points reproduce the clones.
        ``amplitude_interpolation``, ``log_min_depth``, ``log_max_depth``, ``cubic_axes``,
        ``depth_ceiling``: as :meth:`from_arrays`."""
        settings = dict(manifold.settings)
        gen = cls.from_arrays(
            manifold.identity_center,
            manifold.params,
            manifold.axes,
            manifold.wavelength,
            wing_cut=wing_cut or int(settings.get("wing_cut", DEFAULT_WING_CUT)),
            profile=profile or settings.get("profile", "pseudo_voigt"),
            line_form=settings.get("line_form", "absorption"),
            compute_dtype=compute_dtype,
            amplitude_interpolation=amplitude_interpolation,
            flux_tolerance=flux_tolerance,
            fitted_range=_fitted_range(manifold.wavelength),
            log_min_depth=log_min_depth,
            log_max_depth=log_max_depth,
            cubic_axes=cubic_axes,
            depth_ceiling=depth_ceiling,
        )
        return gen if wl_range is None else gen.restrict(*wl_range)

    @classmethod
    def load(
        cls,
        path,
        wl_range: tuple[float, float] | None = None,
        *,
        amplitude_interpolation: str | None = None,
        **options,
    ) -> Generator:
        """The generator of the manifold file ``path`` (:meth:`jblase.manifold.Manifold.load`,
        then :meth:`from_manifold` with ``wl_range`` and ``options``; an
        ``amplitude_interpolation`` of None is the default)."""
        from jblase.manifold import Manifold  # late: the manifold module is not needed here

        return cls.from_manifold(
            Manifold.load(path),
            wl_range,
            amplitude_interpolation=amplitude_interpolation or DEFAULT_AMPLITUDE_INTERPOLATION,
            **options,
        )

    def restrict(self, wl_min: float, wl_max: float) -> Generator:
        """A generator for the pixels in [wl_min, wl_max] A that evaluates only lines that matter.

        Lines whose windows cannot reach the range are dropped, and ``wing_cut // 2`` extra
        pixels are evaluated on each side so the result equals the full generator's pixels.
        """
        wl = np.asarray(self.wavelength)
        if not wl_min < wl_max:
            raise ValueError(f"need wl_min < wl_max, got {wl_min}, {wl_max}")
        inner = np.flatnonzero((wl >= wl_min) & (wl <= wl_max))
        if inner.size < 1:
            raise ValueError(
                f"wavelength range [{wl_min}, {wl_max}] A selects no pixels of the generator's "
                f"range [{wl[0]:.3f}, {wl[-1]:.3f}] A"
            )
        full = np.asarray(self.wavelength_padded)
        first, last = inner[0] + self.pad_lo, inner[-1] + self.pad_lo
        # Lines within wing_cut/2 pixels (+ 5 A for centre offsets) can reach the range.
        reach = self.wing_cut // 2 + 1
        lo, hi = max(first - reach, 0), min(last + reach, full.size - 1)
        identity = np.asarray(self.identity_center)
        keep = (identity >= full[lo] - 5.0) & (identity <= full[hi] + 5.0)
        start = int(np.searchsorted(full, full[lo] - 5.0))
        stop = int(np.searchsorted(full, full[hi] + 5.0, side="right")) - 1
        # The caps were drawn on the full pixels: kept as they are (a line near the new edges
        # would otherwise see another pixel step there).
        plan = ForwardPlan.build(
            full[start : stop + 1],
            hint_center=identity[keep],
            window_cap=np.asarray(self.window_cap)[keep],
            wing_cut=self.wing_cut,
            profile=self.profile,
            line_form=self.line_form,
            compute_dtype=self.compute_dtype,
            flux_tolerance=self.flux_tolerance,
        )
        return Generator(
            identity_center=self.identity_center[keep],
            values=self.values[..., keep],
            axes=self.axes,
            wavelength_padded=plan.wavelength_aa,
            pad_lo=int(first - start),
            pad_hi=int(stop - last),
            wing_cut=self.wing_cut,
            profile=self.profile,
            line_form=self.line_form,
            compute_dtype=self.compute_dtype,
            amplitude_interpolation=self.amplitude_interpolation,
            cubic_axes=self.cubic_axes,
            plan=plan,
            flux_tolerance=self.flux_tolerance,
            fitted_range=self.fitted_range,
            depth_ceiling=self.depth_ceiling,
        )

    # ----------------------------------------------------------------- properties
    @property
    def wavelength(self) -> jax.Array:
        """Output wavelengths in A, float64 (n_pix,)."""
        n = self.wavelength_padded.shape[0]
        return self.wavelength_padded[self.pad_lo : n - self.pad_hi]

    @property
    def window_cap(self) -> jax.Array:
        """int32 (n_lines,): each line's largest window in pixels (the plan's)."""
        return self.plan.window_cap

    @property
    def max_tiles(self) -> int:
        """Static bound on the tiles one spectrum evaluates (the plan's)."""
        return self.plan.max_tiles

    @property
    def pixel_hint(self) -> jax.Array:
        """int32 (n_lines,): the pixel of ``wavelength_padded`` nearest each line's identity,
        where the search for its centre's pixel starts (the plan's)."""
        return self.plan.pixel_hint

    @property
    def window_wavelength(self) -> jax.Array:
        """``wavelength_padded`` as the forward model reads windows from it
        (:func:`jblase.forward.pad_wavelength`), float64; the plan's."""
        return self.plan.padded_wavelength_aa

    @property
    def n_lines(self) -> int:
        return int(self.identity_center.shape[0])

    @property
    def bounds(self) -> np.ndarray:
        """(3, 2) array of [min, max] per parameter (Teff K, log g dex, [Fe/H] dex)."""
        return np.array([[float(a[0]), float(a[-1])] for a in self.axes])

    def in_bounds(self, params) -> jax.Array:
        """True where ``params`` (..., 3) lies inside the grid (jit-friendly)."""
        p = jnp.asarray(params)
        lo = jnp.stack([a[0] for a in self.axes])
        hi = jnp.stack([a[-1] for a in self.axes])
        tol = 1e-9 * jnp.maximum(jnp.abs(hi - lo), 1.0)
        return jnp.all((p >= lo - tol) & (p <= hi + tol), axis=-1)

    def check_params(self, params) -> np.ndarray:
        """Eager check: return params as float64 (3,) or raise ValueError naming the parameter."""
        p = np.asarray(params, dtype=np.float64)
        if p.shape != (3,):
            raise ValueError(f"params must be (teff, logg, feh), got shape {p.shape}")
        for name, value, (lo, hi) in zip(("teff", "logg", "feh"), p, self.bounds, strict=True):
            tol = 1e-9 * max(hi - lo, 1.0)
            if not (np.isfinite(value) and lo - tol <= value <= hi + tol):
                raise ValueError(f"{name} = {value} is outside the grid range [{lo}, {hi}]")
        return p

    # ----------------------------------------------------------------- evaluation
    def line_parameters(self, params):
        """Interpolated (center [A] float64, ln a, ln sigma, ln gamma, mask), each (n_lines,)
        for params (3,), or (n, n_lines) for params (n, 3)."""
        theta = jnp.asarray(params, jnp.float64)
        points = jnp.atleast_2d(theta)
        hybrid = self.amplitude_interpolation in _HYBRID_MODES
        # (n, 4|6, n_lines)
        v = interpolate_batch(self.values, self.axes, points, () if hybrid else self.cubic_axes)
        if hybrid and self.cubic_axes:
            v = self._smooth_where_supported(v, points)
        v = v if theta.ndim == 2 else v[0]
        center = self.identity_center + v[..., 0, :].astype(jnp.float64)
        if self.amplitude_interpolation == "log":
            ln_a = v[..., 1, :].astype(jnp.float64)
            mask = ln_a >= LN_AMPLITUDE_CUTOFF
        else:
            amplitude = v[..., 1 if self.amplitude_interpolation == "linear" else 4, :]
            amplitude = amplitude.astype(jnp.float64)
            mask = amplitude >= np.exp(LN_AMPLITUDE_CUTOFF)
            ln_a = jnp.log(jnp.where(mask, amplitude, 1.0))
        ln_s, ln_g = (v[..., k, :].astype(jnp.float64) for k in (2, 3))
        if self.amplitude_interpolation in _HYBRID_MODES:
            # Present at every corner that carries weight: the weights sum to 1 there.
            everywhere = v[..., 5, :] >= 1.0 - 1e-6
            mask = jnp.where(everywhere, True, mask)
            branch = v[..., 1, :].astype(jnp.float64)
            if self.amplitude_interpolation == "logit_depth":
                # a = d / V(0), d = D sigmoid(logit(d / D)): ln d = ln D - softplus(-branch).
                peak = get_profile(self.profile)(0.0, jnp.exp(ln_s), jnp.exp(ln_g))
                branch = np.log(self.depth_ceiling) - jax.nn.softplus(-branch) - jnp.log(peak)
            ln_a = jnp.where(everywhere, branch, ln_a)
        return center, ln_a, ln_s, ln_g, mask

    def _smooth_where_supported(self, v, points):
        """The hybrid modes along ``cubic_axes``: a line's centre offset, ln a (logit d) and
        widths follow the cubic spline where the line takes the ln a branch at every node of
        the spline's stencil (four nodes per cubic axis); elsewhere, the multilinear ``v``.

        At a node both interpolants give the node's value, so switching between them where a
        stencil gains or loses the line keeps the parameters continuous (only their slope
        jumps there), as does the spline's own C1 join inside the supported region."""
        smooth = interpolate_batch(self.values, self.axes, points, self.cubic_axes)
        stencil = interpolate_batch(
            self.values[..., 5, :], self.axes, points, self.cubic_axes, support=True
        )
        supported = (stencil >= 1.0 - 1e-6)[:, None, :]
        return v.at[:, :4].set(jnp.where(supported, smooth[:, :4], v[:, :4]))

    def __call__(self, params) -> jax.Array:
        """Normalised flux (n_pix,) at ``params = (teff [K], logg [dex], feh [dex])``.

        Jitted; outside the grid the interpolation extrapolates linearly (use
        :meth:`check_params` or :meth:`in_bounds` first).
        """
        return _generate(self, jnp.asarray(params, jnp.float64))

    def batch(
        self,
        params,
        batch_size: int | None = None,
        chunk_elements: int | None = None,
        devices: Sequence[jax.Device] | None = None,
    ) -> jax.Array:
        """Fluxes (n, n_pix) for ``params`` (n, 3), ``batch_size`` spectra per compiled step
        (default :func:`default_batch_size`).

        Each step is one batched forward model (a leading batch axis, not ``vmap``): only the
        lines present in each spectrum are evaluated. The steps run in one ``lax.map``, the
        last padded by repeating the last point; one program is compiled per (n, batch_size,
        chunk_elements) and writes the whole (n, n_pix) result (on CPU, assembling it from
        per-step outputs cost as much as a quarter of the time at 100,000 pixels).
        ``batch_size`` is lowered where a step's tiles would overflow the forward model's
        int32 tile numbering (:func:`jblase.forward.max_batch_spectra`; at the paper's
        128,723 lines, about 770 spectra). ``chunk_elements``: window elements per
        forward-model step (default :func:`generator_chunk_elements`).

        On CPU, outside ``jit``, the steps are shared among threads (one per core,
        ``BATCH_CPU_THREADS``, each with ``BATCH_CPU_MIN_STEPS_PER_THREAD`` steps or more),
        each running one compiled program on its share and copying it into one host array
        that becomes the result without a further copy (peak memory about twice the
        result's). ``benchmarks/reconstruct.py`` times threaded against one thread.

        With several devices (``devices``, default every local device of JAX's default
        backend: the GPUs of a machine, or CPU devices forced with
        ``XLA_FLAGS=--xla_force_host_platform_device_count=N``), the steps are split among
        them with a named sharding over the step axis (``jax.shard_map`` over a one-axis
        ``Mesh`` named ``"batch"``): each device runs the same program on its share, the
        fluxes equal the single-device ones. The result is sharded over the devices along
        its first axis when ``n`` fills every step; otherwise XLA gathers the cut result.
        ``devices=[jax.devices()[0]]`` keeps one device.
        """
        batch_size = batch_size or default_batch_size()
        try:
            p, xp = np.asarray(params, dtype=np.float64), np
        except jax.errors.TracerArrayConversionError:  # called inside jit
            p, xp = jnp.asarray(params, jnp.float64), jnp
        p = xp.atleast_2d(p)
        if p.ndim != 2 or p.shape[1] != 3:
            raise ValueError(f"params must be (n, 3) (teff, logg, feh), got shape {p.shape}")
        n = p.shape[0]
        batch_size = self.spectra_per_step(min(batch_size, n), chunk_elements)
        n_steps = -(-n // batch_size)
        devices = list(jax.local_devices() if devices is None else devices)[:n_steps]
        if xp is np and len(devices) > 1:
            per_device = -(-n_steps // len(devices))
            pad = len(devices) * per_device * batch_size - n
            p = np.concatenate([p, np.repeat(p[-1:], pad, 0)])
            steps = p.reshape(len(devices) * per_device, batch_size, 3)
            return _generate_sharded(self, steps, n, chunk_elements, tuple(devices))
        threads = 1
        if xp is np and jax.default_backend() == "cpu":
            threads = max(1, min(_cpu_threads(), n_steps // BATCH_CPU_MIN_STEPS_PER_THREAD))
        steps_per_thread = -(-n_steps // threads)
        p = xp.concatenate([p, xp.repeat(p[-1:], threads * steps_per_thread * batch_size - n, 0)])
        if threads == 1:
            return _generate_steps(self, p.reshape(n_steps, batch_size, 3), n, chunk_elements)
        groups = p.reshape(threads, steps_per_thread, batch_size, 3)
        return self._batch_threads(groups, n, chunk_elements)

    def spectra_per_step(self, batch_size: int, chunk_elements: int | None = None) -> int:
        """The spectra :meth:`batch` evaluates per step when asked for ``batch_size``: fewer
        where the step's tiles would overflow the int32 tile numbering."""
        elements = chunk_elements or generator_chunk_elements(batch_size)
        return max(1, min(batch_size, max_batch_spectra(self.max_tiles, self.plan.tile, elements)))

    def _batch_threads(self, groups: np.ndarray, n: int, chunk_elements: int | None) -> jax.Array:
        """Fluxes (n, n_pix) for groups (threads, steps, batch_size, 3), one thread per group
        (the last ones may hold padding only)."""
        per_group = groups.shape[1] * groups.shape[2]
        out = _aligned_empty((n, self.wavelength.shape[0]))

        def run(i: int) -> None:
            lo = i * per_group
            if lo < n:
                fluxes = _generate_steps(self, groups[i], per_group, chunk_elements)
                out[lo : lo + per_group] = np.asarray(fluxes)[: n - lo]

        with ThreadPoolExecutor(groups.shape[0]) as pool:
            list(pool.map(run, range(groups.shape[0])))
        return jax.device_put(out)


def _flux(gen: Generator, params, chunk_elements: int | None = None):
    """Flux (n_pix,) at params (3,), or (n, n_pix) at params (n, 3) as one batched program."""
    center, ln_a, ln_s, ln_g, mask = gen.line_parameters(params)
    plan = gen.plan
    if (plan.line_form, plan.compute_dtype) != (gen.line_form, jnp.dtype(gen.compute_dtype)):
        # A generator replaced in another dtype (the float32 search) or line form: the same
        # windows, evaluated its way.
        plan = dataclasses.replace(plan, line_form=gen.line_form, compute_dtype=gen.compute_dtype)
    lnf = plan.ln_flux(
        center,
        ln_a,
        ln_s,
        ln_g,
        mask,
        chunk_elements or generator_chunk_elements(center.shape[0] if center.ndim == 2 else 1),
    )
    n = lnf.shape[-1]
    # exp in the profile's dtype (float32 is several times faster on CPU); flux is float64.
    flux = jnp.exp(lnf[..., gen.pad_lo : n - gen.pad_hi]).astype(jnp.float64)
    return jnp.where(jnp.isfinite(flux), flux, 1.0)


@eqx.filter_jit
def _generate(gen: Generator, params):
    return _flux(gen, params)


@eqx.filter_jit
def _generate_steps(gen: Generator, steps, n: int, chunk_elements: int | None = None):
    """Fluxes (n, n_pix) for steps (n_steps, batch_size, 3), one step at a time."""
    fluxes = jax.lax.map(lambda q: _flux(gen, q, chunk_elements), steps)
    return fluxes.reshape(-1, fluxes.shape[-1])[:n]


def _generate_sharded(gen: Generator, steps: np.ndarray, n: int, chunk_elements, devices):
    """Fluxes (n, n_pix) for steps (n_steps, batch_size, 3), the steps split evenly over
    ``devices`` (n_steps a multiple of their number) by a named sharding of the step axis."""
    mesh = batch_mesh(devices)
    steps = jax.device_put(steps, jax.sharding.NamedSharding(mesh, BATCHED))
    return _sharded_steps(gen, steps, n, chunk_elements, mesh)


@eqx.filter_jit
def _sharded_steps(gen: Generator, steps, n: int, chunk_elements, mesh):
    def local(s):  # this device's steps (n_steps / n_devices, batch_size, 3)
        fluxes = jax.lax.map(lambda q: _flux(gen, q, chunk_elements), s)
        return fluxes.reshape(-1, fluxes.shape[-1])

    # check_vma=False: the forward model's lax.cond branches mix per-device and shared values.
    fluxes = jax.shard_map(local, mesh=mesh, in_specs=BATCHED, out_specs=BATCHED, check_vma=False)(
        steps
    )
    return fluxes if fluxes.shape[0] == n else fluxes[:n]


def resolve_interpolation(
    amplitude_interpolation: str, cubic_axes: Sequence[str | int] | str, line_form: str
) -> tuple[str, tuple[int, ...]]:
    """The amplitude interpolation and cubic axes (indices) that ``"auto"`` stands for with
    ``line_form`` (:data:`AUTO_AMPLITUDE_INTERPOLATION`, :data:`AUTO_CUBIC_AXES`)."""
    mode = amplitude_interpolation
    if mode == "auto":
        if line_form not in AUTO_AMPLITUDE_INTERPOLATION:
            raise ValueError(f"line_form must be one of {LINE_FORMS}, got {line_form!r}")
        mode = AUTO_AMPLITUDE_INTERPOLATION[line_form]
    if mode not in AMPLITUDE_INTERPOLATIONS:
        raise ValueError(
            f"amplitude_interpolation must be 'auto' or one of {AMPLITUDE_INTERPOLATIONS}, "
            f"got {amplitude_interpolation!r}"
        )
    if isinstance(cubic_axes, str) and cubic_axes == "auto":
        cubic_axes = AUTO_CUBIC_AXES[mode]
    return mode, axis_indices(cubic_axes)


def axis_indices(axes: Sequence[str | int]) -> tuple[int, ...]:
    """Grid axes given by name (``"teff"``, ``"logg"``, ``"feh"``) or index, as sorted indices;
    a string may join several names with ``+`` (``"teff+logg"``)."""
    if isinstance(axes, str):
        axes = [a for a in axes.split("+") if a]
    out = set()
    for a in axes:
        if isinstance(a, str):
            if a not in AXIS_NAMES:
                raise ValueError(f"unknown grid axis {a!r}: expected one of {AXIS_NAMES}")
            out.add(AXIS_NAMES.index(a))
        else:
            out.add(int(a))
    return tuple(sorted(out))


def _fitted_range(wavelength) -> tuple[float, float]:
    """The wavelengths (A) a clone's loss covered: all but 60 A at each end."""
    wl = np.asarray(wavelength)
    return float(wl[0] + LOSS_BUFFER_AA), float(wl[-1] - LOSS_BUFFER_AA)


def _node_plan(wavelength, identity, values, **settings) -> ForwardPlan:
    """The forward plan of a manifold on ``wavelength``: each line's window covers its needs
    at every grid node where it is present.

    ``values[..., 1]`` holds ln a here. Between nodes, a and the widths interpolate between
    node values, so the largest need over the nodes (with a 20% margin on the half-width)
    covers the grid. Without a tolerance every line gets ``wing_cut``. ``settings``: the
    generator's forward-model settings (:meth:`jblase.forward.ForwardPlan.build`).
    """
    if settings["flux_tolerance"] is None:  # no cover needed: every window is wing_cut
        return ForwardPlan.build(wavelength, hint_center=identity, **settings)
    n_lines = identity.shape[0]
    flat = values.reshape(n_lines, -1, 4).astype(np.float64)
    cover = (identity[:, None] + flat[..., 0], flat[..., 1], flat[..., 2], flat[..., 3])
    return ForwardPlan.build(
        wavelength,
        cover,
        flat[..., 1] >= LN_AMPLITUDE_CUTOFF,
        hint_center=identity,
        margin=1.2,
        **settings,
    )


def _central_depth(values: np.ndarray, profile: str) -> np.ndarray:
    """a V(0; sigma, gamma) of every (line, node) entry (0 where absent); ``values[..., 1]``
    holds ln a. Float64, in chunks of lines."""
    fn = get_profile(profile)
    out = np.zeros(values.shape[:-1])
    for start in range(0, values.shape[0], 4096):
        v = np.asarray(values[start : start + 4096], np.float64)
        peak = np.asarray(fn(0.0, jnp.exp(v[..., 2]), jnp.exp(v[..., 3])))
        a = np.where(v[..., 1] >= LN_AMPLITUDE_CUTOFF, np.exp(np.maximum(v[..., 1], -700)), 0.0)
        out[start : start + 4096] = a * peak
    return out


def auto_depth_ceiling(depth: np.ndarray, present: np.ndarray) -> float:
    """The saturation depth of ``depth_ceiling="auto"``: the deepest central depth a V(0) of
    any present, unclipped (below 1) line entry, times :data:`DEPTH_CEILING_MARGIN`, at most 1
    (1 when there is none).

    A grid whose strong lines all level off below some depth (a source function that stays
    above zero at the top of the atmosphere) gets a ceiling just above it, where the logit
    of d / D follows their saturation; a grid where some line's core gets near zero flux gets
    1, the plain logit of d."""
    depth = np.asarray(depth)
    d = depth[np.asarray(present) & (depth < 1.0 - _DEPTH_CEILING_GAP)]
    return float(min(1.0, DEPTH_CEILING_MARGIN * d.max())) if d.size else 1.0
