"""Per-star quality flags: a documented bitmask. 0 means a clean fit."""

from __future__ import annotations

import enum

__all__ = ["FitFlag", "describe_flags"]


class FitFlag(enum.IntFlag):
    """Bits of the ``flags`` column.

    Attributes
    ----------
    NOT_CONVERGED (1)
        The iteration cap was reached before the step criterion held.
    SINGULAR_COVARIANCE (2)
        ``J^T W J`` could not be inverted: errors are NaN (e.g. a degenerate blend).
    NON_FINITE (4)
        The solution or chi^2 is not finite; the fitted values are NaN.
    OUTSIDE_CUTOUT (8)
        The fitted centre lies outside the cutout (beyond half a pixel from its edge).
    TOO_FEW_PIXELS (16)
        Fewer valid pixels than free parameters + 1; not fitted, values are NaN.
    BAD_PIXELS (32)
        Some pixels were ignored because the data were NaN/inf or the error was not a positive
        finite number (user-masked pixels do not set this bit).
    MERGED (64)
        Set by the crowded-field driver: the star merged with a brighter neighbour and was removed.
    FADED (128)
        Set by the crowded-field driver: the star fell below the detection threshold on refitting.
    SATURATED (256)
        The star's core holds pixels at or above the saturation level: they (and their bleed
        columns) were masked and the star was fitted on its unsaturated wings.
    """

    NOT_CONVERGED = 1
    SINGULAR_COVARIANCE = 2
    NON_FINITE = 4
    OUTSIDE_CUTOUT = 8
    TOO_FEW_PIXELS = 16
    BAD_PIXELS = 32
    MERGED = 64
    FADED = 128
    SATURATED = 256


def describe_flags(value: int) -> list[str]:
    """Names of the bits set in ``value``, e.g. ``describe_flags(9) -> ['NOT_CONVERGED', ...]``."""
    return [f.name for f in FitFlag if int(value) & f.value]
