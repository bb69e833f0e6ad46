"""What :func:`jaxphot.photometry` makes of its inputs: checked arrays, the sky and the noise.

:func:`validate_image` and :func:`validate_options` turn bad arguments into clear errors;
:func:`prepare_frame` computes the background maps, the sky-subtracted data and the
:class:`NoiseModel` of the fit weights and detection thresholds; :func:`read_init_params`
and :func:`initial_sources` turn a user's table into starting positions and fluxes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
from astropy.stats import mad_std
from astropy.table import Table
from scipy import ndimage

from ..core.flags import FitFlag
from ..validate import check_non_negative, check_positive
from .background import Background, estimate_background
from .cutouts import extract_cutouts
from .render import stamps

__all__ = [
    "validate_image", "validate_options", "read_init_params", "background_maps", "sky_variance",
    "NoiseModel", "Frame", "prepare_frame", "initial_sources", "linear_flux",
    "saturation_mask", "BLEED_FRACTION",
    "check_noise",
]

#: Pixels at or above this fraction of the saturation level that touch a saturated pixel
#: (directly or through other such pixels) are masked with it: bleed columns and the
#: non-linear rim of a saturated core.
BLEED_FRACTION = 0.8


# --------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------


def validate_image(image, mask, error):
    """The image, mask and error as arrays of one shape, and the usable pixels.

    Parameters
    ----------
    image : (H, W) array_like
        Image, any units. NaN/inf pixels are unusable.
    mask : (H, W) bool array_like or None
        True for pixels to ignore.
    error : (H, W) array_like or None
        1-sigma error map, image units.

    Returns
    -------
    img : (H, W) float64 array
    mask : (H, W) bool array
    error : (H, W) float64 array or None
    good : (H, W) bool array
        Finite and unmasked pixels.

    Raises
    ------
    ValueError
        For a non-numeric or non-2-D image, mismatched shapes, or no usable pixel.
    """
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
    if err is not None:
        img, good = _apply_error_map(img, err, good)
    return img, m, err, good


def _apply_error_map(img, err, good):
    """``(img, good)`` with the pixels whose error is 0 or not finite made unusable (NaN in a
    copy of ``img``, so the stars on them are flagged BAD_PIXELS); ValueError naming ``error``
    for a negative value or no usable pixel left."""
    with np.errstate(invalid="ignore"):
        neg = good & (err < 0)
        bad = good & ~(np.isfinite(err) & (err > 0))
    if neg.any():
        raise ValueError(f"error must be a 1-sigma map >= 0 (image units); it is negative on "
                         f"{int(neg.sum())} usable pixels (min {float(err[neg].min()):g})")
    if bad.all() or not (good & ~bad).any():
        raise ValueError("error is 0 or not finite on every usable pixel: it must be a 1-sigma "
                         "map > 0 (image units)")
    if bad.any():
        img = np.where(bad, np.nan, img)
        good = good & ~bad
    return img, good


def check_noise(img, good, rms, detect: bool) -> None:
    """ValueError naming ``image`` when it cannot be measured: constant on its usable pixels
    (blank, saturated or the wrong extension), or, when stars are to be detected, with a zero or
    non-finite background rms (a noiseless image: thresholds in σ are meaningless).

    ``img``, ``good`` (H, W) as from :func:`validate_image`; ``rms`` (H, W) the background rms
    map, image units.
    """
    v = img[good]
    if v.size == 0:
        raise ValueError("image has no usable pixel left once the saturated ones are masked "
                         "(check saturation=)")
    if np.all(v == v[0]):
        raise ValueError(f"image is constant (every usable pixel is {v[0]:g}): blank, saturated "
                         f"everywhere or the wrong extension? There is nothing to measure")
    if not detect:
        return
    ok = np.isfinite(rms[good]) & (rms[good] > 0)
    if not ok.all():
        raise ValueError(f"image: its background rms is 0 or not finite on {int((~ok).sum())} of "
                         f"{ok.size} usable pixels (a noiseless image?), so no detection threshold "
                         f"in σ can be set; add noise, or give init_params with detection=False")


def validate_options(*, fit_background, maxiters, threshold, gain, read_noise, detection,
                     init_params, saturation=None) -> Mapping | bool:
    """Check the scalar options of :func:`jaxphot.photometry`.

    Returns
    -------
    dict or False
        The :func:`~jaxphot.detection.find_stars` options (``{}`` for None/True), or False
        when detection is off.

    Raises
    ------
    ValueError
        For any option out of its range, or ``detection=False`` without ``init_params``.
    """
    if fit_background not in ("constant", "plane", None):
        raise ValueError(
            f"fit_background must be 'constant', 'plane' or None, got {fit_background!r}"
        )
    if int(maxiters) < 1:
        raise ValueError(f"maxiters must be >= 1, got {maxiters}")
    check_positive("threshold", threshold, "sigma")
    if gain is not None:
        check_positive("gain", gain, "electrons per image unit")
    if read_noise is not None:
        check_non_negative("read_noise", read_noise, "electrons")
    if saturation is not None:
        check_positive("saturation", saturation, "image units")
    det_opts = {} if detection in (None, True) else detection
    if det_opts is not False and not isinstance(det_opts, Mapping):
        raise ValueError(
            f"detection must be a dict of find_stars options, True/None or False, got {detection!r}"
        )
    if det_opts is False and init_params is None:
        raise ValueError("detection=False needs init_params (there is nothing to fit)")
    return det_opts


def _pick_column(t: Table, names) -> str | None:
    """The first of ``names`` that is a column of ``t``."""
    for n in names:
        if n in t.colnames:
            return n
    return None


def read_init_params(init_params) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(x, y, flux or None)`` (N,) float arrays from a table of initial positions.

    Accepts ``x, y`` or ``x_init/y_init``, ``x_0/y_0``, ``xcentroid``/``x_centroid`` (pixels)
    and optionally ``flux``, ``flux_init`` or ``flux_0``; anything :class:`~astropy.table.Table`
    accepts is converted.

    Raises
    ------
    ValueError
        If it is not a table or has no x or y column.
    """
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


# --------------------------------------------------------------------------------------
# Sky and noise
# --------------------------------------------------------------------------------------


def background_maps(img, good, background, box: int) -> tuple[np.ndarray, np.ndarray]:
    """(level, rms) (H, W) maps, image units, for the ``background`` argument of photometry.

    A :class:`~jaxphot.Background` is used as it is; ``"mesh"`` estimates both with boxes of
    ``box`` pixels (one sigma-clipped value for an image smaller than two boxes); a number or a
    map is the level, and the rms is the MAD of the image minus it.

    Raises
    ------
    ValueError
        For an unknown string or a map of another shape.
    """
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


def sky_variance(level, rms, gain: float, read_noise: float) -> np.ndarray:
    """Per-pixel sky variance (image units^2) for the fit weights when the gain is known.

    The CCD equation, ``level / gain + (read_noise / gain)^2``, is used when it agrees with
    the mesh rms: in a crowded field the clipped mesh rms also holds the confusion noise of
    faint undetected stars (a few per cent here), which would make every error bar too
    large. Confusion can only raise the mesh rms, so the CCD value is accepted from 0.8 to
    1.05 times it. Outside that range the header gain or the sky level does not describe
    the image (sky-subtracted or rescaled data) and the mesh rms is used instead.

    Parameters
    ----------
    level, rms : (H, W) arrays
        Background level and rms maps, image units.
    gain : float
        Electrons per image unit.
    read_noise : float
        Electrons.

    Returns
    -------
    (H, W) array
        Image units squared.
    """
    ccd = np.maximum(level, 0.0) / gain + (read_noise / gain) ** 2
    ratio = np.sqrt(np.median(ccd)) / max(float(np.median(rms)), 1e-30)
    return ccd if 0.8 <= ratio <= 1.05 else rms**2


@dataclasses.dataclass(frozen=True)
class NoiseModel:
    """Per-pixel 1-sigma noise of the image, given the current model of the stars.

    Attributes
    ----------
    rms : (H, W) array
        Background rms map, image units (holds the confusion noise of faint stars).
    error : (H, W) array or None
        The user's error map; when given it is the noise, whatever the model.
    gain : float or None
        Electrons per image unit: adds the stars' Poisson noise.
    sky_var : (H, W) array or None
        Sky variance of the fit weights (:func:`sky_variance`), with ``gain``.
    """

    rms: np.ndarray
    error: np.ndarray | None = None
    gain: float | None = None
    sky_var: np.ndarray | None = None

    def _sigma(self, model, sky_var) -> np.ndarray:
        if self.error is not None:
            return self.error
        if self.gain is not None:
            return np.sqrt(sky_var + np.maximum(model, 0.0) / self.gain)
        return self.rms

    def fit_sigma(self, model) -> np.ndarray:
        """(H, W) sigma of the fit weights for the (H, W) star ``model`` (image units)."""
        return self._sigma(model, self.sky_var)

    def detection_sigma(self, model) -> np.ndarray:
        """(H, W) sigma for detection thresholds: the sky term is always the mesh rms, which
        holds the confusion noise that makes false peaks."""
        return self._sigma(model, self.rms**2)


@dataclasses.dataclass(frozen=True)
class Frame:
    """The image as the fits see it.

    Attributes
    ----------
    level : (H, W) array
        Background level subtracted before fitting, image units.
    data : (H, W) array
        ``image - level``; NaN where unusable (non-finite or masked).
    good : (H, W) bool array
        Usable pixels.
    bad_data : (H, W) bool array
        Non-finite and not masked by the user: a star's fit over them is flagged BAD_PIXELS.
    mask : (H, W) bool array
        The user's mask, plus the saturated pixels and their bleed columns.
    noise : NoiseModel
    saturated : (H, W) bool array or None
        Pixels masked for saturation (:func:`saturation_mask`); None without a level.
    """

    level: np.ndarray
    data: np.ndarray
    good: np.ndarray
    bad_data: np.ndarray
    mask: np.ndarray
    noise: NoiseModel
    saturated: np.ndarray | None = None


def saturation_mask(img, saturation: float, bleed_fraction: float = BLEED_FRACTION) -> np.ndarray:
    """Saturated pixels and the bleed columns that grow from them.

    Parameters
    ----------
    img : (H, W) array
        The image as read (sky not subtracted), image units; NaN pixels are never saturated.
    saturation : float
        Saturation level, image units: pixels ``>= saturation`` are saturated.
    bleed_fraction : float
        Pixels ``>= bleed_fraction * saturation`` that are 8-connected to a saturated pixel
        through such pixels are masked too (bleed columns/rows, the non-linear rim).

    Returns
    -------
    (H, W) bool array
        True where the fit must not look.

    Raises
    ------
    ValueError
        If ``saturation`` is not a finite number or ``bleed_fraction`` is not in (0, 1].
    """
    if not np.isfinite(saturation):
        raise ValueError(f"saturation must be a finite number (image units), got {saturation}")
    if not 0 < bleed_fraction <= 1:
        raise ValueError(f"bleed_fraction must be in (0, 1], got {bleed_fraction}")
    with np.errstate(invalid="ignore"):
        core = img >= saturation
        near = img >= bleed_fraction * saturation
    if not core.any():
        return core
    lab, n = ndimage.label(near, structure=np.ones((3, 3), bool))
    hit = np.zeros(n + 1, bool)
    hit[lab[core]] = True
    hit[0] = False
    return hit[lab]


def prepare_frame(img, mask, error, good, background, box: int, gain, read_noise,
                  saturation=None, sky_grow: int = 0) -> Frame:
    """Background maps, sky-subtracted data and noise model of a validated image.

    Parameters
    ----------
    img, mask, error, good
        As returned by :func:`validate_image`.
    background, box
        The ``background`` and ``background_box`` arguments of photometry.
    gain, read_noise : float or None
        Electrons per image unit; electrons (None: 0).
    saturation : float or None
        Saturation level, image units (:func:`saturation_mask`); None: no saturation mask.
    sky_grow : int
        The saturated pixels, grown by this many pixels, are left out of the background
        mesh: the bright wings around a saturated core would raise the sky.
    """
    sat = None
    if saturation is not None:
        sat = saturation_mask(img, float(saturation)) & good
        if sat.any():
            mask = mask | sat
            good = good & ~sat
        sky_good = good
        if sat.any() and sky_grow > 0:
            grown = ndimage.binary_dilation(sat, np.ones((3, 3), bool), iterations=int(sky_grow))
            # Keep most of the image for the mesh even if the bright stars are dense.
            if np.count_nonzero(good & ~grown) > 0.5 * np.count_nonzero(good):
                sky_good = good & ~grown
        level, rms = background_maps(img, sky_good, background, int(box))
    else:
        level, rms = background_maps(img, good, background, int(box))
    g = None if gain is None else float(gain)
    rn = 0.0 if read_noise is None else float(read_noise)
    sky_var = None if g is None else sky_variance(level, rms, g, rn)
    return Frame(
        level=level,
        data=np.where(good, img - level, np.nan),
        good=good,
        bad_data=~np.isfinite(img) & ~mask,
        mask=mask,
        noise=NoiseModel(rms, error, g, sky_var),
        saturated=sat,
    )


# --------------------------------------------------------------------------------------
# Initial sources
# --------------------------------------------------------------------------------------


def linear_flux(psf, data, x, y, half: int, fallback: float) -> np.ndarray:
    """Linear least-squares flux of stars at fixed positions over their PSF stamps.

    Parameters
    ----------
    psf : PSF model
    data : (H, W) array
        Sky-subtracted image, NaN where unusable.
    x, y : (M,) arrays
        Positions, pixels.
    half : int
        Stamp half size, pixels.
    fallback : float
        Flux of a star whose estimate is not finite and positive.

    Returns
    -------
    (M,) array
        Total fluxes, image units x pixels.
    """
    st, x0, y0 = stamps(psf, x, y, np.ones(len(x)), half)
    cut, _ = extract_cutouts(data, x0, y0, 2 * half + 1, np.nan)
    ok = np.isfinite(cut)
    num = np.sum(np.where(ok, cut * st, 0.0), axis=(1, 2))
    den = np.sum(np.where(ok, st * st, 0.0), axis=(1, 2))
    f = num / np.where(den > 0, den, np.inf)
    return np.where(np.isfinite(f) & (f > 0), f, fallback)


def initial_sources(init_params, frame: Frame, psf, half: int):
    """Starting positions, fluxes and flags of the rows of ``init_params``.

    Rows with a non-finite position, or outside the image, are flagged (NON_FINITE,
    OUTSIDE_CUTOUT) and start at NaN so that they are never fitted; a missing or non-positive
    flux is estimated with :func:`linear_flux`.

    Returns
    -------
    x, y, flux : (N,) float arrays
        Starting values (pixels; image units x pixels).
    flags : (N,) int64 array
    x_given, y_given : (N,) float arrays
        The positions as given, for the ``x_init, y_init`` columns.
    """
    x, y, f = read_init_params(init_params)
    h, w = frame.data.shape
    bad0 = np.zeros(len(x), np.int64)
    finite = np.isfinite(x) & np.isfinite(y)
    bad0[~finite] |= int(FitFlag.NON_FINITE)
    out = finite & ((x < -0.5) | (x > w - 0.5) | (y < -0.5) | (y > h - 0.5))
    bad0[out] |= int(FitFlag.OUTSIDE_CUTOUT)
    usable = bad0 == 0
    f_start = np.full(len(x), np.nan)
    if f is not None:
        f_start[:] = f
    need = usable & ~(np.isfinite(f_start) & (f_start > 0))
    if need.any():
        fallback = np.nanmax(frame.noise.rms) * 1.0
        f_start[need] = linear_flux(psf, frame.data, x[need], y[need], half, fallback)
    return np.where(usable, x, np.nan), np.where(usable, y, np.nan), f_start, bad0, x, y
