"""jaxphot.detector: PRF volume and intrapixel sensitivity; fits return photons (above detector)."""

import numpy as np
import pytest

from jaxphot import theory
from jaxphot.core.fit import fit_cutouts
from jaxphot.psf import DiscretePSF, GaussianPRF
from jaxphot.psf.detector import DetectorPRF, ugly_detector_sensitivity
from jaxphot.sim.cutouts import simulate_cutouts


def test_flat_response_is_the_psf_and_volume_scales():
    g = GaussianPRF(2.0)
    x, y = np.array([7.3, 6.8]), np.array([6.9, 7.45])
    ref = np.asarray(g.evaluate(x, y, (15, 15)))
    flat = np.asarray(DetectorPRF(g, sensitivity=np.ones((4, 4))).evaluate(x, y, (15, 15)))
    np.testing.assert_allclose(flat, ref, atol=2e-7)  # sub-pixel integration adds up exactly
    vol = np.asarray(DetectorPRF(g, volume=0.25).evaluate(x, y, (15, 15)))
    np.testing.assert_allclose(vol, 0.25 * ref, rtol=1e-6)
    with pytest.raises(ValueError):
        DetectorPRF(g, volume=0.0)
    with pytest.raises(ValueError):
        DetectorPRF(g, sensitivity=np.ones((2, 3)))


def test_ugly_detector_volume_depends_on_phase():
    s = ugly_detector_sensitivity(4)
    assert s.sum() == 9 and s[0].sum() == 0 and s[:, 0].sum() == 0
    broad = theory.prf_quantities(DetectorPRF(GaussianPRF(4.0), sensitivity=s), 0.1, -0.2)
    assert broad.volume == pytest.approx(9 / 16, rel=1e-4)
    sharp = DetectorPRF(GaussianPRF(0.5), sensitivity=s)
    # Sub-pixel centres: gate corner at (-3/8, -3/8), middle of the active area at (+1/8, +1/8).
    q = theory.prf_quantities(sharp, np.array([-0.375, 0.125]), np.array([-0.375, 0.125]))
    assert q.volume[0] < 0.35 < 0.75 < q.volume[1]


def test_inefficient_detector_fit_returns_photons():
    psf = DetectorPRF(GaussianPRF(3.0), volume=1 / 9)
    n, e = 600, 2e4
    sim = simulate_cutouts(psf, n, (15, 15), flux=np.full(n, e), sky=100 / 9, read_noise=5 / 3, seed=4)
    assert np.mean(sim.data.sum((1, 2)) - 225 * 100 / 9) == pytest.approx(e / 9, rel=0.02)
    res = fit_cutouts(
        sim.data, psf, sim.x[:, 0], sim.y[:, 0], background="constant", gain=1.0, read_noise=5 / 3
    )
    ok = res.flags[:, 0] == 0
    df = (res.flux_fit[:, 0] - e)[ok]
    pred = np.sqrt(theory.photometric_variance(e, 100 / 9, 5 / 3, 1 / 9, 21.45 * 81, 225).total)
    assert abs(np.mean(df)) < 4 * pred / np.sqrt(ok.sum())  # photons, unbiased
    assert np.std(df / res.flux_err[ok, 0]) == pytest.approx(1.0, abs=0.08)
    assert np.std(df) == pytest.approx(pred, rel=0.1)  # sigma_E^2 = E/V + beta(B+RON^2) + ...


def test_ugly_detector_recovers_true_magnitudes():
    # A 2x supersampled undersampled Gaussian (FWHM 1.2 px) on the 2x2 "ugly" detector (first
    # row and column dead: 1/4 of the pixel active). The light loss depends on the phase;
    # the fit must still return the photons above the detector.
    arr = np.asarray(GaussianPRF(2.4).evaluate(20.0, 20.0, (41, 41)), np.float64)
    d = DetectorPRF(DiscretePSF(arr, oversampling=2), sensitivity=ugly_detector_sensitivity(2))
    n, e = 500, 1e5
    sim = simulate_cutouts(d, n, (11, 11), flux=np.full(n, e), sky=25.0, read_noise=3.0, seed=5)
    q = theory.prf_quantities(d, sim.x[:, 0] - 5, sim.y[:, 0] - 5)
    assert q.volume.mean() == pytest.approx(0.25, abs=0.01)  # 3/4 of the light lost
    res = fit_cutouts(sim.data, d, sim.x[:, 0], sim.y[:, 0], background="constant", gain=1.0, read_noise=3.0)
    ok = res.flags[:, 0] == 0
    dm = -2.5 * np.log10(res.flux_fit[ok, 0] / e)
    # This PRF is far from MATPHOT's oversampled assumptions (L ~ 0.5 px): judge the scatter by
    # the exact bound at the truth (MATPHOT's closed form is ~15 % pessimistic here).
    bound = theory.crlb(
        d, np.full(n, e), sim.x[:, 0], sim.y[:, 0], 25.0, 3.0, (11, 11), background="constant"
    )["mag"][ok, 0]
    assert abs(np.mean(dm)) < 0.002
    assert np.std(dm) == pytest.approx(np.sqrt(np.mean(bound**2)), rel=0.1)
    assert np.std(dm / (1.0857 * res.flux_err[ok, 0] / res.flux_fit[ok, 0])) == pytest.approx(1.0, abs=0.08)


@pytest.mark.parametrize("size", [65, pytest.param(60, marks=pytest.mark.slow)])
def test_jitted_detector_prf_matches_eager_at_large_batch(size):
    # Regression for the reported "JAX bug" (jitted DetectorPRF evaluation wrong at >= 1,024
    # stars on 65x65 grids): 2,048 stars at once under jit must equal the op-by-op result and
    # keep the PRF volume (1/9 here) for every star. The cause was int32 overflow of a giant
    # broadcast intermediate in DiscretePSF.evaluate, since replaced by batched contractions.
    import jax

    arr = np.asarray(GaussianPRF(3.0).evaluate(24.0, 24.0, (49, 49)), np.float64)
    d = DetectorPRF(DiscretePSF(arr / arr.sum(), oversampling=1), volume=1 / 9)
    rng = np.random.default_rng(7)
    n, c = 2048, (size - 1) / 2
    x, y = c + rng.uniform(-0.5, 0.5, n), c + rng.uniform(-0.5, 0.5, n)
    jitted = np.asarray(jax.jit(lambda x, y: d.evaluate(x, y, (size, size)))(x, y))
    with jax.disable_jit():
        eager = np.asarray(d.evaluate(x[:64], y[:64], (size, size)))
    np.testing.assert_allclose(jitted[..., :64], eager, atol=1e-7)
    np.testing.assert_allclose(jitted.sum(axis=(0, 1)), 1 / 9, rtol=1e-4)


@pytest.mark.parametrize("sens", [None, ugly_detector_sensitivity(2)])
def test_fast_derivatives_match_finite_differences(sens):
    # DetectorPRF forwards the PSF's separable derivatives (chain rule: x s on the sub-pixel
    # grid) so that fits through a detector model avoid generic autodiff; they must be the
    # derivatives of the PRF that evaluate() gives.
    arr = np.asarray(GaussianPRF(2.4).evaluate(20.0, 20.0, (41, 41)), np.float64)
    d = DetectorPRF(DiscretePSF(arr / arr.sum(), oversampling=2), 0.5, sensitivity=sens)
    x, y, h = np.array([5.2, 4.9]), np.array([4.8, 5.3]), 1e-2
    prf, dx, dy, dxx, dxy, dyy = (np.asarray(a) for a in d.evaluate_derivatives(x, y, (11, 11), 2))
    ev = lambda a, b: np.asarray(d.evaluate(a, b, (11, 11)), np.float64)  # noqa: E731
    np.testing.assert_allclose(prf, ev(x, y), atol=1e-7)
    scale = np.abs(dx).max()
    np.testing.assert_allclose(dx, (ev(x + h, y) - ev(x - h, y)) / (2 * h), atol=2e-3 * scale)
    np.testing.assert_allclose(dy, (ev(x, y + h) - ev(x, y - h)) / (2 * h), atol=2e-3 * scale)
    d2 = (ev(x, y + h) - 2 * ev(x, y) + ev(x, y - h)) / h**2
    np.testing.assert_allclose(dyy, d2, atol=2e-2 * np.abs(dyy).max())
