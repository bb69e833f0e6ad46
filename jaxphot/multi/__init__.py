"""Many exposures at once: forced photometry of a fixed master list (issue 17).

``inputs``
    Exposures (arrays, cubes, FITS paths), per-image maps, WCS/pixel transforms, the catalogue.
``forced``
    :func:`forced_photometry` (exact batched linear solves at fixed positions) and
    :func:`pivot_light_curves`.
``joint``
    :func:`joint_photometry`: one position per star over all exposures, fluxes per image/band.
``align``
    :func:`refine_alignment`: each exposure's WCS corrected by an affine fit to bright stars.
"""

from __future__ import annotations

from .align import apply_affine_to_wcs, refine_alignment
from .forced import ForcedFlag, forced_photometry, pivot_light_curves
from .inputs import BadImageWarning
from .joint import JointResult, joint_photometry

__all__ = ["forced_photometry", "pivot_light_curves", "ForcedFlag", "BadImageWarning",
           "refine_alignment", "apply_affine_to_wcs", "joint_photometry", "JointResult"]
