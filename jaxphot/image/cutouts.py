"""Cutting cutouts out of an image, with a fill value or the edge pixels outside it (numpy, batched).

This is the package's one numpy cutout cutter: the crowded-field driver, detection, the ePSF
builder and its star selection all cut with :func:`extract_cutouts`. (The aperture sums gather
their cutouts inside jitted JAX code instead.)
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["extract_cutouts", "values_at"]


def extract_cutouts(
    image: np.ndarray,
    ox: np.ndarray,
    oy: np.ndarray,
    size,
    fill=0.0,
    *,
    mode: Literal["constant", "nearest"] = "constant",
):
    """Cutouts with pixel ``[0, 0]`` at image pixel ``(ox, oy)``, all cut at once.

    Parameters
    ----------
    image : (H, W) array
        The image (any dtype; bool images give bool cutouts with a bool ``fill``).
    ox, oy : (G,) int arrays
        Column and row (pixels, 0-based) of each cutout's first pixel; may lie off the image.
    size : int or (int, int)
        Cutout size S (square) or ``(h, w)`` (pixels).
    fill : scalar
        Value of the pixels that fall outside the image, with ``mode="constant"``.
    mode : {"constant", "nearest"}
        Outside pixels get ``fill`` (``"constant"``) or the value of the nearest edge pixel
        (``"nearest"``, as in ``scipy.ndimage``; ``fill`` is then unused).

    Returns
    -------
    cutouts : (G, h, w) array
        The cutouts.
    inside : (G, h, w) bool array
        True for the pixels that lie on the image.
    """
    h, w = image.shape
    sh, sw = (size, size) if np.ndim(size) == 0 else size
    yy = oy[:, None, None] + np.arange(sh)[None, :, None]
    xx = ox[:, None, None] + np.arange(sw)[None, None, :]
    inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
    vals = image[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]
    if mode == "nearest":
        return vals, inside
    if mode != "constant":
        raise ValueError(f"mode must be 'constant' or 'nearest', got {mode!r}")
    return np.where(inside, vals, fill), inside


def values_at(image: np.ndarray, x, y) -> np.ndarray:
    """(N,) values of ``image`` at the pixels nearest to (x, y), clipped to the image edge
    (NaN positions read pixel (0, 0): callers mask those rows themselves)."""
    h, w = np.shape(image)
    xi = np.clip(np.nan_to_num(np.rint(np.asarray(x, np.float64)), nan=0).astype(np.int64), 0, w - 1)
    yi = np.clip(np.nan_to_num(np.rint(np.asarray(y, np.float64)), nan=0).astype(np.int64), 0, h - 1)
    return np.asarray(image)[yi, xi]
