"""The linear ePSF sub-problem: cutout pixels as a gather of B-spline coefficients, solved by CG."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ..psf.kernels import bspline3

_TAPS = np.arange(-1, 3)  # the 4 B-spline taps around floor(q)


def _axis_taps(pos, n_pix: int, n_arr: int, s: int):
    """Indices (N, n_pix, 4) and weights of the array samples that make each pixel's value.

    Follows :class:`~jaxphot.psf.DiscretePSF` (integrated): pixel p of a star at ``pos`` takes the
    spline at fractional array index ``q = s (p - pos) + (n_arr - 1)/2``. Taps outside the array
    get weight 0 (coefficients beyond the edge are 0, as in ``DiscretePSF.evaluate``).
    """
    q = s * (jnp.arange(n_pix, dtype=pos.dtype)[None, :] - pos[:, None]) + (n_arr - 1) / 2.0
    j = jnp.floor(q)[..., None] + _TAPS
    w = bspline3(q[..., None] - j)
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
def solve_coeffs(c0, c_ref, target, wgt, x, y, amp, smoothness, *, n, s, shape, max_cg, cg_tol):
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
def model_pixels(c, x, y, amp, *, n, s, shape):
    idx, wt = _stencil(x, y, shape, n, s)
    return _forward(c, idx, wt, amp)
