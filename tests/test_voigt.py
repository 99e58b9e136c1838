"""The exact Voigt profile: the Faddeeva function against scipy, the profile's invariants, and
the forward model's ``"voigt"`` lines against a dense scipy evaluation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import voigt_profile, wofz

from jblase.clone import CloneSettings, clone_spectrum
from jblase.faddeeva import (
    ASYMPTOTIC_RADIUS,
    ASYMPTOTIC_TERMS,
    asymptotic_voigt,
    faddeeva,
    faddeeva_real,
)
from jblase.forward import (
    _envelope,
    _line_coefficients,
    ln_flux,
    required_half_width_aa,
    synthesize,
)
from jblase.generator import Generator
from jblase.profiles import PROFILES, gaussian, get_components, get_profile, lorentzian, voigt

SQRT2 = np.sqrt(2.0)


def _z_grid(y_min=1e-3):
    """(x, y) over the range lines reach: y = gamma / (sigma sqrt 2) from y_min to 1e2,
    x = |offset| / (sigma sqrt 2) from 0 to 1e4 (dense near the core, log-spaced beyond)."""
    x = np.unique(np.concatenate([np.linspace(0, 12, 1201), np.logspace(-4, 4, 1200)]))
    y = np.logspace(np.log10(y_min), 2, 161)
    return np.meshgrid(x, y)


def test_faddeeva_matches_scipy_wofz_over_the_line_range():
    x, y = _z_grid()
    reference = wofz(x + 1j * y)
    re, im = (np.asarray(v) for v in jax.jit(faddeeva)(x, y))
    rel_re = np.abs(re - reference.real) / reference.real
    assert rel_re.max() <= 1e-6  # measured 7.6e-8
    assert np.max(np.abs(im - reference.imag) / np.abs(reference)) <= 1e-6  # measured 5e-9
    # Both pieces meet the bound on their own side of the switch.
    far = np.hypot(x, y) >= ASYMPTOTIC_RADIUS
    assert far.any() and (~far).any()
    assert rel_re[far].max() <= 1e-6 and rel_re[~far].max() <= 1e-6
    np.testing.assert_allclose(np.asarray(faddeeva_real(x, y)), re, rtol=1e-10, atol=0)
    # w(-x + i y) = conj(w(x + i y)).
    re_neg, im_neg = (np.asarray(v) for v in jax.jit(faddeeva)(-x, y))
    np.testing.assert_allclose(re_neg, re, rtol=1e-14, atol=0)
    np.testing.assert_allclose(im_neg, -im, rtol=1e-14, atol=0)


def test_faddeeva_near_the_real_axis():
    """y -> 0: Re w(x) = exp(-x^2) underflows any relative bound, so absolute (w(0) = 1)."""
    x, y = _z_grid(y_min=1e-3)
    x, y = x[:4], np.array([0.0, 1e-12, 1e-8, 1e-6])[:, None] * np.ones_like(x[:4])
    reference = wofz(x + 1j * y).real
    assert np.abs(np.asarray(faddeeva_real(x, y)) - reference).max() <= 1e-13  # measured 4e-14


def test_faddeeva_float32():
    """float32 in, float32 out: within 2e-6 of w(0) = 1 near the core (Weideman's sum rounds
    in float32) and 1e-6 relative in the asymptotic region."""
    x, y = _z_grid()
    reference = wofz(x + 1j * y).real
    re32 = np.asarray(faddeeva_real(x.astype(np.float32), y.astype(np.float32)))
    assert re32.dtype == np.float32
    far = np.hypot(x, y) >= ASYMPTOTIC_RADIUS
    assert np.abs(re32 - reference).max() <= 2e-6  # measured 8.8e-7
    assert np.max(np.abs(re32 - reference)[far] / reference[far]) <= 1e-6  # measured 4.6e-7


WIDTHS = [(0.02, 2e-5), (0.02, 0.002), (0.02, 0.02), (0.005, 0.05), (2e-4, 0.03)]


@pytest.mark.parametrize("sigma,gamma", WIDTHS)
def test_voigt_matches_scipy_voigt_profile(sigma, gamma):
    x = np.concatenate([[0.0], np.logspace(-5, 2, 3000)])
    x = np.concatenate([-x[::-1], x])
    exact = voigt_profile(x, sigma, gamma)
    ours = np.asarray(voigt(x, sigma, gamma))
    assert np.max(np.abs(ours - exact) / exact) <= 1e-6  # measured <= 8e-8


@pytest.mark.parametrize("sigma,gamma", WIDTHS)
def test_voigt_unit_area(sigma, gamma):
    """Simpson over +-x_max on a sinh-spaced grid, plus the analytic Lorentzian tails beyond
    (2 (gamma / pi) / x_max to leading order; the next term, (3 sigma^2 - gamma^2) / x_max^2
    of it, is below 1e-12 here)."""
    x_max = 20.0
    u = np.linspace(-1.0, 1.0, 40001)
    scale = 1e-5 * min(sigma, gamma) + 1e-3 * sigma
    s = np.arcsinh(x_max / scale)
    x = scale * np.sinh(s * u)
    f = np.asarray(voigt(x, sigma, gamma)) * scale * s * np.cosh(s * u)
    h = u[1] - u[0]
    inner = h / 3.0 * (f[0] + f[-1] + 4.0 * f[1:-1:2].sum() + 2.0 * f[2:-1:2].sum())
    tails = 2.0 / np.pi * np.arctan(gamma / x_max)
    assert inner + tails == pytest.approx(1.0, abs=1e-7)


def test_voigt_limits():
    x = np.linspace(-0.3, 0.3, 601)
    # gamma -> 0 (y = 3.5e-14): the Gaussian, to 1e-12 of its peak (the first-order term in
    # gamma is about 1e-14 of it here).
    sigma = 0.02
    peak = 1.0 / (sigma * np.sqrt(2 * np.pi))
    np.testing.assert_allclose(
        voigt(x, sigma, 1e-15), gaussian(x, sigma), rtol=0, atol=1e-12 * peak
    )
    # sigma -> 0 (y = 7e5): the Lorentzian.
    np.testing.assert_allclose(voigt(x, 1e-7, 0.1), lorentzian(x, 0.1), rtol=1e-9)


@pytest.mark.parametrize("sigma,gamma", WIDTHS)
def test_voigt_symmetric_and_wings_monotone(sigma, gamma):
    """Symmetric, and falling from the centre out to 5000 widths, across the switch from
    Weideman's approximation to the asymptotic series."""
    width = sigma + gamma
    x = width * np.concatenate([np.linspace(0.0, 20.0, 2001)[1:], np.logspace(1.31, 3.7, 500)])
    v = np.asarray(voigt(x, sigma, gamma))
    np.testing.assert_allclose(np.asarray(voigt(-x, sigma, gamma)), v, rtol=1e-14, atol=0)
    switch = ASYMPTOTIC_RADIUS * SQRT2 * sigma
    assert x.min() < switch < x.max() or gamma / (SQRT2 * sigma) >= ASYMPTOTIC_RADIUS
    assert np.all(np.diff(v) < 0)


def _fd_check(f, args, k, rel=1e-6):
    """jax.grad of f in argument k against a central difference with a relative step."""
    g = jax.grad(f, argnums=k)(*args)
    h = 1e-6 * max(abs(args[k]), 1e-8)
    plus = list(args)
    minus = list(args)
    plus[k], minus[k] = args[k] + h, args[k] - h
    fd = (f(*plus) - f(*minus)) / (2 * h)
    assert np.isfinite(float(g))
    assert float(g) == pytest.approx(float(fd), rel=rel, abs=1e-9 * abs(float(f(*args))) / h)


@pytest.mark.parametrize(
    "x,sigma,gamma",
    [
        (0.0, 0.02, 0.01),  # the centre
        (0.013, 0.02, 0.01),  # inside the core
        (0.5, 0.02, 0.01),  # beyond the switch (|z| ~ 18)
        (40.0, 0.02, 0.01),  # far wing (|z| ~ 1400)
        (0.01, 0.02, 2.8e-8),  # gamma -> 0 (y = 1e-6)
        (0.3, 0.02, 2.8e-8),  # gamma -> 0, asymptotic side
        (0.01, 0.005, 3.0),  # Lorentzian-dominated (y = 424)
    ],
)
def test_voigt_gradients_finite_and_match_finite_differences(x, sigma, gamma):
    for k in range(3):
        _fd_check(voigt, (x, sigma, gamma), k)


def test_voigt_gradients_finite_at_the_edges():
    """x = 0 exactly, y = 1e-6 and y = 0, and a point on the switch itself."""
    points = [
        (0.0, 0.02, 2.8e-8),
        (0.0, 0.02, 0.0),
        (ASYMPTOTIC_RADIUS * SQRT2 * 0.02, 0.02, 0.0),
        (1e4, 0.02, 0.0),
    ]
    for point in points:
        grads = jax.grad(voigt, argnums=(0, 1, 2))(*point)
        assert all(np.isfinite(float(g)) for g in grads), point
    assert float(jax.grad(voigt)(0.0, 0.02, 0.01)) == 0.0


def test_voigt_is_a_selectable_profile_but_no_mixture():
    assert get_profile("voigt") is voigt and "voigt" in PROFILES
    with pytest.raises(ValueError, match="not a Lorentzian/Gaussian mixture"):
        get_components("voigt")
    assert CloneSettings(profile="voigt").profile == "voigt"
    with pytest.raises(ValueError, match="unknown profile 'gauss'"):
        CloneSettings(profile="gauss")


def test_envelope_bounds_the_voigt():
    """The window rule's envelope for random lines: a V(x) from scipy stays below the
    Lorentzian wing a gamma / (pi (x^2 - 4 sigma^2)) plus the Gaussian core wherever x^2 >
    4 sigma^2, and is tight in the far wing (in z units: Re w(x + i y) <= y / (sqrt(pi)
    (x^2 - 2)) + exp(-x^2))."""
    rng = np.random.default_rng(3)
    ln_a = rng.uniform(-8, 2, 300)
    sigma = rng.uniform(0.002, 0.05, 300)
    gamma = sigma * 10 ** rng.uniform(-7, 3, 300)
    c_l, h2, c_g, k_g = (
        np.asarray(v)[:, None]
        for v in _envelope(
            _line_coefficients(ln_a, np.log(sigma), np.log(gamma), 1.0, "voigt", jnp.float64),
            "voigt",
        )
    )
    x = 2.0 * sigma[:, None] * np.logspace(1e-6, 4, 2000)  # from just beyond 2 sigma
    exact = np.exp(ln_a)[:, None] * voigt_profile(x, sigma[:, None], gamma[:, None])
    ratio = exact / (c_l / (x * x + h2) + c_g * np.exp(-k_g * x * x))
    assert ratio.max() <= 1.0 and ratio.max() > 0.999


def _dense_ln_flux(wl, center, ln_a, ln_sigma, ln_gamma):
    """ln flux from the definition with scipy's Voigt, every line on every pixel."""
    v = voigt_profile(
        wl[None, :] - center[:, None], np.exp(ln_sigma)[:, None], np.exp(ln_gamma)[:, None]
    )
    return np.sum(np.log1p(-np.clip(np.exp(ln_a)[:, None] * v, 0.0, 1.0 - 1e-9)), axis=0)


def _line_set():
    """Isolated and blended, narrow and wide lines, two saturated (a V(0) of 50 and 4), on a
    grid whose spacing shrinks tenfold next to the strong ones."""
    wl = np.concatenate([8000.0 + 0.02 * np.arange(600), 8012.0 + 0.002 * np.arange(1, 1500)])
    rng = np.random.default_rng(11)
    center = np.concatenate([[8011.9, 8011.953, 8012.5, 8005.0], rng.uniform(8000.5, 8014.5, 25)])
    ln_a = np.concatenate([[np.log(2.5), np.log(0.5), np.log(0.3), -1.0], rng.uniform(-7, -1, 25)])
    ln_s = np.log(np.concatenate([[0.01, 0.004, 0.02, 0.03], rng.uniform(0.002, 0.05, 25)]))
    ln_g = np.log(np.concatenate([[0.05, 0.002, 0.01, 1e-6], rng.uniform(1e-4, 0.05, 25)]))
    return wl, (center, ln_a, ln_s, ln_g)


def test_forward_voigt_equals_the_dense_definition():
    """Core stream (Faddeeva) and wing stream (asymptotic series) together equal the dense
    scipy evaluation: the profile is good to ~1e-7 relative, so the flux to ~1e-7 of the
    absorption (ln flux to 1e-6 relative where the flux exceeds 1e-3); float32 profile
    arithmetic to 2e-6 in flux."""
    wl, args = _line_set()
    reference = _dense_ln_flux(wl, *args)
    assert reference.min() < np.log(1e-8)  # the saturated line is clamped
    lnf = np.asarray(ln_flux(wl, *args, wing_cut=2 * wl.size, profile="voigt"))
    assert np.abs(np.exp(lnf) - np.exp(reference)).max() <= 1e-7  # measured 1e-8
    unsaturated = reference > np.log(1e-3)
    np.testing.assert_allclose(lnf[unsaturated], reference[unsaturated], rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(lnf[~unsaturated], reference[~unsaturated], rtol=1e-4)
    lnf32 = np.asarray(
        ln_flux(wl, *args, wing_cut=2 * wl.size, profile="voigt", compute_dtype=jnp.float32)
    )
    assert lnf32.dtype == np.float32
    assert np.abs(np.exp(lnf32) - np.exp(reference)).max() <= 2e-6


def test_voigt_adaptive_windows_within_tolerance():
    """Adaptive windows against full windows: within the flux tolerance; and the window rule
    (the envelope) puts each line's half-width where its scipy absorption is just below the
    line's share of the tolerance."""
    wl, args = _line_set()
    # Uniform spacing: windows count pixels, so a wing reaching into a tenfold finer grid
    # would be cut short (as for every profile).
    wl = np.linspace(wl[0], wl[-1], wl.size)
    full = np.exp(np.asarray(ln_flux(wl, *args, wing_cut=2 * wl.size, profile="voigt")))
    tol = 1e-4
    adaptive = ln_flux(wl, *args, wing_cut=2 * wl.size, profile="voigt", flux_tolerance=tol)
    assert np.abs(np.exp(np.asarray(adaptive)) - full).max() <= tol
    # Random lines: the absorption at the rule's half-width is below the tolerance.
    rng = np.random.default_rng(2)
    ln_a = rng.uniform(-8, 2, 400)
    ln_s = np.log(rng.uniform(0.002, 0.05, 400))
    ln_g = np.log(10 ** rng.uniform(-6, -0.5, 400))
    tol = 5e-6
    half = required_half_width_aa(ln_a, ln_s, ln_g, "voigt", tol)
    at_edge = np.exp(ln_a) * voigt_profile(half, np.exp(ln_s), np.exp(ln_g))
    assert np.all(at_edge <= tol) and at_edge.max() > 0.3 * tol


def test_voigt_loss_gradients_finite_for_a_saturated_line():
    """The cloning loss (MSE of the flux) with a saturated line (a V(0) = 50, clamped at its
    core) and a line with y = 1e-6: finite gradients in every parameter, equal to finite
    differences."""
    wl, (center, ln_a, ln_s, ln_g) = _line_set()
    params = [jnp.asarray(p) for p in (center, ln_a, ln_s, ln_g)]
    target = np.asarray(synthesize(wl, *params, wing_cut=600, profile="voigt")) * 0.99

    def loss(center, ln_a, ln_s, ln_g):
        model = synthesize(wl, center, ln_a, ln_s, ln_g, wing_cut=600, profile="voigt")
        return jnp.mean((model - target) ** 2)

    grads = jax.grad(loss, argnums=(0, 1, 2, 3))(*params)
    rng = np.random.default_rng(7)
    for k, g in enumerate(grads):
        assert np.all(np.isfinite(np.asarray(g)))
        direction = rng.normal(size=g.shape)
        eps = 1e-6
        plus = [p + eps * direction if i == k else p for i, p in enumerate(params)]
        minus = [p - eps * direction if i == k else p for i, p in enumerate(params)]
        fd = (loss(*plus) - loss(*minus)) / (2 * eps)
        assert float(jnp.dot(g, direction)) == pytest.approx(float(fd), rel=1e-5, abs=1e-14)


def test_voigt_clone_and_generator():
    """Clone a spectrum made of Voigt lines with the Voigt profile (the residual falls tenfold),
    and a generator with it reproduces ``synthesize`` at a node."""
    wl = 10000.0 + 0.04 * np.arange(3500)
    rng = np.random.default_rng(5)
    n = 12
    center = np.linspace(wl[0] + 63, wl[-1] - 63, n) + rng.uniform(-0.2, 0.2, n)
    ln_a = np.log(rng.uniform(0.005, 0.03, n))
    ln_s = np.log(rng.uniform(0.05, 0.08, n))
    ln_g = np.log(rng.uniform(0.01, 0.06, n))
    flux = np.exp(_dense_ln_flux(wl, center, ln_a, ln_s, ln_g))
    kw = dict(prominence=0.01, wing_cut=500, epochs=40, residual_rounds=0)  # one pass
    clone = clone_spectrum(wl, flux, **kw, profile="voigt")
    assert clone.settings.profile == "voigt" and clone.n_lines == n
    assert clone.rms < 0.1 * clone.rms_initial

    values = np.stack([np.zeros(n), ln_a, ln_s, ln_g], axis=-1)[:, None, None, None]
    values = np.broadcast_to(values, (n, 2, 2, 2, 4))
    axes = (np.array([4000.0, 5000.0]), np.array([4.0, 4.5]), np.array([-0.5, 0.0]))
    gen = Generator.from_arrays(center, values, axes, wl, wing_cut=500, profile="voigt")
    expected = synthesize(
        wl,
        center,
        ln_a,
        ln_s,
        ln_g,
        wing_cut=500,
        profile="voigt",
        flux_tolerance=gen.flux_tolerance,
    )
    got = gen(jnp.array([4000.0, 4.0, -0.5]))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="profile"):
        Generator.from_arrays(center, values, axes, wl, profile="gauss")


def test_lr_schedules():
    """Each schedule runs from learning_rate to 1% of it over the epochs (Adam's step under a
    constant gradient is the learning rate), and the default is left out of stored settings,
    so clone files written before the field existed compare equal."""
    from jblase.clone import LR_SCHEDULES, _make_optimizer

    epochs = 200
    for schedule in LR_SCHEDULES:
        settings = CloneSettings(epochs=epochs, learning_rate=0.05, lr_schedule=schedule)
        optimizer = _make_optimizer(settings)
        params = jnp.zeros(())

        def step(state, _, optimizer=optimizer, params=params):
            update, state = optimizer.update(jnp.ones(()), state, params)
            return state, -update

        steps = np.asarray(jax.lax.scan(step, optimizer.init(params), None, length=epochs)[1])
        if schedule == "constant":
            np.testing.assert_allclose(steps, 0.05, rtol=1e-6)
            continue
        assert steps.max() == pytest.approx(0.05, rel=1e-3)
        assert steps[-1] == pytest.approx(5e-4, rel=0.1)
        assert np.all(np.diff(steps[np.argmax(steps) :]) <= 1e-12)
        assert settings.as_dict()["lr_schedule"] == schedule
    old = CloneSettings().as_dict()
    assert "lr_schedule" not in old and CloneSettings(**old) == CloneSettings()
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        CloneSettings(lr_schedule="step")


def _plain_series(x2, c_l, g2, s2):
    """The same series written plainly (U_n by its recurrence in c), for jax.grad."""
    d = x2 + g2
    c = jnp.sqrt(x2 / d)
    u = [jnp.ones_like(c), 2 * c]
    for _ in range(2 * ASYMPTOTIC_TERMS):
        u.append(2 * c * u[-1] - u[-2])
    double_factorial = np.cumprod([1.0] + [2 * k - 1 for k in range(1, ASYMPTOTIC_TERMS)])
    terms = [double_factorial[k] * (s2 / d) ** k * u[2 * k] for k in range(ASYMPTOTIC_TERMS)]
    return c_l / d * sum(terms)


def test_asymptotic_series_derivatives():
    """The series' analytic derivatives (custom_jvp) against jax.grad of the plain series in
    each of its four arguments, from the switch radius out to the far wing."""
    sigma, gamma = 0.02, 0.01
    x = ASYMPTOTIC_RADIUS * SQRT2 * sigma * np.array([1.0, 1.5, 3.0, 30.0, 3000.0])
    args = [x * x, np.full(5, 0.3 * gamma / np.pi), np.full(5, gamma**2), np.full(5, sigma**2)]
    np.testing.assert_allclose(asymptotic_voigt(*args), _plain_series(*args), rtol=1e-13)
    for k in range(4):
        ours = jax.vmap(jax.grad(asymptotic_voigt, argnums=k))(*args)
        plain = jax.vmap(jax.grad(_plain_series, argnums=k))(*args)
        np.testing.assert_allclose(ours, plain, rtol=1e-11)
