"""The scene model of one cutout: a tilted-plane background plus K stars.

``model = B0 + Bx (x - xc) + By (y - yc) + sum_k F_k PRF(x - x_k, y - y_k)``

where ``(xc, yc) = ((W-1)/2, (H-1)/2)`` is the cutout centre (centring keeps float32 accurate).

Parameters are packed as :mod:`jaxphot.core.params` lays them out, ``p = [B0, Bx, By, F_1..F_K,
x_1..x_K, y_1..y_K]`` along the *first* axis. Batches of cutouts put their batch axes *last*:
``p`` is (P, N), images are (H, W, N). XLA then vectorises across cutouts, which on CPUs is ~4x
faster than vmapping a one-cutout function.

A PSF model is anything with ``evaluate(x, y, shape)`` (:class:`PSFModel`); one that also has
``evaluate_derivatives`` gives its position derivatives directly (separable models).

The Jacobian is assembled from its known structure: the columns of the linear parameters (plane and
fluxes) are exact and free; only the position derivatives of the PRF need forward-mode autodiff
(two tangents per star), taken at pixel resolution, so no sub-pixel Jacobian ever exists.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .params import block, n_params, unpack

__all__ = ["PSFModel", "model_image", "linearize"]


class PSFModel(Protocol):
    """What the engine needs of a PSF: the pixel-integrated PRF of unit-flux stars."""

    def evaluate(self, x: Float[ArrayLike, " *batch"], y: Float[ArrayLike, " *batch"],
                 shape: tuple[int, int]) -> Float[Array, " H W *batch"]:
        """PRF of stars at ``(x, y)`` (pixels) on an (H, W) grid, batch axes last."""
        ...


def _plane_basis(shape: tuple[int, int], dtype, n_batch: int) -> Float[Array, " 3 H W *ones"]:
    h, w = shape
    yy, xx = jnp.mgrid[0:h, 0:w].astype(dtype)
    basis = jnp.stack([jnp.ones((h, w), dtype), xx - (w - 1) / 2.0, yy - (h - 1) / 2.0])
    return basis.reshape(basis.shape + (1,) * n_batch)  # (3, H, W, 1...)


def _stars_first(a: Float[Array, " H W K *batch"]) -> Float[Array, " K H W *batch"]:
    """(H, W, K, ...) -> (K, H, W, ...)."""
    return jnp.moveaxis(a, 2, 0)


def model_image(psf: PSFModel, p: Float[Array, " P *batch"],
                shape: tuple[int, int]) -> Float[Array, " H W *batch"]:
    """Expected counts, (H, W) + batch, for parameters ``p`` (3+3K,) + batch."""
    plane, flux, x, y = unpack(p)
    basis = _plane_basis(shape, p.dtype, p.ndim - 1)
    prf = _stars_first(psf.evaluate(x, y, shape))  # (K, H, W, ...)
    return jnp.sum(plane[:, None, None] * basis, 0) + jnp.sum(flux[:, None, None] * prf, 0)


def _prf_derivatives(psf: PSFModel, x: Float[Array, " K *batch"], y: Float[Array, " K *batch"],
                     shape: tuple[int, int], order: int) -> tuple[Float[Array, " K H W *batch"], ...]:
    """PRF of each star and its position derivatives, each (K, H, W, ...), by forward-mode AD.

    Returns ``(prf, d/dx, d/dy)`` for ``order=1`` and additionally ``(d2/dx2, d2/dxdy, d2/dy2)``
    for ``order=2``. Tangents of ones are exact per star because the PRF of one star depends
    only on its own position.
    """
    fast = getattr(psf, "evaluate_derivatives", None)
    if fast is not None:
        out = fast(x, y, shape, order)
        if out is not None:  # separable models know their derivatives' structure
            return tuple(_stars_first(a) for a in out)
    f = lambda a, b: psf.evaluate(a, b, shape)  # noqa: E731
    one, zero = jnp.ones_like(x), jnp.zeros_like(x)

    def d1(a, b, ta, tb):
        return jax.jvp(f, (a, b), (ta, tb))[1]

    prf, dx = jax.jvp(f, (x, y), (one, zero))
    dy = d1(x, y, zero, one)
    out = [prf, dx, dy]
    if order == 2:
        out.append(jax.jvp(lambda a, b: d1(a, b, one, zero), (x, y), (one, zero))[1])
        out.append(jax.jvp(lambda a, b: d1(a, b, one, zero), (x, y), (zero, one))[1])
        out.append(jax.jvp(lambda a, b: d1(a, b, zero, one), (x, y), (zero, one))[1])
    return tuple(_stars_first(a) for a in out)


def _curvature_fn(flux: Float[Array, " K *batch"], derivs: tuple, p: Float[Array, " P *batch"]):
    """``wr -> sum_i wr_i d2 m_i / dp dp`` (P, P, ...) from the PRF derivatives of every star.

    Only flux-position and position-position entries are non-zero (the model is linear in the
    plane and in the fluxes), and each star's entries couple its own flux and position only.
    """
    k = flux.shape[0]
    n = n_params(k)
    _, dprf_dx, dprf_dy, dxx, dxy, dyy = derivs
    rows = jnp.arange(n)
    i_f, i_x, i_y = rows[block("flux", k)], rows[block("x", k)], rows[block("y", k)]

    def curvature(wr: Float[Array, " H W *batch"]) -> Float[Array, " P P *batch"]:
        s = lambda a: jnp.sum(a * wr, axis=(1, 2))  # noqa: E731  (K, ...)
        fx, fy = s(dprf_dx), s(dprf_dy)  # d2 m / dF_k dx_k, d2 m / dF_k dy_k
        xx, xy, yy = flux * s(dxx), flux * s(dxy), flux * s(dyy)
        c = jnp.zeros((n, n) + p.shape[1:], p.dtype)
        c = c.at[i_f, i_x].set(fx).at[i_x, i_f].set(fx)
        c = c.at[i_f, i_y].set(fy).at[i_y, i_f].set(fy)
        c = c.at[i_x, i_x].set(xx).at[i_y, i_y].set(yy)
        c = c.at[i_x, i_y].set(xy).at[i_y, i_x].set(xy)
        return c

    return curvature


def linearize(
    psf: PSFModel, p: Float[Array, " P *batch"], shape: tuple[int, int], order: int = 2,
) -> tuple[Float[Array, " H W *batch"], tuple[Array, ...],
           Callable[[Array], Float[Array, " P P *batch"]] | None]:
    """Model, Jacobian and a function giving the residual-curvature matrix.

    Parameters
    ----------
    psf : PSF model
    p : (P,) + batch array
    shape : (H, W)
    order : 1 or 2
        With 2, also return the curvature function used by Newton steps.

    Returns
    -------
    model : (H, W) + batch
    jac : tuple of P arrays
        d model / d p, one row per parameter, each (H, W) + batch; the three plane rows are
        (H, W) + (1,)*len(batch) (they are the same for every cutout and are never copied).
    curvature : callable or None
        ``curvature(wr)`` maps the weighted residual image ``wr = w * (data - model)`` to the
        (P, P) + batch matrix ``sum_i wr_i d2 m_i / dp dp``. Newton's Hessian of chi^2/2 is
        ``J^T W J - curvature(wr)``; the term matters for faint stars, where Gauss-Newton alone
        converges only linearly. Only flux-position and position-position entries are non-zero
        (the model is linear in the plane and in the fluxes).
    """
    plane, flux, x, y = unpack(p)
    basis = _plane_basis(shape, p.dtype, p.ndim - 1)
    derivs = _prf_derivatives(psf, x, y, shape, order)
    prf, dprf_dx, dprf_dy = derivs[:3]
    fl = flux[:, None, None]
    model = jnp.sum(plane[:, None, None] * basis, 0) + jnp.sum(fl * prf, 0)
    jac = (*basis, *prf, *(fl * dprf_dx), *(fl * dprf_dy))  # the rows in the params layout
    if order == 1:
        return model, jac, None
    return model, jac, _curvature_fn(flux, derivs, p)
