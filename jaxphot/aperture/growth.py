"""Growth curves and aperture corrections from apertures of several radii."""

from __future__ import annotations

import math

import jax
import numpy as np

from .. import stats
from .apphot import aperture_photometry

__all__ = ["growth_curve", "aperture_corrections"]


def growth_curve(
    data, positions, radii, *, normalize_radius=None, **kwargs
) -> dict[str, np.ndarray]:
    """Curves of growth of (bright, isolated) stars.

    Parameters
    ----------
    data : array_like (H, W)
        Image in counts.
    positions : array_like (N, 2)
        Star positions ``(x, y)``.
    radii : sequence of float
        Increasing aperture radii (px).
    normalize_radius : float, optional
        Radius whose flux normalises each curve; default the largest radius.
    **kwargs
        Passed to :func:`aperture_photometry` (sky annulus etc.).

    Returns
    -------
    dict
        ``radii`` (R,), ``flux`` (N, R), ``fraction`` (N, R) flux/flux(normalize_radius),
        ``mean_fraction`` (R,) and ``std_fraction`` (R,) over stars (NaN-aware).
    """
    radii = [float(x) for x in radii]
    if normalize_radius is not None and normalize_radius not in radii:
        radii = sorted(radii + [float(normalize_radius)])
    t = aperture_photometry(data, positions, list(radii), **kwargs)
    flux = np.asarray(t["flux"], dtype=float)
    iref = radii.index(float(normalize_radius)) if normalize_radius is not None else len(radii) - 1
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = flux / flux[:, iref : iref + 1]
    return {
        "radii": np.asarray(radii),
        "flux": flux,
        "fraction": frac,
        "mean_fraction": np.nanmean(frac, axis=0),
        "std_fraction": np.nanstd(frac, axis=0, ddof=1)
        if frac.shape[0] > 1
        else np.zeros(len(radii)),
    }


def aperture_corrections(
    data, positions, r, r_ref, *, sigma: float = 3.0, **kwargs
) -> tuple[float, float, np.ndarray]:
    """Aperture correction from radius ``r`` to the reference (large) radius ``r_ref``.

    The correction per star is ``Δm = m(r_ref) - m(r)`` (negative: the large aperture is brighter);
    it is combined over stars with a sigma-clipped mean, and its uncertainty is the standard error of
    that mean.

    Parameters
    ----------
    data : array_like (H, W)
    positions : array_like (N, 2)
        Bright, isolated stars.
    r, r_ref : float
        Measurement and reference radii (px).
    sigma : float
        Clipping threshold over stars.
    **kwargs
        Passed to :func:`aperture_photometry`.

    Returns
    -------
    corr, corr_err : float
        Magnitudes to add to ``m(r)`` to get ``m(r_ref)``, and its uncertainty.
    per_star : ndarray (N,)
        The individual corrections (NaN for unusable stars).
    """
    t = aperture_photometry(data, positions, [float(r), float(r_ref)], **kwargs)
    mag = np.asarray(t["mag"], dtype=float)
    d = mag[:, 1] - mag[:, 0]
    with jax.enable_x64(True):
        keep = np.asarray(stats.sigma_clip_mask(d, sigma=sigma, maxiters=5))
    n = int(keep.sum())
    if n == 0:
        return float("nan"), float("nan"), d
    vals = d[keep]
    corr = float(vals.mean())
    err = float(vals.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return corr, err, d
