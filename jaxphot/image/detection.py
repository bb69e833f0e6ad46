"""Star detection, segmentation and centroiding.

Three detectors; the first two share one measurement stage:

* ``method="daofind"`` (Stetson 1987): the background-subtracted image is correlated with a
  zero-sum, truncated Gaussian kernel. Its value at a pixel is the least-squares flux of a
  (pixel-integrated) Gaussian star plus a constant sky centred there, so dividing by that
  flux's noise gives a matched-filter S/N. Local maxima above ``threshold`` (in σ) are candidates.
* ``method="peak"`` (Mighell 1999): the image is low-pass filtered with the 3×3 LP kernel,
  a 5×5 median of that is subtracted (the LPD filter, which removes the sky), and pixels
  larger than all 8 neighbours and above ``threshold`` times the LPD noise are candidates.
* ``method="iraf"`` (IRAF ``starfind``, as photutils' ``IRAFStarFinder``): candidates are the
  DAOFIND matched-filter peaks, kept at least ``minsep_fwhm`` FWHMs apart; each is then
  measured by moments of its footprint pixels after subtracting a local sky (the mean of the
  kernel box outside the footprint) and clipping negative pixels to 0. The centroid is the
  first moment; ``fwhm = 2 sqrt(ln 2 (μ20 + μ02))``, ``sharpness = fwhm / fwhm_kernel`` and
  ``roundness = sqrt((μ20 − μ02)² + 4μ11²) / (μ20 + μ02)`` (0 for a round star) come from
  the central second moments.

All thresholds of :func:`find_stars` are in σ of the detection image unless given in image
units with ``threshold_abs``.

For every candidate, the same cutout statistics follow: DAOFIND's sharpness, two roundness
measures, a centroid (marginal Gaussian fit, modified moments or the peak pixel), the
Gaussian amplitude, a flux estimate and the matched-filter S/N.

Conventions: pixel ``a[j, i]`` is centred at ``x = i, y = j`` (0-based). Batched centroid
functions take cutouts of shape (N, h, w) and return positions in the cutout's own pixel
coordinates (``x`` = column index).
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from astropy.stats import mad_std
from astropy.table import Table
from scipy import ndimage

from ..constants import FWHM_TO_SIGMA
from ..core.config import enable_compilation_cache
from ..validate import check_positive
from .background import Background, estimate_background
from .cutouts import extract_cutouts

__all__ = [
    "find_stars",
    "find_peaks",
    "segment",
    "daofind_kernel",
    "lpd_filter",
    "centroid_moments",
    "centroid_gaussian_marginal",
]

# Mighell's 3×3 low-pass kernel (a binomial smoother).
_LP3 = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=float) / 16.0


# --------------------------------------------------------------------------------------
# Kernels and filters
# --------------------------------------------------------------------------------------


def daofind_kernel(
    fwhm: float, ratio: float = 1.0, theta: float = 0.0, sigma_radius: float = 3.0
) -> dict:
    """DAOFIND's matched-filter kernel for an elliptical Gaussian star.

    Parameters
    ----------
    fwhm : float
        FWHM of the Gaussian along its major axis (pixels).
    ratio : float
        Minor/major axis ratio, in (0, 1].
    theta : float
        Position angle of the major axis, degrees counter-clockwise from +x.
    sigma_radius : float
        The kernel is truncated at this many σ (major axis), at least 2 pixels.

    Returns
    -------
    dict
        ``prf`` (k, k): the pixel-integrated Gaussian of unit volume, inside the footprint
        (0 outside); ``kernel`` (k, k): the flux-estimating kernel
        ``(p − p̄)/(Σp² − (Σp)²/n)`` over the footprint (correlating a sky-subtracted image
        with it gives the least-squares flux of a star + constant at each pixel);
        ``footprint`` (k, k) bool; ``flux_noise`` = sqrt(Σ kernel²), the flux noise per
        unit pixel σ; ``sigma_x``, ``sigma_y``: σ of the major and minor axes (pixels);
        ``volume`` = 2π σ_maj σ_min, the flux of a unit-peak Gaussian.

    Notes
    -----
    Fitting the constant costs S/N on a small footprint: relative to a known-sky matched
    filter, the flux S/N is ≈0.37 of the ideal for σ = 1.5 px at DAOFIND's usual 1.5σ
    truncation, 0.77 at 3σ and 0.86 at 4σ. Since jaxphot subtracts a background map first,
    the default here is 3σ.
    """
    if not (np.isfinite(fwhm) and fwhm > 0):
        raise ValueError(f"fwhm must be a positive number of pixels, got {fwhm}")
    if not (0 < ratio <= 1):
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    s_maj = fwhm * FWHM_TO_SIGMA
    s_min = s_maj * ratio
    t = np.deg2rad(theta)
    a = np.cos(t) ** 2 / (2 * s_maj**2) + np.sin(t) ** 2 / (2 * s_min**2)
    b = 0.5 * np.sin(2 * t) * (1 / (2 * s_min**2) - 1 / (2 * s_maj**2))
    c = np.sin(t) ** 2 / (2 * s_maj**2) + np.cos(t) ** 2 / (2 * s_min**2)
    r = max(2.0, sigma_radius * s_maj)
    half = int(np.floor(r))
    # Pixel-integrated profile (5×5 sub-pixel samples), unit volume over the plane, so
    # that the filtered image estimates the total flux of a star directly.
    sub = (np.arange(5) - 2.0) / 5.0
    y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(float)
    ys = y[..., None, None] + sub[:, None]
    xs = x[..., None, None] + sub[None, :]
    prof = np.exp(-(a * xs * xs + 2 * b * xs * ys + c * ys * ys)).mean(axis=(-2, -1))
    volume = 2 * np.pi * s_maj * s_min
    g = prof / volume
    # Footprint: the ellipse out to sigma_radius, and at least the disc of radius 2 px.
    g_c = np.exp(-(a * x * x + 2 * b * x * y + c * y * y))
    foot = (g_c >= np.exp(-0.5 * sigma_radius**2)) | (x * x + y * y <= 2.0**2)
    n = foot.sum()
    g = np.where(foot, g, 0.0)
    denom = (g**2).sum() - g.sum() ** 2 / n
    kern = np.where(foot, (g - g.sum() / n) / denom, 0.0)
    return {
        "prf": g,
        "kernel": kern,
        "footprint": foot,
        "flux_noise": float(np.sqrt((kern**2).sum())),
        "sigma_x": s_maj,
        "sigma_y": s_min,
        "volume": volume,
    }


def lpd_filter(data) -> np.ndarray:
    """Mighell's low-pass-difference filter: LP₃ₓ₃(F) − MEDIAN₅ₓ₅(LP₃ₓ₃(F)).

    A high-pass filter that removes the smooth sky and enhances point sources. NaNs should
    be replaced (e.g. by the background) before calling.

    Parameters
    ----------
    data : array_like, shape (ny, nx)

    Returns
    -------
    ndarray, shape (ny, nx)
    """
    lp = ndimage.correlate(np.asarray(data, dtype=float), _LP3, mode="nearest")
    return lp - ndimage.median_filter(lp, size=5, mode="nearest")


# Mighell's tie rule: an equal 8-neighbour at (xx <= x and yy <= y) or (xx > x and yy < y) wins.
_TIE_OFFSETS = ((-1, -1), (-1, 0), (0, -1), (-1, 1))  # (dy, dx)
_SPARSE_CHUNK = 1 << 16  # candidate pixels per gather of their footprints


def _local_peaks(img: np.ndarray, footprint: np.ndarray | None,
                 where: np.ndarray | None = None) -> np.ndarray:
    """Boolean map of local maxima, with Mighell's tie rule on the 8 neighbours.

    A pixel is a peak if no neighbour (within ``footprint``, default 3×3) is larger, and no
    equal 8-neighbour lies below-left/below/left or below-right of it (so exactly one pixel
    of a flat plateau pair survives). With ``where`` (bool, like ``img``) only those pixels
    can be peaks; when they are few they alone are tested (the same answer, without a
    maximum filter over the whole image: most of a sparse large frame's detection time).
    """
    fp = np.ones((3, 3), bool) if footprint is None else np.asarray(footprint, bool)
    if np.isnan(img).any():  # NaN is no peak and hides none (the maximum filter's is undefined)
        img = np.where(np.isnan(img), -np.inf, img)
    if where is not None and np.count_nonzero(where) < img.size // 16:
        out = np.zeros(img.shape, bool)
        iy, ix = np.nonzero(where)
        out[iy, ix] = _peaks_at(img, fp, iy, ix)
        return out
    big = ndimage.maximum_filter(img, footprint=fp, mode="constant", cval=-np.inf)
    peak = img >= big
    ny, nx = img.shape
    pad = np.pad(img, 1, constant_values=-np.inf)
    for dy, dx in _TIE_OFFSETS:
        peak &= ~(pad[1 + dy : 1 + dy + ny, 1 + dx : 1 + dx + nx] == img)
    return peak if where is None else peak & where


def _neighbours(img: np.ndarray, iy, ix, oy, ox) -> np.ndarray:
    """(n, m) values of ``img`` at pixels (iy + oy, ix + ox); -inf off the image."""
    ny, nx = img.shape
    yy, xx = iy[:, None] + oy[None, :], ix[:, None] + ox[None, :]
    inb = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
    return np.where(inb, img[np.clip(yy, 0, ny - 1), np.clip(xx, 0, nx - 1)], -np.inf)


def _peaks_at(img: np.ndarray, fp: np.ndarray, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """:func:`_local_peaks`' test at the pixels (iy, ix) only: (n,) bool."""
    oy, ox = (a - fp.shape[i] // 2 for i, a in enumerate(np.nonzero(fp)))
    ty, tx = (np.array(a) for a in zip(*_TIE_OFFSETS, strict=True))
    out = np.empty(len(iy), bool)
    for a in range(0, len(iy), _SPARSE_CHUNK):  # bounded memory: chunks of candidates
        cy, cx = iy[a:a + _SPARSE_CHUNK], ix[a:a + _SPARSE_CHUNK]
        v = img[cy, cx]
        peak = v >= _neighbours(img, cy, cx, oy, ox).max(1)
        out[a:a + _SPARSE_CHUNK] = peak & ~(_neighbours(img, cy, cx, ty, tx) == v[:, None]).any(1)
    return out


# --------------------------------------------------------------------------------------
# Centroids (batched, JAX)
# --------------------------------------------------------------------------------------


def _as_batch(cutouts, mask):
    c = jnp.asarray(cutouts, dtype=jnp.result_type(float))
    if c.ndim == 2:
        c = c[None]
    if c.ndim != 3:
        raise ValueError(f"cutouts must have shape (N, h, w), got {c.shape}")
    valid = jnp.isfinite(c)
    if mask is not None:
        m = jnp.asarray(mask, dtype=bool)
        if m.ndim == 2:
            m = m[None]
        valid = valid & ~m
    return jnp.where(valid, c, 0.0), valid


@jax.jit
def _moments_core(c, valid, x0, y0, radius, niter):
    h, w = c.shape[1:]
    yy = jnp.arange(h, dtype=c.dtype)[None, :, None]
    xx = jnp.arange(w, dtype=c.dtype)[None, None, :]

    def body(_, xy):
        x, y = xy
        inap = valid & (((xx - x[:, None, None]) ** 2 + (yy - y[:, None, None]) ** 2) <= radius**2)
        # Mighell: subtract the aperture minimum so no sky estimate is needed.
        zmin = jnp.min(jnp.where(inap, c, jnp.inf), axis=(1, 2))
        wgt = jnp.where(inap, jnp.maximum(c - zmin[:, None, None], 0.0), 0.0)
        s = jnp.sum(wgt, axis=(1, 2))
        ok = s > 0
        sx = jnp.sum(wgt * xx, axis=(1, 2)) / jnp.where(ok, s, 1.0)
        sy = jnp.sum(wgt * yy, axis=(1, 2)) / jnp.where(ok, s, 1.0)
        return jnp.where(ok, sx, jnp.nan), jnp.where(ok, sy, jnp.nan)

    return jax.lax.fori_loop(0, niter, body, (x0, y0))


def centroid_moments(cutouts, mask=None, *, radius: float | None = None, niter: int = 10):
    """Modified-moment centroids (Stone 1989, as simplified by Mighell 1999).

    In an aperture of ``radius`` around the current estimate, pixel weights are the
    intensities minus the aperture minimum (clipped at 0); the centroid is the weighted mean
    position and the aperture is re-centred on it ``niter`` times. No sky estimate needed.

    Parameters
    ----------
    cutouts : array_like, shape (N, h, w) or (h, w)
        Cutouts (image units). NaN pixels are ignored.
    mask : array_like of bool, same shape, optional
        True = ignore the pixel.
    radius : float, optional
        Aperture radius in pixels; default ``min(h, w) / 2``.
    niter : int
        Number of re-centring iterations.

    Returns
    -------
    x, y : jax.Array, shape (N,)
        Centroid in the cutout's pixel coordinates (x = column index). NaN where a cutout
        has no positive weight.
    """
    enable_compilation_cache()  # persistent cache on first use, never at import
    c, valid = _as_batch(cutouts, mask)
    n, h, w = c.shape
    r = float(min(h, w)) / 2.0 if radius is None else float(radius)
    x0 = jnp.full((n,), (w - 1) / 2.0, c.dtype)
    y0 = jnp.full((n,), (h - 1) / 2.0, c.dtype)
    return _moments_core(c, valid, x0, y0, r, int(niter))


def _fit_marginal(m, wm, coord, sigma, niter):
    """Gauss–Newton fit of B + H·exp(−(u − u0)²/2σ²) to 1-D profiles m (N, n)."""
    tot = jnp.sum(m * wm, axis=1)
    u0 = jnp.sum(jnp.maximum(m, 0) * wm * coord, axis=1) / jnp.maximum(
        jnp.sum(jnp.maximum(m, 0) * wm, axis=1), 1e-30
    )
    u0 = jnp.where(jnp.isfinite(u0), u0, jnp.mean(coord))
    del tot

    def body(_, u0):
        d = coord[None, :] - u0[:, None]
        g = jnp.exp(-0.5 * (d / sigma) ** 2)
        # Linear (B, H) for fixed u0, then one Newton step in u0: a robust split.
        a11 = jnp.sum(wm, 1)
        a12 = jnp.sum(wm * g, 1)
        a22 = jnp.sum(wm * g * g, 1)
        b1 = jnp.sum(wm * m, 1)
        b2 = jnp.sum(wm * m * g, 1)
        det = a11 * a22 - a12 * a12
        bb = (a22 * b1 - a12 * b2) / det
        hh = (a11 * b2 - a12 * b1) / det
        r = m - bb[:, None] - hh[:, None] * g
        dg = g * d / sigma**2  # ∂g/∂u0
        num = jnp.sum(wm * r * hh[:, None] * dg, 1)
        den = jnp.sum(wm * (hh[:, None] * dg) ** 2, 1)
        step = jnp.clip(num / den, -1.0, 1.0)  # at most one pixel per iteration
        new = u0 + jnp.where((hh > 0) & (den > 0), step, 0.0)
        return jnp.where(jnp.isfinite(new), new, u0)

    u = jax.lax.fori_loop(0, niter, body, u0)
    return u


@jax.jit
def _gauss_marg_core(c, valid, sx, sy, niter):
    h, w = c.shape[1:]
    yy = jnp.arange(h, dtype=c.dtype)
    xx = jnp.arange(w, dtype=c.dtype)
    # Weight rows/columns by the star's profile about the cutout centre (as DAOFIND does).
    wy = jnp.exp(-0.5 * ((yy - (h - 1) / 2) / sy) ** 2)
    wx = jnp.exp(-0.5 * ((xx - (w - 1) / 2) / sx) ** 2)
    vf = valid.astype(c.dtype)
    nx_ = jnp.sum(vf * wy[None, :, None], axis=1)  # effective weight per column
    ny_ = jnp.sum(vf * wx[None, None, :], axis=2)
    mx = jnp.sum(c * wy[None, :, None], axis=1) / jnp.where(nx_ > 0, nx_, 1.0)
    my = jnp.sum(c * wx[None, None, :], axis=2) / jnp.where(ny_ > 0, ny_, 1.0)
    x = _fit_marginal(mx, nx_, xx, sx, niter)
    y = _fit_marginal(my, ny_, yy, sy, niter)
    inside = (x > -0.5) & (x < w - 0.5) & (y > -0.5) & (y < h - 0.5)
    return jnp.where(inside, x, jnp.nan), jnp.where(inside, y, jnp.nan)


def centroid_gaussian_marginal(
    cutouts, sigma: float | tuple[float, float], mask=None, *, niter: int = 8
):
    """Centroids from 1-D Gaussian fits to the x and y marginal profiles.

    Each marginal profile is the profile-weighted mean of the rows (columns) of the cutout,
    fitted by ``B + H·exp(−(u − u0)²/2σ²)`` with σ fixed (the star's σ along that axis),
    B and H linear and u0 by Gauss–Newton steps of at most one pixel.

    Parameters
    ----------
    cutouts : array_like, shape (N, h, w) or (h, w)
        Cutouts (image units), ideally centred within a pixel of the star.
    sigma : float or (sigma_y, sigma_x)
        Gaussian σ of the star in pixels.
    mask : array_like of bool, optional
        True = ignore the pixel (NaN pixels are ignored anyway).
    niter : int
        Gauss–Newton iterations.

    Returns
    -------
    x, y : jax.Array, shape (N,)
        Centroid in cutout pixel coordinates; NaN where the fit leaves the cutout.
    """
    enable_compilation_cache()  # persistent cache on first use, never at import
    c, valid = _as_batch(cutouts, mask)
    sy, sx = (sigma, sigma) if np.ndim(sigma) == 0 else sigma
    if not (sx > 0 and sy > 0):
        raise ValueError(f"sigma must be positive, got {sigma}")
    return _gauss_marg_core(c, valid, float(sx), float(sy), int(niter))


# --------------------------------------------------------------------------------------
# Segmentation
# --------------------------------------------------------------------------------------


def segment(data, threshold, npixels: int, connectivity: int = 8, *, mask=None) -> np.ndarray:
    """Label connected groups of pixels above a threshold.

    Parameters
    ----------
    data : array_like, shape (ny, nx)
        Background-subtracted image (image units). NaN pixels never belong to a source.
    threshold : float or array_like, shape (ny, nx)
        Pixels with ``data > threshold`` are source pixels (image units, e.g. ``3 * rms``).
    npixels : int
        Minimum number of connected pixels for a source to be kept.
    connectivity : {4, 8}
        Pixel connectivity: 4 (edges) or 8 (edges and corners).
    mask : array_like of bool, optional
        True = ignore the pixel.

    Returns
    -------
    labels : ndarray of int32, shape (ny, nx)
        0 for the background, 1..n for the n sources, numbered consecutively in raster
        order of their first pixel.
    """
    a = np.asarray(data, dtype=float)
    if a.ndim != 2:
        raise ValueError(f"data must be a 2-D image, got shape {a.shape}")
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    if int(npixels) < 1:
        raise ValueError(f"npixels must be >= 1, got {npixels}")
    thr = np.broadcast_to(np.asarray(threshold, dtype=float), a.shape)
    with np.errstate(invalid="ignore"):
        on = np.isfinite(a) & (a > thr)
    if mask is not None:
        on &= ~np.asarray(mask, dtype=bool)
    struct = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    lab, n = ndimage.label(on, structure=struct)
    if n == 0:
        return lab.astype(np.int32)
    area = np.bincount(lab.ravel(), minlength=n + 1)
    keep = area >= int(npixels)
    keep[0] = False
    newid = np.zeros(n + 1, np.int32)
    newid[keep] = np.arange(1, keep.sum() + 1, dtype=np.int32)
    return newid[lab]


def find_peaks(data, threshold, *, box_size: int = 3, footprint=None, mask=None,
               border_width: int | None = None, npeaks: int | None = None) -> Table:
    """Local maxima above an absolute threshold, as photutils' ``find_peaks``.

    A pixel is a peak if it equals the maximum of its neighbourhood (a ``box_size`` square,
    or ``footprint``; outside the image counts as 0, as in photutils) and exceeds
    ``threshold``. Unlike :func:`find_stars`, whose thresholds are in σ, ``threshold`` here is
    in image units.

    Parameters
    ----------
    data : array_like, shape (ny, nx)
        The image (image units). NaN pixels are never peaks.
    threshold : float or array_like, shape (ny, nx)
        Absolute threshold in image units: peaks have ``data > threshold``.
    box_size : int
        Side of the square neighbourhood (pixels), used when ``footprint`` is None.
    footprint : array_like of bool, optional
        Neighbourhood shape (overrides ``box_size``).
    mask : array_like of bool, shape (ny, nx), optional
        True = the pixel can be no peak.
    border_width : int, optional
        Peaks within this many pixels of the edge are dropped.
    npeaks : int, optional
        Keep only the ``npeaks`` highest peaks.

    Returns
    -------
    astropy.table.Table
        Columns ``id``, ``x_peak``, ``y_peak`` (int pixels, 0-based, ``data[y, x]``) and
        ``peak_value`` (image units), sorted by decreasing ``peak_value``.
    """
    a = np.asarray(data, dtype=float)
    if a.ndim != 2:
        raise ValueError(f"data must be a 2-D image, got shape {a.shape}")
    try:
        thr = np.broadcast_to(np.asarray(threshold, dtype=float), a.shape)
    except ValueError:
        raise ValueError(f"threshold must be a scalar or have data's shape {a.shape}") from None
    if footprint is None:
        if int(box_size) != box_size or box_size < 1:
            raise ValueError(f"box_size must be a positive integer, got {box_size!r}")
        fp = np.ones((int(box_size), int(box_size)), bool)
    else:
        fp = np.asarray(footprint, dtype=bool)
        if fp.ndim != 2:
            raise ValueError(f"footprint must be 2-D, got shape {fp.shape}")
    filled = np.where(np.isfinite(a), a, -np.inf)
    big = ndimage.maximum_filter(filled, footprint=fp, mode="constant", cval=0.0)
    with np.errstate(invalid="ignore"):
        peak = np.isfinite(a) & (a == big) & (a > thr)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != a.shape:
            raise ValueError(f"mask shape {m.shape} differs from data shape {a.shape}")
        peak &= ~m
    if border_width is not None:
        bw = int(border_width)
        if bw < 0:
            raise ValueError(f"border_width must be >= 0, got {border_width!r}")
        if bw > 0:
            peak[:bw] = peak[-bw:] = False
            peak[:, :bw] = peak[:, -bw:] = False
    yp, xp = np.nonzero(peak)
    val = a[yp, xp]
    order = np.argsort(-val, kind="stable")
    if npeaks is not None:
        order = order[: int(npeaks)]
    t = Table()
    t["id"] = np.arange(1, len(order) + 1, dtype=np.int64)
    t["x_peak"] = xp[order].astype(np.int64)
    t["y_peak"] = yp[order].astype(np.int64)
    t["peak_value"] = val[order]
    return t


# --------------------------------------------------------------------------------------
# find_stars
# --------------------------------------------------------------------------------------


def _robust_std(x: np.ndarray) -> float:
    """1.4826 x MAD of the finite values."""
    return float(mad_std(x[np.isfinite(x)]))


def find_stars(
    data,
    fwhm: float,
    threshold: float | None = None,
    *,
    threshold_abs: float | None = None,
    background=None,
    rms=None,
    mask=None,
    method: Literal["daofind", "peak", "iraf"] = "daofind",
    sharplo: float | None = None,
    sharphi: float | None = None,
    roundlo: float | None = None,
    roundhi: float | None = None,
    ratio: float = 1.0,
    theta: float = 0.0,
    sigma_radius: float | None = None,
    min_separation: float | None = None,
    minsep_fwhm: float = 2.5,
    exclude_border: bool = False,
    peakmax: float | None = None,
    brightest: int | None = None,
    centroid: Literal["gaussian", "moments", "peak"] | None = None,
    gain: float | None = None,
    shape_nsigma: float = 2.0,
) -> Table:
    """Find point sources: DAOFIND, Mighell's LPD peak detector or IRAF's starfind.

    Thresholds are in σ (of the noise of the detection image) by default; give
    ``threshold_abs`` instead for a threshold in image units.

    Parameters
    ----------
    data : array_like, shape (ny, nx)
        The image (image units). NaN/inf pixels are ignored.
    fwhm : float
        Stellar FWHM in pixels (major axis if ``ratio < 1``).
    threshold : float, optional
        Detection threshold **in σ**, i.e. in units of the noise of the detection image: the
        matched-filter S/N for ``"daofind"`` and ``"iraf"``, the LPD-image significance for
        ``"peak"``. Default 5 when ``threshold_abs`` is not given.
    threshold_abs : float, optional
        Detection threshold **in image units** (above the sky), instead of ``threshold``
        (give exactly one): the least-squares peak amplitude of a Gaussian star of the given
        FWHM (the quantity photutils' ``DAOStarFinder``/``IRAFStarFinder`` ``threshold``
        compares with) for ``"daofind"``/``"iraf"``, the LPD-filtered value for ``"peak"``.
        On an image of pixel noise σ, ``threshold_abs = t·σ·flux_noise/volume`` (see
        :func:`daofind_kernel`) selects the same sources as ``threshold = t``.
    background : float, array_like (ny, nx) or Background, optional
        Sky level to subtract. Default: :func:`jaxphot.background.estimate_background` with
        a box of max(16, 8·fwhm) pixels (or the global level for small images).
    rms : float or array_like (ny, nx), optional
        Background noise per pixel (1σ, image units). Default: the rms map of ``background``
        if it is a ``Background``, else the robust (MAD) std of the sky-subtracted image.
    mask : array_like of bool, optional
        True = ignore the pixel. Masked pixels count as sky in the filtered image, and no
        peak is accepted on them.
    method : {"daofind", "peak", "iraf"}
        Candidate detector and measurement (see module docstring).
    sharplo, sharphi : float, optional
        Keep sources with ``sharplo <= sharpness <= sharphi``. For ``"daofind"``/``"peak"``
        (default 0.2, 1.0) sharpness is ``(d₀ − mean of the other footprint pixels) /
        amplitude`` (DAOFIND's SHARP): ≈0.5–0.8 for stars of the given FWHM, > 1 for hot
        pixels, small for extended objects. For ``"iraf"`` (default 0.5, 2.0) it is the
        moment FWHM over ``fwhm``: ≈1 for stars, small for hot pixels, large for galaxies.
    roundlo, roundhi : float, optional
        For ``"daofind"``/``"peak"`` (default −1, 1): keep sources with both roundness1 and
        roundness2 in this range (0 = round). For ``"iraf"`` (default 0, 0.2): the range of
        the moment ``roundness`` (ellipticity-like, 0 = round).
    ratio, theta : float
        Kernel shape: axis ratio and position angle (degrees from +x); ``"iraf"`` needs a
        circular kernel (``ratio=1``).
    sigma_radius : float, optional
        Kernel truncation in σ: default 3 for ``"daofind"``/``"peak"``, 1.5 (starfind's) for
        ``"iraf"``.
    min_separation : float, optional
        Minimum distance between peaks in pixels; default ≈ the kernel radius, or
        ``minsep_fwhm · fwhm`` for ``"iraf"``.
    minsep_fwhm : float
        ``"iraf"`` only: default minimum separation in units of ``fwhm``.
    exclude_border : bool
        Drop sources whose kernel footprint crosses the image edge.
    peakmax : float, optional
        Drop sources whose sky-subtracted peak pixel exceeds this (saturation); for
        ``"iraf"`` after the local-sky subtraction.
    brightest : int, optional
        Keep only the ``brightest`` sources by flux.
    centroid : {"gaussian", "moments", "peak"}, optional
        Centroid method: marginal Gaussian fits (DAOFIND), Mighell's modified moments, or the
        peak pixel. A failed fit falls back to moments, then to the peak pixel. Default
        ``"gaussian"``, and for ``"iraf"`` starfind's own first moments of the footprint.
    gain : float, optional
        Electrons per image unit. If given, the source's own Poisson noise enters ``snr``.
    shape_nsigma : float
        Noise-aware shape cuts: a source passes a sharpness/roundness cut if its value lies
        within ``shape_nsigma`` times its own 1σ noise (propagated from the pixel rms) of
        the allowed interval. Faint stars, whose shape statistics are noisy, are then not
        lost, while bright hot pixels and elongated objects are still rejected. 0 gives
        DAOFIND's hard cuts. ``"iraf"`` always uses hard cuts, as starfind.

    Returns
    -------
    astropy.table.Table
        One row per source, sorted by decreasing flux, with columns

        - ``id`` (1..N);
        - ``x_centroid``, ``y_centroid``: position in pixels (0-based; ``a[j, i]`` is at
          x=i, y=j). Feed these to the fitter as ``x_init, y_init``;
        - ``x_peak``, ``y_peak``: integer peak pixel;
        - ``peak``: sky-subtracted value of the peak pixel;
        - ``amplitude``: peak height of the fitted Gaussian, ``flux / (2π σ_maj σ_min)``;
        - ``flux``: least-squares total flux of a Gaussian star of the given FWHM plus a
          constant (image units × pixels); use as ``flux_init``;
        - ``snr``: matched-filter S/N of that flux (sky noise only, unless ``gain``);
        - ``sharpness``, ``roundness1`` (x-vs-y-axis symmetry of the filtered image),
          ``roundness2`` (DAOFIND's GROUND: 2(h_x − h_y)/(h_x + h_y) from the marginal
          Gaussian heights);
        - ``sky``, ``rms``: background level and noise at the peak.

        For ``"iraf"`` the columns are those of photutils' ``IRAFStarFinder``: ``id``,
        ``x_centroid``, ``y_centroid``, ``x_peak``, ``y_peak``, ``fwhm`` (pixels),
        ``sharpness``, ``roundness``, ``orientation`` (degrees counter-clockwise from +x, in
        [0, 360)), ``n_pixels`` (positive footprint pixels), ``sky`` (background plus starfind's
        local sky), ``peak`` and ``flux`` (sum of the positive sky-subtracted footprint
        pixels), plus ``amplitude``, ``snr`` and ``rms`` as above.

    Raises
    ------
    ValueError
        For a non-2-D image, an image smaller than the kernel, an image with no finite
        unmasked pixel, a non-positive ``fwhm``/``rms``, both or a bad ``threshold`` and
        ``threshold_abs``, or an unknown option.
    """
    enable_compilation_cache()  # persistent cache on first use, never at import
    fwhm = check_positive("fwhm", fwhm, "pixels")
    threshold, threshold_abs = _check_thresholds(threshold, threshold_abs)
    gain = None if gain is None else check_positive("gain", gain, "e-/image unit")
    iraf = method == "iraf"
    if sigma_radius is None:
        sigma_radius = 1.5 if iraf else 3.0
    sharplo, sharphi, roundlo, roundhi = _shape_defaults(method, sharplo, sharphi, roundlo,
                                                         roundhi)  # fmt: skip
    a, good, k = _check_inputs(data, fwhm, mask, method, centroid, ratio, theta, sigma_radius)
    sky, d, rms_map = _sky_and_noise(a, good, fwhm, background, rms)
    # Matched filter: flux of a Gaussian star + constant at every pixel, and its S/N.
    conv = ndimage.correlate(d, k["kernel"], mode="constant", cval=0.0)
    snr_map = conv / (rms_map * k["flux_noise"])
    if iraf and min_separation is None:
        min_separation = check_positive("minsep_fwhm", minsep_fwhm, "FWHM") * fwhm
    yp, xp = _candidates(d, good, snr_map, rms_map, k, method, threshold, threshold_abs,
                         min_separation, exclude_border)  # fmt: skip
    if iraf:
        t = _iraf_table(d, good, conv, k, yp, xp, fwhm, centroid,
                        (sharplo, sharphi, roundlo, roundhi), peakmax, brightest)  # fmt: skip
        ty, tx = np.asarray(t["y_peak"]), np.asarray(t["x_peak"])
        t["snr"] = _snr(snr_map, rms_map, k, np.asarray(t["amplitude"]) * k["volume"], ty, tx,
                        gain)  # fmt: skip
        t["sky"] = np.asarray(t["sky"]) + np.asarray(sky[ty, tx], float)
        t["rms"] = np.asarray(rms_map[ty, tx], float)
        return _finish_meta(t, method, fwhm, threshold, threshold_abs)
    c = _measure(d, good, conv, rms_map, k, yp, xp)
    if centroid is None:
        centroid = "gaussian"
    # Centroids on the cutouts, in cutout coordinates, then shifted to the image.
    half = k["kernel"].shape[0] // 2
    cx, cy = _centroids(c.dc, c.gc, k, centroid)
    xc, yc = xp + cx - half, yp + cy - half
    snr = _snr(snr_map, rms_map, k, c.flux, yp, xp, gain)
    keep = _passes_cuts(c, shape_nsigma, (sharplo, sharphi), (roundlo, roundhi), peakmax)
    order = np.argsort(-c.flux[keep], kind="stable")
    if brightest is not None:
        order = order[: int(brightest)]
    sel = np.nonzero(keep)[0][order]
    t = Table()
    t["id"] = np.arange(1, len(sel) + 1, dtype=np.int64)
    t["x_centroid"] = xc[sel]
    t["y_centroid"] = yc[sel]
    t["x_peak"] = xp[sel].astype(np.int64)
    t["y_peak"] = yp[sel].astype(np.int64)
    t["peak"] = c.peak[sel]
    t["amplitude"] = c.amp[sel]
    t["flux"] = c.flux[sel]
    t["snr"] = snr[sel]
    t["sharpness"] = c.sharp[sel]
    t["roundness1"] = c.round1[sel]
    t["roundness2"] = c.round2[sel]
    t["sky"] = np.asarray(sky[yp, xp], float)[sel]
    t["rms"] = np.asarray(rms_map[yp, xp], float)[sel]
    return _finish_meta(t, method, fwhm, threshold, threshold_abs)


def _finish_meta(t: Table, method, fwhm, threshold, threshold_abs) -> Table:
    """Record the detection settings in ``t.meta`` (threshold in σ, or threshold_abs)."""
    t.meta["method"] = method
    t.meta["fwhm"] = float(fwhm)
    t.meta["threshold"] = None if threshold is None else float(threshold)
    t.meta["threshold_abs"] = None if threshold_abs is None else float(threshold_abs)
    return t


def _check_thresholds(threshold, threshold_abs):
    """(threshold in σ or None, threshold_abs in image units or None): exactly one is set."""
    if threshold is not None and threshold_abs is not None:
        raise ValueError("give exactly one of threshold (in σ) and threshold_abs (image units)")
    if threshold_abs is not None:
        if isinstance(threshold_abs, bool) or not isinstance(threshold_abs, Real):
            raise TypeError(f"threshold_abs must be a number (image units), got {threshold_abs!r}")
        if not np.isfinite(threshold_abs):
            raise ValueError(f"threshold_abs must be finite (image units), got {threshold_abs}")
        return None, float(threshold_abs)
    return check_positive("threshold", 5.0 if threshold is None else threshold, "sigma"), None


def _shape_defaults(method, sharplo, sharphi, roundlo, roundhi):
    """Sharpness and roundness limits with each method's defaults filled in."""
    lo_hi = (0.5, 2.0, 0.0, 0.2) if method == "iraf" else (0.2, 1.0, -1.0, 1.0)
    vals = (sharplo, sharphi, roundlo, roundhi)
    return tuple(float(d if v is None else v) for v, d in zip(vals, lo_hi, strict=True))


def _check_inputs(data, fwhm, mask, method, centroid, ratio, theta, sigma_radius):
    """Validated image (H, W) float, its usable-pixel map (H, W) bool, and the DAOFIND kernel."""
    a = np.asarray(data, dtype=float)
    if a.ndim != 2:
        raise ValueError(f"data must be a 2-D image, got shape {a.shape}")
    if method not in ("daofind", "peak", "iraf"):
        raise ValueError(f"unknown method {method!r}; use 'daofind', 'peak' or 'iraf'")
    if centroid not in (None, "gaussian", "moments", "peak"):
        raise ValueError(f"unknown centroid {centroid!r}; use 'gaussian', 'moments' or 'peak'")
    if method == "iraf" and ratio != 1:
        raise ValueError(f"ratio must be 1 for method='iraf' (a circular kernel), got {ratio}")
    k = daofind_kernel(fwhm, ratio, theta, sigma_radius)
    ksize = k["kernel"].shape[0]
    if min(a.shape) < ksize:
        raise ValueError(
            f"data shape {a.shape} is smaller than the detection kernel ({ksize}×{ksize} "
            f"for fwhm={fwhm})"
        )
    good = np.isfinite(a)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != a.shape:
            raise ValueError(f"mask shape {m.shape} differs from data shape {a.shape}")
        good &= ~m
    if not good.any():
        raise ValueError("data has no finite, unmasked pixel: nothing to detect")
    return a, good, k


def _sky_and_noise(a, good, fwhm, background, rms):
    """Sky (H, W), sky-subtracted image (H, W; 0 on unusable pixels) and pixel rms (H, W).

    Units are the image's. The defaults are those of :func:`find_stars`' ``background`` and
    ``rms``.
    """
    estimated = background is None and rms is None  # the noise then comes from the data
    if background is None:
        box = int(max(16, round(8 * fwhm)))
        if min(a.shape) >= 2 * box:
            background = estimate_background(np.where(good, a, np.nan), box, 3)
        else:
            background = float(np.median(a[good]))
    # Where the noise comes from, for a message that names the input at fault.
    source = "rms"
    if isinstance(background, Background):
        sky = background.level
        if rms is None:
            rms, source = background.rms, "background.rms (the Background given)"
    else:
        sky = np.broadcast_to(np.asarray(background, dtype=float), a.shape)
    d = np.where(good, a - sky, 0.0)  # masked pixels count as sky
    if rms is None:
        rms, source = _robust_std(d[good]), "estimated"
    rms_map = np.broadcast_to(np.asarray(rms, dtype=float), a.shape)
    _check_noise(rms_map, good, "estimated" if estimated else source, a)
    return sky, d, rms_map


def _check_noise(rms_map, good, source: str, a) -> None:
    """ValueError naming the input at fault when the noise is not > 0 and finite on a usable
    pixel: the ``rms`` given, the rms of the ``background`` given, or the ``data`` itself
    (constant, e.g. all zero or saturated, or noiseless)."""
    ok = np.isfinite(rms_map[good]) & (rms_map[good] > 0)
    if ok.all():
        return
    n_bad, n = int(np.count_nonzero(~ok)), int(ok.size)
    if source != "estimated":
        raise ValueError(f"{source} must be > 0 and finite on every usable pixel; it is not on "
                         f"{n_bad} of {n} pixels")
    v = a[good]
    what = (f"constant (every usable pixel is {v[0]:g}: blank or saturated?)"
            if np.all(v == v[0]) else "noiseless (its robust standard deviation is 0)")
    raise ValueError(f"data is {what}: its noise cannot be estimated, so no threshold in σ "
                     f"can be set; give rms= (1σ per pixel) or mask the constant pixels")


def _candidates(d, good, snr_map, rms_map, k, method, threshold, threshold_abs, min_separation,
                exclude_border):
    """(row, column) int arrays (N,) of the candidate peaks (see the module docstring).

    Exactly one of ``threshold`` (σ) and ``threshold_abs`` (image units) is not None.
    """
    foot_sep = k["footprint"]
    if min_separation is not None:
        r = max(float(min_separation), 1.0)
        hh = int(np.ceil(r))
        yy, xx = np.mgrid[-hh : hh + 1, -hh : hh + 1]
        foot_sep = xx * xx + yy * yy <= r * r
    if method in ("daofind", "iraf"):
        # The same peaks either way: the S/N map is the amplitude map over its noise.
        above = (snr_map >= threshold if threshold_abs is None
                 else snr_map * rms_map * k["flux_noise"] / k["volume"] >= threshold_abs)
        cand = _local_peaks(snr_map, foot_sep, above)
    else:
        lpd = lpd_filter(d)
        # LPD noise relative to the pixel rms, measured robustly on the image itself.
        scale = _robust_std((lpd / rms_map)[good])
        lpd_snr = lpd / (rms_map * scale)
        above = lpd_snr >= threshold if threshold_abs is None else lpd >= threshold_abs
        cand = _local_peaks(lpd_snr, None, above)
        # Mighell's 3×3 peaks can sit on noise spikes next to a star: keep one per footprint.
        cand &= _local_peaks(np.where(cand, lpd_snr, -np.inf), foot_sep, cand)
    cand &= good
    if exclude_border:
        half = k["kernel"].shape[0] // 2
        edge = np.zeros_like(cand)
        edge[half:-half, half:-half] = True
        cand &= edge
    return np.nonzero(cand)


@dataclass
class _Measured:
    """Cutout statistics of N candidates; cutouts are (N, k, k), the kernel's size.

    ``dc``: sky-subtracted cutouts (image units, 0 off the image and on unusable pixels); ``gc``:
    usable pixels; ``peak``: ``dc``'s centre pixel; ``flux`` (image units x pixels) and ``amp``
    (its Gaussian's peak height); the shape statistics and their 1σ noise (dimensionless).
    """

    dc: np.ndarray
    gc: np.ndarray
    peak: np.ndarray
    flux: np.ndarray
    amp: np.ndarray
    sharp: np.ndarray
    sharp_err: np.ndarray
    round1: np.ndarray
    round1_err: np.ndarray
    round2: np.ndarray
    round2_err: np.ndarray


def _measure(d, good, conv, rms_map, k, yp, xp) -> _Measured:
    """Flux, amplitude and DAOFIND's shape statistics of the candidates at ``(yp, xp)``.

    All vectorised over candidates. ``d`` is the sky-subtracted image, ``conv`` its matched
    filter (both (H, W), image units), ``rms_map`` the pixel rms (H, W).
    """
    half = k["kernel"].shape[0] // 2
    size, ox, oy = 2 * half + 1, xp - half, yp - half
    dc = extract_cutouts(d, ox, oy, size, 0.0)[0]
    gc = extract_cutouts(good, ox, oy, size, False)[0]
    flux = conv[yp, xp]
    amp = flux / k["volume"]  # peak height of the continuous Gaussian
    # DAOFIND's own footprint (r ≤ max(2, 1.5σ)) for the shape statistics, so that
    # sharpness keeps its classic scale whatever the kernel truncation.
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    core = xx * xx + yy * yy <= max(2.0, 1.5 * k["sigma_x"]) ** 2
    rpk = rms_map[yp, xp]
    sharp, sharp_err = _sharpness(dc, core & gc, amp, rpk)
    cc = extract_cutouts(conv, ox, oy, size, 0.0)[0]
    round1, round1_err = _roundness1(cc, core, k["kernel"], rpk)
    round2, round2_err = _roundness2(dc, k["footprint"] & gc, k, rpk)
    return _Measured(dc, gc, dc[:, half, half], flux, amp, sharp, sharp_err, round1, round1_err,
                     round2, round2_err)  # fmt: skip


def _sharpness(dc, cfoot, amp, rpk):
    """DAOFIND's SHARP, ``(d₀ − mean of the other core pixels) / amplitude``, and its 1σ noise.

    ``cfoot`` (N, k, k): the usable core pixels; ``rpk`` (N,): the pixel rms at the peak. The
    noise is first-order propagation of the pixel noise, as for the roundness measures.
    """
    half = dc.shape[1] // 2
    nfoot = cfoot.sum(axis=(1, 2)) - 1
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_other = (np.where(cfoot, dc, 0).sum(axis=(1, 2)) - dc[:, half, half]) / np.maximum(
            nfoot, 1
        )
        sharp = (dc[:, half, half] - mean_other) / amp
        sharp_err = rpk * np.sqrt(1.0 + 1.0 / np.maximum(nfoot, 1)) / np.abs(amp)
    return sharp, sharp_err


def _roundness1(cc, core, kernel, rpk):
    """roundness1 and its 1σ noise from the filtered-image cutouts ``cc`` (N, k, k).

    Filtered-image flux in the |x|>|y| vs |y|>|x| sectors of the core, where the filtered image
    of a star is positive and smooth.
    """
    half = cc.shape[1] // 2
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    sect_x = core & (np.abs(xx) > np.abs(yy))
    sect_y = core & (np.abs(yy) > np.abs(xx))
    with np.errstate(invalid="ignore", divide="ignore"):
        sx_ = (np.where(sect_x, cc, 0)).sum(axis=(1, 2))
        sy_ = (np.where(sect_y, cc, 0)).sum(axis=(1, 2))
        round1 = 2.0 * (sx_ - sy_) / (sx_ + sy_)
        # the sector sums are linear in the image pixels, with these weights
        wsx = ndimage.convolve(sect_x.astype(float), kernel, mode="constant")
        wsy = ndimage.convolve(sect_y.astype(float), kernel, mode="constant")
        den1 = (sx_ + sy_) ** 2
        g1x, g1y = 4.0 * sy_ / den1, -4.0 * sx_ / den1
        round1_err = rpk * np.sqrt(
            g1x**2 * (wsx**2).sum() + g1y**2 * (wsy**2).sum() + 2 * g1x * g1y * (wsx * wsy).sum()
        )
    return round1, round1_err


def _roundness2(dc, foot, k, rpk):
    """roundness2 (DAOFIND's GROUND) and its 1σ noise, from Gaussian fits to the marginals.

    Heights of linear fits with a fixed centre over the usable footprint pixels ``foot``.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        hx, hy, vhx, vhy = _ground(dc, foot, k["sigma_x"], k["sigma_y"])
        round2 = 2.0 * (hx - hy) / (hx + hy)
        den2 = (hx + hy) ** 2
        round2_err = rpk * np.sqrt((4 * hy / den2) ** 2 * vhx + (4 * hx / den2) ** 2 * vhy)
    return round2, round2_err


def _centroids(dc, gc, k, centroid):
    """Centroids (N,) x, y of the candidates, in cutout pixels (the peak is at ``half, half``).

    A failed Gaussian fit falls back to the moments, a failed moment to the peak pixel.
    """
    half = dc.shape[1] // 2
    if not len(dc):
        return np.zeros(0), np.zeros(0)
    mx, my = centroid_moments(dc, ~gc, radius=max(1.5, 1.5 * k["sigma_x"]))
    mx, my = np.asarray(mx, float), np.asarray(my, float)
    if centroid == "gaussian":
        gx, gy = centroid_gaussian_marginal(dc, (k["sigma_y"], k["sigma_x"]), ~gc)
        gx, gy = np.asarray(gx, float), np.asarray(gy, float)
        # A fit that wandered more than ~1.5 px from the peak has latched onto a neighbour.
        bad = ~np.isfinite(gx + gy) | (np.hypot(gx - half, gy - half) > 1.5)
        cx, cy = np.where(bad, mx, gx), np.where(bad, my, gy)
    elif centroid == "moments":
        cx, cy = mx, my
    else:
        cx = cy = np.full(len(dc), float(half))
    bad = ~np.isfinite(cx + cy)
    return np.where(bad, half, cx), np.where(bad, half, cy)


def _snr(snr_map, rms_map, k, flux, yp, xp, gain):
    """Matched-filter S/N (N,) of the candidates, with their own Poisson noise when ``gain``."""
    snr = snr_map[yp, xp]
    if gain is not None:
        if not gain > 0:
            raise ValueError(f"gain must be positive, got {gain}")
        var_src = np.maximum(flux, 0) * np.sum(k["kernel"] ** 2 * k["prf"]) / gain
        snr = flux / np.sqrt((rms_map[yp, xp] * k["flux_noise"]) ** 2 + var_src)
    return snr


def _passes_cuts(c: _Measured, shape_nsigma, sharp_range, round_range, peakmax):
    """(N,) bool: positive flux, shape statistics within their (noise-widened) ranges, unsaturated."""
    if not shape_nsigma >= 0:
        raise ValueError(f"shape_nsigma must be >= 0, got {shape_nsigma}")

    def within(v, err, lo, hi):
        # Pass if the allowed interval is within shape_nsigma of the value's own noise.
        tol = shape_nsigma * np.where(np.isfinite(err), err, 0.0)
        return np.isfinite(v) & (v + tol >= lo) & (v - tol <= hi)

    keep = (
        within(c.sharp, c.sharp_err, *sharp_range)
        & within(c.round1, c.round1_err, *round_range)
        & within(c.round2, c.round2_err, *round_range)
        & (c.flux > 0)
    )
    if peakmax is not None:
        keep &= c.peak <= peakmax
    return keep


def _ground(dc: np.ndarray, foot: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Marginal Gaussian heights for DAOFIND's GROUND = 2(h_x − h_y)/(h_x + h_y).

    h_x is the least-squares height of a Gaussian (σ_x, centred) plus constant fitted to
    the x marginal of the footprint pixels, and likewise for y. Returns (h_x, h_y) and
    their variances per unit pixel variance.
    """
    half = dc.shape[1] // 2
    u = np.arange(-half, half + 1, dtype=float)
    f = foot.astype(float)

    def height(marg, wts, s):
        g = np.exp(-0.5 * (u / s) ** 2)
        w = wts
        sw = w.sum(1)
        gm = (w * g).sum(1) / np.maximum(sw, 1e-30)
        dg = g[None, :] - gm[:, None]
        coef = w * dg / np.maximum((w * dg * dg).sum(1), 1e-30)[:, None]
        # Each marginal entry sums ``w`` pixels, so its variance is w·rms².
        return (coef * marg).sum(1), (coef * coef * w).sum(1)

    hx, vx = height((dc * f).sum(1), f.sum(1), sx)
    hy, vy = height((dc * f).sum(2), f.sum(2), sy)
    return hx, hy, vx, vy


# --------------------------------------------------------------------------------------
# IRAF starfind
# --------------------------------------------------------------------------------------


def _iraf_moments(v: np.ndarray):
    """starfind's moment statistics of clipped, sky-subtracted footprints ``v`` (N, k, k).

    Returns the first moments ``x, y`` (cutout pixels) and the central second moments
    ``mu20`` (x²), ``mu02`` (y²), ``mu11`` (pixels²), each (N,); NaN for an empty footprint.
    """
    n, ky, kx = v.shape
    x = np.arange(kx, dtype=float)
    y = np.arange(ky, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        m0 = v.sum(axis=(1, 2))
        vx, vy = v.sum(axis=1), v.sum(axis=2)  # marginals (N, kx), (N, ky)
        xc = (vx * x).sum(1) / m0
        yc = (vy * y).sum(1) / m0
        dx = x[None, :] - xc[:, None]
        dy = y[None, :] - yc[:, None]
        mu20 = (vx * dx * dx).sum(1) / m0
        mu02 = (vy * dy * dy).sum(1) / m0
        mu11 = np.einsum("nij,ni,nj->n", v, dy, dx) / m0
    return xc, yc, mu20, mu02, mu11


def _iraf_table(d, good, conv, k, yp, xp, fwhm, centroid, limits, peakmax, brightest):
    """IRAF starfind's measurements and cuts of the candidates at ``(yp, xp)``, as a Table.

    ``d``: sky-subtracted image (H, W; 0 on unusable pixels), ``conv``: its matched filter.
    The local sky is the mean of the usable box pixels outside the footprint; footprint pixels
    below it count as 0, as in starfind. ``limits`` = (sharplo, sharphi, roundlo, roundhi).
    """
    half = k["kernel"].shape[0] // 2
    size, ox, oy = 2 * half + 1, xp - half, yp - half
    dc = extract_cutouts(d, ox, oy, size, 0.0)[0]
    gc = extract_cutouts(good, ox, oy, size, False)[0]
    foot = k["footprint"][None] & gc
    skym = ~k["footprint"][None] & gc
    nsky = skym.sum(axis=(1, 2))
    local = np.where(nsky > 0, (dc * skym).sum(axis=(1, 2)) / np.maximum(nsky, 1), 0.0)
    v = np.where(foot, np.maximum(dc - local[:, None, None], 0.0), 0.0)
    xc, yc, mu20, mu02, mu11 = _iraf_moments(v)
    musum = mu20 + mu02
    with np.errstate(invalid="ignore", divide="ignore"):
        mfwhm = 2.0 * np.sqrt(np.log(2.0) * musum)
        roundness = np.sqrt((mu20 - mu02) ** 2 + 4.0 * mu11**2) / musum
    orient = np.rad2deg(0.5 * np.arctan2(2.0 * mu11, mu20 - mu02)) % 360.0
    sharp = mfwhm / fwhm
    peak = v.max(axis=(1, 2), initial=0.0)
    flux = v.sum(axis=(1, 2))
    npix = np.count_nonzero(v, axis=(1, 2))
    if centroid is not None:  # another centroid on the same (unclipped) cutouts
        xc, yc = _centroids(dc, gc, k, centroid)
    sharplo, sharphi, roundlo, roundhi = limits
    keep = (npix > 1) & np.isfinite(xc + yc + sharp + roundness)
    with np.errstate(invalid="ignore"):
        keep &= (sharp >= sharplo) & (sharp <= sharphi)
        keep &= (roundness >= roundlo) & (roundness <= roundhi)
    if peakmax is not None:
        keep &= peak <= peakmax
    order = np.argsort(-flux[keep], kind="stable")
    if brightest is not None:
        order = order[: int(brightest)]
    sel = np.nonzero(keep)[0][order]
    t = Table()
    t["id"] = np.arange(1, len(sel) + 1, dtype=np.int64)
    t["x_centroid"] = (xc + ox)[sel].astype(float)
    t["y_centroid"] = (yc + oy)[sel].astype(float)
    t["x_peak"] = xp[sel].astype(np.int64)
    t["y_peak"] = yp[sel].astype(np.int64)
    t["fwhm"] = mfwhm[sel]
    t["sharpness"] = sharp[sel]
    t["roundness"] = roundness[sel]
    t["orientation"] = orient[sel]
    t["n_pixels"] = npix[sel].astype(np.int64)
    t["sky"] = local[sel]
    t["peak"] = peak[sel]
    t["flux"] = flux[sel]
    t["amplitude"] = conv[yp, xp][sel] / k["volume"]
    return t
