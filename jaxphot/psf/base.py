"""Shared pieces of the PSF models: batch-axis broadcasting, position derivatives, dtypes."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

__all__ = ["HIGHEST", "trail", "axis_derivatives", "separable_derivatives", "dtype_of", "positive"]

HIGHEST = jax.lax.Precision.HIGHEST  # avoid TF32 matmuls on GPUs


def trail(a: Array, n_batch: int) -> Array:
    """Append ``n_batch`` unit axes so that ``a`` broadcasts against trailing batch axes."""
    return a.reshape(a.shape + (1,) * n_batch)


def axis_derivatives(f: Callable[[Array], Array], x0: Float[Array, " *batch"],
                     order: int) -> tuple[Array, ...]:
    """``f(x0)`` and its first ``order`` (1 or 2) derivatives in ``x0``, by forward-mode AD.

    ``f`` maps positions to 1-D profiles or interpolation matrices; the derivatives come from
    differentiating the kernel itself (never from finite differences).
    """
    one = jnp.ones_like(x0)
    if order == 1:
        return jax.jvp(f, (x0,), (one,))
    (v, d1), (_, d2) = jax.jvp(lambda z: jax.jvp(f, (z,), (one,)), (x0,), (one,))
    return v, d1, d2


def separable_derivatives(ax: Sequence, ay: Sequence, combine: Callable,
                          order: int) -> tuple[Float[Array, " H W *batch"], ...]:
    """PRF and its position derivatives from 1-D factors: ``combine(Y, X)`` builds an image.

    ``ax`` and ``ay`` are tuples of the x and y factors and their derivatives. Returns
    ``(prf, d/dx, d/dy)`` and, for ``order=2``, ``(d2/dx2, d2/dxdy, d2/dy2)`` as well.
    """
    out = [combine(ay[0], ax[0]), combine(ay[0], ax[1]), combine(ay[1], ax[0])]
    if order == 2:
        out += [combine(ay[0], ax[2]), combine(ay[1], ax[1]), combine(ay[2], ax[0])]
    return tuple(out)


def dtype_of(*xs: ArrayLike):
    """Floating dtype of the coordinates: float64 only when JAX x64 is on and they are float64."""
    return jnp.result_type(*xs, float)


def positive(name: str, value):
    """``value`` as a float after checking it is a positive finite number of pixels.

    A traced or array value (e.g. inside a fit of the PSF shape) is returned unchecked.
    """
    try:
        v = float(value)
    except (TypeError, ValueError):
        return value
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a positive finite number of pixels, got {value!r}")
    return v
