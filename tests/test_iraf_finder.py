"""find_stars(method="iraf") and threshold_abs, against simulated truth and photutils."""

import numpy as np
import pytest
from astropy.stats import mad_std
from scipy.special import erf

from jaxphot import find_stars
from jaxphot.image.detection import daofind_kernel, lpd_filter

FWHM, NOISE, SKY = 3.0, 5.0, 100.0
SIGMA = FWHM / (2 * np.sqrt(2 * np.log(2)))


def field(seed, n=150, size=256, flux_range=(150.0, 5000.0), noise=NOISE):
    """Pixel-integrated Gaussian stars (≥ 8 px apart) on a flat sky with white noise.

    Returns the image (size, size) and the true x, y (pixels, 0-based) and flux, each (n,).
    """
    rng = np.random.default_rng(seed)
    pts = []
    while len(pts) < n:  # rejection sampling of a small set: a loop is clearest
        p = rng.uniform(6, size - 6, 2)
        if all(np.hypot(*(p - q)) > 8 for q in pts):
            pts.append(p)
    x, y = np.array(pts).T
    flux = 10 ** rng.uniform(*np.log10(flux_range), n)
    e = np.arange(size + 1) - 0.5
    px = np.diff(0.5 * erf((e[None] - x[:, None]) / (np.sqrt(2) * SIGMA)), axis=1)
    py = np.diff(0.5 * erf((e[None] - y[:, None]) / (np.sqrt(2) * SIGMA)), axis=1)
    img = SKY + np.einsum("n,ny,nx->yx", flux, py, px)
    return img + rng.normal(0, noise, img.shape), x, y, flux


def match(t, x, y, r=1.5):
    """(found (n,) bool, dx, dy of the found) for the nearest detection within ``r`` px."""
    if len(t) == 0:
        return np.zeros(len(x), bool), np.zeros(0), np.zeros(0)
    tx, ty = np.asarray(t["x_centroid"]), np.asarray(t["y_centroid"])
    d = np.hypot(tx[:, None] - x[None], ty[:, None] - y[None])
    j = d.argmin(0)
    ok = d[j, np.arange(len(x))] < r
    return ok, tx[j[ok]] - x[ok], ty[j[ok]] - y[ok]


def amp_sigma(sigma_radius=1.5):
    """1σ noise of the matched-filter amplitude (image units) for pixel noise NOISE."""
    k = daofind_kernel(FWHM, sigma_radius=sigma_radius)
    return NOISE * k["flux_noise"] / k["volume"]


def test_iraf_truth():
    """Bright stars all found with accurate centroids, starfind's shape statistics, no fakes."""
    img, x, y, f = field(0)
    t = find_stars(img, FWHM, 5.0, method="iraf", background=SKY, rms=NOISE)
    ok, dx, dy = match(t, x, y)
    bright = f > 1500  # amplitude S/N > ~20
    assert ok[bright].all()
    rms_bright = np.sqrt(np.mean((dx**2 + dy**2)[bright[ok]]))
    # starfind's moments are windowed on the peak pixel, so they are pulled towards it: a
    # pixel-phase bias of rms 0.107 px (max 0.20) on this field without noise.
    assert rms_bright < 0.15
    g = find_stars(img, FWHM, 5.0, method="iraf", background=SKY, rms=NOISE, centroid="gaussian")
    ok_g, dxg, dyg = match(g, x, y)
    assert np.sqrt(np.mean((dxg**2 + dyg**2)[bright[ok_g]])) < 0.05  # no such bias
    # every detection is a true star: no noise peak or split star at 5σ
    d = np.hypot(np.asarray(t["x_centroid"])[:, None] - x, np.asarray(t["y_centroid"])[:, None] - y)
    assert (d.min(1) < 1.5).all()
    # IRAF sharpness is the windowed moment FWHM over the kernel FWHM (≈0.65 for a star in
    # starfind's 1.5σ window); noise leaves its median at the noiseless value.
    s = np.asarray(t["sharpness"])[np.asarray(t["flux"]) > 500]
    t0 = find_stars(field(0, noise=0.0)[0], FWHM, threshold_abs=1.0, method="iraf",
                    background=SKY, rms=1.0)  # fmt: skip
    assert abs(np.median(s) - np.median(t0["sharpness"])) < 0.02
    assert (np.asarray(t["roundness"]) <= 0.2).all() and (np.asarray(t["roundness"]) >= 0).all()
    assert np.all(np.diff(np.asarray(t["flux"])) <= 0)
    # sky = background + starfind's local sky, the mean of the 12 box corners, which hold some
    # starlight: against the noiseless field it differs only by the noise of a 12-pixel mean.
    key0 = {(a, b): v for a, b, v in zip(t0["x_peak"], t0["y_peak"], t0["sky"], strict=True)}
    dsky = np.array([v - key0[(a, b)] for a, b, v in zip(t["x_peak"], t["y_peak"], t["sky"],
                     strict=True) if (a, b) in key0])  # fmt: skip
    assert len(dsky) > 80 and (np.asarray(t0["sky"]) >= SKY).all()
    assert abs(dsky.mean()) < 4 * NOISE / np.sqrt(12 * len(dsky))
    assert 0.8 < dsky.std() / (NOISE / np.sqrt(12)) < 1.2
    # pure noise: nothing above 5σ
    rng = np.random.default_rng(9)
    empty = SKY + rng.normal(0, NOISE, img.shape)
    assert len(find_stars(empty, FWHM, 5.0, method="iraf", background=SKY, rms=NOISE)) == 0


def test_iraf_cuts_reject_hot_pixels_and_peakmax():
    """A single hot pixel is too sharp for IRAF's sharpness cut; peakmax drops bright stars."""
    img, x, y, f = field(1, n=40)
    gy, gx = (a.ravel() for a in np.mgrid[20:236:8, 20:236:8])
    far = np.hypot(gx[:, None] - x, gy[:, None] - y).min(1) > 12
    hx, hy = gx[far][:5], gy[far][:5]  # five pixels far from every star
    img[hy, hx] += 300.0  # 60σ hot pixels: far above threshold
    t = find_stars(img, FWHM, 5.0, method="iraf", background=SKY, rms=NOISE)
    tx, ty = np.asarray(t["x_centroid"]), np.asarray(t["y_centroid"])
    assert len(hx) == 5 and np.hypot(tx[:, None] - hx, ty[:, None] - hy).min() > 3
    loose = find_stars(img, FWHM, 5.0, method="iraf", background=SKY, rms=NOISE, sharplo=0.0)
    # without the sharpness cut, the extra detections are hot pixels (those with more than one
    # positive footprint pixel: starfind also drops single-pixel objects)
    lx, ly = np.asarray(loose["x_centroid"]), np.asarray(loose["y_centroid"])
    extra = np.hypot(lx[:, None] - hx, ly[:, None] - hy).min(1) < 1.0
    assert len(loose) == len(t) + extra.sum() and extra.sum() >= 1
    pk = find_stars(img, FWHM, 5.0, method="iraf", background=SKY, rms=NOISE, peakmax=100.0)
    assert len(pk) < len(t) and (np.asarray(pk["peak"]) <= 100.0).all()
    assert len(find_stars(img, FWHM, 5.0, method="iraf", background=SKY, rms=NOISE,
                          brightest=5)) == 5  # fmt: skip


@pytest.mark.photutils
def test_iraf_against_photutils():
    """Same inputs: completeness ≥ photutils' − 1 %, centroid rms comparable, same values."""
    det = pytest.importorskip("photutils.detection")
    thr = 5.0 * amp_sigma()
    found_o = found_r = 0
    err_o, err_r, n_common, n_true = [], [], 0, 0
    for seed in range(3):
        img, x, y, f = field(seed)
        ours = find_stars(img, FWHM, threshold_abs=thr, method="iraf", background=SKY, rms=NOISE)
        ref = det.IRAFStarFinder(thr, FWHM)(img - SKY)
        ok_o, dxo, dyo = match(ours, x, y)
        ok_r, dxr, dyr = match(ref, x, y)
        found_o += ok_o.sum()
        found_r += ok_r.sum()
        n_true += len(x)
        err_o.append(np.hypot(dxo, dyo))
        err_r.append(np.hypot(dxr, dyr))
        # Where both find the same peak, starfind's statistics agree to rounding.
        d = np.hypot(np.asarray(ours["x_centroid"])[:, None] - np.asarray(ref["x_centroid"]),
                     np.asarray(ours["y_centroid"])[:, None] - np.asarray(ref["y_centroid"]))
        i, j = np.nonzero(d < 1e-6)
        n_common += len(i)
        for col in ("sharpness", "roundness", "fwhm", "flux", "peak"):
            np.testing.assert_allclose(np.asarray(ours[col])[i], np.asarray(ref[col])[j],
                                       rtol=1e-9, atol=1e-9)  # fmt: skip
    c_o, c_r = found_o / n_true, found_r / n_true
    rms_o = np.sqrt(np.mean(np.concatenate(err_o) ** 2))
    rms_r = np.sqrt(np.mean(np.concatenate(err_r) ** 2))
    print(f"completeness ours {c_o:.4f} photutils {c_r:.4f}; centroid rms ours {rms_o:.4f} "
          f"photutils {rms_r:.4f} px; identical peaks {n_common}")  # fmt: skip
    assert c_o >= c_r - 0.01
    assert rms_o < 1.1 * rms_r
    assert n_common > 0.9 * min(found_o, found_r)


@pytest.mark.parametrize("method", ["daofind", "iraf", "peak"])
def test_threshold_abs_equals_threshold_in_sigma(method):
    """On an image of known rms, threshold_abs = t·σ (of the detection image) selects exactly
    what threshold = t does: σ_amp for the matched filter, the LPD image's noise for "peak"."""
    img, x, y, f = field(2)
    if method == "peak":
        sig = mad_std(lpd_filter(img - SKY))
    else:
        sig = amp_sigma(1.5 if method == "iraf" else 3.0)
    kw = dict(method=method, background=SKY, rms=NOISE)
    for t_sig in (4.0, 8.0):
        a = find_stars(img, FWHM, t_sig, **kw)
        b = find_stars(img, FWHM, threshold_abs=t_sig * sig * (1 - 1e-12), **kw)
        assert len(a) == len(b) > 20
        np.testing.assert_array_equal(a["x_peak"], b["x_peak"])
        assert a.meta["threshold"] == t_sig and b.meta["threshold_abs"] > 0


def test_threshold_abs_is_in_image_units():
    """threshold_abs compares with the star's peak amplitude above sky (image units)."""
    img, x, y, f = field(3, flux_range=(300.0, 20000.0))
    amp = f / (2 * np.pi * SIGMA**2)  # true peak height of each star
    a_thr = 100.0  # image units; ≈ 15σ of the amplitude noise
    t = find_stars(img, FWHM, threshold_abs=a_thr, method="iraf", background=SKY, rms=NOISE)
    ok, _, _ = match(t, x, y)
    assert ok[amp > 1.3 * a_thr].all()
    assert not ok[amp < 0.7 * a_thr].any()


def test_threshold_arguments_checked():
    img = np.random.default_rng(0).normal(0, 1, (40, 40))
    with pytest.raises(ValueError, match="threshold_abs"):
        find_stars(img, FWHM, 5.0, threshold_abs=3.0)
    with pytest.raises(TypeError, match="threshold_abs"):
        find_stars(img, FWHM, threshold_abs="3")
    with pytest.raises(ValueError, match="ratio"):
        find_stars(img, FWHM, method="iraf", ratio=0.5)
    with pytest.raises(ValueError, match="iraf"):
        find_stars(img, FWHM, method="sextractor")
    with pytest.raises(ValueError, match="minsep_fwhm"):
        find_stars(img, FWHM, method="iraf", minsep_fwhm=-1.0)
