"""Analytic PSF models: Gaussian (integrated exactly) and Moffat (Gauss-Legendre sub-pixel rule).

:class:`GaussianPRF` is a circular or elliptical Gaussian integrated *exactly* over square pixels
with erf differences (separable when not rotated); :class:`MoffatPSF` is integrated over each
pixel on an ``n x n`` Gauss-Legendre sub-pixel grid. Both follow the ``evaluate`` contract of
:mod:`jaxphot.psf`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ..constants import FWHM_TO_SIGMA
from ..core.pytree import pytree, static
from .base import axis_derivatives, dtype_of, positive, separable_derivatives, trail

__all__ = ["GaussianPRF", "MoffatPSF"]

_SQRT2 = math.sqrt(2.0)


def _pixel_edges_profile(x0: Float[ArrayLike, " *batch"], sigma: Float[ArrayLike, ""], n: int,
                         dtype) -> Float[Array, " n *batch"]:
    """Fraction of a 1-D Gaussian (centre x0, width sigma) in each of pixels 0..n-1: (n,) + x0.shape.

    Uses ``0.5 * (erfc(lo) - erfc(hi))`` on the side of the pixel centre away from the star's
    centre, mirrored for pixels on the other side, so there is no cancellation in the tails even
    in float32. Each pixel edge needs two erfc evaluations, shared by neighbouring pixels.
    """
    x0 = jnp.asarray(x0, dtype)
    edges = (trail(jnp.arange(n + 1, dtype=dtype), x0.ndim) - 0.5 - x0) / (sigma * _SQRT2)
    up, down = jax.scipy.special.erfc(edges), jax.scipy.special.erfc(-edges)
    right = 0.5 * (up[:-1] - up[1:])  # accurate for pixels right of the centre
    left = 0.5 * (down[1:] - down[:-1])  # accurate for pixels left of the centre
    return jnp.where(edges[:-1] + edges[1:] > 0, right, left)


def _outer(gy: Float[Array, " H *batch"], gx: Float[Array, " W *batch"]) -> Float[Array, " H W *batch"]:
    """The separable image ``gy[j] gx[i]`` from its y and x profiles."""
    return gy[:, None] * gx[None, :]  # (H, 1, ...) * (1, W, ...)


def _gauss_legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes in [-1/2, 1/2] and weights summing to 1 for n-point Gauss-Legendre integration."""
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return nodes / 2.0, weights / 2.0


def _integrate_over_pixels(
    density: Callable[[Array, Array], Array], x0: Float[ArrayLike, " *batch"],
    y0: Float[ArrayLike, " *batch"], shape: tuple[int, int], n_sub: int, dtype,
) -> Float[Array, " H W *batch"]:
    """Integrate a 2-D surface density ``density(dx, dy)`` over every pixel of an (H, W) grid.

    Uses an ``n_sub x n_sub`` Gauss-Legendre rule inside each pixel. The sub-pixel grid exists
    only inside this function: callers (and the Jacobian) see pixel values, (H, W) + x0.shape.
    """
    h, w = shape
    x0, y0 = jnp.asarray(x0, dtype), jnp.asarray(y0, dtype)
    nb = x0.ndim
    nodes, weights = _gauss_legendre(n_sub)
    nodes, weights = jnp.asarray(nodes, dtype), jnp.asarray(weights, dtype)
    ux = trail(jnp.arange(w, dtype=dtype)[:, None] + nodes[None, :], nb) - x0  # (W, n, ...)
    uy = trail(jnp.arange(h, dtype=dtype)[:, None] + nodes[None, :], nb) - y0  # (H, n, ...)
    f = density(ux[None, None], uy[:, :, None, None])  # (H, n, W, n, ...)
    wy = trail(weights, 1 + nb)  # weights along axis 1 (after the x nodes are summed)
    wx = trail(weights, nb)  # weights along axis 3
    return jnp.sum(jnp.sum(f * wx, axis=3) * wy, axis=1)


@pytree
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

    fwhm: Float[Array, ""]
    fwhm_y: Float[Array, ""]
    theta: Float[Array, ""]
    rotated: bool = static()
    subsample: int = static()

    def __init__(self, fwhm, fwhm_y=None, theta=None, subsample: int = 6):
        self.fwhm = positive("fwhm", fwhm)
        self.fwhm_y = self.fwhm if fwhm_y is None else positive("fwhm_y", fwhm_y)
        self.theta = 0.0 if theta is None else float(theta)
        self.rotated = theta is not None
        self.subsample = int(subsample)

    def _sigmas(self, dtype) -> tuple[Float[Array, ""], Float[Array, ""]]:
        """Gaussian widths along the ellipse's axes (pixels) in the working dtype."""
        sx = jnp.asarray(self.fwhm, dtype) * FWHM_TO_SIGMA
        sy = jnp.asarray(self.fwhm_y, dtype) * FWHM_TO_SIGMA
        return sx, sy

    def evaluate(self, x: Float[ArrayLike, " *batch"], y: Float[ArrayLike, " *batch"],
                 shape: tuple[int, int]) -> Float[Array, " H W *batch"]:
        """Pixel-integrated PRF of unit-flux stars at (x, y) on an (H, W) grid: (H, W) + x.shape."""
        dtype = dtype_of(x, y)
        sx, sy = self._sigmas(dtype)
        if not self.rotated:
            gx = _pixel_edges_profile(x, sx, shape[1], dtype)
            gy = _pixel_edges_profile(y, sy, shape[0], dtype)
            return _outer(gy, gx)
        c, s = jnp.cos(self.theta), jnp.sin(self.theta)

        def density(dx, dy):
            u = (c * dx + s * dy) / sx
            v = (-s * dx + c * dy) / sy
            return jnp.exp(-0.5 * (u * u + v * v)) / (2.0 * jnp.pi * sx * sy)

        return _integrate_over_pixels(density, x, y, shape, self.subsample, dtype)

    def evaluate_derivatives(
        self, x: Float[ArrayLike, " *batch"], y: Float[ArrayLike, " *batch"],
        shape: tuple[int, int], order: int = 1,
    ) -> tuple[Float[Array, " H W *batch"], ...] | None:
        """PRF and its derivatives in the star position (see :func:`jaxphot.core.scene.linearize`)."""
        if self.rotated:
            return None  # not separable: the scene falls back to generic autodiff
        dtype = dtype_of(x, y)
        x, y = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
        sx, sy = self._sigmas(dtype)
        ax = axis_derivatives(lambda a: _pixel_edges_profile(a, sx, shape[1], dtype), x, order)
        ay = axis_derivatives(lambda b: _pixel_edges_profile(b, sy, shape[0], dtype), y, order)
        return separable_derivatives(ax, ay, _outer, order)

    def scaled(self, factor: int) -> GaussianPRF:
        """The same PSF in units of 1/factor pixel (for sub-pixel detector models)."""
        return self.replace(fwhm=self.fwhm * factor, fwhm_y=self.fwhm_y * factor)

    def __repr__(self):
        return f"GaussianPRF(fwhm={self.fwhm}, fwhm_y={self.fwhm_y}, theta={self.theta})"


@pytree
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

    fwhm: Float[Array, ""]
    beta: Float[Array, ""]
    subsample: int = static()

    def __init__(self, fwhm, beta=2.5, subsample: int = 5):
        self.fwhm = positive("fwhm", fwhm)
        beta = float(beta)
        if not beta > 1.0:
            raise ValueError(f"beta must be > 1 for a normalisable Moffat profile, got {beta}")
        self.beta = beta
        self.subsample = int(subsample)

    def evaluate(self, x: Float[ArrayLike, " *batch"], y: Float[ArrayLike, " *batch"],
                 shape: tuple[int, int]) -> Float[Array, " H W *batch"]:
        """Pixel-integrated PRF of unit-flux stars at (x, y) on an (H, W) grid: (H, W) + x.shape."""
        dtype = dtype_of(x, y)
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
