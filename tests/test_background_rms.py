"""rms_estimator of estimate_background on Gaussian noise, with and without injected sources."""

import numpy as np
import pytest

from jaxphot import estimate_background

SIGMA = 4.0
# Relative scatter of each estimator on n Gaussian samples (efficiencies 1, 0.37, 0.87).
EFF = {"std": 1.0, "mad_std": 0.37, "biweight_scale": 0.87}


@pytest.mark.parametrize("est", ["std", "mad_std", "biweight_scale"])
def test_rms_estimators_give_true_sigma(est):
    rng = np.random.default_rng(3)
    img = rng.normal(100.0, SIGMA, (256, 256))
    bkg = estimate_background(img, 64, 1, rms_estimator=est)
    n = 64 * 64
    tol = 1.0 / np.sqrt(2 * n * EFF[est])  # 1σ relative error of one mesh's estimate
    rel = bkg.mesh_rms / SIGMA - 1
    # each mesh within 4σ, and the mean of the 16 meshes within 4σ/4 of the truth
    assert np.all(np.abs(rel) < 4 * tol)
    assert abs(rel.mean()) < tol + 0.01  # 0.01: the bias of 3σ clipping on the std


def test_mad_std_robust_to_sources():
    rng = np.random.default_rng(4)
    img = rng.normal(0.0, SIGMA, (256, 256))
    # 5 % of pixels hit by bright sources; no clipping (sigma=1e6), so only the estimator helps
    hit = rng.random(img.shape) < 0.05
    img[hit] += rng.uniform(5, 50, hit.sum()) * SIGMA
    mad = estimate_background(img, 64, 1, rms_estimator="mad_std", sigma=1e6).mesh_rms
    std = estimate_background(img, 64, 1, rms_estimator="std", sigma=1e6).mesh_rms
    assert np.all(np.abs(mad / SIGMA - 1) < 0.12)  # MAD: ~+7 % from 5 % contamination
    assert np.all(std / SIGMA > 3)  # unclipped std is ruined


def test_bad_rms_estimator():
    with pytest.raises(ValueError, match="rms_estimator"):
        estimate_background(np.ones((64, 64)), 32, rms_estimator="iqr")
