"""Numbers used in more than one place, each defined once."""

from __future__ import annotations

import math

__all__ = ["FWHM_TO_SIGMA", "FWHM_CRITICAL", "POGSON"]

#: sigma of a Gaussian per unit FWHM, 1 / (2 sqrt(2 ln 2)).
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
#: FWHM (px) of the critically sampled Gaussian, sigma = 1 px.
FWHM_CRITICAL = 2.0 * math.sqrt(2.0 * math.log(2.0))
#: 2.5 / ln 10 = 1.0857: d(mag) = POGSON * dF / F.
POGSON = 2.5 / math.log(10.0)
