"""Grouping on synthetic positions with known geometry."""

import numpy as np
import pytest

from jaxphot.image.grouping import bucket_groups, group_sizes, group_stars, pair_critical_separation


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
