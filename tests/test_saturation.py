"""Saturated stars: masked cores and bleed columns, detected, fitted on their wings, flagged.

The field is simulated with known fluxes; the brightest stars peak at 2-20x the saturation
level, the image is clipped there and two of them get bleed columns. The same field without
clipping is the reference for the unsaturated stars.
"""

import numpy as np
import pytest
from astropy.table import Table
from scipy.spatial import cKDTree

from jaxphot.core.flags import FitFlag
from jaxphot.epsf.selection import select_stars
from jaxphot.image import make_model_image, photometry, saturation_mask
from jaxphot.psf import GaussianPRF

PSF = GaussianPRF(3.0)
SAT, SKY, RN = 20000.0, 100.0, 5.0


def _field(seed=1, shape=(192, 192), n_bright=8):
    rng = np.random.default_rng(seed)
    g = np.arange(12, shape[0] - 10, 16.0)
    xx, yy = np.meshgrid(g, g)
    x = xx.ravel() + rng.uniform(-3, 3, xx.size)
    y = yy.ravel() + rng.uniform(-3, 3, xx.size)
    f = 10 ** rng.uniform(3.3, 5.0, x.size)
    peak = float(np.asarray(PSF.evaluate(0.0, 0.0, (1, 1))).ravel()[0])  # PRF of the centre pixel
    bright = rng.choice(x.size, n_bright, replace=False)
    f[bright] = np.geomspace(2, 20, n_bright) * SAT / peak  # peaks at 2-20x saturation
    truth = Table({"x_fit": x, "y_fit": y, "flux_fit": f, "flags": np.zeros(x.size, int)})
    img = rng.poisson(make_model_image(truth, PSF, shape) + SKY) + rng.normal(0, RN, shape)
    clipped = np.minimum(img, SAT)
    for k in bright[-2:]:  # bleed columns up and down from the two brightest cores
        i, j = int(round(x[k])), int(round(y[k]))
        clipped[max(0, j - 12) : j + 12, i] = SAT
    is_bright = np.zeros(x.size, bool)
    is_bright[bright] = True
    return img, clipped, x, y, f, is_bright


def _match(t, x, y):
    d, k = cKDTree(np.c_[t["x_fit"], t["y_fit"]]).query(np.c_[x, y])
    return np.where(d < 1.5, k, -1)


@pytest.fixture(scope="module")
def runs():
    img, clipped, x, y, f, is_bright = _field()
    ref = photometry(img, PSF, gain=1.0, read_noise=RN)
    sat = photometry(clipped, PSF, gain=1.0, read_noise=RN, saturation=SAT)
    return ref, sat, clipped, x, y, f, is_bright


def test_saturated_stars_fitted_on_wings(runs):
    ref, sat, clipped, x, y, f, is_bright = runs
    assert (clipped[np.rint(y[is_bright]).astype(int), np.rint(x[is_bright]).astype(int)]
            >= SAT).all()
    m = _match(sat, x, y)
    assert (m[is_bright] >= 0).all(), "a saturated star was not detected"
    row = sat[m[is_bright]]
    ratio = np.asarray(row["flux_fit"]) / f[is_bright]
    assert abs(np.median(ratio) - 1) < 0.02
    assert np.all(np.abs(ratio - 1) < 0.05)
    assert np.all(np.asarray(row["flags"]) & FitFlag.SATURATED)
    # One row per saturated star: no extra detections on its ring or its bleed column.
    d, _ = cKDTree(np.c_[x[is_bright], y[is_bright]]).query(np.c_[sat["x_fit"], sat["y_fit"]])
    assert np.sum(d < 6) == is_bright.sum()


def test_saturated_stars_fail_without_the_mask(runs):
    """The control: fitting the clipped image blind gets the saturated fluxes badly wrong."""
    _, _, clipped, x, y, f, is_bright = runs
    blind = photometry(clipped, PSF, gain=1.0, read_noise=RN, maxiters=1,
                       init_params=Table({"x": x, "y": y}), detection=False)
    ratio = np.asarray(blind["flux_fit"])[is_bright] / f[is_bright]
    assert np.median(ratio) < 0.8


def test_unsaturated_stars_unaffected(runs):
    ref, sat, clipped, x, y, f, is_bright = runs
    mr, ms = _match(ref, x, y), _match(sat, x, y)
    u = ~is_bright & (mr >= 0) & (ms >= 0)
    assert u.sum() >= 0.95 * (~is_bright).sum()
    fr, er = np.asarray(ref["flux_fit"])[mr[u]], np.asarray(ref["flux_err"])[mr[u]]
    fs, es = np.asarray(sat["flux_fit"])[ms[u]], np.asarray(sat["flux_err"])[ms[u]]
    assert abs(np.median((fs - fr) / fr)) < 0.002
    pr, ps = (fr - f[u]) / er, (fs - f[u]) / es
    assert abs(np.std(ps) / np.std(pr) - 1) < 0.05
    assert abs(np.median(ps) - np.median(pr)) < 0.05
    assert 0.8 < np.std(ps) < 1.3
    # Only stars right next to a saturated core or a bleed column share its flag.
    flagged = (np.asarray(sat["flags"])[ms[u]] & FitFlag.SATURATED) != 0
    assert flagged.sum() <= 2
    assert not np.any(np.asarray(ref["flags"]) & FitFlag.SATURATED)


def test_saturation_mask_bleed_columns():
    img = np.full((40, 40), 100.0)
    img[20, 20] = 1000.0  # saturated core
    img[10:30, 20] = 950.0  # bleed column above 0.8 x saturation, touching the core
    img[20, 20] = 1000.0
    img[5, 5] = 900.0  # near saturation, but not connected to a saturated pixel
    m = saturation_mask(img, 1000.0)
    assert m[10:30, 20].all() and m.sum() == 20 and not m[5, 5]
    assert not saturation_mask(img, 2000.0).any()
    with pytest.raises(ValueError, match="saturation"):
        saturation_mask(img, float("nan"))


def test_photometry_rejects_bad_saturation():
    with pytest.raises(ValueError, match="saturation"):
        photometry(np.zeros((32, 32)), PSF, saturation=-1.0)


def test_psf_star_selection_skips_saturated():
    img, clipped, x, y, f, is_bright = _field(seed=2, shape=(160, 160), n_bright=6)
    cat = Table({"x": x, "y": y, "flux": np.minimum(f, 1e9)})
    sky_sub = clipped - SKY
    chosen = select_stars(sky_sub, cat, shape=11, saturation=SAT - SKY, isolation=5.0, cells=1)
    picked = np.zeros(len(x), bool)
    d, k = cKDTree(np.c_[x, y]).query(np.c_[chosen["x"], chosen["y"]])
    picked[k] = True
    assert len(chosen) > 20 and not (picked & is_bright).any()
    # Without the level the brightest (saturated) stars come first.
    unsafe = select_stars(sky_sub, cat, shape=11, isolation=5.0, cells=1)
    d, k = cKDTree(np.c_[x, y]).query(np.c_[unsafe["x"], unsafe["y"]])
    assert is_bright[k].any()


def test_batch_takes_the_header_saturation(tmp_path, runs):
    """``jaxphot batch`` masks and flags saturated stars from the header's SATURATE alone."""
    from astropy.io import fits

    from jaxphot.scale.images import batch

    _, _, clipped, x, y, f, is_bright = runs
    hdr = fits.Header([("GAIN", 1.0, "e-/ADU"), ("RDNOISE", RN, "e-"), ("SATURATE", SAT)])
    fits.PrimaryHDU(clipped.astype(np.float32), header=hdr).writeto(tmp_path / "sat.fits")
    batch([tmp_path / "sat.fits"], PSF, tmp_path / "out", workers=0, progress=False)
    t = Table.read(tmp_path / "out" / "sat.ecsv")
    m = _match(t, x, y)
    assert (m[is_bright] >= 0).all()
    row = t[m[is_bright]]
    assert np.all(np.asarray(row["flags"]) & FitFlag.SATURATED)
    assert abs(np.median(np.asarray(row["flux_fit"]) / f[is_bright]) - 1) < 0.02
