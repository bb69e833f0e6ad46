"""A pure, batched Levenberg-Marquardt solver for weighted least-squares problems.

All arrays carry the batch axis *last* (parameters (P, N), images (H, W, N)): every operation is
then a vector operation across problems, which XLA maps onto SIMD lanes (CPU) or threads (GPU).
Problems that have stopped are frozen with ``jnp.where`` and the loop ends when all have stopped
or reached their iteration cap; :mod:`jaxphot.fit` re-runs the few stragglers separately so that
they do not hold a whole chunk.

Noise model: the variance of pixel i is ``var0_i + inv_gain * max(m_i, 0)`` (floored at one
electron), where ``m`` is the current *model*. With ``inv_gain = 0`` this is a fixed error map;
with ``inv_gain = 1/gain`` it is Poisson plus read noise evaluated on the model, which avoids the
downward flux bias of weights taken from the noisy data. Weights are held fixed within an
iteration (iteratively reweighted least squares).

Steps are Marquardt-scaled by the diagonal of ``J^T W J``. Near the solution the Newton Hessian
(``J^T W J`` minus the residual curvature, see :func:`jaxphot.scene.linearize`) is used when it is
positive definite: on faint stars Gauss-Newton alone converges only linearly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int

__all__ = [
    "LMResult", "levenberg_marquardt", "cholesky_solve", "normal_matrix", "decouple_fixed",
    "covariance", "LAMBDA0",
]

LAMBDA0 = 1e-3
_LAMBDA_MIN = 1e-9
_LAMBDA_MAX = 1e9
_NEWTON_STOP = 0.1  # sigma; see the convergence test in the loop


class LMResult(NamedTuple):
    """Outputs of :func:`levenberg_marquardt`; trailing batch axes as in the inputs.

    (The fit's runners turn them batch-first: ``p`` (N, P), ``cov`` (N, P, P).)
    """

    p: Float[Array, " P N"]  # solution
    cov: Float[Array, " P P N"]  # inverse of the undamped J^T W J at p; zero for fixed parameters
    chi2: Float[Array, " N"]  # weighted sum of squared residuals at p
    n_iter: Int[Array, " N"]  # iterations used
    converged: Bool[Array, " N"]
    singular: Bool[Array, " N"]  # the covariance could not be formed
    lam: Float[Array, " N"]  # final damping, to continue a run


_UNROLL_MAX = 12  # parameters; above this (blends of 4+ stars) loops keep compilation short


def cholesky_solve(a: Float[Array, " P P *batch"],
                   b: Float[Array, " P *rest"]) -> tuple[Float[Array, " P *rest"], Bool[Array, " *batch"]]:
    """Solve ``a x = b`` for small SPD matrices ``a`` (P, P, ...) by Cholesky factorisation.

    ``b`` is (P, ...) or (P, M, ...), broadcasting against the trailing batch axes of ``a``.
    Returns ``(x, positive_definite)``; a non-positive pivot is reported rather than raised (the
    solution is then garbage and must be discarded by the caller).

    The batch axes stay innermost, so every step is a wide vector operation across problems
    (batched LAPACK calls on tiny matrices are slow on CPUs, and can deadlock when XLA calls run
    on several threads). Up to ``_UNROLL_MAX`` parameters the factorisation is unrolled; above,
    it runs as ``fori_loop``s so that compile time does not grow as P^3.
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    p = a.shape[0]
    vec = b.ndim == a.ndim - 1
    b2 = b[:, None] if vec else b
    if p <= _UNROLL_MAX:
        x, ok = _cholesky_unrolled(a, b2)
    else:
        x, ok = _cholesky_looped(a, b2)
    return (x[:, 0] if vec else x), ok


def _cholesky_unrolled(a: Float[Array, " P P *batch"],
                       b: Float[Array, " P M *rest"]) -> tuple[Array, Bool[Array, " *batch"]]:
    p = a.shape[0]
    rows = jnp.arange(p).reshape((p,) + (1,) * (a.ndim - 2))
    cols, pivots = [], []
    for j in range(p):
        v = a[:, j]
        for c in cols:
            v = v - c * c[j]
        pivots.append(v[j])
        d = jnp.sqrt(jnp.maximum(v[j], 1e-30))
        cols.append(jnp.where(rows >= j, v / d, 0.0))
    low = jnp.stack(cols, axis=1)
    ok = jnp.all(jnp.stack(pivots) > 0, axis=0)
    z = []
    for i in range(p):  # forward substitution L z = b
        acc = b[i]
        for j in range(i):
            acc = acc - low[i, j] * z[j]
        z.append(acc / low[i, i])
    x = [None] * p
    for i in reversed(range(p)):  # back substitution L^T x = z
        acc = z[i]
        for j in range(i + 1, p):
            acc = acc - low[j, i] * x[j]
        x[i] = acc / low[i, i]
    return jnp.stack(x, axis=0), ok


def _cholesky_looped(a: Float[Array, " P P *batch"],
                     b: Float[Array, " P M *rest"]) -> tuple[Array, Bool[Array, " *batch"]]:
    p = a.shape[0]
    b = jnp.broadcast_to(b, b.shape[: b.ndim - (a.ndim - 2)] + a.shape[2:])  # full batch
    idx = jnp.arange(p)
    bshape = (1,) * (a.ndim - 2)

    def factor(j, state):
        low, ok = state
        lj = low[j]  # row j: (P, ...)
        earlier = (idx < j).reshape((p,) + bshape)
        v = a[:, j] - jnp.sum(low * jnp.where(earlier, lj, 0.0)[None], axis=1)
        piv = v[j]
        d = jnp.sqrt(jnp.maximum(piv, 1e-30))
        col = jnp.where((idx >= j).reshape((p,) + bshape), v / d, 0.0)
        return low.at[:, j].set(col), ok & (piv > 0)

    low, ok = jax.lax.fori_loop(
        0, p, factor, (jnp.zeros_like(a), jnp.ones(a.shape[2:], bool))
    )
    diag = jnp.moveaxis(jnp.diagonal(low, axis1=0, axis2=1), -1, 0)  # (P, ...)
    ext = (1,) * (b.ndim - a.ndim + 1)  # b's extra axes (M) after P

    def fwd(i, z):
        li = low[i].reshape((p,) + ext + low.shape[2:])
        acc = b[i] - jnp.sum(li * z, axis=0)
        return z.at[i].set(acc / diag[i].reshape(ext[1:] + diag.shape[1:]))

    z = jax.lax.fori_loop(0, p, fwd, jnp.zeros_like(b))

    def back(k, x):
        i = p - 1 - k
        li = low[:, i].reshape((p,) + ext + low.shape[2:])
        acc = z[i] - jnp.sum(li * x, axis=0)
        return x.at[i].set(acc / diag[i].reshape(ext[1:] + diag.shape[1:]))

    x = jax.lax.fori_loop(0, p, back, jnp.zeros_like(b))
    return x, ok


def normal_matrix(jac: Sequence[Float[Array, " H W *batch"]],
                  w: Float[Array, " H W *batch"]) -> Float[Array, " P P *batch"]:
    """``J^T W J`` as (P, P, ...) from Jacobian rows ``jac`` (P of (H, W, ...)) and weights ``w``.

    Rows may be broadcastable (the plane rows are (H, W, 1)). Written as explicit symmetric
    products summed over pixels: with the batch axis innermost these are wide vector operations,
    far faster than batches of tiny matmuls on CPUs, and they are exact float32 arithmetic on
    GPUs (no TF32). Above ``_UNROLL_MAX`` rows, one row of the matrix is formed per loop step.
    """
    n = len(jac)
    if n > _UNROLL_MAX:
        shape = jnp.broadcast_shapes(*(r.shape for r in jac), w.shape)
        stacked = jnp.stack([jnp.broadcast_to(r, shape) for r in jac])  # (P, H, W, ...)

        def row(i, out):
            return out.at[i].set(jnp.sum(stacked[i] * w * stacked, axis=(1, 2)))

        init = jnp.zeros((n, n) + shape[2:], stacked.dtype)
        return jax.lax.fori_loop(0, n, row, init)
    entries = {}
    for i in range(n):
        wi = jac[i] * w
        for j in range(i, n):
            entries[i, j] = jnp.sum(wi * jac[j], axis=(0, 1))
    return jnp.stack(
        [jnp.stack([entries[min(i, j), max(i, j)] for j in range(n)]) for i in range(n)]
    )


def decouple_fixed(a: Float[Array, " P P *batch"],
                   free: Bool[Array, " P *batch"]) -> Float[Array, " P P *batch"]:
    """Zero the rows/columns of fixed parameters of (P, P, ...) ``a`` and put 1 on their diagonal.

    Their Newton step is then exactly 0 and the matrix stays invertible.
    """
    both = free[:, None] & free[None, :]
    n = a.shape[0]
    eye = jnp.eye(n, dtype=bool).reshape((n, n) + (1,) * (a.ndim - 2))
    return jnp.where(both, a, 0.0) + jnp.where(eye & ~free[None, :], 1.0, 0.0)


def covariance(a: Float[Array, " P P *batch"],
               free: Bool[Array, " P *batch"]) -> tuple[Float[Array, " P P *batch"], Bool[Array, " *batch"]]:
    """Covariance ``a^-1`` of the free parameters from a decoupled normal (Fisher) matrix.

    ``a`` is (P, P, ...) with fixed parameters decoupled (:func:`decouple_fixed`), ``free`` (P, ...).
    Jacobi scaling keeps float32 well posed. Returns ``(cov, singular)``: ``cov`` is zero for fixed
    parameters; ``singular`` (...) flags matrices that are not positive definite or whose
    conditional variances exceed what the working precision can resolve (e.g. a star with no
    weight in the data).
    """
    n = a.shape[0]
    eps = jnp.finfo(a.dtype).eps
    scale = _scale(a)
    ss = scale[:, None] * scale[None, :]
    eye = jnp.eye(n, dtype=a.dtype).reshape((n, n) + (1,) * (a.ndim - 2))
    cov_s, pd = cholesky_solve(a * ss, eye)
    cov = jnp.where(free[:, None] & free[None, :], cov_s * ss, 0.0)
    diag = jnp.moveaxis(jnp.diagonal(cov_s, axis1=0, axis2=1), -1, 0)
    bad = jnp.where(free, (diag <= 0) | (diag * eps > 1e-2) | ~jnp.isfinite(diag), False)
    return cov, ~pd | jnp.any(bad, axis=0)


def _normal_equations(linearize: Callable, p: Float[Array, " P N"], data: Float[Array, " H W N"],
                      var0: Float[Array, " H W N"], inv_gain: Float[ArrayLike, ""],
                      valid: Bool[Array, " H W N"], free: Bool[Array, " P N"], newton: bool):
    """Gauss-Newton matrix, Newton matrix, gradient, chi^2, weights and model at ``p``."""
    model, jac, curvature = linearize(p)
    var = var0 + inv_gain * jnp.maximum(model, 0.0)
    var = jnp.maximum(var, inv_gain * inv_gain + 1e-30)  # Poisson floor: one electron
    w = jnp.where(valid, 1.0 / var, 0.0)
    r = jnp.where(valid, data - model, 0.0)
    a = normal_matrix(jac, w)
    wr = w * r
    g = jnp.stack([jnp.sum(row * wr, axis=(0, 1)) for row in jac])
    h = a - curvature(wr) if newton else a
    # Fixed parameters: decouple them (unit diagonal, zero gradient) so their step is exactly 0.
    a, h = decouple_fixed(a, free), decouple_fixed(h, free)
    g = jnp.where(free, g, 0.0)
    chi2 = jnp.sum(w * r * r, axis=(0, 1))
    return a, h, g, chi2, w, model


def _scale(a: Float[Array, " P P *batch"]) -> Float[Array, " P *batch"]:
    """Jacobi scaling ``1/sqrt(diag a)`` (1 where the diagonal is not positive)."""
    d = jnp.diagonal(a, axis1=0, axis2=1)  # (..., P)
    d = jnp.moveaxis(d, -1, 0)  # (P, ...)
    return jnp.where(d > 0, 1.0 / jnp.sqrt(jnp.where(d > 0, d, 1.0)), 1.0)


def _damped_step(a: Float[Array, " P P N"], h: Float[Array, " P P N"], g: Float[Array, " P N"],
                 lam: Float[Array, " N"], eye: Float[Array, " P P 1"], newton: bool,
                 max_step: Float[Array, " P N"] | None, try_newton: Bool[Array, " N"]):
    """The Marquardt-scaled step, Newton's where ``try_newton`` and its matrix is positive
    definite, shortened to ``max_step``. Returns ``(step, scaled step, scaled gradient, used
    Newton)``."""
    scale = _scale(a)
    ss = scale[:, None] * scale[None, :]
    gs = g * scale
    step_s, _ = cholesky_solve(a * ss + lam * eye, gs)
    used_newton = jnp.zeros(lam.shape, bool)
    if newton:
        step_nt, pd = cholesky_solve(h * ss + lam * eye, gs)
        used_newton = pd & try_newton
        step_s = jnp.where(used_newton, step_nt, step_s)
    step = step_s * scale
    if max_step is not None:
        over = jnp.max(jnp.abs(step) / max_step, axis=0)
        shrink = 1.0 / jnp.maximum(over, 1.0)
        step, step_s = step * shrink, step_s * shrink
    return step, step_s, gs, used_newton


def _verdict(step_s: Float[Array, " P N"], gs: Float[Array, " P N"], chi2: Float[Array, " N"],
             chi2_try: Float[Array, " N"], p_try: Float[Array, " P N"], free: Bool[Array, " P N"],
             lam: Float[Array, " N"], used_newton: Bool[Array, " N"], step_tol, eps):
    """``(accept the step, the problem is done)`` after a trial step, each (N,) bool."""
    # Converged when the step is below tolerance, or when the chi^2 decrease it promises is
    # below what this precision can resolve. Such a step is taken without the chi^2 test:
    # rejecting it would only inflate lambda.
    floor = jnp.sum(step_s * gs, axis=0) < 16.0 * eps * jnp.maximum(chi2, 1.0)
    small = (jnp.max(jnp.abs(jnp.where(free, step_s, 0.0)), axis=0) < step_tol) | floor
    finite = jnp.isfinite(chi2_try) & jnp.all(jnp.isfinite(p_try), axis=0)
    ok = finite & ((chi2_try < chi2) | small)
    stalled = ~ok & (lam >= _LAMBDA_MAX)
    # Newton converges quadratically: after an undamped Newton step of < 0.1 sigma the next
    # one would be < ~0.01 sigma, so there is no need to take it.
    newton_close = used_newton & (lam < 1e-2) & (
        jnp.max(jnp.abs(jnp.where(free, step_s, 0.0)), axis=0) < _NEWTON_STOP
    )
    now_done = (ok & (small | newton_close) & (lam < 1.0)) | stalled | ~jnp.isfinite(chi2)
    return ok, now_done


def levenberg_marquardt(
    linearize: Callable,
    p0: Float[Array, " P N"], data: Float[Array, " H W N"], var0: Float[Array, " H W N"],
    inv_gain: Float[ArrayLike, ""], valid: Bool[Array, " H W N"], free: Bool[Array, " P N"], *,
    max_iter: Int[ArrayLike, ""], step_tol: Float[ArrayLike, ""], done0: Bool[Array, " N"],
    lam0: Float[Array, " N"] | None = None, it0: Int[Array, " N"] | None = None,
    newton: bool = True, max_step: Float[Array, " P N"] | None = None,
) -> LMResult:
    """Minimise chi^2 for a batch of problems at once.

    Parameters
    ----------
    linearize : callable
        ``p -> (model (H, W, N), jac rows, curvature)``, see :func:`jaxphot.scene.linearize`.
    p0 : (P, N) array
        Starting parameters.
    data, var0 : (H, W, N) arrays
        Data (invalid pixels may hold anything finite) and the model-independent variance.
    inv_gain : scalar
        ``1/gain`` for the Poisson term, 0 for a fixed error map.
    valid : (H, W, N) bool
        Pixels that enter the fit.
    free : (P, N) bool
        Parameters that are fitted; the others stay at ``p0``.
    max_iter : int
        Iteration cap (counting ``it0``).
    step_tol : float
        Converged when a step moves every parameter by less than ``step_tol`` times its
        conditional 1-sigma error, or when the chi^2 decrease it promises is below what the
        floating-point precision can resolve (in float32, about 1e-2 sigma).
    done0 : (N,) bool
        Problems to skip entirely (padding, hopeless rows).
    lam0, it0 : (N,) arrays, optional
        Damping and iteration count to continue from (used to re-run stragglers).
    newton : bool
        Use Newton's Hessian when it is positive definite (see module docstring).
    max_step : (P, N) array, optional
        Largest change of each parameter in one iteration (e.g. 1 px for positions, as in
        DAOPHOT); longer steps are shortened along their direction. Keeps stars in a blend from
        wandering onto their neighbours early in the fit.
    """
    n_par = p0.shape[0]
    eye = jnp.eye(n_par, dtype=p0.dtype).reshape((n_par, n_par) + (1,) * (p0.ndim - 1))
    eps = jnp.finfo(p0.dtype).eps
    lam0 = jnp.full(p0.shape[1:], LAMBDA0, p0.dtype) if lam0 is None else lam0
    it0 = jnp.zeros(p0.shape[1:], jnp.int32) if it0 is None else it0

    def normal_equations(p):
        return _normal_equations(linearize, p, data, var0, inv_gain, valid, free, newton)

    # The normal equations are formed at every trial point, and carried to the next iteration
    # when the step is taken: one linearisation per iteration, and none after the loop. The
    # first pass of the loop only forms them at p0 (a zero step, always taken, not counted), so
    # that the program holds one copy of the linearisation (backend compile of a 1024-row
    # Gaussian chunk 3.7 -> 3.0 s on a 2-core CPU).
    def body(state):
        p, lam, it, done, ne, try_newton, formed = state
        a, h, g, chi2, w = ne
        active = ~done & (it < max_iter) & formed
        step, step_s, gs, used_newton = _damped_step(a, h, g, lam, eye, newton, max_step,
                                                     try_newton)
        step = jnp.where(formed, step, 0.0)
        p_try = p + step
        *ne_try, model_try = normal_equations(p_try)
        r_try = jnp.where(valid, data - model_try, 0.0)
        chi2_try = jnp.sum(w * r_try * r_try, axis=(0, 1))  # the current weights: a fair test
        ok, now_done = _verdict(step_s, gs, chi2, chi2_try, p_try, free, lam, used_newton,
                                step_tol, eps)
        take = (active & ok) | ~formed
        p = jnp.where(take, p_try, p)
        ne = tuple(jnp.where(take, new, old) for new, old in zip(ne_try, ne, strict=True))
        # A rejected Newton step is retried as Gauss-Newton at the same lambda: far from the
        # minimum the residual curvature misleads Newton (bright stars from a low first-guess
        # flux), and a larger lambda would only slow the next steps.
        retry = used_newton & ~ok & formed
        new_lam = jnp.where(ok, jnp.maximum(lam * 0.1, _LAMBDA_MIN), jnp.where(retry, lam, lam * 10.0))
        lam = jnp.where(active, new_lam, lam)
        return (p, lam, it + active, done | (active & now_done), ne, ~retry,
                jnp.ones_like(formed))

    def cond(state):
        _, _, it, done, _, _, formed = state
        return jnp.any(~formed) | jnp.any(~done & (it < max_iter))

    batch = p0.shape[1:]
    zeros_pp = jnp.zeros((n_par, n_par) + batch, p0.dtype)
    ne0 = (zeros_pp, zeros_pp, jnp.zeros_like(p0), jnp.zeros(batch, p0.dtype),
           jnp.zeros(data.shape, p0.dtype))
    state = (p0, lam0, it0, done0, ne0, jnp.ones(batch, bool), jnp.zeros(batch, bool))
    p, lam, n_iter, done, (a, _, _, chi2, _), _, _ = jax.lax.while_loop(cond, body, state)
    cov, singular = covariance(a, free)
    return LMResult(p, cov, chi2, n_iter, done & ~done0, singular, lam)
