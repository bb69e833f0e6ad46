"""Cross-matching against known truth."""

import astropy.units as u
import numpy as np
import pytest
from astropy.table import Table

from jaxphot import crossmatch


def _cats(rng, n=200):
    ra = rng.uniform(150, 150.1, n)
    dec = rng.uniform(2, 2.1, n)
    cat1 = Table({"ra": ra, "dec": dec, "id": np.arange(n)})
    perm = rng.permutation(n)
    jitter = rng.normal(0, 0.1, (n, 2)) / 3600.0  # 0.1 arcsec scatter
    cat2 = Table({"ra": ra[perm] + jitter[:, 0] / np.cos(np.radians(dec[perm])),
                  "dec": dec[perm] + jitter[:, 1], "truth": perm})  # fmt: skip
    return cat1, cat2


def test_sky_match_recovers_permutation():
    rng = np.random.default_rng(3)
    cat1, cat2 = _cats(rng)
    m = crossmatch(cat1, cat2, max_sep=1 * u.arcsec)
    assert len(m) == len(cat1)
    np.testing.assert_array_equal(m["truth"], m["id"])
    assert np.all(m["sep"] < 1.0)
    # the separation equals the injected jitter
    s = (
        np.hypot(
            (cat2["ra"][m["idx2"]] - cat1["ra"][m["idx1"]])
            * np.cos(np.radians(cat1["dec"][m["idx1"]])),
            cat2["dec"][m["idx2"]] - cat1["dec"][m["idx1"]],
        )
        * 3600
    )
    np.testing.assert_allclose(m["sep"], s, rtol=1e-6)


def test_best_vs_nearest_and_unmatched():
    # two cat1 sources near one cat2 source: nearest gives both, best gives only the closer one
    cat1 = Table({"x": [10.0, 10.6, 50.0], "y": [10.0, 10.0, 50.0]})
    cat2 = Table({"x": [10.1], "y": [10.0]})
    near = crossmatch(cat1, cat2, max_sep=1.0, mode="nearest")
    best = crossmatch(cat1, cat2, max_sep=1.0, mode="best")
    assert list(near["idx1"]) == [0, 1]
    assert list(best["idx1"]) == [0]
    assert best["sep"][0] == pytest.approx(0.1)
    allrows = crossmatch(cat1, cat2, max_sep=1.0, keep_unmatched=True)
    assert len(allrows) == 3 and list(allrows["matched"]) == [True, False, False]


def test_bad_arguments():
    cat = Table({"x": [1.0], "y": [1.0]})
    with pytest.raises(ValueError, match="mode"):
        crossmatch(cat, cat, 1.0, mode="all")
    with pytest.raises(ValueError, match="ra"):
        crossmatch(cat, cat, 1 * u.arcsec)
