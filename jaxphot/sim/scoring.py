"""Scoring a catalog against the truth of a simulated field: matches, completeness, pulls."""

from __future__ import annotations

import numpy as np
from astropy.stats import biweight_scale, mad_std
from astropy.table import Table

from ..image.render import EXCLUDED_FROM_MODEL

__all__ = ["match_to_truth", "score", "completeness_by_mag"]


def match_to_truth(catalog: Table, truth: Table, radius: float = 1.0, *, use=None):
    """One-to-one match of catalog rows to true stars within ``radius`` pixels.

    Greedy by distance: closest pairs first. ``use`` (bool per catalog row) restricts the
    catalog rows considered. Returns ``(cat_index, truth_index)`` arrays of the matches.
    """
    from scipy.spatial import cKDTree

    cx = np.asarray(catalog["x_fit"], float)
    cy = np.asarray(catalog["y_fit"], float)
    ok = np.isfinite(cx) & np.isfinite(cy)
    if use is not None:
        ok &= np.asarray(use, bool)
    ci = np.nonzero(ok)[0]
    if len(ci) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    tree = cKDTree(np.c_[truth["x"], truth["y"]])
    pairs = tree.query_ball_point(np.c_[cx[ci], cy[ci]], radius)
    a = np.repeat(ci, [len(p) for p in pairs])
    b = np.concatenate([np.asarray(p, int) for p in pairs]) if len(a) else np.zeros(0, int)
    if len(a) == 0:
        return a, b
    d = np.hypot(cx[a] - truth["x"][b], cy[a] - truth["y"][b])
    order = np.argsort(d, kind="stable")
    a, b = a[order], b[order]
    # Greedy one-to-one: keep the first occurrence of each catalog row and each true star.
    used_a = np.zeros(len(catalog), bool)
    used_b = np.zeros(len(truth), bool)
    keep = np.zeros(len(a), bool)
    # A vectorised pass resolves most pairs; the loop only runs over conflicts.
    _, first_a = np.unique(a, return_index=True)
    cand = np.zeros(len(a), bool)
    cand[first_a] = True
    _, first_b = np.unique(b[cand], return_index=True)
    simple = np.nonzero(cand)[0][first_b]
    for i in simple:
        keep[i] = True
        used_a[a[i]] = used_b[b[i]] = True
    for i in np.nonzero(~keep)[0]:
        if not used_a[a[i]] and not used_b[b[i]]:
            keep[i] = True
            used_a[a[i]] = used_b[b[i]] = True
    return a[keep], b[keep]


def _robust_std(v, estimator: str = "mad"):
    """Robust standard deviation of the finite values: 1.4826 MAD, or the biweight midvariance
    (``"biweight"``: 87 % efficient for normal data against 37 %, a 1.5x smaller sampling error)."""
    v = np.asarray(v, float)
    v = v[np.isfinite(v)]
    if not len(v):
        return float("nan")
    return float(mad_std(v) if estimator == "mad" else biweight_scale(v))


def score(
    catalog: Table,
    truth: Table,
    *,
    radius: float = 1.0,
    snr_cut: float = 10.0,
    isolation: float | None = None,
    bad_flags: int | None = None,
) -> dict:
    """Completeness, false detections and flux pulls of a catalog against the truth.

    Parameters
    ----------
    catalog : Table
        Needs ``x_fit, y_fit, flux_fit, flux_err, flags``.
    truth : Table
        ``x, y, flux, snr``.
    radius : float
        Match radius in pixels.
    snr_cut : float
        Completeness and pulls are computed for true stars with ``snr >= snr_cut``.
    isolation : float, optional
        Distance (pixels) to the nearest true star above which a star counts as isolated
        (default 2.5 x the catalog's FWHM from ``meta``, else 7.5).
    bad_flags : int, optional
        Rows with any of these flag bits are not counted as detections (default: MERGED,
        FADED and failed fits).

    Returns
    -------
    dict
        ``n_true_bright, n_found_bright, completeness_bright, n_rows, n_good, n_spurious,
        spurious_fraction, pull_std_isolated, pull_std_blended`` (robust, 1.4826 MAD) with
        their sampling errors ``pull_std_isolated_err, pull_std_blended_err``, the same
        from the biweight midvariance ``pull_biweight_isolated, pull_biweight_blended``,
        ``pull_median, n_isolated, n_blended, pos_rms``.
    """
    from scipy.spatial import cKDTree

    bad = EXCLUDED_FROM_MODEL if bad_flags is None else int(bad_flags)
    good = (np.asarray(catalog["flags"], np.int64) & bad) == 0
    ci, ti = match_to_truth(catalog, truth, radius, use=good)
    bright = np.asarray(truth["snr"]) >= snr_cut
    found = np.zeros(len(truth), bool)
    found[ti] = True
    fwhm = float(catalog.meta.get("fwhm", 3.0))
    iso = 2.5 * fwhm if isolation is None else float(isolation)
    tree = cKDTree(np.c_[truth["x"], truth["y"]])
    dnn = tree.query(np.c_[truth["x"], truth["y"]], k=2)[0][:, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        pull = (np.asarray(catalog["flux_fit"])[ci] - np.asarray(truth["flux"])[ti]) / np.asarray(
            catalog["flux_err"]
        )[ci]
    sel = bright[ti]
    isolated = dnn[ti] > iso
    n_good = int(good.sum())
    n_spur = n_good - len(ci)
    dx = np.asarray(catalog["x_fit"])[ci] - np.asarray(truth["x"])[ti]
    dy = np.asarray(catalog["y_fit"])[ci] - np.asarray(truth["y"])[ti]
    p_iso, p_bl = pull[sel & isolated], pull[sel & ~isolated]
    s_iso, s_bl = _robust_std(p_iso), _robust_std(p_bl)
    return {
        "n_true_bright": int(bright.sum()),
        "n_found_bright": int((found & bright).sum()),
        "completeness_bright": float((found & bright).sum() / max(bright.sum(), 1)),
        "n_true": len(truth),
        "n_found": int(found.sum()),
        "n_rows": len(catalog),
        "n_good": n_good,
        "n_spurious": int(n_spur),
        "spurious_fraction": float(n_spur / max(n_good, 1)),
        "pull_median": float(np.nanmedian(pull[sel])) if sel.any() else float("nan"),
        "pull_std_isolated": s_iso,
        "pull_std_blended": s_bl,
        # Sampling error of a MAD-based sigma from n normal values: 1.166 sigma / sqrt(n).
        "pull_std_isolated_err": 1.166 * s_iso / np.sqrt(max(len(p_iso), 1)),
        "pull_std_blended_err": 1.166 * s_bl / np.sqrt(max(len(p_bl), 1)),
        "pull_biweight_isolated": _robust_std(p_iso, "biweight"),
        "pull_biweight_blended": _robust_std(p_bl, "biweight"),
        "n_isolated": len(p_iso),
        "n_blended": len(p_bl),
        "pos_rms_bright": float(np.sqrt(np.nanmean(dx[sel] ** 2 + dy[sel] ** 2) / 2))
        if sel.any()
        else float("nan"),
    }


def completeness_by_mag(
    catalog: Table, truth: Table, bins, *, radius: float = 1.0, use=None
) -> Table:
    """Completeness and false detections per magnitude bin (true mag; catalog mag for false)."""
    ci, ti = match_to_truth(catalog, truth, radius, use=use)
    found = np.zeros(len(truth), bool)
    found[ti] = True
    use = np.ones(len(catalog), bool) if use is None else np.asarray(use, bool)
    matched = np.zeros(len(catalog), bool)
    matched[ci] = True
    spur = use & ~matched
    cmag = (
        np.asarray(catalog["mag"], float)
        if "mag" in catalog.colnames
        else -2.5 * np.log10(np.asarray(catalog["flux_fit"], float))
    )
    t = Table()
    t["mag_lo"] = bins[:-1]
    t["mag_hi"] = bins[1:]
    tm = np.asarray(truth["mag"])
    idx = np.digitize(tm, bins) - 1
    sidx = np.digitize(cmag, bins) - 1
    nb = len(bins) - 1
    t["n_true"] = np.bincount(idx[(idx >= 0) & (idx < nb)], minlength=nb)
    t["n_found"] = np.bincount(idx[found & (idx >= 0) & (idx < nb)], minlength=nb)
    with np.errstate(invalid="ignore", divide="ignore"):
        t["completeness"] = t["n_found"] / t["n_true"]
    t["n_false"] = np.bincount(sidx[spur & (sidx >= 0) & (sidx < nb)], minlength=nb)
    return t


