"""refine_alignment: mis-registered WCSs refined on bright stars, against the true geometry."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table
from astropy.wcs import WCS

from jaxphot.image.render import render_image
from jaxphot.multi.align import apply_affine_to_wcs, refine_alignment
from jaxphot.multi.forced import forced_photometry
from jaxphot.psf import GaussianPRF

PSF = GaussianPRF(3.0)
SHAPE = (200, 200)
SKY = 50.0


def _wcs():
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [100.5, 100.5]
    w.wcs.cdelt = [-0.1 / 3600, 0.1 / 3600]
    w.wcs.set()
    return w


def _rot(deg):
    a = np.radians(deg)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def _render(x, y, flux, rng):
    return rng.poisson(SKY + render_image(PSF, x, y, flux, SHAPE)).astype(float)


@pytest.fixture(scope="module")
def field():
    rng = np.random.default_rng(17)
    n = 120
    w0 = _wcs()
    x, y = rng.uniform(8, 192, n), rng.uniform(8, 192, n)
    sky = w0.pixel_to_world(x, y)
    flux = 10 ** rng.uniform(3.3, 5.0, n)
    cat = Table({"ra": sky.ra.deg, "dec": sky.dec.deg, "flux": flux})
    # Four exposures: shifts up to 0.5 px and rotations up to 0.1 deg about the centre.
    offsets = [(0.5, -0.3, 0.1), (-0.4, 0.45, -0.08), (0.2, 0.1, 0.05), (-0.5, -0.5, -0.1)]
    c = np.array([99.5, 99.5])
    true_wcs, images = [], []
    for dx, dy, rot in offsets:
        m = _rot(rot)
        wt = apply_affine_to_wcs(w0, m, c - m @ c + np.array([dx, dy]))
        px, py = wt.world_to_pixel(sky)
        true_wcs.append(wt)
        images.append(_render(np.asarray(px), np.asarray(py), flux, rng))
    return cat, images, true_wcs, w0, sky


def test_apply_affine_to_wcs_moves_pixels_as_asked():
    w0 = _wcs()
    m, t = _rot(0.3) * 1.001, np.array([0.7, -1.2])
    w1 = apply_affine_to_wcs(w0, m, t)
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 200, 50), rng.uniform(0, 200, 50)
    s = w0.pixel_to_world(x, y)
    px, py = w1.world_to_pixel(s)
    np.testing.assert_allclose(np.c_[px, py], (m @ np.c_[x, y].T).T + t, atol=1e-8)


def test_misregistered_wcs_refined_below_a_hundredth_of_a_pixel(field):
    cat, images, true_wcs, w0, sky = field
    wrong = [w0] * len(images)
    refined, report = refine_alignment(images, cat, PSF, wcs=wrong, gain=1.0)
    print(report)
    assert list(report["status"]) == ["ok"] * 4
    for wt, wr in zip(true_wcs, refined, strict=True):
        tx, ty = wt.world_to_pixel(sky)
        rx, ry = wr.world_to_pixel(sky)
        px, py = w0.world_to_pixel(sky)
        before = np.sqrt(np.mean((px - tx) ** 2 + (py - ty) ** 2))
        after = np.sqrt(np.mean((rx - tx) ** 2 + (ry - ty) ** 2))
        print(f"position rms vs truth: {before:.3f} px before, {after:.4f} px after")
        assert before > 0.2
        assert after < 0.01
    # The residual scatter of the stars used is what their errors say.
    assert np.all(np.asarray(report["rms_x"]) < 2.0 * np.asarray(report["rms_expected"]))
    assert np.all(np.abs(np.asarray(report["scale"]) - 1) < 1e-3)


def test_forced_photometry_with_refined_wcs_is_unbiased(field):
    cat, images, _, w0, _ = field
    wrong = [w0] * len(images)
    refined, _ = refine_alignment(images, cat, PSF, wcs=wrong, gain=1.0)
    flux = np.asarray(cat["flux"])
    res = {}
    for name, ws in (("wrong", wrong), ("refined", refined)):
        lc = forced_photometry(images, cat, PSF, wcs=ws, gain=1.0)
        f = np.asarray(lc["flux"]).reshape(len(cat), len(images)).T  # star-major rows
        e = np.asarray(lc["flux_err"]).reshape(len(cat), len(images)).T
        res[name] = (f - flux) / e
    bright = flux > 2e4
    print({k: (round(float(np.median(v[:, bright])), 2), round(float(np.std(v)), 2))
           for k, v in res.items()})
    assert np.median(res["wrong"][:, bright]) < -1.0  # off-centre: fluxes biased low
    assert abs(np.median(res["refined"])) < 0.2
    assert abs(np.std(res["refined"]) - 1.0) < 0.15


def test_bad_input_and_too_few_stars():
    w0 = _wcs()
    cat = Table({"ra": [150.0], "dec": [2.0]})
    img = np.random.default_rng(1).normal(SKY, 5, SHAPE)
    refined, report = refine_alignment([img], cat, PSF, wcs=w0)
    assert refined == [None] and report["status"][0].startswith("fewer than 6")
    with pytest.raises(ValueError, match="min_snr"):
        refine_alignment([img], cat, PSF, wcs=w0, min_snr=0)
    with pytest.raises(ValueError, match="wcs has 2 entries"):
        refine_alignment([img], cat, PSF, wcs=[w0, w0])
