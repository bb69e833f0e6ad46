"""Elliptical and rectangular apertures, their annuli and sky apertures (issue 16 items 1, 2, 6)."""

from __future__ import annotations

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS

from jaxphot.aperture import aperture_photometry

SHAPE = (96, 96)
ONES = np.ones(SHAPE)


def _random(n, seed):
    rng = np.random.default_rng(seed)
    pos = rng.uniform(30, 66, (n, 2))
    a = rng.uniform(2.0, 9.0, n)
    b = a * rng.uniform(0.3, 1.0, n)
    theta = rng.uniform(-np.pi, np.pi, n)
    return pos, a, b, theta


def _wcs(rot_deg=25.0, flip=True):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [210.0, -30.0]
    w.wcs.crpix = [48.5, 48.5]
    s = 0.2 / 3600
    c, sn = np.cos(np.radians(rot_deg)), np.sin(np.radians(rot_deg))
    w.wcs.cd = np.array([[-s * c if flip else s * c, s * sn], [s * sn * (-1 if flip else 1), s * c]])
    w.wcs.set()
    return w


def test_exact_areas_are_analytic():
    pos, a, b, theta = _random(40, 1)
    el = aperture_photometry(ONES, pos, shape="ellipse", a=a, b=b, theta=theta)
    np.testing.assert_allclose(el["aperture_sum"], np.pi * a * b, rtol=1e-10)
    np.testing.assert_allclose(el["area"], np.pi * a * b, rtol=1e-10)
    re = aperture_photometry(ONES, pos, shape="rectangle", w=2 * a, h=2 * b, theta=theta)
    np.testing.assert_allclose(re["aperture_sum"], 4 * a * b, rtol=1e-10)
    # Annuli: the ring area, with b_in = b_out a_in / a_out as photutils.
    an = aperture_photometry(ONES, pos, shape="ellipse", a=a, b=b, theta=theta,
                             a_in=a + 1, a_out=a + 4, b_out=(b + 4))
    ring = np.pi * ((a + 4) * (b + 4) - (a + 1) * (b + 4) * (a + 1) / (a + 4))
    # the robust sky counts the pixels whose centres lie in the ring: its area to a few pixels
    assert np.all(np.abs(np.asarray(an["n_sky"]) - ring) < 0.12 * ring + 4)
    # ones everywhere: the annulus sky is 1 and the flux is the area minus area*sky = 0
    np.testing.assert_allclose(an["sky"], 1.0)
    np.testing.assert_allclose(an["flux"], 0.0, atol=1e-9)


@pytest.mark.parametrize("method, n, tol", [("subpixel", 16, 2e-3), ("center", 1, 0.05)])
def test_approximate_methods_converge_to_the_analytic_area(method, n, tol):
    pos, a, b, theta = _random(60, 2)
    a, b = a + 4, b + 4
    el = aperture_photometry(ONES, pos, shape="ellipse", a=a, b=b, theta=theta, method=method,
                             subpixels=n)
    re = aperture_photometry(ONES, pos, shape="rectangle", w=2 * a, h=2 * b, theta=theta,
                             method=method, subpixels=n)
    err_e = np.asarray(el["aperture_sum"]) / (np.pi * a * b) - 1
    err_r = np.asarray(re["aperture_sum"]) / (4 * a * b) - 1
    # unbiased on average over random phases, and each within the boundary-pixel budget
    assert abs(np.mean(err_e)) < tol / 3 and abs(np.mean(err_r)) < tol / 3
    assert np.max(np.abs(err_e)) < tol * 4 and np.max(np.abs(err_r)) < tol * 4


def test_several_apertures_and_per_source_sizes():
    rng = np.random.default_rng(3)
    img = rng.normal(10, 1, SHAPE)
    pos, a, b, theta = _random(12, 3)
    multi = aperture_photometry(img, pos, shape="ellipse", a=[3.0, 5.0], b=[2.0, 4.0], theta=theta)
    assert multi["aperture_sum"].shape == (12, 2)
    for k, (aa, bb) in enumerate(((3.0, 2.0), (5.0, 4.0))):
        one = aperture_photometry(img, pos, shape="ellipse", a=aa, b=bb, theta=theta)
        np.testing.assert_allclose(multi["aperture_sum"][:, k], one["aperture_sum"], rtol=1e-12)
    per = aperture_photometry(img, pos, shape="rectangle", w=2 * a, h=2 * b, theta=theta)
    for k in (0, 5, 11):
        one = aperture_photometry(img, pos[k:k + 1], shape="rectangle", w=2 * a[k], h=2 * b[k],
                                  theta=theta[k])
        assert per["aperture_sum"][k] == pytest.approx(one["aperture_sum"][0], rel=1e-12)
    # same columns as circles
    circ = aperture_photometry(img, pos, 3.0)
    assert set(circ.colnames) <= set(per.colnames)


def test_flux_of_a_star_in_an_elliptical_aperture_with_annulus_sky():
    """A known flux on a known sky: the flux and its error are right (truth + pulls)."""
    from jaxphot.image.render import render_image
    from jaxphot.psf import GaussianPRF

    rng = np.random.default_rng(4)
    psf = GaussianPRF(2.5, fwhm_y=4.0, theta=0.6)
    sky, flux = 40.0, 5000.0
    g = np.arange(32.0, 640.0, 64.0)  # 100 stars, 64 px apart: their apertures never overlap
    gx, gy = (v.ravel() + rng.uniform(-0.5, 0.5, v.size) for v in np.meshgrid(g, g))
    img = rng.poisson(sky + render_image(psf, gx, gy, np.full(gx.size, flux), (640, 640), stamp=31))
    t = aperture_photometry(img.astype(float), np.c_[gx, gy], shape="ellipse", a=12.0, b=9.0,
                            theta=0.6 + np.pi / 2, a_in=16.0, a_out=24.0, b_out=20.0, gain=1.0,
                            sky="mean")
    f, e = np.asarray(t["flux"]), np.asarray(t["flux_err"])
    pull = (f - flux) / e
    assert abs(np.mean(pull)) < 0.35  # 100 repeats: the mean pull is known to 0.1
    assert 0.8 < np.std(pull) < 1.2


@pytest.mark.photutils
def test_exact_sums_match_photutils():
    pa = pytest.importorskip("photutils.aperture")
    rng = np.random.default_rng(5)
    img = rng.gamma(2.0, 10.0, SHAPE)
    pos, a, b, theta = _random(30, 5)
    ours = aperture_photometry(img, pos, shape="ellipse", a=a, b=b, theta=theta)
    ref = np.array([pa.aperture_photometry(img, pa.EllipticalAperture(p, aa, bb, theta=t),
                                           method="exact")["aperture_sum"][0]
                    for p, aa, bb, t in zip(pos, a, b, theta, strict=True)])
    np.testing.assert_allclose(ours["aperture_sum"], ref, rtol=1e-10)
    # photutils' rectangle "exact" samples 32x32 sub-pixels: equal to our subpixel=32 ...
    rect = aperture_photometry(img, pos, shape="rectangle", w=2 * a, h=2 * b, theta=theta,
                               method="subpixel", subpixels=32)
    ref_r = np.array([pa.aperture_photometry(img, pa.RectangularAperture(p, 2 * aa, 2 * bb, theta=t),
                                             method="exact")["aperture_sum"][0]
                      for p, aa, bb, t in zip(pos, a, b, theta, strict=True)])
    np.testing.assert_allclose(rect["aperture_sum"], ref_r, rtol=1e-10)
    # ... and within its sampling error of our exact rectangle
    exact = aperture_photometry(img, pos, shape="rectangle", w=2 * a, h=2 * b, theta=theta)
    np.testing.assert_allclose(exact["aperture_sum"], ref_r, rtol=5e-3)


@pytest.mark.photutils
@pytest.mark.parametrize("shape", ["ellipse", "rectangle"])
def test_annulus_median_matches_photutils_aperture_stats(shape):
    pa = pytest.importorskip("photutils.aperture")
    rng = np.random.default_rng(6)
    img = rng.normal(100.0, 5.0, SHAPE) + np.linspace(0, 20, SHAPE[1])[None, :]
    pos, a, b, theta = _random(15, 6)
    if shape == "ellipse":
        ours = aperture_photometry(img, pos, shape="ellipse", a=a, b=b, theta=theta, a_in=a + 2,
                                   a_out=a + 8, b_out=b + 8, sky="median")
        ann = [pa.EllipticalAnnulus(p, aa + 2, aa + 8, bb + 8, theta=t)
               for p, aa, bb, t in zip(pos, a, b, theta, strict=True)]
    else:
        ours = aperture_photometry(img, pos, shape="rectangle", w=2 * a, h=2 * b, theta=theta,
                                   w_in=2 * a + 4, w_out=2 * a + 16, h_out=2 * b + 16, sky="median")
        ann = [pa.RectangularAnnulus(p, 2 * aa + 4, 2 * aa + 16, 2 * bb + 16, theta=t)
               for p, aa, bb, t in zip(pos, a, b, theta, strict=True)]
    ref = np.array([pa.ApertureStats(img, an).median for an in ann])
    np.testing.assert_allclose(ours["sky"], ref, rtol=5e-3)


@pytest.mark.parametrize("shape", ["circle", "ellipse", "rectangle"])
def test_sky_apertures_equal_the_converted_pixel_apertures(shape):
    w = _wcs()
    rng = np.random.default_rng(7)
    img = rng.normal(50, 3, SHAPE)
    pos = rng.uniform(30, 66, (10, 2))
    coords = w.pixel_to_world(pos[:, 0], pos[:, 1])
    scale = 0.2  # arcsec per pixel
    if shape == "circle":
        kw_sky, kw_pix = dict(r=1.2 * u.arcsec), dict(r=6.0)
    elif shape == "ellipse":
        kw_sky = dict(shape="ellipse", a=1.6 * u.arcsec, b=1.0 * u.arcsec, theta=30 * u.deg)
        kw_pix = dict(shape="ellipse", a=8.0, b=5.0)
    else:
        kw_sky = dict(shape="rectangle", w=2.0 * u.arcsec, h=1.2 * u.arcsec, theta=30 * u.deg)
        kw_pix = dict(shape="rectangle", w=10.0, h=6.0)
    sky = aperture_photometry(img, coords, wcs=w, **kw_sky)
    assert {"ra", "dec"} <= set(sky.colnames)
    np.testing.assert_allclose(sky["ra"], coords.ra.deg, rtol=1e-12)
    px, py = w.world_to_pixel(coords)
    np.testing.assert_allclose(sky["x"], px, atol=1e-8)
    if shape != "circle":
        # the pixel angle of a position angle of 30 deg on this WCS: measured from the chord
        ahead = coords.directional_offset_by(30 * u.deg, scale * u.arcsec)
        behind = coords.directional_offset_by(210 * u.deg, scale * u.arcsec)
        (x1, y1), (x0, y0) = w.world_to_pixel(ahead), w.world_to_pixel(behind)
        th = np.arctan2(y1 - y0, x1 - x0)
        kw_pix["theta"] = th
    pix = aperture_photometry(img, np.c_[px, py], **kw_pix)
    np.testing.assert_allclose(sky["aperture_sum"], pix["aperture_sum"], rtol=1e-8)


def test_bad_input_names_the_argument():
    pos = [[40.0, 40.0]]
    cases = [
        (dict(shape="ellipse", a=-1.0, b=1.0), "a"),
        (dict(shape="ellipse", a=2.0, b=3.0), "b must be <= a"),
        (dict(shape="rectangle", w=0.0, h=2.0), "w"),
        (dict(shape="ellipse", a=4.0, b=3.0, a_in=3.0, a_out=8.0, b_out=6.0), "a_in must be >= a"),
        (dict(shape="rectangle", w=4.0, h=3.0, w_in=5.0, w_out=4.5, h_out=6.0), "w_out must be > w_in"),
        (dict(shape="hexagon", r=3.0), "shape"),
        (dict(shape="ellipse", a=3.0, b=2.0, r=4.0), "r is not an argument"),
        (dict(shape="circle", r=3.0, r_in=2.0, r_out=6.0), "r_in"),
    ]
    for kw, match in cases:
        with pytest.raises(ValueError, match=match):
            aperture_photometry(ONES, pos, **kw)
    c = SkyCoord(210.0, -30.0, unit="deg")
    with pytest.raises(ValueError, match="wcs"):
        aperture_photometry(ONES, c, r=1 * u.arcsec)
    with pytest.raises(ValueError, match="positions"):
        aperture_photometry(ONES, np.zeros((3, 3)), r=3.0)
