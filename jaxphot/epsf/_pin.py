"""Pinning the two degeneracies of the joint fit: the ePSF's normalisation and its centre."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..psf.kernels import bspline_prefilter, spline_samples
from ._reference import fwhm_samples, moffat_lsq


def _kernel_matrix(n: int, shift: float) -> np.ndarray:
    """(n, n) matrix evaluating a cubic spline (coefficients) at indices ``a + shift``."""
    a = np.arange(n)[:, None] + shift
    t = np.abs(a - np.arange(n)[None, :])
    return np.where(t <= 1, 2 / 3 - t**2 + 0.5 * t**3, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))


def _centroid(samples: np.ndarray, radius: float) -> tuple[float, float]:
    """First moment (in array units, relative to the centre) inside a circle of ``radius``."""
    n_y, n_x = samples.shape
    yy, xx = np.mgrid[0:n_y, 0:n_x]
    u, v = xx - (n_x - 1) / 2.0, yy - (n_y - 1) / 2.0
    inside = u * u + v * v <= radius * radius
    w = np.where(inside, samples, 0.0)
    tot = w.sum()
    if not tot > 0:
        return 0.0, 0.0
    return float((w * u).sum() / tot), float((w * v).sum() / tot)


class _CoreCentre(NamedTuple):
    """Centre of an elliptical Moffat PRF fitted to the core samples, and its linearisation.

    ``x, y``: the centre (array units, relative to the array centre). ``gain``: (2, K) rows
    giving the change of ``(x, y)`` per unit change of each of the K ``core`` samples (the
    ``x0, y0`` rows of the least-squares pseudo-inverse), so a variation term's own centre shift
    is a dot product.
    """

    x: float
    y: float
    gain: np.ndarray
    core: np.ndarray


def _core_centre(samples: np.ndarray, s: int, radius: float) -> _CoreCentre | None:
    """Fit an elliptical Moffat PRF to the samples within ``radius`` (array units); None on failure.

    This is the ePSF's position convention. A PSF library (or the optics) defines a star's position
    by its core; the first moment also weighs the asymmetric wings. On the 36 WFC3/UVIS F814W
    library nodes the core-fit centre (radius 1.2 FWHM) stays within 1.1 / 1.5 mpx (std, x / y) of
    the library's origin, the first moment within 1.2 FWHM drifts by 4.1 / 4.5 mpx, and a 3 FWHM
    first moment by 51 / 60 mpx. A centre that drifts across the field becomes a position error
    that varies with the star's position, which no global offset removes.
    """
    n = samples.shape[0]
    off = (np.arange(n) - (n - 1) / 2.0) / s
    core = np.hypot(off[None, :], off[:, None]) <= radius / s
    try:
        r, _, _ = moffat_lsq(samples, s, core)
        with np.errstate(all="ignore"):
            gain = np.linalg.pinv(r.jac)[1:3] * s
    except (ValueError, np.linalg.LinAlgError):
        return None
    x, y = r.x[1] * s, r.x[2] * s
    if not (r.success and np.all(np.isfinite(gain)) and max(abs(x), abs(y)) < radius):
        return None
    return _CoreCentre(float(x), float(y), gain, core)


def _moments(samples: np.ndarray, radius: float) -> tuple[float, float, float]:
    """Zeroth and first moments (array units, about the centre) inside a circle of ``radius``."""
    n_y, n_x = samples.shape
    yy, xx = np.mgrid[0:n_y, 0:n_x]
    u, v = xx - (n_x - 1) / 2.0, yy - (n_y - 1) / 2.0
    w = np.where(u * u + v * v <= radius * radius, samples, 0.0)
    return float(w.sum()), float((w * u).sum()), float((w * v).sum())


def pin_psf(coeffs: np.ndarray, s: int, n: int, centre: bool) -> tuple[np.ndarray, float]:
    """Rescale to sum s^2 (term 0), recentre all terms on term 0's centre, fix the centre.

    The centre is that of a Moffat fitted to the core (:func:`_core_centre`), or the first moment
    within the same radius when that fit fails. Terms t > 0 are made centre-free (the centre stays
    at the origin across the field, to first order) and sum-free (``C_t -= (sum_t / sum_0) C_0``)
    so that the PSF's sum is s^2 everywhere, to first order (``PolynomialPSF.at`` renormalises
    exactly). Returns the coefficients and the FWHM in detector pixels.
    """
    c = coeffs.reshape(-1, n, n).astype(np.float64)
    s0 = spline_samples(c[0], "bspline3")
    fwhm = fwhm_samples(s0)
    radius = max(1.2 * fwhm, 1.5 * s)
    fit = None
    if centre:
        for _ in range(3):
            s0 = spline_samples(c[0], "bspline3")
            fit = _core_centre(s0, s, radius)
            mx, my = (fit.x, fit.y) if fit is not None else _centroid(s0, radius)
            if max(abs(mx), abs(my)) < 1e-4:
                break
            kx, ky = _kernel_matrix(n, mx), _kernel_matrix(n, my)
            c = np.stack([bspline_prefilter(ky @ t @ kx.T) for t in c])
    if centre and len(c) > 1:
        # A centre that drifts across the field is degenerate with star positions that drift
        # alike (the start positions' errors leak into it): give each variation term a zero
        # centre shift, C_t += a dC_0/du + b dC_0/dv, as a shift of the PSF by (-a, -b) would.
        s0 = spline_samples(c[0], "bspline3")
        gy, gx = np.gradient(s0)
        if fit is None:
            fit = _core_centre(s0, s, radius)
        if fit is not None:
            shift = lambda img: fit.gain @ img[fit.core]  # noqa: E731
        else:  # first moments over the zeroth
            shift = lambda img: np.array(_moments(img, radius)[1:]) / _moments(s0, radius)[0]  # noqa: E731
        g = np.stack([shift(gx), shift(gy)], 1)  # (2, 2): centre shift per unit gradient
        for t in range(1, len(c)):
            st = spline_samples(c[t], "bspline3")
            a, b = np.linalg.solve(g, -shift(st))
            c[t] = bspline_prefilter(st + a * gx + b * gy)
    sums = np.array([spline_samples(t, "bspline3").sum() for t in c])
    if not sums[0] > 0:
        raise ValueError("the ePSF update has a non-positive sum: the PSF stars carry no signal")
    c[1:] -= (sums[1:] / sums[0])[:, None, None] * c[0][None]
    c *= s * s / sums[0]
    return c.reshape(len(c), n * n), fwhm / s
