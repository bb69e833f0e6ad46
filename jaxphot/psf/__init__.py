"""PSF and PRF models: immutable JAX pytrees that evaluate pixel-integrated PRFs.

Every model has one method that matters::

    prf = psf.evaluate(x, y, shape)     # (H, W) + x.shape array, pixel-integrated PRF

for stars at ``(x, y)`` (pixels, in the frame of an ``(H, W)`` cutout whose pixel ``[j, i]`` is
centred at ``(i, j)``). ``x`` and ``y`` may be scalars or arrays of any shape; the batch axes come
*last* in the result. Keeping the batch axis innermost lets XLA vectorise across stars (SIMD on
CPUs, coalesced loads on GPUs), which is several times faster than vmapping over stars. The
PRF sums to the PSF's volume over an infinite detector: 1 for a perfect detector. Parameters
stored as leaves (``fwhm``, ``beta``, the PSF matrix) can be differentiated, vmapped or fitted;
configuration (oversampling, kernel) is static.

Modules
-------
``analytic``
    :class:`GaussianPRF` (integrated exactly over square pixels with erf differences) and
    :class:`MoffatPSF` (integrated on an ``n x n`` Gauss-Legendre sub-pixel grid).
``discrete``
    :class:`DiscretePSF`, a matrix PSF (MATPHOT, or an ePSF) shifted by separable interpolation.
``kernels``
    The interpolation kernels (damped sinc, Keys, cubic B-spline).
``varying``
    Spatially varying PSFs (:class:`PolynomialPSF`, :class:`GriddedPSF`): ``psf.at(x, y)``
    gives one PSF per position.
``detector``
    :class:`DetectorPRF`: quantum efficiency and intrapixel sensitivity.
``fits``
    The one PSF file format (:func:`read_psf_fits`, :func:`write_psf_fits`).
``spec``
    ``"gaussian:fwhm=3"``-style specifications (:func:`parse_psf_spec`).
``measure``
    What the image pipeline needs to know of any PSF: FWHM, stamp size, validity.
``instruments``
    Instrument PSF libraries (HST WFC3/UVIS).
"""

from __future__ import annotations

from ..constants import FWHM_TO_SIGMA
from .analytic import GaussianPRF, MoffatPSF
from .detector import DetectorPRF, ugly_detector_sensitivity
from .discrete import DiscretePSF, interpolation_matrix
from .fits import PSFOversamplingWarning, check_psf_sampling, read_psf_fits, write_psf_fits
from .instruments import read_wfc3_uvis_grid, wfc3_uvis_grid_positions
from .measure import check_psf, psf_fwhm, support_half
from .spec import PSFSpecError, parse_psf_spec
from .varying import BatchedDiscretePSF, GriddedPSF, PolynomialPSF, PSFGridWarning, poly_terms

__all__ = [
    "GaussianPRF", "MoffatPSF", "DiscretePSF", "interpolation_matrix", "FWHM_TO_SIGMA",
    "DetectorPRF", "ugly_detector_sensitivity",
    "BatchedDiscretePSF", "PolynomialPSF", "GriddedPSF", "PSFGridWarning", "poly_terms",
    "PSFOversamplingWarning", "check_psf_sampling",
    "read_psf_fits", "write_psf_fits", "read_wfc3_uvis_grid", "wfc3_uvis_grid_positions",
    "psf_fwhm", "support_half", "check_psf", "parse_psf_spec", "PSFSpecError",
]
