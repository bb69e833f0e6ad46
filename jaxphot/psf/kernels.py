"""One-dimensional interpolation kernels used to shift discrete (matrix) PSFs.

A kernel is a function ``k(t)`` of the distance ``t`` (in samples of the PSF array) between an
output position and an array sample; the interpolated value at fractional position ``u`` is
``sum_m a[m] * k(u - m)``. Shifts in 2-D are separable products of two 1-D kernels.

Kernels
-------
``"sinc"``
    MATPHOT's 21-tap damped sinc (Mighell 2005, from Buie's zodiac library):
    ``w(t) = exp(-(t/3.25)**2) * sin(pi t)/(pi t)`` for ``|t| <= 10``, with the taps renormalised to
    unit sum at every phase. Band-limited, but it rings (negative side lobes) on undersampled PSFs.
``"keys"``
    Keys' cubic convolution kernel (a = -1/2): interpolating, C1, 4 taps. Small overshoot only.
``"bspline3"``
    Cubic B-spline basis, C2 and non-negative, 4 taps. On its own it *smooths*; used with
    prefiltered coefficients (see :func:`bspline_prefilter`) it interpolates exactly (cardinal cubic
    spline). This is the default of :class:`~jaxphot.psf.DiscretePSF`: see the README for the
    accuracy experiment behind that choice.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

__all__ = ["KERNELS", "kernel_weights", "support", "bspline3", "bspline_prefilter", "spline_samples",
           "spline_coefficients"]

_SINC_HALF = 10
_SINC_DAMP = 3.25


def _damped_sinc(t: Array) -> Array:
    return jnp.exp(-((t / _SINC_DAMP) ** 2)) * jnp.sinc(t) * (jnp.abs(t) <= _SINC_HALF)


def _keys(t: Array, a: float = -0.5) -> Array:
    at = jnp.abs(t)
    at2, at3 = at * at, at * at * at
    near = (a + 2.0) * at3 - (a + 3.0) * at2 + 1.0
    far = a * at3 - 5.0 * a * at2 + 8.0 * a * at - 4.0 * a
    return jnp.where(at <= 1.0, near, jnp.where(at < 2.0, far, 0.0))


def bspline3(t: Array) -> Array:
    """The cubic B-spline basis at distances ``t`` (array samples): C2, non-negative, 4 taps."""
    at = jnp.abs(t)
    near = 2.0 / 3.0 - at * at + 0.5 * at * at * at
    far = (2.0 - at) ** 3 / 6.0
    return jnp.where(at <= 1.0, near, jnp.where(at < 2.0, far, 0.0))


KERNELS = {"sinc": _damped_sinc, "keys": _keys, "bspline3": bspline3}
_SUPPORT = {"sinc": _SINC_HALF, "keys": 2, "bspline3": 2}


def support(name: str) -> int:
    """Half-width of kernel ``name`` in array samples (taps = 2*support + 1 at most)."""
    return _SUPPORT[name]


def kernel_weights(name: str, t: Float[Array, " ..."], axis: int = -1) -> Float[Array, " ..."]:
    """Evaluate kernel ``name`` at distances ``t`` (any shape).

    For the damped sinc, the weights are divided by the sum of the 21 taps at the same phase, so
    that a constant array is reproduced exactly (MATPHOT's normalisation). ``t`` must then hold,
    along ``axis``, distances to *consecutive* integer samples; the phase is taken from ``t``
    itself, so the normalisation is exact even where the array ends.
    """
    k = KERNELS[name]
    w = k(t)
    if name == "sinc":
        # Sum of the taps at this phase: sum_j k(f + j) over the full 21-tap window.
        first = jnp.take(t, jnp.array([0]), axis=axis)
        f = first - jnp.floor(first)
        offsets = jnp.arange(-_SINC_HALF - 1, _SINC_HALF + 1, dtype=t.dtype)
        shape = [1] * t.ndim
        shape[axis] = offsets.size
        taps = f + offsets.reshape(shape)
        w = w / jnp.sum(k(taps), axis=axis, keepdims=True)
    return w


def bspline_prefilter(a: Float[np.ndarray, " ny nx"]) -> Float[np.ndarray, " ny nx"]:
    """Cubic B-spline coefficients ``c`` that interpolate the 2-D array ``a`` exactly.

    Solves ``(c[m-1] + 4 c[m] + c[m+1]) / 6 = a[m]`` along each axis with ``c = 0`` beyond the edges
    (PSF arrays fall to ~0 there). Done once, in float64 numpy, when a PSF is built.
    """
    a = np.asarray(a, dtype=np.float64)

    def matrix(n):
        m = np.eye(n) * (4.0 / 6.0)
        i = np.arange(n - 1)
        m[i, i + 1] = m[i + 1, i] = 1.0 / 6.0
        return m

    my, mx = matrix(a.shape[0]), matrix(a.shape[1])
    c = np.linalg.solve(my, a)
    return np.linalg.solve(mx, c.T).T


def spline_coefficients(a: Float[np.ndarray, " *stack ny nx"],
                        kernel: str) -> Float[np.ndarray, " *stack ny nx"]:
    """What a PSF stores for samples ``a`` (last two axes y, x): spline coefficients for
    ``"bspline3"`` (:func:`bspline_prefilter` of every 2-D array), the samples for other kernels."""
    if kernel != "bspline3":
        return a
    flat = np.reshape(a, (-1,) + np.shape(a)[-2:])
    return np.stack([bspline_prefilter(t) for t in flat]).reshape(np.shape(a))


def spline_samples(c: Float[np.ndarray, " *stack ny nx"], kernel: str) -> Float[np.ndarray, " *stack ny nx"]:
    """The samples a coefficient array stands for: the inverse of :func:`spline_coefficients`.

    For ``"bspline3"`` each sample is the separable ``[1, 4, 1] / 6`` combination of the
    coefficients around it (zero beyond the edges); other kernels store samples directly.
    Float64 numpy, shape of ``c`` (last two axes are y, x; leading axes are a stack of arrays).
    """
    if kernel != "bspline3":
        return np.asarray(c, np.float64)
    k = np.array([1.0, 4.0, 1.0]) / 6.0
    c = np.asarray(c, np.float64)
    p = np.pad(c, [(0, 0)] * (c.ndim - 2) + [(1, 1), (1, 1)])
    rows = k[0] * p[..., :-2, :] + k[1] * p[..., 1:-1, :] + k[2] * p[..., 2:, :]
    return k[0] * rows[..., :-2] + k[1] * rows[..., 1:-1] + k[2] * rows[..., 2:]
