"""Quality columns and default cuts (issue 14 item 4), on a simulated field with known classes.

Isolated stars, single hot pixels (cosmic rays), compact galaxies (Gaussians with
sigma_gal^2 = sigma_psf^2 + (1..2 px)^2) and unresolved pairs, well apart from each other.
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table
from scipy.spatial import cKDTree

import jaxphot
from jaxphot.image import photometry, render_image
from jaxphot.psf import GaussianPRF

FWHM = 3.0


def _field(seed=1, size=192, counts=(70, 25, 25, 10)):
    rng = np.random.default_rng(seed)
    sig = FWHM / 2.3548
    psf = GaussianPRF(FWHM)
    n = sum(counts)
    g = int(np.ceil(np.sqrt(n)))
    step = (size - 16) / g
    gx, gy = np.meshgrid(np.arange(g), np.arange(g))
    sel = rng.permutation(g * g)[:n]
    x = 8 + (gx.ravel()[sel] + 0.5) * step + rng.uniform(-1, 1, n)
    y = 8 + (gy.ravel()[sel] + 0.5) * step + rng.uniform(-1, 1, n)
    kind = np.repeat(np.array(["star", "cr", "gal", "pair"]), counts)
    flux = np.exp(rng.uniform(np.log(800), np.log(3e4), n))  # S/N ~ 20..600 for stars
    img = np.full((size, size), 100.0)
    st = (kind == "star") | (kind == "pair")
    img += render_image(psf, x[st], y[st], flux[st], (size, size))
    pr = kind == "pair"
    ang, sep = rng.uniform(0, 2 * np.pi, pr.sum()), rng.uniform(1.5, 2.5, pr.sum())
    img += render_image(psf, x[pr] + sep * np.cos(ang), y[pr] + sep * np.sin(ang),
                        flux[pr] * rng.uniform(0.3, 1, pr.sum()), (size, size))
    for k in np.nonzero(kind == "gal")[0]:
        sg = np.sqrt(sig**2 + rng.uniform(1.0, 2.0) ** 2)
        img += render_image(GaussianPRF(2.3548 * sg), [x[k]], [y[k]], [flux[k]], (size, size),
                            stamp=31)
    cr = kind == "cr"
    x[cr], y[cr] = np.rint(x[cr]), np.rint(y[cr])
    img = rng.poisson(img).astype(float) + rng.normal(0, 5.0, img.shape)
    img[y[cr].astype(int), x[cr].astype(int)] += 0.3 * flux[cr]
    return img, psf, Table({"x": x, "y": y, "flux": flux, "kind": kind})


def _rejected(cat, truth, kind, radius=FWHM):
    """Fraction of the true objects of ``kind`` with no good row within ``radius`` px."""
    g = np.asarray(cat["good"])
    tree = cKDTree(np.c_[np.asarray(cat["x_fit"])[g], np.asarray(cat["y_fit"])[g]])
    s = np.asarray(truth["kind"]) == kind
    d, _ = tree.query(np.c_[truth["x"][s], truth["y"][s]])
    return float(np.mean(d > radius))


@pytest.fixture(scope="module")
def field():
    return _field()


def test_default_cuts_separate_classes(field):
    img, psf, truth = field
    cat = jaxphot.apply_cuts(photometry(img, psf, gain=1.0, read_noise=5.0))
    keep_star = 1 - _rejected(cat, truth, "star")
    rej_cr, rej_gal = _rejected(cat, truth, "cr"), _rejected(cat, truth, "gal")
    print(f"stars kept {keep_star:.3f}, cosmic rays rejected {rej_cr:.3f}, galaxies {rej_gal:.3f}")
    assert keep_star >= 0.98
    assert rej_cr >= 0.95
    assert rej_gal >= 0.80
    for name in ("sharpness", "roundness", "crowding", "qfit", "cfit", "reduced_chi2", "good"):
        assert name in cat.colnames


def test_columns_at_true_positions(field):
    """Forced at the true positions (no detection): the columns themselves tell the classes."""
    img, psf, truth = field
    cat = photometry(img, psf, gain=1.0, read_noise=5.0, detection=False,
                     init_params=Table({"x": truth["x"], "y": truth["y"]}))
    jaxphot.apply_cuts(cat)
    k = np.asarray(truth["kind"])
    sh = np.asarray(cat["sharpness"])
    star = k == "star"
    # A star the PSF describes: sharpness ~ N(0, 1) whatever its flux, reduced chi2 ~ 1, alone.
    assert abs(np.median(sh[star])) < 0.5
    assert 0.6 < 1.4826 * np.median(np.abs(sh[star] - np.median(sh[star]))) < 1.5
    assert abs(np.median(cat["reduced_chi2"][star]) - 1) < 0.15
    assert np.all(np.asarray(cat["crowding"])[star] < 0.05)
    assert np.mean(cat["good"][star]) >= 0.98
    # too sharp (hot pixels) > 0; too broad (galaxies) < 0; both cut.
    assert np.median(sh[k == "cr"]) > 5 and np.mean(cat["good"][k == "cr"]) <= 0.05
    assert np.median(sh[k == "gal"]) < -2 and np.mean(cat["good"][k == "gal"]) <= 0.2
    # photutils' qfit/cfit: small for stars, cfit > 0 for a hot pixel
    assert np.median(cat["qfit"][star]) < np.median(cat["qfit"][k == "gal"])
    assert np.median(cat["cfit"][k == "cr"]) > 0


def test_apply_cuts_bad_input():
    t = Table({"sharpness": [0.0, 9.0], "flags": [0, 0]})
    with pytest.raises(ValueError, match="cuts"):
        jaxphot.apply_cuts(t, "strict")
    with pytest.raises(ValueError, match="roundness"):
        jaxphot.apply_cuts(t)
    out = jaxphot.apply_cuts(t, {"roundness": None, "reduced_chi2": None, "crowding": None})
    assert list(out["good"]) == [True, False]
