"""Whole images: background, detection, grouping, rendering and the crowded-field driver.

``background``
    Mesh background and rms maps (SExtractor-style).
``detection``
    :func:`find_stars` (matched filter, peaks, centroids) and :func:`segment`.
``grouping``
    Groups of stars that must be fitted together, and their padded buckets.
``cutouts``
    The one cutout cutter.
``render``
    Star stamps and their sum: model and residual images.
``pipeline``
    :func:`photometry`, the iterative crowded-field driver.
"""

from __future__ import annotations

from .background import Background, estimate_background
from .detection import centroid_gaussian_marginal, centroid_moments, find_stars, segment
from .grouping import bucket_groups, group_stars
from .inputs import saturation_mask
from .pipeline import PhotometryResult, photometry
from .render import EXCLUDED_FROM_MODEL, make_model_image, make_residual_image, render_image

__all__ = [
    "Background", "estimate_background", "find_stars", "segment", "centroid_moments",
    "centroid_gaussian_marginal", "group_stars", "bucket_groups", "photometry",
    "PhotometryResult", "make_model_image", "make_residual_image", "render_image",
    "EXCLUDED_FROM_MODEL", "saturation_mask",
]
