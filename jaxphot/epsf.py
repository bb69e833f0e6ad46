"""Empirical PSFs (ePSFs) built from the stars of an image.

:func:`build_epsf` fits a supersampled PRF (``DiscretePSF(integrated=True)``, Anderson & King's
ePSF) jointly with every star's position and flux, by alternating two exact sub-problems. Each
star's sky is the median of its cutout's 2-pixel rim, held fixed: a free local background would be
exactly degenerate with a pedestal under the ePSF, so (as in DAOPHOT and Anderson & King) the ePSF
is what lies above the rim level within the cutout.

(a) **stars**: with the ePSF fixed, every star's ``(x, y, flux)`` is fitted at once with the
    batched Levenberg-Marquardt of :func:`jaxphot.fit.fit_cutouts`;
(b) **ePSF**: with the stars fixed, the model is *linear* in the ePSF's spline coefficients, so the
    update is a regularised weighted linear least-squares problem. It is solved by Jacobi-
    preconditioned conjugate gradients (warm-started from the previous ePSF) on the normal
    equations, whose operator is applied matrix-free: each pixel depends on 4 x 4 coefficients, so
    the forward model is a gather and its transpose (``jax.linear_transpose``) a scatter-add.
    A second-difference penalty (``smoothness``) keeps the coefficients that the data barely
    constrain (the array's rim, sparse sub-pixel phases) well behaved. It acts on the ePSF minus
    an elliptical Moffat PRF fitted to the previous iterate (``prior="moffat"``): a penalty on
    the ePSF's own curvature is strongest, relative to the data, in the Poisson-limited core, and
    with undersampled stars it flattens the core, which the star fits turn into position errors
    that depend on pixel phase (an S-curve, ~4 mpx for FWHM 1.5 px). For a spatially varying
    ePSF, Moffats are fitted at a few field points and every polynomial term gets the reference
    of the polynomial through them.

Two degeneracies of the joint problem are pinned after every ePSF update: the ePSF is rescaled so
that its samples sum to s^2 (fluxes absorb the scale) and resampled so that its centre sits at the
array centre (positions absorb the shift). The centre is that of an elliptical Moffat fitted to the
core (radius 1.2 FWHM), not the first moment: a PSF library, like the optics, puts a star's
position at its core, and asymmetric wings pull the first moment away from it by an amount that
changes across the field (17 mpx for the WFC3/UVIS library), which no global offset removes.
Outliers are rejected at every iteration, non-cumulatively: pixels whose normalised residual
exceeds ``clip_sigma`` and stars whose reduced chi^2 is far above the others' (blends, cosmic rays,
galaxies) are left out of the next ePSF update.

With ``degree = 1`` or ``2`` the ePSF coefficients are a polynomial in the detector position
(:class:`~jaxphot.psf_grid.PolynomialPSF`): the model is still linear in all the polynomial terms,
and the star step goes through ``fit_cutouts``' spatially varying PSF hook.

Because each star's sky is its rim level, the ePSF holds only the light above that level within
the box (96 % for the WFC3/UVIS PSF in a 21 px box). :func:`aperture_correction` measures the
missing fraction from the PSF stars themselves, as DAOPHOT users do: large-aperture flux (annulus
sky) over ePSF-fitted flux, a clipped weighted mean over the stars. ``build_epsf`` reports it
(``aperture_radius``) and can fold it into the ePSF (``normalize="aperture"``), so that fluxes
fitted with the ePSF are total fluxes.

The noise model is ``var = sky_var + max(model, 0) / gain`` per pixel, where ``sky_var`` is each
star's border variance and ``1/gain`` is estimated from the residuals when ``gain`` is not given
(unless ``error`` is given, which is used as is).
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from astropy.stats import mad_std
from astropy.table import Table

from .fit import fit_cutouts
from .kernels import bspline_prefilter
from .photometry import _scatter_stamps, _stamps
from .psf import DiscretePSF
from .psf_grid import PolynomialPSF, _poly_scale, _samples, poly_terms

__all__ = [
    "build_epsf",
    "build_epsf_grid",
    "select_stars",
    "build_epsf_from_image",
    "aperture_correction",
    "ApertureCorrection",
    "EPSFStars",
    "EPSFWarning",
]

_TAPS = np.arange(-1, 3)  # the 4 B-spline taps around floor(q)


class EPSFWarning(UserWarning):
    """Warnings about PSF stars that were dropped or a model that was simplified."""


# ----------------------------------------------------------------------------------------------
# The linear ePSF sub-problem


def _bspline3(t):
    at = jnp.abs(t)
    near = 2.0 / 3.0 - at * at + 0.5 * at * at * at
    far = (2.0 - at) ** 3 / 6.0
    return jnp.where(at <= 1.0, near, jnp.where(at < 2.0, far, 0.0))


def _axis_taps(pos, n_pix: int, n_arr: int, s: int):
    """Indices (N, n_pix, 4) and weights of the array samples that make each pixel's value.

    Follows :class:`~jaxphot.psf.DiscretePSF` (integrated): pixel p of a star at ``pos`` takes the
    spline at fractional array index ``q = s (p - pos) + (n_arr - 1)/2``. Taps outside the array
    get weight 0 (coefficients beyond the edge are 0, as in ``DiscretePSF.evaluate``).
    """
    q = s * (jnp.arange(n_pix, dtype=pos.dtype)[None, :] - pos[:, None]) + (n_arr - 1) / 2.0
    j = jnp.floor(q)[..., None] + _TAPS
    w = _bspline3(q[..., None] - j)
    inside = (j >= 0) & (j < n_arr)
    return jnp.clip(j, 0, n_arr - 1).astype(jnp.int32), jnp.where(inside, w, 0.0)


def _stencil(x, y, shape, n: int, s: int):
    """Flat coefficient indices and weights (N, H*W, 16) of every pixel of every cutout."""
    h, w = shape
    jx, wx = _axis_taps(x, w, n, s)  # (N, W, 4)
    jy, wy = _axis_taps(y, h, n, s)  # (N, H, 4)
    idx = jy[:, :, None, :, None] * n + jx[:, None, :, None, :]
    wt = wy[:, :, None, :, None] * wx[:, None, :, None, :]
    return idx.reshape(len(x), h * w, 16), wt.reshape(len(x), h * w, 16)


def _forward(c, idx, wt, amp):
    """Model pixels (N, H*W) for coefficients c (T, n*n): ``sum_t amp[t, n] * (spline_t)``."""
    g = c[:, idx]  # (T, N, P, 16)
    return jnp.einsum("tnpk,npk,tn->np", g, wt, amp)


def _second_diff_penalty(c, n):
    c = c.reshape(c.shape[0], n, n)
    dx = c[:, :, 2:] - 2.0 * c[:, :, 1:-1] + c[:, :, :-2]
    dy = c[:, 2:, :] - 2.0 * c[:, 1:-1, :] + c[:, :-2, :]
    return 0.5 * (jnp.sum(dx * dx) + jnp.sum(dy * dy))


@functools.partial(jax.jit, static_argnames=("n", "s", "shape", "max_cg"))
def _solve_coeffs(c0, c_ref, target, wgt, x, y, amp, smoothness, *, n, s, shape, max_cg, cg_tol):
    """Regularised weighted least squares for the coefficients, by Jacobi-preconditioned CG.

    Minimises ``sum wgt (target - A c)^2 + lam |D2 (c - c_ref)|^2 + ridge |c|^2`` with ``lam =
    smoothness * median(diag(A^T W A))``: dimensionless, so the same ``smoothness`` works at any
    flux scale.
    """
    idx, wt = _stencil(x, y, shape, n, s)
    fwd = lambda c: _forward(c, idx, wt, amp)  # noqa: E731
    adj = jax.linear_transpose(fwd, c0)
    rhs = adj(wgt * target)[0]
    # diag(A^T W A): scatter of wgt * (amp * w)^2
    contrib = wgt[None, :, :, None] * (amp[:, :, None, None] * wt[None]) ** 2
    diag = jnp.zeros_like(c0).at[:, idx].add(contrib)
    d0 = diag[0]
    scale = jnp.nanmedian(jnp.where(d0 > 0, d0, jnp.nan))
    lam = smoothness * scale
    ridge = 1e-7 * scale
    pen_grad = jax.grad(lambda c: _second_diff_penalty(c, n))

    def op(c):
        return adj(wgt * fwd(c))[0] + lam * pen_grad(c) + ridge * c

    # the penalty acts on c - c_ref: its gradient at c_ref moves to the right-hand side
    rhs = rhs + lam * pen_grad(c_ref)
    precond = 1.0 / (diag + 12.0 * lam + ridge)
    r = rhs - op(c0)
    z = precond * r
    p = z
    rz = jnp.vdot(r, z)
    bnorm = jnp.sqrt(jnp.vdot(rhs, rhs))

    def cond(state):
        i, _, r, _, _ = state
        return (i < max_cg) & (jnp.sqrt(jnp.vdot(r, r)) > cg_tol * bnorm)

    def body(state):
        i, c, r, p, rz = state
        q = op(p)
        alpha = rz / jnp.vdot(p, q)
        c = c + alpha * p
        r = r - alpha * q
        z = precond * r
        rz_new = jnp.vdot(r, z)
        p = z + (rz_new / rz) * p
        return i + 1, c, r, p, rz_new

    i, c, r, _, _ = jax.lax.while_loop(cond, body, (0, c0, r, p, rz))
    return c, i


@functools.partial(jax.jit, static_argnames=("n", "s", "shape"))
def _model_pixels(c, x, y, amp, *, n, s, shape):
    idx, wt = _stencil(x, y, shape, n, s)
    return _forward(c, idx, wt, amp)


# ----------------------------------------------------------------------------------------------
# The analytic reference the smoothness penalty pulls toward

_GL_X, _GL_W = np.polynomial.legendre.leggauss(5)


def _moffat_prf(p, u, v):
    """Pixel-integrated elliptical Moffat at offsets ``u, v`` (pixels, arrays of one shape).

    ``p = (amplitude, x0, y0, log a, log c, atanh(b / sqrt(ac)), log(beta - 1))`` for the profile
    ``(1 + a du^2 + 2 b du dv + c dv^2)^-beta``; the pixel integral is 5 x 5 Gauss-Legendre.
    """
    amp, x0, y0, la, lc, tb, lb = p
    a, c = np.exp(la), np.exp(lc)
    b = np.tanh(tb) * np.sqrt(a * c)
    beta = 1.0 + np.exp(lb)
    g = 0.5 * _GL_X
    du = u[..., None, None] - x0 + g[:, None]
    dv = v[..., None, None] - y0 + g[None, :]
    q = a * du * du + 2 * b * du * dv + c * dv * dv
    w = 0.25 * _GL_W[:, None] * _GL_W[None, :]
    return amp * np.sum(w * (1.0 + q) ** -beta, axis=(-2, -1))


def _moffat_fit(samples: np.ndarray, s: int):
    """Samples (n, n) of the elliptical Moffat PRF that best fits the ePSF samples, or None.

    Every fit starts afresh from the samples' FWHM (warm starts from the previous iteration's
    parameters changed the Spitzer ePSF's EE(2 px) enough to fail its 3 % check).
    """
    from scipy.optimize import least_squares

    n = samples.shape[0]
    off = (np.arange(n) - (n - 1) / 2.0) / s
    u, v = np.meshgrid(off, off)
    fw = max(_fwhm_samples(samples) / s, 0.5)
    alpha2 = (fw / 2.0) ** 2 / (2 ** (1 / 4.0) - 1)  # start at beta = 4
    p0 = np.array([samples.max(), 0, 0, -np.log(alpha2), -np.log(alpha2), 0.0, np.log(3.0)])
    try:
        with np.errstate(all="ignore"):
            r = least_squares(lambda p: (_moffat_prf(p, u, v) - samples).ravel(), p0, method="lm")
            ref = _moffat_prf(r.x, u, v)
    except (ValueError, np.linalg.LinAlgError):
        return None
    return ref if np.all(np.isfinite(ref)) else None


# where (in u, v) a varying ePSF's Moffat references are fitted: enough points to determine a
# polynomial of each degree (1, u, v[, u^2, uv, v^2])
_REF_POINTS = {
    1: np.array([[0.0, 0.0], [0.7, 0.0], [0.0, 0.7]]),
    2: np.array([[0.0, 0.0], [0.7, 0.0], [-0.7, 0.0], [0.0, 0.7], [0.0, -0.7], [0.7, 0.7]]),
}


def _moffat_reference_terms(coeffs: np.ndarray, n: int, s: int, degree: int):
    """Moffat references (T, n*n coefficients) of every polynomial term of a varying ePSF.

    The ePSF is evaluated at the points of ``_REF_POINTS``, a Moffat is fitted at each, and the
    polynomial through those Moffats gives each term's reference, so the variation terms too are
    smoothed only in what a (varying) Moffat does not explain, rather than toward zero curvature.
    Measured on a Moffat FWHM 2.6-3.4 field (smoothness 1e-2): a small gain (corner core rms 0.19
    vs 0.24 %, pulls unchanged); the smoothness weight matters more (see :func:`build_epsf`). None when a fit
    fails (the penalty then pulls toward zero curvature).
    """
    terms = [_samples(t.reshape(n, n), "bspline3") for t in coeffs]
    if degree == 0:
        ref = _moffat_fit(terms[0], s)
        return None if ref is None else bspline_prefilter(ref).ravel()[None]
    pts = _REF_POINTS[degree]
    mono = np.array([[u**a * v**b for a, b in poly_terms(degree)] for u, v in pts])  # (K, T)
    refs = []
    for m in mono:
        ref = _moffat_fit(np.tensordot(m, np.asarray(terms), axes=1), s)
        if ref is None:
            return None
        refs.append(ref.ravel())
    sol = np.linalg.solve(mono, np.asarray(refs))  # (T, n*n) samples of each term's reference
    return np.stack([bspline_prefilter(t.reshape(n, n)).ravel() for t in sol])


# ----------------------------------------------------------------------------------------------
# Pinning the normalisation and the centre


def _kernel_matrix(n: int, shift: float) -> np.ndarray:
    """(n, n) matrix evaluating a cubic spline (coefficients) at indices ``a + shift``."""
    a = np.arange(n)[:, None] + shift
    t = np.abs(a - np.arange(n)[None, :])
    return np.where(t <= 1, 2 / 3 - t**2 + 0.5 * t**3, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))


def _centroid(samples: np.ndarray, radius: float) -> tuple[float, float]:
    """First moment (in array units, relative to the centre) inside a circle of ``radius``."""
    n_y, n_x = samples.shape
    yy, xx = np.mgrid[0:n_y, 0:n_x]
    u, v = xx - (n_x - 1) / 2.0, yy - (n_y - 1) / 2.0
    inside = u * u + v * v <= radius * radius
    w = np.where(inside, samples, 0.0)
    tot = w.sum()
    if not tot > 0:
        return 0.0, 0.0
    return float((w * u).sum() / tot), float((w * v).sum() / tot)


class _CoreCentre(NamedTuple):
    """Centre of an elliptical Moffat PRF fitted to the core samples, and its linearisation.

    ``x, y``: the centre (array units, relative to the array centre). ``gain``: (2, K) rows
    giving the change of ``(x, y)`` per unit change of each of the K ``core`` samples (the
    ``x0, y0`` rows of the least-squares pseudo-inverse), so a variation term's own centre shift
    is a dot product.
    """

    x: float
    y: float
    gain: np.ndarray
    core: np.ndarray


def _core_centre(samples: np.ndarray, s: int, radius: float) -> _CoreCentre | None:
    """Fit an elliptical Moffat PRF to the samples within ``radius`` (array units); None on failure.

    This is the ePSF's position convention. A PSF library (or the optics) defines a star's position
    by its core; the first moment also weighs the asymmetric wings. On the 36 WFC3/UVIS F814W
    library nodes the core-fit centre (radius 1.2 FWHM) stays within 1.1 / 1.5 mpx (std, x / y) of
    the library's origin, the first moment within 1.2 FWHM drifts by 4.1 / 4.5 mpx, and a 3 FWHM
    first moment by 51 / 60 mpx. A centre that drifts across the field becomes a position error
    that varies with the star's position, which no global offset removes.
    """
    from scipy.optimize import least_squares

    n = samples.shape[0]
    off = (np.arange(n) - (n - 1) / 2.0) / s
    u, v = np.meshgrid(off, off)
    core = np.hypot(u, v) <= radius / s
    fw = max(_fwhm_samples(samples) / s, 0.5)
    alpha2 = (fw / 2.0) ** 2 / (2 ** (1 / 4.0) - 1)  # start at beta = 4
    p0 = np.array([samples.max(), 0, 0, -np.log(alpha2), -np.log(alpha2), 0.0, np.log(3.0)])
    uc, vc, sc = u[core], v[core], samples[core]
    try:
        with np.errstate(all="ignore"):
            r = least_squares(lambda p: _moffat_prf(p, uc, vc) - sc, p0, method="lm")
            gain = np.linalg.pinv(r.jac)[1:3] * s
    except (ValueError, np.linalg.LinAlgError):
        return None
    x, y = r.x[1] * s, r.x[2] * s
    if not (r.success and np.all(np.isfinite(gain)) and max(abs(x), abs(y)) < radius):
        return None
    return _CoreCentre(float(x), float(y), gain, core)


def _moments(samples: np.ndarray, radius: float) -> tuple[float, float, float]:
    """Zeroth and first moments (array units, about the centre) inside a circle of ``radius``."""
    n_y, n_x = samples.shape
    yy, xx = np.mgrid[0:n_y, 0:n_x]
    u, v = xx - (n_x - 1) / 2.0, yy - (n_y - 1) / 2.0
    w = np.where(u * u + v * v <= radius * radius, samples, 0.0)
    return float(w.sum()), float((w * u).sum()), float((w * v).sum())


def _fwhm_samples(samples: np.ndarray) -> float:
    """FWHM (array units) from the area above half maximum."""
    peak = samples.max()
    area = np.count_nonzero(samples >= 0.5 * peak)
    return 2.0 * math.sqrt(area / math.pi)


def _pin(coeffs: np.ndarray, s: int, n: int, centre: bool) -> tuple[np.ndarray, float]:
    """Rescale to sum s^2 (term 0), recentre all terms on term 0's centre, fix the centre.

    The centre is that of a Moffat fitted to the core (:func:`_core_centre`), or the first moment
    within the same radius when that fit fails. Terms t > 0 are made centre-free (the centre stays
    at the origin across the field, to first order) and sum-free (``C_t -= (sum_t / sum_0) C_0``)
    so that the PSF's sum is s^2 everywhere, to first order (``PolynomialPSF.at`` renormalises
    exactly). Returns the coefficients and the FWHM in detector pixels.
    """
    c = coeffs.reshape(-1, n, n).astype(np.float64)
    s0 = _samples(c[0], "bspline3")
    fwhm = _fwhm_samples(s0)
    radius = max(1.2 * fwhm, 1.5 * s)
    fit = None
    if centre:
        for _ in range(3):
            s0 = _samples(c[0], "bspline3")
            fit = _core_centre(s0, s, radius)
            mx, my = (fit.x, fit.y) if fit is not None else _centroid(s0, radius)
            if max(abs(mx), abs(my)) < 1e-4:
                break
            kx, ky = _kernel_matrix(n, mx), _kernel_matrix(n, my)
            c = np.stack([bspline_prefilter(ky @ t @ kx.T) for t in c])
    if centre and len(c) > 1:
        # A centre that drifts across the field is degenerate with star positions that drift
        # alike (the start positions' errors leak into it): give each variation term a zero
        # centre shift, C_t += a dC_0/du + b dC_0/dv, as a shift of the PSF by (-a, -b) would.
        s0 = _samples(c[0], "bspline3")
        gy, gx = np.gradient(s0)
        if fit is None:
            fit = _core_centre(s0, s, radius)
        if fit is not None:
            shift = lambda img: fit.gain @ img[fit.core]  # noqa: E731
        else:  # first moments over the zeroth
            shift = lambda img: np.array(_moments(img, radius)[1:]) / _moments(s0, radius)[0]  # noqa: E731
        g = np.stack([shift(gx), shift(gy)], 1)  # (2, 2): centre shift per unit gradient
        for t in range(1, len(c)):
            st = _samples(c[t], "bspline3")
            a, b = np.linalg.solve(g, -shift(st))
            c[t] = bspline_prefilter(st + a * gx + b * gy)
    sums = np.array([_samples(t, "bspline3").sum() for t in c])
    if not sums[0] > 0:
        raise ValueError("the ePSF update has a non-positive sum: the PSF stars carry no signal")
    c[1:] -= (sums[1:] / sums[0])[:, None, None] * c[0][None]
    c *= s * s / sums[0]
    return c.reshape(len(c), n * n), fwhm / s


# ----------------------------------------------------------------------------------------------
# Aperture correction from the PSF stars


class ApertureCorrection(NamedTuple):
    """Ratio of large-aperture to PSF-fitted fluxes of the PSF stars (see :func:`aperture_correction`).

    Attributes
    ----------
    value : float
        Robust weighted mean ratio: multiply PSF-fitted fluxes by it to get the flux within
        ``radius`` (the total flux when the aperture holds all the light).
    error : float
        Its 1-sigma uncertainty (from the stars' scatter when that exceeds their errors).
    ratio : (N,) array
        Each star's ratio (NaN where unusable: off the image, masked pixels, non-positive flux).
    used : (N,) bool array
        Stars kept by the clipping.
    radius : float
        Aperture radius (pixels).
    annulus : (float, float)
        Sky annulus radii (pixels).
    """

    value: float
    error: float
    ratio: np.ndarray
    used: np.ndarray
    radius: float
    annulus: tuple[float, float]


def aperture_correction(
    image,
    x,
    y,
    flux,
    radius: float,
    *,
    annulus=None,
    mask=None,
    error=None,
    gain: float | None = None,
    clip_sigma: float = 3.0,
) -> ApertureCorrection:
    """Aperture correction of PSF photometry, measured on the PSF stars themselves (as in DAOPHOT).

    For each star the flux in a circular aperture of ``radius`` (local sky: median of an
    annulus) is divided by its PSF-fitted flux; the ratios are combined by an inverse-variance
    weighted mean with iterative ``clip_sigma`` clipping (neighbours, cosmic rays). An ePSF built
    with a local sky (:func:`build_epsf`) holds only the light above its box's rim level, so its
    fitted fluxes fall short of the total by the light in the wings (e.g. 3.6 % for the WFC3/UVIS
    PSF in a 21 px box); this ratio, with a radius that encloses the PSF, restores it.

    Parameters
    ----------
    image : (H, W) array
        The image (counts, sky not subtracted or subtracted: the annulus takes it out).
    x, y : (N,) arrays
        Star positions (pixels, 0-based), e.g. ``x_fit, y_fit`` of the PSF fit.
    flux : (N,) array
        PSF-fitted fluxes (counts).
    radius : float
        Aperture radius (pixels): large enough to hold (nearly) all the light.
    annulus : (float, float), optional
        Sky annulus radii (pixels); default ``(radius + 2, radius + 2 + max(5, radius / 2))``.
    mask : (H, W) bool array, optional
        Bad pixels; stars with any in their aperture are not used.
    error : (H, W) array, optional
        Pixel 1-sigma errors (counts) for the weights; default: the annulus scatter plus
        Poisson noise ``flux / gain``.
    gain : float, optional
        Electrons per count, for the Poisson part of the weights (ignored with ``error``).
    clip_sigma : float
        Stars whose ratio is further than ``clip_sigma`` sigma (their own error times the
        robust spread of the normalised residuals, when > 1) from the mean are left out.

    Returns
    -------
    ApertureCorrection

    Raises
    ------
    ValueError
        Bad radii, arrays of different lengths, or no usable star.
    """
    from .aperture import aperture_sums

    img = np.asarray(image, np.float64)
    x, y, flux = (np.atleast_1d(np.asarray(a, np.float64)) for a in (x, y, flux))
    if not (x.shape == y.shape == flux.shape and x.ndim == 1):
        raise ValueError(f"x, y, flux must be 1-D of one length, got {x.shape, y.shape, flux.shape}")
    r = float(radius)
    if not r > 0:
        raise ValueError(f"radius must be > 0 pixels, got {radius!r}")
    r_in, r_out = annulus if annulus is not None else (r + 2.0, r + 2.0 + max(5.0, r / 2.0))
    r_in, r_out = float(r_in), float(r_out)
    if not (r <= r_in < r_out):
        raise ValueError(f"annulus must satisfy radius <= r_in < r_out, got {(r_in, r_out)}")
    fin = np.isfinite(x) & np.isfinite(y)
    pos = np.stack([np.where(fin, x, 0.0), np.where(fin, y, 0.0)], 1)
    var = None if error is None else np.broadcast_to(np.asarray(error, np.float64) ** 2, img.shape)
    a = aperture_sums(img, pos, "circle", (r,), mask=mask, variance=var, annulus=(r_in, r_out))
    tot, area = a["sum"][:, 0], a["area"][:, 0]
    sky, sky_std, n_sky = a["sky"], a["sky_std"], np.maximum(a["n_sky"], 1)
    ap = tot - area * sky
    # variance of the aperture flux: sky noise in the aperture and in the sky estimate (a median:
    # pi/2 times a mean's), plus the star's own noise
    v = area * sky_std**2 * (1.0 + area * (np.pi / 2) / n_sky)
    if var is not None:
        v = a["sum_var"][:, 0] + area**2 * sky_std**2 * (np.pi / 2) / n_sky
    elif gain is not None and gain > 0:
        v = v + np.maximum(flux, 0.0) / gain
    ok = (
        fin
        & np.isfinite(ap)
        & np.isfinite(v)
        & (v > 0)
        & np.isfinite(flux)
        & (flux > 0)
        & (a["bad_area"][:, 0] == 0)
        & (a["off_area"][:, 0] == 0)
    )
    if not ok.any():
        raise ValueError("no star usable for the aperture correction (edge, masked or no flux)")
    ratio = np.where(ok, ap / np.where(ok, flux, 1.0), np.nan)
    sig = np.where(ok, np.sqrt(np.where(ok, v, 1.0)) / np.where(ok, flux, 1.0), np.inf)
    keep = ok.copy()
    for _ in range(10):
        w = 1.0 / sig[keep] ** 2
        mean = float(np.sum(w * ratio[keep]) / np.sum(w))
        z = (ratio - mean) / sig
        spread = max(1.0, float(mad_std(z[keep])))
        new = ok & (np.abs(z) <= clip_sigma * spread)
        if np.array_equal(new, keep) or new.sum() < 2:
            break
        keep = new
    w = 1.0 / sig[keep] ** 2
    mean = float(np.sum(w * ratio[keep]) / np.sum(w))
    chi2 = float(np.sum(w * (ratio[keep] - mean) ** 2) / max(keep.sum() - 1, 1))
    err = float(np.sqrt(max(chi2, 1.0) / np.sum(w)))
    return ApertureCorrection(mean, err, ratio, keep, r, (r_in, r_out))


# ----------------------------------------------------------------------------------------------
# Star cutouts


class EPSFStars(Table):
    """Table of candidate PSF stars with what became of them (column ``status``).

    ``status`` is ``"used"`` or the reason a star was left out: ``"edge"``, ``"bad core"`` (NaN or
    masked pixels near its centre), ``"saturated"``, ``"rejected"`` (outlier fit). Fitted columns
    ``x_fit, y_fit, flux_fit, chi2_red`` are in image coordinates / data units.
    """


def _as_positions(positions) -> np.ndarray:
    if isinstance(positions, Table):
        for xn, yn in (
            ("x_centroid", "y_centroid"),
            ("x", "y"),
            ("xcentroid", "ycentroid"),
            ("x_fit", "y_fit"),
            ("x_0", "y_0"),
        ):
            if xn in positions.colnames and yn in positions.colnames:
                return np.stack(
                    [np.asarray(positions[xn], float), np.asarray(positions[yn], float)], 1
                )
        raise ValueError(f"positions table has no x/y columns: {positions.colnames}")
    p = np.asarray(positions, np.float64)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"positions must have shape (N, 2) as (x, y) pairs, got {p.shape}")
    return p


def _odd_shape(shape) -> tuple[int, int]:
    h, w = (shape, shape) if np.ndim(shape) == 0 else tuple(shape)
    h, w = int(h), int(w)
    if h < 5 or w < 5 or h % 2 == 0 or w % 2 == 0:
        raise ValueError(f"shape must be odd and >= 5 pixels, got {(h, w)}")
    return h, w


def build_epsf(
    image,
    positions,
    *,
    oversampling: int = 4,
    shape=15,
    error=None,
    mask=None,
    gain: float | None = None,
    saturation: float | None = None,
    degree: int = 0,
    smoothness: float | None = None,
    prior: str | None = "moffat",
    maxiters: int = 20,
    tol: float = 5e-4,
    clip_sigma: float = 5.0,
    min_stars: int = 5,
    relax: float = 1.5,
    normalize: str = "sum",
    aperture_radius: float | None = None,
    aperture_annulus=None,
    return_stars: bool = False,
):
    """Build an ePSF (supersampled PRF) from the stars at ``positions`` in ``image``.

    Parameters
    ----------
    image : (H, W) array
        Image in counts (any linear unit). NaNs are ignored (masked). The background need not be
        subtracted: each star's sky is the median of its cutout's rim.
    positions : (N, 2) array or Table
        Approximate (x, y) of the PSF stars (pixels, 0-based; pixel ``[j, i]`` centred at
        ``(i, j)``), e.g. ``x_centroid, y_centroid`` of :func:`jaxphot.detection.find_stars`.
        Within ~0.5 px is enough.
    oversampling : int
        ePSF samples per pixel (s). The ePSF array has ``s * shape + 1`` samples per axis.
    shape : int or (int, int)
        Odd size (pixels) of the cutout fitted around each star; the ePSF covers it.
    error : (H, W) array, optional
        1-sigma uncertainty of each pixel (image units). Default: the noise model in the module
        docstring.
    mask : (H, W) bool array, optional
        True for pixels to ignore.
    gain : float, optional
        Electrons per image unit, for the Poisson part of the noise model; estimated from the
        residuals when None.
    saturation : float, optional
        Stars with any cutout pixel at or above this level are dropped.
    degree : {0, 1, 2}
        Degree of the polynomial variation of the ePSF with detector position. Lowered, with an
        :class:`EPSFWarning`, when there are fewer than ``8 * n_terms`` usable stars.
    smoothness : float, optional
        Weight of the second-difference penalty on the spline coefficients, relative to the
        median data weight of one coefficient (dimensionless). Default 1e-3 for ``degree = 0``,
        1e-2 otherwise. With one image the data leave a family of ePSFs exactly degenerate with
        star positions warped periodically in pixel phase (an S-curve): the prior picks the
        member, so the residual pixel-phase bias depends on how well the prior fits the PSF, and
        more weakly on this weight. Measured on simulated fields (200 stars, mpx = 1e-3 px of
        S-curve amplitude): constant Moffat FWHM 1.5-3, 1e-3 or 1e-2: < 1 mpx, pulls like the
        true PSF's; constant WFC3/UVIS, 1e-3: ~4 mpx, core rms 0.21 %, 1e-2: ~7 mpx, 0.36 %;
        degree 2 (Moffat FWHM 2.6-3.4 across the field), 1e-3: 6-15 mpx (y pulls 1.11), 1e-2:
        < 1.5 mpx (pulls like the true PSF's) and half the iterations.
    prior : {"moffat", None}
        What the penalty pulls toward. ``"moffat"``: the ePSF minus an elliptical Moffat PRF
        refitted to it at every iteration (DAOPHOT's analytic-plus-residual split), so only the
        residual is smoothed and a sharp core is not flattened. None: the ePSF itself (zero
        curvature), which broadens undersampled cores and biases positions with pixel phase.
    maxiters : int
        Maximum number of (star fit, ePSF update) iterations.
    tol : float
        Stop when no ePSF sample changes by more than ``tol`` times the peak.
    clip_sigma : float
        Pixels with ``|data - model| > clip_sigma * sigma`` are left out of the next update.
    min_stars : int
        Fewest usable stars accepted; fewer raise a ValueError naming why stars were dropped.
    relax : float
        Over-relaxation factor of the position updates (1 = plain alternation).
    normalize : {"sum", "aperture"}
        ``"sum"``: the samples sum to s^2, so fitted fluxes are the light the ePSF holds (above
        the box's rim level: less than the total for PSFs with extended wings). ``"aperture"``:
        the ePSF is divided by the aperture correction measured on the PSF stars (see
        ``aperture_radius``), so that fluxes fitted with it are the fluxes within that aperture,
        i.e. total fluxes when it encloses the PSF (DAOPHOT's aperture-corrected photometry).
    aperture_radius : float, optional
        Radius (pixels) of the large aperture for the aperture correction
        (:func:`aperture_correction` on the used stars at their fitted positions and fluxes).
        Measured when given or with ``normalize="aperture"``; default then the box half-size
        ``shape / 2``. Choose a radius that holds (nearly) all the light: light beyond it is not
        restored.
    aperture_annulus : (float, float), optional
        Its sky annulus (pixels); default as in :func:`aperture_correction`.
    return_stars : bool
        Also return an :class:`EPSFStars` table. With an aperture correction its ``meta`` holds
        ``apcor`` (multiply fluxes fitted with a ``normalize="sum"`` ePSF by it), ``apcor_err``,
        ``apcor_radius``, ``apcor_annulus``, ``apcor_nstars``, ``normalize``, and the column
        ``apcor_ratio`` each star's ratio; ``flux_fit`` is on the scale of the returned PSF.

    Returns
    -------
    psf : DiscretePSF or PolynomialPSF
        ``DiscretePSF(integrated=True)`` with samples summing to s^2 and origin at the array
        centre (DESIGN.md) for ``degree = 0``; a :class:`~jaxphot.psf_grid.PolynomialPSF`
        otherwise.
    stars : EPSFStars
        Only with ``return_stars=True``.

    Raises
    ------
    ValueError
        Bad shapes or arguments, or fewer than ``min_stars`` usable stars (the message counts the
        stars dropped at the edge, with bad cores, saturated).
    """
    img = np.asarray(image, np.float64)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {img.shape}")
    pos = _as_positions(positions)
    if len(pos) == 0:
        raise ValueError("no PSF star positions given")
    if degree not in (0, 1, 2):
        raise ValueError(f"degree must be 0, 1 or 2, got {degree!r}")
    s = int(oversampling)
    if s < 1 or s != oversampling:
        raise ValueError(f"oversampling must be a positive integer, got {oversampling!r}")
    h, w = _odd_shape(shape)
    if smoothness is not None and not smoothness >= 0:
        raise ValueError(f"smoothness must be >= 0, got {smoothness}")
    if prior not in ("moffat", None):
        raise ValueError(f"prior must be 'moffat' or None, got {prior!r}")
    if normalize not in ("sum", "aperture"):
        raise ValueError(f"normalize must be 'sum' or 'aperture', got {normalize!r}")
    H, W = img.shape
    bad_img = ~np.isfinite(img)
    if mask is not None:
        m = np.asarray(mask, bool)
        if m.shape != img.shape:
            raise ValueError(f"mask must have the image's shape {img.shape}, got {m.shape}")
        bad_img |= m
    err_img = None
    if error is not None:
        err_img = np.broadcast_to(np.asarray(error, np.float64), img.shape)
        bad_img = bad_img | ~(np.isfinite(err_img) & (err_img > 0))

    # --- cutouts (vectorised) and the reasons stars are unusable
    status = np.full(len(pos), "used", dtype=object)
    finite = np.all(np.isfinite(pos), axis=1)
    status[~finite] = "non-finite position"
    p = np.where(finite[:, None], pos, 0.0)
    ox = np.rint(p[:, 0]).astype(int) - w // 2
    oy = np.rint(p[:, 1]).astype(int) - h // 2
    edge = (ox < 0) | (oy < 0) | (ox + w > W) | (oy + h > H)
    status[finite & edge] = "edge"
    rows = np.clip(oy[:, None] + np.arange(h), 0, H - 1)
    cols = np.clip(ox[:, None] + np.arange(w), 0, W - 1)
    data = img[rows[:, :, None], cols[:, None, :]]
    bad = bad_img[rows[:, :, None], cols[:, None, :]]
    cy, cx = h // 2, w // 2
    core_bad = bad[:, cy - 1 : cy + 2, cx - 1 : cx + 2].any(axis=(1, 2))
    status[(status == "used") & core_bad] = "bad core"
    if saturation is not None:
        sat = np.nanmax(np.where(bad, -np.inf, data), axis=(1, 2)) >= saturation
        status[(status == "used") & sat] = "saturated"
    use = status == "used"
    n_use = int(use.sum())
    counts = {r: int(np.sum(status == r)) for r in set(status) if r != "used"}
    if counts:
        warnings.warn(
            f"{sum(counts.values())} of {len(pos)} PSF stars dropped: "
            + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())),
            EPSFWarning,
            stacklevel=2,
        )
    if n_use < min_stars:
        why = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "none dropped"
        raise ValueError(
            f"too few usable PSF stars: {n_use} of {len(pos)} (need >= {min_stars}); dropped: {why}"
        )
    n_terms = len(poly_terms(degree))
    while degree > 0 and n_use < 8 * len(poly_terms(degree)):
        new = degree - 1
        warnings.warn(
            f"only {n_use} usable PSF stars: spatial variation degree lowered from {degree} to "
            f"{new} (degree {degree} needs >= {8 * len(poly_terms(degree))})",
            EPSFWarning,
            stacklevel=2,
        )
        degree = new
    n_terms = len(poly_terms(degree))
    if smoothness is None:  # (after the degree is settled)
        smoothness = 1e-3 if degree == 0 else 1e-2

    idx_use = np.nonzero(use)[0]
    data = data[idx_use]
    valid = ~bad[idx_use]
    org = np.stack([ox[idx_use], oy[idx_use]], 1).astype(np.float64)
    xl = p[idx_use, 0] - org[:, 0]
    yl = p[idx_use, 1] - org[:, 1]
    n_st = len(idx_use)
    err_cut = None
    if err_img is not None:
        e = err_img[rows[:, :, None], cols[:, None, :]][idx_use]
        err_cut = np.where(valid, e, 1.0)

    # --- sky: median and MAD of each cutout's 2-pixel rim, held fixed. A free local background
    # would be exactly degenerate with a pedestal under the ePSF (F_i * eps is absorbed by each
    # star's own sky), so, as in DAOPHOT and Anderson & King, the sky comes from outside the
    # PSF's core and the ePSF is whatever remains above it within the cutout.
    border = np.zeros((h, w), bool)
    border[:2], border[-2:], border[:, :2], border[:, -2:] = True, True, True, True
    bvals = np.where(valid & border, data, np.nan).reshape(n_st, -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sky = np.nanmedian(bvals, axis=1)
        sky_var = mad_std(bvals, axis=1, ignore_nan=True) ** 2
    sky = np.where(np.isfinite(sky), sky, 0.0)
    pos_var = sky_var[np.isfinite(sky_var) & (sky_var > 0)]
    floor = np.median(pos_var) if pos_var.size else 1.0
    sky_var = np.where(np.isfinite(sky_var) & (sky_var > 0), sky_var, floor)
    flux = np.sum(np.where(valid, data - sky[:, None, None], 0.0), axis=(1, 2))
    flux = np.maximum(flux, 1e-3 * np.max(np.abs(flux)) + 1e-30)
    plane = np.stack([sky, np.zeros(n_st), np.zeros(n_st)], 1)
    inv_gain = None if gain is None else 1.0 / float(gain)

    n = s * max(h, w) + 1
    if h != w:
        raise ValueError(f"shape must be square for now, got {(h, w)}")
    center, scale = _poly_scale(img.shape)
    gx_img, gy_img = org[:, 0] + xl, org[:, 1] + yl
    yy, xx = np.mgrid[0:h, 0:w]
    basis = np.stack([np.ones((h, w)), xx - (w - 1) / 2.0, yy - (h - 1) / 2.0])
    coeffs = np.zeros((n_terms, n * n), np.float32)
    star_ok = np.ones(n_st, bool)
    pix_ok = valid.copy()
    prev = None
    chi2_red = np.full(n_st, np.nan)
    template = DiscretePSF(np.ones((n, n)), s, integrated=True)
    fwhm_px = None
    it_done = 0
    g_est = inv_gain
    if err_cut is not None:
        var = err_cut**2
    else:
        g0 = 0.0 if inv_gain is None else inv_gain
        var = sky_var[:, None, None] + g0 * np.maximum(data - sky[:, None, None], 0.0)
    for it in range(maxiters):
        it_done = it + 1
        # ---- (b) ePSF update with the stars fixed
        model_bkg = np.einsum("nk,khw->nhw", plane, basis)
        wgt = np.where(pix_ok & star_ok[:, None, None], 1.0 / var, 0.0)
        target = np.where(valid, data - model_bkg, 0.0)
        u = (gx_img - center[0]) / scale[0]
        v = (gy_img - center[1]) / scale[1]
        amp = np.stack([flux * u**a * v**b for a, b in poly_terms(degree)])
        # The first update has no iterate to fit a reference to: it smooths toward zero curvature.
        c_ref = np.zeros_like(coeffs)
        if prior == "moffat" and it > 0:
            got = _moffat_reference_terms(coeffs, n, s, degree)
            if got is not None:
                c_ref[: len(got)] = got
        c_new, n_cg = _solve_coeffs(
            jnp.asarray(coeffs, jnp.float32),
            jnp.asarray(c_ref, jnp.float32),
            jnp.asarray(target.reshape(n_st, -1), jnp.float32),
            jnp.asarray(wgt.reshape(n_st, -1), jnp.float32),
            jnp.asarray(xl, jnp.float32),
            jnp.asarray(yl, jnp.float32),
            jnp.asarray(amp, jnp.float32),
            jnp.float32(smoothness),
            n=n,
            s=s,
            shape=(h, w),
            max_cg=400 if it == 0 else 150,
            cg_tol=jnp.float32(1e-5),
        )
        coeffs, fwhm_px = _pin(np.asarray(c_new), s, n, centre=True)
        coeffs = coeffs.astype(np.float32)
        s0 = _samples(coeffs[0].reshape(n, n), "bspline3")
        change = np.inf if prev is None else np.max(np.abs(s0 - prev)) / s0.max()
        prev = s0
        if change < tol:
            break
        # ---- (a) star fits with the ePSF fixed
        if degree == 0:
            psf = template.replace(coeffs=jnp.asarray(coeffs[0].reshape(n, n)))
            kw = {}
        else:
            psf = PolynomialPSF(
                np.stack([_samples(t.reshape(n, n), "bspline3") for t in coeffs]),
                s,
                degree,
                center,
                scale,
            )
            kw = {"origin": org}
        fit_err = np.sqrt(var)
        res = fit_cutouts(
            data,
            psf,
            xl,
            yl,
            flux,
            error=fit_err,
            mask=~valid,
            background=None,
            max_iter=30,
            bkg=sky,
            **kw,
        )
        xf, yf, ff = res.x_fit[:, 0], res.y_fit[:, 0], res.flux_fit[:, 0]
        good = (
            np.isfinite(xf)
            & np.isfinite(yf)
            & np.isfinite(ff)
            & (ff > 0)
            & (np.abs(xf - (w - 1) / 2.0) < 1.5)
            & (np.abs(yf - (h - 1) / 2.0) < 1.5)
        )
        # Over-relaxed position update. Undersampled data leave the ePSF's sharpness nearly
        # degenerate with pixel-phase-dependent position errors (Anderson & King 2000), and plain
        # alternation crawls along that valley; stepping past the fitted positions (omega < 2,
        # still convergent) roughly halves the number of iterations.
        om = 1.0 if it == 0 else relax
        xl = np.where(good, xl + om * (xf - xl), xl)
        yl = np.where(good, yl + om * (yf - yl), yl)
        flux = np.where(good, ff, flux)
        gx_img, gy_img = org[:, 0] + xl, org[:, 1] + yl

        # ---- noise model, outlier pixels and stars, from the residuals
        u = (gx_img - center[0]) / scale[0]
        v = (gy_img - center[1]) / scale[1]
        amp = np.stack([flux * u**a * v**b for a, b in poly_terms(degree)])
        stars_model = np.asarray(
            _model_pixels(
                jnp.asarray(coeffs),
                jnp.asarray(xl, jnp.float32),
                jnp.asarray(yl, jnp.float32),
                jnp.asarray(amp, jnp.float32),
                n=n,
                s=s,
                shape=(h, w),
            )
        ).reshape(n_st, h, w)
        model = np.einsum("nk,khw->nhw", plane, basis) + stars_model
        resid = np.where(valid, data - model, 0.0)
        if err_cut is None:
            g_inv = inv_gain
            if g_inv is None:
                # var - sky_var ~ model / gain: least squares on the pixels with signal
                sel = valid & (stars_model > 3.0 * np.sqrt(sky_var)[:, None, None])
                sel &= star_ok[:, None, None]
                excess = resid**2 - sky_var[:, None, None]
                num = np.sum(np.where(sel, excess * stars_model, 0.0))
                den = np.sum(np.where(sel, stars_model**2, 0.0))
                g_inv = max(num / den, 0.0) if den > 0 else 0.0
            g_est = g_inv
            var = sky_var[:, None, None] + g_inv * np.maximum(stars_model, 0.0)
        zres = resid / np.sqrt(var)
        pix_ok = valid & (np.abs(zres) <= clip_sigma)
        dof = np.maximum(pix_ok.sum(axis=(1, 2)) - 6, 1)
        chi2_red = np.sum(np.where(pix_ok, zres**2, 0.0), axis=(1, 2)) / dof
        med = np.median(chi2_red[good])
        spread = mad_std(chi2_red[good], axis=0, ignore_nan=True)
        star_ok = good & (chi2_red <= max(med + 5.0 * spread, 1.5 * med))
        if star_ok.sum() < min_stars:
            star_ok = good
    else:
        it_done = maxiters

    # ---- aperture correction from the used stars: large-aperture / fitted flux
    apc = None
    if aperture_radius is not None or normalize == "aperture":
        r_ap = float(aperture_radius) if aperture_radius is not None else h / 2.0
        apc = aperture_correction(
            np.where(bad_img, np.nan, img),
            gx_img[star_ok],
            gy_img[star_ok],
            flux[star_ok],
            r_ap,
            annulus=aperture_annulus,
            mask=bad_img,
            error=err_img,
            gain=1.0 / g_est if g_est else None,
        )
    norm = apc.value if normalize == "aperture" else 1.0

    # ---- result
    arrays = np.stack([_samples(t.reshape(n, n).astype(np.float64), "bspline3") for t in coeffs])
    if degree == 0:
        # samples summing to s^2 / apcor: fitted fluxes come out aperture-corrected
        a0 = arrays[0] * (s * s / arrays[0].sum() / norm)
        out = DiscretePSF(a0, s, integrated=True, normalize=False)
    else:
        out = PolynomialPSF(arrays, s, degree, center, scale, norm=1.0 / norm)
    if not return_stars:
        return out
    tab = EPSFStars()
    tab["x"], tab["y"] = pos[:, 0], pos[:, 1]
    st = status.copy()
    full = lambda a: np.full(len(pos), np.nan) if a is None else a  # noqa: E731
    xo, yo, fo, co = (full(None) for _ in range(4))
    xo[idx_use], yo[idx_use] = gx_img, gy_img
    fo[idx_use], co[idx_use] = flux * norm, chi2_red
    st[idx_use[~star_ok]] = "rejected"
    tab["x_fit"], tab["y_fit"], tab["flux_fit"], tab["chi2_red"] = xo, yo, fo, co
    tab["status"] = st.astype(str)
    tab.meta.update(
        iterations=it_done, degree=degree, fwhm=fwhm_px, oversampling=s, normalize=normalize
    )
    if apc is not None:
        ratio = np.full(len(pos), np.nan)
        ratio[idx_use[star_ok]] = apc.ratio
        tab["apcor_ratio"] = ratio
        tab.meta.update(
            apcor=apc.value,
            apcor_err=apc.error,
            apcor_radius=apc.radius,
            apcor_annulus=apc.annulus,
            apcor_nstars=int(apc.used.sum()),
        )
    return out, tab


# ----------------------------------------------------------------------------------------------
# Star selection


def _catalog_xy_flux(catalog):
    t = catalog
    for xn, yn in (
        ("x_centroid", "y_centroid"),
        ("x", "y"),
        ("xcentroid", "ycentroid"),
        ("x_fit", "y_fit"),
    ):
        if xn in t.colnames and yn in t.colnames:
            x, y = np.asarray(t[xn], float), np.asarray(t[yn], float)
            break
    else:
        raise ValueError(f"catalog has no x/y columns (x_centroid/y_centroid): {t.colnames}")
    for fn in ("flux", "flux_fit", "peak"):
        if fn in t.colnames:
            return x, y, np.asarray(t[fn], float)
    raise ValueError(f"catalog has no flux column: {t.colnames}")


def select_stars(
    image,
    catalog,
    *,
    shape=15,
    n_max: int = 200,
    min_snr: float = 20.0,
    saturation: float | None = None,
    mask=None,
    isolation: float | None = None,
    neighbour_ratio: float = 0.01,
    cells: int = 4,
    shape_clip: float | None = None,
) -> Table:
    """Choose bright, unsaturated, isolated PSF stars spread over the field.

    Parameters
    ----------
    image : (H, W) array
        The image (for NaN/saturation checks near each star).
    catalog : Table
        Sources with ``x_centroid, y_centroid`` (or ``x, y``), ``flux`` and optionally ``snr``
        (e.g. from :func:`jaxphot.detection.find_stars`).
    shape : int
        Cutout size (pixels) the stars will be fitted in; stars closer than ``shape // 2`` to an
        edge are dropped.
    n_max : int
        Most stars returned.
    min_snr : float
        Minimum ``snr`` (ignored when the catalog has no ``snr`` column).
    saturation : float, optional
        Stars with a pixel >= this within 2 px are dropped.
    mask : (H, W) bool array, optional
        Pixels to avoid (like NaNs): a star with any within 1 px is dropped.
    isolation : float, optional
        Radius (pixels) within which a neighbour brighter than ``neighbour_ratio`` times the star
        disqualifies it. Default: ``shape / 2 * sqrt(2)`` (the cutout's corner). Any *brighter*
        neighbour within twice that radius also disqualifies it.
    neighbour_ratio : float
        See ``isolation``.
    cells : int
        The field is divided into ``cells x cells`` cells, and stars are taken round-robin from
        them, brightest first, so that spatial variations are constrained everywhere.
    shape_clip : float, optional
        Candidates whose ``sharpness``, ``roundness1`` or ``roundness2`` (when the catalog has
        them, as :func:`~jaxphot.detection.find_stars`'s does) lie more than ``shape_clip``
        robust standard deviations from the candidates' median are dropped: blends, extended
        and saturated sources. They still count as neighbours. None: no cut. Off by default:
        measured on the GLIMPSE image, a cut at 3 made the catalog-matched flux scatter of
        ``--psf auto`` worse (5.2 -> 5.8 % with a single build, 4.7 -> 5.0 % with neighbours
        subtracted).

    Returns
    -------
    Table
        The selected rows of ``catalog`` (brightest first within each round), with an added
        ``psf_rank`` column.
    """
    img = np.asarray(image, np.float64)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {img.shape}")
    x, y, f = _catalog_xy_flux(catalog)
    H, W = img.shape
    h, w = _odd_shape(shape)
    r_iso = float(isolation) if isolation is not None else max(h, w) / 2.0 * math.sqrt(2.0)
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(f) & (f > 0)
    xi, yi = np.rint(np.where(ok, x, 0)).astype(int), np.rint(np.where(ok, y, 0)).astype(int)
    ok &= (xi - w // 2 >= 0) & (yi - h // 2 >= 0) & (xi + w // 2 < W) & (yi + h // 2 < H)
    if "snr" in catalog.colnames:
        ok &= np.asarray(catalog["snr"], float) >= min_snr
    bad_img = ~np.isfinite(img)
    if mask is not None:
        bad_img |= np.asarray(mask, bool)
    d = np.arange(-2, 3)
    rr = np.clip(yi[:, None, None] + d[None, :, None], 0, H - 1)
    cc = np.clip(xi[:, None, None] + d[None, None, :], 0, W - 1)
    near = bad_img[rr, cc][:, 1:4, 1:4].any(axis=(1, 2))
    ok &= ~near
    if saturation is not None:
        ok &= ~(np.nan_to_num(img[rr, cc], nan=-np.inf) >= saturation).any(axis=(1, 2))
    # isolation: pairwise distances (chunked to bound memory; no Python loop over stars)
    fin = np.isfinite(x) & np.isfinite(y) & np.isfinite(f)
    xs, ys, fs = x[fin], y[fin], f[fin]
    crowded = np.zeros(len(x), bool)
    idx = np.nonzero(ok)[0]
    step = max(1, 4_000_000 // max(len(xs), 1))
    for start in range(0, len(idx), step):
        sub = idx[start : start + step]
        d2 = (x[sub, None] - xs[None]) ** 2 + (y[sub, None] - ys[None]) ** 2
        self_ = d2 < 1e-6
        close = (d2 < r_iso**2) & (fs[None] > neighbour_ratio * f[sub, None]) & ~self_
        bright = (d2 < (2 * r_iso) ** 2) & (fs[None] > f[sub, None]) & ~self_
        crowded[sub] = close.any(1) | bright.any(1)
    ok &= ~crowded
    if shape_clip is not None and ok.sum() >= 5:
        for col in ("sharpness", "roundness1", "roundness2"):
            if col in catalog.colnames:
                v = np.asarray(catalog[col], float)
                med = np.median(v[ok])
                spread = max(float(mad_std(v[ok], axis=0, ignore_nan=True)), 1e-6)
                ok &= np.abs(v - med) <= shape_clip * spread
    sel = np.nonzero(ok)[0]
    if sel.size == 0:
        return catalog[sel]
    cell = np.clip((x[sel] / W * cells).astype(int), 0, cells - 1) * cells + np.clip(
        (y[sel] / H * cells).astype(int), 0, cells - 1
    )
    order = np.lexsort((-f[sel], cell))  # by cell, brightest first
    sc = cell[order]
    first = np.searchsorted(sc, sc, side="left")
    rank = np.arange(sc.size) - first  # rank of each star within its cell
    pick = order[np.lexsort((-f[sel][order], rank))][:n_max]
    out = catalog[sel[pick]]
    out["psf_rank"] = np.arange(len(out))
    return out


def build_epsf_from_image(
    image,
    *,
    fwhm_guess: float | None = None,
    oversampling: int = 4,
    shape=None,
    threshold: float = 10.0,
    n_max: int = 200,
    degree: int = 0,
    error=None,
    mask=None,
    gain: float | None = None,
    saturation: float | None = None,
    min_snr: float = 20.0,
    isolation: float | None = None,
    neighbour_ratio: float = 0.01,
    neighbour_passes: int = 1,
    return_stars: bool = False,
    **build_kwargs,
):
    """Detection -> star selection -> :func:`build_epsf`, for ``jaxphot epsf`` and ``--psf auto``.

    Parameters
    ----------
    image : (H, W) array
        The image; NaNs are masked.
    fwhm_guess : float, optional
        FWHM (pixels) for detection. When None, the image is searched with a 2.5 px kernel and
        the median FWHM of the brightest isolated stars (from their adaptive, Gaussian-weighted
        second moments about a local sky) is used.
    oversampling : int
        ePSF oversampling.
    shape : int, optional
        Cutout size (odd pixels); default ``max(11, 2 * ceil(3 * fwhm) + 1)``.
    threshold : float
        Detection threshold in sigma.
    n_max : int
        Most PSF stars used.
    degree : {0, 1, 2}
        Spatial variation (see :func:`build_epsf`).
    error, mask, gain, saturation
        As for :func:`build_epsf`.
    min_snr : float
        Minimum detection S/N of PSF stars.
    isolation, neighbour_ratio
        As for :func:`select_stars` (radius in pixels; flux ratio).
    neighbour_passes : int
        Rebuilds after subtracting the neighbours (DAOPHOT's approach): the detections (down to
        5 sigma) near the PSF stars are fitted with the current ePSF and subtracted from the
        image, and the ePSF is built again from the same stars. 0: a single build. Measured on
        the GLIMPSE image (default 13 px box): flux scatter against the catalog 5.2 -> 4.8 %,
        median 0.974 -> 0.982, encircled-energy error at 2-6 px (vs the IRAC PSF) at most 3.7
        -> 2.3 %. (An earlier variant, with neighbours detected with the FWHM guess rather than
        the first ePSF's, did not help with 11 or 15 px boxes: 5.0 -> 5.7 %, 5.2 -> 5.4 %.)
    return_stars : bool
        Also return the :class:`EPSFStars` table.
    **build_kwargs
        Passed to :func:`build_epsf` (``smoothness``, ``maxiters``, ...).

    Returns
    -------
    DiscretePSF or PolynomialPSF (and EPSFStars)
    """
    from .background import estimate_background
    from .detection import find_stars

    img = np.asarray(image, np.float64)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {img.shape}")
    bad = ~np.isfinite(img) if mask is None else (~np.isfinite(img) | np.asarray(mask, bool))
    box = int(min(64, max(16, min(img.shape) // 8)))
    bkg = estimate_background(np.where(bad, np.nan, img), box_size=box)
    level, rms = np.asarray(bkg.level), np.asarray(bkg.rms)
    sub = img - level
    if fwhm_guess is None:
        fwhm_guess = _estimate_fwhm(sub, rms, bad)
    fwhm = float(fwhm_guess)
    if not fwhm > 0:
        raise ValueError(f"fwhm_guess must be a positive number of pixels, got {fwhm_guess!r}")
    if shape is None:
        # 3 FWHM each side: the GLIMPSE stars' flux scatter against the catalog was 5.0 / 4.8 /
        # 5.2 % with 11 / 13 / 15 px boxes at FWHM 1.9 px, and the median 0.94 / 0.98 / 0.98
        # (a small box leaves the PSF's wings under its rim level)
        shape = max(11, 2 * math.ceil(3.0 * fwhm) + 1)
    cat = find_stars(np.where(bad, np.nan, sub), fwhm, threshold=threshold, rms=rms, mask=bad)
    if len(cat) == 0:
        raise ValueError("no stars detected in the image: cannot build an ePSF")
    chosen = select_stars(
        sub,
        cat,
        shape=shape,
        n_max=n_max,
        min_snr=min_snr,
        mask=bad,
        saturation=None if saturation is None else saturation - np.nanmedian(level),
        isolation=isolation,
        neighbour_ratio=neighbour_ratio,
    )
    if len(chosen) < build_kwargs.get("min_stars", 5):
        raise ValueError(
            f"too few isolated, unsaturated PSF stars: {len(chosen)} selected out of "
            f"{len(cat)} detections (need >= {build_kwargs.get('min_stars', 5)})"
        )
    pos = np.stack([np.asarray(chosen["x_centroid"]), np.asarray(chosen["y_centroid"])], 1)
    work = img
    if neighbour_passes > 0:
        hw = _odd_shape(shape)
        for _ in range(int(neighbour_passes)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", EPSFWarning)
                psf0, st0 = build_epsf(
                    work, pos, oversampling=oversampling, shape=shape, error=error, mask=bad,
                    gain=gain, saturation=saturation, degree=0, return_stars=True, **build_kwargs,
                )  # (a constant ePSF is enough to model the neighbours)
            # Neighbours fainter than the selection's catalog still broaden the stack: detect
            # down to 5 sigma, with the ePSF's own FWHM (a too-narrow kernel, e.g. fwhm_guess 1.4
            # for the GLIMPSE image's 1.9, splits stars into knots that get over-subtracted).
            fw0 = float(st0.meta["fwhm"])
            deep = find_stars(
                np.where(bad, np.nan, sub), fw0, threshold=min(5.0, threshold), rms=rms, mask=bad
            )
            cat_xy = np.stack([np.asarray(deep["x_centroid"]), np.asarray(deep["y_centroid"])], 1)
            work = level + _subtract_neighbours(sub, bad, psf0, pos, cat_xy, hw, 1.5 * fw0)
    return build_epsf(
        work,
        pos,
        oversampling=oversampling,
        shape=shape,
        error=error,
        mask=bad,
        gain=gain,
        saturation=saturation,
        degree=degree,
        return_stars=return_stars,
        **build_kwargs,
    )


def _subtract_neighbours(sub, bad, psf, psf_xy, cat_xy, shape, min_sep: float, k_max: int = 12):
    """Image ``sub`` less the detections inside the PSF stars' boxes, fitted with ``psf``.

    DAOPHOT's approach: each PSF star's ``shape`` box is fitted with the star and the detections
    inside it at once (a constant sky, positions and fluxes free), and the neighbours' models
    are subtracted from the image (a neighbour in several boxes, once, with the fit from the
    box of the nearest PSF star). Fitting the neighbours jointly with the star matters: alone,
    each takes up the star's wing light and is over-subtracted, which sharpens the ePSF.

    Parameters
    ----------
    sub : (H, W) array
        Background-subtracted image (image units).
    bad : (H, W) bool array
        Pixels to ignore.
    psf : DiscretePSF
        The current ePSF (unit flux).
    psf_xy, cat_xy : (M, 2), (D, 2) arrays
        PSF-star and detection positions (pixels).
    shape : (int, int)
        Box size (pixels) of the ePSF build.
    min_sep : float
        Detections closer than this (pixels) to a PSF star are not neighbours: unresolved
        from it, or knots of its own diffraction pattern.
    k_max : int
        Most neighbours per box (the nearest).

    Returns
    -------
    (H, W) array
        ``sub`` with the neighbours' models subtracted.
    """
    h, w = shape
    H, W = sub.shape
    m = len(psf_xy)
    dx = cat_xy[None, :, 0] - psf_xy[:, None, 0]
    dy = cat_xy[None, :, 1] - psf_xy[:, None, 1]
    d = np.hypot(dx, dy)  # (M, D)
    inside = (np.abs(dx) < w / 2.0) & (np.abs(dy) < h / 2.0) & (d >= min_sep)
    # detections within min_sep of any PSF star are that star
    inside &= ~(d < min_sep).any(0)[None, :]
    n_nb = min(int(inside.sum(1).max()) if m else 0, k_max)
    if n_nb == 0:
        return sub
    order = np.argsort(np.where(inside, d, np.inf), axis=1)[:, :n_nb]  # nearest first
    act_nb = np.take_along_axis(inside, order, 1)
    ox = np.rint(psf_xy[:, 0]).astype(int) - w // 2
    oy = np.rint(psf_xy[:, 1]).astype(int) - h // 2
    rows = np.clip(oy[:, None] + np.arange(h), 0, H - 1)
    cols = np.clip(ox[:, None] + np.arange(w), 0, W - 1)
    cut = sub[rows[:, :, None], cols[:, None, :]]
    msk = bad[rows[:, :, None], cols[:, None, :]] | ~np.isfinite(cut)
    xs = np.concatenate([psf_xy[:, :1], cat_xy[order, 0]], 1) - ox[:, None]
    ys = np.concatenate([psf_xy[:, 1:], cat_xy[order, 1]], 1) - oy[:, None]
    act = np.concatenate([np.ones((m, 1), bool), act_nb], 1)
    res = fit_cutouts(
        np.where(msk, 0.0, cut),
        psf,
        np.where(act, xs, -100.0),
        np.where(act, ys, -100.0),
        error=np.ones_like(cut),
        mask=msk,
        background="constant",
        max_iter=30,
        active=act,
    )
    xf = np.asarray(res.x_fit).reshape(m, -1)[:, 1:] + ox[:, None]
    yf = np.asarray(res.y_fit).reshape(m, -1)[:, 1:] + oy[:, None]
    ff = np.asarray(res.flux_fit).reshape(m, -1)[:, 1:]
    # a fit that ran away (onto the PSF star, or negative) is not subtracted
    ok = act_nb & np.isfinite(xf) & np.isfinite(yf) & np.isfinite(ff) & (ff > 0)
    ok &= np.hypot(xf - cat_xy[order, 0], yf - cat_xy[order, 1]) < 1.5
    # Each neighbour once, from the box of its nearest PSF star (stable sort: ties keep box order).
    ii, jj = np.nonzero(ok)
    kk = order[ii, jj]
    first = np.lexsort((d[ii, kk], kk))
    first = first[np.r_[True, kk[first][1:] != kk[first][:-1]]] if len(first) else first
    ii, jj = ii[first], jj[first]
    st, sx0, sy0 = _stamps(psf, xf[ii, jj], yf[ii, jj], ff[ii, jj], max(h, w) // 2)
    return np.asarray(sub, np.float64) - _scatter_stamps((H, W), st, sx0, sy0)


def _estimate_fwhm(sub, rms, bad) -> float:
    """Median FWHM (pixels) of the brightest isolated detections, from adaptive moments.

    Each star's second moment is measured with a Gaussian weight matched to the star (iterated,
    as in adaptive-moment shape measurement) about the median of its 11 x 11 cutout's 2-pixel
    rim: plain moments of a 9 x 9 box over-weight neighbours and a nebulous sky. Measured:
    Spitzer/IRAC GLIMPSE (ePSF FWHM ~1.8 px) 1.88 px (2.70 with plain moments); Moffat(beta=4)
    FWHM 1.5/2/3/4 px: 1.69/2.21/3.22/4.02 (plain: 2.00/2.59/3.57/4.26).
    """
    from .detection import find_stars

    cat = find_stars(np.where(bad, np.nan, sub), 2.5, threshold=10.0, rms=rms, mask=bad)
    if len(cat) < 3:
        raise ValueError("fewer than 3 stars detected: give fwhm_guess")
    chosen = select_stars(sub, cat, shape=11, n_max=50, min_snr=20.0, mask=bad)
    if len(chosen) < 3:
        chosen = cat[np.argsort(-np.asarray(cat["flux"]))[:20]]
    x = np.rint(np.asarray(chosen["x_centroid"])).astype(int)
    y = np.rint(np.asarray(chosen["y_centroid"])).astype(int)
    H, W = sub.shape
    d = np.arange(-5, 6)
    rr = np.clip(y[:, None, None] + d[None, :, None], 0, H - 1)
    cc = np.clip(x[:, None, None] + d[None, None, :], 0, W - 1)
    c = np.where(bad[rr, cc], np.nan, sub[rr, cc])
    rim = np.ones((d.size, d.size), bool)
    rim[2:-2, 2:-2] = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        c = np.nan_to_num(c - np.nanmedian(c[:, rim], axis=1)[:, None, None])
    xx, yy = np.meshgrid(d, d)
    sig = np.ones(len(c))
    mx, my = np.zeros(len(c)), np.zeros(len(c))
    for _ in range(30):
        r2 = (xx - mx[:, None, None]) ** 2 + (yy - my[:, None, None]) ** 2
        cw = c * np.exp(-r2 / (2.0 * sig[:, None, None] ** 2))
        tot = cw.sum(axis=(1, 2))
        tot = np.where(tot > 0, tot, np.nan)
        mx = np.nan_to_num((cw * xx).sum((1, 2)) / tot)
        my = np.nan_to_num((cw * yy).sum((1, 2)) / tot)
        r2 = (xx - mx[:, None, None]) ** 2 + (yy - my[:, None, None]) ** 2
        var = (cw * r2).sum((1, 2)) / tot / 2.0
        # a Gaussian of sigma s weighted by one of sigma s has weighted variance s^2 / 2
        sig = np.sqrt(np.clip(np.nan_to_num(2.0 * var, nan=1.0), 0.09, 25.0))
    # Moments of a pixelated Gaussian include the pixel's own 1/12 px^2 variance.
    sig = np.sqrt(np.clip(sig**2 - 1.0 / 12.0, 0.09, None))
    return float(np.median(sig) * 2.3548)


# ----------------------------------------------------------------------------------------------
# Gridded (spatially varying) ePSFs


def build_epsf_grid(
    image,
    positions,
    *,
    grid=(3, 3),
    min_region_stars: int = 60,
    extrapolate: bool = False,
    return_stars: bool = False,
    **build_kwargs,
):
    """A spatially varying ePSF: constant ePSFs built per region, bilinearly interpolated.

    The image is split into ``grid = (ny, nx)`` equal rectangular regions; :func:`build_epsf`
    (``degree = 0``) is run on each region's stars, and the ePSFs become the nodes of a
    :class:`~jaxphot.psf_grid.GriddedPSF` placed at the mean fitted position of each grid column
    (x) and row (y) of the stars used. Unlike a polynomial (:func:`build_epsf` with
    ``degree``), this follows PSF variations on the scale of the regions, e.g. the node-to-node
    variation of the HST WFC3/UVIS library PSFs, at the cost of needing more stars
    (``min_region_stars`` in every region) and ``ny * nx`` builds.

    Parameters
    ----------
    image : (H, W) array
        Image in counts (see :func:`build_epsf`).
    positions : (N, 2) array or Table
        Approximate (x, y) of the PSF stars over the whole image (pixels, 0-based).
    grid : (int, int)
        Number of regions along y and x.
    min_region_stars : int
        Fewest stars (positions whose cutout lies on the image) accepted in a region. While a
        region has fewer, the grid is coarsened (the axis with more regions first, x on a tie)
        with an :class:`EPSFWarning`, down to one region (a constant ePSF on a 1 x 1 grid).
    extrapolate : bool
        Continue the variation linearly over the half region between the outermost nodes and the
        image edges (``GriddedPSF(extrapolate=True)``) instead of holding the edge nodes' ePSFs.
        On the WFC3/UVIS field (4 x 4 regions) it brought the worst image-corner core rms from
        1.2 % to 1.0 % but raised the x position pulls from 1.12 to 1.14, so it is off by default.
    return_stars : bool
        Also return the regions' :class:`EPSFStars` tables stacked, with columns ``region``
        (``j * nx + i`` for row j, column i) and ``index`` (row of ``positions``), and in
        ``meta``: ``grid`` (ny, nx), ``grid_x``, ``grid_y`` (pixels), ``nstars`` ((ny, nx) used
        stars), ``apcor`` ((ny, nx) array, when measured).
    **build_kwargs
        Passed to :func:`build_epsf` for every region (``oversampling``, ``shape``, ``gain``,
        ``normalize``, ``aperture_radius``, ...); ``degree`` must be 0 if given.

    Returns
    -------
    psf : GriddedPSF
        Node (j, i) is region (j, i)'s ePSF. With ``normalize="aperture"`` each node keeps its own
        aperture correction (``norm = 1 / apcor``, interpolated between nodes), so fitted fluxes
        are total fluxes everywhere.
    stars : EPSFStars
        Only with ``return_stars=True``.

    Raises
    ------
    ValueError
        Bad arguments, or fewer usable stars in a region than :func:`build_epsf` accepts.
    """
    from .psf_grid import GriddedPSF

    img = np.asarray(image, np.float64)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {img.shape}")
    pos = _as_positions(positions)
    if build_kwargs.pop("degree", 0) != 0:
        raise ValueError("build_epsf_grid builds constant ePSFs per region: degree must be 0")
    try:
        ny, nx = (int(v) for v in grid)
    except (TypeError, ValueError):
        raise ValueError(f"grid must be (ny, nx) positive integers, got {grid!r}") from None
    if ny < 1 or nx < 1:
        raise ValueError(f"grid must be (ny, nx) positive integers, got {grid!r}")
    H, W = img.shape
    h, w = _odd_shape(build_kwargs.get("shape", 15))
    # the stars whose cutout fits on the image are the ones build_epsf can use
    ok = np.all(np.isfinite(pos), axis=1)
    ok &= (pos[:, 0] >= w // 2) & (pos[:, 0] <= W - 1 - w // 2)
    ok &= (pos[:, 1] >= h // 2) & (pos[:, 1] <= H - 1 - h // 2)

    def assign(ny, nx):
        p = np.where(ok[:, None], pos, 0.0)
        ix = np.clip((p[:, 0] + 0.5) * nx // W, 0, nx - 1).astype(int)
        iy = np.clip((p[:, 1] + 0.5) * ny // H, 0, ny - 1).astype(int)
        counts = np.zeros((ny, nx), int)
        np.add.at(counts, (iy[ok], ix[ok]), 1)
        return iy, ix, counts

    asked = (ny, nx)
    iy, ix, counts = assign(ny, nx)
    while counts.min() < min_region_stars and ny * nx > 1:
        if nx >= ny:
            nx -= 1
        else:
            ny -= 1
        iy, ix, counts = assign(ny, nx)
    if (ny, nx) != asked:
        warnings.warn(
            f"ePSF grid lowered from {asked[0]}x{asked[1]} to {ny}x{nx}: a region had fewer than "
            f"{min_region_stars} usable PSF stars ({int(ok.sum())} in all)",
            EPSFWarning,
            stacklevel=2,
        )

    arrays, nused, node_xy, tabs = [], np.zeros((ny, nx), int), [], []
    apcor, measured = np.ones((ny, nx)), np.full((ny, nx), np.nan)
    for j in range(ny):
        for i in range(nx):
            sel = np.nonzero(ok & (iy == j) & (ix == i))[0]
            psf, st = build_epsf(img, pos[sel], return_stars=True, **build_kwargs)
            used = np.asarray(st["status"]) == "used"
            arrays.append(psf.array)
            measured[j, i] = st.meta.get("apcor", np.nan)
            if st.meta["normalize"] == "aperture":
                apcor[j, i] = measured[j, i]
            nused[j, i] = int(used.sum())
            # the node sits where the region's used stars are, on average
            node_xy.append(
                (np.mean(np.asarray(st["x_fit"])[used]), np.mean(np.asarray(st["y_fit"])[used]))
            )
            st["region"] = np.full(len(st), j * nx + i)
            st["index"] = sel
            tabs.append(st)
    nodes = np.asarray(node_xy).reshape(ny, nx, 2)
    # a GriddedPSF needs a rectangular grid: the columns' mean x and the rows' mean y
    gx, gy = nodes[..., 0].mean(axis=0), nodes[..., 1].mean(axis=1)
    s = int(build_kwargs.get("oversampling", 4))
    out = GriddedPSF(
        np.asarray(arrays).reshape(ny, nx, *arrays[0].shape),
        gx,
        gy,
        s,
        integrated=True,
        norm=1.0 / apcor,
        extrapolate=extrapolate,
    )
    if not return_stars:
        return out
    from astropy.table import vstack

    tab = EPSFStars(vstack(tabs, metadata_conflicts="silent"))
    for k in ("apcor", "apcor_err", "apcor_nstars"):
        tab.meta.pop(k, None)
    tab.meta.update(grid=(ny, nx), grid_x=gx, grid_y=gy, nstars=nused)
    if np.isfinite(measured).all():
        tab.meta["apcor"] = measured  # per node; folded into the nodes with normalize="aperture"
    return out, tab
