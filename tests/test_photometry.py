"""Whole-image photometry (jaxphot.photometry) against simulated fields with known truth."""

import numpy as np
import pytest
from astropy.table import Table

from jaxphot.core.flags import FitFlag
from jaxphot.image import (
    EXCLUDED_FROM_MODEL,
    make_model_image,
    make_residual_image,
    photometry,
)
from jaxphot.psf import DiscretePSF, GaussianPRF, psf_fwhm
from jaxphot.sim import match_to_truth, score, simulate_cluster

PSF = GaussianPRF(3.0)


@pytest.fixture(scope="module")
def cluster():
    """A 256x256 crowded cluster (200 stars, down to S/N 3) and its photometry."""
    field = simulate_cluster((256, 256), 200, PSF, seed=3)
    res = photometry(
        field.image, PSF, gain=field.gain, read_noise=field.read_noise, return_images=True
    )
    return field, res


def test_cluster_completeness_pulls_and_spurious(cluster):
    field, res = cluster
    s = score(res.table, field.truth, radius=1.5)
    assert s["n_true_bright"] > 60
    assert s["completeness_bright"] >= 0.95
    assert s["spurious_fraction"] < 0.05
    # Flux errors are honest for isolated and blended stars alike.
    assert 0.8 < s["pull_std_isolated"] < 1.3
    assert 0.8 < s["pull_std_blended"] < 1.4
    assert abs(s["pull_median"]) < 0.3
    assert s["pos_rms_bright"] < 0.15


def test_columns_and_rows(cluster):
    field, res = cluster
    t = res.table
    for c in (
        "id",
        "group_id",
        "iter_detected",
        "x_init",
        "y_init",
        "flux_init",
        "x_fit",
        "y_fit",
        "flux_fit",
        "x_err",
        "y_err",
        "flux_err",
        "bkg",
        "bkg_x",
        "bkg_y",
        "chi2",
        "dof",
        "n_iter",
        "flags",
        "mag",
        "mag_err",
    ):
        assert c in t.colnames, c
    assert np.all(np.diff(t["id"]) == 1)
    ok = (t["flags"] & EXCLUDED_FROM_MODEL) == 0
    assert np.all(np.isfinite(t["flux_fit"][ok]))
    np.testing.assert_allclose(t["mag"][ok], -2.5 * np.log10(t["flux_fit"][ok]))
    np.testing.assert_allclose(
        t["mag_err"][ok], 1.0857 * t["flux_err"][ok] / t["flux_fit"][ok], rtol=1e-3
    )
    # The local sky is the simulated one (100 e-/px, gain 1).
    assert abs(np.median(t["bkg"][ok]) - field.sky) < 1.0
    # Stars found on the residual exist in a crowded field.
    assert t["iter_detected"].max() >= 2
    assert t.meta["n_iterations"] >= 2


def test_model_and_residual_images(cluster):
    field, res = cluster
    # The model image reproduces the noiseless stars; the residual is noise-like.
    stars_true = field.expected - field.sky
    noise = np.sqrt(field.sky + field.read_noise**2)
    assert np.std(res.residual) < 1.3 * noise
    assert np.std(res.model - stars_true) < 0.5 * noise
    again = make_model_image(res.table, PSF, field.image.shape)
    np.testing.assert_allclose(again, res.model, atol=1e-3 * res.model.max())
    r2 = make_residual_image(field.image, res.table, PSF, background=res.background)
    np.testing.assert_allclose(r2, res.residual, atol=1e-3 * res.model.max())


def test_close_pair_fitted_as_group():
    """Two stars 2 px apart (0.67 FWHM) share a group; both fluxes come back within errors."""
    rng = np.random.default_rng(1)
    shape = (48, 48)
    x = np.array([23.3, 25.1])
    y = np.array([24.0, 24.9])
    f = np.array([20000.0, 12000.0])
    from jaxphot.image.render import scatter_stamps, stamps

    st, x0, y0 = stamps(PSF, x, y, f, 9)
    img = scatter_stamps(shape, st, x0, y0) + 100.0
    img = rng.poisson(img).astype(float)
    init = Table({"x": x + [0.4, -0.3], "y": y + [-0.3, 0.2]})
    t = photometry(img, PSF, gain=1.0, init_params=init, detection=False, background=100.0)
    assert t["group_id"][0] == t["group_id"][1]
    pull = (t["flux_fit"] - f) / t["flux_err"]
    assert np.all(np.abs(pull) < 4)
    assert np.all(np.hypot(t["x_fit"] - x, t["y_fit"] - y) < 0.1)


def test_init_params_rows_come_back_and_flags():
    field = simulate_cluster((128, 128), 40, PSF, seed=5, margin=8)
    truth = field.truth
    bright = truth[truth["snr"] > 20]
    init = Table({"x_0": np.r_[bright["x"], np.nan, 500.0], "y_0": np.r_[bright["y"], 10.0, 10.0]})
    t = photometry(field.image, PSF, gain=1.0, read_noise=5.0, init_params=init, detection=False)
    assert len(t) == len(init)  # every input row, in order
    np.testing.assert_allclose(t["x_init"][:-2], bright["x"])
    assert t["flags"][-2] & FitFlag.NON_FINITE
    assert t["flags"][-1] & FitFlag.OUTSIDE_CUTOUT
    ci, ti = match_to_truth(t[:-2], bright, 0.5)
    assert len(ci) == len(bright)


def test_duplicate_init_is_merged_not_dropped():
    field = simulate_cluster((96, 96), 5, PSF, seed=9, margin=15, snr_min=50)
    tr = field.truth
    init = Table({"x": np.r_[tr["x"], tr["x"][0] + 0.3], "y": np.r_[tr["y"], tr["y"][0]]})
    t = photometry(field.image, PSF, gain=1.0, read_noise=5.0, init_params=init, detection=False)
    assert len(t) == 6
    merged = (t["flags"] & FitFlag.MERGED) != 0
    assert merged.sum() == 1 and merged[[0, 5]].any()
    keep = ~merged
    # The survivor carries the star's whole flux.
    idx = np.nonzero(keep & (np.arange(6) % 5 == 0))[0][0]
    assert abs(t["flux_fit"][idx] - tr["flux"][0]) < 4 * t["flux_err"][idx]


def test_noise_only_detections_fade_or_are_few():
    rng = np.random.default_rng(0)
    img = rng.normal(100.0, 10.0, (128, 128))
    t = photometry(img, PSF, threshold=4.0)
    good = (t["flags"] & EXCLUDED_FROM_MODEL) == 0
    assert good.sum() <= 3


def test_discrete_psf_and_nan_pixels():
    arr = np.asarray(GaussianPRF(3.0 * 4).evaluate(40.0, 40.0, (81, 81)))
    dpsf = DiscretePSF(arr, oversampling=4)
    assert abs(psf_fwhm(dpsf) - 3.0) < 0.3
    field = simulate_cluster((128, 128), 40, PSF, seed=11, margin=6)
    img = field.image.copy()
    img[60:62, :] = np.nan  # a bad row band
    t = photometry(img, dpsf, gain=1.0, read_noise=5.0)
    s = score(t, field.truth, radius=1.5)
    assert s["completeness_bright"] > 0.9
    near = np.abs(t["y_fit"] - 60.5) < 4
    assert np.all(t["flags"][near] & FitFlag.BAD_PIXELS)


def test_wcs_columns():
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [33.0, 33.0]
    w.wcs.cdelt = [-1e-4, 1e-4]
    field = simulate_cluster((64, 64), 5, PSF, seed=2, margin=8, snr_min=30)
    t = photometry(field.image, PSF, gain=1.0, wcs=w)
    ra, dec = w.wcs_pix2world(t["x_fit"], t["y_fit"], 0)
    np.testing.assert_allclose(t["ra"], ra, atol=1e-9)
    np.testing.assert_allclose(t["dec"], dec, atol=1e-9)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(image=np.full((64, 64), np.nan)), "no finite"),
        (dict(image=np.ones((5, 5))), "smaller than the PSF"),
        (dict(image=np.ones(10)), "2-D"),
        (dict(init_params=Table({"x": [1.0]})), "missing column"),
        (dict(mask=np.zeros((3, 3), bool)), "mask shape"),
        (dict(maxiters=0), "maxiters"),
        (dict(detection=False), "init_params"),
    ],
)
def test_bad_input(kwargs, match):
    args = dict(image=np.random.default_rng(0).normal(100, 10, (64, 64)))
    args.update(kwargs)
    image = args.pop("image")
    with pytest.raises(ValueError, match=match):
        photometry(image, PSF, **args)


def test_bad_psf():
    class NaNPSF:
        fwhm = 3.0

        def evaluate(self, x, y, shape):
            return np.full(tuple(shape) + np.shape(x), np.nan)

    with pytest.raises(ValueError, match="non-finite"):
        photometry(np.ones((64, 64)), NaNPSF())
    with pytest.raises(ValueError, match="non-finite"):
        DiscretePSF(np.full((9, 9), np.nan))


def test_sky_variance_uses_ccd_equation_only_when_it_describes_the_image():
    """With a gain, the fit weights use level/gain + (read_noise/gain)^2 rather than the mesh
    rms, which a crowded field inflates with faint-star confusion; a sky-subtracted or rescaled
    image (CCD value far from the rms) keeps the measured rms."""
    from jaxphot.image.inputs import sky_variance as _sky_variance

    level = np.full((8, 8), 100.0)
    ccd = 100.0 / 2.0 + (5.0 / 2.0) ** 2  # gain 2 e-/ADU, read noise 5 e-
    inflated = np.full((8, 8), np.sqrt(ccd) * 1.03)  # mesh rms 3 % high from confusion
    np.testing.assert_allclose(_sky_variance(level, inflated, 2.0, 5.0), ccd)
    # Sky-subtracted image: the level is ~0, the CCD value disagrees, the rms is kept.
    np.testing.assert_allclose(_sky_variance(level * 0, inflated, 2.0, 5.0), inflated**2)
    # Header gain 10x off (rescaled data): the rms is kept.
    np.testing.assert_allclose(_sky_variance(level, inflated, 20.0, 5.0), inflated**2)
