"""Observed spectra: every layout (npz, csv, FITS tables, pipeline images), units, orders,
masking and each refusal."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from astropy.io import fits

from jblase.io import read_spectrum, write_spectrum
from jblase.spectra import (
    MaskedPixelsWarning,
    ObservedSpectrum,
    UnsortedWavelengthWarning,
    read_observed,
)

from .conftest import HPF_FITS, require

N_ORDERS, N_PIX = 28, 2048


@pytest.fixture(autouse=True)
def _warnings_are_errors():
    """A warning a test does not expect fails it."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def _orders(n_orders=3, n_pix=50, seed=0):
    """(wavelength A, flux, uncertainty), each (n_orders, n_pix), orders side by side."""
    rng = np.random.default_rng(seed)
    start = 8500.0 + 60.0 * np.arange(n_orders)[:, None]
    wl = start + 0.05 * np.arange(n_pix)[None, :]
    flux = 1.0 - 0.3 * rng.random((n_orders, n_pix))
    unc = 0.01 + 0.001 * rng.random((n_orders, n_pix))
    return wl, flux, unc


def _hpf(path, *, variance=False, unit=None, edit=None):
    """An HPF pipeline product's layout: 28 x 2048 images, raw counts, NaN at order edges,
    and the sky and calibration fibres' HDUs beside the science ones."""
    rng = np.random.default_rng(1)
    wl = 8079.0 + 370.0 * np.arange(N_ORDERS)[:, None] + 0.06 * np.arange(N_PIX)[None, :]
    flux = (3000.0 + 500.0 * rng.random((N_ORDERS, N_PIX))).astype(np.float32)
    err = np.sqrt(flux).astype(np.float32)
    edges = 4 + np.arange(N_ORDERS) % 3  # NaN pixels at each end: 4, 5 or 6
    for i, n in enumerate(edges):
        flux[i, :n] = flux[i, -n:] = np.nan
        err[i, :n] = err[i, -n:] = np.nan
    if edit is not None:
        edit(wl, flux, err)
    primary = fits.PrimaryHDU()
    primary.header["DATE-OBS"] = "2019-10-19T01:53:21.8"
    primary.header["OBJECT"] = "WASP-69"
    primary.header["QRA"] = "21:00:06.19"
    wavl = fits.ImageHDU(wl / (10.0 if unit == "nm" else 1.0), name="Sci Wavl")
    if unit:
        wavl.header["BUNIT"] = unit
    error = fits.ImageHDU(
        err**2 if variance else err, name="Sci Variance" if variance else "Sci Error"
    )
    hdus = [primary, fits.ImageHDU(flux, name="Sci Flux"), fits.ImageHDU(flux, name="Sky Flux")]
    hdus += [error, fits.ImageHDU(err, name="Sky Error"), wavl, fits.ImageHDU(wl, name="Sky Wavl")]
    fits.HDUList(hdus).writeto(path)
    return wl, flux.astype(np.float64), err.astype(np.float64), edges


# ----------------------------------------------------------------- the real HPF order


def test_real_hpf_order():
    path = require(HPF_FITS)
    with pytest.warns(MaskedPixelsWarning, match=r"masked 26 pixels .*\(order 0: 26\)"):
        s = read_observed(path)
    wl, flux, unc = read_spectrum(path)
    assert s.orders == (0,) and s.wavelength.shape == (1, 2048)
    np.testing.assert_array_equal(s.wavelength[0], wl)
    np.testing.assert_array_equal(s.valid[0], np.isfinite(flux) & np.isfinite(unc))
    w, f, u = s.order(0)
    assert w.size == 2022 and np.all(np.diff(w) > 0) and np.all(u > 0)
    np.testing.assert_array_equal(f, flux[np.isfinite(flux)])
    # The observation's keywords (in the table HDU here) for a barycentric correction:
    assert s.header["DATE-OBS"] == "2019-10-19T01:53:21.815558"
    assert s.header["OBSERVAT"] == "McDonald" and "BRVCORR" in s.header
    assert "TTYPE1" not in s.header and s.source == str(path)


# ----------------------------------------------------------------- npz, csv, FITS tables


@pytest.mark.parametrize("suffix", [".npz", ".csv", ".fits", ".fits.gz"])
@pytest.mark.parametrize("with_unc", [True, False])
def test_one_order_files(tmp_path, suffix, with_unc):
    wl, flux, unc = (a[0] for a in _orders(1))
    path = tmp_path / f"s{suffix}"
    write_spectrum(path, wl, flux, unc if with_unc else None)
    s = read_observed(path)
    assert s.orders == (0,) and s.valid.all() and s.wavelength.dtype == np.float64
    np.testing.assert_array_equal(s.wavelength[0], wl)
    np.testing.assert_array_equal(s.flux[0], flux)
    if with_unc:
        np.testing.assert_array_equal(s.uncertainty[0], unc)
    else:
        assert s.uncertainty is None and s.order(0)[2] is None
    assert dict(s.header) == {} if suffix in (".npz", ".csv") else "DATE-OBS" not in s.header


def test_multi_order_npz_and_order_selection(tmp_path):
    wl, flux, unc = _orders(4)
    path = tmp_path / "s.npz"
    np.savez(path, wavelength=wl, flux=flux, uncertainty=unc, order=np.array([101, 102, 103, 104]))
    s = read_observed(path)
    assert s.orders == (101, 102, 103, 104) and s.n_orders == 4
    np.testing.assert_array_equal(s.flux, flux)
    picked = read_observed(path, orders=[104, 102])
    assert picked.orders == (104, 102)
    np.testing.assert_array_equal(picked.wavelength, wl[[3, 1]])
    np.testing.assert_array_equal(picked.order(102)[1], flux[1])
    assert read_observed(path, orders=103).orders == (103,)
    with pytest.raises(ValueError, match=r"no order 7; orders are \[101, 102, 103, 104\]"):
        read_observed(path, orders=[101, 7])
    with pytest.raises(ValueError, match="order 102 selected twice"):
        read_observed(path, orders=[102, 102])
    with pytest.raises(ValueError, match=r"no order 5; orders are \[101"):
        s.order(5)
    np.savez(path, wavelength=wl, flux=flux)  # no labels: rows 0, 1, 2, 3
    assert read_observed(path).orders == (0, 1, 2, 3)


def test_long_csv_with_an_order_column(tmp_path):
    """A long table, one order per label; a shorter order is padded (masked, no warning)."""
    wl, flux, unc = _orders(2, n_pix=30)
    rows = [(o, w, f, u) for o in (0, 1) for w, f, u in zip(wl[o], flux[o], unc[o], strict=True)]
    rows = rows[:-5]  # order 1 is 5 pixels shorter
    path = tmp_path / "s.csv"
    np.savetxt(path, rows, delimiter=",", header="order,wavelength,flux,uncertainty", comments="")
    s = read_observed(path)
    assert s.orders == (0, 1) and s.wavelength.shape == (2, 30)
    assert s.valid[0].all() and s.valid[1].sum() == 25 and not s.valid[1, 25:].any()
    np.testing.assert_array_equal(s.order(1)[0], wl[1, :25])
    np.testing.assert_array_equal(s.order(1)[2], unc[1, :25])


def test_fits_table_of_array_columns_in_nm(tmp_path):
    """One row per order (array columns), an order column, wavelengths in nm (TUNIT)."""
    wl, flux, unc = _orders(3)
    cols = [
        fits.Column(name="ORDER", format="J", array=np.array([60, 61, 62])),
        fits.Column(name="Wavelength", format=f"{wl.shape[1]}D", array=wl / 10, unit="nm"),
        fits.Column(name="Flux", format=f"{wl.shape[1]}D", array=flux),
        fits.Column(name="Uncertainty", format=f"{wl.shape[1]}D", array=unc),
    ]
    path = tmp_path / "s.fits"
    fits.BinTableHDU.from_columns(cols).writeto(path)
    s = read_observed(path)
    assert s.orders == (60, 61, 62)
    np.testing.assert_allclose(s.wavelength, wl, rtol=1e-15)  # a factor of exactly 10
    np.testing.assert_array_equal(s.flux, flux)
    read_observed(path, wavelength_unit="nm")  # agrees with the file
    with pytest.raises(ValueError, match=r"in 'nm', not 'Angstrom'"):
        read_observed(path, wavelength_unit="Angstrom")


@pytest.mark.parametrize(
    "unit, factor, message",
    [("um", 1e4, None), ("micron", 1e4, None), ("Angstrom", 1.0, None), ("m", 1e10, None)]
    + [("Angstroms", 1.0, None), ("A", 1.0, None), ("", 1.0, None)]
    + [("pixel", None, "'pixel' is not a length"), ("furlongs", None, "unknown wavelength unit")],
)
def test_fits_table_wavelength_units(tmp_path, unit, factor, message):
    wl, flux, _ = (a[0] for a in _orders(1))
    scale = 1.0 if factor is None else factor
    cols = [
        fits.Column(name="wavelength", format="D", array=wl / scale, unit=unit),
        fits.Column(name="flux", format="D", array=flux),
    ]
    path = tmp_path / "s.fits"
    fits.BinTableHDU.from_columns(cols).writeto(path)
    if message:
        with pytest.raises(ValueError, match=message):
            read_observed(path)
    else:
        np.testing.assert_allclose(read_observed(path).wavelength[0], wl, rtol=1e-14)


def test_wavelength_unit_of_files_that_record_none(tmp_path):
    wl, flux, _ = (a[0] for a in _orders(1))
    path = tmp_path / "s.npz"
    np.savez(path, wavelength=wl / 10, flux=flux)
    np.testing.assert_allclose(read_observed(path, wavelength_unit="nm").wavelength[0], wl)
    np.testing.assert_array_equal(read_observed(path).wavelength[0], wl / 10)  # A by default


# ----------------------------------------------------------------- pipeline images (HPF)


def test_hpf_pipeline_product(tmp_path):
    path = tmp_path / "Goldilocks_20191019T015321.fits"
    wl, flux, err, edges = _hpf(path)
    with pytest.warns(MaskedPixelsWarning) as caught:
        s = read_observed(path)
    message = str(caught[0].message)
    assert f"masked {2 * edges.sum()} pixels" in message
    assert "order 0: 8, order 1: 10, order 2: 12, order 3: 8" in message
    assert s.orders == tuple(range(N_ORDERS)) and s.wavelength.shape == (N_ORDERS, N_PIX)
    np.testing.assert_array_equal(s.wavelength, wl)
    np.testing.assert_array_equal(s.flux, flux)  # raw counts, not normalised
    np.testing.assert_array_equal(s.uncertainty, err)
    np.testing.assert_array_equal(s.valid, np.isfinite(flux))
    assert s.header["DATE-OBS"] == "2019-10-19T01:53:21.8" and s.header["OBJECT"] == "WASP-69"

    with pytest.warns(MaskedPixelsWarning, match=r"\(order 5: 12, order 9: 8\)"):
        picked = read_observed(path, orders=[5, 9])
    np.testing.assert_array_equal(picked.flux, flux[[5, 9]])


def test_hpf_variance_and_nm(tmp_path):
    path = tmp_path / "hpf.fits"
    wl, flux, err, _ = _hpf(path, variance=True, unit="nm")
    with pytest.warns(MaskedPixelsWarning):
        s = read_observed(path, orders=[0])
    np.testing.assert_allclose(s.uncertainty[0], err[0], rtol=1e-7)  # sqrt of the variance
    np.testing.assert_allclose(s.wavelength[0], wl[0], rtol=1e-15)


def test_order_without_valid_pixels_is_named(tmp_path):
    path = tmp_path / "hpf.fits"

    def blank(wl, flux, err):
        flux[7] = np.nan

    _hpf(path, edit=blank)
    with pytest.warns(MaskedPixelsWarning, match="order 7: 2048"):
        with pytest.raises(ValueError, match=r"order\(s\) \[7\] have no valid pixel"):
            read_observed(path)
    with pytest.warns(MaskedPixelsWarning):
        assert read_observed(path, orders=[6, 8]).orders == (6, 8)  # not selected, not checked


# ----------------------------------------------------------------- masking and refusals


def _npz(path, wl, flux, unc=None):
    arrays = {"wavelength": wl, "flux": flux}
    if unc is not None:
        arrays["uncertainty"] = unc
    np.savez(path, **arrays)
    return path


def test_non_finite_pixels_are_masked_per_order(tmp_path):
    wl, flux, unc = _orders(3)
    wl[0, 3] = np.nan
    flux[1, [4, 5]] = np.inf
    unc[2, 6:9] = np.nan
    path = _npz(tmp_path / "s.npz", wl, flux, unc)
    with pytest.warns(
        MaskedPixelsWarning, match=r"masked 6 pixels .*order 0: 1, order 1: 2, order 2: 3"
    ):
        s = read_observed(path)
    assert (~s.valid).sum() == 6 and not s.valid[2, 6:9].any()
    assert np.isfinite(s.order(2)[2]).all() and s.order(0)[0].size == 49


@pytest.mark.parametrize("bad", [0.0, -0.01])
def test_zero_or_negative_uncertainty_is_refused(tmp_path, bad):
    wl, flux, unc = _orders(3)
    unc[1, [2, 7, 9]] = bad
    unc[2, 0] = bad
    path = _npz(tmp_path / "s.npz", wl, flux, unc)
    with pytest.raises(ValueError, match=r"zero or negative .*\(order 1: 3, order 2: 1\)") as info:
        read_observed(path)
    assert str(path) in str(info.value)
    flux[1, [2, 7, 9]] = flux[2, 0] = np.nan  # on masked pixels they do not matter
    with pytest.warns(MaskedPixelsWarning):
        read_observed(_npz(path, wl, flux, unc))


def test_unsorted_order_is_sorted_with_a_warning(tmp_path):
    wl, flux, unc = _orders(3)
    wl[1], flux[1], unc[1] = wl[1, ::-1], flux[1, ::-1], unc[1, ::-1]  # a descending order
    perm = np.random.default_rng(3).permutation(wl.shape[1])
    wl[2], flux[2], unc[2] = wl[2, perm], flux[2, perm], unc[2, perm]
    path = _npz(tmp_path / "s.npz", wl, flux, unc)
    with pytest.warns(UnsortedWavelengthWarning, match=r"order\(s\) \[1, 2\] were not increasing"):
        s = read_observed(path)
    for i in range(3):
        order = np.argsort(wl[i])
        np.testing.assert_array_equal(s.wavelength[i], wl[i, order])
        np.testing.assert_array_equal(s.flux[i], flux[i, order])  # pixels move together
        np.testing.assert_array_equal(s.uncertainty[i], unc[i, order])


def test_repeated_or_non_positive_wavelengths_are_refused(tmp_path):
    wl, flux, unc = _orders(2)
    wl[1, 10] = wl[1, 9]
    with pytest.raises(ValueError, match=r"share a wavelength \(order 1: 1\)"):
        read_observed(_npz(tmp_path / "a.npz", wl, flux, unc))
    wl, flux, unc = _orders(2)
    wl[0, :2] = [-1.0, 0.0]
    with pytest.raises(ValueError, match=r"wavelength zero or negative \(order 0: 2\)"):
        read_observed(_npz(tmp_path / "b.npz", wl, flux, unc))


def test_malformed_files(tmp_path):
    wl, flux, unc = _orders(2)
    cases = {
        "cols.npz": ({"wavelength": wl}, r"missing column\(s\) \['flux'\]"),
        "shape.npz": ({"wavelength": wl, "flux": flux[:, :-1]}, "the same shape"),
        "3d.npz": ({"wavelength": wl[None], "flux": flux[None]}, "1-D or 2-D"),
        "labels.npz": ({"wavelength": wl, "flux": flux, "order": [1.5, 2]}, "integers"),
        "count.npz": ({"wavelength": wl, "flux": flux, "order": [1, 2, 3]}, "3 order labels"),
        "twice.npz": ({"wavelength": wl, "flux": flux, "order": [4, 4]}, "labels repeat"),
        "empty.npz": ({"wavelength": wl[:, :0], "flux": flux[:, :0]}, "no pixels"),
    }
    for name, (arrays, message) in cases.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(ValueError, match=message) as info:
            read_observed(tmp_path / name)
        assert str(tmp_path / name) in str(info.value)

    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(flux, name="FLUX")]).writeto(tmp_path / "x.fits")
    with pytest.raises(ValueError, match=r"nor image HDUs 'Sci Flux' and 'Sci Wavl'.*'FLUX'"):
        read_observed(tmp_path / "x.fits")
    (tmp_path / "junk.fits").write_bytes(b"not a fits file")
    with pytest.raises(ValueError, match="junk.fits: unreadable fits spectrum"):
        read_observed(tmp_path / "junk.fits")
    with pytest.raises(ValueError, match="no such file"):
        read_observed(tmp_path / "none.npz")
    with pytest.raises(ValueError, match="unknown spectrum file type"):
        read_observed(tmp_path / "s.txt")


def test_container_checks_its_shapes():
    wl, flux, _ = _orders(2)
    with pytest.raises(ValueError, match="share one 2-D shape"):
        ObservedSpectrum(wl, flux[:, :-1], None, np.ones(wl.shape, bool), (0, 1))
    with pytest.raises(ValueError, match="1 order labels for 2 orders"):
        ObservedSpectrum(wl, flux, None, np.ones(wl.shape, bool), (0,))
