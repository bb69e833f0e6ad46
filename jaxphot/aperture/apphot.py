"""Aperture photometry for people: circular apertures with annulus sky, errors and magnitudes.

:func:`aperture_photometry` returns an astropy Table; :func:`aperture_light_curves` turns a
(T, H, W) cube into (T, N) light curves. Flags (:class:`~jaxphot.aperture.ApertureFlag`) are set
per source and per radius; no bad row raises for the batch.
"""

from __future__ import annotations

import numpy as np
from astropy.table import Table

from ..constants import POGSON
from .sums import SKY_METHODS, ApertureFlag, aperture_sums, as_image, as_positions, radius_array

__all__ = ["aperture_photometry", "aperture_light_curves"]


def _flags_and_values(core: dict):
    """Flags (N, R) int32 and the (N, R) bool map of apertures with no value (no pixel left)."""
    tol = 1e-12
    geom = core["geom_area"]
    off = core["off_area"] > tol
    whole_off = core["off_area"] >= geom - tol
    badpix = core["bad_area"] > tol
    area = core["area"]
    none_left = area <= tol
    flags = np.zeros(geom.shape, dtype=np.int32)
    flags |= np.where(off & ~whole_off, int(ApertureFlag.TRUNCATED), 0)
    flags |= np.where(whole_off | ~core["finite_position"][:, None], int(ApertureFlag.OFF_IMAGE), 0)
    flags |= np.where(badpix, int(ApertureFlag.HAS_MASKED), 0)
    flags |= np.where(badpix & none_left & ~whole_off, int(ApertureFlag.ALL_MASKED), 0)
    invalid = none_left | ~core["finite_position"][:, None]
    return flags, invalid


def aperture_photometry(
    data,
    positions,
    r,
    *,
    r_in=None,
    r_out=None,
    method: str = "exact",
    subpixels: int = 5,
    error=None,
    mask=None,
    gain: float | None = None,
    read_noise: float | None = None,
    sky: str = "median",
    sky_sigma: float = 3.0,
    sky_maxiters: int = 5,
    zeropoint: float = 0.0,
) -> Table:
    """Circular aperture photometry with local annulus sky, CCD-equation errors and magnitudes.

    Parameters
    ----------
    data : array_like, shape (H, W) or (T, H, W)
        Image in counts (ADU) or a cube of T images (e.g. TESS cut-outs); the cube gives light
        curves in one batched call.
    positions : array_like, shape (N, 2)
        ``(x, y)`` 0-based pixel coordinates.
    r : float, array (N,), list of R radii, or array (N, R)
        Aperture radius/radii in pixels.
    r_in, r_out : float or array (N,), optional
        Sky annulus radii in pixels. Without them the sky is 0 (data assumed sky-subtracted).
    method : {"exact", "center", "subpixel"}
        Pixel overlap: exact area, pixel centre inside, or n×n sub-pixel sampling (``subpixels``).
    subpixels : int
        n for ``method="subpixel"`` (Source Extractor uses 5).
    error : array_like, optional
        1-sigma error per pixel (counts), same shape as data (or (H, W) for a cube), or a scalar.
        Its square is summed with the aperture weights: ``var = Σ w σ²``.
    mask : array_like of bool (H, W), optional
        True marks bad pixels; they and non-finite pixels are excluded (flag ``HAS_MASKED``).
    gain : float, optional
        e⁻/ADU. With ``error`` it adds the source Poisson term ``flux/gain``; without ``error`` the
        per-pixel variance is the CCD equation ``max(data, 0)/gain + (read_noise/gain)²`` (data must
        then be un-sky-subtracted ADU).
    read_noise : float, optional
        Read noise in e⁻ (used only without ``error``).
    sky : {"median", "mean", "sigma_clip", "mode", "mmm", "biweight"}
        Annulus sky estimator. ``mean`` is the exact-overlap-weighted annulus mean; the others use the
        pixels whose centres lie in ``r_in <= d < r_out``. ``sigma_clip`` is the sigma-clipped mean,
        ``mode`` is 3·median − 2·mean of the sigma-clipped sample, ``mmm`` is DAOPHOT-MMM-like.
    sky_sigma, sky_maxiters : float, int
        Clipping parameters of the robust sky estimators.
    zeropoint : float
        Added to the instrumental magnitudes ``-2.5 log10(flux)``.

    Returns
    -------
    astropy.table.Table
        One row per input position, in input order: ``id, x, y, aperture_sum, aperture_sum_err, area,
        sky, sky_err, flux, flux_err, mag, mag_err, flags`` (+ ``n_sky``, ``sky_std``). ``sky`` is per
        pixel; ``sky_err = sky_std/sqrt(n_sky)``; ``flux = aperture_sum - area·sky``;
        ``flux_err² = aperture_sum_err² + area²·sky_err²`` (the N_A²σ_sky²/N_B term of the CCD
        equation); ``mag_err = 2.5/ln10 · flux_err/flux``. With R radii, the aperture columns are
        (N, R); with a cube of T images, (N, T) or (N, R, T).
    """
    data = as_image("data", data)
    cube = data.ndim == 3
    pos = as_positions(positions)
    N = pos.shape[0]
    if sky not in SKY_METHODS:
        raise ValueError(f"sky must be one of {SKY_METHODS}, got {sky!r}")
    if (r_in is None) != (r_out is None):
        raise ValueError("r_in and r_out must be given together")
    if gain is not None and not gain > 0:
        raise ValueError(f"gain must be > 0, got {gain}")
    multi = isinstance(r, list | tuple) or np.ndim(r) == 2
    radii = radius_array("r", r, N)
    variance = _pixel_variance(data, error, gain, read_noise)
    annulus = None if r_in is None else (r_in, r_out)
    core = aperture_sums(
        data, pos, "circle", (radii,), method=method, subpixels=subpixels, mask=mask,
        variance=variance, annulus=annulus, sky=sky, sky_sigma=sky_sigma, sky_maxiters=sky_maxiters,
    )  # fmt: skip
    flags, invalid = _flags_and_values(core)
    ex = (lambda a: a[..., None]) if cube else (lambda a: a)  # (N, R) -> like the sums
    asum = np.where(ex(invalid), np.nan, core["sum"])  # (N, R) or (N, R, T)
    area_v = np.where(invalid, np.nan, core["area"])
    sum_err = _sum_error(core, invalid, asum, ex, error, gain, variance)
    if annulus is not None:
        s = _annulus_sky(core, cube, flags)
        flux = asum - ex(area_v) * s["sky_b"]
        flux_err = np.sqrt(sum_err**2 + (ex(area_v) * s["skyerr_b"]) ** 2)
    else:
        s = {"sky": np.zeros((N,) + ((data.shape[0],) if cube else ()))}
        s.update(sky_err=np.zeros_like(s["sky"]), n_sky=np.zeros(N, dtype=int),
                 sky_std=np.zeros_like(s["sky"]))  # fmt: skip
        flux = asum
        flux_err = sum_err
    with np.errstate(invalid="ignore", divide="ignore"):
        mag = np.where(flux > 0, zeropoint - 2.5 * np.log10(np.where(flux > 0, flux, 1.0)), np.nan)
        mag_err = np.where(flux > 0, POGSON * flux_err / np.abs(flux), np.nan)
    nonpos = ~(flux > 0) & np.isfinite(flux)
    flags |= np.where(
        nonpos if not cube else np.any(nonpos, axis=-1), int(ApertureFlag.NONPOSITIVE), 0
    )
    cols = dict(aperture_sum=asum, aperture_sum_err=sum_err, area=area_v, flux=flux,
                flux_err=flux_err, mag=mag, mag_err=mag_err)  # fmt: skip
    t = _table(pos, radii if multi else None, cols, flags, s)
    t.meta["method"] = method
    t.meta["sky"] = sky if annulus is not None else "none"
    if cube:
        t.meta["time_axis"] = "last"
    return t


def _table(pos, radii, cols: dict, flags, sky: dict) -> Table:
    """The result table: one row per position; ``radii`` (N, R) for several apertures, else None.

    ``cols`` holds the (N, R[, T]) aperture columns, ``sky`` the (N[, T]) sky columns.
    """
    multi = radii is not None
    shape = (lambda a: a) if multi else (lambda a: a[:, 0])
    t = Table()
    t["id"] = np.arange(1, len(pos) + 1)
    t["x"] = pos[:, 0]
    t["y"] = pos[:, 1]
    if multi:
        t["r"] = radii
    for name in ("aperture_sum", "aperture_sum_err", "area"):
        t[name] = shape(cols[name])
    t["sky"] = sky["sky"]
    t["sky_err"] = sky["sky_err"]
    for name in ("flux", "flux_err", "mag", "mag_err"):
        t[name] = shape(cols[name])
    t["flags"] = shape(flags) if multi else np.bitwise_or.reduce(flags, axis=1)
    t["n_sky"] = sky["n_sky"]
    t["sky_std"] = sky["sky_std"]
    return t


def _pixel_variance(data, error, gain, read_noise):
    """Per-pixel variance (counts², shape of ``data``) to sum in the apertures, or None.

    From an ``error`` image, else from the CCD equation when ``gain`` is given; a scalar error
    needs none (see :func:`_sum_error`).
    """
    if error is not None:
        e = np.asarray(error, dtype=float)
        if e.ndim not in (0, 2, 3):
            raise ValueError(f"error must be a scalar or an image; got shape {e.shape}")
        if e.ndim > 0 and e.shape[-2:] != data.shape[-2:]:
            raise ValueError(f"error must have the shape of data {data.shape}; got {e.shape}")
        with np.errstate(invalid="ignore"):
            n_neg = int(np.count_nonzero(e < 0))
        if n_neg:  # a sign error: sigma**2 would hide it
            raise ValueError(f"error must be a 1-sigma value or map >= 0 (counts); it is negative "
                             f"on {n_neg} pixel(s)")
        return np.broadcast_to(e**2, data.shape) if e.ndim > 0 else None
    if read_noise is not None and not float(read_noise) >= 0:
        raise ValueError(f"read_noise must be >= 0 electrons, got {read_noise}")
    if gain is not None:
        rn = 0.0 if read_noise is None else float(read_noise)
        return np.maximum(np.asarray(data, dtype=float), 0.0) / gain + (rn / gain) ** 2
    if read_noise is not None:
        raise ValueError("read_noise needs gain (e-/ADU) to convert to counts")
    return None


def _sum_error(core, invalid, asum, ex, error, gain, variance):
    """1-sigma error of the aperture sums (shape of ``asum``; NaN without any noise model)."""
    scalar_err = error is not None and np.ndim(error) == 0
    if variance is None and not scalar_err:
        return np.full_like(asum, np.nan)
    # a scalar error needs no per-pixel gather: Σ w σ² = σ² · area
    var = core["sum_var"] if not scalar_err else float(error) ** 2 * ex(core["area"])
    if error is not None and gain is not None:
        var = var + np.maximum(asum, 0.0) / gain  # source Poisson term on top of the error map
    return np.sqrt(np.where(ex(invalid), np.nan, var))


def _annulus_sky(core, cube: bool, flags) -> dict:
    """Annulus sky per pixel and its error ((N,) or (N, T)); sets the sky flags in ``flags``.

    Returns ``sky, sky_err, n_sky, sky_std`` and ``sky_b, skyerr_b``: sky and error broadcast
    against the (N, R[, T]) aperture sums.
    """
    skyv = core["sky"]
    n_sky = core["n_sky"]
    sky_std = core["sky_std"]
    sky_empty = (n_sky == 0) if not cube else np.all(n_sky == 0, axis=-1)
    flags |= np.where(sky_empty, int(ApertureFlag.SKY_EMPTY), 0)[:, None]
    sky_trunc = (core["sky_off_n"] > 0) & ~sky_empty
    flags |= np.where(sky_trunc, int(ApertureFlag.SKY_TRUNCATED), 0)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        sky_err = sky_std / np.sqrt(n_sky)
    skyv = np.where(n_sky > 0, skyv, np.nan)
    sky_err = np.where(n_sky > 0, sky_err, np.nan)
    sky_b = skyv[:, None] if not cube else skyv[:, None, :]
    skyerr_b = sky_err[:, None] if not cube else sky_err[:, None, :]
    return dict(sky=skyv, sky_err=sky_err, n_sky=n_sky, sky_std=sky_std, sky_b=sky_b,
                skyerr_b=skyerr_b)  # fmt: skip


def aperture_light_curves(cube, positions, r, **kwargs) -> dict[str, np.ndarray]:
    """Light curves from a (T, H, W) cube in one batched call.

    Parameters
    ----------
    cube : array_like, shape (T, H, W)
        Image stack (e.g. TESS FFI cut-outs or target-pixel ``FLUX``).
    positions : array_like, shape (N, 2)
        ``(x, y)`` 0-based pixel coordinates (fixed over time).
    r : float or array (N,)
        Aperture radius in pixels.
    **kwargs
        As for :func:`aperture_photometry`.

    Returns
    -------
    dict
        ``flux, flux_err, sky, aperture_sum, mag`` as (T, N) arrays and ``flags`` (N,).
    """
    c = np.asarray(cube)
    if c.ndim != 3:
        raise ValueError(f"cube must have shape (T, H, W); got {c.shape}")
    t = aperture_photometry(c, positions, r, **kwargs)
    out = {k: np.asarray(t[k]).T for k in ("flux", "flux_err", "sky", "aperture_sum", "mag")}
    out["flags"] = np.asarray(t["flags"])
    return out
