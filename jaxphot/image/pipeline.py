"""Whole-image crowded-field PSF photometry: :func:`photometry`.

A short driver over named steps, in the spirit of DAOPHOT's ALLSTAR:

1. inputs, background level and rms maps, and the noise model (:mod:`.inputs`);
2. detection (:func:`jaxphot.detection.find_stars`) or user-given initial positions;
3. then, up to ``maxiters`` times:

   a. groups of overlapping stars, assigned to a few padded (cutout size, stars per cutout)
      buckets so every fit shape compiles once (:func:`.grouping.group_buckets`);
   b. padded :func:`jaxphot.fit.fit_cutouts` calls per bucket, on cutouts from which the
      current models of all stars *outside* the group have been subtracted (:mod:`.fitting`);
   c. stars that merge with a brighter neighbour or fade below ``fade_snr`` are flagged
      (``FitFlag.MERGED``, ``FitFlag.FADED``) and removed from later fits and the model;
   d. the model image of the live stars, and detection on the residual, until no new
      significant source appears;

4. the catalogue (:mod:`.catalog`): every detected or given star has exactly one row.

The star list is a :class:`~.state.Stars`. Nothing here loops over stars in Python: cutouts
are cut with fancy indexing, models are scattered into the image with ``np.bincount``, and the
loops run over a handful of buckets and iterations.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import warnings
from collections.abc import Callable, Mapping

import numpy as np
from astropy.table import Table
from scipy import ndimage
from scipy.spatial import cKDTree

from ..core.config import enable_compilation_cache
from ..core.fit import model_cutouts
from ..core.flags import FitFlag
from ..core.params import pack
from ..progress import Progress
from ..psf.measure import check_psf, check_psf_coverage, is_varying, psf_fwhm, sample_psfs, support_half
from ..validate import check_psf as as_psf_object
from ..validate import check_size
from .catalog import build_catalog
from .confusion import add_confusion_errors
from .detection import find_stars
from .fitting import fit_groups
from .grouping import Bucket, group_buckets
from .inputs import (
    Frame,
    check_noise,
    initial_sources,
    linear_flux,
    prepare_frame,
    validate_image,
    validate_options,
)
from .quality import add_quality_columns
from .render import EXCLUDED_FROM_MODEL, scatter_stamps, stamps
from .state import StageTimer, Stars

__all__ = ["photometry", "PhotometryResult"]


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


def photometry(
    image,
    psf,
    *,
    error=None,
    mask=None,
    gain: float | None = None,
    read_noise: float | None = None,
    saturation: float | None = None,
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
    confusion_noise: bool = False,
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
        Read noise in electrons (e-, used with ``gain``; default 0).
    saturation : float, optional
        Saturation level, image units (``jaxphot.io.header_saturation`` reads SATURATE,
        SATLEVEL or MAXLIN). Pixels at or above it, and the pixels above
        ``BLEED_FRACTION`` (0.8) of it connected to them (bleed columns), are masked from the
        fits and the background mesh. Each saturated blob is detected as one star at its
        centre, fitted on its unsaturated wings in a cutout enlarged by the blob's radius,
        and flagged ``SATURATED``. Default None: no saturation mask.
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
    confusion_noise : bool
        Add the confusion noise of undetected stars, measured from the excess variance of
        the final residual in blocks of ``background_box`` (:mod:`jaxphot.image.confusion`),
        to ``flux_err`` in quadrature; ``flux_err_fit`` and ``flux_err_confusion`` keep the
        two parts. Default False: ``flux_err`` is the fit's error. The term is a regional
        average, so it also widens the errors of stars with no hidden companion
        (``tests/test_confusion.py``: a sea of undetectable stars, pulls 1.35 -> 1.07).
    progress : bool or callable
        True shows a progress bar (tqdm, on stderr); a callable gets
        ``(message, fraction)`` with the fraction in [0, 1].
    return_images : bool
        Return a :class:`PhotometryResult` (table, model, residual, background) instead of
        the table alone.

    Returns
    -------
    Table or PhotometryResult
        One row per star: ``id, group_id, iter_detected, x_init, y_init, flux_init, x_fit,
        y_fit, flux_fit, x_err, y_err, flux_err`` (CRLB columns when the fitter provides
        them), ``bkg, bkg_x, bkg_y, chi2, dof, n_iter, flags, mag, mag_err``, the quality
        columns, ``flux_err_fit, flux_err_confusion`` (with ``confusion_noise``) and
        ``ra, dec`` with a WCS. Positions are 0-based pixels (``a[j, i]`` is centred at x=i, y=j);
        fluxes are total fluxes in image units x pixels; ``bkg`` is the local sky under the
        star (map + fitted offset), per pixel; ``chi2``/``dof`` are those of the star's
        group cutout. ``flags`` is a :class:`~jaxphot.FitFlag` bitmask; ``meta`` records
        the settings, the number of iterations, a per-iteration ``history`` and
        ``timings``: wall seconds per stage, summed over iterations (``background``,
        ``detection`` (first pass, or the initial fluxes of ``init_params``), ``grouping``,
        ``fitting`` (cutouts with neighbours subtracted, the fits, fade/merge flags),
        ``rendering`` (model images and their noise), ``residual_detection``, ``catalog``).

    Raises
    ------
    ValueError
        For an image that is not 2-D or has no usable pixel, an image smaller than the
        fitting box, a PSF that does not evaluate to finite values, ``init_params``
        without x/y columns, mismatched shapes, or invalid options.
    """
    enable_compilation_cache()  # persistent cache on first use, never at import
    psf = as_psf_object(psf)  # a PSF object or a spec string such as "gaussian:fwhm=3"
    t_start = time.perf_counter()
    prog = Progress(progress, desc="photometry")
    timer = StageTimer()
    img, user_mask, err_img, good = validate_image(image, mask, error)
    det_opts = validate_options(fit_background=fit_background, maxiters=maxiters,
                                threshold=threshold, gain=gain, read_noise=read_noise,
                                detection=detection, init_params=init_params,
                                saturation=saturation)
    background_box = check_size("background_box", background_box)
    cfg = _settings(psf, img.shape, det_opts, gain=gain, threshold=threshold, maxiters=maxiters,
                    fit_background=fit_background, crit_sep=crit_sep,
                    max_group_size=max_group_size, fit_half=fit_half, merge_sep=merge_sep,
                    fade_snr=fade_snr, max_iter=max_iter)
    with timer("background"):
        prog("background", 0.02)
        frame = prepare_frame(img, user_mask, err_img, good, background, background_box, gain,
                              read_noise, saturation, sky_grow=int(math.ceil(2 * cfg.fwhm)))
        check_noise(img, frame.good, frame.noise.rms, detect=det_opts is not False)
        cfg = _with_saturation(cfg, frame)
    with timer("detection"):
        prog("detection", 0.05)
        stars = _initial_stars(cfg, frame, init_params)

    history = []
    for it in range(1, cfg.maxiters + 1):
        model, step = _fit_pass(it, cfg, frame, stars, timer, prog)
        history.append(step)
        removed = step["n_faded"] + step["n_merged"]
        if it == cfg.maxiters:
            break
        if det_opts is False:
            # No search for new stars: refit (with fitted neighbours) until nothing changes.
            if it >= 2 and removed == 0:
                break
            continue
        with timer("residual_detection"):
            prog(f"iteration {it}: detection on the residual", (it - 0.1) / cfg.maxiters)
            step["n_new"] = _residual_detection(it, cfg, frame, stars, model)
        if step["n_new"] == 0 and removed == 0 and it >= 2:
            break

    if cfg.sat_near is not None:
        stars.flags[_near(cfg.sat_near, stars.x, stars.y)] |= int(FitFlag.SATURATED)
    with timer("catalog"):
        prog("catalog", 0.98)
        table = build_catalog(stars, frame.level, zeropoint, wcs)
        # quality step: sharpness, roundness, crowding, qfit, cfit, reduced_chi2 (image.quality)
        sigma = frame.noise.fit_sigma(model)
        add_quality_columns(table, frame.data, sigma, model, cfg.psf, cfg.fit_half, frame.level)
        if confusion_noise:
            resid = np.where(frame.good, frame.data - model, np.nan)
            table.meta.update(add_confusion_errors(
                table, resid, sigma, frame.good, cfg.psf, cfg.fit_half,
                cfg.fit_background, background_box,
                sky_sigma=None if err_img is not None else frame.noise.fit_sigma(0.0 * model),
                gain=cfg.gain))
    table.meta.update(_meta(cfg, zeropoint, history))
    table.meta["elapsed_s"] = round(time.perf_counter() - t_start, 3)
    table.meta["timings"] = timer.rounded()
    _check_model_match(table, cfg, img)
    prog(f"done: {len(table)} stars", 1.0)
    if return_images:
        resid = np.where(np.isfinite(img), img - frame.level - model, np.nan)
        return PhotometryResult(table, model, resid, frame.level)
    return table


class ModelMismatchWarning(UserWarning):
    """The PSF model does not describe the stars (reduced chi2 far from 1)."""


_CHI2_LIMIT = 3.0
_PEAK_CHUNK = 4096  # stars per compiled call of the peak test


def _peak_ratio(table: Table, good, cfg, sub) -> float:  # sub: the image, sky included
    """Median over the good stars of (observed peak pixel) / (the PSF model's peak pixel).

    Near 1 when the PSF's width matches the stars'; well above 1 for a PSF far too wide (the
    fit spreads the flux), well below 1 for one far too narrow.
    """
    h, w = sub.shape
    x = np.asarray(table["x_fit"], float)[good]
    y = np.asarray(table["y_fit"], float)[good]
    i, j = np.clip(np.round(x).astype(int), 0, w - 1), np.clip(np.round(y).astype(int), 0, h - 1)
    psf = cfg.psf
    if is_varying(psf):  # its centre's PSF is close enough for a 2x test
        psf = psf.psf_at(0.5 * (w - 1), 0.5 * (h - 1))
    # The PRF in the star's own pixel, through the compiled, bucketed model path: an eager
    # psf.evaluate on N stars would compile a dozen kernels for every new N.
    zero, one = np.zeros(len(x)), np.ones((len(x), 1))
    par = pack(zero, zero, zero, one, (x - i)[:, None], (y - j)[:, None])
    frac = model_cutouts(psf, par, (1, 1), chunk_size=_PEAK_CHUNK)[:, 0, 0]
    model = np.asarray(table["flux_fit"], float)[good] * frac
    data = sub[j, i] - (np.asarray(table["bkg"], float)[good] if "bkg" in table.colnames else 0.0)
    ok = np.isfinite(data) & np.isfinite(model) & (model > 0)
    return float(np.median(data[ok] / model[ok])) if np.any(ok) else float("nan")


def _check_model_match(table: Table, cfg, sub) -> None:
    """Record the median reduced chi2 (and peak ratio) of the unflagged stars in ``meta``; warn
    when the chi2 is > 3 or the stars' peaks are far from the PSF's (ratio > 2 or < 0.5).

    A wrong PSF width, an oversampled PSF read as 1x, or a wrong gain all show up as a median
    reduced chi2 well above 1 over the well-measured stars, or as peaks the PSF cannot match.
    """
    table.meta["median_reduced_chi2"] = float("nan")
    table.meta["median_peak_ratio"] = float("nan")
    if len(table) == 0:
        return
    dof = np.asarray(table["dof"], float)
    chi2 = np.asarray(table["chi2"], float)
    good = (np.asarray(table["flags"]) == 0) & (dof > 0) & np.isfinite(chi2)
    if not np.any(good):
        return
    med = float(np.median(chi2[good] / dof[good]))
    ratio = _peak_ratio(table, good, cfg, sub)
    table.meta["median_reduced_chi2"] = med
    table.meta["median_peak_ratio"] = ratio
    if ratio > 2 or ratio < 0.5:
        warnings.warn(
            f"the stars' peak pixels are {ratio:.2f}x the PSF model's (median of "
            f"{int(good.sum())} unflagged stars; median reduced chi2 {med:.1f}): the PSF (FWHM "
            f"{cfg.fwhm:.2f} px) is {'wider' if ratio > 1 else 'narrower'} than the stars; check "
            "its width and its oversampling (a PSF file without OVERSAMP is read as 1x)",
            ModelMismatchWarning, stacklevel=3)
    elif med > _CHI2_LIMIT:
        warnings.warn(
            f"median reduced chi2 of the {int(good.sum())} unflagged stars is {med:.1f} (> "
            f"{_CHI2_LIMIT:g}): the PSF (FWHM {cfg.fwhm:.2f} px) may not match the stars; check "
            "its width, its oversampling (a PSF file without OVERSAMP is read as 1x) and the gain",
            ModelMismatchWarning, stacklevel=3)



# --------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Settings:
    """The resolved options of one :func:`photometry` run (pixels, sigma, image units)."""

    psf: object
    fwhm: float  #: PSF FWHM, pixels
    stamp_half: int  #: half size of the model stamps, pixels
    beta: float  #: effective background area of the PRF, 1 / sum(PRF^2), pixels^2
    fit_half: int  #: half size of the fitting box, pixels
    crit_sep: float  #: grouping separation, pixels
    merge_sep: float  #: merging separation, pixels
    max_group_size: int
    fit_background: str | None
    max_iter: int  #: Levenberg-Marquardt cap per cutout
    maxiters: int  #: fit -> subtract -> detect cycles
    fade_snr: float
    threshold: float  #: detection threshold, sigma
    gain: float | None  #: electrons per image unit
    detection: Mapping | bool  #: find_stars options, or False
    sat_near: np.ndarray | None = None  #: (H, W) bool: within ~FWHM of a saturated pixel
    sat_grow: int = 0  #: pixels added to each side of a saturated star's cutout


def _settings(psf, shape, detection, *, gain, threshold, maxiters, fit_background, crit_sep,
              max_group_size, fit_half, merge_sep, fade_snr, max_iter) -> _Settings:
    """Check the PSF against the image and fill in the defaults that depend on its FWHM."""
    fwhm = psf_fwhm(psf)
    half_s = support_half(psf, fwhm)
    check_psf(psf, half_s)
    check_psf_coverage(psf, shape)
    c = float(half_s)
    ref = sample_psfs(psf)  # a varying PSF: its centre's PSF stands for the field's beta
    prf = np.asarray(ref[len(ref) // 2].evaluate(c, c, (2 * half_s + 1, 2 * half_s + 1)), float)
    fh = int(fit_half) if fit_half is not None else max(3, int(math.ceil(1.5 * fwhm)))
    box = 2 * fh + 1
    if min(shape) < box:
        raise ValueError(
            f"image of shape {shape} is smaller than the PSF fitting box ({box}x{box} "
            f"pixels for a PSF of FWHM {fwhm:.2f} px)"
        )
    return _Settings(
        psf=psf, fwhm=fwhm, stamp_half=half_s,
        beta=1.0 / float(np.sum(prf**2) / np.sum(prf) ** 2),  # docs/conventions.md: beta
        fit_half=fh,
        crit_sep=float(crit_sep) if crit_sep is not None else 2.0 * fwhm,
        merge_sep=float(merge_sep) if merge_sep is not None else 0.5 * fwhm,
        max_group_size=int(max_group_size), fit_background=fit_background,
        max_iter=max_iter, maxiters=int(maxiters), fade_snr=fade_snr, threshold=threshold,
        gain=None if gain is None else float(gain), detection=detection,
    )


def _with_saturation(cfg: _Settings, frame: Frame) -> _Settings:
    """``cfg`` with the saturated neighbourhood and the cutout growth of saturated stars."""
    sat = frame.saturated
    if sat is None or not sat.any():
        return cfg
    lab, n = ndimage.label(sat, structure=np.ones((3, 3), bool))
    area = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    # Enough unmasked wing: grow the box by the radius of the largest saturated core.
    grow = int(math.ceil(math.sqrt(area.max() / math.pi)))
    reach = max(1, int(math.ceil(cfg.fwhm)))
    near = ndimage.binary_dilation(sat, np.ones((3, 3), bool), iterations=reach)
    return dataclasses.replace(cfg, sat_near=near, sat_grow=grow)


def _near(region: np.ndarray, x, y) -> np.ndarray:
    """(N,) bool: the (finite) positions ``x, y`` fall on a True pixel of ``region``."""
    ok = np.isfinite(x) & np.isfinite(y)
    h, w = region.shape
    i = np.clip(np.rint(np.where(ok, x, 0)).astype(np.int64), 0, w - 1)
    j = np.clip(np.rint(np.where(ok, y, 0)).astype(np.int64), 0, h - 1)
    return ok & region[j, i]


def _meta(cfg: _Settings, zeropoint: float, history: list) -> dict:
    """The settings and iteration history recorded in ``table.meta``."""
    return {
        "fwhm": cfg.fwhm,
        "threshold": float(cfg.threshold),
        "crit_sep": cfg.crit_sep,
        "merge_sep": cfg.merge_sep,
        "fade_snr": float(cfg.fade_snr),
        "fit_half": cfg.fit_half,
        "n_iterations": len(history),
        "fit_background": str(cfg.fit_background),
        "zeropoint": float(zeropoint),
        "flag_bits": {f.name: int(f.value) for f in FitFlag},
        "history": history,
    }


# --------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------


def _detect(data, good, rms, cfg: _Settings, opts: Mapping) -> Table:
    """find_stars on sky-subtracted ``data`` (NaN/unusable pixels masked), sigma ``rms``."""
    # Unusable pixels (an error of 0 there) get a typical sigma: they are masked for the
    # detection anyway, and a 0 would only divide by zero.
    rms = np.where(good, rms, np.median(rms[good]))
    kw = dict(threshold=cfg.threshold, background=0.0, rms=rms, mask=~good, gain=cfg.gain)
    kw.update(opts)
    return find_stars(np.where(good, data, 0.0), cfg.fwhm, **kw)


def _initial_stars(cfg: _Settings, frame: Frame, init_params) -> Stars:
    """The star list before any fit: the rows of ``init_params``, or a first detection."""
    stars = Stars.empty()
    if init_params is not None:
        x, y, f, flags, x_given, y_given = initial_sources(init_params, frame, cfg.psf,
                                                           cfg.fit_half)
        stars.append(x, y, f, 0, flags, x_init=x_given, y_init=y_given)
    else:
        src = _detect(frame.data, frame.good, frame.noise.rms, cfg, cfg.detection)
        x, y = np.asarray(src["x_centroid"], float), np.asarray(src["y_centroid"], float)
        f = np.asarray(src["flux"], float)
        if frame.saturated is not None and frame.saturated.any():
            x, y, f = _add_saturated(cfg, frame, x, y, f)
        stars.append(x, y, f, 1)
    return stars


def _saturated_centres(sat: np.ndarray):
    """Centre (x, y) and reach (px) of each 8-connected blob of saturated pixels.

    A bleed column (or row) would drag a plain centroid along it: each pixel is weighted by
    the square of (run of the blob in its row) x (run in its column), which peaks in the
    round core. The reach is the largest distance of a blob pixel from its centre.
    """
    lab, n = ndimage.label(sat, structure=np.ones((3, 3), bool))
    jj, ii = np.nonzero(lab)
    lb = lab[jj, ii]
    _, inv_r, cnt_r = np.unique(lb * (sat.shape[0] + 1) + jj, return_inverse=True,
                                return_counts=True)
    _, inv_c, cnt_c = np.unique(lb * (sat.shape[1] + 1) + ii, return_inverse=True,
                                return_counts=True)
    wgt = (cnt_r[inv_r.ravel()] * cnt_c[inv_c.ravel()]).astype(float) ** 2
    sw = np.bincount(lb, wgt, n + 1)[1:]
    cx = np.bincount(lb, wgt * ii, n + 1)[1:] / sw
    cy = np.bincount(lb, wgt * jj, n + 1)[1:] / sw
    d = np.hypot(ii - cx[lb - 1], jj - cy[lb - 1])
    reach = np.zeros(n)
    np.maximum.at(reach, lb - 1, d)
    return cx, cy, reach


def _add_saturated(cfg: _Settings, frame: Frame, x, y, f):
    """Detections plus one star per saturated blob; detections on its wings are dropped.

    Detection sees a saturated core as a hole and may miss the star or find bits of its
    ring: the blob's centre replaces whatever was found within its reach + 1 FWHM. The
    starting flux is the linear PSF fit to the unmasked pixels around it.
    """
    cx, cy, reach = _saturated_centres(frame.saturated)
    if len(x):
        d, k = cKDTree(np.c_[cx, cy]).query(np.c_[x, y])
        keep = d > reach[k] + cfg.fwhm
        x, y, f = x[keep], y[keep], f[keep]
    half = cfg.fit_half + cfg.sat_grow
    fallback = float(np.nanmax(f)) if len(f) else 1.0
    fs = linear_flux(cfg.psf, frame.data, cx, cy, half, fallback)
    return np.r_[x, cx], np.r_[y, cy], np.r_[f, fs]


def _render(cfg: _Settings, stars: Stars, idx: np.ndarray, shape):
    """Stamps ``(st, x0, y0)`` of stars ``idx`` at their current values, and their (H, W) sum."""
    st, x0, y0 = stamps(cfg.psf, stars.x[idx], stars.y[idx], stars.flux[idx], cfg.stamp_half)
    return (st, x0, y0), scatter_stamps(shape, st, x0, y0)


def _fit_report(prog: Progress, it: int, maxiters: int, message: str, frac: float) -> None:
    """Progress of the fits of iteration ``it``: from 0.1 to 0.9 of its share."""
    prog(f"iteration {it}: {message}", (it - 0.9 + 0.8 * frac) / maxiters)


def _fit_pass(it: int, cfg: _Settings, frame: Frame, stars: Stars, timer: StageTimer,
              prog: Progress) -> tuple[np.ndarray, dict]:
    """Group, fit, flag removed stars: one pass over the live stars of ``stars`` (updated).

    Returns the (H, W) model image of the stars still live after it, and the pass's
    ``history`` record (``iteration, n_fitted, n_faded, n_merged``).
    """
    shape = frame.data.shape
    idx = stars.live()
    with timer("rendering"):
        # Warm values (first pass: initial fluxes) for neighbour subtraction and the weights.
        star_stamps, model = _render(cfg, stars, idx, shape)
        sigma = frame.noise.fit_sigma(model)
    with timer("grouping"):
        prog(f"iteration {it}: grouping {len(idx)} stars", (it - 1 + 0.1) / cfg.maxiters)
        x, y, f = stars.x[idx], stars.y[idx], stars.flux[idx]
        # stars within a FWHM are near-degenerate: never fitted apart (unless crit_sep is smaller)
        gid, buckets = group_buckets(x, y, cfg.crit_sep, cfg.max_group_size, cfg.fit_half,
                                     keep_sep=min(cfg.fwhm, cfg.crit_sep))
        if cfg.sat_near is not None:
            buckets = _grow_saturated(buckets, gid, _near(cfg.sat_near, x, y), cfg.sat_grow)
        stars.group_id[idx] = gid  # removed stars keep the group of their last fit
    with timer("fitting"):
        report = functools.partial(_fit_report, prog, it, cfg.maxiters)
        cols = fit_groups(cfg.psf, frame, sigma, model, star_stamps, x, y, f, gid, buckets,
                          cfg.fit_background, cfg.max_iter, report)
        ok = stars.record_fit(idx, cols)
        n_faded = _flag_faded(stars, idx, cols, ok, sigma[frame.good], cfg)
        n_merged = _flag_merged(stars.x, stars.y, stars.flux, stars.flags, cfg.merge_sep)
    with timer("rendering"):
        _, model = _render(cfg, stars, stars.live(), shape)
    step = {"iteration": it, "n_fitted": int(len(cols["x_fit"])), "n_faded": n_faded,
            "n_merged": n_merged}
    return model, step


def _grow_saturated(buckets: list[Bucket], gid, sat, grow: int) -> list[Bucket]:
    """Move the groups with a saturated star (``sat``, (L,) bool) to buckets ``2 * grow`` px
    larger, so that their fits keep enough unmasked wing around the masked core."""
    if grow <= 0 or not sat.any():
        return buckets
    has = np.zeros(int(gid.max()) + 1, bool)
    has[gid[sat]] = True
    out = []
    for b in buckets:
        big = has[b.group_ids]
        if (~big).any():
            out.append(Bucket(b.size, b.k, b.group_ids[~big]))
        if big.any():
            out.append(Bucket(b.size + 2 * grow, b.k, b.group_ids[big]))
    return out


def _flag_faded(stars: Stars, idx, cols: dict, ok, sigma_good, cfg: _Settings) -> int:
    """Flag as FADED the stars ``idx`` whose fit has a non-positive flux or S/N < fade_snr.

    ``sigma_good`` is the fit's noise on the usable pixels. Returns the number flagged.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = cols["flux_fit"] / cols["flux_err"]
    # A degenerate blend can give a bright star a huge (correlated) error: only stars
    # that are also faint against the sky noise of an isolated fit may fade.
    sky_err = np.sqrt(cfg.beta * np.median(sigma_good) ** 2)
    faint = cols["flux_fit"] < cfg.fade_snr * sky_err
    faded = ok & ((cols["flux_fit"] <= 0) | (np.isfinite(snr) & (snr < cfg.fade_snr) & faint))
    stars.flags[idx[faded]] |= int(FitFlag.FADED)
    return int(faded.sum())


def _flag_merged(xs, ys, fs, flags, msep: float) -> int:
    """Flag as MERGED every live star within ``msep`` of a brighter live star."""
    live = ((flags & EXCLUDED_FROM_MODEL) == 0) & np.isfinite(xs) & np.isfinite(ys)
    idx = np.nonzero(live)[0]
    if len(idx) < 2 or msep <= 0:
        return 0
    pairs = cKDTree(np.c_[xs[idx], ys[idx]]).query_pairs(msep, output_type="ndarray")
    if len(pairs) == 0:
        return 0
    a, b = idx[pairs[:, 0]], idx[pairs[:, 1]]
    fainter = np.where(fs[a] >= fs[b], b, a)
    merged = np.unique(fainter)
    flags[merged] |= int(FitFlag.MERGED)
    return len(merged)


def _residual_detection(it: int, cfg: _Settings, frame: Frame, stars: Stars, model) -> int:
    """Detect on ``data - model`` and append the new stars to ``stars``; returns how many.

    Sources within ``merge_sep`` of any known star are dropped, removed stars included, so a
    faded star is not re-detected and re-faded forever; so are sources within ~1 FWHM of a
    saturated pixel.
    """
    resid = frame.data - model
    new = _detect(resid, frame.good, frame.noise.detection_sigma(model), cfg, cfg.detection or {})
    nx = np.asarray(new["x_centroid"], float)
    ny = np.asarray(new["y_centroid"], float)
    if len(nx) and len(stars):
        known = np.isfinite(stars.x) & np.isfinite(stars.y)
        d, _ = cKDTree(np.c_[stars.x[known], stars.y[known]]).query(np.c_[nx, ny])
        keep = d > cfg.merge_sep
    else:
        keep = np.ones(len(nx), bool)
    if cfg.sat_near is not None:
        # The rim of a masked saturated core holds the brightest, least certain residuals:
        # nothing new is searched for within ~1 FWHM of it.
        keep &= ~_near(cfg.sat_near, nx, ny)
    if keep.any():
        stars.append(nx[keep], ny[keep], np.asarray(new["flux"], float)[keep], it + 1)
    return int(keep.sum())
