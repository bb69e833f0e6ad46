"""PSF and PRF models.

Every model is an immutable JAX pytree with one method that matters::

    prf = psf.evaluate(x, y, shape)     # (H, W) + x.shape array, pixel-integrated PRF

for stars at ``(x, y)`` (pixels, in the frame of an ``(H, W)`` cutout whose pixel ``[j, i]`` is
centred at ``(i, j)``). ``x`` and ``y`` may be scalars or arrays of any shape; the batch axes come
*last* in the result. Keeping the batch axis innermost lets XLA vectorise across stars (SIMD on
CPUs, coalesced loads on GPUs), which is several times faster than vmapping over stars. The
PRF sums to the PSF's volume over an infinite detector: 1 for a perfect detector. Parameters
stored as leaves (``fwhm``, ``beta``, the PSF matrix) can be differentiated, vmapped or fitted;
configuration (oversampling, kernel) is static.

Models
------
:class:`GaussianPRF`
    Circular or elliptical Gaussian integrated *exactly* over square pixels with erf differences
    (separable when not rotated).
:class:`MoffatPSF`
    Moffat profile integrated over each pixel on an ``n x n`` Gauss-Legendre sub-pixel grid.
:class:`DiscretePSF`
    A matrix PSF (MATPHOT, or an ePSF) shifted by separable interpolation; see its docstring.
"""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ._pytree import pytree
from .kernels import KERNELS, bspline_prefilter, kernel_weights

__all__ = ["GaussianPRF", "MoffatPSF", "DiscretePSF", "FWHM_TO_SIGMA"]

FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
_SQRT2 = math.sqrt(2.0)
_HIGHEST = jax.lax.Precision.HIGHEST  # avoid TF32 matmuls on GPUs


def _trail(a, n_batch: int):
    """Append ``n_batch`` unit axes so that ``a`` broadcasts against trailing batch axes."""
    return a.reshape(a.shape + (1,) * n_batch)


def _pixel_edges_profile(x0, sigma, n, dtype):
    """Fraction of a 1-D Gaussian (centre x0, width sigma) in each of pixels 0..n-1: (n,) + x0.shape.

    Uses ``0.5 * (erfc(lo) - erfc(hi))`` on the side of the pixel centre away from the star's
    centre, mirrored for pixels on the other side, so there is no cancellation in the tails even
    in float32. Each pixel edge needs two erfc evaluations, shared by neighbouring pixels.
    """
    x0 = jnp.asarray(x0, dtype)
    edges = (_trail(jnp.arange(n + 1, dtype=dtype), x0.ndim) - 0.5 - x0) / (sigma * _SQRT2)
    up, down = jax.scipy.special.erfc(edges), jax.scipy.special.erfc(-edges)
    right = 0.5 * (up[:-1] - up[1:])  # accurate for pixels right of the centre
    left = 0.5 * (down[1:] - down[:-1])  # accurate for pixels left of the centre
    return jnp.where(edges[:-1] + edges[1:] > 0, right, left)


def _axis_derivatives(f, x0, order: int):
    """``f(x0)`` and its first ``order`` (1 or 2) derivatives in ``x0``, by forward-mode AD.

    ``f`` maps positions to 1-D profiles or interpolation matrices; the derivatives come from
    differentiating the kernel itself (never from finite differences).
    """
    one = jnp.ones_like(x0)
    if order == 1:
        return jax.jvp(f, (x0,), (one,))
    (v, d1), (_, d2) = jax.jvp(lambda z: jax.jvp(f, (z,), (one,)), (x0,), (one,))
    return v, d1, d2


def _separable_derivatives(ax, ay, combine, order: int):
    """PRF and its position derivatives from 1-D factors: ``combine(Y, X)`` builds an image.

    ``ax`` and ``ay`` are tuples of the x and y factors and their derivatives. Returns
    ``(prf, d/dx, d/dy)`` and, for ``order=2``, ``(d2/dx2, d2/dxdy, d2/dy2)`` as well.
    """
    out = [combine(ay[0], ax[0]), combine(ay[0], ax[1]), combine(ay[1], ax[0])]
    if order == 2:
        out += [combine(ay[0], ax[2]), combine(ay[1], ax[1]), combine(ay[2], ax[0])]
    return tuple(out)


def _gauss_legendre(n: int):
    """Nodes in [-1/2, 1/2] and weights summing to 1 for n-point Gauss-Legendre integration."""
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return nodes / 2.0, weights / 2.0


def _integrate_over_pixels(density, x0, y0, shape, n_sub, dtype):
    """Integrate a 2-D surface density ``density(dx, dy)`` over every pixel of an (H, W) grid.

    Uses an ``n_sub x n_sub`` Gauss-Legendre rule inside each pixel. The sub-pixel grid exists
    only inside this function: callers (and the Jacobian) see pixel values, (H, W) + x0.shape.
    """
    h, w = shape
    x0, y0 = jnp.asarray(x0, dtype), jnp.asarray(y0, dtype)
    nb = x0.ndim
    nodes, weights = _gauss_legendre(n_sub)
    nodes, weights = jnp.asarray(nodes, dtype), jnp.asarray(weights, dtype)
    ux = _trail(jnp.arange(w, dtype=dtype)[:, None] + nodes[None, :], nb) - x0  # (W, n, ...)
    uy = _trail(jnp.arange(h, dtype=dtype)[:, None] + nodes[None, :], nb) - y0  # (H, n, ...)
    f = density(ux[None, None], uy[:, :, None, None])  # (H, n, W, n, ...)
    wy = _trail(weights, 1 + nb)  # weights along axis 1 (after the x nodes are summed)
    wx = _trail(weights, nb)  # weights along axis 3
    return jnp.sum(jnp.sum(f * wx, axis=3) * wy, axis=1)


def _dtype_of(*xs):
    """Floating dtype of the coordinates: float64 only when JAX x64 is on and they are float64."""
    return jnp.result_type(*xs, float)


@pytree(data_fields=("fwhm", "fwhm_y", "theta"), meta_fields=("rotated", "subsample"))
class GaussianPRF:
    """Gaussian PSF integrated exactly over square pixels.

    Parameters
    ----------
    fwhm : float
        Full width at half maximum along x (pixels). For a circular Gaussian this is the FWHM.
    fwhm_y : float, optional
        FWHM along y (pixels) for an elliptical Gaussian. Default: ``fwhm``.
    theta : float, optional
        Rotation of the x axis of the ellipse, counter-clockwise, in radians. When given, the
        profile is no longer separable and is integrated on a ``subsample x subsample``
        Gauss-Legendre grid per pixel instead of with exact erf differences.
    subsample : int
        Sub-pixel rule order for the rotated case only.
    """

    def __init__(self, fwhm, fwhm_y=None, theta=None, subsample: int = 6):
        fwhm = _positive("fwhm", fwhm)
        object.__setattr__(self, "fwhm", fwhm)
        object.__setattr__(self, "fwhm_y", fwhm if fwhm_y is None else _positive("fwhm_y", fwhm_y))
        object.__setattr__(self, "theta", 0.0 if theta is None else float(theta))
        object.__setattr__(self, "rotated", theta is not None)
        object.__setattr__(self, "subsample", int(subsample))

    def evaluate(self, x, y, shape):
        """Pixel-integrated PRF of unit-flux stars at (x, y) on an (H, W) grid: (H, W) + x.shape."""
        dtype = _dtype_of(x, y)
        sx = jnp.asarray(self.fwhm, dtype) * FWHM_TO_SIGMA
        sy = jnp.asarray(self.fwhm_y, dtype) * FWHM_TO_SIGMA
        if not self.rotated:
            gx = _pixel_edges_profile(x, sx, shape[1], dtype)
            gy = _pixel_edges_profile(y, sy, shape[0], dtype)
            return gy[:, None] * gx[None, :]  # separable: (H, 1, ...) * (1, W, ...)
        c, s = jnp.cos(self.theta), jnp.sin(self.theta)

        def density(dx, dy):
            u = (c * dx + s * dy) / sx
            v = (-s * dx + c * dy) / sy
            return jnp.exp(-0.5 * (u * u + v * v)) / (2.0 * jnp.pi * sx * sy)

        return _integrate_over_pixels(density, x, y, shape, self.subsample, dtype)

    def evaluate_derivatives(self, x, y, shape, order: int = 1):
        """PRF and its derivatives in the star position (see :func:`jaxphot.scene.linearize`)."""
        if self.rotated:
            return None  # not separable: the scene falls back to generic autodiff
        dtype = _dtype_of(x, y)
        x, y = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
        sx = jnp.asarray(self.fwhm, dtype) * FWHM_TO_SIGMA
        sy = jnp.asarray(self.fwhm_y, dtype) * FWHM_TO_SIGMA
        ax = _axis_derivatives(lambda a: _pixel_edges_profile(a, sx, shape[1], dtype), x, order)
        ay = _axis_derivatives(lambda b: _pixel_edges_profile(b, sy, shape[0], dtype), y, order)
        return _separable_derivatives(ax, ay, lambda gy, gx: gy[:, None] * gx[None, :], order)

    def scaled(self, factor: int) -> GaussianPRF:
        """The same PSF in units of 1/factor pixel (for sub-pixel detector models)."""
        return self.replace(fwhm=self.fwhm * factor, fwhm_y=self.fwhm_y * factor)

    def __repr__(self):
        return f"GaussianPRF(fwhm={self.fwhm}, fwhm_y={self.fwhm_y}, theta={self.theta})"


@pytree(data_fields=("fwhm", "beta"), meta_fields=("subsample",))
class MoffatPSF:
    """Circular Moffat PSF, ``(beta-1)/(pi alpha^2) (1 + r^2/alpha^2)^-beta``, unit volume.

    Parameters
    ----------
    fwhm : float
        Full width at half maximum (pixels); ``alpha = fwhm / (2 sqrt(2^(1/beta) - 1))``.
    beta : float
        Power-law index, > 1.
    subsample : int
        Gauss-Legendre points per pixel axis used to integrate over each pixel. The default, 5,
        integrates every pixel to better than 1e-4 of the total flux for FWHM >= 1 px and
        beta >= 1.5 (``tests/test_psf.py`` checks this against a 32-point rule).
    """

    def __init__(self, fwhm, beta=2.5, subsample: int = 5):
        object.__setattr__(self, "fwhm", _positive("fwhm", fwhm))
        beta = float(beta)
        if not beta > 1.0:
            raise ValueError(f"beta must be > 1 for a normalisable Moffat profile, got {beta}")
        object.__setattr__(self, "beta", beta)
        object.__setattr__(self, "subsample", int(subsample))

    def evaluate(self, x, y, shape):
        """Pixel-integrated PRF of unit-flux stars at (x, y) on an (H, W) grid: (H, W) + x.shape."""
        dtype = _dtype_of(x, y)
        beta = jnp.asarray(self.beta, dtype)
        alpha = jnp.asarray(self.fwhm, dtype) / (2.0 * jnp.sqrt(2.0 ** (1.0 / beta) - 1.0))

        def density(dx, dy):
            r2 = (dx * dx + dy * dy) / (alpha * alpha)
            return (beta - 1.0) / (jnp.pi * alpha * alpha) * (1.0 + r2) ** (-beta)

        return _integrate_over_pixels(density, x, y, shape, self.subsample, dtype)

    def scaled(self, factor: int) -> MoffatPSF:
        """The same PSF in units of 1/factor pixel (for sub-pixel detector models)."""
        return self.replace(fwhm=self.fwhm * factor)

    def __repr__(self):
        return f"MoffatPSF(fwhm={self.fwhm}, beta={self.beta})"


def interpolation_matrix(kernel, oversampling, integrated, x0, n_pix, n_arr, dtype):
    """Weights mapping the samples of a discrete PSF to detector pixels along one axis.

    Returns (n_pix, n_arr) + x0.shape: entry ``[i, m]`` is the weight of array sample ``m`` in
    detector pixel ``i`` for a star at ``x0`` — the kernel weights at the pixel centre
    (``integrated=True``) or summed over the pixel's ``oversampling`` sub-pixel centres.
    """
    s = oversampling
    nb = jnp.ndim(x0)
    centre = (n_arr - 1) / 2.0
    pix = jnp.arange(n_pix, dtype=dtype)
    if integrated:
        u = pix[:, None]  # sample the PRF at the pixel centre
    else:
        sub = (jnp.arange(s, dtype=dtype) + 0.5) / s - 0.5
        u = pix[:, None] + sub[None, :]  # the s sub-pixel centres in each pixel
    tau = s * (_trail(u, nb) - x0)  # (n_pix, n_sub, ...): fractional array index - centre
    m = _trail(jnp.arange(n_arr, dtype=dtype) - centre, nb)
    t = tau[:, :, None] - m[None, None]  # (n_pix, n_sub, n_arr, ...)
    return kernel_weights(kernel, t, axis=2).sum(axis=1)


@pytree(data_fields=("coeffs",), meta_fields=("oversampling", "integrated", "kernel"))
class DiscretePSF:
    """A PSF given as a matrix, possibly supersampled, shifted by separable interpolation.

    Parameters
    ----------
    array : (ny, nx) array
        The PSF samples. Its origin (the star's position) is the geometric centre of the array,
        ``((nx-1)/2, (ny-1)/2)`` in array index units.
    oversampling : int
        Samples per detector pixel along each axis (s).
    integrated : bool
        ``False`` (MATPHOT): ``array`` samples the PSF at sub-pixel centres and is normalised to
        unit sum. The shifted array is summed over each s x s block to give a detector pixel.
        ``True`` (ePSF, Anderson & King): ``array`` samples the PRF; it is normalised to sum s^2,
        and a detector pixel's value is the interpolated PRF at the pixel centre.
    kernel : {"bspline3", "keys", "sinc"}
        Interpolation kernel (:mod:`jaxphot.kernels`). ``"sinc"`` is MATPHOT's 21-tap damped sinc.
    normalize : bool
        Rescale ``array`` to the sum required by its convention (default True).

    Notes
    -----
    Evaluation never builds a shifted sub-pixel image. Interpolation and the block sum are both
    separable, so for a star at (x, y) the PRF is ``Ry @ C @ Rx.T`` where ``Rx[i, m]`` sums the
    kernel weights of array column ``m`` over the s sub-pixels of detector column ``i``. The
    position derivatives come from differentiating the kernel (autodiff), not finite differences.
    """

    def __init__(
        self, array, oversampling: int = 1, integrated: bool = False, kernel: str = "bspline3",
        normalize: bool = True,
    ):
        a = np.asarray(array, dtype=np.float64)
        if a.ndim != 2 or min(a.shape) < 3:
            raise ValueError(f"array must be a 2-D PSF matrix of at least 3x3, got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError("array (the PSF) contains non-finite values")
        s = int(oversampling)
        if s < 1 or s != oversampling:
            raise ValueError(f"oversampling must be a positive integer, got {oversampling!r}")
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {sorted(KERNELS)}, got {kernel!r}")
        total = a.sum()
        if not total > 0:
            raise ValueError("array (the PSF) must have a positive sum")
        if normalize:
            a = a * ((s * s if integrated else 1.0) / total)
        coeffs = bspline_prefilter(a) if kernel == "bspline3" else a
        object.__setattr__(self, "coeffs", jnp.asarray(coeffs, dtype=jnp.float32))
        object.__setattr__(self, "oversampling", s)
        object.__setattr__(self, "integrated", bool(integrated))
        object.__setattr__(self, "kernel", kernel)

    @classmethod
    def from_fits(cls, path, oversampling: int | None = None, hdu: int | str = 0, **kwargs):
        """Read a PSF image from a FITS file.

        The oversampling comes from ``oversampling`` or, when that is None, from the header
        keyword ``OVERSAMP`` (1 when absent).
        """
        from astropy.io import fits

        path = Path(path)
        try:
            with fits.open(path) as hdul:
                data = np.asarray(hdul[hdu].data, dtype=np.float64)
                header = hdul[hdu].header
        except (OSError, KeyError, IndexError) as exc:
            raise ValueError(f"cannot read PSF from {str(path)!r}: {exc}") from exc
        if oversampling is None:
            oversampling = int(header.get("OVERSAMP", 1))
        return cls(data, oversampling=oversampling, **kwargs)

    @property
    def array(self) -> np.ndarray:
        """The PSF samples (inverting the spline prefilter when needed), as float64 numpy."""
        c = np.asarray(self.coeffs, dtype=np.float64)
        if self.kernel != "bspline3":
            return c

        def smooth(v, axis):
            pad = [(0, 0), (0, 0)]
            pad[axis] = (1, 1)
            p = np.pad(v, pad)
            sl = [slice(None), slice(None)]
            out = 4.0 * v
            for shift in (0, 2):
                sl[axis] = slice(shift, shift + v.shape[axis])
                out = out + p[tuple(sl)]
            return out / 6.0

        return smooth(smooth(c, 0), 1)

    def _axis_matrix(self, x0, n_pix, n_arr, dtype):
        return interpolation_matrix(self.kernel, self.oversampling, self.integrated,
                                    x0, n_pix, n_arr, dtype)

    def evaluate(self, x, y, shape):
        """Pixel-integrated PRF of unit-flux stars at (x, y) on an (H, W) grid: (H, W) + x.shape."""
        return self.evaluate_derivatives(x, y, shape, order=0)[0]

    def evaluate_derivatives(self, x, y, shape, order: int = 1):
        """PRF and its derivatives in the star position (see :func:`jaxphot.scene.linearize`).

        With ``Rx, Rx', Rx''`` the interpolation matrix and its derivatives (autodiff of the
        kernel), every image is ``Ry^(i) @ C @ Rx^(j)T``: three large matmuls ``C @ Rx^(j)T``
        shared by all stars, then small per-star contractions.
        """
        dtype = _dtype_of(x, y)
        x, y = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
        c = self.coeffs.astype(dtype)

        def rx(a):
            return self._axis_matrix(a, shape[1], c.shape[1], dtype)  # (W, nx, ...)

        def ry(b):
            return self._axis_matrix(b, shape[0], c.shape[0], dtype)  # (H, ny, ...)

        if order == 0:
            ax, ay = (rx(x),), (ry(y),)
        else:
            ax, ay = _axis_derivatives(rx, x, order), _axis_derivatives(ry, y, order)
        # C @ Rx^T is one large matmul over all stars: (ny, W, ...).
        ct = [jnp.tensordot(c, a, axes=([1], [1]), precision=_HIGHEST) for a in ax]

        def combine(ryk, j):
            # Per-star contraction over the array rows: a batched matmul, no big intermediate.
            return jnp.einsum("am...,mb...->ab...", ryk, ct[j], precision=_HIGHEST)

        if order == 0:
            return (combine(ay[0], 0),)
        return _separable_derivatives(range(len(ax)), ay, lambda yk, j: combine(yk, j), order)

    def scaled(self, factor: int) -> DiscretePSF:
        """The same PSF in units of 1/factor pixel; ``oversampling`` must be divisible by it.

        Only for ``integrated=False`` (a PSF, not a PRF: a PRF cannot be re-pixelated).
        """
        if self.integrated:
            raise ValueError("an integrated (ePSF) DiscretePSF cannot be rescaled to sub-pixels")
        if self.oversampling % factor:
            raise ValueError(
                f"oversampling {self.oversampling} is not divisible by the factor {factor}"
            )
        return self.replace(oversampling=self.oversampling // factor)

    def __repr__(self):
        return (
            f"DiscretePSF(shape={tuple(self.coeffs.shape)}, oversampling={self.oversampling}, "
            f"integrated={self.integrated}, kernel={self.kernel!r})"
        )


def _positive(name, value):
    try:
        v = float(value)
    except (TypeError, ValueError):
        # a traced or array value (e.g. inside a fit of the PSF shape): keep as is
        return value
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a positive finite number of pixels, got {value!r}")
    return v
