"""What the image pipeline needs to know of any PSF model: its FWHM, stamp size and validity."""

from __future__ import annotations

import math

import numpy as np

from ..core.scene import PSFModel

__all__ = ["psf_fwhm", "support_half", "check_psf", "check_psf_coverage", "PSFCoverageWarning", "is_varying",
           "sample_psfs"]


class PSFCoverageWarning(UserWarning):
    """A spatially varying PSF whose domain leaves much of the image uncovered."""


def check_psf_coverage(psf, shape, min_fraction: float = 0.5) -> None:
    """Warn when a varying PSF's domain does not cover the image of ``shape`` (H, W).

    A GriddedPSF is held constant beyond its outermost nodes and a PolynomialPSF extrapolates
    beyond ``center +- scale``: either is a guess there. Warns (PSFCoverageWarning) when the
    nodes span less than ``min_fraction`` of the image along an axis, or when the polynomial's
    domain misses more than 10 % of the image's extent; a constant PSF passes.
    """
    import warnings

    if not is_varying(psf):
        return
    h, w = shape
    if hasattr(psf, "grid_x"):
        gx, gy = np.asarray(psf.grid_x, float), np.asarray(psf.grid_y, float)
        fx = (min(gx.max(), w - 0.5) - max(gx.min(), -0.5)) / w
        fy = (min(gy.max(), h - 0.5) - max(gy.min(), -0.5)) / h
        if (len(gx) > 1 and fx < min_fraction) or (len(gy) > 1 and fy < min_fraction):
            warnings.warn(
                f"psf grid nodes x {gx.min():.0f}..{gx.max():.0f}, y {gy.min():.0f}..{gy.max():.0f} "
                f"cover only {100 * max(fx, 0):.0f} % x {100 * max(fy, 0):.0f} % of the {w}x{h} "
                "image: the PSF is held constant beyond the outermost nodes",
                PSFCoverageWarning, stacklevel=3,
            )
    else:
        (cx, cy), (sx, sy) = psf.center, psf.scale
        miss = max(max(0.0, cx - sx + 0.5), max(0.0, w - 0.5 - cx - sx)) / w
        miss = max(miss, max(max(0.0, cy - sy + 0.5), max(0.0, h - 0.5 - cy - sy)) / h)
        if miss > 0.1:
            warnings.warn(
                f"the polynomial PSF's domain (centre {psf.center}, scale {psf.scale}) misses "
                f"{100 * miss:.0f} % of the {w}x{h} image: it is extrapolated there",
                PSFCoverageWarning, stacklevel=3,
            )


def is_varying(psf) -> bool:
    """True for a spatially varying PSF (one with ``at(x, y)``, e.g. PolynomialPSF, GriddedPSF)."""
    return callable(getattr(psf, "at", None)) and not hasattr(psf, "evaluate")


def sample_positions(psf) -> tuple[np.ndarray, np.ndarray]:
    """Image positions (x, y) spanning a varying PSF's domain: its centre, edges and corners.

    A PolynomialPSF spans ``center +- scale``; a GriddedPSF its outermost nodes.
    """
    if hasattr(psf, "grid_x"):
        xs, ys = np.asarray(psf.grid_x, float), np.asarray(psf.grid_y, float)
        gx = np.unique([xs.min(), 0.5 * (xs.min() + xs.max()), xs.max()])
        gy = np.unique([ys.min(), 0.5 * (ys.min() + ys.max()), ys.max()])
    else:
        (cx, cy), (sx, sy) = psf.center, psf.scale
        gx, gy = cx + sx * np.array([-1.0, 0.0, 1.0]), cy + sy * np.array([-1.0, 0.0, 1.0])
    xx, yy = np.meshgrid(gx, gy)
    return xx.ravel(), yy.ravel()


def sample_psfs(psf) -> list:
    """The PSF itself, or for a varying PSF the DiscretePSFs at :func:`sample_positions`."""
    if not is_varying(psf):
        return [psf]
    x, y = sample_positions(psf)
    return [psf.psf_at(float(a), float(b)) for a, b in zip(x, y, strict=True)]


def psf_fwhm(psf: PSFModel) -> float:
    """FWHM of a PSF model in detector pixels.

    Uses ``psf.fwhm`` (the larger of ``fwhm``/``fwhm_y``) when the model has one, else the
    area above half maximum of the PSF matrix (``psf.array``), ``2 sqrt(area / pi)``, in
    detector pixels. Falls back to the PRF evaluated on a pixel grid. For a spatially varying
    PSF, the largest FWHM over its centre, edges and corners (so stamps and grouping radii fit
    the widest star).
    """
    if is_varying(psf):
        return max(psf_fwhm(p) for p in sample_psfs(psf))
    if hasattr(psf, "fwhm"):
        try:
            return float(max(float(psf.fwhm), float(getattr(psf, "fwhm_y", psf.fwhm))))
        except (TypeError, ValueError):
            pass
    if hasattr(psf, "array") and hasattr(psf, "oversampling"):
        a = np.asarray(psf.array, float)
        s = float(psf.oversampling)
    else:
        a = np.asarray(psf.evaluate(15.0, 15.0, (31, 31)), float)
        s = 1.0
    if not np.all(np.isfinite(a)) or not a.max() > 0:
        raise ValueError("psf evaluates to non-finite or non-positive values")
    area = np.count_nonzero(a >= 0.5 * a.max()) / s**2
    return float(max(2.0 * math.sqrt(area / math.pi), 0.5))


def support_half(psf: PSFModel, fwhm: float) -> int:
    """Half size (pixels) of the stamp on which one star's model is evaluated."""
    if is_varying(psf):  # coeffs (T, ny, nx) or (gy, gx, ny, nx): the last two axes
        ny, nx = np.shape(psf.coeffs)[-2:]
        return int(math.ceil(max(ny, nx) / (2.0 * psf.oversampling))) + 1
    if hasattr(psf, "coeffs") and hasattr(psf, "oversampling"):
        ny, nx = np.shape(psf.coeffs)
        return int(math.ceil(max(ny, nx) / (2.0 * psf.oversampling))) + 1
    # Gaussian: 2.5 FWHM is 5.9 sigma (negligible flux beyond); Moffat wings get more room.
    factor = 2.5 if type(psf).__name__ == "GaussianPRF" else 4.0
    return int(math.ceil(factor * fwhm)) + 1


def check_psf(psf: PSFModel, half: int) -> None:
    """Raise a ValueError unless ``psf`` gives a finite, positive (2 half + 1)^2 pixel stamp.

    A spatially varying PSF is checked at its centre, edges and corners, and its stored
    coefficients (every term or grid node) must be finite.
    """
    if is_varying(psf):
        if not np.all(np.isfinite(np.asarray(psf.coeffs))):
            raise ValueError("psf (spatially varying) has non-finite coefficients (NaN or inf)")
        for p in sample_psfs(psf):
            check_psf(p, half)
        return
    n = 2 * half + 1
    try:
        prf = np.asarray(psf.evaluate(float(half), float(half), (n, n)), float)
    except Exception as exc:  # any failure of a user's PSF object is a bad-input error
        raise ValueError(f"psf cannot be evaluated: {exc}") from exc
    if prf.shape != (n, n):
        raise ValueError(f"psf.evaluate returned shape {prf.shape}, expected {(n, n)}")
    if not np.all(np.isfinite(prf)):
        raise ValueError("psf evaluates to non-finite values (NaN or inf)")
    if not prf.sum() > 0:
        raise ValueError("psf evaluates to a non-positive total")
