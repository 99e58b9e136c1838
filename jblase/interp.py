# ruff: noqa: F722  (jaxtyping shape strings are not Python expressions)
"""Multilinear interpolation on non-uniform rectilinear grids, in pure ``jnp``.

Sits between the line manifolds and the generator: every line's (mu', ln a, ln sigma, ln gamma)
tensor over (Teff, log g, [Fe/H]) is interpolated trilinearly on the grid's own axes (Teff steps
of 100 K then 200 K). The kernels are written for one point, work for any number D of axes, and
are jit-, vmap- and grad-friendly: the only Python loops run over the D axes and the 2**D cell
corners, at trace time.

Two tiers: the functions :func:`locate`, :func:`interpolate` and :func:`interpolate_lines`
extrapolate linearly from the edge cell (nothing can raise under ``jit``), while
:meth:`MultilinearInterpolator.evaluate` is an eager API that checks bounds and raises.

Values may be float32 or float64 (integers are promoted to the default float); the result dtype
follows ``values``. Axes and points are float64 by default.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Inexact, Int

__all__ = [
    "MultilinearInterpolator",
    "interpolate",
    "interpolate_batch",
    "interpolate_lines",
    "locate",
]

#: Relative tolerance of the eager bounds check (also absolute for axes near zero).
BOUNDS_RTOL = 1e-9


def _locate_axis(axis: Array, x: Array) -> tuple[Array, Array]:
    n = axis.shape[0]
    if n == 1:
        # A single-valued axis is only carried: the point's coordinate is ignored.
        return jnp.zeros((), dtype=int), jnp.zeros((), dtype=jnp.result_type(axis, x))
    # side="right" puts a point lying on a node in the cell to its right (one-sided gradient);
    # the clamp puts the last node, and anything beyond, in the last cell. compare_all is one
    # fused comparison, cheaper than a binary search for grid axes of ~100 nodes.
    i = jnp.searchsorted(axis, x, side="right", method="compare_all") - 1
    i = jnp.clip(i, 0, n - 2)
    lo, hi = axis[i], axis[i + 1]
    return i, (x - lo) / (hi - lo)


def _check_point(axes: Sequence[Array], point: Array) -> None:
    if len(axes) == 0:
        raise ValueError("need at least one grid axis")
    if point.shape != (len(axes),):
        raise ValueError(f"point must have shape ({len(axes)},), got {point.shape}")
    for d, axis in enumerate(axes):
        if axis.ndim != 1 or axis.shape[0] < 1:
            raise ValueError(f"axis {d} must be 1-D with at least 1 node, got shape {axis.shape}")


@jax.jit
def locate(
    axes: Sequence[Float[ArrayLike, " n"]], point: Float[ArrayLike, " D"]
) -> tuple[Int[Array, " D"], Float[Array, " D"]]:
    """Find the grid cell holding ``point`` and the point's fractional position in it.

    Args:
        axes: D strictly increasing 1-D node arrays (same units as ``point``, e.g. K, dex, dex).
        point: shape ``(D,)``.

    Returns:
        ``(index, weight)``, both shape ``(D,)``: for each axis the cell index ``i`` in
        ``[0, n - 2]`` with ``axis[i] <= x <= axis[i + 1]`` and ``t = (x - axis[i]) /
        (axis[i + 1] - axis[i])``. A point on an interior node lies in the cell to its right
        (``t = 0``); the last node lies in the last cell (``t = 1``). Axes of length 1 give
        ``i = 0, t = 0``. ``t`` is NOT clipped: outside the grid it falls below 0 or above 1,
        so interpolation extrapolates linearly from the edge cell.
    """
    axes = tuple(jnp.asarray(a) for a in axes)
    point = jnp.asarray(point)
    _check_point(axes, point)
    located = [_locate_axis(a, point[d]) for d, a in enumerate(axes)]
    index = jnp.stack([i for i, _ in located])
    weight = jnp.stack([t for _, t in located]).astype(jnp.result_type(point, *axes, 1.0))
    return index, weight


def _grid_lengths(values: Array, axes: Sequence[Array], lead: int) -> tuple[int, ...]:
    """The axes' lengths, checked against the grid axes of ``values`` (after ``lead`` axes)."""
    lengths = tuple(a.shape[0] for a in axes)
    grid_shape = values.shape[lead : lead + len(axes)]
    if grid_shape != lengths:
        raise ValueError(
            f"values have grid shape {grid_shape} (after {lead} leading axes), "
            f"but the axes have lengths {lengths}"
        )
    return lengths


def _multilinear(values: Array, axes: Sequence[Array], point: Array, lead: int, cubic=()) -> Array:
    """Sum of the 2**D cell corners ``values[:lead, i1 + c1, ..., iD + cD]`` times their weights
    (four nodes along the ``cubic`` axes)."""
    axes = tuple(jnp.asarray(a) for a in axes)
    point = jnp.asarray(point)
    values = jnp.asarray(values)
    _check_point(axes, point)
    lengths = _grid_lengths(values, axes, lead)
    dtype = jnp.result_type(values.dtype, 1.0)
    values = values.astype(dtype)
    index, weight = locate(axes, point)
    pre = (slice(None),) * lead
    total = None
    cubic = _check_cubic(cubic, len(axes))
    for idx, w in _cell_corners(lengths, index, weight.astype(dtype), axes, cubic):
        term = w * values[pre + idx]
        total = term if total is None else total + term
    return total


def _hermite_axis(axis: Array, n: int, i: Array, t: Array):
    """The four (node, weight) pairs of the cubic Hermite interpolant in cell ``i`` of ``axis``.

    Slopes at the cell's nodes are the central differences of the neighbouring nodes
    (one-sided at the axis ends, where the outer node is clamped onto the cell's own): the
    interpolant is C1 across nodes, exact for quadratics on a uniform axis and for straight
    lines on any axis, and its weights sum to 1. On a two-node axis it is the linear one.
    """
    j, k = jnp.maximum(i - 1, 0), jnp.minimum(i + 2, n - 1)
    x_j, x_i, x_1, x_k = axis[j], axis[i], axis[i + 1], axis[k]
    h = x_1 - x_i
    t2, t3 = t * t, t * t * t
    h00, h01 = 2 * t3 - 3 * t2 + 1, -2 * t3 + 3 * t2
    h10, h11 = (t3 - 2 * t2 + t) * (h / (x_1 - x_j)), (t3 - t2) * (h / (x_k - x_i))
    return [(j, -h10), (i, h00 - h11), (i + 1, h01 + h10), (k, h11)]


def _cell_corners(lengths, index, t, axes=None, cubic=()):
    """The corners of the cells holding the points: ``[(node index per axis, weight), ...]``.

    ``index``, ``t``: cell index and fractional position per axis, shape (..., D) (from
    :func:`locate`). Length-1 axes have one corner with weight 1; other axes have two
    (multilinear), or four for the axes listed in ``cubic`` that have at least three nodes
    (cubic Hermite, :func:`_hermite_axis`; needs ``axes``). Each entry holds D index arrays
    and one weight array, shaped as ``index[..., 0]``.
    """
    per_axis = []
    for d, n in enumerate(lengths):
        i, td = index[..., d], t[..., d]
        if n == 1:
            per_axis.append([(i, None)])
        elif d in cubic and n >= 3:
            per_axis.append(_hermite_axis(jnp.asarray(axes[d], t.dtype), n, i, td))
        else:
            per_axis.append([(i, 1 - td), (i + 1, td)])
    corners = []
    for choice in itertools.product(*per_axis):
        idx = tuple(node for node, _ in choice)
        w = jnp.ones(t.shape[:-1], t.dtype)
        for _, wd in choice:
            if wd is not None:
                w = w * wd
        corners.append((idx, w))
    return corners


def _check_cubic(cubic, n_axes: int) -> tuple[int, ...]:
    cubic = tuple(sorted({int(d) for d in cubic}))
    if any(d < 0 or d >= n_axes for d in cubic):
        raise ValueError(f"cubic axes must lie in [0, {n_axes - 1}], got {cubic}")
    return cubic


@functools.partial(jax.jit, static_argnames="cubic")
def interpolate(
    values: Inexact[ArrayLike, "*grid *trailing"],
    axes: Sequence[Float[ArrayLike, " n"]],
    point: Float[ArrayLike, " D"],
    cubic: tuple[int, ...] = (),
) -> Inexact[Array, "*trailing"]:
    """Multilinear interpolation of ``values`` at one ``point``.

    Args:
        values: shape ``(n_1, ..., n_D, *trailing)``, grid axes first; float32 or float64
            (the result has the same dtype).
        axes: D strictly increasing node arrays, shapes ``(n_1,), ..., (n_D,)``.
        point: shape ``(D,)``, in the units of the axes.
        cubic: axes (indices) interpolated by a cubic Hermite spline through four nodes
            instead of linearly (static; axes of fewer than three nodes stay linear). The
            spline's slopes are central differences of the nodes, so it is C1 across nodes
            and its gradient is continuous there.

    Returns:
        Shape ``trailing``. Outside the grid the result extrapolates from the edge cell's
        polynomial (use :class:`MultilinearInterpolator` for a bounds check). Differentiable
        in ``point``: exact inside cells, one-sided (right cell, last cell at the last node)
        on nodes, and zero along axes of length 1. ``vmap`` it over points.
    """
    return _multilinear(values, axes, point, lead=0, cubic=cubic)


@jax.jit
def interpolate_lines(
    values: Inexact[ArrayLike, "n_lines *grid k"],
    axes: Sequence[Float[ArrayLike, " n"]],
    point: Float[ArrayLike, " D"],
) -> Inexact[Array, "n_lines k"]:
    """Interpolate every line's parameters at one grid ``point`` (the manifold's main call).

    Args:
        values: shape ``(n_lines, n_1, ..., n_D, k)``, e.g. ``k = 4`` for
            (mu' in A, ln a, ln sigma, ln gamma); float32 or float64 (kept in the result).
        axes: D strictly increasing node arrays, e.g. (Teff in K, log g in dex, [Fe/H] in dex).
        point: shape ``(D,)``.

    Returns:
        Shape ``(n_lines, k)``. One gather of ``values[:, i1 + c1, ..., iD + cD]`` per cell
        corner (2**D of them, fewer with length-1 axes), combined with the multilinear weights;
        extrapolates linearly outside the grid, like :func:`interpolate`.
    """
    values = jnp.asarray(values)
    if values.ndim != len(axes) + 2:
        raise ValueError(
            f"values must have shape (n_lines, n_1, ..., n_{len(axes)}, k), got {values.shape}"
        )
    return _multilinear(values, axes, point, lead=1)


@functools.partial(jax.jit, static_argnames=("cubic", "support"))
def interpolate_batch(
    values: Inexact[ArrayLike, "*grid *trailing"],
    axes: Sequence[Float[ArrayLike, " n"]],
    points: Float[ArrayLike, "B D"],
    cubic: tuple[int, ...] = (),
    support: bool = False,
) -> Inexact[Array, " B *trailing"]:
    """:func:`interpolate` at ``B`` points at once, as one gather and one matrix product.

    Args:
        values: shape ``(n_1, ..., n_D, *trailing)``, grid axes first (e.g. the generator's
            ``(n_teff, n_logg, n_feh, n_lines, 4)``); float32 or float64 (kept).
        axes: D strictly increasing node arrays.
        points: shape ``(B, D)``.
        cubic: as :func:`interpolate`.
        support: combine the nodes with the weights' magnitudes ``|w| / sum |w|`` instead
            (static): a mean over the nodes the interpolant reads, so for values in {0, 1} the
            result is 1 exactly where every node with a non-zero weight holds 1 (a cubic
            stencil's weights can be negative, so the signed sum cannot tell).

    Returns:
        Shape ``(B, *trailing)``, equal to ``vmap(interpolate)`` (same extrapolation and
        gradients). Each point reads its 2**D cell corners as whole contiguous blocks of
        ``trailing`` values and combines them in a product, whose result XLA keeps in memory
        instead of recomputing the interpolation inside every consumer.
    """
    axes = tuple(jnp.asarray(a) for a in axes)
    values = jnp.asarray(values)
    points = jnp.asarray(points)
    if points.ndim != 2 or points.shape[1] != len(axes):
        raise ValueError(f"points must have shape (B, {len(axes)}), got {points.shape}")
    lengths = _grid_lengths(values, axes, lead=0)
    dtype = jnp.result_type(values.dtype, 1.0)
    trailing = values.shape[len(axes) :]
    rows = values.astype(dtype).reshape(int(np.prod(lengths)), -1)
    index, weight = jax.vmap(locate, in_axes=(None, 0))(axes, points)
    corners = _cell_corners(
        lengths, index, weight.astype(dtype), axes, _check_cubic(cubic, len(axes))
    )
    strides = np.cumprod((1, *lengths[:0:-1]))[::-1]
    corner_rows = [
        sum(i * int(stride) for i, stride in zip(idx, strides, strict=True)) for idx, _ in corners
    ]
    weights = jnp.stack([w for _, w in corners], axis=1)  # (B, corners)
    if support:
        weights = jnp.abs(weights) / jnp.sum(jnp.abs(weights), axis=1, keepdims=True)
    block = rows[jnp.stack(corner_rows, axis=1)]  # (B, corners, prod(trailing))
    out = jnp.einsum("bc,bcf->bf", weights, block)
    return out.reshape(points.shape[0], *trailing)


def _is_tracer(x) -> bool:
    return isinstance(x, jax.core.Tracer)


class MultilinearInterpolator(eqx.Module):
    """A ``RegularGridInterpolator``-like multilinear interpolator on non-uniform axes.

    Attributes:
        axes: D strictly increasing float64 node arrays (at least 1 node each), shapes
            ``(n_1,), ..., (n_D,)``; units are the caller's (e.g. K, dex, dex).
        values: shape ``(n_1, ..., n_D, *trailing)``; float32 or float64, kept as given
            (integers become the default float). Results have this dtype.
        names: optional axis names (static), used in error messages.

    ``interp(point)`` is the jit-friendly call (one point, extrapolating linearly outside the
    grid); ``interp.evaluate(points)`` is the eager call that checks bounds and raises.
    """

    axes: tuple[Float[Array, " n"], ...]
    values: Inexact[Array, "*grid *trailing"]
    names: tuple[str, ...] | None = eqx.field(static=True)

    def __init__(
        self,
        axes: Sequence[Float[ArrayLike, " n"]],
        values: Inexact[ArrayLike, "*grid *trailing"],
        names: Sequence[str] | None = None,
    ):
        if isinstance(axes, np.ndarray | jax.Array) and jnp.ndim(axes) == 1:
            axes = (axes,)
        self.axes = tuple(jnp.asarray(a, dtype=jnp.float64) for a in axes)
        values = jnp.asarray(values)
        self.values = values.astype(jnp.result_type(values.dtype, 1.0))
        self.names = None if names is None else tuple(str(n) for n in names)

    def __check_init__(self):
        if len(self.axes) == 0:
            raise ValueError("need at least one grid axis")
        if self.names is not None and len(self.names) != len(self.axes):
            raise ValueError(f"{len(self.names)} names given for {len(self.axes)} axes")
        for d, axis in enumerate(self.axes):
            label = self._label(d)
            if axis.ndim != 1 or axis.shape[0] < 1:
                raise ValueError(f"{label} must be 1-D with at least 1 node, got {axis.shape}")
            if _is_tracer(axis):
                continue
            a = np.asarray(axis)
            if not np.isfinite(a).all():
                raise ValueError(f"{label} has non-finite nodes: {a}")
            step = np.diff(a)
            if (step <= 0).any():
                i = int(np.argmax(step <= 0))
                raise ValueError(
                    f"{label} must be strictly increasing: nodes {i} and {i + 1} are "
                    f"{float(a[i])!r} then {float(a[i + 1])!r}"
                )
        if self.values.shape[: len(self.axes)] != self.shape:
            raise ValueError(
                f"values have shape {self.values.shape}, but the axes need {self.shape} first"
            )

    def _label(self, d: int) -> str:
        return f"axis {d}" if self.names is None else f"axis {d} ({self.names[d]!r})"

    @property
    def ndim(self) -> int:
        """Number of grid axes D."""
        return len(self.axes)

    @property
    def shape(self) -> tuple[int, ...]:
        """Grid shape ``(n_1, ..., n_D)``."""
        return tuple(a.shape[0] for a in self.axes)

    @property
    def lower(self) -> Float[Array, " D"]:
        """First node of each axis, shape ``(D,)``."""
        return jnp.stack([a[0] for a in self.axes])

    @property
    def upper(self) -> Float[Array, " D"]:
        """Last node of each axis, shape ``(D,)``."""
        return jnp.stack([a[-1] for a in self.axes])

    def _tolerance(self, rtol: float) -> Float[Array, " D"]:
        lo, hi = self.lower, self.upper
        return rtol * jnp.maximum(jnp.maximum(jnp.abs(lo), jnp.abs(hi)), jnp.maximum(hi - lo, 1.0))

    def __call__(self, point: Float[ArrayLike, " D"]) -> Inexact[Array, "*trailing"]:
        """Interpolate at one point, shape ``(D,)`` -> ``trailing``; extrapolates outside."""
        return interpolate(self.values, self.axes, point)

    def in_bounds(
        self, point: Float[ArrayLike, "*batch D"], rtol: float = BOUNDS_RTOL
    ) -> Bool[Array, "*batch"]:
        """True where every coordinate lies in its axis range (within ``rtol``); jit-friendly.

        The tolerance is ``rtol * max(|lower|, |upper|, upper - lower, 1)`` per axis. NaN
        coordinates are out of bounds.
        """
        point = jnp.asarray(point)
        tol = self._tolerance(rtol)
        inside = (point >= self.lower - tol) & (point <= self.upper + tol)
        return jnp.all(inside, axis=-1)

    def clip_to_grid(self, point: Float[ArrayLike, "*batch D"]) -> Float[Array, "*batch D"]:
        """Clip each coordinate to its axis range, shape ``(..., D)`` kept."""
        return jnp.clip(jnp.asarray(point), self.lower, self.upper)

    def evaluate(
        self, points: Float[ArrayLike, "*N D"], bounds_error: bool = True
    ) -> Inexact[Array, "*N *trailing"]:
        """Eager evaluation at one point ``(D,)`` or many ``(N, D)``.

        With ``bounds_error=True`` (default), raises ``ValueError`` naming the axis, the
        offending value and the axis range when a point lies outside the grid by more than
        ``BOUNDS_RTOL`` (points within the tolerance are clipped onto the grid). With
        ``bounds_error=False``, extrapolates linearly from the edge cells.

        Returns:
            Shape ``trailing`` for one point, ``(N, *trailing)`` for many.
        """
        pts = np.asarray(points, dtype=np.float64)
        single = pts.ndim == 1
        pts = np.atleast_2d(pts)
        if pts.ndim != 2 or pts.shape[1] != self.ndim:
            raise ValueError(
                f"points must have shape ({self.ndim},) or (N, {self.ndim}), got {np.shape(points)}"
            )
        if bounds_error:
            lo, hi = np.asarray(self.lower), np.asarray(self.upper)
            tol = np.asarray(self._tolerance(BOUNDS_RTOL))
            for d in range(self.ndim):
                x = pts[:, d]
                bad = ~((x >= lo[d] - tol[d]) & (x <= hi[d] + tol[d]))
                if bad.any():
                    j = int(np.argmax(bad))
                    where = "" if single else f"point {j}: "
                    raise ValueError(
                        f"{where}{self._label(d)} value {float(x[j])!r} is outside the grid "
                        f"range [{float(lo[d])!r}, {float(hi[d])!r}]"
                    )
            pts = np.clip(pts, lo, hi)
        out = _evaluate_batch(self, jnp.asarray(pts))
        return out[0] if single else out


@jax.jit
def _evaluate_batch(interp: MultilinearInterpolator, points: Array) -> Array:
    return jax.vmap(interp)(points)
