import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jblase.forward as forward
import jblase.generator as generator_module
from jblase.forward import DEFAULT_TILE, synthesize
from jblase.generator import Generator, generator_chunk_elements
from jblase.profiles import get_profile

AXES = (np.array([4000.0, 4500.0, 5000.0, 6000.0]), np.array([4.0, 4.5]), np.array([-0.5, 0.0]))


def _random_manifold(n_lines=200, n_pix=12000, seed=0):
    rng = np.random.default_rng(seed)
    wl = 8500.0 * (1 + 1 / 500_000) ** np.arange(n_pix)
    identity = np.round(np.sort(rng.uniform(wl[0] + 1, wl[-1] - 1, n_lines)), 2)
    shape = (n_lines, *(a.size for a in AXES))
    values = np.stack(
        [
            rng.normal(0.0, 0.005, shape),
            rng.uniform(-5.0, -1.0, shape),
            np.log(rng.uniform(0.01, 0.03, shape)),
            np.log(rng.uniform(0.005, 0.02, shape)),
        ],
        axis=-1,
    ).astype(np.float32)
    values[..., 1][rng.random(shape) < 0.25] = -1000.0
    return identity, values, wl


@pytest.fixture(scope="module")
def generator():
    identity, values, wl = _random_manifold()
    return Generator.from_arrays(identity, values, AXES, wl, wing_cut=2000)


@pytest.mark.parametrize("mode", ["linear", "log", "hybrid", "logit_depth"])
def test_grid_point_reproduces_the_node_lines(mode):
    identity, values, wl = _random_manifold()
    generator = Generator.from_arrays(
        identity, values, AXES, wl, wing_cut=2000, amplitude_interpolation=mode
    )
    for i, j, k in [(0, 0, 0), (1, 0, 1), (3, 1, 1), (2, 1, 0)]:
        v = values[:, i, j, k].astype(np.float64)
        present = v[:, 1] > -100
        expected = synthesize(
            wl,
            identity + v[:, 0],
            v[:, 1],
            v[:, 2],
            v[:, 3],
            present,
            wing_cut=2000,
            flux_tolerance=generator.flux_tolerance,
        )
        got = generator(jnp.array([AXES[0][i], AXES[1][j], AXES[2][k]]))
        # "linear" stores a = exp(ln a) in float32: a round trip of one float32 rounding
        # ("hybrid" too, for its saturated lines, which take the a branch)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12 if mode == "log" else 1e-6)


@pytest.mark.parametrize("mode", ["linear", "log", "hybrid", "logit_depth"])
def test_off_grid_interpolates_line_parameters(mode):
    identity, values, wl = _random_manifold()
    generator = Generator.from_arrays(
        identity,
        values,
        AXES,
        wl,
        wing_cut=2000,
        amplitude_interpolation=mode,
        log_max_depth=None,
        cubic_axes=(),  # trilinear (the spline is checked on its own below)
    )
    theta = np.array([4700.0, 4.2, -0.1])
    center, ln_a, ln_s, ln_g, mask = generator.line_parameters(theta)
    # Trilinear weights by hand, in ln a ("log", the paper) or in a ("linear"); "hybrid": in
    # ln a for the lines present at all 8 corners of the cell, in a for the others.
    values = values.astype(np.float64)
    t = [(4700 - 4500) / 500, (4.2 - 4.0) / 0.5, (-0.1 + 0.5) / 0.5]

    # "logit_depth": logit of the central depth d = a V(0) interpolated, then a = d / V(0)
    # at the interpolated widths (the pseudo-Voigt's peak by hand: eta L(0) + (1 - eta) G(0)
    # with L of half-width f / 2 and G of FWHM f, DESIGN.md step 1).
    def peak(ln_s, ln_g):
        f_g = 2.0 * np.sqrt(2.0 * np.log(2.0)) * np.exp(ln_s)
        f_l = 2.0 * np.exp(ln_g)
        f = (f_g**5 + 2.69269 * f_g**4 * f_l + 2.42843 * f_g**3 * f_l**2
             + 4.47163 * f_g**2 * f_l**3 + 0.07842 * f_g * f_l**4 + f_l**5) ** 0.2  # fmt: skip
        r = f_l / f
        eta = 1.36603 * r - 0.47719 * r**2 + 0.11116 * r**3
        std = f / (2.0 * np.sqrt(2.0 * np.log(2.0)))
        return eta / (np.pi * f / 2.0) + (1 - eta) / (std * np.sqrt(2 * np.pi))

    expected, expected_lin, everywhere = 0.0, 0.0, True
    logit, unclipped = 0.0, True
    for ci in (0, 1):
        for cj in (0, 1):
            for ck in (0, 1):
                w = (t[0] if ci else 1 - t[0]) * (t[1] if cj else 1 - t[1])
                w = w * (t[2] if ck else 1 - t[2])
                corner = values[:, 1 + ci, cj, ck]
                expected = expected + w * corner
                expected_lin = expected_lin + w * np.exp(corner[:, 1])
                everywhere = everywhere & (corner[:, 1] > -100)
                d = np.exp(corner[:, 1]) * peak(corner[:, 2], corner[:, 3])
                unclipped = unclipped & (d < 1 - 1e-6)
                d = np.clip(d, 1e-300, 1 - 1e-6)
                logit = logit + w * (np.log(d) - np.log1p(-d))
    with np.errstate(divide="ignore"):
        ln_lin = np.log(expected_lin)
    with np.errstate(over="ignore"):
        depth = 1.0 / (1.0 + np.exp(-logit))
    ln_logit = np.log(depth) - np.log(peak(expected[:, 2], expected[:, 3]))
    expected_ln_a = {
        "linear": ln_lin,
        "log": expected[:, 1],
        "hybrid": np.where(everywhere, expected[:, 1], ln_lin),
        "logit_depth": np.where(everywhere & unclipped, ln_logit, ln_lin),
    }[mode]
    if mode in ("hybrid", "logit_depth"):  # both kinds of line are in the test
        assert 10 < everywhere.sum() < everywhere.size - 10
    expected_mask = expected_ln_a >= -100
    np.testing.assert_array_equal(mask, expected_mask)
    np.testing.assert_allclose(
        np.asarray(ln_a)[expected_mask], expected_ln_a[expected_mask], rtol=1e-6
    )
    np.testing.assert_allclose(center, identity + expected[:, 0], rtol=0, atol=1e-7)


def test_restricted_generator_equals_the_full_one(generator):
    wl = np.asarray(generator.wavelength)
    lo, hi = wl[3000], wl[4500]
    small = generator.restrict(lo, hi)
    assert small.n_lines < generator.n_lines
    theta = jnp.array([4800.0, 4.3, -0.2])
    inside = (wl >= lo) & (wl <= hi)
    np.testing.assert_array_equal(np.asarray(small.wavelength), wl[inside])
    np.testing.assert_allclose(small(theta), generator(theta)[inside], rtol=0, atol=1e-13)
    with pytest.raises(ValueError, match="selects no pixels"):
        generator.restrict(100.0, 200.0)


def test_vmap_and_batch_equal_single_calls(generator):
    rng = np.random.default_rng(3)
    thetas = jnp.asarray(
        np.c_[rng.uniform(4000, 6000, 64), rng.uniform(4.0, 4.5, 64), rng.uniform(-0.5, 0.0, 64)]
    )
    single = jnp.stack([generator(t) for t in thetas[:8]])
    np.testing.assert_allclose(jax.vmap(generator)(thetas)[:8], single, rtol=0, atol=1e-13)
    np.testing.assert_allclose(generator.batch(thetas, batch_size=10)[:8], single, atol=1e-13)
    assert generator.batch(thetas, batch_size=10).shape == (64, generator.wavelength.shape[0])
    # Inside jit, batch() runs its steps in one lax.map; same numbers, last step padded.
    in_jit = jax.jit(lambda t: generator.batch(t, batch_size=3))(thetas[:8])
    np.testing.assert_allclose(in_jit, single, rtol=0, atol=1e-13)
    with pytest.raises(ValueError, match="params must be"):
        generator.batch(thetas[:, :2])


def test_batch_splits_steps_that_would_overflow_the_tile_numbers(generator, monkeypatch):
    """Where a step's tiles would overflow the forward model's int32 tile numbering (here a
    lowered limit: two spectra per step), batch() takes smaller steps with the same fluxes;
    the forward model alone refuses the large batch with the number it can take."""
    rng = np.random.default_rng(11)
    thetas = np.c_[rng.uniform(4000, 6000, 5), rng.uniform(4.0, 4.5, 5), rng.uniform(-0.5, 0, 5)]
    single = np.stack([generator(t) for t in thetas])
    elements = generator_chunk_elements(5)
    limit = forward._tile_numbers_needed(2 * generator.max_tiles, DEFAULT_TILE, elements) + 1
    monkeypatch.setattr(forward, "_TILE_NUMBER_LIMIT", limit)
    assert forward.max_batch_spectra(generator.max_tiles, chunk_elements=elements) == 2
    np.testing.assert_allclose(generator.batch(thetas, batch_size=5), single, rtol=0, atol=1e-13)
    with pytest.raises(ValueError, match="at most 2 spectra per call"):
        generator_module._flux(generator, jnp.asarray(thetas))


@pytest.mark.parametrize("threads", [1, 3])
def test_batch_threads_equal_single_calls(generator, monkeypatch, threads):
    """On CPU, batch() shares its steps among threads: 7 spectra in steps of 2 over 3 threads
    leave the second thread a padded step and the third padding only; the fluxes equal
    one-at-a-time calls either way."""
    monkeypatch.setattr(generator_module, "BATCH_CPU_THREADS", threads)
    monkeypatch.setattr(generator_module, "BATCH_CPU_MIN_STEPS_PER_THREAD", 1)
    rng = np.random.default_rng(5)
    thetas = np.c_[rng.uniform(4000, 6000, 7), rng.uniform(4.0, 4.5, 7), rng.uniform(-0.5, 0, 7)]
    single = np.stack([generator(t) for t in thetas])
    out = generator.batch(thetas, batch_size=2)
    assert isinstance(out, jax.Array) and out.shape == single.shape
    np.testing.assert_allclose(out, single, rtol=0, atol=1e-13)


def test_chunk_elements_per_step(generator, monkeypatch):
    """Small steps (many scan steps) give the same fluxes; on an accelerator the default step
    grows with the batch up to its cap (a lone spectrum would otherwise pay a large batch's
    step)."""
    thetas = np.array([[4300.0, 4.1, -0.3], [5700.0, 4.4, -0.1], [5100.0, 4.2, -0.4]])
    single = np.stack([generator(t) for t in thetas])
    many_steps = generator.batch(thetas, batch_size=2, chunk_elements=16 * DEFAULT_TILE)
    np.testing.assert_allclose(many_steps, single, rtol=0, atol=1e-12)
    assert generator_chunk_elements(1) == generator_module.GENERATOR_CHUNK_ELEMENTS_CPU
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    per = generator_module.GENERATOR_CHUNK_ELEMENTS_PER_SPECTRUM_ACCELERATOR
    cap = generator_module.GENERATOR_CHUNK_ELEMENTS_ACCELERATOR
    assert generator_chunk_elements(1) == per
    assert generator_chunk_elements(4) == min(4 * per, cap)
    assert generator_chunk_elements(100_000) == cap


def test_hybrid_depth_limits_move_lines_to_the_linear_branch_without_losing_them():
    # With limits no line meets, every line takes the a branch: the "linear" generator.
    identity, values, wl = _random_manifold()
    linear = Generator.from_arrays(
        identity, values, AXES, wl, wing_cut=2000, amplitude_interpolation="linear"
    )
    theta = jnp.array([4700.0, 4.2, -0.1])
    hybrid = lambda **limits: Generator.from_arrays(  # noqa: E731
        identity, values, AXES, wl, wing_cut=2000, amplitude_interpolation="hybrid", **limits
    )
    for limits in ({"log_min_depth": 1e9}, {"log_max_depth": -1.0}):
        np.testing.assert_allclose(hybrid(**limits)(theta), linear(theta), rtol=0, atol=1e-6)
    # A limit every line meets changes nothing.
    loose, plain = hybrid(log_max_depth=1e9), hybrid(log_max_depth=None)
    np.testing.assert_array_equal(loose(theta), plain(theta))


@pytest.mark.parametrize("cubic", [(), ("teff",)])
def test_cubic_teff_reproduces_the_nodes_and_follows_the_spline(cubic):
    identity, values, wl = _random_manifold()
    linear = {"wing_cut": 2000, "amplitude_interpolation": "linear"}
    gen = Generator.from_arrays(identity, values, AXES, wl, cubic_axes=cubic, **linear)
    base = Generator.from_arrays(identity, values, AXES, wl, **linear)
    node = jnp.array([AXES[0][1], AXES[1][1], AXES[2][0]])
    np.testing.assert_allclose(gen(node), base(node), rtol=0, atol=1e-12)
    # Off the nodes: the centre offsets follow the Hermite spline of the four Teff nodes
    # (central-difference slopes) at the log g / [Fe/H] node.
    teff = 4700.0
    center = np.asarray(gen.line_parameters(jnp.array([teff, 4.5, 0.0]))[0]) - np.sort(identity)
    mu = values[np.argsort(identity), :, 1, 1, 0].astype(np.float64)  # (lines, teff)
    if cubic:
        from scipy.interpolate import CubicHermiteSpline

        x = AXES[0]
        slope = np.gradient(mu, x, axis=1, edge_order=1)
        slope[:, 1:-1] = (mu[:, 2:] - mu[:, :-2]) / (x[2:] - x[:-2])
        expected = CubicHermiteSpline(x, mu, slope, axis=1)(teff)
    else:
        expected = np.array([np.interp(teff, AXES[0], m) for m in mu])
    np.testing.assert_allclose(center, expected, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="unknown grid axis"):
        Generator.from_arrays(identity, values, AXES, wl, cubic_axes=("mass",))


def _hermite_teff(y, teff):
    """scipy's cubic Hermite spline through y (..., n_teff) on AXES[0] at ``teff``, with the
    interpolator's slopes (central differences, one-sided at the ends)."""
    from scipy.interpolate import CubicHermiteSpline

    x = AXES[0]
    slope = np.gradient(y, x, axis=-1, edge_order=1)
    slope[..., 1:-1] = (y[..., 2:] - y[..., :-2]) / (x[2:] - x[:-2])
    return CubicHermiteSpline(x, y, slope, axis=-1)(teff)


@pytest.mark.parametrize("mode", ["hybrid", "logit_depth"])
def test_hybrid_cubic_follows_the_spline_where_the_whole_stencil_holds_the_line(mode):
    """cubic_axes with the hybrid modes: a line present at all four Teff nodes of the stencil
    follows the Hermite spline of its ln a (logit d) and widths; one that lacks the line at a
    far stencil node keeps the multilinear hybrid value in that cell and takes the spline in
    the next; nodes are reproduced and the gradient along Teff is continuous across nodes."""
    identity, values, wl = _random_manifold(n_lines=40, n_pix=6000, seed=4)
    values = values.astype(np.float64)
    values[..., 1] = np.clip(values[..., 1], -5.0, -4.0)  # weak: every line on the log branch
    values[:, 0, :, :, 1] = -1000.0  # no line at the first Teff node (4000 K) ...
    values[:20, 0, :, :, 1] = -4.5  # ... but for the first 20, present everywhere
    kw = {"wing_cut": 2000, "amplitude_interpolation": mode, "log_max_depth": None}
    smooth = Generator.from_arrays(identity, values, AXES, wl, cubic_axes=("teff",), **kw)
    plain = Generator.from_arrays(identity, values, AXES, wl, cubic_axes=(), **kw)
    order = np.argsort(identity, kind="stable")
    everywhere = order < 20
    logg, feh = AXES[1][1], AXES[2][1]
    for node in AXES[0]:
        p = jnp.array([node, logg, feh])
        np.testing.assert_allclose(smooth(p), plain(p), rtol=0, atol=1e-12)
    # Cell 4500-5000 K: stencil 4000-6000 K; cell 5000-6000 K: stencil 4500-6000 K.
    for teff in (4700.0, 5600.0):
        _, ln_a, ln_s, _, mask = smooth.line_parameters(jnp.array([teff, logg, feh]))
        _, ln_a_plain, _, _, _ = plain.line_parameters(jnp.array([teff, logg, feh]))
        node_values = np.asarray(smooth.values)[:, 1, 1, :, :]  # (teff, channel, line)
        spline = _hermite_teff(np.moveaxis(node_values, 0, -1), teff)  # (channel, line)
        branch = spline[1]
        if mode == "logit_depth":  # a = D sigmoid(logit(d / D)) / V(0) at the spline's widths
            profile = get_profile(smooth.profile)
            peak = np.asarray(profile(0.0, jnp.exp(spline[2]), jnp.exp(spline[3])))
            ceiling = np.log(smooth.depth_ceiling)
            branch = ceiling - np.logaddexp(0.0, -branch) - np.log(peak)
        supported = everywhere if teff < 5000 else np.ones_like(everywhere)
        assert np.all(np.asarray(mask))
        np.testing.assert_allclose(np.asarray(ln_a)[supported], branch[supported], atol=1e-9)
        np.testing.assert_allclose(np.asarray(ln_s)[supported], spline[2][supported], atol=1e-9)
        np.testing.assert_allclose(
            np.asarray(ln_a)[~supported], np.asarray(ln_a_plain)[~supported], atol=1e-12
        )
        assert np.abs(np.asarray(ln_a) - np.asarray(ln_a_plain))[supported].max() > 1e-4
    # C1 across the interior nodes for the lines on the spline everywhere.
    slope = jax.grad(
        lambda t: jnp.sum(smooth.line_parameters(jnp.array([t, logg, feh]))[1][everywhere])
    )
    for node in AXES[0][1:-1]:
        left, right = float(slope(node - 1e-6)), float(slope(node + 1e-6))
        assert left == pytest.approx(right, rel=1e-4, abs=1e-10)


@pytest.mark.parametrize("mode", ["linear", "hybrid", "logit_depth", "cubic"])
def test_gradient_matches_finite_differences(mode):
    identity, values, wl = _random_manifold(n_lines=80, n_pix=6000, seed=5)
    # float64 values so finite differences are not swamped by float32 rounding; "cubic":
    # linear a, cubic Hermite along Teff
    kind = {"amplitude_interpolation": mode}
    if mode == "cubic":
        kind = {"amplitude_interpolation": "linear", "cubic_axes": ("teff",)}
    generator = Generator.from_arrays(
        identity, values.astype(np.float64), AXES, wl, wing_cut=2000, **kind
    )
    theta = jnp.array([4730.0, 4.21, -0.13])
    target = generator(jnp.array([4800.0, 4.3, -0.2]))
    loss = lambda p: jnp.mean((generator(p) - target) ** 2)  # noqa: E731
    grad = np.asarray(jax.grad(loss)(theta))
    for i, eps in enumerate((1e-3, 1e-6, 1e-6)):
        step = np.zeros(3)
        step[i] = eps
        fd = (loss(theta + step) - loss(theta - step)) / (2 * eps)
        assert grad[i] == pytest.approx(float(fd), rel=1e-4, abs=1e-14)
    assert np.all(np.isfinite(jax.grad(loss)(jnp.array([4500.0, 4.0, -0.5]))))


def test_logit_depth_is_exact_for_a_saturating_line_and_keeps_finite_gradients():
    """One line whose central depth saturates as d = k / (1 + k), k = exp(Teff / 250 K - 16),
    widths fixed: between two nodes logit d is linear in Teff, so "logit_depth" interpolates
    the depth exactly (and "hybrid"'s ln a does not); near d = 1 the gradient stays finite."""
    wl = 8500.0 * (1 + 1 / 500_000) ** np.arange(4000)
    identity = np.array([wl[2000]])
    ln_s, ln_g = np.log(0.02), np.log(0.01)
    from jblase.profiles import get_profile

    v0 = float(get_profile("pseudo_voigt")(0.0, np.exp(ln_s), np.exp(ln_g)))
    k = np.exp(AXES[0] / 250.0 - 16.0)[:, None, None] * np.ones((1, 2, 2))
    values = np.zeros((1, *k.shape, 4))
    values[..., 1] = np.log(k / (1 + k) / v0)
    values[..., 2], values[..., 3] = ln_s, ln_g
    gens = {
        m: Generator.from_arrays(
            identity, values, AXES, wl, wing_cut=1000, amplitude_interpolation=m
        )
        for m in ("logit_depth", "hybrid")
    }
    teff = 4725.0
    kt = np.exp(teff / 250.0 - 16.0)
    depth = {m: float(np.exp(g.line_parameters(jnp.array([teff, 4.2, -0.1]))[1][0]) * v0)
             for m, g in gens.items()}  # fmt: skip
    assert depth["logit_depth"] == pytest.approx(kt / (1 + kt), rel=1e-9)
    assert abs(depth["hybrid"] - kt / (1 + kt)) > 1e-3
    saturated = values.copy()
    saturated[..., 1] = np.log((1 - 1e-5) / v0)  # a V(0) within 1e-5 of 1 at every node
    gen = Generator.from_arrays(
        identity, saturated, AXES, wl, wing_cut=1000, amplitude_interpolation="logit_depth"
    )
    grad = jax.grad(lambda p: jnp.sum(gen(p)))(jnp.array([4725.0, 4.2, -0.1]))
    assert np.all(np.isfinite(np.asarray(grad)))
    with pytest.raises(ValueError, match="logit_depth.*absorption"):
        Generator.from_arrays(
            identity, values, AXES, wl, amplitude_interpolation="logit_depth",
            line_form="optical_depth",
        )  # fmt: skip


def test_depth_ceiling_follows_lines_that_saturate_below_full_depth():
    """Lines that level off at a depth D < 1, d = D k / (1 + k) with ln k linear in Teff:
    logit(d / D) interpolates them exactly, the plain logit of d (D = 1) does not; "auto"
    (the default) finds D from the nodes alone (the deepest line times the margin); a line
    at the ceiling takes the a branch and the nodes are still reproduced; a bad ceiling is a
    clear error."""
    from jblase.generator import DEPTH_CEILING_MARGIN, _central_depth
    from jblase.profiles import get_profile

    wl = 8500.0 * (1 + 1 / 500_000) ** np.arange(4000)
    identity = np.array([wl[1500], wl[2500]])
    ln_s, ln_g = np.log(0.02), np.log(0.01)
    v0 = float(get_profile("pseudo_voigt")(0.0, np.exp(ln_s), np.exp(ln_g)))
    ceiling = 0.8

    def depth_law(teff, shift):
        k = np.exp(np.asarray(teff) / 250.0 - 16.0 + shift)
        return ceiling * k / (1 + k)

    values = np.zeros((2, len(AXES[0]), 2, 2, 4))
    for n, shift in enumerate((0.0, 1.5)):
        values[n, ..., 1] = np.log(depth_law(AXES[0], shift) / v0)[:, None, None]
    values[..., 2], values[..., 3] = ln_s, ln_g

    def build(**kw):
        return Generator.from_arrays(
            identity, values, AXES, wl, wing_cut=1000, amplitude_interpolation="logit_depth", **kw
        )

    gens = {"exact": build(depth_ceiling=ceiling), "plain": build(depth_ceiling=1.0)}
    gens["auto"] = build()
    deepest = _central_depth(values, "pseudo_voigt").max()
    assert gens["auto"].depth_ceiling == pytest.approx(DEPTH_CEILING_MARGIN * deepest)
    assert gens["exact"].depth_ceiling == ceiling
    teff = 4725.0
    depth = {
        m: np.exp(np.asarray(g.line_parameters(jnp.array([teff, 4.2, -0.1]))[1])) * v0
        for m, g in gens.items()
    }
    truth = np.array([depth_law(teff, 0.0), depth_law(teff, 1.5)])
    np.testing.assert_allclose(depth["exact"], truth, rtol=1e-9)
    assert np.max(np.abs(depth["plain"] - truth)) > 1e-3
    # The margin puts "auto" between the two, much nearer the truth than the plain logit.
    assert np.max(np.abs(depth["auto"] - truth)) < 0.5 * np.max(np.abs(depth["plain"] - truth))
    # A ceiling below the second line's depth: that line takes the a branch where it is too
    # deep, and every node is still reproduced exactly, by the ceiling's generator too.
    low = build(depth_ceiling=0.5)
    for i, teff_node in enumerate(AXES[0]):
        node = jnp.array([teff_node, AXES[1][0], AXES[2][0]])
        for g in (low, gens["exact"]):
            np.testing.assert_allclose(
                np.exp(np.asarray(g.line_parameters(node)[1])), np.exp(values[:, i, 0, 0, 1]),
                rtol=1e-6,
            )  # fmt: skip
    assert low.restrict(wl[1000], wl[3000]).depth_ceiling == 0.5
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(ValueError, match="depth_ceiling"):
            build(depth_ceiling=bad)


def test_auto_interpolation_follows_the_line_form():
    """The default ("auto"): logit of the depth with a Teff spline for absorption lines, ln a
    (hybrid) with the spline for optical-depth lines; "linear" and "log" (the paper's) stay
    trilinear unless asked; bad names are clear errors."""
    from jblase.generator import resolve_interpolation

    identity, values, wl = _random_manifold(n_lines=30, n_pix=3000)
    auto = Generator.from_arrays(identity, values, AXES, wl, wing_cut=1000)
    assert (auto.amplitude_interpolation, auto.cubic_axes) == ("logit_depth", (0,))
    tau = Generator.from_arrays(
        identity, values, AXES, wl, wing_cut=1000, line_form="optical_depth"
    )
    assert (tau.amplitude_interpolation, tau.cubic_axes) == ("hybrid", (0,))
    assert resolve_interpolation("log", "auto", "absorption") == ("log", ())
    assert resolve_interpolation("linear", "auto", "optical_depth") == ("linear", ())
    assert resolve_interpolation("hybrid", ("teff", "logg"), "absorption") == ("hybrid", (0, 1))
    assert resolve_interpolation("auto", (), "absorption") == ("logit_depth", ())
    with pytest.raises(ValueError, match="amplitude_interpolation must be 'auto' or one of"):
        resolve_interpolation("cubic", "auto", "absorption")
    with pytest.raises(ValueError, match="line_form"):
        resolve_interpolation("auto", "auto", "emission")


def test_bounds_checks(generator):
    assert bool(generator.in_bounds(jnp.array([4500.0, 4.2, -0.1])))
    assert not bool(generator.in_bounds(jnp.array([3900.0, 4.2, -0.1])))
    with pytest.raises(ValueError, match=r"logg = 5.0 is outside the grid range \[4.0, 4.5\]"):
        generator.check_params([4500.0, 5.0, 0.0])
    with pytest.raises(ValueError, match="teff"):
        generator.check_params([np.nan, 4.2, 0.0])


def test_non_finite_pixels_become_one():
    """A line whose ln sigma overflows exp (float64 exp(800) = inf) makes the pixels of its
    window NaN in the forward model; the generator returns 1 there. The control is the same
    manifold with that line benign (strong and broad, so its window is also the whole
    wing_cut, and both generators share one compiled program): equal outside the window."""
    identity, values, wl = _random_manifold(n_lines=60, n_pix=6000, seed=2)
    bad = 30
    values[bad, ..., 0] = 0.0
    values[bad, ..., 1] = -1.0  # present everywhere
    values[bad, ..., 2] = np.log(0.02)
    values[bad, ..., 3] = np.log(0.5)
    overflow = values.copy()
    overflow[bad, ..., 2] = 800.0
    theta = np.array([4700.0, 4.2, -0.1])
    benign = Generator.from_arrays(identity, values, AXES, wl, wing_cut=2000)
    broken = Generator.from_arrays(identity, overflow, AXES, wl, wing_cut=2000)
    np.testing.assert_array_equal(broken.window_cap, benign.window_cap)
    reference, flux = np.asarray(benign(theta)), np.asarray(broken(theta))
    assert np.isfinite(reference).all() and np.isfinite(flux).all()
    changed = np.flatnonzero(flux != reference)
    nearest = np.argmin(np.abs(wl - identity[bad]))
    # One block of the line's window (2000 pixels around its nearest pixel) ...
    assert changed.min() >= nearest - 1000 and changed.max() <= nearest + 1000
    assert changed.size > 1500 and np.all(np.diff(changed) == 1)
    window = slice(changed.min(), changed.max() + 1)
    # ... where the flux is 1 (the absorption of the other lines there is lost with it).
    np.testing.assert_array_equal(flux[window], 1.0)
    assert reference[window].max() < 1.0
