"""Empirical PSFs (ePSFs) built from the stars of an image.

- :mod:`.builder`: :func:`build_epsf`, the joint fit of a supersampled PRF and its stars (the
  algorithm is described there);
- :mod:`.selection`: :func:`select_stars` and :func:`build_epsf_from_image` (detection, star
  selection, neighbour subtraction, then :func:`build_epsf`), behind ``jaxphot epsf`` and
  ``--psf auto``;
- :mod:`.grid`: :func:`build_epsf_grid`, regional ePSFs interpolated across the image;
- :mod:`.apcorr`: :func:`aperture_correction` from the PSF stars;
- internals: ``_spline`` (the linear sub-problem), ``_reference`` (what the
  smoothness penalty pulls toward), ``_pin`` (normalisation and centre).
"""

from .apcorr import ApertureCorrection, aperture_correction
from .builder import EPSFStars, EPSFWarning, build_epsf
from .grid import build_epsf_grid
from .selection import build_epsf_from_image, measure_star_fwhm, select_stars

__all__ = [
    "measure_star_fwhm",
    "build_epsf",
    "build_epsf_grid",
    "select_stars",
    "build_epsf_from_image",
    "aperture_correction",
    "ApertureCorrection",
    "EPSFStars",
    "EPSFWarning",
]
