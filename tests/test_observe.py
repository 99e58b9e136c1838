"""The observation model against independent references: astropy (Doppler, barycentric
correction), fine-grid NumPy/SciPy convolutions with Gray's kernel written out by hand, an
analytic Gaussian case, the ``spectres`` resampler and ``numpy.polynomial.chebyshev``."""

import dataclasses
from functools import partial

import astropy.units as u
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from astropy.coordinates import EarthLocation, SkyCoord
from astropy.io import fits
from astropy.time import Time
from numpy.polynomial import chebyshev
from scipy.signal import fftconvolve
from spectres import spectres

from jblase.observe import (
    C_KMS,
    ObservationModel,
    ObservationParameters,
    ObservationSettings,
    berv_from_header,
    bin_average,
    broaden,
    chebyshev_continuum,
    doppler_factor,
    gaussian_kernel,
    log_lambda_grid,
    log_step,
    observe,
    observed_wavelength,
    pixel_edges,
    rotation_kernel,
    to_log_lambda,
)

from .test_compile_once import count_compilations

STEP_KMS = 0.6  # model pixel, km/s (R = 500,000)
LINE_SIGMA_KMS = 1.5  # a thermal + microturbulent width
DEPTH = 0.5


# --------------------------------------------------------------------------- references
def gray_profile(v_kms, vsini, epsilon):
    """Gray's rotation profile (The Observation and Analysis of Stellar Photospheres, 18.14)."""
    x2 = np.clip(1.0 - (v_kms / vsini) ** 2, 0.0, None)
    return (2 * (1 - epsilon) * np.sqrt(x2) + 0.5 * np.pi * epsilon * x2) / (
        np.pi * vsini * (1 - epsilon / 3)
    )


def line(v_kms, sigma=LINE_SIGMA_KMS, depth=DEPTH):
    return 1.0 - depth * np.exp(-0.5 * (v_kms / sigma) ** 2)


def fine_convolution(fine_flux, kernel_v, dv, n_sub):
    """np-side 'same' convolution on the fine grid, returned at every n_sub-th sample."""
    kernel = kernel_v / kernel_v.sum()
    out = fftconvolve(fine_flux, kernel, mode="same")
    return out[::n_sub]


def coarse_and_fine(half_range_kms, n_sub):
    """Model pixel centres (velocity, km/s) and a fine grid through them, n_sub per pixel."""
    n = int(round(half_range_kms / STEP_KMS))
    coarse = np.arange(-n, n + 1) * STEP_KMS
    fine = np.arange(-n * n_sub, n * n_sub + 1) * (STEP_KMS / n_sub)
    return coarse, fine


_rotation_kernel = jax.jit(rotation_kernel, static_argnums=(2, 3, 4))


@partial(jax.jit, static_argnames=("half_width", "match"))
def _rotate(flux, vsini, epsilon, half_width, match=True):
    return broaden(flux, rotation_kernel(vsini, epsilon, STEP_KMS, half_width, match))


@partial(jax.jit, static_argnames=("half_width", "match"))
def _instrument(flux, resolving_power, half_width, match=True):
    return broaden(flux, gaussian_kernel(resolving_power, STEP_KMS, half_width, match))


# --------------------------------------------------------------------------- Doppler
def test_doppler_matches_astropy_relativistic_equivalency():
    v = np.array([-3000.0, -30.0, -0.1, 0.0, 0.1, 30.0, 3000.0])
    rest = 8542.091
    ref = (v * u.km / u.s).to_value(u.AA, equivalencies=u.doppler_relativistic(rest * u.AA))
    np.testing.assert_allclose(observed_wavelength(rest, v), ref, rtol=1e-14)
    np.testing.assert_allclose(doppler_factor(v), ref / rest, rtol=1e-14)


def test_barycentric_correction_composes_as_astropy_prescribes():
    # astropy: rv_bary = rv_topo + barycorr + rv_topo * barycorr / c (optical convention).
    rest, rv, berv = 8542.091, 37.2, -21.7
    bary = (rv * u.km / u.s).to_value(u.AA, equivalencies=u.doppler_relativistic(rest * u.AA))
    rv_bary_optical = C_KMS * (bary / rest - 1)
    rv_topo_optical = C_KMS * (float(observed_wavelength(rest, rv, berv)) / rest - 1)
    expected = rv_topo_optical + berv + rv_topo_optical * berv / C_KMS
    assert abs(rv_bary_optical - expected) < 1e-9
    assert abs(rv_topo_optical - (rv - berv)) < 0.02  # first order: rv - berv


# --------------------------------------------------------------------------- berv from headers
HPF_SITE = EarthLocation.from_geodetic(-104.01472 * u.deg, 30.68144 * u.deg, 2026.0 * u.m)
WASP69 = SkyCoord(315.02596 * u.deg, -5.09449 * u.deg)


def _reference_berv(time):
    v = WASP69.radial_velocity_correction(obstime=time, location=HPF_SITE)
    return v.to_value(u.km / u.s)


def test_berv_from_geocentric_header_matches_astropy():
    header = fits.Header()
    header["OBSGEO-X"], header["OBSGEO-Y"], header["OBSGEO-Z"] = (
        q.to_value(u.m) for q in HPF_SITE.geocentric
    )
    header["RA"], header["DEC"] = WASP69.ra.deg, WASP69.dec.deg
    header["DATE-OBS"] = "2019-06-11T08:12:40.5"
    header["EXPTIME"] = 600.0
    mid = Time("2019-06-11T08:12:40.5", scale="utc") + 300 * u.s
    assert abs(berv_from_header(header) - _reference_berv(mid)) < 1e-9
    start = berv_from_header(header, mid_exposure=False)
    assert abs(start - _reference_berv(Time("2019-06-11T08:12:40.5", scale="utc"))) < 1e-9


def test_berv_from_geodetic_sexagesimal_header_matches_astropy():
    header = fits.Header()
    header["SITELONG"] = HPF_SITE.lon.to_string(unit=u.deg, sep=":", precision=4)
    header["SITELAT"] = HPF_SITE.lat.to_string(unit=u.deg, sep=":", precision=4)
    header["SITEELEV"] = 2026.0
    header["RA"] = WASP69.ra.to_string(unit=u.hourangle, sep=":", precision=4)
    header["DEC"] = WASP69.dec.to_string(unit=u.deg, sep=":", precision=4)
    header["MJD-OBS"] = 59000.25
    got = berv_from_header(header)
    assert abs(got - _reference_berv(Time(59000.25, format="mjd", scale="utc"))) < 2e-5
    header["MJD-AVG"] = 59000.5  # mid-exposure keys win over start keys
    got = berv_from_header(header)
    assert abs(got - _reference_berv(Time(59000.5, format="mjd", scale="utc"))) < 2e-5


@pytest.mark.parametrize(
    "drop, names",
    [
        ("location", "OBSGEO-X / OBSGEO-Y / OBSGEO-Z"),
        ("coord", "RA / DEC"),
        ("time", "DATE-OBS"),
    ],
)
def test_berv_from_header_names_missing_keys(drop, names):
    header = fits.Header()
    if drop != "location":
        header["OBSGEO-L"], header["OBSGEO-B"], header["OBSGEO-H"] = -104.0, 30.7, 2026.0
    if drop != "coord":
        header["RA"], header["DEC"] = 315.0, -5.1
    if drop != "time":
        header["MJD-OBS"] = 59000.25
    with pytest.raises(ValueError, match=names):
        berv_from_header(header)


# --------------------------------------------------------------------------- rotation
def test_rotation_kernel_is_a_delta_below_half_a_pixel():
    for vsini in (0.0, 1e-12, 1e-3, 0.3):
        box = np.asarray(_rotation_kernel(vsini, 0.6, STEP_KMS, 5, False))
        np.testing.assert_array_equal(box, np.eye(11)[5])
    matched = np.asarray(_rotation_kernel(1e-3, 0.6, STEP_KMS, 5, True))
    assert abs(matched[5] - 1) < 1e-6 and abs(matched.sum() - 1) < 1e-15
    np.testing.assert_array_equal(_rotation_kernel(0.0, 0.6, STEP_KMS, 5, True), np.eye(11)[5])


@pytest.mark.parametrize("epsilon", [0.0, 0.6, 1.0])
def test_rotation_kernel_weights_integrate_grays_profile(epsilon):
    # Each weight against a fine trapezoid integral of the hand-written profile.
    vsini, half = 7.3, 14
    k = np.arange(-half, half + 1)
    ref = []
    for kk in k:
        v = np.linspace((kk - 0.5) * STEP_KMS, (kk + 0.5) * STEP_KMS, 20001)
        ref.append(np.trapezoid(gray_profile(v, vsini, epsilon), v))
    got = _rotation_kernel(vsini, epsilon, STEP_KMS, half, False)
    np.testing.assert_allclose(got, ref, atol=2e-7)
    assert abs(float(jnp.sum(got)) - 1) < 1e-14


@pytest.mark.parametrize("vsini, n_sub, tol", [(0.3, 2000, 2e-4), (250.0, 20, 2e-5)])
def test_rotational_broadening_matches_fine_grid_convolution(vsini, n_sub, tol):
    epsilon = 0.6
    coarse, fine = coarse_and_fine(vsini + 12 * LINE_SIGMA_KMS + 20, n_sub)
    dv = STEP_KMS / n_sub
    kv = np.arange(-int(vsini / dv) - 1, int(vsini / dv) + 2) * dv
    truth = fine_convolution(line(fine), gray_profile(kv, vsini, epsilon), dv, n_sub)
    half = int(np.ceil(vsini / STEP_KMS + 0.5)) + 1
    matched = _rotate(jnp.asarray(line(coarse)), vsini, epsilon, half)
    box = _rotate(jnp.asarray(line(coarse)), vsini, epsilon, half, match=False)
    inner = slice(half + 1, -half - 1)
    err_matched = np.max(np.abs(np.asarray(matched) - truth)[inner])
    err_box = np.max(np.abs(np.asarray(box) - truth)[inner])
    assert err_matched < tol, (err_matched, err_box)
    # The piecewise-constant reading of the model is exactly what pixel integration computes.
    nearest = np.repeat(line(coarse), n_sub)[n_sub // 2 : n_sub // 2 + fine.size]
    exact_box = fine_convolution(nearest, gray_profile(kv, vsini, epsilon), dv, n_sub)
    assert np.max(np.abs(np.asarray(box) - exact_box)[inner]) < 2e-4 * (0.3 / vsini) ** 0.5 + 2e-6


def test_rotation_gradients_are_finite_at_and_near_zero():
    coarse = np.arange(-40, 41) * STEP_KMS
    weights = jnp.asarray(np.random.default_rng(0).normal(size=coarse.size))
    flux = jnp.asarray(line(coarse))
    loss = jax.jit(lambda v, e: jnp.sum(weights * _rotate(flux, v, e, 12)))
    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    for v in (0.0, 1e-12, 1e-6, 0.15, 0.3, 0.45):
        g = np.array(grad(v, 0.6))
        assert np.all(np.isfinite(g)), (v, g)
    assert float(grad(0.0, 0.6)[0]) == 0.0
    for v in (0.45, 2.0, 0.3):
        g = grad(v, 0.6)
        h = 1e-5
        fd_eps = (loss(v, 0.6 + h) - loss(v, 0.6 - h)) / (2 * h)
        np.testing.assert_allclose(g[1], fd_eps, rtol=1e-6)
        fd = (loss(v + h, 0.6) - loss(v - h, 0.6)) / (2 * h)
        if v != 0.3:
            np.testing.assert_allclose(g[0], fd, rtol=1e-6)
    # At 0.3 km/s the profile's edges sit on the central pixel's edges, where the weights grow
    # as (vsini - 0.3)^1.5: a central difference converges there only as sqrt(h).
    errors = []
    for h in (1e-5, 1e-7):
        errors.append(abs(g[0] - (loss(v + h, 0.6) - loss(v - h, 0.6)) / (2 * h)))
    assert errors[1] < 3e-7 and errors[1] < 0.2 * errors[0], errors


# --------------------------------------------------------------------------- instrument
def test_gaussian_line_through_gaussian_instrument_adds_variances():
    resolving_power = 100_000.0
    sigma_inst = C_KMS / resolving_power / (2 * np.sqrt(2 * np.log(2)))
    sigma = np.hypot(LINE_SIGMA_KMS, sigma_inst)
    coarse = np.arange(-100, 101) * STEP_KMS
    analytic = 1 - DEPTH * LINE_SIGMA_KMS / sigma * np.exp(-0.5 * (coarse / sigma) ** 2)
    half = 20
    matched = np.asarray(_instrument(jnp.asarray(line(coarse)), resolving_power, half))
    box = np.asarray(_instrument(jnp.asarray(line(coarse)), resolving_power, half, match=False))
    err_matched = np.max(np.abs(matched - analytic))
    err_box = np.max(np.abs(box - analytic))
    # Pixel integration alone adds 1/12 pixel^2 of variance; matched, the error is O(pixel^4).
    assert err_matched < 1e-4 and err_box > 20 * err_matched, (err_matched, err_box)
    # R -> infinity: a delta (matched, the outer taps carry the remaining 4e-14 pixel^2).
    np.testing.assert_allclose(gaussian_kernel(1e12, STEP_KMS, 4), np.eye(9)[4], atol=3e-14)
    np.testing.assert_allclose(gaussian_kernel(1e12, STEP_KMS, 4, False), np.eye(9)[4], atol=1e-22)


def test_resolving_power_gradient_matches_finite_difference():
    coarse = np.arange(-60, 61) * STEP_KMS
    weights = jnp.asarray(np.random.default_rng(1).normal(size=coarse.size))
    flux = jnp.asarray(line(coarse))
    loss = jax.jit(lambda r: jnp.sum(weights * _instrument(flux, r, 30)))
    r, h = 60_000.0, 1.0
    fd = (loss(r + h) - loss(r - h)) / (2 * h)
    np.testing.assert_allclose(jax.grad(loss)(r), fd, rtol=1e-6)


# --------------------------------------------------------------------------- resampling
def _irregular_model(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    wl = 8600 + np.cumsum(rng.uniform(0.01, 0.03, n))
    return wl, rng.uniform(0.2, 1.2, n)


def test_bin_average_matches_spectres():
    wl, flux = _irregular_model()
    centres = np.linspace(wl[20], wl[-20], 347) + 0.01 * np.sin(np.arange(347))
    edges = pixel_edges(centres)
    got = bin_average(wl, flux, edges[:-1], edges[1:], "constant")
    ref = spectres(centres, wl, flux, verbose=False)
    np.testing.assert_allclose(got, ref, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("interpolation", ["linear", "constant"])
def test_bin_average_conserves_flux(interpolation):
    wl, flux = _irregular_model(seed=1)
    edges = np.linspace(wl[10] + 0.0037, wl[-10] - 0.0021, 201)
    mean = np.asarray(bin_average(wl, flux, edges[:-1], edges[1:], interpolation))
    total = np.sum(mean * np.diff(edges))
    if interpolation == "linear":  # the straight lines' integral, the ends interpolated
        inside = (wl > edges[0]) & (wl < edges[-1])
        x = np.concatenate([[edges[0]], wl[inside], [edges[-1]]])
        ref = np.trapezoid(np.interp(x, wl, flux), x)
    else:  # bins around each pixel, midway between pixels
        model_edges = pixel_edges(wl)
        overlap = np.clip(
            np.minimum(model_edges[1:], edges[-1]) - np.maximum(model_edges[:-1], edges[0]),
            0,
            None,
        )
        ref = np.sum(flux * overlap)
    assert abs(total - ref) < 1e-11 * ref


def test_log_lambda_grid_and_interpolation():
    step = 0.6 / C_KMS
    grid = log_lambda_grid(8600.0, 8700.0, step)
    np.testing.assert_allclose(np.diff(np.log(grid)), step, rtol=0, atol=1e-14)  # log rounding
    assert grid[0] == 8600.0 and grid[-1] <= 8700.0 < grid[-1] * np.exp(step)
    assert abs(log_step(grid) - step) < 1e-9 * step
    wl = np.linspace(8590.0, 8710.0, 5000)
    np.testing.assert_allclose(
        to_log_lambda(wl, 3.0 * wl - 2.0, grid), 3.0 * grid - 2.0, rtol=1e-14
    )


# --------------------------------------------------------------------------- continuum
def test_chebyshev_continuum_matches_numpy():
    rng = np.random.default_rng(2)
    wl = np.linspace(8656.0, 8768.0, 500)
    for degree in range(6):
        coeffs = rng.normal(size=degree + 1)
        x = (2 * wl - (8650.0 + 8770.0)) / (8770.0 - 8650.0)
        ref = chebyshev.chebval(x, coeffs)
        np.testing.assert_allclose(
            chebyshev_continuum(wl, coeffs, (8650.0, 8770.0)), ref, rtol=1e-13, atol=1e-13
        )


# --------------------------------------------------------------------------- the composition
LO_AA, N_MODEL = 8600.0, 16_000


def _model_spectrum():
    wl = LO_AA * np.exp(np.arange(N_MODEL) * np.log1p(1 / 500_000))  # the synthetic grid's
    rng = np.random.default_rng(3)
    centres = rng.uniform(wl[3000], wl[-3000], 60)
    depth = rng.uniform(0.1, 0.8, 60)
    flux = np.ones_like(wl)
    for c, d in zip(centres, depth, strict=True):
        flux *= 1 - d * np.exp(-0.5 * ((wl - c) / (c * LINE_SIGMA_KMS / C_KMS)) ** 2)
    return wl, flux


def _orders():
    # Two orders at R ~ 60,000 sampling (2.5 pixels per resolution element), different lengths.
    a = 8620.0 * np.exp(np.arange(1500) * 2.0 / C_KMS)
    b = 8640.0 * np.exp(np.arange(1100) * 2.1 / C_KMS)
    return [a, b]


PARAMS = ObservationParameters(
    rv_kms=-9.6,
    vsini_kms=4.0,
    resolving_power=jnp.array([55_000.0, 60_000.0]),
    continuum=jnp.array([[1.0, 0.02, -0.01], [0.95, -0.03, 0.0]]),
    epsilon=0.6,
)
BERV = 12.3


@pytest.fixture(scope="module")
def setup():
    wl, flux = _model_spectrum()
    settings = ObservationSettings(
        max_vsini_kms=50.0, min_resolving_power=20_000.0, max_velocity_kms=100.0
    )
    model = ObservationModel.build(wl, _orders(), settings=settings)
    return wl, jnp.asarray(flux), model


def test_observation_model_pads_orders_and_matches_single_orders(setup):
    wl, flux, model = setup
    assert model.uniform and model.n_pixels == (1500, 1100)
    out = model(flux, PARAMS, BERV)
    assert out.shape == (2, 1500)
    assert np.all(np.asarray(out[1, 1100:]) == 0) and not bool(model.mask[1, 1100])
    p = ObservationParameters(
        PARAMS.rv_kms, PARAMS.vsini_kms, PARAMS.resolving_power[1], PARAMS.continuum[1]
    )
    single = observe(wl, flux, _orders()[1], p, BERV, settings=model.settings)
    np.testing.assert_allclose(model.unpad(out)[1], single, rtol=1e-12)
    # Orders as a 2-D array, or as pixel edges, plan the same pixels.
    same = np.stack([_orders()[0][:1100], _orders()[1]])
    stacked = ObservationModel.build(wl, same, settings=model.settings)
    edges = [pixel_edges(o) for o in same]
    by_edges = ObservationModel.build(wl, None, data_edges_aa=edges, settings=model.settings)
    np.testing.assert_array_equal(stacked.pixel_lo_offset, by_edges.pixel_lo_offset)
    np.testing.assert_array_equal(stacked.pixel_hi_offset, by_edges.pixel_hi_offset)
    # centres default to the edge midpoints: 1e-7 A from the ln-uniform centres
    np.testing.assert_allclose(by_edges.pixel_centre, stacked.pixel_centre, rtol=1e-10)


def test_shift_and_resampling_match_spectres(setup):
    # No broadening, continuum 1, piecewise-constant model: exactly spectres on shifted pixels.
    wl, flux, _ = setup
    settings = ObservationSettings(
        max_vsini_kms=1.0, min_resolving_power=1e9, max_velocity_kms=100.0, interpolation="constant"
    )
    model = ObservationModel.build(wl, _orders(), settings=settings)
    params = ObservationParameters(-9.6, 0.0, 1e12, jnp.array([1.0]))
    out = model.unpad(model(flux, params, BERV))
    factor = np.sqrt((1 - 9.6 / C_KMS) / (1 + 9.6 / C_KMS)) / (1 + BERV / C_KMS)
    for o, data in enumerate(_orders()):
        ref = spectres(data, wl * factor, np.asarray(flux), verbose=False)
        np.testing.assert_allclose(out[o], ref, rtol=3e-11)


def test_gradients_match_central_differences(setup):
    # d/d(rv, vsini, R of order 0, epsilon) of a random projection, one compiled program.
    _, flux, model = setup
    weights = jnp.asarray(np.random.default_rng(4).normal(size=model.mask.shape)) * model.mask

    @jax.jit
    @jax.value_and_grad
    def loss(x):
        p = PARAMS._replace(
            rv_kms=x[0],
            vsini_kms=x[1],
            resolving_power=PARAMS.resolving_power.at[0].set(x[2]),
            epsilon=x[3],
        )
        return jnp.sum(weights * model(flux, p, BERV))

    x = np.array([-9.6, 4.0, 55_000.0, 0.6])
    _, g = loss(x)
    # rv: steps below 1e-3 km/s meet float64 rounding of wavelengths near 8,600 A.
    for i, h in enumerate((1e-3, 1e-4, 0.5, 1e-4)):
        step = np.eye(4)[i] * h
        fd = (loss(x + step)[0] - loss(x - step)[0]) / (2 * h)
        np.testing.assert_allclose(g[i], fd, rtol=2e-6, err_msg=f"parameter {i}")
    assert np.all(np.isfinite(np.array(loss(np.array([-9.6, 0.0, 55_000.0, 0.6]))[1])))


def test_repeated_calls_compile_once(setup):
    _, flux, model = setup
    model(flux, PARAMS, BERV).block_until_ready()
    with count_compilations() as events:
        for rv in (-3.0, 5.0):
            model(flux, PARAMS._replace(rv_kms=rv, vsini_kms=rv + 6), BERV).block_until_ready()
    assert events == []


def test_non_uniform_model_grid_is_resampled(setup):
    wl, flux, model = setup
    linear_wl = np.linspace(wl[0], wl[-1], 2 * wl.size)  # uniform in lambda, not ln lambda
    resampled = ObservationModel.build(
        linear_wl, _orders(), settings=dataclasses.replace(model.settings, log_step=model.log_step)
    )
    assert not resampled.uniform
    linear_flux = np.interp(linear_wl, wl, np.asarray(flux))
    a = model(flux, PARAMS, BERV)
    b = resampled(jnp.asarray(linear_flux), PARAMS, BERV)
    assert float(jnp.max(jnp.abs(a - b))) < 2e-3


# --------------------------------------------------------------------------- bad input
def test_bad_input_raises_clear_errors(setup):
    wl, flux, model = setup
    with pytest.raises(ValueError, match="strictly increasing"):
        ObservationModel.build(wl[::-1], _orders())
    with pytest.raises(ValueError, match="strictly increasing"):
        ObservationModel.build(wl, [np.r_[8620.0, 8619.0, 8621.0]])
    with pytest.raises(ValueError, match="order 1: data pixels .* but the model covers"):
        ObservationModel.build(
            wl, [_orders()[0], np.linspace(9305, 9315, 100)], settings=model.settings
        )
    bad = {
        "vsini_kms": PARAMS._replace(vsini_kms=-1.0),
        "vsini_kms must lie": PARAMS._replace(vsini_kms=51.0),
        "resolving_power": PARAMS._replace(resolving_power=-5.0),
        "epsilon": PARAMS._replace(epsilon=1.5),
        "continuum": PARAMS._replace(continuum=jnp.ones((3, 2))),
        "topocentric velocity": PARAMS._replace(rv_kms=900.0),
    }
    for message, params in bad.items():
        with pytest.raises(ValueError, match=message):
            model(flux, params, BERV)
    with pytest.raises(ValueError, match="model_flux has shape"):
        model(flux[:-1], PARAMS, BERV)
    with pytest.raises(ValueError, match="interpolation"):
        ObservationSettings(interpolation="cubic")
    with pytest.raises(ValueError, match="min_resolving_power"):
        ObservationSettings(min_resolving_power=0.0)
    with pytest.raises(ValueError, match="step"):
        log_lambda_grid(8600.0, 8700.0, -1e-6)


def test_berv_from_the_real_hpf_header_matches_the_pipelines_brvcorr():
    """The HPF pipeline's own barycentric correction (BRVCORR, m/s) of the real WASP-69 order,
    against astropy from the header's DATE-OBS and sexagesimal target (QRA/QDEC, J2000) at the
    HET (McDonald Observatory). Its numeric RA keyword is in hours, not the FITS convention's
    degrees: the reader prefers the sexagesimal pair, so the header alone gives the target
    (the same as passing it); the site name is not in astropy's offline registry. The two
    agree to a few m/s (the pipeline corrects to the photon-weighted mid-exposure and for
    proper motion)."""
    from jblase.spectra import read_observed

    from .conftest import HPF_FITS, require

    with pytest.warns(UserWarning):
        header = read_observed(require(HPF_FITS)).header
    het = EarthLocation.from_geodetic(
        lon=-104.01472 * u.deg, lat=30.681444 * u.deg, height=2026 * u.m
    )
    target = SkyCoord(header["QRA"], header["QDEC"], unit=(u.hourangle, u.deg))
    berv = berv_from_header(header, location=het, coord=target)
    assert berv == pytest.approx(header["BRVCORR"] / 1e3, abs=0.01)
    assert berv_from_header(header, location=het) == pytest.approx(berv, abs=1e-9)
