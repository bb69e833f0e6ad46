"""Background mesh estimates against truth and against SExtractor's own maps."""

import warnings

import numpy as np
import pytest

from jaxphot.image.background import estimate_background


def _read(path):
    from astropy.io import fits

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the NTT header has non-standard ESO-LOG cards
        return fits.getdata(path).astype(np.float64)


@pytest.fixture
def ntt(shared_data):
    d = shared_data("sep_ntt")
    return _read(d / "image.fits"), _read(d / "back.fits"), _read(d / "rms.fits")


def test_matches_sextractor_maps(ntt):
    """BACK_SIZE 64, BACK_FILTERSIZE 3 on the NTT image: level and rms match SExtractor 2.8.6."""
    img, back, rms = ntt
    bk = estimate_background(img, 64, 3, estimator="sextractor")
    sigma = rms.mean()
    d_back = np.sqrt(np.mean((bk.level - back) ** 2))
    d_rms = np.sqrt(np.mean((bk.rms - rms) ** 2))
    # Far tighter than the 1 % asked for: 1 % of the noise for the level, 0.1 % for the rms.
    assert d_back < 0.01 * sigma  # measured 0.27 ADU = 0.4 % of σ (0.004 % of the level)
    assert d_rms < 1e-3 * sigma  # measured 0.014 %
    assert np.abs(bk.level - back).max() < 0.03 * sigma
    # The sky here varies by ~28 ADU (0.4 σ); the spline must follow it, not flatten it.
    assert np.corrcoef(bk.level.ravel(), back.ravel())[0, 1] > 0.99
    assert abs(bk.global_rms - np.median(bk.mesh_rms)) < 1e-9


def test_matches_sep(ntt):
    sep = pytest.importorskip("sep")
    img, _, _ = ntt
    s = sep.Background(np.ascontiguousarray(img), bw=64, bh=64, fw=3, fh=3)
    bk = estimate_background(img, 64, 3)
    sigma = s.globalrms
    assert np.sqrt(np.mean((bk.level - s.back()) ** 2)) < 0.01 * sigma
    assert np.sqrt(np.mean((bk.rms - s.rms()) ** 2)) < 1e-3 * sigma
    assert abs(bk.global_level - s.globalback) < 0.01 * sigma
    assert abs(bk.global_rms - s.globalrms) < 1e-3 * sigma


def _sky(shape, rng, sigma=5.0):
    ny, nx = shape
    y, x = np.mgrid[:ny, :nx]
    truth = 100.0 + 0.01 * x - 0.006 * y + 3.0 * np.sin(x / 150.0) * np.cos(y / 200.0)
    return truth, truth + rng.normal(0.0, sigma, shape)


@pytest.mark.parametrize("estimator", ["sextractor", "median", "mode", "mean", "biweight"])
@pytest.mark.parametrize("interpolation", ["spline", "bilinear"])
def test_smooth_sky_recovered(estimator, interpolation):
    """A smooth sky with Gaussian noise and bright stars: level within a fraction of σ."""
    rng = np.random.default_rng(3)
    truth, img = _sky((400, 520), rng)
    # Sprinkle 150 bright compact stars; clipping must reject them.
    ys, xs = rng.integers(3, 397, 150), rng.integers(3, 517, 150)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            img[ys + dy, xs + dx] += 500.0 * np.exp(-(dx * dx + dy * dy))
    bk = estimate_background(img, 40, 3, estimator=estimator, interpolation=interpolation)
    err = bk.level - truth
    # Mesh of 1600 px: statistical error ≈ 1.25·5/40 ≈ 0.16; median filter reduces it.
    assert np.sqrt(np.mean(err**2)) < 0.25
    assert abs(np.median(err)) < 0.15
    # Clipped rms is within a few % of the true σ = 5 (clipping biases it slightly low).
    assert np.all(np.abs(bk.mesh_rms / 5.0 - 1) < 0.06)
    assert abs(bk.global_rms / 5.0 - 1) < 0.03


def test_mask_and_nan_ignored():
    """A masked bright blob and NaN holes do not bias the level; no crash."""
    rng = np.random.default_rng(5)
    truth, img = _sky((256, 256), rng)
    img[100:160, 100:160] += 1000.0  # a big extended object, masked
    mask = np.zeros(img.shape, bool)
    mask[95:165, 95:165] = True
    img[10:20, :] = np.nan  # a dead stripe
    img[200, 200] = np.inf
    bk = estimate_background(img, 32, 3, mask=mask)
    assert np.all(np.isfinite(bk.level)) and np.all(np.isfinite(bk.rms))
    assert np.sqrt(np.mean((bk.level - truth) ** 2)) < 0.4
    # An entirely masked region leaves bad meshes that are filled from their neighbours.
    mask2 = np.zeros(img.shape, bool)
    mask2[:, :64] = True
    bk2 = estimate_background(img, 32, 1, mask=mask2)
    assert bk2.mesh_bad[:, :2].all() and not bk2.mesh_bad[:, 3:].any()
    assert np.all(np.isfinite(bk2.level))
    assert np.abs(bk2.mesh_level[:, 0] - bk2.mesh_level[:, 2]).max() < 1e-9


def test_partial_meshes_and_global():
    """Image size not a multiple of the box: partial edge meshes are used, nodes centred."""
    rng = np.random.default_rng(7)
    img = 50.0 + rng.normal(0, 2.0, (150, 170))
    bk = estimate_background(img, 64, 3)
    assert bk.mesh_level.shape == (3, 3)
    np.testing.assert_allclose(bk.mesh_x, [31.5, 95.5, 148.5])
    np.testing.assert_allclose(bk.mesh_y, [31.5, 95.5, 138.5])
    assert abs(bk.global_level - 50.0) < 0.1
    assert abs(bk.global_rms - 2.0) < 0.1


def test_bad_input():
    with pytest.raises(ValueError, match="no finite"):
        estimate_background(np.full((128, 128), np.nan), 32)
    with pytest.raises(ValueError, match="box_size"):
        estimate_background(np.zeros((20, 20)), 64)
    with pytest.raises(ValueError, match="2-D"):
        estimate_background(np.zeros(100), 10)
    with pytest.raises(ValueError, match="estimator"):
        estimate_background(np.zeros((64, 64)), 16, estimator="magic")
    with pytest.raises(ValueError, match="mask shape"):
        estimate_background(np.zeros((64, 64)), 16, mask=np.zeros((10, 10), bool))
    with pytest.raises(ValueError, match="no finite"):
        estimate_background(np.zeros((64, 64)), 16, mask=np.ones((64, 64), bool))


