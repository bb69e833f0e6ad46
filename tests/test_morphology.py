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
