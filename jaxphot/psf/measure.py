"""What the image pipeline needs to know of any PSF model: its FWHM, stamp size and validity."""

from __future__ import annotations

import math

import numpy as np

from ..core.scene import PSFModel

__all__ = ["psf_fwhm", "support_half", "check_psf"]


def psf_fwhm(psf: PSFModel) -> float:
    """FWHM of a PSF model in detector pixels.

    Uses ``psf.fwhm`` (the larger of ``fwhm``/``fwhm_y``) when the model has one, else the
    area above half maximum of the PSF matrix (``psf.array``), ``2 sqrt(area / pi)``, in
    detector pixels. Falls back to the PRF evaluated on a pixel grid.
    """
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
    if hasattr(psf, "coeffs") and hasattr(psf, "oversampling"):
        ny, nx = np.shape(psf.coeffs)
        return int(math.ceil(max(ny, nx) / (2.0 * psf.oversampling))) + 1
    # Gaussian: 2.5 FWHM is 5.9 sigma (negligible flux beyond); Moffat wings get more room.
    factor = 2.5 if type(psf).__name__ == "GaussianPRF" else 4.0
    return int(math.ceil(factor * fwhm)) + 1


def check_psf(psf: PSFModel, half: int) -> None:
    """Raise a ValueError unless ``psf`` gives a finite, positive (2 half + 1)^2 pixel stamp."""
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
