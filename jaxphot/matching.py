"""Catalogue cross-matching on the sky (astropy SkyCoord) or on pixel coordinates.

:func:`crossmatch` finds, for every row of ``cat1``, its nearest neighbour in ``cat2``
(``SkyCoord.match_to_catalog_sky`` or a k-d tree on pixels) and keeps the pair when it is closer than
``max_sep``. With ``mode="best"`` it also requires the pair to be mutual (the nearest of the nearest is
the original row: the bi-directional best match), which removes many-to-one matches.
"""

from __future__ import annotations

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Table, hstack
from scipy.spatial import cKDTree

__all__ = ["crossmatch"]


def _coords(cat: Table, ra: str, dec: str) -> SkyCoord:
    for c in (ra, dec):
        if c not in cat.colnames:
            raise ValueError(f"catalog has no column {c!r} (columns: {cat.colnames})")
    r, d = cat[ra], cat[dec]
    r = r.quantity if getattr(r, "unit", None) is not None else np.asarray(r, float) * u.deg
    d = d.quantity if getattr(d, "unit", None) is not None else np.asarray(d, float) * u.deg
    return SkyCoord(r, d)


_PIXEL_PAIRS = (("x_fit", "y_fit"), ("xcentroid", "ycentroid"), ("x_init", "y_init"))


def _pixels(cat: Table, x: str, y: str, name: str) -> np.ndarray:
    """(N, 2) pixel positions from columns ``x, y``, else the first of the usual pairs present
    (jaxphot's ``x_fit, y_fit``, photutils' ``xcentroid, ycentroid``)."""
    pairs = ((x, y),) + _PIXEL_PAIRS
    for cx, cy in pairs:
        if cx in cat.colnames and cy in cat.colnames:
            return np.column_stack([np.asarray(cat[cx], float), np.asarray(cat[cy], float)])
    missing = x if x not in cat.colnames else y
    raise ValueError(f"{name} has no column {missing!r} (nor x_fit/y_fit or xcentroid/ycentroid) "
                     f"for pixel matching; columns: {', '.join(cat.colnames)}")


def crossmatch(
    cat1: Table,
    cat2: Table,
    max_sep=1 * u.arcsec,
    *,
    mode: str = "best",
    ra: str = "ra",
    dec: str = "dec",
    x: str = "x",
    y: str = "y",
    pixel: bool | None = None,
    keep_unmatched: bool = False,
    table_names: tuple[str, str] = ("1", "2"),
) -> Table:
    """Cross-match two catalogues and return the joined table with the separation.

    Parameters
    ----------
    cat1, cat2 : astropy.table.Table
        Catalogues with ``ra``/``dec`` columns (deg or Quantity) or ``x``/``y`` pixel columns.
    max_sep : Quantity (angle) or float
        Maximum separation: an angle for sky matching, pixels (float) for pixel matching.
    mode : {"best", "nearest"}
        ``"nearest"``: each cat1 row takes its nearest cat2 row (cat2 rows may repeat).
        ``"best"``: keep only mutual nearest neighbours (bi-directional best match).
    ra, dec, x, y : str
        Column names.
    pixel : bool, optional
        Match on pixel coordinates; default: True when max_sep is not an angle.
    keep_unmatched : bool
        If True every cat1 row comes back (cat2 columns masked where unmatched); otherwise only
        matched pairs.
    table_names : (str, str)
        Suffixes for clashing column names.

    Returns
    -------
    astropy.table.Table
        cat1 columns, cat2 columns, ``idx1``, ``idx2`` (row indices, −1 if none), ``sep`` (arcsec
        for sky, px for pixels) and ``matched``.
    """
    if mode not in ("best", "nearest"):
        raise ValueError(f"mode must be 'best' or 'nearest', got {mode!r}")
    is_angle = isinstance(max_sep, u.Quantity) and max_sep.unit.physical_type == "angle"
    if pixel is None:
        pixel = not is_angle
    n1, n2 = len(cat1), len(cat2)
    if n2 == 0 or n1 == 0:
        idx = np.full(n1, -1)
        sep = np.full(n1, np.inf)
        back = np.full(n2, -1)
    elif pixel:
        if is_angle:
            raise ValueError("pixel matching needs max_sep in pixels (a float), not an angle")
        p1 = _pixels(cat1, x, y, "cat1")
        p2 = _pixels(cat2, x, y, "cat2")
        sep, idx = cKDTree(p2).query(p1)
        _, back = cKDTree(p1).query(p2)
        lim = float(max_sep)
    else:
        if not is_angle:
            raise ValueError("sky matching needs max_sep as an angle Quantity, e.g. 1*u.arcsec")
        c1, c2 = _coords(cat1, ra, dec), _coords(cat2, ra, dec)
        idx, s2d, _ = c1.match_to_catalog_sky(c2)
        back, _, _ = c2.match_to_catalog_sky(c1)
        sep = s2d.to_value(u.arcsec)
        lim = max_sep.to_value(u.arcsec)
    idx = np.asarray(idx, dtype=int)
    ok = (idx >= 0) & (sep <= lim)
    if mode == "best" and n2 > 0:
        ok &= np.asarray(back)[np.clip(idx, 0, None)] == np.arange(n1)
    rows1 = np.arange(n1) if keep_unmatched else np.nonzero(ok)[0]
    t1 = cat1[rows1]
    i2 = np.where(ok[rows1], idx[rows1], -1)
    if n2 > 0:
        t2 = Table(cat2[np.clip(i2, 0, None)], masked=keep_unmatched)
        if keep_unmatched:
            for c in t2.colnames:
                t2[c].mask = i2 < 0
    else:
        t2 = Table()
    out = (
        hstack([t1, t2], table_names=list(table_names), join_type="exact")
        if len(t2.colnames)
        else t1
    )
    out["idx1"] = rows1
    out["idx2"] = i2
    out["sep"] = np.where(i2 >= 0, sep[rows1], np.nan)
    out["sep"].unit = None if pixel else u.arcsec
    out["matched"] = i2 >= 0
    return out
