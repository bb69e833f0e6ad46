"""Bad input, second part (issue 18): messages that name the input at fault, error maps with
zeros, zero cutouts, truncated FITS files and PSF files that look oversampled.

Each test simulates data with known parameters and checks the error message, the flags, or the
measured values against the truth.
"""

import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

import jaxphot as jp
from jaxphot.cli import main
from jaxphot.core.flags import FitFlag
from jaxphot.io import read_image
from jaxphot.psf import DiscretePSF, GaussianPRF, PSFOversamplingWarning, read_psf_fits
from jaxphot.sim import simulate_cluster

FWHM = 3.0
PSF = GaussianPRF(FWHM)
GAIN, RN = 1.0, 5.0


@pytest.fixture(scope="module")
def field():
    return simulate_cluster((96, 96), 25, PSF, seed=3, margin=8, sky=100.0, gain=GAIN,
                            read_noise=RN)


def _cli(args, capsys):
    rc = main([str(a) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


# ---------------------------------------------------------------------------- messages
@pytest.mark.parametrize("box", [0, -3, 2.5])
def test_background_box_is_named(field, box):
    with pytest.raises(ValueError, match="background_box must be a whole number >= 1"):
        jp.photometry(field.image, PSF, background_box=box)
    with pytest.raises(ValueError, match=r"box_size must be a whole number of pixels >= 1"):
        jp.estimate_background(field.image, box)


def test_cli_background_box_is_named(tmp_path, field, capsys):
    path = tmp_path / "v.fits"
    fits.PrimaryHDU(field.image.astype(np.float32)).writeto(path)
    for cmd in (["photometry", path, "-o", tmp_path / "c.ecsv"], ["batch", path, "--outdir", tmp_path]):
        rc, err = _cli(cmd + ["--background-box", "0"], capsys)
        assert rc == 2 and "--background-box must be a whole number >= 1, got 0" in err[-1]
    assert not (tmp_path / "c.ecsv").exists()


@pytest.mark.parametrize("value", [0.0, 65535.0])
def test_constant_image_is_named(value):
    """An all-zero or saturated image: 'image is constant', not an internal rms message."""
    img = np.full((48, 48), value)
    with pytest.raises(ValueError, match=f"image is constant .every usable pixel is {value:g}"):
        jp.photometry(img, PSF)
    with pytest.raises(ValueError, match="data is constant"):
        jp.find_stars(img, FWHM)


def test_noiseless_image_and_bad_rms_are_named():
    yy, xx = np.mgrid[:48, :48]
    img = 1e3 * np.exp(-((xx - 20.3) ** 2 + (yy - 25.6) ** 2) / (2 * 1.27**2))  # no sky, no noise
    with pytest.raises(ValueError, match="image: its background rms is 0"):
        jp.photometry(img, PSF, background_box=16)
    with pytest.raises(ValueError, match="rms must be > 0 and finite on every usable pixel"):
        jp.find_stars(img + 1.0, FWHM, rms=0.0)
    # With a noise level given, the one star is found where it is.
    t = jp.find_stars(img, FWHM, rms=1.0)
    assert len(t) == 1 and abs(t["x_centroid"][0] - 20.3) < 0.1 and abs(t["y_centroid"][0] - 25.6) < 0.1


# ---------------------------------------------------------------------------- error maps
def _error_map(field):
    """The true 1-sigma map of the simulation (Poisson on the expected counts + read noise)."""
    return np.sqrt(np.asarray(field.expected) / GAIN + (RN / GAIN) ** 2)


def test_error_map_all_zero_or_negative_is_named(field):
    err = _error_map(field)
    with pytest.raises(ValueError, match="error is 0 or not finite on every usable pixel"):
        jp.photometry(field.image, PSF, error=np.zeros_like(err))
    neg = err.copy()
    neg[10, 10] = -1.0
    with pytest.raises(ValueError, match="error must be a 1-sigma map >= 0.*negative on 1 usable"):
        jp.photometry(field.image, PSF, error=neg)


def test_zero_error_strip_flags_its_stars_only(field):
    """A strip of zero errors makes those pixels unusable: stars on it are flagged BAD_PIXELS,
    the others are measured as without the strip, and match the truth within their errors."""
    err = _error_map(field)
    strip = err.copy()
    strip[:, 44:47] = 0.0
    t = jp.photometry(field.image, PSF, error=strip, maxiters=2)
    ref = jp.photometry(field.image, PSF, error=err, maxiters=2)
    x = np.asarray(t["x_fit"], float)
    near = np.abs(x - 45.0) < 4.0  # within the fit box of the strip
    far = np.abs(x - 45.0) > 10.0
    assert np.all(np.asarray(t["flags"])[near] & FitFlag.BAD_PIXELS)
    # stars far from the strip: the same as without it, and right against the truth
    d = np.hypot(x[:, None] - np.asarray(ref["x_fit"])[None],
                 np.asarray(t["y_fit"])[:, None] - np.asarray(ref["y_fit"])[None])
    j = d.argmin(1)
    ok = far & (d.min(1) < 0.05) & (np.asarray(t["flags"]) == 0)
    assert ok.sum() >= 6
    np.testing.assert_allclose(np.asarray(t["flux_fit"])[ok], np.asarray(ref["flux_fit"])[j[ok]],
                               rtol=0.02)
    tr = field.truth
    dt = np.hypot(x[ok][:, None] - tr["x"][None], np.asarray(t["y_fit"])[ok][:, None] - tr["y"][None])
    match = dt.min(1) < 0.5
    pull = (np.asarray(t["flux_fit"])[ok][match] - tr["flux"][dt.argmin(1)][match]) / \
        np.asarray(t["flux_err"])[ok][match]
    assert match.sum() >= 5 and np.median(np.abs(pull)) < 2.0


# ---------------------------------------------------------------------------- zero cutouts
def test_fit_cutouts_of_zero_cutouts_is_an_empty_table():
    rng = np.random.default_rng(5)
    x0, y0 = 7.0 + rng.uniform(-0.5, 0.5, 8), 7.0 + rng.uniform(-0.5, 0.5, 8)
    prf = np.moveaxis(np.asarray(PSF.evaluate(x0, y0, (15, 15))), -1, 0)
    data = rng.poisson(20.0 + 3000.0 * prf).astype(float)
    for kw in (dict(gain=1.0), dict(error=np.sqrt(data)), dict()):
        one = jp.fit_cutouts(data, PSF, x0, y0, **kw).to_table()
        empty = jp.fit_cutouts(data[:0], PSF, np.zeros(0), np.zeros(0), **kw).to_table()
        assert len(empty) == 0 and empty.colnames == one.colnames
        pull = (one["flux_fit"] - 3000.0) / one["flux_err"]
        assert np.all(np.abs(pull) < 5)  # the non-empty call is right
    two = jp.fit_cutouts(data[:0], PSF, np.zeros((0, 2)), np.zeros((0, 2)), gain=1.0).to_table()
    assert len(two) == 0 and "star_id" in two.colnames
    with pytest.raises(ValueError, match=r"data must be one \(H, W\) cutout or a stack"):
        jp.fit_cutouts(np.zeros((3, 0, 15)), PSF, np.zeros(3), np.zeros(3))


# ---------------------------------------------------------------------------- files
def test_truncated_fits_names_the_file(tmp_path, field, capsys):
    path = tmp_path / "cut.fits"
    fits.PrimaryHDU(field.image.astype(np.float32)).writeto(path)
    raw = path.read_bytes()
    path.write_bytes(raw[: 2880 + 10000])  # the header and 10000 of its 36864 data bytes
    with pytest.raises(ValueError, match=r"cut\.fits.*truncated \(10000 of the 36864 data bytes"):
        read_image(path)
    rc, err = _cli(["photometry", path, "-o", tmp_path / "c.ecsv"], capsys)
    assert rc == 2 and str(path) in err[-1] and "truncated" in err[-1]


def _oversampled_psf_file(path, s: int, header_card: bool):
    """A PSF file sampled ``s`` times per pixel (a Gaussian of FWHM 3 detector pixels)."""
    n = 15 * s + (1 - (15 * s) % 2)
    c = (n - 1) / 2.0
    yy, xx = np.mgrid[:n, :n]
    sig = FWHM * s / 2.3548
    a = np.exp(-((xx - c) ** 2 + (yy - c) ** 2) / (2 * sig**2))
    hdu = fits.PrimaryHDU((a / a.sum()).astype(np.float32))
    if header_card:
        hdu.header["OVERSAMP"] = s
    hdu.writeto(path)


def test_oversampled_psf_file_warns(tmp_path, field, capsys):
    """A 4x oversampled PSF file without OVERSAMP: read at 1x it is 4x too wide. The CLI says
    so before fitting, and with --oversampling 4 it finds the true stars without a warning."""
    psf_path, img_path = tmp_path / "psf4.fits", tmp_path / "img.fits"
    _oversampled_psf_file(psf_path, 4, header_card=False)
    fits.PrimaryHDU(field.image.astype(np.float32)).writeto(img_path)
    star_fwhm = jp.epsf.measure_star_fwhm(field.image)
    assert abs(star_fwhm - FWHM) < 0.3  # the stars' width is measured right
    with pytest.warns(PSFOversamplingWarning, match="looks 4x oversampled"):
        p1 = read_psf_fits(psf_path, star_fwhm=star_fwhm)
    assert isinstance(p1, DiscretePSF) and p1.oversampling == 1
    rc, err = _cli(["photometry", img_path, "--psf", psf_path, "-o", tmp_path / "a.ecsv",
                    "--maxiters", "1", "--no-progress"], capsys)
    assert any("warning" in e and "looks 4x oversampled" in e and "--oversampling 4" in e
               for e in err), err
    rc, err = _cli(["photometry", img_path, "--psf", psf_path, "--oversampling", "4", "-o",
                    tmp_path / "b.ecsv", "--maxiters", "2", "--no-progress",
                    "--gain", GAIN, "--read-noise", RN], capsys)
    assert rc == 0 and not any("looks 4x" in e or "warning" in e for e in err), err
    t = Table.read(tmp_path / "b.ecsv")
    bright = field.truth[field.truth["snr"] > 30]
    d = np.hypot(t["x_fit"][:, None] - bright["x"][None], t["y_fit"][:, None] - bright["y"][None])
    assert np.all(d.min(0) < 0.5)  # every bright true star found at the right place
    # a file with OVERSAMP, or one that matches the stars, gives no warning
    _oversampled_psf_file(tmp_path / "psf4h.fits", 4, header_card=True)
    _oversampled_psf_file(tmp_path / "psf1.fits", 1, header_card=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PSFOversamplingWarning)
        assert read_psf_fits(tmp_path / "psf4h.fits", star_fwhm=star_fwhm).oversampling == 4
        read_psf_fits(tmp_path / "psf1.fits", star_fwhm=star_fwhm)


# ---------------------------------------------------------------------------- more scalars
def test_aperture_negative_error_or_read_noise_is_named():
    rng = np.random.default_rng(2)
    img = rng.normal(100.0, 5.0, (40, 40))
    with pytest.raises(ValueError, match="error must be > 0"):
        jp.aperture_photometry(img, [[20.0, 20.0]], r=3.0, error=-1.0)
    with pytest.raises(ValueError, match="error must be a 1-sigma value or map >= 0.*1600"):
        jp.aperture_photometry(img, [[20.0, 20.0]], r=3.0, error=-np.ones((40, 40)))
    with pytest.raises(ValueError, match="read_noise must be >= 0"):
        jp.aperture_photometry(img, [[20.0, 20.0]], r=3.0, gain=1.0, read_noise=-5.0)
    t = jp.aperture_photometry(img, [[20.0, 20.0]], r=3.0, error=5.0)  # the right sigma: right error
    assert t["flags"][0] == 0 and abs(t["flux_err"][0] / (5.0 * np.sqrt(np.pi * 9.0)) - 1) < 0.01


@pytest.mark.parametrize("fwhm", [50.0, 0.3])
def test_fit_cutouts_wrong_psf_width_warns(fwhm):
    """A PSF far from the data (issue 18: 640x or 0.29x the true flux, unflagged) warns."""
    rng = np.random.default_rng(0)
    x, y = 7.0 + rng.uniform(-0.5, 0.5, 32), 7.0 + rng.uniform(-0.5, 0.5, 32)
    prf = np.moveaxis(np.asarray(PSF.evaluate(x, y, (15, 15))), -1, 0)
    data = rng.poisson(20.0 + 3000.0 * prf).astype(float)
    with pytest.warns(jp.core.fit.FitMismatchWarning, match="median reduced chi2"):
        jp.fit_cutouts(data, GaussianPRF(fwhm), x, y, gain=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", jp.core.fit.FitMismatchWarning)
        t = jp.fit_cutouts(data, PSF, x, y, gain=1.0).to_table()
    pull = (t["flux_fit"] - 3000.0) / t["flux_err"]
    assert abs(np.mean(pull)) < 4 / np.sqrt(len(t)) + 0.1 and 0.6 < np.std(pull) < 1.4
