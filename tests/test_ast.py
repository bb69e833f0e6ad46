"""Artificial-star tests against the truth of a simulated field.

A simulated field's own stars have a known completeness, magnitude bias and scatter per
magnitude bin. Injecting artificial stars into the same image and recovering them must give
the same figures (within binomial / sampling error): that is what an AST is for.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ks_2samp

import jaxphot
from jaxphot.sim.cluster import simulate_cluster
from jaxphot.sim.scoring import match_to_truth

EDGES = np.arange(-10.5, -3.9, 0.5)


def _field(seed=1, n=500, shape=(256, 256)):
    # Power-law LF from S/N = 1 (well below the detection limit) up, uniform positions.
    return simulate_cluster(shape, n, sky=100.0, gain=1.0, read_noise=5.0, snr_min=1.0,
                            flux_ratio=300.0, slope=1.5, cluster_fraction=0.0, margin=3,
                            seed=seed)


def _field_completeness(f, r_match):
    """Truth completeness of the field's own stars (same recovery rule as the AST)."""
    cat = jaxphot.photometry(f.image, f.psf, gain=f.gain)
    ci, ti = match_to_truth(cat, f.truth, r_match)
    mag_t = np.asarray(f.truth["mag"], float)
    dm = np.asarray(cat["mag"], float)[ci] - mag_t[ti]
    ok = np.abs(dm) < jaxphot.image.artificial.MATCH_DMAG
    rec = np.zeros(len(mag_t), bool)
    rec[ti[ok]] = True
    dmag = np.full(len(mag_t), np.nan)
    dmag[ti[ok]] = dm[ok]
    b = np.digitize(mag_t, EDGES) - 1
    nb = len(EDGES) - 1
    inb = (b >= 0) & (b < nb)
    n = np.bincount(b[inb], minlength=nb)
    k = np.bincount(b[inb & rec], minlength=nb)
    med = np.array([np.median(dmag[(b == i) & rec]) if ((b == i) & rec).sum() else np.nan
                    for i in range(nb)])  # loop over bins
    return n, k, med, dmag, b, rec


def _mag50(edges, comp):
    c = 0.5 * (edges[:-1] + edges[1:])
    i = np.nonzero(comp < 0.5)[0][0]
    return c[i - 1] + (comp[i - 1] - 0.5) * (c[i] - c[i - 1]) / (comp[i - 1] - comp[i])


@pytest.fixture(scope="module")
def field():
    return _field()


@pytest.fixture(scope="module")
def ast(field):
    fr = (float(field.truth["flux"].min()), float(field.truth["flux"].max()))
    return jaxphot.artificial_star_test(field.image, field.psf, n_stars=500, flux_range=fr,
                                        gain=field.gain, seed=2)


def test_completeness_matches_field_truth(field, ast):
    n_f, k_f, med_f, _, _, _ = _field_completeness(field, ast.meta["r_match"])
    c = jaxphot.completeness(ast, bins=EDGES)
    n_a, k_a = np.asarray(c["n"]), np.asarray(c["n_recovered"])
    use = (n_f >= 8) & (n_a >= 8)
    assert use.sum() >= 6
    p_a, p_f = k_a[use] / n_a[use], k_f[use] / n_f[use]
    # Binomial sigma of the difference, from the pooled fraction (never 0 at 0 or 1).
    p = (k_a[use] + k_f[use] + 1.0) / (n_a[use] + n_f[use] + 2.0)
    sig = np.sqrt(p * (1 - p) * (1.0 / n_a[use] + 1.0 / n_f[use]))
    z = (p_a - p_f) / sig
    assert np.all(np.abs(z) < 2.0), z
    # The 50 % magnitude (meta and truth) within 0.1 mag.
    m50_f = _mag50(EDGES, np.where(n_f > 0, k_f / np.maximum(n_f, 1), np.nan))
    assert abs(c.meta["mag50"] - m50_f) < 0.1, (c.meta["mag50"], m50_f)
    assert c.meta["mag90"] < c.meta["mag50"]
    # Completeness falls from ~1 (bright) to ~0 (far below the limit).
    assert p_a[0] > 0.95 and np.asarray(c["completeness"])[-1] < 0.05


def test_dmag_bias_and_scatter_match_field(field, ast):
    _, k_f, med_f, dmag_f, b_f, rec_f = _field_completeness(field, ast.meta["r_match"])
    c = jaxphot.completeness(ast, bins=EDGES)
    k_a = np.asarray(c["n_recovered"])
    use = (k_a >= 10) & (k_f >= 10)
    assert use.sum() >= 5
    sig_a = np.asarray(c["dmag_sigma"])[use]
    # The Delta-mag distributions agree bin by bin (two-sample KS; with 10-40 stars a bin and
    # the skewed distributions near the limit, a ratio of scatters is too noisy to test).
    b_a = np.digitize(np.asarray(ast["mag_in"], float), EDGES) - 1
    d_a = np.asarray(ast["mag"], float) - np.asarray(ast["mag_in"], float)
    rec_a = np.asarray(ast["recovered"], bool)
    for i in np.nonzero(use)[0]:
        p = ks_2samp(d_a[(b_a == i) & rec_a], dmag_f[(b_f == i) & rec_f]).pvalue
        assert p > 1e-3, (i, p)
    assert sig_a[-1] > 3 * sig_a[0]
    # The reported flux errors are honest for well-measured stars: pull width ~ 1.
    ps = np.asarray(c["pull_sigma"])[use][:4]
    assert np.all((ps > 0.6) & (ps < 1.4)), ps


def test_fast_path_agrees_with_full_rerun(field):
    fr = (float(field.truth["flux"].min()), float(field.truth["flux"].max()))
    kw = dict(n_stars=30, flux_range=fr, gain=field.gain, seed=5)
    fast = jaxphot.artificial_star_test(field.image, field.psf, **kw)
    full = jaxphot.artificial_star_test(field.image, field.psf, full_rerun=True, **kw)
    assert full.meta["full_rerun"] and not fast.meta["full_rerun"]
    np.testing.assert_array_equal(fast["flux_in"], full["flux_in"])
    # Same stars, same noise: the decision differs only where the far field matters (rare).
    assert np.mean(fast["recovered"] == full["recovered"]) >= 0.95
    both = np.asarray(fast["recovered"] & full["recovered"])
    d = np.asarray(fast["mag"])[both] - np.asarray(full["mag"])[both]
    err = np.asarray(fast["mag_err"])[both]
    assert np.all(np.abs(d) < 0.2 * err + 1e-3)


def test_region_completeness(ast):
    c = jaxphot.completeness(ast, bins=EDGES, by="region:3x3")
    assert c.meta["region_grid"] == [3, 3] and set(c["region"]) == set(range(9))
    n = np.asarray(c["n"]).reshape(9, -1).sum(0)
    assert np.array_equal(n, jaxphot.completeness(ast, bins=EDGES)["n"])
    assert np.asarray(c["n"]).sum() == len(ast)  # every injected star in a cell
    with pytest.raises(ValueError, match="by"):
        jaxphot.completeness(ast, by="grid:3")


@pytest.mark.parametrize("kw, name", [
    (dict(n_stars=0), "n_stars"),
    (dict(flux_range=(5.0, 1.0)), "flux_range"),
    (dict(flux_range=(-1.0, 10.0)), "flux_range"),
    (dict(positions=[[10.0, 10.0], [300.0, 5.0]]), "positions"),
    (dict(positions=[1.0, 2.0]), "positions"),
])
def test_bad_input_names_the_argument(kw, name):
    img = np.random.default_rng(0).normal(100.0, 10.0, (64, 64))
    with pytest.raises(ValueError, match=name):
        jaxphot.artificial_star_test(img, "gaussian:fwhm=3", **kw)


def test_no_detectable_stars():
    rng = np.random.default_rng(3)
    img = rng.normal(100.0, 10.0, (64, 64))
    t = jaxphot.artificial_star_test(img, "gaussian:fwhm=3", n_stars=20, flux_range=(0.1, 1.0), seed=1)
    assert len(t) == 20 and not np.any(t["recovered"]) and not np.any(t["matched"])
    assert np.all(t["flags"] == -1) and np.all(np.isnan(t["flux_fit"]))
    c = jaxphot.completeness(t, bins=4)
    assert np.all(np.asarray(c["completeness"])[np.asarray(c["n"]) > 0] == 0)


@pytest.mark.slow
@pytest.mark.parametrize("seed, n", [(11, 600), (12, 1500), (13, 3000)])
def test_completeness_multi_seed_density(seed, n):
    f = _field(seed=seed, n=n, shape=(384, 384))
    fr = (float(f.truth["flux"].min()), float(f.truth["flux"].max()))
    ast = jaxphot.artificial_star_test(f.image, f.psf, n_stars=1500, flux_range=fr,
                                       gain=f.gain, seed=seed + 100)
    n_f, k_f, _, _, _, _ = _field_completeness(f, ast.meta["r_match"])
    c = jaxphot.completeness(ast, bins=EDGES)
    m50_f = _mag50(EDGES, np.where(n_f > 0, k_f / np.maximum(n_f, 1), np.nan))
    assert abs(c.meta["mag50"] - m50_f) < 0.15
