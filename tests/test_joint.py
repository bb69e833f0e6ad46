"""joint_photometry: shared positions over N exposures, against the truth and the 1/sqrt(N) law."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from jaxphot.image.render import render_image
from jaxphot.multi.joint import joint_photometry
from jaxphot.psf import GaussianPRF

SHAPE = (160, 160)
SKY = 80.0


def _field(n_exp, seed=5, n_stars=70, seeing=(3.0, 3.0)):
    """Exposures of one field with known offsets, rotations and seeing (FWHM range, px)."""
    rng = np.random.default_rng(seed)
    g = np.arange(12, 150, 17.0)
    gx, gy = np.meshgrid(g, g)
    x = gx.ravel()[:n_stars] + rng.uniform(-2, 2, n_stars)
    y = gy.ravel()[:n_stars] + rng.uniform(-2, 2, n_stars)
    flux = 10 ** rng.uniform(3.0, 4.3, n_stars)
    images, transforms, psfs = [], [], []
    for t in range(n_exp):
        a = np.radians(rng.uniform(-0.1, 0.1)) if t else 0.0
        dx, dy = (rng.uniform(-3, 3, 2) if t else (0.0, 0.0))
        m = np.array([[np.cos(a), -np.sin(a), dx], [np.sin(a), np.cos(a), dy]])
        xt, yt = m[0, 0] * x + m[0, 1] * y + m[0, 2], m[1, 0] * x + m[1, 1] * y + m[1, 2]
        psf = GaussianPRF(float(rng.uniform(*seeing)))
        images.append(rng.poisson(SKY + render_image(psf, xt, yt, flux, SHAPE)).astype(float))
        transforms.append(m)
        psfs.append(psf)
    start = Table({"x": x + rng.normal(0, 0.3, n_stars), "y": y + rng.normal(0, 0.3, n_stars)})
    return images, transforms, psfs, start, x, y, flux


@pytest.fixture(scope="module")
def runs():
    out = {}
    for n in (1, 4, 16):
        images, tr, psfs, start, x, y, flux = _field(n)
        res = joint_photometry(images, start, psfs, wcs=tr, gain=1.0)
        out[n] = (res, x, y, flux)
    return out


def test_positions_are_unbiased_with_honest_errors(runs):
    for n, (res, x, y, _) in runs.items():
        s = res.stars
        px = (np.asarray(s["x_ref"]) - x) / np.asarray(s["x_err"])
        py = (np.asarray(s["y_ref"]) - y) / np.asarray(s["y_err"])
        print(f"N={n}: pull std x {np.std(px):.3f} y {np.std(py):.3f}, median x_err "
              f"{np.median(s['x_err']):.4f} px, iterations {len(res.history)}")
        assert np.all(np.isfinite(px)) and np.all(np.isfinite(py))
        # 70 stars: a std is known to ~8.5 %
        assert 0.8 < np.std(np.r_[px, py]) < 1.2
        assert abs(np.mean(np.r_[px, py])) < 0.3


def test_position_errors_shrink_as_one_over_root_n(runs):
    e1 = np.asarray(runs[1][0].stars["x_err"])
    for n in (4, 16):
        ratio = np.median(e1 / np.asarray(runs[n][0].stars["x_err"]))
        print(f"x_err(1) / x_err({n}) = {ratio:.3f} (sqrt N = {np.sqrt(n):.0f})")
        assert ratio == pytest.approx(np.sqrt(n), rel=0.10)
    # and the actual scatter follows
    s1 = np.std(np.asarray(runs[1][0].stars["x_ref"]) - runs[1][1])
    s16 = np.std(np.asarray(runs[16][0].stars["x_ref"]) - runs[16][1])
    assert s1 / s16 == pytest.approx(4.0, rel=0.3)


def test_band_fluxes_are_at_their_error(runs):
    res, _, _, flux = runs[16]
    f = np.asarray(res.stars["flux_all"])
    e = np.asarray(res.stars["flux_err_all"])
    pull = (f - flux) / e
    print(f"band flux pull std {np.std(pull):.3f}, median {np.median(pull):+.3f}")
    assert abs(np.std(pull) - 1.0) < 0.2
    assert abs(np.median(pull)) < 0.3
    assert np.all(res.stars["n_images"] == 16)
    assert len(res.epochs) == 16 * len(flux)


def test_band_flux_errors_are_the_combined_single_image_bound():
    """The band flux error of N = 16 exposures with different seeing is the bound that their
    information adds up to, ``1 / sqrt(sum_t 1 / crlb_t^2)``, with ``crlb_t`` the flux CRLB of
    each exposure alone (``photometry``'s ``flux_crlb`` at the true positions)."""
    from jaxphot import photometry

    images, tr, psfs, start, x, y, flux = _field(16)
    res = joint_photometry(images, start, psfs, wcs=tr, gain=1.0)
    info = np.zeros(len(flux))
    for img, m, psf in zip(images, tr, psfs, strict=True):
        xt, yt = m[:, :2] @ np.vstack([x, y]) + m[:, 2:]
        init = Table({"x": xt, "y": yt, "flux": flux})
        cat = photometry(img, psf, gain=1.0, init_params=init, detection=False, progress=False)
        info += 1.0 / np.asarray(cat["flux_crlb"], float) ** 2
    ratio = np.asarray(res.stars["flux_err_all"], float) / np.sqrt(1.0 / info)
    ok = np.isfinite(ratio)
    print(f"flux_err_all / combined CRLB: median {np.median(ratio[ok]):.4f}, 10-90 % "
          f"{np.percentile(ratio[ok], 10):.3f}-{np.percentile(ratio[ok], 90):.3f}")
    assert ok.sum() >= 0.9 * len(flux)
    assert np.median(ratio[ok]) == pytest.approx(1.0, abs=0.03)


def test_bands_and_bad_input():
    images, tr, psfs, start, x, y, flux = _field(4, n_stars=20, seeing=(2.6, 3.4))
    res = joint_photometry(images, start, psfs, wcs=tr, gain=1.0, bands=["g", "g", "r", "r"],
                           max_iter=3)
    assert {"flux_g", "flux_err_g", "mag_r", "mag_err_r"} <= set(res.stars.colnames)
    # each exposure has its own seeing (its own PSF): the shared positions still land on truth
    dx = np.asarray(res.stars["x_ref"]) - x
    assert np.std(dx / np.asarray(res.stars["x_err"])) < 1.5
    with pytest.raises(ValueError, match="bands has 3 entries"):
        joint_photometry(images, start, psfs, wcs=tr, gain=1.0, bands=["g", "g", "r"])
    with pytest.raises(ValueError, match="error= or gain="):
        joint_photometry(images, start, psfs, wcs=tr)
    with pytest.raises(ValueError, match="max_iter"):
        joint_photometry(images, start, psfs, wcs=tr, gain=1.0, max_iter=0)
    with pytest.raises(ValueError, match="wcs has 2 entries"):
        joint_photometry(images, start, psfs, wcs=tr[:2], gain=1.0)


def test_stars_found_on_the_stack_without_a_catalog():
    images, tr, psfs, _, x, y, flux = _field(4, n_stars=30)
    res = joint_photometry(images, None, psfs, wcs=tr, gain=1.0, max_iter=4)
    s = res.stars
    from scipy.spatial import cKDTree

    d, _ = cKDTree(np.c_[s["x_ref"], s["y_ref"]]).query(np.c_[x, y])
    assert np.mean(d < 1.0) >= 0.95  # fluxes 10^3-10^4.3 on sky 80: all detectable
    assert len(s) <= len(x) + 2


def test_residual_pass_finds_stars_missing_from_the_start_list():
    images, tr, psfs, start, x, y, flux = _field(4, n_stars=20)
    bright = np.argsort(flux)[-3:]
    keep = np.setdiff1d(np.arange(len(x)), bright)
    res = joint_photometry(images, start[keep], psfs, wcs=tr, gain=1.0, max_iter=3,
                           residual_passes=1)
    from scipy.spatial import cKDTree

    d, _ = cKDTree(np.c_[res.stars["x_ref"], res.stars["y_ref"]]).query(np.c_[x[bright], y[bright]])
    assert np.all(d < 0.5)  # the three left out are found on the stacked residuals
    assert len(res.stars) <= len(x) + 1


def test_stack_finds_faint_stars_that_no_single_exposure_shows():
    """Issue 17 item 2: at a per-exposure S/N of 2.5-3.5 the stack of 16 (S/N ~ 10-14) finds
    nearly all stars; photometry() of one exposure at the same threshold finds few."""
    from scipy.spatial import cKDTree

    from jaxphot.image import photometry

    rng = np.random.default_rng(11)
    g = np.arange(16, 150, 26.0)
    gx, gy = np.meshgrid(g, g)
    x, y = gx.ravel() + rng.uniform(-3, 3, gx.size), gy.ravel() + rng.uniform(-3, 3, gx.size)
    snr = rng.uniform(2.5, 3.5, x.size)
    area = 4 * np.pi * (3.0 / 2.3548) ** 2  # noise area of a Gaussian PSF fit, px^2
    flux = 0.5 * (snr**2 + np.sqrt(snr**4 + 4 * snr**2 * area * SKY))  # F = snr sqrt(F + A sky)
    psf = GaussianPRF(3.0)
    images, tr = [], []
    for t in range(16):
        dx, dy = rng.uniform(-0.5, 0.5, 2) if t else (0.0, 0.0)
        tr.append(np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]]))
        images.append(rng.poisson(SKY + render_image(psf, x + dx, y + dy, flux, SHAPE)).astype(float))

    def found(xs, ys):
        d, _ = cKDTree(np.c_[xs, ys]).query(np.c_[x, y]) if len(xs) else (np.full(x.size, np.inf), 0)
        return np.mean(d < 1.5), len(xs) - np.count_nonzero(d < 1.5)

    single = [found(np.asarray(c["x_fit"]), np.asarray(c["y_fit"]))[0]
              for c in (photometry(img, psf, gain=1.0, threshold=4.5) for img in images[:2])]
    res = joint_photometry(images, None, psf, wcs=tr, gain=1.0, threshold=4.5, max_iter=4)
    joint, spurious = found(np.asarray(res.stars["x_ref"]), np.asarray(res.stars["y_ref"]))
    assert max(single) <= 0.4
    assert joint >= 0.9
    assert spurious <= 1  # the stack's noise is given, not measured off resampled pixels
