"""PSF models: normalisation, pixel integration and derivatives against finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxphot import scene
from jaxphot.psf import FWHM_TO_SIGMA, DiscretePSF, GaussianPRF, MoffatPSF
from jaxphot.sim.cutouts import gaussian_psf_matrix

SHAPE = (15, 15)


def gaussian_matrix(fwhm, oversampling, n_pix=15, integrated=False):
    """A Gaussian matrix covering ``n_pix`` detector pixels (``n_pix * s + 1`` samples)."""
    return gaussian_psf_matrix(fwhm, oversampling, n_pix * oversampling + 1, integrated)


def all_psfs():
    return {
        "gaussian": GaussianPRF(2.5),
        "gaussian_elliptical": GaussianPRF(2.5, fwhm_y=3.5),
        "gaussian_rotated": GaussianPRF(2.5, fwhm_y=3.5, theta=0.4),
        "moffat": MoffatPSF(2.5, beta=2.5),
        "discrete_sinc": DiscretePSF(gaussian_matrix(2.5, 4), 4, kernel="sinc"),
        "discrete_keys": DiscretePSF(gaussian_matrix(2.5, 4), 4, kernel="keys"),
        "discrete_bspline": DiscretePSF(gaussian_matrix(2.5, 4), 4, kernel="bspline3"),
        "epsf_bspline": DiscretePSF(gaussian_matrix(2.5, 4, integrated=True), 4, integrated=True),
    }


def central_difference(f, x, h):
    return (f(x + h) - f(x - h)) / (2 * h)


@pytest.mark.parametrize("name", list(all_psfs()))
def test_position_derivatives_match_finite_differences(name):
    """Autodiff d PRF / dx, dy agree with central differences to 1e-6 relative (float64)."""
    with jax.enable_x64(True):
        psf = all_psfs()[name]
        x0, y0 = 7.23, 6.71
        dx = jax.jacfwd(lambda a: psf.evaluate(a, y0, SHAPE))(x0)
        dy = jax.jacfwd(lambda b: psf.evaluate(x0, b, SHAPE))(y0)
        fd_x = central_difference(lambda a: psf.evaluate(a, y0, SHAPE), x0, 1e-5)
        fd_y = central_difference(lambda b: psf.evaluate(x0, b, SHAPE), y0, 1e-5)
        for ad, fd in ((dx, fd_x), (dy, fd_y)):
            assert float(jnp.max(jnp.abs(ad - fd)) / jnp.max(jnp.abs(ad))) < 1e-6


@pytest.mark.parametrize("name", ["gaussian", "moffat"])
def test_shape_parameters_are_differentiable(name):
    """d PRF / d fwhm from autodiff agrees with central differences."""
    with jax.enable_x64(True):
        psf = all_psfs()[name]

        def prf(fwhm):
            return psf.replace(fwhm=fwhm).evaluate(7.1, 7.3, SHAPE)

        ad = jax.jacfwd(prf)(2.5)
        fd = central_difference(prf, 2.5, 1e-5)
        assert float(jnp.max(jnp.abs(ad - fd)) / jnp.max(jnp.abs(ad))) < 1e-6


def test_scene_jacobian_and_curvature_match_finite_differences():
    """The assembled Jacobian (plane, fluxes, positions of 2 stars) and the curvature term."""
    with jax.enable_x64(True):
        psf = all_psfs()["discrete_sinc"]
        p = jnp.array([100.0, 0.3, -0.2, 5000.0, 3000.0, 6.2, 8.9, 7.4, 6.1])
        model, jac, curvature = scene.linearize(psf, p, SHAPE, order=2)
        for j in range(p.size):
            e = jnp.zeros_like(p).at[j].set(1.0)
            fd = central_difference(lambda t, e=e: scene.model_image(psf, p + t * e, SHAPE), 0.0, 1e-5)
            assert float(jnp.max(jnp.abs(jac[j] - fd)) / jnp.max(jnp.abs(fd))) < 1e-6, j
        # curvature(wr) = sum_i wr_i d2m_i/dp dp: check against a finite difference of J^T wr.
        wr = jnp.asarray(np.random.default_rng(0).normal(size=SHAPE))
        c = curvature(wr)

        def jt_wr(q):
            rows = scene.linearize(psf, q, SHAPE, order=1)[1]
            return jnp.stack([jnp.sum(r * wr) for r in rows])

        for j in range(p.size):
            e = jnp.zeros_like(p).at[j].set(1.0)
            fd = central_difference(lambda t, e=e: jt_wr(p + t * e), 0.0, 1e-5)
            assert np.allclose(c[:, j], fd, rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(c))))


def test_gaussian_is_exactly_integrated():
    """The erf PRF equals a brute-force 64x64 sub-pixel integral and has unit volume."""
    with jax.enable_x64(True):
        psf = GaussianPRF(1.2)  # narrow: pixel integration matters
        prf = np.asarray(psf.evaluate(7.3, 6.8, SHAPE))
        n = 64
        sub = (np.arange(n) + 0.5) / n - 0.5
        xx = (np.arange(15)[:, None] + sub[None, :]).ravel()
        s = 1.2 * FWHM_TO_SIGMA
        gx = np.exp(-0.5 * ((xx - 7.3) / s) ** 2).reshape(15, n).mean(1)
        gy = np.exp(-0.5 * ((xx - 6.8) / s) ** 2).reshape(15, n).mean(1)
        brute = np.outer(gy, gx) / (2 * np.pi * s * s)
        assert np.max(np.abs(prf - brute)) < 1e-4 * prf.max()
        assert abs(prf.sum() - 1.0) < 1e-10


@pytest.mark.parametrize("fwhm", [1.0, 1.5, 3.0])
def test_moffat_default_subsampling_is_accurate_to_1e4(fwhm):
    """Default sub-pixel integration is within 1e-4 of a 32-point rule, for FWHM >= 1 px."""
    with jax.enable_x64(True):
        for beta in (1.5, 2.5, 4.0):
            ref = MoffatPSF(fwhm, beta, subsample=32).evaluate(7.2, 7.4, SHAPE)
            got = MoffatPSF(fwhm, beta).evaluate(7.2, 7.4, SHAPE)
            assert float(jnp.abs(got.sum() - ref.sum())) < 1e-4
            assert float(jnp.max(jnp.abs(got - ref))) < 1e-4


@pytest.mark.parametrize("kernel", ["sinc", "keys", "bspline3"])
@pytest.mark.parametrize("integrated", [False, True])
def test_discrete_psf_reproduces_analytic_gaussian(kernel, integrated):
    """A 4x-oversampled Gaussian matrix, shifted to arbitrary phases, matches the erf PRF."""
    with jax.enable_x64(True):
        exact = GaussianPRF(2.5)
        d = DiscretePSF(
            gaussian_matrix(2.5, 4, integrated=integrated), 4, integrated=integrated, kernel=kernel
        )
        xs = jnp.array([7.0, 7.5, 7.13, 6.61])
        ys = jnp.array([7.0, 7.25, 6.61, 7.92])
        a, b = exact.evaluate(xs, ys, SHAPE), d.evaluate(xs, ys, SHAPE)
        tol = 5e-4 if kernel == "keys" else 1e-4
        assert float(jnp.max(jnp.abs(a - b)) / jnp.max(a)) < tol


def _half_pixel_lobe(fwhm, kernel):
    arr = gaussian_matrix(fwhm, 1, n_pix=21)
    prf = np.asarray(DiscretePSF(arr, 1, kernel=kernel).evaluate(10.5, 10.0, (21, 21)))
    return prf.min() / prf.max()


def test_interpolation_ringing_after_half_pixel_shift():
    """Shifting a pixel-sampled Gaussian by half a pixel: MATPHOT's damped sinc leaves a negative
    side lobe of ~1e-3 of the peak near critical sampling (FWHM 2 px), the prefiltered cubic
    spline 40x less; at FWHM 1 px every kernel rings at the percent level, which is why
    undersampled PSFs must be supersampled (MATPHOT's beta >= 21 rule)."""
    with jax.enable_x64(True):
        sinc2, spline2 = _half_pixel_lobe(2.0, "sinc"), _half_pixel_lobe(2.0, "bspline3")
        assert -5e-3 < sinc2 < -5e-4
        assert abs(spline2) < abs(sinc2) / 10
        for kernel in ("sinc", "keys", "bspline3"):
            assert _half_pixel_lobe(1.0, kernel) < -1e-2
            assert abs(_half_pixel_lobe(3.0, kernel)) < 5e-4


def test_discrete_from_fits_reads_oversampling(tmp_path):
    from astropy.io import fits

    arr = gaussian_matrix(2.0, 2)
    path = tmp_path / "psf.fits"
    fits.PrimaryHDU(arr, header=fits.Header({"OVERSAMP": 2})).writeto(path)
    d = DiscretePSF.from_fits(path)
    assert d.oversampling == 2
    assert np.isclose(d.array.sum(), 1.0)
    with pytest.raises(ValueError, match="cannot read PSF"):
        DiscretePSF.from_fits(tmp_path / "missing.fits")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(array=np.ones((2, 2))), "at least 3x3"),
        (dict(array=np.full((5, 5), np.nan)), "non-finite"),
        (dict(array=np.ones((5, 5)), oversampling=1.5), "oversampling"),
        (dict(array=np.ones((5, 5)), kernel="lanczos"), "kernel"),
        (dict(array=-np.ones((5, 5))), "positive sum"),
    ],
)
def test_discrete_psf_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiscretePSF(**kwargs)


def test_analytic_psfs_reject_bad_widths():
    with pytest.raises(ValueError, match="fwhm"):
        GaussianPRF(-1.0)
    with pytest.raises(ValueError, match="beta"):
        MoffatPSF(2.0, beta=1.0)
