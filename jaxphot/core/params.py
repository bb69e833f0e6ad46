"""The packed parameter layout of a cutout with K stars: the one place that knows it.

A cutout's parameters are one vector of length ``P = 3 + 3K`` along the *first* axis::

    p = [B0, Bx, By, F_1..F_K, x_1..x_K, y_1..y_K]

``B0, Bx, By`` are the background plane (value at the cutout centre, slopes per pixel), ``F_k``
the stars' total fluxes and ``x_k, y_k`` their positions in the cutout's pixel frame. Batches
put their axes after the parameter axis, (P, ...) for the engine; the shell's (N, P) arrays are
the transpose.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Array, Bool, Float

__all__ = ["PARAM_NAMES", "n_params", "n_stars", "unpack", "pack", "block", "free_mask"]

#: Names a user can hold fixed; "flux", "x", "y" stand for all K stars.
PARAM_NAMES = ("bkg", "bkg_x", "bkg_y", "flux", "x", "y")


def n_params(k: int) -> int:
    """Number of parameters for ``k`` stars."""
    return 3 + 3 * k


def n_stars(p: Float[Array, "P ..."]) -> int:
    """Number of stars K encoded in a parameter array (P, ...)."""
    return (p.shape[0] - 3) // 3


def block(name: str, k: int) -> slice:
    """Rows of ``name`` ("bkg", "bkg_x", "bkg_y", "flux", "x" or "y") in a K-star vector."""
    if name in ("bkg", "bkg_x", "bkg_y"):
        j = PARAM_NAMES.index(name)
        return slice(j, j + 1)
    j = 3 + k * ("flux", "x", "y").index(name)
    return slice(j, j + k)


def unpack(p: Float[Array, "P ..."]):
    """Split ``p`` (3+3K, ...) into ``(plane (3, ...), flux, x, y (K, ...))``."""
    k = n_stars(p)
    return p[:3], p[3 : 3 + k], p[3 + k : 3 + 2 * k], p[3 + 2 * k :]


def pack(bkg, bkg_x, bkg_y, flux, x, y) -> np.ndarray:
    """The shell's (N, P) array from (N,) plane terms and (N, K) star columns (numpy)."""
    plane = np.stack(np.broadcast_arrays(bkg, bkg_x, bkg_y), 1)
    return np.concatenate([plane, flux, x, y], axis=1)


def free_mask(active: Bool[np.ndarray, "N K"], background: str | None,
              fixed=()) -> Bool[np.ndarray, "N P"]:
    """Which parameters a fit moves: (N, P) bool.

    ``background`` None holds the plane, "constant" its slopes; ``fixed`` names parameters held
    at their starting values; inactive star slots (``active`` False, padding of small groups)
    are never free.
    """
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
