"""The catalogue of :func:`jaxphot.photometry`: one row per star, in the order found."""

from __future__ import annotations

import numpy as np
from astropy.table import Table

from ..constants import POGSON
from ..io import pixel_to_radec
from .cutouts import values_at
from .fitting import FIT_FLOAT_COLUMNS
from .state import Stars

__all__ = ["build_catalog"]

# Columns of the fit that get their own place in the table; others (CRLBs...) pass through.
_BASE_COLUMNS = {*FIT_FLOAT_COLUMNS, "dof", "n_iter", "flags"}


def _column(fitted: dict, name: str, n: int, dtype=float) -> np.ndarray:
    """A fit column, or (n,) NaN (float) / 0 (int) when no star was ever fitted."""
    if name in fitted:
        return fitted[name]
    return np.full(n, np.nan) if dtype is float else np.zeros(n, dtype)


def build_catalog(stars: Stars, level: np.ndarray, zeropoint: float, wcs=None) -> Table:
    """The output table of :func:`jaxphot.photometry`.

    Parameters
    ----------
    stars : Stars
        Every star, with its last fit.
    level : (H, W) array
        Background level map (image units), added to the fitted local offset for ``bkg``.
    zeropoint : float
        ``mag = zeropoint - 2.5 log10(flux_fit)``.
    wcs : astropy.wcs.WCS, optional
        Adds ``ra, dec`` (ICRS, degrees).

    Returns
    -------
    Table
        Columns ``id, group_id, iter_detected, x_init, y_init, flux_init, x_fit, y_fit,
        flux_fit, x_err, y_err, flux_err``, the fitter's extra columns, ``bkg, bkg_x, bkg_y,
        chi2, dof, n_iter, flags, mag, mag_err`` (and ``ra, dec``).
    """
    n, fitted = len(stars), stars.fitted
    t = Table()
    t["id"] = np.arange(1, n + 1, dtype=np.int64)
    t["group_id"] = stars.group_id
    t["iter_detected"] = stars.iter_detected
    t["x_init"], t["y_init"], t["flux_init"] = stars.x_init, stars.y_init, stars.flux_init
    for name in ("x_fit", "y_fit", "flux_fit", "x_err", "y_err", "flux_err"):
        t[name] = _column(fitted, name, n)
    for name in sorted(set(fitted) - _BASE_COLUMNS):  # CRLB etc. from the fitter, passed through
        t[name] = fitted[name]
    # bkg: the map at the star plus the local offset fitted in its cutout.
    t["bkg"] = values_at(level, t["x_fit"], t["y_fit"]) + _column(fitted, "bkg", n)
    for name in ("bkg_x", "bkg_y", "chi2"):
        t[name] = _column(fitted, name, n)
    t["dof"] = _column(fitted, "dof", n, np.int64).astype(np.int64)
    t["n_iter"] = _column(fitted, "n_iter", n, np.int64).astype(np.int64)
    t["flags"] = stars.flags.astype(np.int32)
    with np.errstate(invalid="ignore", divide="ignore"):
        fl = np.asarray(t["flux_fit"], float)
        t["mag"] = np.where(fl > 0, zeropoint - 2.5 * np.log10(np.where(fl > 0, fl, 1.0)), np.nan)
        t["mag_err"] = np.where(fl > 0, POGSON * np.asarray(t["flux_err"]) / fl, np.nan)
    for name in ("x_init", "y_init", "x_fit", "y_fit", "x_err", "y_err"):
        t[name].unit = "pix"
    radec = None if wcs is None else pixel_to_radec(wcs, np.asarray(t["x_fit"]), np.asarray(t["y_fit"]))
    if radec is not None:
        t["ra"], t["dec"] = radec
        t["ra"].unit = t["dec"].unit = "deg"
    return t
