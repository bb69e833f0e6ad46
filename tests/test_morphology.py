"""Morphology against simulated Gaussians with known moments."""

import numpy as np

from jaxphot.morphology import (
    ellipse_from_moments,
    flux_radius,
    kron_radius,
    moments_from_cutouts,
    segment_properties,
)


def _gauss(shape, x0, y0, sx, sy, theta, flux):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    c, s = np.cos(theta), np.sin(theta)
    dx, dy = xx - x0, yy - y0
    xr, yr = dx * c + dy * s, -dx * s + dy * c
    return flux / (2 * np.pi * sx * sy) * np.exp(-0.5 * ((xr / sx) ** 2 + (yr / sy) ** 2))


def test_segment_moments_recover_gaussian_shape():
    img = np.zeros((120, 120))
    truth = [(30.3, 40.7, 4.0, 2.0, 0.5), (80.1, 75.6, 3.0, 3.0, 0.0), (85.5, 20.2, 5.0, 1.5, -1.0)]
    seg = np.zeros(img.shape, dtype=int)
    yy, xx = np.mgrid[0:120, 0:120]
    for k, (x0, y0, sx, sy, th) in enumerate(truth, start=1):
        img += _gauss(img.shape, x0, y0, sx, sy, th, 1e4)
        seg[(xx - x0) ** 2 + (yy - y0) ** 2 < (7 * max(sx, sy)) ** 2] = k
    t = segment_properties(img, seg, singular_fix=False)
    for row, (x0, y0, sx, sy, th) in zip(t, truth, strict=True):
        assert abs(row["x"] - x0) < 1e-3 and abs(row["y"] - y0) < 1e-3
        # point-sampled, well-resolved Gaussian: the discrete moments equal sigma^2 (Poisson summation)
        assert abs(row["a"] - sx) < 2e-3
        assert abs(row["b"] - sy) < 2e-3
        if sx != sy:
            dth = (row["theta"] - th + np.pi / 2) % np.pi - np.pi / 2
            assert abs(dth) < 1e-3
        assert abs(row["ellipticity"] - (1 - row["b"] / row["a"])) < 1e-12
        assert abs(row["flux"] - 1e4) < 1.0
    assert np.allclose(t["equivalent_radius"], np.sqrt(t["area"] / np.pi))


def test_cutout_moments_and_ellipse_conversion():
    cut = np.stack([_gauss((41, 41), 20.2, 19.7, 3.0, 2.0, 0.3, 1.0)])
    m = moments_from_cutouts(cut, origin=(100, 200))
    assert abs(m["x"][0] - 120.2) < 1e-4 and abs(m["y"][0] - 219.7) < 1e-4
    e = ellipse_from_moments(m["x2"], m["y2"], m["xy"])
    # the ellipse coefficients put the (a, b) ellipse at level 1
    a, th = e["a"][0], e["theta"][0]
    px, py = a * np.cos(th), a * np.sin(th)
    assert abs(e["cxx"][0] * px**2 + e["cyy"][0] * py**2 + e["cxy"][0] * px * py - 1) < 1e-10


def test_flux_and_kron_radius_of_gaussian():
    sig = 2.0
    img = _gauss((81, 81), 40.3, 39.8, sig, sig, 0.0, 1e5)
    fr = flux_radius(img, [[40.3, 39.8]], [0.5, 0.9], 30.0, normflux=[1e5])
    # circular Gaussian: r_f = sigma * sqrt(-2 ln(1 - f)) (pixel integration adds ~1/24 px² in r²)
    for k, f in enumerate([0.5, 0.9]):
        r_true = sig * np.sqrt(-2 * np.log(1 - f))
        assert abs(fr[0, k] - r_true) / r_true < 0.01
    kr = kron_radius(img, [[40.3, 39.8]], [sig], [sig], [0.0], r_max=6.0)
    # first moment of a 2-D Gaussian (truncated at 6 sigma): sqrt(pi/2) sigma, in units of a = sigma
    assert abs(kr[0] - np.sqrt(np.pi / 2)) < 0.01


def test_segment_bbox_and_extrema_on_a_hand_made_map():
    img = np.zeros((12, 15))
    seg = np.zeros(img.shape, dtype=int)
    seg[2:5, 3:9] = 1  # rows 2..4, columns 3..8
    seg[7:11, 10:12] = 3  # label 2 absent
    seg[0, 14] = 4  # a single pixel
    img[seg == 1] = 1.0
    img[3, 7], img[2, 4] = 9.0, -2.0
    img[seg == 3] = 5.0
    img[10, 11], img[8, 10] = 0.5, 7.5
    img[0, 14] = 4.0
    t = segment_properties(img + 10.0, seg, background=10.0)
    assert list(t["label"]) == [1, 3, 4]
    assert list(t["bbox_xmin"]) == [3, 10, 14] and list(t["bbox_xmax"]) == [8, 11, 14]
    assert list(t["bbox_ymin"]) == [2, 7, 0] and list(t["bbox_ymax"]) == [4, 10, 0]
    np.testing.assert_allclose(t["min_value"], [-2.0, 0.5, 4.0])
    np.testing.assert_allclose(t["max_value"], [9.0, 7.5, 4.0])
    assert list(t["minval_xindex"]) == [4, 11, 14] and list(t["minval_yindex"]) == [2, 10, 0]
    assert list(t["maxval_xindex"]) == [7, 10, 14] and list(t["maxval_yindex"]) == [3, 8, 0]
    np.testing.assert_allclose(t["segment_flux"], [18 - 2 + 9 - 2, 5 * 6 + 0.5 + 7.5, 4.0])
    # a mask removes pixels from every column, the extrema included
    mask = np.zeros(img.shape, bool)
    mask[3, 7] = True
    tm = segment_properties(img, seg, mask=mask)
    assert tm["max_value"][0] == 1.0 and tm["area"][0] == 17


def test_segment_flux_err_is_analytic_and_gives_unit_pulls():
    rng = np.random.default_rng(1)
    n, k = 20, 6  # 400 square segments of 6x6 px on a flat source of 3 counts/px
    seg = (np.arange(n)[:, None] * n + np.arange(n)[None, :] + 1).repeat(k, 0).repeat(k, 1)
    sigma = rng.uniform(0.5, 2.0, seg.shape)
    img = 3.0 + rng.normal(0.0, sigma)
    t = segment_properties(img, seg, error=sigma)
    expect = np.sqrt(np.bincount(seg.ravel(), weights=sigma.ravel() ** 2)[1:])
    np.testing.assert_allclose(t["segment_flux_err"], expect, rtol=1e-12)
    t1 = segment_properties(img, seg, error=1.5)
    np.testing.assert_allclose(t1["segment_flux_err"], 1.5 * k, rtol=1e-12)  # sigma sqrt(N)
    pulls = (t["segment_flux"] - 3.0 * k * k) / t["segment_flux_err"]
    assert abs(np.std(pulls) - 1) < 0.1 and abs(np.mean(pulls)) < 0.15


def test_kron_flux_of_gaussians_is_the_analytic_fraction():
    from jaxphot.aperture import kron_photometry

    rng = np.random.default_rng(2)
    img = np.zeros((160, 160))
    seg = np.zeros(img.shape, dtype=int)
    yy, xx = np.mgrid[0:160, 0:160]
    truth = [(40.2, 42.7, 4.0, 2.5, 0.6), (110.6, 45.1, 3.0, 3.0, 0.0), (80.3, 115.8, 5.0, 2.0, -1.1)]
    for k, (x0, y0, sx, sy, th) in enumerate(truth, start=1):
        img += _gauss(img.shape, x0, y0, sx, sy, th, 2e4)
        seg[(xx - x0) ** 2 + (yy - y0) ** 2 < (4 * max(sx, sy)) ** 2] = k
    sigma = 0.5
    noisy = img + rng.normal(0, sigma, img.shape)
    t = segment_properties(img, seg, error=sigma, kron_photometry=kron_photometry)
    # a 2-D Gaussian: first moment sqrt(pi/2) sigma (the 4-sigma segment gives slightly smaller
    # moments a, b, so r_K is a little larger); the 2.5 r_K ellipse encloses 1 - exp(-(2.5 r_K a/s)^2/2)
    r_ap = t["kron_a"] / np.array([s[2] for s in truth])
    frac = 1 - np.exp(-0.5 * r_ap**2)
    np.testing.assert_allclose(t["kron_flux"] / 2e4, frac, rtol=2e-3)
    assert (frac > 0.985).all()
    np.testing.assert_allclose(t["kron_b"] / t["kron_a"], [s[3] / s[2] for s in truth], rtol=0.01)
    # error: sigma * sqrt(aperture area) for a constant per-pixel sigma
    np.testing.assert_allclose(t["kron_flux_err"], sigma * np.sqrt(np.pi * t["kron_a"] * t["kron_b"]),
                               rtol=0.01)
    tn = segment_properties(noisy, seg, error=sigma, kron_photometry=kron_photometry)
    assert (np.abs(tn["kron_flux"] - t["kron_flux"]) < 5 * tn["kron_flux_err"]).all()


def test_kron_params_minimum_radius_and_circle():
    from jaxphot.aperture import kron_aperture

    ap = kron_aperture([3.0, 1.0], [2.0, 0.5], [0.3, 0.3], [1.0, np.nan], (2.5, 1.4))
    np.testing.assert_allclose(ap["a"][0], 2.5 * 1.4 * 3.0)  # r_K raised to r_min
    assert np.isnan(ap["a"][1])
    ap = kron_aperture([1.0], [0.5], [0.3], [1.5], (2.5, 1.4, 3.0))
    assert ap["circular"][0] and ap["a"][0] == 3.0 and ap["b"][0] == 3.0  # 2.5·1.5·sqrt(0.5) <= 3


def test_sky_centroid_is_the_wcs_position_of_the_true_centre():
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.1, 2.2]
    w.wcs.crpix = [30.5, 20.0]
    w.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    w.wcs.pc = [[0.8, 0.6], [-0.6, 0.8]]
    x0, y0 = 41.3, 17.6
    img = _gauss((60, 70), x0, y0, 2.0, 2.0, 0.0, 1e3)
    seg = (img > 1e-3).astype(int)
    t = segment_properties(img, seg, wcs=w)
    truth = w.pixel_to_world(x0, y0)
    assert t["sky_centroid"][0].separation(truth).arcsec < 1e-3 * 0.2  # 1e-3 px
    ra, dec = w.all_pix2world([[x0, y0]], 0)[0]  # 0-based pixel convention
    assert abs(t["ra"][0] - ra) * 3600 < 1e-3 and abs(t["dec"][0] - dec) * 3600 < 1e-3
