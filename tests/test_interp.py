"""Multilinear interpolation against scipy, interpax, finite differences and itself."""

import interpax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy.interpolate import RegularGridInterpolator

import jblase  # noqa: F401  (turns on x64)
from jblase.interp import (
    MultilinearInterpolator,
    interpolate,
    interpolate_batch,
    interpolate_lines,
    locate,
)

TEFF = np.concatenate([np.arange(5000.0, 7000.0, 100.0), np.arange(7000.0, 8001.0, 200.0)])
LOGG = np.array([2.0, 2.5, 3.0, 4.0, 4.5, 6.0])
FEH = np.array([-0.5, 0.0])
AXES = (TEFF, LOGG, FEH)
TRAILING = (3, 4)


def _values(rng, shape):
    # Away from zero, so a relative tolerance is meaningful.
    return 1.0 + rng.random(shape)


def _points(rng, n=300):
    """Random points, every grid node on a sub-lattice, the upper faces and corners."""
    lo = np.array([a[0] for a in AXES])
    hi = np.array([a[-1] for a in AXES])
    random = lo + (hi - lo) * rng.random((n, 3))
    nodes = np.stack(np.meshgrid(TEFF[::3], LOGG, FEH, indexing="ij"), -1).reshape(-1, 3)
    upper = random[:20].copy()
    upper[:, 0] = hi[0]
    upper[10:, 1] = hi[1]
    upper[15:, 2] = hi[2]
    corners = np.stack(np.meshgrid(*[[a[0], a[-1]] for a in AXES], indexing="ij"), -1)
    return np.concatenate([random, nodes, upper, corners.reshape(-1, 3)])


@pytest.fixture
def grid():
    rng = np.random.default_rng(42)
    values = _values(rng, tuple(len(a) for a in AXES) + TRAILING)
    return MultilinearInterpolator(AXES, values, names=("teff", "logg", "feh")), values, rng


def _max_rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b)) / np.abs(np.asarray(b))))


def test_matches_scipy(grid):
    interp, values, rng = grid
    pts = _points(rng)
    ref = RegularGridInterpolator(AXES, values, method="linear")(pts)
    out = interp.evaluate(pts)
    assert out.shape == (len(pts),) + TRAILING
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=0)
    print(f"max relative error vs scipy: {_max_rel(out, ref):.2e}")


def test_nodes_reproduce_values(grid):
    interp, values, _ = grid
    for idx in [(0, 0, 0), (7, 2, 1), (len(TEFF) - 1, len(LOGG) - 1, 1), (20, 5, 0)]:
        point = np.array([a[i] for a, i in zip(AXES, idx, strict=True)])
        np.testing.assert_allclose(interp(point), values[idx], rtol=1e-15, atol=0)


def test_matches_interpax(grid):
    interp, values, rng = grid
    pts = _points(rng)
    ref = interpax.interp3d(*pts.T, *AXES, values, method="linear")
    out = jax.vmap(interp)(pts)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=0)
    print(f"max relative error vs interpax: {_max_rel(out, ref):.2e}")


def test_four_axes_matches_scipy():
    rng = np.random.default_rng(1)
    axes = tuple(np.sort(rng.random(n)) * 10 for n in (4, 3, 5, 2))
    values = _values(rng, (4, 3, 5, 2, 2))
    lo, hi = np.array([a[0] for a in axes]), np.array([a[-1] for a in axes])
    pts = lo + (hi - lo) * rng.random((100, 4))
    out = jax.vmap(lambda p: interpolate(values, axes, p))(pts)
    ref = RegularGridInterpolator(axes, values)(pts)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=0)


def test_one_axis_matches_np_interp():
    rng = np.random.default_rng(2)
    x = np.cumsum(rng.random(12) + 0.1)
    y = _values(rng, 12)
    xq = np.linspace(x[0], x[-1], 57)
    out = jax.vmap(lambda p: interpolate(y, (x,), p))(xq[:, None])
    np.testing.assert_allclose(out, np.interp(xq, x, y), rtol=1e-13, atol=0)


def test_extrapolates_linearly_under_jit(grid):
    interp, values, _ = grid
    pts = np.array([[8400.0, 3.3, -0.2], [4800.0, 1.5, 0.3], [6150.0, 7.0, -0.9]])
    ref = RegularGridInterpolator(AXES, values, bounds_error=False, fill_value=None)(pts)
    out = jax.jit(lambda m, p: jax.vmap(m)(p))(interp, pts)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=0)
    np.testing.assert_allclose(interp.evaluate(pts, bounds_error=False), ref, rtol=1e-12)


def test_locate():
    axis = jnp.array([1.0, 2.0, 4.0, 8.0])
    single = jnp.array([0.0])
    cases = [
        (1.0, 0, 0.0),
        (3.0, 1, 0.5),
        (2.0, 1, 0.0),
        (8.0, 2, 1.0),
        (10.0, 2, 1.5),
        (0.0, 0, -1.0),
    ]
    for x, i, t in cases:
        index, weight = jax.jit(locate)((axis, single), jnp.array([x, 5.0]))
        assert index.tolist() == [i, 0]
        np.testing.assert_allclose(weight, [t, 0.0], rtol=0, atol=1e-15)
        assert weight.dtype == jnp.float64


def test_lines_layout(grid):
    _, values, rng = grid
    lines = np.moveaxis(values.reshape(values.shape[:3] + (12,)), -1, 0)[..., None]
    lines = np.concatenate([lines, 2 * lines], axis=-1)  # (12, nT, ng, nf, 2)
    pts = _points(rng, 50)
    out = jax.jit(jax.vmap(lambda p: interpolate_lines(lines, AXES, p)))(pts)
    assert out.shape == (len(pts), 12, 2)
    ref = RegularGridInterpolator(AXES, np.moveaxis(lines, 0, -2))(pts)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="n_lines"):
        interpolate_lines(lines[..., 0], AXES, pts[0])


def test_compiles_once_per_shape(grid):
    _, values, rng = grid
    traces = []

    @jax.jit
    def f(p):
        traces.append(1)
        return interpolate_lines(values[None, ..., 0], AXES, p)

    for p in _points(rng, 5):
        f(p)
    assert len(traces) == 1


def test_gradient_matches_finite_differences(grid):
    interp, _, rng = grid
    proj = rng.standard_normal(TRAILING)

    def f(p):
        return jnp.sum(interp(p) * proj)

    # Points at least 10% of a cell from its faces, where f is multilinear and smooth.
    base = np.array([[5230.0, 3.4, -0.3], [7250.0, 4.3, -0.1], [6075.0, 2.2, -0.45]])
    steps = np.array([0.5, 1e-3, 1e-3])
    for p in base:
        grad = jax.grad(f)(jnp.asarray(p))
        e = np.eye(3) * steps[:, None]
        fd = [(f(p + e[d]) - f(p - e[d])) / (2 * steps[d]) for d in range(3)]
        np.testing.assert_allclose(grad, fd, rtol=1e-8, atol=1e-12)
    check_grads(f, (jnp.asarray(base[1]),), order=1, modes=("rev", "fwd"))


def test_gradient_at_nodes_is_one_sided_and_finite(grid):
    interp, values, _ = grid
    j, k = 2, 1

    def f(teff):
        return interp(jnp.stack([teff, LOGG[j], FEH[k]]))[0, 0]

    for i in [0, 5, 19, 20, len(TEFF) - 1]:
        grad = jax.grad(f)(TEFF[i])
        right = min(i, len(TEFF) - 2)  # cell to the right, last cell at the last node
        slope = (values[right + 1, j, k, 0, 0] - values[right, j, k, 0, 0]) / (
            TEFF[right + 1] - TEFF[right]
        )
        assert np.isfinite(grad)
        np.testing.assert_allclose(grad, slope, rtol=1e-12)
    full = jax.grad(lambda p: jnp.sum(interp(p)))(jnp.array([TEFF[-1], LOGG[-1], FEH[-1]]))
    assert np.isfinite(full).all()


def test_vmap_equals_single_calls(grid):
    interp, _, rng = grid
    pts = jnp.asarray(_points(rng, 64)[:64])
    single = jax.jit(lambda p: interp(p))
    batched = jax.jit(jax.vmap(lambda p: interp(p)))(pts)
    # Equal to rounding: two programs, whose floating-point contractions the compiler may
    # choose differently (the suite compiles without LLVM's optimisations, tests/conftest.py).
    np.testing.assert_allclose(batched, np.stack([single(p) for p in pts]), rtol=1e-15, atol=1e-15)


def test_jit_with_module_argument(grid):
    interp, _, rng = grid
    pts = _points(rng, 10)
    out = jax.jit(lambda m, p: jax.vmap(m)(p))(interp, pts)
    np.testing.assert_array_equal(out, interp.evaluate(pts))


def test_batch_equals_scipy_and_single_points(grid):
    """The corner-gather form: scipy's values, vmap(interpolate)'s gradients, extrapolation
    outside the grid, and length-one axes."""
    _, values, rng = grid
    pts = _points(rng, 60)
    out = interpolate_batch(values, AXES, pts)
    assert out.shape == (len(pts), *TRAILING)
    np.testing.assert_allclose(out, RegularGridInterpolator(AXES, values)(pts), rtol=1e-12)
    outside = pts[:5] + np.array([300.0, 0.7, 0.2])
    np.testing.assert_allclose(
        interpolate_batch(values, AXES, outside),
        jax.vmap(lambda p: interpolate(values, AXES, p))(outside),
        rtol=1e-12,
    )

    def loss(fn, p):
        return jnp.sum(jnp.sin(fn(p)))

    batch_grad = jax.grad(lambda p: loss(lambda q: interpolate_batch(values, AXES, q), p))
    single_grad = jax.grad(lambda p: loss(jax.vmap(lambda q: interpolate(values, AXES, q)), p))
    np.testing.assert_allclose(batch_grad(pts[:20]), single_grad(pts[:20]), rtol=1e-10)
    flat = values[:, :, :1]
    np.testing.assert_allclose(
        interpolate_batch(flat, (TEFF, LOGG, np.array([0.0])), pts[:10]),
        RegularGridInterpolator((TEFF, LOGG), flat[:, :, 0])(pts[:10, :2]),
        rtol=1e-12,
    )
    with pytest.raises(ValueError, match="points must have shape"):
        interpolate_batch(values, AXES, pts[0])


def test_axis_of_length_one():
    rng = np.random.default_rng(3)
    values = _values(rng, (len(TEFF), len(LOGG), 1, 2))
    interp = MultilinearInterpolator((TEFF, LOGG, [0.0]), values)
    pts = np.column_stack([rng.uniform(5000, 8000, 40), rng.uniform(2, 6, 40), np.zeros(40)])
    ref = RegularGridInterpolator((TEFF, LOGG), values[:, :, 0])(pts[:, :2])
    np.testing.assert_allclose(interp.evaluate(pts), ref, rtol=1e-12, atol=0)
    # The jit path ignores the carried coordinate; its gradient is zero, not NaN.
    shifted = pts[0] + np.array([0.0, 0.0, 0.3])
    np.testing.assert_array_equal(interp(shifted), interp(pts[0]))
    grad = jax.grad(lambda p: jnp.sum(interp(p)))(jnp.asarray(shifted))
    assert grad[2] == 0 and np.isfinite(grad).all()
    with pytest.raises(ValueError, match="axis 2"):
        interp.evaluate(shifted)
    one = MultilinearInterpolator([np.array([1.5])], np.array([7.0]))
    assert float(one(jnp.array([1.5]))) == 7.0


def test_out_of_bounds_raises(grid):
    interp, _, _ = grid
    with pytest.raises(ValueError, match=r"axis 1 \('logg'\) value 6\.5 .*\[2\.0, 6\.0\]"):
        interp.evaluate([6000.0, 6.5, 0.0])
    with pytest.raises(ValueError, match=r"point 1: axis 0 \('teff'\) value 4999\.0"):
        interp.evaluate([[6000.0, 4.0, 0.0], [4999.0, 4.0, 0.0]])
    with pytest.raises(ValueError, match="axis 2"):
        interp.evaluate([6000.0, 4.0, np.nan])
    unnamed = MultilinearInterpolator(AXES, interp.values)
    with pytest.raises(ValueError, match=r"axis 0 value 9000\.0"):
        unnamed.evaluate([9000.0, 4.0, 0.0])
    # A hair outside (within the tolerance) is clipped onto the grid, not extrapolated.
    edge = interp.evaluate([8000.0 * (1 + 1e-12), 6.0, 0.0])
    np.testing.assert_array_equal(edge, interp.evaluate([8000.0, 6.0, 0.0]))


def test_in_bounds_and_clip_under_jit(grid):
    interp, _, _ = grid
    pts = jnp.array(
        [
            [6000.0, 4.0, 0.0],
            [8000.0, 6.0, 0.0],
            [8001.0, 4.0, 0.0],
            [5000.0, 1.9, -0.5],
            [6000.0, 4.0, jnp.nan],
        ]
    )
    inside = jax.jit(lambda m, p: m.in_bounds(p))(interp, pts)
    assert inside.dtype == jnp.bool_
    assert inside.tolist() == [True, True, False, False, False]
    clipped = jax.jit(lambda m, p: m.clip_to_grid(p))(interp, pts[:4])
    assert interp.in_bounds(clipped).all()
    np.testing.assert_array_equal(clipped[2], [8000.0, 4.0, 0.0])


def test_float32_values_keep_dtype(grid):
    interp, values, rng = grid
    interp32 = MultilinearInterpolator(AXES, values.astype(np.float32))
    pts = _points(rng, 20)
    out = interp32.evaluate(pts)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, interp.evaluate(pts), rtol=1e-6)
    grad = jax.grad(lambda p: jnp.sum(interp32(p)))(jnp.asarray(pts[0]))
    assert grad.dtype == jnp.float64 and np.isfinite(grad).all()


@pytest.mark.parametrize(
    "axes, match",
    [
        ((TEFF, LOGG[::-1], FEH), r"axis 1 .*strictly increasing"),
        ((TEFF, LOGG, np.array([0.0, 0.0])), r"axis 2 .*strictly increasing"),
        ((TEFF, LOGG, np.array([0.0, np.inf])), "non-finite"),
        ((TEFF, LOGG, np.array([])), "at least 1 node"),
        ((TEFF, LOGG, np.zeros((2, 1))), "1-D"),
        ((TEFF, LOGG[:-1], FEH), "values have shape"),
    ],
)
def test_bad_axes_rejected(axes, match):
    values = np.ones((len(TEFF), len(LOGG), 2))
    with pytest.raises(ValueError, match=match):
        MultilinearInterpolator(axes, values)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_no_implicit_promotion(grid, dtype):
    _, values, rng = grid
    interp = MultilinearInterpolator(AXES, values.astype(dtype))
    lines = np.moveaxis(values.astype(dtype), -1, 0)
    p = jnp.asarray(_points(rng, 1)[0])
    with jax.numpy_dtype_promotion("strict"):
        assert interp(p).dtype == dtype
        assert interpolate_lines(lines, AXES, p).dtype == dtype
        assert jax.grad(lambda q: jnp.sum(interp(q)))(p).dtype == jnp.float64
        assert interp.in_bounds(p) and interp.evaluate(p).dtype == dtype


# ----------------------------------------------------------------- cubic Hermite along an axis


def _hermite_reference(values, pts):
    """Bilinear in (log g, [Fe/H]) at every Teff node (scipy), then scipy's cubic Hermite
    spline along Teff with central-difference slopes (one-sided at the ends)."""
    from scipy.interpolate import CubicHermiteSpline

    out = []
    for p in pts:
        f = np.stack(
            [RegularGridInterpolator(AXES[1:], values[i])(p[1:])[0] for i in range(TEFF.size)]
        )
        slope = np.empty_like(f)
        slope[1:-1] = (f[2:] - f[:-2]) / (TEFF[2:] - TEFF[:-2])[:, None, None]
        slope[0] = (f[1] - f[0]) / (TEFF[1] - TEFF[0])
        slope[-1] = (f[-1] - f[-2]) / (TEFF[-1] - TEFF[-2])
        out.append(CubicHermiteSpline(TEFF, f, slope)(p[0]))
    return np.stack(out)


def test_cubic_axis_matches_scipy_hermite(grid):
    _, values, rng = grid
    pts = _points(rng, n=60)
    ref = _hermite_reference(values, pts)
    np.testing.assert_allclose(interpolate_batch(values, AXES, pts, (0,)), ref, rtol=1e-12)
    single = jax.vmap(lambda p: interpolate(values, AXES, p, (0,)))(pts)
    np.testing.assert_allclose(single, ref, rtol=1e-12)
    # ... and it is not the trilinear interpolation
    assert _max_rel(interpolate_batch(values, AXES, pts), ref) > 1e-3


def test_cubic_axis_exact_cases():
    x = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    pts = np.linspace(0.0, 4.0, 41)[:, None]
    # a quadratic on a uniform axis (interior cells; the end cells' slopes are one-sided)
    quad = 3.0 - 2.0 * x + 0.5 * x**2
    got = interpolate_batch(quad, (x,), pts, (0,))
    inner = (pts[:, 0] >= 1.0) & (pts[:, 0] <= 3.0)
    want = 3.0 - 2.0 * pts[:, 0] + 0.5 * pts[:, 0] ** 2
    np.testing.assert_allclose(got[inner], want[inner], rtol=1e-13)
    # a straight line on a non-uniform axis, everywhere; nodes reproduced
    xn = np.array([0.0, 0.3, 1.5, 1.7, 4.0])
    line = 2.0 + 0.7 * xn
    got = interpolate_batch(line, (xn,), pts, (0,))
    np.testing.assert_allclose(got, 2.0 + 0.7 * pts[:, 0], rtol=1e-13)
    np.testing.assert_allclose(interpolate_batch(quad, (xn,), xn[:, None], (0,)), quad)
    # two nodes: the cubic is the linear interpolation
    two = np.array([1.0, 5.0])
    np.testing.assert_allclose(
        interpolate_batch(two, (x[:2],), pts[:11], (0,)), 1.0 + 4.0 * pts[:11, 0], rtol=1e-13
    )


def test_cubic_axis_gradient_is_continuous_across_nodes(grid):
    _, values, _ = grid
    f = lambda teff: interpolate(values, AXES, jnp.array([teff, 3.3, -0.2]), (0,))[0, 0]  # noqa: E731
    df = jax.grad(f)
    for node in TEFF[1:-1:4]:
        left, right = df(node - 1e-7), df(node + 1e-7)
        assert float(left) == pytest.approx(float(right), rel=1e-5, abs=1e-12)
    p = jnp.array([5432.0, 3.3, -0.2])
    check_grads(lambda q: interpolate(values, AXES, q, (0,)), (p,), order=1, modes=["rev"])


def test_cubic_axes_checked(grid):
    _, values, _ = grid
    with pytest.raises(ValueError, match="cubic axes"):
        interpolate_batch(values, AXES, np.array([[5500.0, 3.0, -0.2]]), (3,))


def test_support_weights_flag_every_node_the_stencil_reads(grid):
    """``support=True``: the mean of the values over the nodes with non-zero weights
    (|w| / sum |w|), so a 0/1 presence averages to 1 exactly where every node the
    interpolant reads holds 1; checked against the stencil's nodes listed by hand."""
    rng = np.random.default_rng(3)
    present = (rng.random((TEFF.size, LOGG.size, FEH.size, 5)) < 0.8).astype(float)
    pts = _points(rng, n=40)
    for cubic in ((), (0,)):
        got = np.asarray(interpolate_batch(present, AXES, pts, cubic, support=True))
        for p, row in zip(pts, got, strict=True):
            nodes = []
            for d, axis in enumerate(AXES):
                i = int(np.clip(np.searchsorted(axis, p[d], side="right") - 1, 0, axis.size - 2))
                t = (p[d] - axis[i]) / (axis[i + 1] - axis[i])
                if t == 0 or t == 1:  # on a node: the node alone has a weight
                    stencil = {i + int(t)}
                else:
                    stencil = {i, i + 1}
                    if d in cubic:
                        stencil |= {max(i - 1, 0), min(i + 2, axis.size - 1)}
                nodes.append(sorted(stencil))
            block = present[np.ix_(*nodes)]
            np.testing.assert_array_equal(row >= 1 - 1e-12, block.min(axis=(0, 1, 2)) == 1)
            assert np.all((row >= 0) & (row <= 1 + 1e-12))
    # The signed cubic weights of a missing far node do not average to 1 - w: the plain
    # interpolation of the presence can exceed 1 there (why the support mode exists).
    plain = np.asarray(interpolate_batch(present, AXES, pts, (0,)))
    assert plain.max() > 1 + 1e-6
