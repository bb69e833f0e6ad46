"""Aperture photometry: exact, centre and sub-pixel apertures, local sky, CCD-equation errors.

``overlap``
    Exact pixel-overlap geometry of circles, ellipses and rectangles (pure JAX).
``sums``
    :func:`aperture_sums`, the batched functional core (any kind, optional annulus sky).
``apphot``
    :func:`aperture_photometry` and :func:`aperture_light_curves`, the Table-returning shell.
``growth``
    :func:`growth_curve` and :func:`aperture_corrections`.
``kron``
    :func:`kron_photometry`: fluxes in Kron elliptical apertures (photutils ``kron_params``).
"""

from __future__ import annotations

from .apphot import aperture_light_curves, aperture_photometry
from .growth import aperture_corrections, growth_curve
from .kron import kron_aperture, kron_photometry
from .sums import SKY_METHODS, ApertureFlag, aperture_sums

__all__ = [
    "ApertureFlag", "SKY_METHODS", "aperture_sums", "aperture_photometry",
    "aperture_light_curves", "growth_curve", "aperture_corrections",
    "kron_photometry", "kron_aperture",
]
