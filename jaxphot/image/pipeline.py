"""Whole-image crowded-field PSF photometry: :func:`photometry`.

A thin driver over the batched pieces, in the spirit of DAOPHOT's ALLSTAR:

1. background level and rms maps (:mod:`jaxphot.background`);
2. detection (:func:`jaxphot.detection.find_stars`) or user-given initial positions;
3. groups of overlapping stars (:func:`jaxphot.grouping.group_stars`), assigned to a few
   padded (cutout size, stars per cutout) buckets so every fit shape compiles once;
4. one :func:`jaxphot.fit.fit_cutouts` call per bucket, on cutouts from which the current
   models of all stars *outside* the group have been subtracted;
5. the model image of all stars, the residual image, detection on the residual, and a
   refit of everything, until no new significant source appears (or ``maxiters``).

Stars that merge with a brighter neighbour or fade below ``fade_snr`` are flagged
(``FitFlag.MERGED``, ``FitFlag.FADED``), removed from later fits and from the model image,
and still reported: every detected or given star has exactly one row.

Nothing here loops over stars in Python: cutouts are cut with fancy indexing, models are
scattered into the image with ``np.bincount``, and the loops run over a handful of buckets
and iterations.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable, Mapping

import numpy as np
from astropy.stats import mad_std
from astropy.table import Table

from ..core.fit import fit_cutouts
from ..core.flags import FitFlag
from ..psf.measure import check_psf, psf_fwhm, support_half
from .background import Background, estimate_background
from .cutouts import extract_cutouts
from .detection import find_stars
from .grouping import group_buckets
from .render import EXCLUDED_FROM_MODEL, scatter_stamps, stamps

__all__ = ["photometry", "PhotometryResult"]

# Cutouts per compiled call. fit_cutouts pads every call (and its re-run of stragglers) to a
# power of two >= 64, capped at the chunk size; with exactly 64 every call has one shape, so
# each (cutout size, K) bucket compiles once instead of once per power of two.
_FIT_CHUNK = 64
# Per-star float columns the fitter returns (NaN where a star was not fitted).
_FIT_FLOAT_COLUMNS = (
    "x_fit", "y_fit", "flux_fit", "x_err", "y_err", "flux_err", "bkg", "bkg_x", "bkg_y", "chi2",
)


@dataclasses.dataclass
class PhotometryResult:
    """What :func:`photometry` returns with ``return_images=True``.

    Attributes
    ----------
    table : astropy.table.Table
        The catalog (the same Table that ``return_images=False`` returns).
    model : (H, W) ndarray
        Model image of the stars alone (no background), image units.
    residual : (H, W) ndarray
        ``image - background - model``: what the stars and the sky do not explain.
    background : (H, W) ndarray
        The background level map that was subtracted before fitting.
    """

    table: Table
    model: np.ndarray
    residual: np.ndarray
    background: np.ndarray


# --------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------


def _pick_column(t: Table, names) -> str | None:
    for n in names:
        if n in t.colnames:
            return n
    return None


def _read_init_params(init_params) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    if not isinstance(init_params, Table):
        try:
            init_params = Table(init_params)
        except Exception as exc:
            raise ValueError(
                f"init_params must be an astropy Table with columns x, y (and optionally flux), "
                f"got {type(init_params).__name__}"
            ) from exc
    xn = _pick_column(init_params, ("x", "x_init", "x_0", "xcentroid", "x_centroid"))
    yn = _pick_column(init_params, ("y", "y_init", "y_0", "ycentroid", "y_centroid"))
    missing = [c for c, n in (("x", xn), ("y", yn)) if n is None]
    if missing:
        raise ValueError(
            f"init_params is missing column(s) {', '.join(missing)}: it needs x and y "
            f"(or x_init/y_init, x_0/y_0) and optionally flux; it has {init_params.colnames}"
        )
    fn = _pick_column(init_params, ("flux", "flux_init", "flux_0"))
    x = np.asarray(init_params[xn], float)
    y = np.asarray(init_params[yn], float)
    f = None if fn is None else np.asarray(init_params[fn], float)
    return x, y, f


def _validate_image(image, mask, error):
    try:
        img = np.asarray(image, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"image must be a numeric 2-D array: {exc}") from None
    if img.ndim != 2:
        raise ValueError(f"image must be a 2-D array, got shape {img.shape}")
    if mask is None:
        m = np.zeros(img.shape, bool)
    else:
        m = np.asarray(mask, bool)
        if m.shape != img.shape:
            raise ValueError(f"mask shape {m.shape} differs from image shape {img.shape}")
    err = None
    if error is not None:
        err = np.asarray(error, np.float64)
        if err.shape != img.shape:
            raise ValueError(f"error shape {err.shape} differs from image shape {img.shape}")
    good = np.isfinite(img) & ~m
    if not good.any():
        raise ValueError("image has no finite, unmasked pixel (it is all NaN/inf or fully masked)")
    return img, m, err, good


def _background_maps(img, good, background, box: int):
    """(level, rms) maps for the ``background`` argument of :func:`photometry`."""
    if isinstance(background, Background):
        return np.asarray(background.level, float), np.asarray(background.rms, float)
    data = np.where(good, img, np.nan)
    if isinstance(background, str):
        if background != "mesh":
            raise ValueError(
                f"background must be 'mesh', a number, a map, a Background or None, "
                f"got {background!r}"
            )
        if min(img.shape) >= 2 * box:
            b = estimate_background(data, box, 3)
            return np.asarray(b.level, float), np.asarray(b.rms, float)
        # Too small for a mesh: one sigma-clipped level for the whole image.
        from astropy.stats import sigma_clipped_stats

        _, med, std = sigma_clipped_stats(data[good], sigma=3.0)
        return np.full(img.shape, med), np.full(img.shape, max(std, 1e-30))
    level = np.zeros(img.shape) if background is None else np.asarray(background, float)
    try:
        level = np.broadcast_to(level, img.shape).astype(float)
    except ValueError:
        raise ValueError(
            f"background map shape {np.shape(background)} differs from image shape {img.shape}"
        ) from None
    resid = data - level
    rms = mad_std(resid, ignore_nan=True)
    return level, np.full(img.shape, max(float(rms), 1e-30))


class _Progress:
    """A one-line progress bar on stderr (or a user callback ``f(message, fraction)``)."""

    def __init__(self, progress):
        self.cb = progress if callable(progress) else None
        self.on = bool(progress)
        self.t0 = time.perf_counter()

    def __call__(self, msg: str, frac: float) -> None:
        if self.cb is not None:
            self.cb(msg, frac)
        elif self.on:
            n = int(round(30 * min(max(frac, 0.0), 1.0)))
            el = time.perf_counter() - self.t0
            sys.stderr.write(f"\r[{'#' * n}{'.' * (30 - n)}] {el:6.1f}s {msg[:60]:<60}")
            if frac >= 1.0:
                sys.stderr.write("\n")
            sys.stderr.flush()


# --------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------


def _sky_variance(level, rms, gain: float, read_noise: float) -> np.ndarray:
    """Per-pixel sky variance (image units^2) for the fit weights when the gain is known.

    The CCD equation, ``level / gain + (read_noise / gain)^2``, is used when it agrees with
    the mesh rms: in a crowded field the clipped mesh rms also holds the confusion noise of
    faint undetected stars (a few per cent here), which would make every error bar too
    large. Confusion can only raise the mesh rms, so the CCD value is accepted from 0.8 to
    1.05 times it. Outside that range the header gain or the sky level does not describe
    the image (sky-subtracted or rescaled data) and the mesh rms is used instead.
    """
    ccd = np.maximum(level, 0.0) / gain + (read_noise / gain) ** 2
    ratio = np.sqrt(np.median(ccd)) / max(float(np.median(rms)), 1e-30)
    return ccd if 0.8 <= ratio <= 1.05 else rms**2


def _detect(data, good, rms, fwhm, threshold, gain, opts) -> Table:
    kw = dict(threshold=threshold, background=0.0, rms=rms, mask=~good, gain=gain)
    kw.update(opts)
    return find_stars(np.where(good, data, 0.0), fwhm, **kw)


def photometry(
    image,
    psf,
    *,
    error=None,
    mask=None,
    gain: float | None = None,
    read_noise: float | None = None,
    init_params: Table | None = None,
    background="mesh",
    background_box: int = 64,
    detection: Mapping | bool | None = None,
    threshold: float = 4.5,
    maxiters: int = 4,
    fit_background: str | None = "constant",
    crit_sep: float | None = None,
    max_group_size: int = 8,
    fit_half: int | None = None,
    merge_sep: float | None = None,
    fade_snr: float = 2.0,
    max_iter: int = 30,
    zeropoint: float = 0.0,
    wcs=None,
    progress: bool | Callable[[str, float], None] = False,
    return_images: bool = False,
) -> Table | PhotometryResult:
    """Iterative PSF photometry of a whole (crowded) image.

    Parameters
    ----------
    image : (H, W) array
        The image, image units (ADU, e-, MJy/sr...). NaN/inf pixels are ignored.
    psf : PSF model
        :class:`~jaxphot.GaussianPRF`, :class:`~jaxphot.MoffatPSF`,
        :class:`~jaxphot.DiscretePSF`... (anything with ``evaluate(x, y, shape)``).
    error : (H, W) array, optional
        1-sigma uncertainty of each pixel (image units). When None and ``gain`` is given,
        the variance is ``(sky + star model) / gain + (read_noise / gain)^2`` with the
        current model; the sky term falls back to the background rms map where the CCD
        equation disagrees with it (sky-subtracted or rescaled images). Without ``gain``
        the background rms map is used (sky noise only). Detection on the residual always
        takes its sky term from the background rms map (plus the stars' Poisson noise with
        ``gain``), or uses ``error`` when given.
    mask : (H, W) bool array, optional
        True for pixels to ignore.
    gain : float, optional
        Electrons per image unit (Poisson noise of the sky and the stars).
    read_noise : float, optional
        Read noise in electrons (used with ``gain``; default 0).
    init_params : Table, optional
        Initial positions: columns ``x, y`` (pixels, 0-based; ``x_init``/``y_init`` or
        ``x_0``/``y_0`` are accepted too) and optionally ``flux`` (image units x pixels).
        They replace the first detection; later iterations still detect on the residual
        unless ``detection=False``. Every row comes back, in order.
    background : "mesh", float, (H, W) array, Background or None
        Sky to subtract before fitting: a mesh estimate with boxes of ``background_box``
        pixels (default), a constant, a map, a :class:`~jaxphot.Background`, or None (0).
        A local constant (``fit_background``) is fitted on top of it in every cutout.
    background_box : int
        Mesh box size in pixels for ``background="mesh"``.
    detection : dict, bool or None
        Extra keyword arguments for :func:`jaxphot.detection.find_stars` (e.g.
        ``{"method": "peak", "sharplo": 0.1}``). False disables detection (``init_params``
        is then required and no new stars are searched for).
    threshold : float
        Detection threshold in sigma of the matched-filter image (first pass and residuals).
    maxiters : int
        Most fit -> subtract -> detect cycles.
    fit_background : {"constant", "plane", None}
        Local background fitted in each group's cutout, on top of ``background``.
    crit_sep : float, optional
        Stars closer than this (pixels) are fitted together. Default ``2 * fwhm``.
    max_group_size : int
        Largest group fitted as one (padded to 1, 2, 4, 8 or 16 stars). Larger or very
        extended groups are split; their parts see each other through neighbour subtraction.
    fit_half : int, optional
        Half size of the fitting box around each star (pixels). Default
        ``max(3, ceil(1.5 fwhm))``.
    merge_sep : float, optional
        After a fit, a star closer than this to a brighter one is flagged ``MERGED`` and
        removed. Default ``0.5 * fwhm``.
    fade_snr : float
        A star whose fitted ``flux / flux_err`` falls below this is flagged ``FADED`` and
        removed from later fits and from the model.
    max_iter : int
        Levenberg-Marquardt iteration cap per cutout.
    zeropoint : float
        ``mag = zeropoint - 2.5 log10(flux_fit)``.
    wcs : astropy.wcs.WCS, optional
        Celestial WCS of the image: adds ``ra, dec`` (ICRS, degrees).
    progress : bool or callable
        True prints a progress bar on stderr; a callable gets ``(message, fraction)``.
    return_images : bool
        Return a :class:`PhotometryResult` (table, model, residual, background) instead of
        the table alone.

    Returns
    -------
    Table or PhotometryResult
        One row per star: ``id, group_id, iter_detected, x_init, y_init, flux_init, x_fit,
        y_fit, flux_fit, x_err, y_err, flux_err`` (CRLB columns when the fitter provides
        them), ``bkg, bkg_x, bkg_y, chi2, dof, n_iter, flags, mag, mag_err`` and ``ra, dec``
        with a WCS. Positions are 0-based pixels (``a[j, i]`` is centred at x=i, y=j);
        fluxes are total fluxes in image units x pixels; ``bkg`` is the local sky under the
        star (map + fitted offset), per pixel; ``chi2``/``dof`` are those of the star's
        group cutout. ``flags`` is a :class:`~jaxphot.FitFlag` bitmask; ``meta`` records
        the settings and the number of iterations.

    Raises
    ------
    ValueError
        For an image that is not 2-D or has no usable pixel, an image smaller than the
        fitting box, a PSF that does not evaluate to finite values, ``init_params``
        without x/y columns, mismatched shapes, or invalid options.
    """
    t_start = time.perf_counter()
    prog = _Progress(progress)
    img, user_mask, err_img, good = _validate_image(image, mask, error)
    if fit_background not in ("constant", "plane", None):
        raise ValueError(
            f"fit_background must be 'constant', 'plane' or None, got {fit_background!r}"
        )
    if int(maxiters) < 1:
        raise ValueError(f"maxiters must be >= 1, got {maxiters}")
    if not (np.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold must be a positive number of sigma, got {threshold}")
    if gain is not None and not (np.isfinite(gain) and gain > 0):
        raise ValueError(f"gain must be a positive number of electrons per unit, got {gain}")
    if read_noise is not None and not (np.isfinite(read_noise) and read_noise >= 0):
        raise ValueError(f"read_noise must be a non-negative number of electrons, got {read_noise}")
    det_opts = {} if detection in (None, True) else detection
    if det_opts is not False and not isinstance(det_opts, Mapping):
        raise ValueError(
            f"detection must be a dict of find_stars options, True/None or False, got {detection!r}"
        )
    if det_opts is False and init_params is None:
        raise ValueError("detection=False needs init_params (there is nothing to fit)")

    fwhm = psf_fwhm(psf)
    half_s = support_half(psf, fwhm)
    check_psf(psf, half_s)
    # Effective background area (px^2) of the PRF, 1 / sum(PRF^2) (DESIGN: beta).
    _c = float(half_s)
    _prf = np.asarray(psf.evaluate(_c, _c, (2 * half_s + 1, 2 * half_s + 1)), float)
    beta = 1.0 / float(np.sum(_prf**2) / np.sum(_prf) ** 2)
    fh = int(fit_half) if fit_half is not None else max(3, int(math.ceil(1.5 * fwhm)))
    box = 2 * fh + 1
    if min(img.shape) < box:
        raise ValueError(
            f"image of shape {img.shape} is smaller than the PSF fitting box ({box}x{box} "
            f"pixels for a PSF of FWHM {fwhm:.2f} px)"
        )
    csep = float(crit_sep) if crit_sep is not None else 2.0 * fwhm
    msep = float(merge_sep) if merge_sep is not None else 0.5 * fwhm
    g = None if gain is None else float(gain)
    rn = 0.0 if read_noise is None else float(read_noise)

    prog("background", 0.02)
    level, rms = _background_maps(img, good, background, int(background_box))
    data = np.where(good, img - level, np.nan)  # sky-subtracted; NaN where unusable
    nan_px = ~np.isfinite(img) & ~user_mask  # unusable through the data: flagged BAD_PIXELS

    # ---- star arrays (grow as detections are added) -------------------------------------
    xs = np.zeros(0)
    ys = np.zeros(0)
    fs = np.zeros(0)
    x_init = np.zeros(0)
    y_init = np.zeros(0)
    f_init = np.zeros(0)
    it_det = np.zeros(0, np.int64)
    flags = np.zeros(0, np.int64)
    fitted = {}  # column name -> (N,) array of the last fit's values

    def add_stars(x, y, f, it, flag0=None):
        nonlocal xs, ys, fs, x_init, y_init, f_init, it_det, flags
        xs = np.r_[xs, x]
        ys = np.r_[ys, y]
        fs = np.r_[fs, f]
        x_init = np.r_[x_init, x]
        y_init = np.r_[y_init, y]
        f_init = np.r_[f_init, f]
        it_det = np.r_[it_det, np.full(len(x), it)]
        flags = np.r_[flags, np.zeros(len(x), np.int64) if flag0 is None else flag0]

    sky_var = None if g is None else _sky_variance(level, rms, g, rn)

    def noise_rms(model, sky_var=sky_var):
        """Per-pixel sigma: the error map, or sky variance plus the stars' Poisson noise."""
        if err_img is not None:
            return err_img
        if g is not None:
            return np.sqrt(sky_var + np.maximum(model, 0.0) / g)
        return rms

    def first_flux(x, y):
        """Linear least-squares flux of a star at fixed (x, y) over its stamp."""
        st, x0, y0 = stamps(psf, x, y, np.ones(len(x)), fh)
        cut, inside = extract_cutouts(np.where(good, data, np.nan), x0, y0, 2 * fh + 1, np.nan)
        ok = np.isfinite(cut)
        num = np.sum(np.where(ok, cut * st, 0.0), axis=(1, 2))
        den = np.sum(np.where(ok, st * st, 0.0), axis=(1, 2))
        f = num / np.where(den > 0, den, np.inf)
        return np.where(np.isfinite(f) & (f > 0), f, np.nanmax(rms) * 1.0)

    # ---- initial sources -----------------------------------------------------------------
    prog("detection", 0.05)
    if init_params is not None:
        x, y, f = _read_init_params(init_params)
        h, w = img.shape
        bad0 = np.zeros(len(x), np.int64)
        bad0[~(np.isfinite(x) & np.isfinite(y))] |= int(FitFlag.NON_FINITE)
        out = (
            np.isfinite(x)
            & np.isfinite(y)
            & ((x < -0.5) | (x > w - 0.5) | (y < -0.5) | (y > h - 0.5))
        )
        bad0[out] |= int(FitFlag.OUTSIDE_CUTOUT)
        usable = bad0 == 0
        f_start = np.full(len(x), np.nan)
        if f is not None:
            f_start[:] = f
        need = usable & ~(np.isfinite(f_start) & (f_start > 0))
        if need.any():
            f_start[need] = first_flux(x[need], y[need])
        add_stars(np.where(usable, x, np.nan), np.where(usable, y, np.nan), f_start, 0, bad0)
        x_init[:] = x
        y_init[:] = y
    else:
        src = _detect(data, good, rms, fwhm, threshold, g, det_opts)
        add_stars(
            np.asarray(src["x_centroid"], float),
            np.asarray(src["y_centroid"], float),
            np.asarray(src["flux"], float),
            1,
        )

    n_iter_done = 0
    model = np.zeros(img.shape)
    group_id = np.zeros(len(xs), np.int64)
    history = []
    for it in range(1, int(maxiters) + 1):
        # Stars taking part: not flagged as removed/failed before.
        live = (flags & EXCLUDED_FROM_MODEL) == 0
        idx = np.nonzero(live)[0]
        # Current model of all live stars (warm values; first pass: initial fluxes).
        st, sx0, sy0 = stamps(psf, xs[idx], ys[idx], fs[idx], half_s)
        model = scatter_stamps(img.shape, st, sx0, sy0)
        sigma_img = noise_rms(model)

        prog(f"iteration {it}: grouping {len(idx)} stars", (it - 1 + 0.1) / maxiters)
        gid_live, buckets = group_buckets(xs[idx], ys[idx], csep, int(max_group_size), fh)
        # Removed stars keep the group of their last fit.
        group_id = np.r_[group_id, np.zeros(len(xs) - len(group_id), np.int64)]
        group_id[idx] = gid_live
        res_cols = _fit_buckets(
            psf,
            data,
            nan_px,
            user_mask,
            sigma_img,
            model,
            st,
            sx0,
            sy0,
            xs[idx],
            ys[idx],
            fs[idx],
            gid_live,
            buckets,
            fit_background,
            max_iter,
            lambda m, f, it=it: prog(f"iteration {it}: {m}", (it - 0.9 + 0.8 * f) / maxiters),
        )
        # Scatter this pass's results into the per-star arrays.
        for name, col in res_cols.items():
            if name not in fitted:
                fitted[name] = np.full(
                    len(xs), np.nan if col.dtype.kind == "f" else 0, dtype=col.dtype
                )
            elif len(fitted[name]) < len(xs):
                pad = np.full(
                    len(xs) - len(fitted[name]),
                    np.nan if col.dtype.kind == "f" else 0,
                    dtype=col.dtype,
                )
                fitted[name] = np.r_[fitted[name], pad]
            fitted[name][idx] = col
        flags[idx] = res_cols["flags"].astype(np.int64)  # live stars: this fit's flags
        ok = np.isfinite(res_cols["x_fit"]) & np.isfinite(res_cols["flux_fit"])
        xs[idx] = np.where(ok, res_cols["x_fit"], xs[idx])
        ys[idx] = np.where(ok, res_cols["y_fit"], ys[idx])
        fs[idx] = np.where(ok, res_cols["flux_fit"], fs[idx])

        # Faded: fitted S/N below fade_snr (or non-positive flux).
        with np.errstate(invalid="ignore", divide="ignore"):
            snr = res_cols["flux_fit"] / res_cols["flux_err"]
        # A degenerate blend can give a bright star a huge (correlated) error: only stars
        # that are also faint against the sky noise of an isolated fit may fade.
        sky_err = np.sqrt(beta * np.median(sigma_img[good]) ** 2)
        faint = res_cols["flux_fit"] < fade_snr * sky_err
        faded = ok & ((res_cols["flux_fit"] <= 0) | (np.isfinite(snr) & (snr < fade_snr) & faint))
        flags[idx[faded]] |= int(FitFlag.FADED)
        # Merged: within merge_sep of a brighter surviving star.
        n_merged = _flag_merged(xs, ys, fs, flags, msep)
        n_removed = int(faded.sum()) + n_merged
        n_iter_done = it

        live = (flags & EXCLUDED_FROM_MODEL) == 0
        idx = np.nonzero(live)[0]
        st, sx0, sy0 = stamps(psf, xs[idx], ys[idx], fs[idx], half_s)
        model = scatter_stamps(img.shape, st, sx0, sy0)
        history.append(
            {
                "iteration": it,
                "n_fitted": int(len(res_cols["x_fit"])),
                "n_faded": int(faded.sum()),
                "n_merged": int(n_merged),
            }
        )
        if it == maxiters:
            break
        if det_opts is False:
            # No search for new stars: refit (with fitted neighbours) until nothing changes.
            if it >= 2 and n_removed == 0:
                break
            continue
        # Detect on the residual; keep sources away from every known star (including
        # removed ones, so a faded star is not re-detected and re-faded forever).
        prog(f"iteration {it}: detection on the residual", (it - 0.1) / maxiters)
        resid = data - model
        # Thresholds use the mesh rms, which holds the confusion noise that makes false peaks.
        det_sigma = noise_rms(model, rms**2)
        new = _detect(resid, good, det_sigma, fwhm, threshold, g, det_opts or {})
        nx_ = np.asarray(new["x_centroid"], float)
        ny_ = np.asarray(new["y_centroid"], float)
        if len(nx_) and len(xs):
            from scipy.spatial import cKDTree

            known = np.isfinite(xs) & np.isfinite(ys)
            d, _ = cKDTree(np.c_[xs[known], ys[known]]).query(np.c_[nx_, ny_])
            keep = d > msep
        else:
            keep = np.ones(len(nx_), bool)
        history[-1]["n_new"] = int(keep.sum())
        if keep.any():
            add_stars(nx_[keep], ny_[keep], np.asarray(new["flux"], float)[keep], it + 1)
        elif n_removed == 0 and it >= 2:
            break

    prog("catalog", 0.98)
    table = _catalog(
        len(xs),
        group_id,
        it_det,
        x_init,
        y_init,
        f_init,
        fitted,
        flags,
        xs,
        ys,
        fs,
        level,
        zeropoint,
        wcs,
    )
    table.meta.update(
        {
            "fwhm": fwhm,
            "threshold": float(threshold),
            "crit_sep": csep,
            "merge_sep": msep,
            "fade_snr": float(fade_snr),
            "fit_half": fh,
            "n_iterations": n_iter_done,
            "fit_background": str(fit_background),
            "zeropoint": float(zeropoint),
            "flag_bits": {f.name: int(f.value) for f in FitFlag},
            "history": history,
            "elapsed_s": round(time.perf_counter() - t_start, 3),
        }
    )
    prog(f"done: {len(table)} stars", 1.0)
    if return_images:
        resid = np.where(np.isfinite(img), img - level - model, np.nan)
        return PhotometryResult(table, model, resid, level)
    return table


def _flag_merged(xs, ys, fs, flags, msep: float) -> int:
    """Flag as MERGED every live star within ``msep`` of a brighter live star."""
    live = ((flags & EXCLUDED_FROM_MODEL) == 0) & np.isfinite(xs) & np.isfinite(ys)
    idx = np.nonzero(live)[0]
    if len(idx) < 2 or msep <= 0:
        return 0
    from scipy.spatial import cKDTree

    pairs = cKDTree(np.c_[xs[idx], ys[idx]]).query_pairs(msep, output_type="ndarray")
    if len(pairs) == 0:
        return 0
    a, b = idx[pairs[:, 0]], idx[pairs[:, 1]]
    fainter = np.where(fs[a] >= fs[b], b, a)
    merged = np.unique(fainter)
    flags[merged] |= int(FitFlag.MERGED)
    return len(merged)


def _fit_buckets(
    psf,
    data,
    nan_px,
    user_mask,
    sigma_img,
    model,
    st,
    sx0,
    sy0,
    x,
    y,
    f,
    gid,
    buckets,
    fit_background,
    max_iter,
    report,
):
    """Fit every group bucket by bucket; returns per-star columns aligned with ``x``."""
    n = len(x)
    out = {k: np.full(n, np.nan) for k in _FIT_FLOAT_COLUMNS}
    out["dof"] = np.zeros(n, np.int64)
    out["n_iter"] = np.zeros(n, np.int64)
    out["flags"] = np.zeros(n, np.int64)
    extra_cols: dict[str, np.ndarray] = {}
    h, w = data.shape
    total = sum(len(ids) for _, _, ids in buckets) or 1
    done = 0
    order = np.argsort(gid, kind="stable")
    starts = np.searchsorted(gid[order], np.arange(gid.max() + 2 if n else 1))
    for size, k, gids in buckets:
        report(f"fitting {len(gids)} groups of <= {k} stars ({size}x{size} px)", done / total)
        ng = len(gids)
        # Star slots (G, K): members of each group, padded with -1.
        cnt = starts[gids + 1] - starts[gids]
        slot = np.full((ng, k), -1, np.int64)
        rank = np.arange(k)[None, :]
        take = rank < cnt[:, None]
        slot[take] = order[(starts[gids][:, None] + rank)[take]]
        act = slot >= 0
        sx = np.where(act, x[np.maximum(slot, 0)], np.nan)
        sy = np.where(act, y[np.maximum(slot, 0)], np.nan)
        cx = np.rint(0.5 * (np.nanmin(sx, 1) + np.nanmax(sx, 1))).astype(np.int64)
        cy = np.rint(0.5 * (np.nanmin(sy, 1) + np.nanmax(sy, 1))).astype(np.int64)
        ox, oy = cx - size // 2, cy - size // 2
        cut, inside = extract_cutouts(data, ox, oy, size, 0.0)
        # Remove every star's model, then add back the group's own stars: what is left is
        # the group plus sky, with all neighbours outside the group subtracted.
        cut = cut - extract_cutouts(model, ox, oy, size, 0.0)[0]
        mem = slot[act]
        gi = np.nonzero(act)[0]
        own = scatter_stamps(
            (ng, size, size), st[mem], sx0[mem], sy0[mem], offset=(gi, ox[gi], oy[gi])
        )
        cut = cut + own
        nanc = extract_cutouts(nan_px.astype(np.float64), ox, oy, size, 0.0)[0] > 0
        cut = np.where(nanc, np.nan, cut)
        msk = ~inside | (extract_cutouts(user_mask.astype(np.float64), ox, oy, size, 0.0)[0] > 0)
        err = extract_cutouts(sigma_img, ox, oy, size, 1.0)[0]
        lx = np.where(act, sx - ox[:, None], (size - 1) / 2.0)
        ly = np.where(act, sy - oy[:, None], (size - 1) / 2.0)
        lf = np.where(act, f[np.maximum(slot, 0)], 0.0)
        lf = np.where(np.isfinite(lf) & (lf > 0), lf, 1.0)
        res = _fit(cut, psf, lx, ly, lf, err, msk, act, fit_background, max_iter)
        # Back to image coordinates.
        for name, shift in (("x_fit", ox), ("y_fit", oy)):
            out[name][mem] = (getattr(res, name) + shift[:, None])[act]
        for name in ("flux_fit", "x_err", "y_err", "flux_err"):
            out[name][mem] = getattr(res, name)[act]
        for name, col in res.extra.items():
            col = np.asarray(col)
            if col.shape == act.shape:
                extra_cols.setdefault(name, np.full(n, np.nan))[mem] = col[act]
        for name in ("bkg", "bkg_x", "bkg_y", "chi2", "dof", "n_iter"):
            out[name][mem] = np.repeat(getattr(res, name)[:, None], k, 1)[act]
        out["flags"][mem] = res.flags[act]
        done += ng
    out.update(extra_cols)
    return out


def _fit(cut, psf, lx, ly, lf, err, msk, act, fit_background, max_iter):
    """fit_cutouts on padded batches: N padded to a multiple of the chunk (one shape).

    The first chunk runs alone so that compilation happens in one thread before the
    remaining chunks run on fit_cutouts' thread pool.
    """
    n = len(cut)
    size = -(-n // _FIT_CHUNK) * _FIT_CHUNK
    pad = size - n

    def padded(a, fill):
        if pad == 0:
            return a
        return np.concatenate([a, np.full((pad,) + a.shape[1:], fill, dtype=a.dtype)])

    cut_p = padded(cut, 0.0)
    err_p = padded(err, 1.0)
    msk_p = padded(msk, False)
    act_p = padded(act, False)
    c = (cut_p.shape[2] - 1) / 2.0
    lx_p, ly_p, lf_p = padded(lx, c), padded(ly, c), padded(lf, 1.0)
    bg = None if fit_background is None else fit_background
    kw = dict(
        error=err_p,
        mask=msk_p,
        background=bg,
        max_iter=max_iter,
        active=act_p,
        chunk_size=_FIT_CHUNK,
        bkg=np.zeros(size),
    )

    def run(sl):
        return fit_cutouts(
            cut_p[sl],
            psf,
            lx_p[sl],
            ly_p[sl],
            lf_p[sl],
            **{k: (v[sl] if isinstance(v, np.ndarray) else v) for k, v in kw.items()},
        )

    first = run(slice(0, _FIT_CHUNK))
    if size == _FIT_CHUNK:
        res = first
    else:
        rest = run(slice(_FIT_CHUNK, size))
        res = _concat_results(first, rest)
    return _slice_result(res, n)


def _concat_results(a, b):
    vals = {}
    for fld in dataclasses.fields(a):
        va, vb = getattr(a, fld.name), getattr(b, fld.name)
        if isinstance(va, dict):
            vals[fld.name] = {
                k: np.concatenate([np.asarray(va[k]), np.asarray(vb[k])]) for k in va if k in vb
            }
        else:
            vals[fld.name] = np.concatenate([np.asarray(va), np.asarray(vb)])
    return type(a)(**vals)


def _slice_result(r, n):
    vals = {}
    for fld in dataclasses.fields(r):
        v = getattr(r, fld.name)
        vals[fld.name] = (
            {k: np.asarray(c)[:n] for k, c in v.items()}
            if isinstance(v, dict)
            else np.asarray(v)[:n]
        )
    return type(r)(**vals)


def _catalog(
    n, group_id, it_det, x_init, y_init, f_init, fitted, flags, xs, ys, fs, level, zeropoint, wcs
) -> Table:
    t = Table()
    t["id"] = np.arange(1, n + 1, dtype=np.int64)
    t["group_id"] = group_id
    t["iter_detected"] = it_det
    t["x_init"], t["y_init"], t["flux_init"] = x_init, y_init, f_init

    def col(name, dtype=float):
        if name in fitted:
            return fitted[name]
        return np.full(n, np.nan) if dtype is float else np.zeros(n, dtype)

    for name in ("x_fit", "y_fit", "flux_fit", "x_err", "y_err", "flux_err"):
        t[name] = col(name)
    base = {*_FIT_FLOAT_COLUMNS, "dof", "n_iter", "flags"}
    for name in sorted(set(fitted) - base):  # CRLB etc. from the fitter, passed through
        t[name] = fitted[name]
    # bkg: the map at the star plus the local offset fitted in its cutout.
    h, w = level.shape
    xi = np.clip(np.nan_to_num(np.rint(t["x_fit"]), nan=0).astype(int), 0, w - 1)
    yi = np.clip(np.nan_to_num(np.rint(t["y_fit"]), nan=0).astype(int), 0, h - 1)
    t["bkg"] = level[yi, xi] + col("bkg")
    t["bkg_x"], t["bkg_y"], t["chi2"] = col("bkg_x"), col("bkg_y"), col("chi2")
    t["dof"] = col("dof", np.int64).astype(np.int64)
    t["n_iter"] = col("n_iter", np.int64).astype(np.int64)
    t["flags"] = flags.astype(np.int32)
    with np.errstate(invalid="ignore", divide="ignore"):
        fl = np.asarray(t["flux_fit"], float)
        t["mag"] = np.where(fl > 0, zeropoint - 2.5 * np.log10(np.where(fl > 0, fl, 1.0)), np.nan)
        t["mag_err"] = np.where(fl > 0, 1.0857362047581294 * np.asarray(t["flux_err"]) / fl, np.nan)
    for name in ("x_init", "y_init", "x_fit", "y_fit", "x_err", "y_err"):
        t[name].unit = "pix"
    if wcs is not None:
        from ..io import pixel_to_radec

        radec = pixel_to_radec(wcs, np.asarray(t["x_fit"]), np.asarray(t["y_fit"]))
        if radec is not None:
            t["ra"], t["dec"] = radec
            t["ra"].unit = t["dec"].unit = "deg"
    return t
