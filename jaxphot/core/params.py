"""The packed parameter layout of a cutout with K stars: the one place that knows it.

A cutout's parameters are one vector of length ``P = 3 + 3K`` along the *first* axis::

    p = [B0, Bx, By, F_1..F_K, x_1..x_K, y_1..y_K]

``B0, Bx, By`` are the background plane (value at the cutout centre, slopes per pixel), ``F_k``
the stars' total fluxes and ``x_k, y_k`` their positions in the cutout's pixel frame. Batches
put their axes after the parameter axis, (P, ...) for the engine; the shell's (N, P) arrays are
the transpose (:func:`unpack_rows`).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float

__all__ = ["PARAM_NAMES", "BACKGROUNDS", "n_params", "n_stars", "unpack", "unpack_rows", "pack",
           "block", "free_mask", "check_model"]

#: Names a user can hold fixed; "flux", "x", "y" stand for all K stars.
PARAM_NAMES = ("bkg", "bkg_x", "bkg_y", "flux", "x", "y")
#: Background models: a tilted plane, a constant (slopes held at 0), or none (the plane held).
BACKGROUNDS = ("plane", "constant", None)
_PLANE = PARAM_NAMES[:3]
_STARS = PARAM_NAMES[3:]


def n_params(k: int) -> int:
    """Number of parameters for ``k`` stars."""
    return 3 + 3 * k


def n_stars(p: Float[ArrayLike, " P ..."]) -> int:
    """Number of stars K encoded in a parameter array (P, ...)."""
    return (np.shape(p)[0] - 3) // 3


def block(name: str, k: int) -> slice:
    """Rows of ``name`` ("bkg", "bkg_x", "bkg_y", "flux", "x" or "y") in a K-star vector."""
    if name in _PLANE:
        j = _PLANE.index(name)
        return slice(j, j + 1)
    j = 3 + k * _STARS.index(name)
    return slice(j, j + k)


def unpack(p: Float[Array, " P *batch"]) -> tuple[Float[Array, " 3 *batch"], Float[Array, " K *batch"],
                                                  Float[Array, " K *batch"], Float[Array, " K *batch"]]:
    """Split ``p`` (3+3K, ...) into ``(plane (3, ...), flux, x, y (K, ...))``."""
    k = n_stars(p)
    return p[:3], p[block("flux", k)], p[block("x", k)], p[block("y", k)]


def unpack_rows(p: Float[np.ndarray, " N P"]) -> tuple[Float[np.ndarray, " N 3"], Float[np.ndarray, " N K"],
                                                       Float[np.ndarray, " N K"], Float[np.ndarray, " N K"]]:
    """:func:`unpack` for the shell's (N, P) arrays: ``(plane (N, 3), flux, x, y (N, K))``."""
    return tuple(a.T for a in unpack(p.T))


def pack(bkg: Float[ArrayLike, " N"], bkg_x: Float[ArrayLike, " N"], bkg_y: Float[ArrayLike, " N"],
         flux: Float[ArrayLike, " N K"], x: Float[ArrayLike, " N K"],
         y: Float[ArrayLike, " N K"]) -> Float[np.ndarray, " N P"]:
    """The shell's (N, P) array from (N,) plane terms and (N, K) star columns (numpy)."""
    plane = np.stack(np.broadcast_arrays(bkg, bkg_x, bkg_y), 1)
    return np.concatenate([plane, flux, x, y], axis=1)


def check_model(background: str | None, fixed: Iterable[str] = ()) -> tuple[str, ...]:
    """Validate a background model and the names of fixed parameters; returns ``tuple(fixed)``."""
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {BACKGROUNDS}, got {background!r}")
    fixed = tuple(fixed)
    bad = [f for f in fixed if f not in PARAM_NAMES]
    if bad:
        raise ValueError(f"fixed may contain only {PARAM_NAMES}, got {bad}")
    return fixed


def free_mask(active: Bool[np.ndarray, " N K"], background: str | None,
              fixed: Iterable[str] = ()) -> Bool[np.ndarray, " N P"]:
    """Which parameters a fit moves: (N, P) bool.

    ``background`` None holds the plane, "constant" its slopes; ``fixed`` names parameters held
    at their starting values; inactive star slots (``active`` False, padding of small groups)
    are never free.
    """
    fixed = check_model(background, fixed)
    n, k = active.shape
    free = np.ones((n, n_params(k)), bool)
    if background is None:
        free[:, :3] = False
    elif background == "constant":
        free[:, 1:3] = False
    for name in fixed:
        free[:, block(name, k)] = False
    inactive = ~np.concatenate([np.ones((n, 3), bool), active, active, active], axis=1)
    return free & ~inactive
