"""Fast versions of the MATPHOT experiments (benchmarks/matphot.py): small N, fixed seeds.

The full runs (N = 20,000) are in benchmarks/results/matphot_summary.md. Here each claim is checked on a few
hundred stars in the intensity range where the statistics are asymptotic (E >= 1e3 photons,
SNR >~ 10), with tolerances set by the sampling error of N stars.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import matphot  # noqa: E402

from jaxphot import theory  # noqa: E402
from jaxphot.sim.cutouts import simulate_cutouts  # noqa: E402


def _run(number, n, seed, flux=(1e3, 1e6)):
    exp = matphot.build(number)
    sim = simulate_cutouts(
        exp.sim_psf, n, exp.shape, flux=flux, sky=exp.sky, read_noise=exp.read_noise, seed=seed
    )
    return exp, sim, [(fit, matphot.run_fit(exp, fit, sim, seed)) for fit in exp.fits]


def _check_fit(exp, sim, out, model_tol=0.15):
    res, crlb, q, sig_m, sig_x, _, _ = out
    ok = res.flags[:, 0] == 0
    assert ok.mean() > 0.99
    e = sim.flux[ok, 0]
    df = res.flux_fit[ok, 0] - e
    dx = res.x_fit[ok, 0] - sim.x[ok, 0]
    # pulls against the reported errors and against the CRLB
    assert np.std(df / res.flux_err[ok, 0]) == pytest.approx(1.0, abs=0.08)
    assert np.std(dx / res.x_err[ok, 0]) == pytest.approx(1.0, abs=0.08)
    assert np.std(df / crlb[ok, 3]) == pytest.approx(1.0, abs=0.08)
    # median |dm| against MATPHOT's model (the exact bin median of the population)
    dm = np.abs(2.5 * np.log10(res.flux_fit[ok, 0] / e))
    assert np.median(dm) == pytest.approx(theory.mixture_median(sig_m[ok]), rel=model_tol)
    return res, ok


def test_exp1_discrete_matches_analytic_gaussian():
    exp, sim, outs = _run(1, 400, 11)
    (fa, oa), (fd, od) = outs
    ra, ok = _check_fit(exp, sim, oa)
    rd, _ = _check_fit(exp, sim, od)
    for k in ("x", "y", "flux"):
        rel = (
            np.abs(getattr(rd, f"{k}_fit") - getattr(ra, f"{k}_fit"))[ok, 0] / getattr(ra, f"{k}_err")[ok, 0]
        )
        assert rel.max() < 1 / 15
    # oversampled: the astrometric model holds too
    r = np.hypot(ra.x_fit[ok, 0] - sim.x[ok, 0], ra.y_fit[ok, 0] - sim.y[ok, 0])
    assert np.median(r) == pytest.approx(theory.mixture_median(oa[4][ok], "radial"), rel=0.15)


@pytest.mark.slow
def test_exp2_inefficient_detector_errors_scale():
    exp, sim, outs = _run(2, 400, 12)
    _check_fit(exp, sim, outs[0][1])


@pytest.mark.slow
def test_exp3_undersampled_sinc_degrades_and_supersampling_fixes():
    exp, sim, outs = _run(3, 300, 13, flux=np.full(300, 5e5))
    (_, o1), (_, o2) = outs
    p1 = (o1[0].flux_fit[:, 0] - 5e5) / o1[0].flux_err[:, 0]
    assert np.std(p1) > 3.0  # damped-sinc ringing on a 1x undersampled PSF (MATPHOT fig. 7)
    res, ok = _check_fit(exp, sim, o2)
    # undersampled: reported position errors and the CRLB match the scatter; the photonic
    # model does not apply
    dx = res.x_fit[ok, 0] - sim.x[ok, 0]
    assert np.std(dx) == pytest.approx(np.sqrt(np.mean(o2[1][ok, 4] ** 2)), rel=0.1)


@pytest.mark.slow
def test_exp4_critical_sampling_needs_supersampling_for_bright_stars():
    # beta = 13.6 px^2 < 21: the 1x PSF's interpolation error shows in bright stars' chi^2
    # (MATPHOT fig. 11); the 2x supersampled PSF fits to the noise (chi^2 = dof on average).
    n = 200
    exp, sim, outs = _run(4, n, 14, flux=np.full(n, 5e5))
    (_, o1), (_, o2) = outs
    dof = int(np.median(o2[0].dof))
    assert np.mean(o1[0].chi2) > 1.2 * dof
    assert np.mean(o2[0].chi2) == pytest.approx(dof, rel=0.03)
    _check_fit(exp, sim, o2)


@pytest.mark.slow
def test_exp5_hst_psf_chi2(shared_data):
    shared_data("hst_wfc3_psf")
    from scipy import stats

    exp, sim, outs = _run(5, 300, 15)
    res, ok = _check_fit(exp, sim, outs[0][1], model_tol=0.2)
    # the optics put on 0.08" pixels are undersampled (MATPHOT's beta < 21 px^2 rule)
    q = outs[0][1][2]
    assert np.median(q.beta) < 21 and np.median(q.L) < 1
    dof = int(np.median(res.dof))
    assert dof == 15 * 15 - 4
    assert stats.kstest(res.chi2[ok], stats.chi2(dof).cdf).pvalue > 0.01
    # undersampled: the reported position errors match the scatter
    dx = res.x_fit[ok, 0] - sim.x[ok, 0]
    assert np.std(dx / res.x_err[ok, 0]) == pytest.approx(1.0, abs=0.1)


@pytest.mark.slow
def test_exp6_ugly_detector_recovers_magnitudes(shared_data):
    shared_data("hst_wfc3_psf")
    exp = matphot.build(6)
    n, e = 200, 1e6
    sim = simulate_cutouts(
        exp.sim_psf,
        n,
        exp.shape,
        flux=np.full(n, e),
        sky=exp.sky,
        read_noise=exp.read_noise,
        seed=16,
    )
    res, crlb, q, sig_m, _, _, _ = matphot.run_fit(exp, exp.fits[0], sim, 16)
    loss = 1 - q.volume
    # 42-45 % of the light is lost, and how much depends on where the star falls in its pixel
    assert 0.40 < loss.min() and loss.max() < 0.47 and loss.max() - loss.min() > 0.02
    observed = sim.data.sum((1, 2)) - exp.sky * exp.shape[0] * exp.shape[1]
    assert np.corrcoef(observed, q.volume)[0, 1] > 0.9  # the observed light follows V(phase)
    ok = res.flags[:, 0] == 0
    dm = 2.5 * np.log10(res.flux_fit[ok, 0] / e)
    assert abs(np.mean(dm)) < 0.002
    assert np.std(dm) == pytest.approx(np.sqrt(np.mean((1.0857 * crlb[ok, 3] / e) ** 2)), rel=0.15)
    assert np.std(dm) == pytest.approx(np.sqrt(np.mean(sig_m[ok] ** 2)), rel=0.15)
