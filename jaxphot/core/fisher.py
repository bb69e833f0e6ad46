"""The exact Cramer-Rao lower bound of the fitted model, from the Fisher information.

``F = J^T diag(1/sigma_i^2) J`` over the parameters actually fitted, with ``J`` the exact
(autodiff) Jacobian of the *expected* pixel values (pixelisation, the plane background and
blended neighbours included) and ``sigma_i^2 = m_i / gain + (read_noise / gain)^2``. The bound
of a parameter is ``sqrt((F^-1)_jj)``. Used by :func:`jaxphot.core.fit.fit_cutouts` for the
``*_crlb`` columns and by :mod:`jaxphot.theory` for exposure planning.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float

from . import scene
from .batching import bucket, map_chunks, pad, slice_psf
from .config import default_dtype, enable_compilation_cache
from .params import n_params, n_stars
from .scene import PSFModel
from .solve import covariance, decouple_fixed, normal_matrix

__all__ = ["fisher_crlb"]

_MAX_CHUNK = 512  # stars per compiled Fisher call (bounds memory for large PRFs)


@functools.partial(jax.jit, static_argnames=("shape",))
def _fisher_chunk(psf: PSFModel, p: Float[Array, " N P"], free: Bool[Array, " N P"],
                  var0: Float[ArrayLike, ""], inv_gain: Float[ArrayLike, ""],
                  extra: Float[Array, " N H W"], valid: Bool[Array, " N H W"],
                  shape: tuple[int, int]) -> Float[Array, " N P"]:
    """CRLB of every parameter, batch-first in and out: p, free (N, P); extra, valid (N, H, W)."""
    last = lambda a: jnp.moveaxis(a, 0, -1)  # noqa: E731
    pl = last(p)  # (P, N): the scene model is batch-last
    model, jac, _ = scene.linearize(psf, pl, shape, order=1)
    var = var0 + inv_gain * (jnp.maximum(model, 0.0) + last(extra))
    var = jnp.maximum(var, inv_gain * inv_gain + 1e-30)  # Poisson floor: one electron, as the fit
    w = jnp.where(last(valid), 1.0 / var, 0.0)
    fisher = normal_matrix(jac, w)  # (P, P, N)
    fr = last(free)  # (P, N)
    # Same inversion as the fit's covariance (decoupled fixed parameters, Jacobi scaling).
    cov, singular = covariance(decouple_fixed(fisher, fr), fr)
    var_p = jnp.moveaxis(jnp.diagonal(cov, axis1=0, axis2=1), -1, 0)  # (P, N)
    ok = ~singular[None, :] & jnp.isfinite(var_p) & (var_p > 0)
    out = jnp.where(fr, jnp.where(ok, jnp.sqrt(jnp.where(ok, var_p, 1.0)), jnp.nan), 0.0)
    return out.T  # (N, P)


def _sky_and_valid(sky, mask, shape: tuple[int, int, int]):
    """``(extra counts, valid pixels)`` as (N, H, W) views: the unmodelled sky and ~mask."""
    n, h, w = shape
    extra = np.zeros((1, h, w)) if sky is None else np.asarray(sky, np.float64)
    if extra.ndim == 1:
        extra = extra[:, None, None]  # one level per cutout
    extra = np.broadcast_to(extra, shape)
    valid = np.ones(shape, bool) if mask is None else ~np.broadcast_to(np.asarray(mask, bool), shape)
    return extra, valid


def fisher_crlb(
    psf: PSFModel,
    params: Float[ArrayLike, " N P"],
    shape: tuple[int, int],
    free: Bool[ArrayLike, " *N P"] | None = None,
    read_noise: float = 0.0,
    gain: float = 1.0,
    sky: Float[ArrayLike, " ..."] | None = None,
    mask: Bool[ArrayLike, " ..."] | None = None,
    chunk_size: int | None = None,
) -> Float[np.ndarray, " N P"]:
    """Exact Cramer-Rao lower bound of every packed parameter, from the Fisher information.

    Parameters
    ----------
    psf : PSF model
        The model that was (or will be) fitted, e.g. a :class:`~jaxphot.psf.DetectorPRF`.
        A per-cutout PSF (array leaves with a trailing batch axis of length N, ``batch_size``
        attribute) is sliced along with the parameters.
    params : (N, P) array
        Packed parameters ``[B0, Bx, By, F_1..F_K, x_1..x_K, y_1..y_K]`` (see
        :mod:`jaxphot.core.params`), in ADU, at which the bound is evaluated (truth for planning,
        the fitted values for the catalogue columns). Rows with non-finite values give NaN.
    shape : (H, W)
        Cutout shape in pixels.
    free : (N, P) or (P,) bool array, optional
        Parameters that are (or would be) fitted; the bound accounts for their correlations
        (plane, neighbours). Default: all free.
    read_noise : float
        Read noise (electrons rms).
    gain : float
        Electrons per ADU. Pixel variance (ADU^2): ``max(m, 0)/gain + (read_noise/gain)^2``,
        floored at one electron, exactly the fit's noise model.
    sky : float or array broadcastable to (N, H, W), optional
        Counts (ADU) that add Poisson variance but are not in the model, e.g. a sky level
        subtracted before fitting with ``background=None``. Default 0.
    mask : bool array broadcastable to (N, H, W), optional
        True for pixels left out of the fit (they carry no information).
    chunk_size : int, optional
        Rows per compiled call (bounds memory). Default 512.

    Returns
    -------
    (N, P) float64 array
        ``sqrt(diag(F^-1))`` for free parameters (ADU for fluxes and plane, px for positions),
        0 for fixed ones, NaN where the Fisher matrix is singular or ``params`` is not finite.
    """
    enable_compilation_cache()  # persistent cache on first use, never at import
    params = np.asarray(params, np.float64)
    if params.ndim == 1:
        params = params[None]
    n, n_par = params.shape
    if n_par != n_params(n_stars(params.T)):
        raise ValueError(f"params must have 3 + 3K columns, got {n_par}")
    h, w = (int(a) for a in shape)
    g = float(gain)
    if not (math.isfinite(g) and g > 0):
        raise ValueError(f"gain must be positive, got {gain!r}")
    fr = np.ones((n, n_par), bool) if free is None else np.broadcast_to(np.asarray(free, bool), (n, n_par))
    finite = np.all(np.isfinite(params), axis=1)
    dtype = default_dtype(params)
    extra, valid = _sky_and_valid(sky, mask, (n, h, w))
    var0 = np.asarray((float(read_noise) / g) ** 2, dtype)
    inv_gain = np.asarray(1.0 / g, dtype)
    size = bucket(n, int(chunk_size or _MAX_CHUNK))  # one padded shape: few compilations
    p_all = np.where(finite[:, None], params, 0.0)

    def run(span):
        start, stop = span

        def take(a, fill):
            return pad(np.asarray(a[start:stop]), size, fill)

        res = _fisher_chunk(
            slice_psf(psf, start, stop, size),  # identity if not batched
            jnp.asarray(take(p_all, 0.0), dtype),
            jnp.asarray(take(fr, True)),
            var0,
            inv_gain,
            jnp.asarray(take(extra, 0.0), dtype),
            jnp.asarray(take(valid, True)),
            (h, w),
        )
        return np.asarray(res, np.float64)[: stop - start]

    spans = [(s, min(n, s + size)) for s in range(0, n, size)]  # chunks of rows, not stars
    out = np.concatenate(map_chunks(run, spans)) if n else np.empty((0, n_par))
    out[~finite] = np.nan
    return out
