"""Grouping on synthetic positions with known geometry."""

import numpy as np
import pytest

from jaxphot.image.grouping import (
    bucket_groups,
    group_buckets,
    group_sizes,
    group_stars,
    pair_critical_separation,
)


def test_pairs_near_and_far():
    """Pairs closer than crit_sep share a group; pairs farther apart do not."""
    rng = np.random.default_rng(0)
    n = 500
    cx, cy = rng.uniform(0, 1e5, n), rng.uniform(0, 1e5, n)  # pair centres, far apart
    sep = rng.uniform(0.1, 20.0, n)
    ang = rng.uniform(0, 2 * np.pi, n)
    x = np.r_[cx, cx + sep * np.cos(ang)]
    y = np.r_[cy, cy + sep * np.sin(ang)]
    gid = group_stars(x, y, crit_sep=10.0)
    same = gid[:n] == gid[n:]
    np.testing.assert_array_equal(same, sep < 10.0)
    assert len(gid) == 2 * n and gid.min() == 1
    assert set(np.unique(gid)) == set(range(1, gid.max() + 1))


def test_chain_is_one_group():
    x = np.arange(10) * 4.0
    gid = group_stars(x, np.zeros(10), crit_sep=5.0)
    assert np.all(gid == 1)
    gid = group_stars(x, np.zeros(10), crit_sep=3.9)
    assert len(np.unique(gid)) == 10


def test_flux_widens_separation():
    """A faint star 12 px from a very bright one joins it; next to a faint one it does not."""
    x = np.array([0.0, 12.0, 1000.0, 1012.0, 2000.0, 3000.0])
    y = np.zeros(6)
    flux = np.array([1e6, 100.0, 100.0, 100.0, 100.0, 100.0])
    gid = group_stars(x, y, flux, crit_sep=10.0, sigma=2.0)
    assert gid[0] == gid[1]
    assert gid[2] != gid[3]
    # Predicted widening: sqrt(10² + 2·2²·ln(1e4)) = 13.7 px.
    d = pair_critical_separation([1e6], [100.0], 10.0, 2.0, 100.0)
    assert abs(d[0] - np.sqrt(100 + 8 * np.log(1e4))) < 1e-9
    gid2 = group_stars(x, y, crit_sep=10.0)
    assert gid2[0] != gid2[1]


def test_huge_cluster_is_split():
    """A dense cluster of 3000 stars is split into groups of at most max_group_size,
    and close pairs inside it mostly stay together."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(0, 30, 3000), rng.normal(0, 30, 3000)
    gid = group_stars(x, y, crit_sep=8.0, max_group_size=25)
    _, sizes = group_sizes(gid)
    assert sizes.max() <= 25
    assert sizes.sum() == 3000
    # Stars within 1 px of each other almost always end up in the same group.
    from scipy.spatial import cKDTree

    pairs = cKDTree(np.c_[x, y]).query_pairs(1.0, output_type="ndarray")
    assert np.mean(gid[pairs[:, 0]] == gid[pairs[:, 1]]) > 0.9
    # Identical positions cannot be separated by distance: bisection still bounds the size.
    gid = group_stars(np.zeros(100), np.zeros(100), crit_sep=5.0, max_group_size=7)
    assert group_sizes(gid)[1].max() <= 7


def test_nan_rows_and_bad_input():
    x = np.array([0.0, 1.0, np.nan, 50.0])
    y = np.array([0.0, 0.0, 0.0, np.nan])
    gid = group_stars(x, y, crit_sep=3.0)
    assert len(gid) == 4
    assert gid[0] == gid[1] and len({gid[0], gid[2], gid[3]}) == 3
    assert len(group_stars([], [], crit_sep=3.0)) == 0
    with pytest.raises(ValueError, match="crit_sep"):
        group_stars(x, y, crit_sep=0.0)
    with pytest.raises(ValueError, match="same length"):
        group_stars([1.0, 2.0], [1.0], crit_sep=2.0)
    with pytest.raises(ValueError, match="max_group_size"):
        group_stars(x, y, crit_sep=2.0, max_group_size=0)


def test_bucketing():
    gid = np.array([1, 1, 1, 2, 3, 3, 4, 4, 4, 4, 4])
    b = bucket_groups(gid)
    assert {k: list(v) for k, v in b.items()} == {1: [2], 2: [3], 4: [1], 8: [4]}
    b = bucket_groups(gid, buckets=[4, 16])
    assert {k: list(v) for k, v in b.items()} == {4: [1, 2, 3], 16: [4]}
    with pytest.raises(ValueError, match="largest bucket"):
        bucket_groups(gid, buckets=[1, 2])


# --- near-degenerate pairs (closer than keep_sep, about 1 FWHM) are never fitted apart ---------

FWHM = 3.0
FIT_HALF = max(3, int(np.ceil(1.5 * FWHM)))  # forced photometry's defaults for this PSF
FORCED_SEP = FIT_HALF + 1.5 * FWHM


def _split_pairs(gid, x, y, r):
    """(P, 2) index pairs closer than r whose members are in different groups."""
    from scipy.spatial import cKDTree

    p = cKDTree(np.c_[x, y]).query_pairs(r, output_type="ndarray")
    p = p[np.hypot(x[p[:, 0]] - x[p[:, 1]], y[p[:, 0]] - y[p[:, 1]]) < r]
    return p[gid[p[:, 0]] != gid[p[:, 1]]]


def _chain(n, spacing, pair_every, pair_seps, jitter=0.1, seed=0):
    """n stars along x at ``spacing`` (+- ``jitter``, and +-3 ``jitter`` in y), every
    ``pair_every``-th with a partner ``pair_seps`` away (cycled) at a random angle.

    Returns x, y and the (P, 2) indices of the pairs."""
    rng = np.random.default_rng(seed)
    x = spacing * np.arange(n) + rng.uniform(-jitter, jitter, n)
    y = rng.uniform(-3 * jitter, 3 * jitter, n)
    host = np.arange(1, n, pair_every)
    sep = np.resize(np.asarray(pair_seps, float), len(host))
    ang = rng.uniform(0, 2 * np.pi, len(host))
    pairs = np.c_[host, n + np.arange(len(host))]
    return np.r_[x, x[host] + sep * np.cos(ang)], np.r_[y, y[host] + sep * np.sin(ang)], pairs


def _fits_a_bucket(gid, buckets, max_k):
    in_bucket = np.concatenate([b.group_ids for b in buckets])
    assert np.array_equal(np.sort(in_bucket), np.arange(1, gid.max() + 1))  # every group, once
    assert np.bincount(gid).max() <= max_k


@pytest.mark.parametrize("shrink_steps", [0, 8])
def test_long_chain_median_cuts_keep_close_pairs(shrink_steps):
    """60 stars 0.8 crit_sep apart with 0.3-0.7 px pairs: groups of at most 16, no pair split,
    whether the chain is cut by the re-linking or by bisection alone (``max_shrink_steps=0``)."""
    crit = 2 * FWHM
    x, y, pairs = _chain(60, 0.8 * crit, 3, [0.3, 0.45, 0.6, 0.69])
    gid = group_stars(x, y, crit_sep=crit, max_group_size=16, max_shrink_steps=shrink_steps,
                      keep_sep=FWHM)
    assert group_sizes(gid)[1].max() <= 16
    np.testing.assert_array_equal(gid[pairs[:, 0]], gid[pairs[:, 1]])
    assert len(_split_pairs(gid, x, y, FWHM)) == 0
    if shrink_steps == 0:  # the test bites: plain median cuts go through some of these pairs
        old = group_stars(x, y, crit_sep=crit, max_group_size=16, max_shrink_steps=0)
        assert np.any(old[pairs[:, 0]] != old[pairs[:, 1]])


def test_bisection_of_atoms_as_large_as_a_group():
    """Six clumps of 16 stars each (each one atom of exactly max_group_size), linked in a chain:
    bisection alone must end with each clump as one group."""
    rng = np.random.default_rng(2)
    clump = np.repeat(np.arange(6), 16)
    x = 5.0 * clump + rng.uniform(-0.5, 0.5, 96)
    y = rng.uniform(-0.5, 0.5, 96)
    gid = group_stars(x, y, crit_sep=10.0, max_group_size=16, max_shrink_steps=0, keep_sep=FWHM)
    assert len(np.unique(gid)) == 6
    assert all(len(np.unique(gid[clump == c])) == 1 for c in range(6))


@pytest.mark.parametrize("spacing", [0.8 * FORCED_SEP, 3.06])
def test_group_buckets_keeps_close_pairs_forced_geometry(spacing):
    """Forced photometry's geometry (FWHM 3: crit_sep 9.5, fit_half 5, K <= 16). At 3.06 px the
    chain of 75 stars survives the re-linking down to 0.8^5 crit_sep = 3.11 px, and the next
    step (2.49 px) cuts every link, including pairs at 2.7-2.9 px (< 1 FWHM): unless kept."""
    x, y, pairs = _chain(60, spacing, 4, [0.3, 2.9, 0.5, 2.4, 0.7, 2.7], jitter=0.02)
    gid, buckets = group_buckets(x, y, FORCED_SEP, 16, FIT_HALF, keep_sep=FWHM)
    _fits_a_bucket(gid, buckets, 16)
    np.testing.assert_array_equal(gid[pairs[:, 0]], gid[pairs[:, 1]])
    assert len(_split_pairs(gid, x, y, FWHM)) == 0
    if spacing == 3.06:  # the test bites
        old, _ = group_buckets(x, y, FORCED_SEP, 16, FIT_HALF)
        assert len(_split_pairs(old, x, y, FWHM)) > 0


@pytest.mark.parametrize("n, crit, max_k", [(20_000, FORCED_SEP, 16), (20_000, 2 * FWHM, 8),
                                            (40_000, 2 * FWHM, 8)])
def test_dense_random_field_no_close_pair_split(n, crit, max_k):
    """Random fields on 1500^2 px (FWHM 3) in the forced and the pipeline geometry (crit_sep
    2 FWHM, max_group_size 8): groups fit their buckets and no pair under 1 FWHM is split. (At
    40,000 stars plain grouping splits a few such pairs.)"""
    rng = np.random.default_rng(3)
    x, y = rng.uniform(0, 1500, n), rng.uniform(0, 1500, n)
    gid, buckets = group_buckets(x, y, crit, max_k, FIT_HALF, keep_sep=FWHM)
    _fits_a_bucket(gid, buckets, max_k)
    assert len(_split_pairs(gid, x, y, FWHM)) == 0
    gs = group_stars(x, y, crit_sep=crit, max_group_size=max_k, keep_sep=FWHM)
    assert group_sizes(gs)[1].max() <= max_k
    assert len(_split_pairs(gs, x, y, FWHM)) == 0


def test_atom_larger_than_a_group_is_split_like_before():
    """A clump of 40 stars within 2 px is one atom bigger than any group: it is split (star by
    star, as without keep_sep) so that every group still fits; a close pair elsewhere stays."""
    rng = np.random.default_rng(4)
    r, a = 2.0 * np.sqrt(rng.uniform(0, 1, 40)), rng.uniform(0, 2 * np.pi, 40)
    x = np.r_[r * np.cos(a), 100.0, 100.5]
    y = np.r_[r * np.sin(a), 0.0, 0.2]
    gid = group_stars(x, y, crit_sep=6.0, max_group_size=16, keep_sep=FWHM)
    assert group_sizes(gid)[1].max() <= 16 and len(np.unique(gid[:40])) >= 3
    np.testing.assert_array_equal(gid[:40], group_stars(x, y, crit_sep=6.0, max_group_size=16)[:40])
    assert gid[40] == gid[41]
    gid, buckets = group_buckets(x, y, FORCED_SEP, 16, FIT_HALF, keep_sep=FWHM)
    _fits_a_bucket(gid, buckets, 16)
    assert gid[40] == gid[41]


def test_keep_sep_wider_than_crit_sep_and_bad_value():
    """keep_sep wins over a smaller crit_sep (also over group_buckets' tightened ones)."""
    x, y = np.array([0.0, 4.0, 50.0]), np.zeros(3)
    assert len(np.unique(group_stars(x, y, crit_sep=3.0))) == 3
    gid = group_stars(x, y, crit_sep=3.0, keep_sep=5.0)
    assert gid[0] == gid[1] != gid[2]
    with pytest.raises(ValueError, match="keep_sep"):
        group_stars(x, y, crit_sep=3.0, keep_sep=-1.0)


def test_forced_photometry_fits_a_close_pair_together():
    """The forced-photometry failure in miniature: a chain of 13 stars (> max_group_size 8) with
    a 0.69 px pair at the median cut. Split, each member was fitted with the other as a fixed
    neighbour: pulls of about -67 and -53 with flag 0. Kept together: honest pulls, and the same
    group (size and chi^2).

    With the default geometry (crit_sep = fit_half + 1.5 FWHM) plain grouping only cuts a pair
    under ~2.3 px inside a clump that is itself more than max_group_size stars within 1 FWHM
    links, so the chain here is grouped with crit_sep 40 px, which leaves it linked (6 px
    links) until the median cut.
    """
    from astropy.table import Table

    import jaxphot
    from jaxphot.image.render import render_image

    rng = np.random.default_rng(0)
    x = 20 + 6.0 * np.arange(12) + rng.uniform(-0.2, 0.2, 12)
    y = 30 + rng.uniform(-0.5, 0.5, 12)
    x = np.r_[x, x[5] + 0.69 * np.cos(0.6)]
    y = np.r_[y, y[5] + 0.69 * np.sin(0.6)]
    flux = rng.uniform(5e3, 2e4, 13)
    psf = jaxphot.GaussianPRF(FWHM)
    model = 50.0 + render_image(psf, x, y, flux, (60, 110), stamp=15)
    img = np.random.default_rng(0).poisson(model).astype(np.float32)[None]
    old, _ = group_buckets(x, y, 40.0, 8, FIT_HALF)
    assert old[5] != old[12]  # the test bites: without keep_sep the pair is split
    t = jaxphot.forced_photometry(img, Table({"x": x, "y": y}), psf, gain=1.0, crit_sep=40.0,
                                  max_group_size=8)
    pull = (np.asarray(t["flux"]) - flux) / np.asarray(t["flux_err"])
    assert np.all(np.abs(pull) < 5)
    assert t["group_size"][5] == t["group_size"][12] >= 2
    assert t["chi2"][5] == t["chi2"][12]  # one fit
    assert np.all(np.asarray(t["flags"]) == 0)
