"""Registration of exposures on bright stars: an affine correction of each image's WCS.

A header WCS is often off by a fraction of a pixel (pointing, guiding, a rotation of the
camera). Forced and joint photometry place every star from it, so the flux of a star put
0.3 px off its true centre is biased. :func:`refine_alignment` measures that offset:

1. place the catalogue in each exposure with its WCS or pixel transform;
2. fit position, flux and a local plane to every isolated catalogue star (one batched
   :func:`~jaxphot.fit_cutouts` call per exposure) and keep the well-measured ones;
3. fit, by weighted least squares with 3-sigma clipping, the affine map
   ``(x, y)_measured = M (x, y)_predicted + t`` (six parameters: shift, rotation, scale,
   shear);
4. fold it into the transform: a new WCS (``CRPIX' = M (CRPIX - 1) + t + 1``,
   ``CD' = CD M^-1``; SIP distortion terms are kept as they are, which is exact for the
   linear part and good to O(|M - 1| x distortion) otherwise) or a composed (2, 3) affine.

The report gives, per exposure, the correction (shift, rotation, scale), the number of stars
used and the residual rms next to what their position errors predict.
"""

from __future__ import annotations

import numpy as np
from astropy.table import Table
from scipy.spatial import cKDTree

from ..core.fit import fit_cutouts
from ..image.cutouts import extract_cutouts
from ..psf.measure import psf_fwhm
from .inputs import catalog_positions, image_positions, load_exposures, per_image_inputs

__all__ = ["refine_alignment", "apply_affine_to_wcs"]

_CLIP = 3.0  # sigma: stars whose residual exceeds this (blends, variables, bad pixels) drop out
_MIN_STARS = 6  # an affine map has six parameters


def apply_affine_to_wcs(wcs, m: np.ndarray, t: np.ndarray):
    """A copy of ``wcs`` whose pixels are ``m @ p + t`` of the old ones (0-based pixels).

    Parameters
    ----------
    wcs : astropy.wcs.WCS
        Celestial WCS (TAN or any projection; SIP kept as is).
    m : (2, 2) array
        Linear part, acting on (x, y).
    t : (2,) array
        Shift, pixels.

    Returns
    -------
    astropy.wcs.WCS
        ``new.world_to_pixel(s) == m @ wcs.world_to_pixel(s) + t`` for the linear WCS part.
    """
    m = np.asarray(m, np.float64)
    t = np.asarray(t, np.float64)
    new = wcs.deepcopy()
    cd = np.asarray(wcs.pixel_scale_matrix, np.float64)  # CD = PC x CDELT, world per pixel
    new.wcs.crpix = m @ (np.asarray(wcs.wcs.crpix, np.float64) - 1.0) + t + 1.0
    cd_new = cd @ np.linalg.inv(m)
    if new.wcs.has_cd():
        new.wcs.cd = cd_new
    else:
        new.wcs.pc = cd_new
        new.wcs.cdelt = [1.0, 1.0]
    new.wcs.set()
    return new


def _isolated(x, y, sep: float) -> np.ndarray:
    """(N,) True for stars with no other star within ``sep`` pixels."""
    ok = np.isfinite(x) & np.isfinite(y)
    out = np.zeros(len(x), bool)
    idx = np.nonzero(ok)[0]
    if len(idx) == 0:
        return out
    d, _ = cKDTree(np.c_[x[idx], y[idx]]).query(np.c_[x[idx], y[idx]], k=min(2, len(idx)))
    out[idx] = d[:, -1] > sep if len(idx) > 1 else True
    return out


def _measure(data, psf, x, y, half: int, gain, read_noise, err):
    """Fitted positions and their errors for stars at predicted (x, y) in ``data``."""
    ox = np.rint(x).astype(np.int64) - half
    oy = np.rint(y).astype(np.int64) - half
    size = 2 * half + 1
    raw, _ = extract_cutouts(np.asarray(data, np.float64), ox, oy, size, np.nan)
    mask = ~np.isfinite(raw)  # off the image (NaN fill) or bad
    cut = np.where(mask, 0.0, raw)
    if err is None or np.ndim(err) == 0:
        e = None if err is None else np.full(cut.shape, float(err))
    else:
        e = extract_cutouts(np.asarray(err, np.float64), ox, oy, size, 0.0)[0]
    res = fit_cutouts(cut, psf, x - ox, y - oy, error=e, mask=mask, gain=gain,
                      read_noise=read_noise, background="plane",
                      origin=np.c_[ox, oy].astype(np.float64))
    return (res.x_fit[:, 0] + ox, res.y_fit[:, 0] + oy, res.x_err[:, 0], res.y_err[:, 0],
            res.flags[:, 0], res.flux_fit[:, 0] / res.flux_err[:, 0])


def _fit_affine(xp, yp, xm, ym, sx, sy):
    """Weighted 3-sigma-clipped affine fit ``measured = M predicted + t``.

    Returns ``(M, t, used, residual_x, residual_y)``.
    """
    design = np.c_[xp, yp, np.ones_like(xp)]
    used = np.ones(len(xp), bool)
    for _ in range(5):
        if used.sum() < _MIN_STARS:
            break
        wx, wy = 1.0 / sx[used], 1.0 / sy[used]
        cx = np.linalg.lstsq(design[used] * wx[:, None], xm[used] * wx, rcond=None)[0]
        cy = np.linalg.lstsq(design[used] * wy[:, None], ym[used] * wy, rcond=None)[0]
        rx, ry = xm - design @ cx, ym - design @ cy
        z = np.hypot(rx / sx, ry / sy) / np.sqrt(2.0)
        new = z < _CLIP * max(1.0, float(np.median(z[used])) / 0.8326)  # median of Rayleigh/sqrt2
        if np.array_equal(new, used):
            break
        used = new
    m = np.array([[cx[0], cx[1]], [cy[0], cy[1]]])
    return m, np.array([cx[2], cy[2]]), used, rx, ry


def refine_alignment(
    images,
    catalog,
    psf,
    *,
    wcs=None,
    error=None,
    gain=None,
    read_noise=None,
    min_snr: float = 50.0,
    fit_half: int | None = None,
):
    """Refine each exposure's WCS (or pixel transform) with an affine fit to bright stars.

    Parameters
    ----------
    images : (T, H, W) array, or list of (H, W) arrays and/or FITS paths
        The exposures, as for :func:`~jaxphot.forced_photometry`.
    catalog : astropy Table
        Master list with ``ra, dec`` (degrees) and/or ``x, y`` (pixels of the first image).
    psf : PSF model or spec string, or a list of T of them
        PSF of each exposure (a varying PSF is taken at each star).
    wcs : WCS, pixel transform, or list of T of them, optional
        The transforms to refine (as in :func:`~jaxphot.forced_photometry`; None: the header).
    error, gain, read_noise : optional
        Noise model of the position fits, as in :func:`~jaxphot.fit_cutouts` (per exposure
        lists accepted).
    min_snr : float
        Stars whose fitted flux S/N is below this are not used.
    fit_half : int, optional
        Half size of the fitting box, pixels (default ``max(3, ceil(1.5 FWHM))``).

    Returns
    -------
    transforms : list
        Per exposure, the refined transform: a WCS where the input was one (or the header's),
        else a (2, 3) affine from first-image pixels. None for an exposure that could not be
        refined (unreadable, or fewer than 6 usable stars: see the report).
    report : astropy Table
        One row per exposure: ``image_id, n_stars, dx, dy`` (shift at the image centre, px),
        ``rotation`` (deg, counter-clockwise), ``scale``, ``rms_x, rms_y`` (residual rms of
        the stars used, px), ``rms_expected`` (the rms of their fitted position errors, px: what
        ``rms_x, rms_y`` should be), and ``status`` ("ok" or why not).

    Raises
    ------
    ValueError
        For an unusable catalogue, mismatched per-image lists, or non-positive ``min_snr``.
    """
    if not np.isfinite(min_snr) or min_snr <= 0:
        raise ValueError(f"min_snr must be a positive number, got {min_snr!r}")
    exps = load_exposures(images)
    n_img = len(exps)
    cat = catalog_positions(catalog)
    opts = per_image_inputs(n_img, psf=psf, wcs=wcs, error=error, gain=gain,
                            read_noise=read_noise)
    positions = image_positions(cat, opts.transforms, exps)
    out, rows = [], []
    for i, (e, pos) in enumerate(zip(exps, positions, strict=True)):
        row, new = _refine_one(i, e, pos, opts.psfs[i], opts.transforms[i], opts.errors[i],
                               opts.gains[i], opts.noises[i], min_snr, fit_half)
        out.append(new)
        rows.append(row)
    return out, Table(rows=rows, names=("image_id", "n_stars", "dx", "dy", "rotation", "scale",
                                        "rms_x", "rms_y", "rms_expected", "status"))


def _refine_one(i, e, pos, psf, transform, err, gain, rn, min_snr, fit_half):
    """One exposure of :func:`refine_alignment`: (report row, refined transform or None)."""
    nan = np.nan
    if isinstance(pos, str):
        return (i, 0, nan, nan, nan, nan, nan, nan, nan, pos), None
    fwhm = psf_fwhm(psf)
    half = int(fit_half) if fit_half is not None else max(3, int(np.ceil(1.5 * fwhm)))
    x, y = (np.asarray(v, np.float64) for v in pos)
    h, w = e.data.shape
    inside = (x >= half) & (x <= w - 1 - half) & (y >= half) & (y <= h - 1 - half)
    use = inside & _isolated(x, y, half + fwhm)  # no neighbour in the box or its wings
    if use.sum() < _MIN_STARS:
        return (i, int(use.sum()), nan, nan, nan, nan, nan, nan, nan,
                "fewer than 6 isolated catalogue stars on the image"), None
    idx = np.nonzero(use)[0]
    xm, ym, sx, sy, flags, snr = _measure(e.data, psf, x[idx], y[idx], half, gain, rn, err)
    good = (flags == 0) & np.isfinite(xm) & np.isfinite(ym) & (snr >= min_snr) & (sx > 0) & (sy > 0)
    good &= np.hypot(xm - x[idx], ym - y[idx]) < max(2.0, fwhm)  # not pulled onto a neighbour
    if good.sum() < _MIN_STARS:
        return (i, int(good.sum()), nan, nan, nan, nan, nan, nan, nan,
                f"fewer than 6 stars with S/N >= {min_snr:g}"), None
    xp, yp = x[idx][good], y[idx][good]
    m, t, used, rx, ry = _fit_affine(xp, yp, xm[good], ym[good], sx[good], sy[good])
    c = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    shift = m @ c + t - c
    rot = np.degrees(np.arctan2(m[1, 0] - m[0, 1], m[0, 0] + m[1, 1]))
    scale = float(np.sqrt(abs(np.linalg.det(m))))
    row = (i, int(used.sum()), float(shift[0]), float(shift[1]), float(rot), scale,
           float(np.std(rx[used])), float(np.std(ry[used])),
           float(np.sqrt(np.mean(np.r_[sx[good][used], sy[good][used]] ** 2))), "ok")
    return row, _compose(transform, e.wcs, m, t)


def _compose(transform, header_wcs, m, t):
    """The refined transform: a WCS, or the (2, 3) affine ``[m t] o transform``."""
    base = header_wcs if transform is None else transform
    if base is not None and hasattr(base, "world_to_pixel"):
        return apply_affine_to_wcs(base, m, t)
    if base is None:  # registered images: the identity from first-image pixels
        return np.c_[m, t]
    if callable(base):
        return lambda x, y: _affine_after(base, m, t, x, y)
    a = np.asarray(base, np.float64)
    full = np.vstack([a[:2], [0.0, 0.0, 1.0]])
    return (np.vstack([np.c_[m, t], [0.0, 0.0, 1.0]]) @ full)[:2]


def _affine_after(f, m, t, x, y):
    u, v = f(x, y)
    u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
    return m[0, 0] * u + m[0, 1] * v + t[0], m[1, 0] * u + m[1, 1] * v + t[1]
