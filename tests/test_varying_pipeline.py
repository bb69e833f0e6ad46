"""Position-dependent PSFs everywhere a PSF is accepted: photometry, rendering, FITS, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.stats import mad_std

import jaxphot
from jaxphot.psf import GriddedPSF, read_psf_fits, write_psf_fits
from jaxphot.psf.measure import PSFCoverageWarning, psf_fwhm
from jaxphot.sim import match_to_truth
from jaxphot.sim.varying import regional_table, simulate_varying_field, varying_psf


@pytest.fixture(scope="module")
def strong_field():
    fld, _ = simulate_varying_field((256, 256), 300, "strong", seed=1)
    return fld


def _bright_scores(cat, truth, snr=30.0):
    ci, ti = match_to_truth(cat, truth, 1.0)
    b = np.asarray(truth["snr"])[ti] > snr
    ff = np.asarray(cat["flux_fit"])[ci][b]
    ft = np.asarray(truth["flux"])[ti][b]
    pull = (ff - ft) / np.asarray(cat["flux_err"])[ci][b]
    return 1e3 * np.median(-2.5 * np.log10(ff / ft)), mad_std(pull), b.sum()


def test_strong_psf_has_the_variation_asked_for():
    psf = varying_psf((1024, 1024), "strong")
    centre = psf_fwhm(psf.psf_at(511.5, 511.5))
    corner = psf_fwhm(psf.psf_at(0.0, 0.0))
    assert corner / centre > 1.5  # >= 50 % growth centre -> corners (q = 0.7 major axis)


def test_photometry_with_true_varying_psf_is_unbiased(strong_field):
    fld = strong_field
    cat = jaxphot.photometry(fld.image, fld.psf, gain=fld.gain, read_noise=fld.read_noise)
    bias, pull_sd, n = _bright_scores(cat, fld.truth)
    assert n > 50
    assert abs(bias) < 5.0, bias
    # ~90 stars: the MAD-std itself scatters by ~0.08 (measured 0.81 here, seed 1)
    assert 0.7 < pull_sd < 1.25, pull_sd
    # the centre's PSF applied everywhere does much worse in the pulls (the gain is real)
    const = fld.psf.psf_at(127.5, 127.5)
    cat0 = jaxphot.photometry(fld.image, const, gain=fld.gain, read_noise=fld.read_noise)
    _, pull0, _ = _bright_scores(cat0, fld.truth)
    assert pull0 > 1.5 * pull_sd, (pull0, pull_sd)
    tab = regional_table(cat, fld.truth, fld.image.shape, grid=(2, 2))
    assert np.all(tab["completeness"] > 0.9)
    # pooled fields: each matched to its own truth, the regions' stars taken together
    two = regional_table([cat, cat], [fld.truth, fld.truth], fld.image.shape, grid=(2, 2))
    np.testing.assert_array_equal(two["n_bright"], 2 * tab["n_bright"])
    np.testing.assert_allclose(two["bias_mmag"], tab["bias_mmag"])
    np.testing.assert_allclose(two["pull_mad_std_err"] * np.sqrt(2), tab["pull_mad_std_err"])


def test_model_image_with_varying_psf_matches_simulation(strong_field):
    fld = strong_field
    t = fld.truth.copy()
    t["x_fit"], t["y_fit"], t["flux_fit"] = t["x"], t["y"], t["flux"]
    t["flags"] = np.zeros(len(t), int)
    model = jaxphot.make_model_image(t, fld.psf, fld.image.shape)
    # the simulator's expected image is the same stars, each with the PSF at its position
    np.testing.assert_allclose(model, fld.expected - fld.sky, atol=1e-3 * fld.expected.max())


def test_varying_psf_fits_round_trip_keeps_variation(tmp_path):
    psf = varying_psf((128, 128), "quadratic", fwhm=2.5)
    path = tmp_path / "poly.fits"
    write_psf_fits(psf, path)
    back = read_psf_fits(path)
    assert type(back).__name__ == "PolynomialPSF" and back.degree == 2
    a = np.asarray(psf.psf_at(10.0, 120.0).array)
    np.testing.assert_allclose(np.asarray(back.psf_at(10.0, 120.0).array), a, atol=1e-5 * a.max())


def test_nan_nodes_raise():
    psf = varying_psf((64, 64), "linear", fwhm=2.0)
    arr = np.asarray(psf.arrays).copy()
    arr[1, 5, 5] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        type(psf)(arr, psf.oversampling, 1, psf.center, psf.scale)


def test_grid_not_covering_image_warns():
    g = varying_psf((64, 64), "constant", fwhm=2.0).arrays[0]
    psf = GriddedPSF(np.stack([g, g, g, g]), [10.0, 40.0], [10.0, 40.0], 2)
    fld, _ = simulate_varying_field((256, 256), 20, "constant", fwhm=2.0, seed=2)
    with pytest.warns(PSFCoverageWarning, match="cover only"):
        cat = jaxphot.photometry(fld.image, psf, gain=fld.gain, maxiters=1)
    assert len(cat) > 0  # a warning, not a failure: the fit still runs


def test_tiled_photometry_uses_image_position_of_varying_psf(strong_field):
    from jaxphot.scale.tiling import photometry_tiled

    fld = strong_field
    cat = photometry_tiled(fld.image, fld.psf, tile_size=128, gain=fld.gain,
                           read_noise=fld.read_noise)
    bias, pull_sd, n = _bright_scores(cat, fld.truth)
    # tile-local PSFs would be wrong by up to the field's full variation in three of four tiles
    assert n > 50 and abs(bias) < 5.0 and 0.7 < pull_sd < 1.25, (bias, pull_sd, n)


def test_blend_members_are_fitted_with_their_own_psf():
    """A pair 7 px apart on a PSF that changes fast: each member needs the PSF at its position.

    The PSF's FWHM goes from 2.4 to 4.2 px across 16 px (a steep, artificial gradient), so the
    PSF of the pair's first member is badly wrong for the second; with per-member PSFs both
    fluxes are unbiased and their pulls are unit-width.
    """
    from jaxphot.psf import PolynomialPSF
    from jaxphot.sim.varying import gaussian_epsf_samples

    lo, hi = gaussian_epsf_samples(2.4), gaussian_epsf_samples(4.2)
    psf = PolynomialPSF(np.stack([(lo + hi) / 2, (hi - lo) / 2, 0 * lo]), 2, 1,
                        center=(12.0, 12.0), scale=(8.0, 8.0))  # u = -1 at x = 4, +1 at x = 20
    rng = np.random.default_rng(3)
    n, shape, sky, rn = 200, (25, 25), 50.0, 3.0
    xs = np.stack([rng.uniform(8.0, 9.0, n), rng.uniform(15.0, 16.0, n)], 1)
    ys = rng.uniform(11.5, 12.5, (n, 2))
    flux = np.array([4000.0, 3000.0])
    each = psf.at(xs.T.ravel(), ys.T.ravel()).per_member(2)
    model = np.moveaxis(np.asarray(each.evaluate(xs.T, ys.T, shape)), -1, 0)  # (N, H, W, K)
    data = rng.poisson(model @ flux + sky) + rng.normal(0, rn, (n,) + shape)
    origin = np.zeros((n, 2))
    res = jaxphot.fit_cutouts(data, psf, xs + 0.2, ys - 0.2, flux=np.tile(flux * 0.8, (n, 1)), origin=origin,
                              gain=1.0, read_noise=rn).to_table()
    ff = np.asarray(res["flux_fit"]).reshape(n, 2)
    fe = np.asarray(res["flux_err"]).reshape(n, 2)
    pull = (ff - flux) / fe
    assert np.all(np.abs(np.median(ff / flux, 0) - 1) < 0.01), np.median(ff / flux, 0)
    assert np.all(np.abs(np.std(pull, 0) - 1) < 0.15), np.std(pull, 0)
    # the first member's PSF for both (the old behaviour) biases the second star
    first = psf.at(xs[:, 0], ys[:, 0])
    model1 = np.moveaxis(np.asarray(first.evaluate(xs.T, ys.T, shape)), -1, 0)
    assert np.abs(model1[..., 1] - model[..., 1]).max() > 0.1 * model[..., 1].max()
