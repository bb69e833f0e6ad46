"""Cutting square cutouts out of an image, with a fill value outside it (numpy, batched)."""

from __future__ import annotations

import numpy as np

__all__ = ["extract_cutouts"]


def extract_cutouts(image: np.ndarray, ox: np.ndarray, oy: np.ndarray, size: int, fill):
    """(G, S, S) cutouts with pixel [0, 0] at (ox, oy); outside pixels get ``fill``."""
    h, w = image.shape
    d = np.arange(size)
    yy = oy[:, None, None] + d[None, :, None]
    xx = ox[:, None, None] + d[None, None, :]
    inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
    vals = image[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]
    return np.where(inside, vals, fill), inside
