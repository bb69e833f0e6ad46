"""jaxphot.theory: PRF quantities, MATPHOT's performance model and the exact CRLB, against truth."""

import numpy as np
import pytest

from jaxphot import theory
from jaxphot.core.fit import fit_cutouts
from jaxphot.psf import FWHM_TO_SIGMA, GaussianPRF
from jaxphot.sim.cutouts import simulate_cutouts

FREE_CONST = np.array([1, 0, 0, 1, 1, 1], bool)  # constant sky, flux, x, y


def test_prf_quantities_gaussian():
    # A pixel-integrated Gaussian has variance sigma^2 + 1/12 per axis (box convolution), so for
    # a well-sampled one beta = 4 pi (sigma^2 + 1/12) and L = sqrt(sigma^2 + 1/12).
    for fwhm in (4.0, 6.0):
        s2 = (fwhm * FWHM_TO_SIGMA) ** 2 + 1.0 / 12.0
        q = theory.prf_quantities(GaussianPRF(fwhm), np.array([0.0, 0.5]), np.array([0.0, 0.3]))
        np.testing.assert_allclose(q.volume, 1.0, atol=1e-5)
        np.testing.assert_allclose(q.beta, 4 * np.pi * s2, rtol=2e-3)
        np.testing.assert_allclose(q.L, np.sqrt(s2), rtol=1e-3)
        np.testing.assert_allclose(q.beta, 1 / (q.volume**2 * q.sharpness), rtol=1e-6)
    # Undersampled PRF: sharpness depends on the phase (pixel-centred is sharpest).
    q = theory.prf_quantities(GaussianPRF(1.0), np.array([0.0, 0.5]), np.array([0.0, 0.5]))
    assert q.sharpness[0] > 1.5 * q.sharpness[1]
    assert np.all(q.L < 1.0)


def test_photometric_model_limits_and_volume_scaling():
    v = theory.photometric_variance(1e8, 100.0, 5.0, 1.0, 20.0, np.inf)
    assert v.bright == pytest.approx(1e8) and v.faint == pytest.approx(20 * 125)
    # faint limit: sigma_E^2 -> beta (B + RON^2) (1 + beta V^2 ... ) with the exact sky term
    v = theory.photometric_variance(1.0, 100.0, 5.0, 1.0, 20.0, 400)
    assert v.sky == pytest.approx(20.0**2 * 125 / 400)
    # V = 1/9 with sky and RON^2 scaled by 1/9 (MATPHOT exp. 2): errors exactly 3x larger
    e = np.logspace(2, 6, 9)
    m1 = theory.mag_error(e, 100.0, 5.0, 1.0, 21.45, 225)
    m9 = theory.mag_error(e, 100.0 / 9, 5.0 / 3, 1 / 9, 21.45 * 81, 225)
    np.testing.assert_allclose(m9 / m1, 3.0, rtol=1e-12)
    a1 = theory.astrometric_rms(e, 100.0, 5.0, 1.0, 1.3)
    a9 = theory.astrometric_rms(e, 100.0 / 9, 5.0 / 3, 1 / 9, 1.3)
    np.testing.assert_allclose(a9 / a1, 3.0, rtol=1e-12)
    # bright star on a critically sampled PRF: sigma_x / L = sigma_E / E (MATPHOT sec. 2.5)
    assert theory.astrometric_rms(1e6, 0, 0, 1, 1.0) == pytest.approx(1e-3)


def test_box_quantiles_and_mixture_median():
    q = theory.box_quantiles(np.array(1.0), "abs")
    assert q["median"] == pytest.approx(0.6745, abs=1e-4)
    assert q["fence"] == pytest.approx(2.398, abs=2e-3)
    r = theory.box_quantiles(np.array(1.0), "radial")
    assert r["median"] == pytest.approx(np.sqrt(2 * np.log(2)), rel=1e-9)
    assert theory.mixture_median(np.full(10, 2.0), "abs") == pytest.approx(2 * 0.67449, rel=1e-4)
    # mixture median against a Monte-Carlo draw
    rng = np.random.default_rng(0)
    s = rng.uniform(0.5, 3.0, 200)
    mc = np.median(np.abs(rng.normal(size=(2000, 200)) * s))
    assert theory.mixture_median(s, "abs") == pytest.approx(mc, rel=0.01)


def test_fisher_crlb_matches_hand_fisher_matrix():
    # Flux and constant sky free, positions fixed: the 2x2 Fisher matrix written out by hand.
    psf, shape, e, sky, rn = GaussianPRF(3.0), (15, 15), 5e3, 100.0, 5.0
    prf = np.asarray(psf.evaluate(7.2, 6.9, shape), np.float64)
    var = sky + e * prf + rn**2
    f = np.array([[np.sum(prf**2 / var), np.sum(prf / var)], [np.sum(prf / var), np.sum(1 / var)]])
    cov = np.linalg.inv(f)
    p = np.array([[sky, 0, 0, e, 7.2, 6.9]])
    free = np.array([1, 0, 0, 1, 0, 0], bool)
    c = theory.fisher_crlb(psf, p, shape, free, read_noise=rn, gain=1.0)
    assert c[0, 3] == pytest.approx(np.sqrt(cov[0, 0]), rel=1e-4)
    assert c[0, 0] == pytest.approx(np.sqrt(cov[1, 1]), rel=1e-4)
    assert np.all(c[0, [1, 2, 4, 5]] == 0)
    # Gain: the same electrons in ADU (gain 2) -> bound halves in ADU.
    c2 = theory.fisher_crlb(psf, p / np.array([2, 1, 1, 2, 1, 1]), shape, free, read_noise=rn, gain=2.0)
    assert c2[0, 3] == pytest.approx(c[0, 3] / 2, rel=1e-4)
    # The performance model is the limit of the CRLB: bright and faint ends within a few %.
    q = theory.prf_quantities(psf)
    for flux in (1e7, 30.0):
        cr = theory.crlb(psf, flux, 7.0, 7.0, sky, rn, shape, background="constant")
        model = theory.mag_error(flux, sky, rn, q.volume, q.beta, 225)
        assert cr["mag"][0, 0] == pytest.approx(model, rel=0.03)


def test_crlb_blended_neighbour_and_plane():
    psf, shape = GaussianPRF(3.0), (21, 21)
    iso = theory.crlb(psf, 1e4, 10.0, 10.0, 100.0, 5.0, shape)
    blend = theory.crlb(psf, [[1e4, 1e4]], [[9.25, 10.75]], [[10.0, 10.0]], 100.0, 5.0, shape)
    assert np.all(blend["flux"] > 1.2 * iso["flux"])  # correlated fluxes: worse bound
    assert np.all(blend["x"] > 1.2 * iso["x"])
    fixed_bkg = theory.crlb(psf, 1e4, 10.0, 10.0, 100.0, 5.0, shape, background=None)
    assert fixed_bkg["flux"][0, 0] < iso["flux"][0, 0]


def test_crlb_matches_scatter_of_fits():
    # 800 stars at one flux: the measured scatter equals the CRLB (bound attained), and the
    # fit's reported errors equal the CRLB at the fitted parameters.
    psf, shape, n, e = GaussianPRF(2.5), (13, 13), 800, 5e3
    sim = simulate_cutouts(psf, n, shape, flux=np.full(n, e), sky=100.0, read_noise=5.0, seed=3)
    res = fit_cutouts(
        sim.data, psf, sim.x[:, 0], sim.y[:, 0], background="constant", gain=1.0, read_noise=5.0
    )
    c = theory.fisher_crlb(psf, res.params, shape, FREE_CONST, read_noise=5.0)
    ok = res.flags[:, 0] == 0
    assert ok.sum() > 0.99 * n
    np.testing.assert_allclose(c[ok, 3], res.flux_err[ok, 0], rtol=1e-3)
    np.testing.assert_allclose(c[ok, 4], res.x_err[ok, 0], rtol=1e-3)
    df = (res.flux_fit[:, 0] - e)[ok]
    dx = (res.x_fit[:, 0] - sim.x[:, 0])[ok]
    assert np.std(df / c[ok, 3]) == pytest.approx(1.0, abs=0.08)  # se of a std: 2.5 %
    assert np.std(dx / c[ok, 4]) == pytest.approx(1.0, abs=0.08)
    assert abs(np.mean(df)) < 4 * np.median(c[ok, 3]) / np.sqrt(ok.sum())
    # The planning call, at the truth, agrees with the fitted-parameter bound.
    plan = theory.crlb(psf, e, 6.0, 6.0, 100.0, 5.0, shape, background="constant")
    assert plan["flux"][0, 0] == pytest.approx(np.median(c[ok, 3]), rel=0.02)


def test_matphot_model_is_optimistic_between_the_limits():
    # MATPHOT adds the variances of the photon- and sky-limited regimes; the exact Fisher
    # information sums, pixel by pixel, the "parallel sum" of the two, which is never larger
    # (module docstring). So the model is a lower bound of the CRLB, tight at both ends and
    # 5-10 % optimistic in between for positions. A well-sampled Gaussian (3 px FWHM).
    psf = GaussianPRF(3.0)
    e = np.array([1e2, 1e4, 3e4, 1e7])
    q = theory.prf_quantities(psf, 0.0, 0.0)
    c = theory.crlb(psf, e, 7.0, 7.0, 100.0, 5.0, (15, 15), background="constant")
    model_x = theory.astrometric_rms(e, 100.0, 5.0, q.volume, q.L) / c["x"][:, 0]
    model_m = theory.mag_error(e, 100.0, 5.0, q.volume, q.beta, 225) / c["mag"][:, 0]
    assert np.all(model_x <= 1.01) and np.all(model_m <= 1.01)
    assert model_x[0] > 0.97 and model_x[-1] > 0.97  # sky-limited and photon-limited ends
    assert 0.85 < model_x[1:3].min() < 0.94  # in between: the wings are sky-limited
    assert 0.90 < model_m[1:3].min() < 0.97
