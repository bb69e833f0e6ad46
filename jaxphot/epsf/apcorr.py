"""Aperture correction of PSF photometry, measured on the PSF stars themselves."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from astropy.stats import mad_std

from ..aperture import aperture_sums


class ApertureCorrection(NamedTuple):
    """Ratio of large-aperture to PSF-fitted fluxes of the PSF stars (see :func:`aperture_correction`).

    Attributes
    ----------
    value : float
        Robust weighted mean ratio: multiply PSF-fitted fluxes by it to get the flux within
        ``radius`` (the total flux when the aperture holds all the light).
    error : float
        Its 1-sigma uncertainty (from the stars' scatter when that exceeds their errors).
    ratio : (N,) array
        Each star's ratio (NaN where unusable: off the image, masked pixels, non-positive flux).
    used : (N,) bool array
        Stars kept by the clipping.
    radius : float
        Aperture radius (pixels).
    annulus : (float, float)
        Sky annulus radii (pixels).
    """

    value: float
    error: float
    ratio: np.ndarray
    used: np.ndarray
    radius: float
    annulus: tuple[float, float]


def aperture_correction(
    image,
    x,
    y,
    flux,
    radius: float,
    *,
    annulus=None,
    mask=None,
    error=None,
    gain: float | None = None,
    clip_sigma: float = 3.0,
) -> ApertureCorrection:
    """Aperture correction of PSF photometry, measured on the PSF stars themselves (as in DAOPHOT).

    For each star the flux in a circular aperture of ``radius`` (local sky: median of an
    annulus) is divided by its PSF-fitted flux; the ratios are combined by an inverse-variance
    weighted mean with iterative ``clip_sigma`` clipping (neighbours, cosmic rays). An ePSF built
    with a local sky (:func:`build_epsf`) holds only the light above its box's rim level, so its
    fitted fluxes fall short of the total by the light in the wings (e.g. 3.6 % for the WFC3/UVIS
    PSF in a 21 px box); this ratio, with a radius that encloses the PSF, restores it.

    Parameters
    ----------
    image : (H, W) array
        The image (counts, sky not subtracted or subtracted: the annulus takes it out).
    x, y : (N,) arrays
        Star positions (pixels, 0-based), e.g. ``x_fit, y_fit`` of the PSF fit.
    flux : (N,) array
        PSF-fitted fluxes (counts).
    radius : float
        Aperture radius (pixels): large enough to hold (nearly) all the light.
    annulus : (float, float), optional
        Sky annulus radii (pixels); default ``(radius + 2, radius + 2 + max(5, radius / 2))``.
    mask : (H, W) bool array, optional
        Bad pixels; stars with any in their aperture are not used.
    error : (H, W) array, optional
        Pixel 1-sigma errors (counts) for the weights; default: the annulus scatter plus
        Poisson noise ``flux / gain``.
    gain : float, optional
        Electrons per count, for the Poisson part of the weights (ignored with ``error``).
    clip_sigma : float
        Stars whose ratio is further than ``clip_sigma`` sigma (their own error times the
        robust spread of the normalised residuals, when > 1) from the mean are left out.

    Returns
    -------
    ApertureCorrection

    Raises
    ------
    ValueError
        Bad radii, arrays of different lengths, or no usable star.
    """
    img = np.asarray(image, np.float64)
    x, y, flux = (np.atleast_1d(np.asarray(a, np.float64)) for a in (x, y, flux))
    if not (x.shape == y.shape == flux.shape and x.ndim == 1):
        raise ValueError(f"x, y, flux must be 1-D of one length, got {x.shape, y.shape, flux.shape}")
    r = float(radius)
    if not r > 0:
        raise ValueError(f"radius must be > 0 pixels, got {radius!r}")
    r_in, r_out = annulus if annulus is not None else (r + 2.0, r + 2.0 + max(5.0, r / 2.0))
    r_in, r_out = float(r_in), float(r_out)
    if not (r <= r_in < r_out):
        raise ValueError(f"annulus must satisfy radius <= r_in < r_out, got {(r_in, r_out)}")
    fin = np.isfinite(x) & np.isfinite(y)
    pos = np.stack([np.where(fin, x, 0.0), np.where(fin, y, 0.0)], 1)
    var = None if error is None else np.broadcast_to(np.asarray(error, np.float64) ** 2, img.shape)
    a = aperture_sums(img, pos, "circle", (r,), mask=mask, variance=var, annulus=(r_in, r_out))
    tot, area = a["sum"][:, 0], a["area"][:, 0]
    sky, sky_std, n_sky = a["sky"], a["sky_std"], np.maximum(a["n_sky"], 1)
    ap = tot - area * sky
    # variance of the aperture flux: sky noise in the aperture and in the sky estimate (a median:
    # pi/2 times a mean's), plus the star's own noise
    v = area * sky_std**2 * (1.0 + area * (np.pi / 2) / n_sky)
    if var is not None:
        v = a["sum_var"][:, 0] + area**2 * sky_std**2 * (np.pi / 2) / n_sky
    elif gain is not None and gain > 0:
        v = v + np.maximum(flux, 0.0) / gain
    ok = (
        fin
        & np.isfinite(ap)
        & np.isfinite(v)
        & (v > 0)
        & np.isfinite(flux)
        & (flux > 0)
        & (a["bad_area"][:, 0] == 0)
        & (a["off_area"][:, 0] == 0)
    )
    if not ok.any():
        raise ValueError("no star usable for the aperture correction (edge, masked or no flux)")
    ratio = np.where(ok, ap / np.where(ok, flux, 1.0), np.nan)
    sig = np.where(ok, np.sqrt(np.where(ok, v, 1.0)) / np.where(ok, flux, 1.0), np.inf)
    keep = ok.copy()
    for _ in range(10):
        w = 1.0 / sig[keep] ** 2
        mean = float(np.sum(w * ratio[keep]) / np.sum(w))
        z = (ratio - mean) / sig
        spread = max(1.0, float(mad_std(z[keep])))
        new = ok & (np.abs(z) <= clip_sigma * spread)
        if np.array_equal(new, keep) or new.sum() < 2:
            break
        keep = new
    w = 1.0 / sig[keep] ** 2
    mean = float(np.sum(w * ratio[keep]) / np.sum(w))
    chi2 = float(np.sum(w * (ratio[keep] - mean) ** 2) / max(keep.sum() - 1, 1))
    err = float(np.sqrt(max(chi2, 1.0) / np.sum(w)))
    return ApertureCorrection(mean, err, ratio, keep, r, (r_in, r_out))
