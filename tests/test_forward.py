import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jblase.forward import (
    DEFAULT_TILE,
    ForwardPlan,
    ln_flux,
    pad_wavelength,
    synthesize,
    synthesize_lines,
    tile_bound,
    window_px,
)
from jblase.io import read_blase_clone
from jblase.linelist import LineList, stack_line_lists
from jblase.profiles import get_profile

from .conftest import BLASE_CLONE, require


def _lines(n, lo, hi, seed=0):
    rng = np.random.default_rng(seed)
    return (
        np.sort(rng.uniform(lo, hi, n)),
        rng.uniform(-4.0, -0.5, n),
        np.log(rng.uniform(0.005, 0.03, n)),
        np.log(rng.uniform(0.001, 0.03, n)),
    )


#: Flux against the dense float64 definition. ln f is a sum of negative terms ln(1 - a V), each
#: computed to a few tens of float64 ulps (profile, log1p or its series, in another order), so
#: the error of ln f is below k eps |ln f| with k ~ 30 and eps = 2.2e-16, and the flux's is
#: f |ln f| k eps <= k eps / e (f |ln f| peaks at 1/e): 2.5e-15. Measured: 4.5e-16 or less.
DENSE_ATOL = 1e-14


def dense_flux(wl, center, ln_a, ln_sigma, ln_gamma, profile="pseudo_voigt"):
    """Every line on every pixel, straight from the definition (NumPy broadcasting)."""
    v = np.asarray(
        get_profile(profile)(
            wl[None, :] - center[:, None], np.exp(ln_sigma)[:, None], np.exp(ln_gamma)[:, None]
        )
    )
    absorption = np.clip(np.exp(ln_a)[:, None] * v, 0.0, 1.0 - 1e-9)
    return np.exp(np.sum(np.log1p(-absorption), axis=0))


@pytest.mark.parametrize("profile", ["pseudo_voigt", "blase"])
@pytest.mark.parametrize("chunk_elements", [None, 7 * 64])
def test_equals_dense_when_windows_cover_everything(profile, chunk_elements):
    wl = 8000.0 + np.cumsum(np.full(700, 0.0143))
    params = _lines(40, wl[0] - 0.5, wl[-1] + 0.5)
    flux = synthesize(
        wl, *params, wing_cut=2 * wl.size, profile=profile, chunk_elements=chunk_elements
    )
    expected = dense_flux(wl, *params, profile=profile)
    np.testing.assert_allclose(flux, expected, rtol=0, atol=DENSE_ATOL)


def test_window_truncates_wings_as_specified():
    """With a short window, each line only touches wing_cut pixels centred on its nearest pixel."""
    wl = 8000.0 + 0.01 * np.arange(400)
    center = np.array([wl[200] + 0.002])
    args = (center, np.array([-1.0]), np.log([0.02]), np.log([0.02]))
    lnf = np.asarray(ln_flux(wl, *args, wing_cut=21))
    nearest = np.argmin(np.abs(wl - center[0]))
    touched = np.flatnonzero(lnf != 0.0)
    assert touched.min() == nearest - 10 and touched.max() == nearest + 10


def test_mask_and_padding_contribute_nothing():
    wl = 8000.0 + 0.01 * np.arange(500)
    params = _lines(12, wl[0], wl[-1])
    ll = LineList(*params)
    stacked = stack_line_lists([ll], length=20)
    a = synthesize_lines(wl, ll, wing_cut=300)
    b = synthesize(
        wl,
        stacked.center[0],
        stacked.ln_amplitude[0],
        stacked.ln_sigma[0],
        stacked.ln_gamma[0],
        stacked.mask[0],
        wing_cut=300,
    )
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-14)


def test_lines_near_edges_and_outside():
    wl = 8000.0 + 0.01 * np.arange(300)
    center = np.array([wl[0] - 0.3, wl[1], wl[-1], wl[-1] + 5.0])
    args = (center, np.full(4, -1.0), np.log(np.full(4, 0.02)), np.log(np.full(4, 0.01)))
    flux = np.asarray(synthesize(wl, *args, wing_cut=4 * wl.size))
    np.testing.assert_allclose(flux, dense_flux(wl, *args), rtol=0, atol=DENSE_ATOL)


@pytest.mark.parametrize("profile", ["pseudo_voigt", "voigt"])
def test_optical_depth_form_equals_the_dense_exponential(profile):
    wl = 8000.0 + np.cumsum(np.full(700, 0.0143))
    params = list(_lines(40, wl[0] - 0.5, wl[-1] + 0.5, seed=3))
    params[1][::7] += 3.0  # strong lines too: a V up to ~20, far past the absorption clip
    flux = synthesize(wl, *params, wing_cut=2 * wl.size, profile=profile, line_form="optical_depth")
    v = np.asarray(
        get_profile(profile)(
            wl[None, :] - params[0][:, None],
            np.exp(params[2])[:, None],
            np.exp(params[3])[:, None],
        )
    )
    tau = np.exp(params[1])[:, None] * v
    assert tau.max() > 5.0
    np.testing.assert_allclose(flux, np.exp(-tau.sum(0)), rtol=1e-12, atol=1e-14)
    weak = [params[0], params[1] - 12.0, params[2], params[3]]
    both = [
        synthesize(wl, *weak, wing_cut=2 * wl.size, profile=profile, line_form=f)
        for f in ("absorption", "optical_depth")
    ]
    # The weak-line limit is the absorption form's: they differ by the second order of a V.
    depth = np.abs(1.0 - np.asarray(both[1]))
    assert depth.max() > 1e-4  # not trivially equal
    np.testing.assert_array_less(np.abs(np.asarray(both[0]) - both[1]), depth**2 + 1e-15)
    with pytest.raises(ValueError, match="line_form"):
        synthesize(wl, *params, wing_cut=100, line_form="emission")


def test_saturated_optical_depth_line_keeps_its_gradient():
    # a V = 50 at the core: the absorption form clips there (zero gradient in a); the optical
    # depth's gradient stays finite, negative and matches finite differences.
    wl = 8000.0 + 0.01 * np.arange(200)
    center, ln_s, ln_g = (
        jnp.array([wl[100]]),
        jnp.log(jnp.array([0.02])),
        jnp.log(jnp.array([0.02])),
    )
    core = (
        lambda ln_a, form: synthesize(  # noqa: E731
            wl, center, ln_a, ln_s, ln_g, wing_cut=200, line_form=form
        )[98:103].sum()
    )
    ln_a = jnp.array([0.0])
    g_abs = jax.grad(lambda a: core(a, "absorption"))(ln_a)
    g_tau = jax.grad(lambda a: core(a, "optical_depth"))(ln_a)
    assert float(g_abs[0]) == 0.0
    fd = (core(ln_a + 1e-5, "optical_depth") - core(ln_a - 1e-5, "optical_depth")) / 2e-5
    assert float(g_tau[0]) < 0 and float(g_tau[0]) == pytest.approx(float(fd), rel=1e-5)


def test_saturated_line_is_clamped_and_finite():
    wl = 8000.0 + 0.01 * np.arange(200)
    args = (np.array([wl[100]]), np.array([3.0]), np.log([0.02]), np.log([0.02]))
    flux = np.asarray(synthesize(wl, *args, wing_cut=200))
    assert np.all(np.isfinite(flux)) and flux.min() == pytest.approx(1e-9, rel=1e-3)


def test_float32_profile_arithmetic_close_to_float64():
    wl = 10000.0 + 0.015 * np.arange(3000)
    params = _lines(60, wl[0], wl[-1], seed=3)
    f64 = synthesize(wl, *params, wing_cut=1000)
    f32 = synthesize(wl, *params, wing_cut=1000, compute_dtype=jnp.float32)
    assert f32.dtype == jnp.float32
    np.testing.assert_allclose(f32, f64, atol=2e-6)


def test_gradients_match_finite_differences():
    wl = 8000.0 + 0.012 * np.arange(600)
    params = [jnp.asarray(p) for p in _lines(8, wl[50], wl[-50], seed=1)]
    target = np.asarray(synthesize(wl, *params, wing_cut=400)) * 0.99

    def loss(center, ln_a, ln_s, ln_g):
        return jnp.sum((synthesize(wl, center, ln_a, ln_s, ln_g, wing_cut=400) - target) ** 2)

    grads = jax.grad(loss, argnums=(0, 1, 2, 3))(*params)
    rng = np.random.default_rng(7)
    for k, g in enumerate(grads):
        direction = rng.normal(size=g.shape)
        eps = 1e-6
        plus = [p + eps * direction if i == k else p for i, p in enumerate(params)]
        minus = [p - eps * direction if i == k else p for i, p in enumerate(params)]
        fd = (loss(*plus) - loss(*minus)) / (2 * eps)
        assert float(jnp.dot(g, direction)) == pytest.approx(float(fd), rel=1e-5, abs=1e-10)
        assert np.all(np.isfinite(g))


def test_gradients_finite_at_extremes():
    """Zero amplitude, vanishing widths and masked lines keep gradients finite."""
    wl = 8000.0 + 0.01 * np.arange(200)
    center = jnp.array([wl[50], wl[100], wl[150]])
    mask = jnp.array([True, True, False])

    def loss(ln_a, ln_s, ln_g):
        return jnp.sum(synthesize(wl, center, ln_a, ln_s, ln_g, mask, wing_cut=100))

    g = jax.grad(loss, argnums=(0, 1, 2))(
        jnp.array([-1000.0, -1.0, jnp.nan]),
        jnp.array([-40.0, -3.0, 0.0]),
        jnp.array([-40.0, -3.0, 0.0]),
    )
    assert all(np.all(np.isfinite(x)) for x in g)
    assert all(float(x[2]) == 0.0 for x in g)


def test_real_blase_clone_lines_sit_at_their_centres():
    """Synthesise the original code's published clone with its own profile variant."""
    lines = read_blase_clone(require(BLASE_CLONE))
    center = np.asarray(lines.center)
    lo, hi = center.min() - 5.0, center.max() + 5.0
    wl = lo * (1.0 + 1.0 / 500_000.0) ** np.arange(int(np.log(hi / lo) * 500_000.0))
    flux = np.asarray(synthesize_lines(wl, lines, profile="blase"))
    assert np.all(np.isfinite(flux)) and flux.max() <= 1.0
    # Strong lines with no other line within 0.2 A: the flux minimum is at the centre's pixel.
    gap = np.diff(center)
    isolated = np.r_[np.inf, gap] > 0.2
    isolated &= np.r_[gap, np.inf] > 0.2
    strong = isolated & (np.asarray(lines.ln_amplitude) > np.log(0.05))
    assert strong.sum() > 50
    offsets_px = []
    for mu in center[strong]:
        near = np.flatnonzero(np.abs(wl - mu) < 0.1)
        offsets_px.append((wl[near[np.argmin(flux[near])]] - mu) / (mu / 500_000.0))
    offsets_px = np.abs(offsets_px)
    # A few sit on the steep wing of a much broader neighbour; nearly all are within a pixel.
    assert np.median(offsets_px) <= 0.5
    assert np.mean(offsets_px <= 1.0) >= 0.97


def test_adaptive_windows_stay_within_tolerance_on_the_published_clone():
    """9,028 real cloned lines: adaptive windows vs 6000-pixel windows everywhere."""
    lines = read_blase_clone(require(BLASE_CLONE))
    center = np.asarray(lines.center)
    lo, hi = center.min() - 5.0, center.max() + 5.0
    wl = lo * (1.0 + 1.0 / 500_000.0) ** np.arange(int(np.log(hi / lo) * 500_000.0))
    args = [
        jnp.asarray(x) for x in (lines.center, lines.ln_amplitude, lines.ln_sigma, lines.ln_gamma)
    ]
    reference = np.asarray(synthesize(wl, *args, profile="blase"))
    adaptive = np.asarray(synthesize(wl, *args, profile="blase", flux_tolerance=1e-4))
    assert np.abs(adaptive - reference).max() <= 1e-4  # the tolerance asked for
    windows = window_px(wl, *args, profile="blase", flux_tolerance=1e-4)
    assert windows.min() >= 64 and windows.max() <= 6000
    assert np.all((windows % 64 == 0) | (windows == 6000))

    # Each window against the distance x where the line's own a V(x) falls to its share of the
    # tolerance (5%), found by bisection on the profile itself. It must reach x (else the
    # tolerance fails); it may reach where each of the Lorentzian and Gaussian terms is below
    # half the share: for the Lorentzian (x^2 + gamma^2 ~ 1/share) at most
    # sqrt(2 x^2 + gamma^2), for the Gaussian sqrt(2 x^2 + 2 ln 2 sigma^2), plus 2 pixels
    # and rounding up to whole 64-pixel tiles.
    a, sigma, gamma = (np.exp(np.asarray(p)) for p in args[1:])
    share = 0.05 * 1e-4
    profile = get_profile("blase")
    lo_x, hi_x = np.full(a.size, 1e-6), np.full(a.size, 1e4)
    for _ in range(80):
        mid = np.sqrt(lo_x * hi_x)
        above = a * np.asarray(profile(mid, sigma, gamma)) >= share
        lo_x, hi_x = np.where(above, mid, lo_x), np.where(above, hi_x, mid)
    pixel = center / 500_000.0
    half_bound = np.sqrt(2 * hi_x**2 + np.maximum(gamma**2, 2 * np.log(2) * sigma**2))
    upper = np.minimum(6000, 64 * np.ceil((2 * half_bound / pixel + 4) / 64))
    assert np.all((windows >= 2 * lo_x / pixel) | (windows == 6000))
    assert np.all(windows <= upper)
    # So the work is at most the bound's, below the paper's 6000 pixels per line (measured
    # 0.112 of the paper's line x pixel evaluations; the bound's sum gives 0.112 too).
    assert windows.sum() <= upper.sum() < 6000 * len(center)


def test_window_px_respects_wing_cut_and_grows_with_the_line():
    wl = 8000.0 + 0.01 * np.arange(5000)
    center = np.full(4, 8020.0)
    windows = window_px(
        wl,
        center,
        np.array([-8.0, -2.0, 0.0, 2.0]),
        np.log([0.01] * 4),
        np.log([0.01, 0.01, 0.01, 0.5]),
        wing_cut=3000,
    )
    assert np.all(np.diff(windows) >= 0) and windows[0] < windows[1] < 3000
    assert windows[-1] == 3000  # capped at wing_cut, which need not be a multiple of the tile
    assert np.all(windows[:2] % 64 == 0)


def test_adaptive_window_is_where_the_wing_falls_below_the_line_share():
    """One Lorentzian-dominated line: its window ends where a V = 5% of the tolerance, so the
    flux outside differs from the full window by at most that, and inside not at all."""
    wl = 8000.0 + 0.01 * np.arange(8000)
    args = (np.array([wl[4000] + 0.003]), np.array([-2.0]), np.log([0.002]), np.log([0.05]))
    full = np.asarray(ln_flux(wl, *args, wing_cut=8000))
    tol = 1e-3
    adaptive = np.asarray(ln_flux(wl, *args, wing_cut=8000, flux_tolerance=tol))
    touched = np.flatnonzero(adaptive != 0.0)
    width = touched.max() - touched.min() + 1
    assert width == window_px(wl, *args, wing_cut=8000, flux_tolerance=tol)[0]
    assert 64 < width < 8000
    outside = np.ones(wl.size, bool)
    outside[touched] = False
    # Equal up to rounding (a pixel may take the series in one and the log1p in the other).
    np.testing.assert_allclose(adaptive[touched], full[touched], rtol=1e-14, atol=0)
    assert np.abs(full[outside]).max() <= 0.05 * tol
    assert np.abs(full[outside]).max() > 0.05 * tol / 4  # not wastefully wide either


def test_pixel_hint_changes_nothing():
    """A good hint, a poor one (several pixels off) and a wrong one (fallback) give the same
    nearest pixels, so the same flux; also on a grid whose spacing jumps."""
    wl = np.concatenate([8000.0 + 0.01 * np.arange(300), 8003.0 + 0.02 * np.arange(1, 300)])
    params = _lines(25, wl[0] - 0.1, wl[-1] + 0.1, seed=4)
    reference = np.asarray(ln_flux(wl, *params, wing_cut=101))
    exact = np.clip(np.searchsorted(wl, params[0]), 0, wl.size - 1)
    for hint in (exact, exact + 3, np.zeros_like(exact), np.full_like(exact, wl.size - 1)):
        lnf = ln_flux(wl, *params, None, None, jnp.asarray(hint), wing_cut=101)
        np.testing.assert_array_equal(np.asarray(lnf), reference)


def test_forward_plan_holds_the_window_rule_and_evaluates_as_ln_flux():
    """A plan built once: each line's cap is its widest window over its samples (absent
    samples need none; at least one tile), the bound is the caps' tiles, the hints are the
    nearest pixels; it evaluates exactly as the easy call given the same caps, hints and
    bound, single and batched; without a tolerance every line gets ``wing_cut``."""
    wl = 8000.0 + 0.01 * np.arange(3000)
    rng = np.random.default_rng(8)
    center, ln_a, ln_s, ln_g = _lines(30, wl[0], wl[-1], seed=8)
    samples = [np.stack([x, x + rng.normal(0, 0.3, x.shape)], axis=1) for x in (ln_a, ln_s, ln_g)]
    cover = (np.repeat(center[:, None], 2, axis=1), *samples)
    present = rng.random((30, 2)) < 0.8
    settings = dict(wing_cut=1000, flux_tolerance=1e-4)
    plan = ForwardPlan.build(wl, cover, present, hint_center=center, margin=1.2, **settings)
    need = window_px(wl, *cover, margin=1.2, **settings)
    expected_cap = np.maximum(np.where(present, need, 0).max(axis=1), DEFAULT_TILE)
    np.testing.assert_array_equal(plan.window_cap, expected_cap)
    assert plan.max_tiles == tile_bound(expected_cap)
    np.testing.assert_array_equal(plan.pixel_hint, np.argmin(np.abs(wl[:, None] - center), 0))
    easy = dict(max_tiles=plan.max_tiles, **settings)
    args = (center, ln_a, ln_s, ln_g)
    expected = ln_flux(wl, *args, None, plan.window_cap, plan.pixel_hint, **easy)
    np.testing.assert_array_equal(plan.ln_flux(*args), expected)
    batch = tuple(np.stack([x, x]) for x in args)
    np.testing.assert_allclose(
        plan.ln_flux(*batch), np.stack([expected, expected]), rtol=0, atol=1e-12
    )
    fixed = ForwardPlan.build(wl, cover, hint_center=center, wing_cut=1000)
    np.testing.assert_array_equal(fixed.window_cap, np.full(30, 1000))
    assert fixed.max_tiles == 30 * -(-1000 // DEFAULT_TILE)


def test_window_cap_and_tile_bound():
    """Per-line caps limit windows (odd caps are masked within their last tile); a true
    ``max_tiles`` bound with several steps gives the same result as the default."""
    wl = 8000.0 + 0.01 * np.arange(2000)
    # Each reference line is its own compiled program (wing_cut is static): eight lines.
    n = 8
    params = _lines(n, wl[0], wl[-1], seed=5)
    cap = np.random.default_rng(0).integers(1, 400, n)
    capped = np.asarray(ln_flux(wl, *params, None, jnp.asarray(cap), wing_cut=1000))
    expected = sum(
        np.asarray(ln_flux(wl, *(p[i : i + 1] for p in params), wing_cut=int(cap[i])))
        for i in range(n)
    )
    np.testing.assert_allclose(capped, expected, rtol=0, atol=1e-12)
    bound = int(np.sum(-(-cap // 64)))
    assert tile_bound(cap) == bound
    two = np.stack([cap, cap])
    keep = np.arange(n) < 3
    tiles = -(-cap // 64)  # the busier spectrum of the two sets the bound
    assert tile_bound(two, np.stack([keep, ~keep])) == int(max(tiles[:3].sum(), tiles[3:].sum()))
    tight = ln_flux(
        wl, *params, None, jnp.asarray(cap), wing_cut=1000, max_tiles=bound, chunk_elements=64 * 5
    )
    np.testing.assert_allclose(np.asarray(tight), capped, rtol=0, atol=1e-12)


@pytest.mark.parametrize("chunk_elements", [None, 3 * 64])
def test_batch_axis_equals_one_spectrum_at_a_time(chunk_elements):
    """A leading batch axis (each spectrum with its own mask, one with no line at all, so
    spectra share steps and steps are skipped) equals separate calls; so do grads."""
    wl = 8000.0 + 0.012 * np.arange(900)
    rng = np.random.default_rng(3)
    params = np.stack([np.stack(_lines(30, wl[0] - 0.3, wl[-1] + 0.3, seed=s)) for s in range(3)])
    params = jnp.asarray(params.transpose(1, 0, 2))  # (4 params, 3 spectra, 30 lines)
    mask = rng.uniform(size=(3, 30)) < np.array([[0.9], [0.3], [0.0]])
    kw = dict(wing_cut=2 * wl.size + 1, chunk_elements=chunk_elements)
    batched = ln_flux(wl, *params, jnp.asarray(mask), **kw)
    assert batched.shape == (3, wl.size)
    for b in range(3):
        single = ln_flux(wl, *(p[b] for p in params), jnp.asarray(mask[b]), **kw)
        np.testing.assert_allclose(batched[b], single, rtol=0, atol=1e-12)
        expected = dense_flux(wl, *(np.asarray(p[b])[mask[b]] for p in params))
        np.testing.assert_allclose(np.exp(batched[b]), expected, rtol=0, atol=DENSE_ATOL)
    np.testing.assert_array_equal(batched[2], 0.0)

    def loss_batched(ln_a):
        return jnp.sum(ln_flux(wl, params[0], ln_a, params[2], params[3], mask, **kw) ** 2)

    def loss_single(ln_a):
        one = lambda b: ln_flux(  # noqa: E731
            wl, params[0][b], ln_a[b], params[2][b], params[3][b], mask[b], **kw
        )
        return sum(jnp.sum(one(b) ** 2) for b in range(3))

    np.testing.assert_allclose(
        jax.grad(loss_batched)(params[1]), jax.grad(loss_single)(params[1]), rtol=1e-10, atol=1e-14
    )


def _dense_ln_flux(wl, center, ln_a, ln_sigma, ln_gamma):
    """ln flux from the definition, float64, every line on every pixel (log1p of each line)."""
    v = np.asarray(
        get_profile("pseudo_voigt")(
            wl[None, :] - center[:, None], np.exp(ln_sigma)[:, None], np.exp(ln_gamma)[:, None]
        )
    )
    return np.sum(np.log1p(-np.clip(np.exp(ln_a)[:, None] * v, 0.0, 1.0 - 1e-9)), axis=0)


def test_core_and_wing_streams_equal_the_definition():
    """Pixels where a line absorbs >= 1% (or its Gaussian term matters) get the full profile,
    the rest the Lorentzian term and a series for the log: together they equal the definition
    to float64 rounding, also where the pixel spacing shrinks tenfold next to strong lines
    (there the reach in pixels, estimated from the spacing at the centre, is too short, and
    the whole window must fall back to the full profile)."""
    wl = np.concatenate([8000.0 + 0.02 * np.arange(600), 8012.0 + 0.002 * np.arange(1, 1500)])
    rng = np.random.default_rng(11)
    center = np.concatenate([[8011.9, 8011.95, 8012.5], rng.uniform(8000.5, 8014.5, 25)])
    ln_a = np.concatenate([[np.log(0.95), np.log(0.5), np.log(0.3)], rng.uniform(-7, -0.1, 25)])
    ln_s = np.log(np.concatenate([[0.01, 0.004, 0.02], rng.uniform(0.002, 0.05, 25)]))
    ln_g = np.log(np.concatenate([[0.05, 0.002, 0.01], rng.uniform(1e-4, 0.05, 25)]))
    args = (center, ln_a, ln_s, ln_g)
    reference = _dense_ln_flux(wl, *args)
    lnf = np.asarray(ln_flux(wl, *args, wing_cut=2 * wl.size))
    np.testing.assert_allclose(lnf, reference, rtol=1e-12, atol=1e-15)
    lnf32 = np.asarray(ln_flux(wl, *args, wing_cut=2 * wl.size, compute_dtype=jnp.float32))
    assert np.abs(np.exp(lnf32) - np.exp(reference)).max() < 2e-6


def test_precomputed_padded_wavelengths():
    wl = 8000.0 + 0.01 * np.arange(900)
    params = _lines(20, wl[0], wl[-1], seed=4)
    plain = np.asarray(ln_flux(wl, *params, wing_cut=301))
    padded = pad_wavelength(wl, 301)
    assert padded.shape == (900 + 301 + 64,)
    np.testing.assert_array_equal(
        np.asarray(ln_flux(wl, *params, wing_cut=301, padded_wavelength_aa=padded)), plain
    )
    with pytest.raises(ValueError, match="pad_wavelength"):
        ln_flux(wl, *params, wing_cut=300, padded_wavelength_aa=padded)
