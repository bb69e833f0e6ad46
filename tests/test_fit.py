"""fit_cutouts against truth: pulls, chi^2, blends, discrete vs analytic, precision, bad input.

Simulations follow issue 2: 15x15 cutouts, sky 100 e-/px, read noise 5 e-, fluxes 300-1e5 e-
(log-uniform), starting guesses off by up to +-0.5 px and +-50 % in flux.
"""

import functools

import jax
import numpy as np
import pytest
from test_psf import gaussian_matrix

from jaxphot.core import fit as fitmod
from jaxphot.core.fit import fit_cutouts
from jaxphot.core.flags import FitFlag
from jaxphot.psf import DiscretePSF, GaussianPRF, MoffatPSF
from jaxphot.sim.cutouts import simulate_cutouts

N = 2048
NOISE = dict(gain=1.0, read_noise=5.0)


def perturbed_guesses(sim, seed):
    rng = np.random.default_rng(seed)
    x0 = sim.x + rng.uniform(-0.5, 0.5, sim.x.shape)
    y0 = sim.y + rng.uniform(-0.5, 0.5, sim.y.shape)
    f0 = sim.flux * rng.uniform(0.5, 1.5, sim.flux.shape)
    return x0, y0, f0


PSFS = {
    "gaussian": lambda: GaussianPRF(2.5),
    "discrete": lambda: DiscretePSF(gaussian_matrix(2.5, 4), 4),
    "epsf": lambda: DiscretePSF(gaussian_matrix(2.5, 4, integrated=True), 4, integrated=True),
    "moffat": lambda: MoffatPSF(2.5, beta=2.5),
}


@functools.cache
def isolated_run(name):
    psf = PSFS[name]()
    # Simulate with the exact model of the same family (for discrete PSFs: the analytic
    # Gaussian they sample), fit with the PSF under test.
    truth_psf = MoffatPSF(2.5, beta=2.5) if name == "moffat" else GaussianPRF(2.5)
    sim = simulate_cutouts(truth_psf, N, (15, 15), flux=(300.0, 1e5), seed=11)
    x0, y0, f0 = perturbed_guesses(sim, 12)
    return sim, fit_cutouts(sim.data, psf, x0, y0, f0, **NOISE)


def assert_pulls(sim, res, ok):
    for fit, err, truth in (
        (res.flux_fit, res.flux_err, sim.flux),
        (res.x_fit, res.x_err, sim.x),
        (res.y_fit, res.y_err, sim.y),
    ):
        pull = ((fit - truth) / err)[ok]
        assert abs(np.std(pull) - 1.0) < 0.05, np.std(pull)
        assert abs(np.median(pull)) < 0.1, np.median(pull)


@pytest.mark.parametrize("name", list(PSFS))
def test_isolated_star_pulls_and_chi2(name):
    sim, res = isolated_run(name)
    ok = res.flags[:, 0] == 0
    assert ok.mean() >= 0.995
    assert_pulls(sim, res, ok[:, None] & np.ones_like(sim.x, bool))
    red = res.chi2[ok] / res.dof[ok]
    assert abs(red.mean() - 1.0) < 0.03


def test_discrete_matches_analytic_within_one_fifteenth_of_noise():
    """MATPHOT: fitting the same data with the analytic Gaussian and its 4x discrete matrix gives
    positions and fluxes that differ by less than 1/15 of the photon-noise error."""
    sim, res_a = isolated_run("gaussian")
    _, res_d = isolated_run("discrete")
    ok = (res_a.flags == 0) & (res_d.flags == 0)
    for name in ("flux_fit", "x_fit", "y_fit"):
        err = getattr(res_a, name.replace("fit", "err"))
        diff = np.abs(getattr(res_a, name) - getattr(res_d, name)) / err
        assert np.percentile(diff[ok], 99) < 1 / 15, (name, np.percentile(diff[ok], 99))


def test_blended_pairs_fitted_together():
    """Two stars 1.5 FWHM apart in one cutout, fitted jointly, meet the pull criteria."""
    psf = GaussianPRF(2.5)
    sim = simulate_cutouts(psf, 1024, (19, 19), flux=(2e3, 5e4), k=2, separation=1.5 * 2.5, seed=21)
    x0, y0, f0 = perturbed_guesses(sim, 22)
    x0 = sim.x + np.clip(x0 - sim.x, -0.3, 0.3)  # blended guesses: keep the pair order
    y0 = sim.y + np.clip(y0 - sim.y, -0.3, 0.3)
    res = fit_cutouts(sim.data, psf, x0, y0, f0, **NOISE)
    ok = np.all(res.flags == 0, axis=1)
    assert ok.mean() >= 0.99
    # A blend's two solutions are the same scene with the labels exchanged: match each fitted
    # pair to the truth by position before comparing (as one would with a catalogue).
    d_same = np.hypot(res.x_fit - sim.x, res.y_fit - sim.y).sum(1)
    d_swap = np.hypot(res.x_fit - sim.x[:, ::-1], res.y_fit - sim.y[:, ::-1]).sum(1)
    swap = d_swap < d_same
    assert swap.mean() < 0.01
    for name in ("x", "y", "flux"):
        setattr(sim, name, np.where(swap[:, None], getattr(sim, name)[:, ::-1], getattr(sim, name)))
    assert_pulls(sim, res, ok[:, None] & np.ones_like(sim.x, bool))
    assert res.to_table()["star_id"].max() == 1 and len(res.to_table()) == 2048


def test_float32_agrees_with_float64():
    """The float32 path (Marquardt scaling, centred coordinates) agrees with float64 to a small
    fraction of the statistical error."""
    psf = GaussianPRF(2.5)
    sim = simulate_cutouts(psf, 256, (15, 15), flux=(300.0, 1e6), seed=31)
    x0, y0, f0 = perturbed_guesses(sim, 32)
    r32 = fit_cutouts(sim.data.astype(np.float32), psf, x0, y0, f0, **NOISE)
    with jax.enable_x64(True):
        r64 = fit_cutouts(sim.data.astype(np.float64), psf, x0, y0, f0, **NOISE)
    assert np.all(r32.flags == 0) and np.all(r64.flags == 0)
    for name in ("flux", "x", "y"):
        d = (getattr(r32, f"{name}_fit") - getattr(r64, f"{name}_fit")) / getattr(
            r64, f"{name}_err"
        )
        assert np.max(np.abs(d)) < 0.05, name
        rel = getattr(r32, f"{name}_err") / getattr(r64, f"{name}_err") - 1
        assert np.max(np.abs(rel)) < 1e-3, name


def test_new_batch_size_reuses_compiled_buckets():
    """Sizes within one bucket (here 64) share one compiled solver."""
    psf = GaussianPRF(2.5)
    sim = simulate_cutouts(psf, 64, (11, 11), flux=(1e3, 1e4), seed=41)
    fit_cutouts(sim.data[:40], psf, sim.x[:40], sim.y[:40], **NOISE)
    before = fitmod.solve_chunk._cache_size()
    for n in (33, 50, 64):
        fit_cutouts(sim.data[:n], psf, sim.x[:n], sim.y[:n], **NOISE)
    assert fitmod.solve_chunk._cache_size() == before


def test_multi_chunk_batch_runs_one_shape_and_matches_single_chunks():
    """A batch longer than one chunk pads its tail to a whole chunk (no new compiled shape), and
    chunking does not change any row's result."""
    psf = GaussianPRF(2.5)
    sim = simulate_cutouts(psf, 200, (11, 11), flux=(1e3, 1e4), seed=43)
    fit_cutouts(sim.data[:40], psf, sim.x[:40], sim.y[:40], **NOISE)  # the 64-row shape
    before = fitmod.solve_chunk._cache_size()
    whole = fit_cutouts(sim.data, psf, sim.x, sim.y, chunk_size=64, **NOISE)  # 64+64+64+8
    assert fitmod.solve_chunk._cache_size() == before
    for a in range(0, 200, 64):
        part = fit_cutouts(sim.data[a:a + 64], psf, sim.x[a:a + 64], sim.y[a:a + 64], **NOISE)
        np.testing.assert_allclose(whole.flux_fit[a:a + 64], part.flux_fit, rtol=1e-5)
        np.testing.assert_allclose(whole.x_fit[a:a + 64], part.x_fit, atol=1e-5)
    truth_pull = (whole.flux_fit[:, 0] - sim.flux[:, 0]) / whole.flux_err[:, 0]
    assert abs(np.median(truth_pull)) < 0.3 and 0.75 < np.std(truth_pull) < 1.3


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU chunk sizes")
def test_cpu_chunks_are_cache_sized():
    from jaxphot.core.batching import MIN_BUCKET, default_chunk_size

    # 15x15 cutouts with 6 parameters: 256 rows (the measured optimum on a 2 MB L2); larger
    # problems get fewer rows, never below the smallest bucket, never above 1024.
    assert default_chunk_size((15, 15), 6) == 256
    assert default_chunk_size((31, 31), 27) == MIN_BUCKET
    assert default_chunk_size((5, 5), 6) == 1024
    assert default_chunk_size() == 1024


def test_fixed_positions_forced_photometry():
    psf = GaussianPRF(2.5)
    sim = simulate_cutouts(psf, 512, (15, 15), flux=(1e3, 1e5), seed=51)
    res = fit_cutouts(sim.data, psf, sim.x, sim.y, fixed=("x", "y"), **NOISE)
    assert np.allclose(res.x_fit, sim.x, atol=1e-5) and np.all(res.x_err == 0)
    pull = (res.flux_fit - sim.flux) / res.flux_err
    assert abs(np.std(pull) - 1) < 0.1 and np.all(res.dof == 15 * 15 - 4)


def test_unweighted_fit_scales_errors_by_residuals():
    """With no error, gain or read noise the fit is unweighted and the errors come from the
    residual scatter; on read-noise-dominated (homoscedastic) data the pulls are then ~1."""
    psf = GaussianPRF(2.5)
    sim = simulate_cutouts(psf, 512, (15, 15), flux=(500.0, 2e3), sky=10.0, read_noise=40.0,
                           seed=61)
    res = fit_cutouts(sim.data, psf, sim.x, sim.y)
    pull = (res.flux_fit - sim.flux) / res.flux_err
    assert abs(np.std(pull) - 1) < 0.1


# ---------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def small():
    psf = GaussianPRF(2.0)
    sim = simulate_cutouts(psf, 8, (11, 11), flux=(2e3, 2e4), seed=71)
    return psf, sim


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(data=np.zeros((11, 11, 3, 2))), r"data must be one \(H, W\) cutout"),
        (dict(x=np.zeros(7)), "x must have shape"),
        (dict(y=np.zeros((8, 2))), "x and y must have the same shape"),
        (dict(flux=np.r_[np.inf, np.ones(7)]), "flux contains non-finite"),
        (dict(error=np.ones((3, 3))), "error must be broadcastable"),
        (dict(mask=np.ones((8, 5, 11), bool)), "mask must be broadcastable"),
        (dict(background="quadratic"), "background must be one of"),
        (dict(fixed=("sky",)), "fixed may contain only"),
        (dict(gain=-1.0), "gain must be > 0"),
    ],
)
def test_bad_arguments_raise_named_value_errors(small, change, match):
    psf, sim = small
    args = dict(data=sim.data, x=sim.x, y=sim.y, flux=sim.flux)
    args.update(change)
    with pytest.raises(ValueError, match=match):
        fit_cutouts(args.pop("data"), psf, args.pop("x"), args.pop("y"), **args)


def test_bad_pixels_and_cutouts_are_flagged_not_fatal(small):
    psf, sim = small
    data = sim.data.copy()
    error = np.sqrt(sim.expected + 25.0)
    mask = np.zeros(data.shape, bool)
    mask[0] = True  # all-masked cutout
    data[1, 5, 5] = np.nan  # a NaN pixel in the core
    error[2, 3, 3] = 0.0  # a zero error
    error[3, 4, 4] = -1.0  # a negative error
    data[4] = np.nan  # an all-NaN cutout
    res = fit_cutouts(data, psf, sim.x, sim.y, error=error, mask=mask)
    t = res.to_table()
    assert len(t) == 8  # every row comes back
    for i in (0, 4):
        assert t["flags"][i] & FitFlag.TOO_FEW_PIXELS and np.isnan(t["flux_fit"][i])
    assert t["flags"][4] & FitFlag.BAD_PIXELS
    for i in (1, 2, 3):
        assert t["flags"][i] == FitFlag.BAD_PIXELS  # fitted on the remaining pixels
        assert abs(t["flux_fit"][i] - sim.flux[i, 0]) < 5 * t["flux_err"][i]
    assert np.all(t["flags"][5:] == 0)
    assert np.all(np.isfinite(t["flux_fit"][5:]))


def test_star_outside_the_cutout_is_flagged():
    """A star held outside the cutout (forced photometry at a bad position) is flagged
    OUTSIDE_CUTOUT while its in-cutout twin is clean, and a cutout of pure sky still returns its
    row with the right background (the star's flux consistent with zero)."""
    psf = GaussianPRF(2.0)
    data = np.random.default_rng(3).normal(100.0, 10.0, (3, 11, 11))
    res = fit_cutouts(data, psf, [5.0, 12.0, 5.0], [5.0, 5.0, 5.0], [500.0, 500.0, 500.0],
                      error=10.0, fixed=("x", "y"))
    assert len(res.to_table()) == 3
    assert not res.flags[0, 0] & FitFlag.OUTSIDE_CUTOUT
    assert res.flags[1, 0] & FitFlag.OUTSIDE_CUTOUT
    assert np.all(np.abs(res.bkg - 100.0) < 5 * res.bkg_err)
    assert abs(res.flux_fit[0, 0]) < 5 * res.flux_err[0, 0]
