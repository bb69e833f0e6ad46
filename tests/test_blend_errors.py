"""Flux errors of blended stars (issue 14 item 5): where the excess pull width comes from.

Measured (1024^2, 3000 stars, seed 42, /tmp diagnostic in the branch report): blended true
stars (true neighbour within 2.5 FWHM) with S/N >= 10 have a flux-pull MAD-std of 1.12; those
whose neighbour is in the catalogue 0.93 (same group 0.94, other group 0.94), those whose
neighbour is missing (unresolved within ~1 FWHM, or merged) 1.50 with a median pull of +0.38
(+1.1 for true separations < 3 px): the missing companion's light is in the star's flux.
The fitted errors of resolved blends are honest; the excess is unresolved companions.

``_pulls`` pooled over the slow test's seeds 1-4 (1024^2, 3000 stars, S/N >= 10; 2026-12-03):
isolated 1.017 (n=2715), blended 1.178 (2709), resolved 1.020 (1543), unresolved 1.535
(1166). 922 of the 1166 have a companion under 0.3x the star's flux (S/N 3-7, median
separation 4.2 px): below any detection threshold, so their bias is confusion noise, which
``confusion_noise=True`` adds as a regional average (tests/test_confusion.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from jaxphot.image import EXCLUDED_FROM_MODEL, photometry
from jaxphot.psf import GaussianPRF
from jaxphot.sim import simulate_cluster
from jaxphot.sim.scoring import match_to_truth


def _mad(p):
    return 1.4826 * float(np.median(np.abs(p - np.median(p))))


def _pulls(size, n, seed):
    psf = GaussianPRF(3.0)
    f = simulate_cluster((size, size), n, psf, sky=100.0, gain=1.0, read_noise=5.0,
                         snr_min=3.0, seed=seed)
    cat = photometry(f.image, psf, gain=f.gain, read_noise=f.read_noise)
    tr = f.truth
    good = (np.asarray(cat["flags"]) & EXCLUDED_FROM_MODEL) == 0
    ci, ti = match_to_truth(cat, tr, 1.5, use=good)
    pull = (np.asarray(cat["flux_fit"])[ci] - np.asarray(tr["flux"])[ti]) / np.asarray(
        cat["flux_err"])[ci]
    txy = np.c_[tr["x"], tr["y"]]
    d, k = cKDTree(txy).query(txy, k=2)
    found = np.zeros(len(tr), bool)
    found[ti] = True
    bright = np.asarray(tr["snr"])[ti] >= 10
    blended = bright & (d[ti, 1] <= 7.5)
    return pull, blended, found[k[ti, 1]], bright & (d[ti, 1] > 7.5)


def test_resolved_blends_have_honest_errors():
    pull, blended, nb_found, iso = _pulls(384, 420, 3)
    res = blended & nb_found
    print(f"isolated {_mad(pull[iso]):.3f} (n={iso.sum()}), resolved blends "
          f"{_mad(pull[res]):.3f} (n={res.sum()}), unresolved {_mad(pull[blended & ~nb_found]):.3f}")
    assert res.sum() >= 30
    assert 0.75 < _mad(pull[res]) < 1.25
    assert 0.8 < _mad(pull[iso]) < 1.2


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_blend_pulls_crowded_seeds(seed):
    pull, blended, nb_found, _ = _pulls(1024, 3000, seed)
    print(f"seed {seed}: blended {_mad(pull[blended]):.3f}, resolved "
          f"{_mad(pull[blended & nb_found]):.3f}")
    assert abs(_mad(pull[blended & nb_found]) - 1.0) < 0.1
