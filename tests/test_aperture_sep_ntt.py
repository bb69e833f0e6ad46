"""Aperture photometry and morphology against Source Extractor 2.8.6's catalog of the sep NTT image.

Tolerances are those of sep's own test (kbarbary/sep test.py, ``test_vs_sextractor``) except where we
are stricter: FLUX_APER to 1e-6 relative (sep: 2e-4, because sep re-derives the positions; we use the
catalog's) and FLUXERR_APER rtol 1e-5, moments atol 1e-4 px², ellipse conversions rtol 1e-4,
FLUX_RADIUS rtol 0.04 / atol 0.01 px.
"""

import numpy as np
import pytest
from astropy.io import fits

from jaxphot.aperture import aperture_photometry
from jaxphot.morphology import ellipse_from_moments, flux_radius, segment_properties

COLS = [
    "number", "x", "y", "xwin", "ywin", "x2", "y2", "xy", "errx2", "erry2", "errxy", "a",
    "flux_aper", "fluxerr_aper", "kron_radius", "flux_auto", "fluxerr_auto",
    "fr1", "fr5", "fr6", "flags",
]  # fmt: skip


@pytest.fixture(scope="module")
def ntt(request):
    from jaxphot.datasets import DataNotFoundError, find_data_dir

    try:
        d = find_data_dir("sep_ntt")
    except DataNotFoundError as exc:
        pytest.skip(str(exc))
    image = fits.getdata(d / "image.fits").astype(np.float32)
    back = fits.getdata(d / "back.fits").astype(np.float32)
    cat = np.loadtxt(d / "image.cat", comments="#")
    cat = {k: cat[:, i] for i, k in enumerate(COLS)}
    # SExtractor subtracts its background map in single precision
    return (image - back).astype(np.float64), cat


# SExtractor's global background rms for this image (BACK_SIZE 64, FILTERSIZE 3): with GAIN = 0 and
# no weight map, FLUXERR_APER = globalrms * sqrt(sub-pixel area). sep's test passes the same number
# (``err=bkg.globalrms``); it equals the mean of SExtractor's rms mesh.
GLOBALRMS = 65.46174621582031


def test_flux_aper_subpixel_matches_sextractor(ntt):
    data, cat = ntt
    pos = np.column_stack([cat["x"] - 1.0, cat["y"] - 1.0])  # FITS 1-based -> 0-based
    t = aperture_photometry(data, pos, 5.0, method="subpixel", subpixels=5, error=GLOBALRMS)
    clean = cat["flags"] == 0
    assert clean.sum() >= 50
    rel = np.abs(t["aperture_sum"] - cat["flux_aper"]) / np.abs(cat["flux_aper"])
    print("FLUX_APER max rel diff (unflagged):", rel[clean].max())
    assert rel[clean].max() < 1e-6
    np.testing.assert_allclose(t["aperture_sum_err"][clean], cat["fluxerr_aper"][clean], rtol=1e-5)
    # exact overlap differs from 5x5 sampling only by the sampling error (< 1% here)
    te = aperture_photometry(data, pos, 5.0, method="exact")
    assert np.all(np.abs(te["aperture_sum"][clean] / cat["flux_aper"][clean] - 1) < 0.02)
    # the truncated (edge) objects are flagged, not dropped
    assert np.all(np.isfinite(t["aperture_sum"]))
    # truncation flag <=> the circle crosses the image border (SExtractor/sep flag 4 such apertures)
    te_flag = (np.asarray(te["flags"]) & 1) != 0
    h, w = data.shape
    crosses = (pos[:, 0] - 5 < -0.5) | (pos[:, 0] + 5 > w - 0.5) | (pos[:, 1] - 5 < -0.5)
    crosses |= pos[:, 1] + 5 > h - 0.5
    np.testing.assert_array_equal(te_flag, crosses)
    assert crosses.sum() >= 4


@pytest.fixture(scope="module")
def segmap(ntt):
    sep = pytest.importorskip("sep")
    data, _ = ntt
    d = np.ascontiguousarray(data)
    # deblending off, as in the SExtractor configuration (DEBLEND_MINCONT 1.0)
    objs, seg = sep.extract(d, 1.5, err=GLOBALRMS, deblend_cont=1.0, segmentation_map=True)
    return objs, seg


def _match(cat, x, y):
    d2 = (cat["x"][:, None] - 1 - x[None, :]) ** 2 + (cat["y"][:, None] - 1 - y[None, :]) ** 2
    return np.argmin(d2, axis=1), np.sqrt(d2.min(axis=1))


def test_moments_and_ellipse_match_sextractor(ntt, segmap):
    from scipy.ndimage import convolve

    data, cat = ntt
    _, seg = segmap
    # Source Extractor measures X/Y_IMAGE and X2/Y2/XY_IMAGE on the *filtered* detection image
    # (FILTER Y, default.conv = the normalised 3x3 kernel below, zero outside the image).
    k = np.array([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]])
    filt = convolve(data.astype(np.float32), (k / k.sum()).astype(np.float32), mode="constant")
    props = segment_properties(filt, seg)
    idx, dist = _match(cat, np.asarray(props["x"]), np.asarray(props["y"]))
    assert np.all(dist < 1e-3)  # same objects, centroids to 1e-3 px (sep's tolerance)
    p = props[idx]
    np.testing.assert_allclose(p["x2"], cat["x2"], atol=1e-4)
    np.testing.assert_allclose(p["y2"], cat["y2"], atol=1e-4)
    np.testing.assert_allclose(p["xy"], cat["xy"], atol=1e-4)
    # A_IMAGE is printed to 0.001 px
    np.testing.assert_allclose(p["a"], cat["a"], atol=1e-3)
    # B and THETA: the catalog lacks them; compare with SExtractor's formulas on its own moments
    ref = ellipse_from_moments(cat["x2"], cat["y2"], cat["xy"])
    np.testing.assert_allclose(p["b"], ref["b"], rtol=1e-4, atol=1e-4)
    big = np.abs(ref["a"] - ref["b"]) > 0.05  # theta is undefined for round objects
    np.testing.assert_allclose(p["theta"][big], ref["theta"][big], rtol=1e-4, atol=1e-3)


def test_flux_radius_matches_sextractor(ntt):
    data, cat = ntt
    pos = np.column_stack([cat["x"] - 1.0, cat["y"] - 1.0])
    ok = cat["flux_auto"] > 0
    fr = flux_radius(
        data, pos[ok], [0.1, 0.5, 0.6], 6.0 * cat["a"][ok], normflux=cat["flux_auto"][ok]
    )
    ref = np.column_stack([cat["fr1"], cat["fr5"], cat["fr6"]])[ok]
    # sep's tolerance for the half-light and 60 % radii; the 10 % radius (< 0.5 px, where the
    # interpolation of the growth curve inside one pixel dominates) agrees to 0.05 px
    np.testing.assert_allclose(fr[:, 1:], ref[:, 1:], rtol=0.04, atol=0.01)
    np.testing.assert_allclose(fr[:, 0], ref[:, 0], atol=0.05)
