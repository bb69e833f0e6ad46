"""Deblending against simulated truth and against photutils' ``deblend_sources``.

Each case (a pair of Gaussian stars, or a single round or elliptical source) sits in its own
cell of one mosaic, so one call deblends them all and the count per cell is the answer.
"""

import warnings

import numpy as np
import pytest
from scipy import ndimage

from jaxphot import deblend, segment

FWHM = 3.0
SIG = FWHM / (2.0 * np.sqrt(2.0 * np.log(2.0)))
CELL = 48
NOISE = 1.0


def gaussian(n, x, y, flux, sx, sy, theta):
    """(n, n) elliptical Gaussian of total ``flux`` centred at (x, y), major axis at ``theta``."""
    yy, xx = np.mgrid[:n, :n].astype(float)
    c, s = np.cos(theta), np.sin(theta)
    u = c * (xx - x) + s * (yy - y)
    v = -s * (xx - x) + c * (yy - y)
    return flux / (2 * np.pi * sx * sy) * np.exp(-0.5 * (u * u / sx**2 + v * v / sy**2))


def cases():
    """Pairs over separations 1.5–5 FWHM and flux ratios 1–10; singles of several shapes."""
    out = [("pair", sep, ratio) for sep in np.linspace(1.5, 5.0, 8) for ratio in (1, 2, 3, 5, 10)
           for _ in range(2)]  # fmt: skip
    out += [("single", flux, q) for flux in (300, 1000, 3000, 10000, 30000) for q in (1, 0.7, 0.5, 0.35)]
    return out


def mosaic(noise=NOISE, seed=0):
    """Image (ny, nx), the cases, the true count per cell and the number of cell columns."""
    rng = np.random.default_rng(seed)
    cs = cases()
    ncol = int(np.ceil(np.sqrt(len(cs))))
    nrow = -(-len(cs) // ncol)
    img = np.zeros((nrow * CELL, ncol * CELL))
    truth = []
    for k, c in enumerate(cs):
        r, col = divmod(k, ncol)
        x0 = y0 = CELL / 2 - 0.5 + rng.uniform(-0.5, 0.5)
        th = rng.uniform(0, np.pi)
        if c[0] == "pair":
            d, f1 = c[1] * FWHM, 20000.0
            cell = gaussian(CELL, x0 - d / 2 * np.cos(th), y0 - d / 2 * np.sin(th), f1, SIG, SIG, 0)
            cell += gaussian(CELL, x0 + d / 2 * np.cos(th), y0 + d / 2 * np.sin(th), f1 / c[2], SIG,
                             SIG, 0)  # fmt: skip
            truth.append(2)
        else:
            sx = 2 * SIG / np.sqrt(c[2])  # same area for every axis ratio
            cell = gaussian(CELL, x0, y0, c[1], sx, sx * c[2], th)
            truth.append(1)
        img[r * CELL : (r + 1) * CELL, col * CELL : (col + 1) * CELL] = cell
    img += rng.normal(0.0, noise, img.shape) if noise > 0 else 0.0
    return img, cs, np.array(truth), ncol


def detect(img, noise, npixels):
    """Matched-filter smoothing, a 3σ segmentation of it, and the smoothed image."""
    sm = ndimage.gaussian_filter(img, SIG)
    rms = noise / (2 * np.sqrt(np.pi) * SIG) if noise > 0 else 1e-3
    return sm, segment(sm, 3 * rms, npixels)


def counts(labels, n, ncol):
    """Number of distinct labels in each of the ``n`` cells."""
    out = []
    for k in range(n):
        r, col = divmod(k, ncol)
        c = labels[r * CELL : (r + 1) * CELL, col * CELL : (col + 1) * CELL]
        out.append(len(np.unique(c[c > 0])))
    return np.array(out)


@pytest.fixture(scope="module")
def noisy():
    img, cs, truth, ncol = mosaic()
    return img, cs, truth, ncol


def test_smooth_singles_never_split():
    """Noiseless round and elliptical sources of every flux stay one source, in every mode."""
    img, cs, truth, ncol = mosaic(noise=0.0)
    single = truth == 1
    sm, lab = detect(img, 0.0, 5)
    # the true number of peaks of the smoothed image in each cell
    peak = (sm == ndimage.maximum_filter(sm, 3)) & (lab > 0)
    npeak = counts(np.where(peak, np.arange(peak.size).reshape(peak.shape) + 1, 0), len(cs), ncol)
    assert np.all(npeak[single] == 1)
    sep = np.array([c[1] if c[0] == "pair" else 0 for c in cs])
    for mode in ("exponential", "linear", "sinh"):
        n = counts(deblend(sm, lab, npixels=5, mode=mode), len(cs), ncol)
        assert np.all(n[single] == 1), mode
        # never more pieces than peaks; a pair whose saddle is shallower than npixels stays one
        assert np.all(n <= npeak), mode
        assert np.all(n[~single & (sep >= 3.0)] == 2), mode


def test_noisy_grid_truth(noisy):
    """With noise: no single is split; pairs >= 3 FWHM apart are split into two."""
    img, cs, truth, ncol = noisy
    sm, lab = detect(img, NOISE, 10)
    n = counts(deblend(sm, lab, npixels=10, contrast=0.005), len(cs), ncol)
    single = truth == 1
    assert np.all(n[single] == 1)
    sep = np.array([c[1] if c[0] == "pair" else 0 for c in cs])
    wide = ~single & (sep >= 3.0)
    assert np.mean(n[wide] == 2) >= 0.95
    # unresolved pairs (1.5 FWHM, no saddle) stay one source, as they must for this method
    assert np.all(n[~single & (sep <= 1.5)] == 1)


def test_contrast_one_and_touching_labels():
    """contrast=1 returns the input; touching user labels are never merged or mixed."""
    img, cs, truth, ncol = mosaic(noise=0.0)
    sm, lab = detect(img, 0.0, 5)
    np.testing.assert_array_equal(deblend(sm, lab, npixels=5, contrast=1.0), lab)
    # cut every segment into left and right halves: the halves touch each other
    xx = np.broadcast_to(np.arange(lab.shape[1]), lab.shape)
    cx = ndimage.mean(xx, lab, np.arange(1, lab.max() + 1))
    halves = np.where(lab > 0, 2 * lab - (xx < cx[np.maximum(lab - 1, 0)]), 0)
    out = deblend(sm, halves, npixels=5)
    # every output label lies inside one input label
    pairs = np.unique(np.stack([out[out > 0], halves[out > 0]]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1]


@pytest.mark.parametrize(
    "kw, match",
    [({"npixels": 0}, "npixels"), ({"npixels": 5, "nlevels": 0}, "nlevels"),
     ({"npixels": 5, "contrast": 2}, "contrast"), ({"npixels": 5, "mode": "log"}, "mode"),
     ({"npixels": 5, "connectivity": 6}, "connectivity")],
)  # fmt: skip
def test_bad_arguments(kw, match):
    img = np.zeros((10, 10))
    with pytest.raises(ValueError, match=match):
        deblend(img, np.zeros((10, 10), int), **kw)


def test_bad_labels():
    with pytest.raises(ValueError, match="labels"):
        deblend(np.zeros((10, 10)), np.zeros((10, 9), int), npixels=5)
    with pytest.raises(ValueError, match="labels"):
        deblend(np.zeros((10, 10)), -np.ones((10, 10), int), npixels=5)


@pytest.mark.photutils
@pytest.mark.parametrize("mode", ["exponential", "linear", "sinh"])
@pytest.mark.parametrize("npixels, contrast", [(5, 0.001), (10, 0.005)])
def test_counts_agree_with_photutils(noisy, mode, npixels, contrast):
    """Per-case source counts agree with photutils in >= 95 % of cases (same parameters)."""
    seg = pytest.importorskip("photutils.segmentation")
    img, cs, truth, ncol = noisy
    sm, lab = detect(img, NOISE, npixels)
    ours = deblend(sm, lab, npixels=npixels, contrast=contrast, mode=mode)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = seg.deblend_sources(sm, seg.SegmentationImage(lab), npixels, n_levels=32,
                                  contrast=contrast, mode=mode, progress_bar=False).data  # fmt: skip
    agree = counts(ours, len(cs), ncol) == counts(ref, len(cs), ncol)
    assert agree.mean() >= 0.95
    # in fact the maps are the same, label for label
    assert np.mean(ours == ref) == 1.0
