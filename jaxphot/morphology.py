"""Source morphology: centroids, second moments, ellipse parameters, Kron and flux radii.

Moments come from a segmentation map (all labels at once with ``np.bincount`` — no loop over sources)
or from a stack of cutouts. Conventions follow Source Extractor: intensity-weighted moments of the
(background-subtracted) pixels of each segment, ``x2 = Σ I x² / Σ I − x̄²`` etc., with the
"singular" fix of adding 1/12 px² to ``x2`` and ``y2`` when ``x2·y2 − xy² < 1/144`` (a one-pixel-wide
object), then

    a², b² = (x2 + y2)/2 ± sqrt(((x2 − y2)/2)² + xy²),   θ = ½ atan2(2 xy, x2 − y2)

(θ in radians, counter-clockwise from +x). Pixel ``data[j, i]`` is centred at ``(x, y) = (i, j)``.
"""

from __future__ import annotations

import numpy as np
from astropy.table import Table

__all__ = [
    "ellipse_from_moments",
    "flux_radius",
    "kron_radius",
    "moments_from_cutouts",
    "segment_properties",
]


def ellipse_from_moments(x2, y2, xy) -> dict[str, np.ndarray]:
    """Ellipse parameters from second central moments (px²).

    Returns
    -------
    dict
        ``a, b`` (px, rms along the major/minor axes), ``theta`` (rad), ``ellipticity = 1 − b/a``,
        ``elongation = a/b`` and the ellipse coefficients ``cxx, cyy, cxy`` (px⁻²) such that
        ``cxx x² + cyy y² + cxy x y = 1`` on the a×b ellipse.
    """
    x2, y2, xy = (np.asarray(t, dtype=float) for t in (x2, y2, xy))
    half_sum = 0.5 * (x2 + y2)
    root = np.sqrt((0.5 * (x2 - y2)) ** 2 + xy**2)
    a = np.sqrt(np.maximum(half_sum + root, 0.0))
    b = np.sqrt(np.maximum(half_sum - root, 0.0))
    theta = 0.5 * np.arctan2(2.0 * xy, x2 - y2)
    det = x2 * y2 - xy**2
    with np.errstate(divide="ignore", invalid="ignore"):
        cxx = y2 / det
        cyy = x2 / det
        cxy = -2.0 * xy / det
        ell = 1.0 - b / a
        elong = a / b
    return {
        "a": a, "b": b, "theta": theta, "ellipticity": ell, "elongation": elong,
        "cxx": cxx, "cyy": cyy, "cxy": cxy,
    }  # fmt: skip


def _finish(sum_i, sx, sy, sxx, syy, sxy, npix, singular_fix=True) -> dict[str, np.ndarray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        xc = sx / sum_i
        yc = sy / sum_i
        x2 = sxx / sum_i - xc**2
        y2 = syy / sum_i - yc**2
        xy = sxy / sum_i - xc * yc
    if singular_fix:
        sing = x2 * y2 - xy**2 < 1.0 / 144.0
        x2 = np.where(sing, x2 + 1.0 / 12.0, x2)
        y2 = np.where(sing, y2 + 1.0 / 12.0, y2)
    out = {"x": xc, "y": yc, "x2": x2, "y2": y2, "xy": xy, "flux": sum_i, "area": npix}
    out.update(ellipse_from_moments(x2, y2, xy))
    out["equivalent_radius"] = np.sqrt(npix / np.pi)
    return out


def segment_properties(
    data,
    segmap,
    *,
    labels=None,
    background=None,
    error=None,
    mask=None,
    wcs=None,
    singular_fix: bool = True,
    kron_params=(2.5, 1.4),
    kron_photometry=None,
) -> Table:
    """Catalogue of every segment: centroid, moments, ellipse, bbox, extrema, fluxes, Kron radius.

    Parameters
    ----------
    data : array_like (H, W)
        Image (counts); background-subtracted unless ``background`` is given.
    segmap : array_like of int (H, W)
        Segmentation map; 0 is background, label k > 0 marks source k.
    labels : array_like of int, optional
        Labels to report (default: all labels present, ascending).
    background : float or array_like (H, W), optional
        Background subtracted from ``data`` before anything is measured.
    error : float or array_like (H, W), optional
        1-sigma error per pixel (counts) for ``segment_flux_err`` (and ``kron_flux_err``).
    mask : array_like of bool (H, W), optional
        True = exclude the pixel (non-finite pixels are always excluded).
    wcs : astropy.wcs.WCS, optional
        Adds ``sky_centroid`` (SkyCoord) and ``ra, dec`` (deg) via ``wcs.pixel_to_world``.
    singular_fix : bool
        Apply Source Extractor's 1/12 px² fix for one-pixel-wide segments.
    kron_params : (k, r_min) or (k, r_min, r_circ)
        Kron aperture parameters, photutils' semantics (see :func:`jaxphot.aperture.kron_aperture`).
    kron_photometry : callable, optional
        :func:`jaxphot.kron_photometry` (or a function with its signature). With it the table gains
        ``kron_flux, kron_flux_err`` and the aperture ``kron_a, kron_b, kron_theta``. This module is
        below the aperture layer, so the aperture sums are passed in rather than imported.

    Returns
    -------
    astropy.table.Table
        ``label, x, y, flux (= segment_flux), segment_flux, segment_flux_err, area (px²), x2, y2, xy
        (px²), a, b (px), theta (rad), ellipticity, elongation, cxx, cyy, cxy, equivalent_radius
        (px), bbox_xmin, bbox_xmax, bbox_ymin, bbox_ymax`` (inclusive pixel indices),
        ``min_value, minval_xindex, minval_yindex, max_value, maxval_xindex, maxval_yindex``,
        ``kron_radius`` (unscaled, in units of a and b, over 6 a × 6 b), then the Kron and sky columns
        above when asked for. Moments are taken about each segment's first pixel (float64) to avoid
        cancellation.
    """
    d = np.asarray(data, dtype=float)
    seg = np.asarray(segmap)
    if d.ndim != 2:
        raise ValueError(f"data must be a 2-D image; got shape {d.shape}")
    if seg.shape != d.shape:
        raise ValueError(f"segmap must have the shape of data {d.shape}; got {seg.shape}")
    if not np.issubdtype(seg.dtype, np.integer):
        raise ValueError("segmap must be an integer label image")
    d = d - _image_or_scalar("background", background, d.shape, 0.0)
    bad = ~np.isfinite(d)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != d.shape:
            raise ValueError(f"mask must have the shape of data {d.shape}; got {m.shape}")
        bad |= m
    sel = (seg > 0) & ~bad
    lab = seg[sel].astype(np.int64)
    val = d[sel]
    jj, ii = np.nonzero(sel)
    nl = int(seg.max(initial=0)) + 1
    # shift coordinates by each segment's first pixel to avoid cancellation in x2 = <x²> − <x>²
    first = np.full(nl, -1, dtype=np.int64)
    order = np.arange(lab.size)[::-1]
    first[lab[order]] = order
    x0 = ii[first[lab]].astype(float)
    y0 = jj[first[lab]].astype(float)
    dx = ii - x0
    dy = jj - y0

    def bc(w):
        return np.bincount(lab, weights=w, minlength=nl)

    s = bc(val)
    props = _finish(
        s, bc(val * dx), bc(val * dy), bc(val * dx * dx), bc(val * dy * dy), bc(val * dx * dy),
        np.bincount(lab, minlength=nl).astype(float), singular_fix,
    )  # fmt: skip
    ox = np.zeros(nl)
    oy = np.zeros(nl)
    has = first >= 0
    ox[has] = ii[first[has]]
    oy[has] = jj[first[has]]
    props["x"] = props["x"] + ox
    props["y"] = props["y"] + oy
    props.update(_bbox_and_extrema(lab, ii, jj, val, nl))
    if error is not None:
        err = _image_or_scalar("error", error, d.shape, None)
        props["segment_flux_err"] = np.sqrt(bc(err[sel] ** 2))
    else:
        props["segment_flux_err"] = np.full(nl, np.nan)
    if labels is None:
        labels = np.nonzero(np.bincount(lab, minlength=nl))[0]
        labels = labels[labels > 0]
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 1 or labels.max() >= nl):
        raise ValueError(f"labels must be in 1..{nl - 1} (the labels of segmap)")
    t = Table()
    t["label"] = labels
    for k in ("x", "y", "flux"):
        t[k] = props[k][labels]
    t["segment_flux"] = props["flux"][labels]
    t["segment_flux_err"] = props["segment_flux_err"][labels]
    for k in ("area", "x2", "y2", "xy", "a", "b", "theta", "ellipticity"):
        t[k] = props[k][labels]
    for k in ("elongation", "cxx", "cyy", "cxy", "equivalent_radius"):
        t[k] = props[k][labels]
    for k in ("bbox_xmin", "bbox_xmax", "bbox_ymin", "bbox_ymax", "min_value", "minval_xindex",
              "minval_yindex", "max_value", "maxval_xindex", "maxval_yindex"):  # fmt: skip
        t[k] = props[k][labels]
    pos = np.c_[t["x"], t["y"]]
    shape_ok = np.isfinite(pos).all(1) & (np.asarray(t["a"]) > 0) & (np.asarray(t["b"]) > 0)
    kr = np.full(len(t), np.nan)
    if shape_ok.any():
        kr[shape_ok] = kron_radius(d, pos[shape_ok], np.asarray(t["a"])[shape_ok],
                                   np.asarray(t["b"])[shape_ok], np.asarray(t["theta"])[shape_ok],
                                   r_max=6.0, mask=bad)  # fmt: skip
    t["kron_radius"] = kr
    if kron_photometry is not None:
        kp = kron_photometry(d, pos, t["a"], t["b"], t["theta"], kr, kron_params=kron_params,
                             error=error, mask=bad)  # fmt: skip
        for k in ("kron_flux", "kron_flux_err", "kron_a", "kron_b", "kron_theta"):
            t[k] = kp[k]
    if wcs is not None:
        sky = wcs.pixel_to_world(np.asarray(t["x"]), np.asarray(t["y"]))
        t["sky_centroid"] = sky
        t["ra"] = sky.spherical.lon.deg
        t["dec"] = sky.spherical.lat.deg
    return t


def _image_or_scalar(name: str, value, shape, default):
    """``value`` as a float array broadcast to ``shape`` (``default`` when None)."""
    if value is None:
        return default
    v = np.asarray(value, dtype=float)
    if v.ndim not in (0, 2) or (v.ndim == 2 and v.shape != shape):
        raise ValueError(f"{name} must be a scalar or an image of shape {shape}; got shape {v.shape}")
    return np.broadcast_to(v, shape)


def _bbox_and_extrema(lab, ii, jj, val, nl: int) -> dict[str, np.ndarray]:
    """Per-label bounding box (inclusive indices) and min/max value with their pixel (no loops)."""
    big = np.iinfo(np.int64).max
    out = {}
    for name, idx in (("x", ii), ("y", jj)):
        lo = np.full(nl, big, dtype=np.int64)
        hi = np.full(nl, -1, dtype=np.int64)
        np.minimum.at(lo, lab, idx)
        np.maximum.at(hi, lab, idx)
        out[f"bbox_{name}min"], out[f"bbox_{name}max"] = lo, hi
    # sort by (label, value): each label's first entry is its minimum, its last its maximum
    order = np.lexsort((val, lab))
    ls = lab[order]
    start = np.searchsorted(ls, np.arange(nl), side="left")
    stop = np.searchsorted(ls, np.arange(nl), side="right") - 1
    present = stop >= start
    for name, at in (("min", start), ("max", stop)):
        k = order[np.clip(at, 0, max(lab.size - 1, 0))] if lab.size else np.zeros(nl, np.int64)
        out[f"{name}_value"] = np.where(present, val[k] if lab.size else np.nan, np.nan)
        out[f"{name}val_xindex"] = np.where(present, ii[k] if lab.size else -1, -1)
        out[f"{name}val_yindex"] = np.where(present, jj[k] if lab.size else -1, -1)
    return out


def moments_from_cutouts(cutouts, mask=None, origin=(0.0, 0.0)) -> dict[str, np.ndarray]:
    """Centroid and second moments from a stack of cutouts (N, h, w).

    Parameters
    ----------
    cutouts : array_like (N, h, w)
        Background-subtracted cutouts.
    mask : array_like of bool (N, h, w), optional
        True = exclude pixel.
    origin : (x0, y0) or array (N, 2)
        Image coordinates of each cutout's pixel [0, 0].

    Returns
    -------
    dict
        As :func:`segment_properties` (without ``label``), arrays of shape (N,).
    """
    c = np.asarray(cutouts, dtype=float)
    if c.ndim != 3:
        raise ValueError(f"cutouts must have shape (N, h, w); got {c.shape}")
    ok = np.isfinite(c) if mask is None else np.isfinite(c) & ~np.asarray(mask, bool)
    v = np.where(ok, c, 0.0)
    jj, ii = np.mgrid[0 : c.shape[1], 0 : c.shape[2]].astype(float)
    s = v.sum((1, 2))
    props = _finish(
        s, (v * ii).sum((1, 2)), (v * jj).sum((1, 2)), (v * ii * ii).sum((1, 2)),
        (v * jj * jj).sum((1, 2)), (v * ii * jj).sum((1, 2)), ok.sum((1, 2)).astype(float),
    )  # fmt: skip
    o = np.broadcast_to(np.asarray(origin, dtype=float), (c.shape[0], 2))
    props["x"] = props["x"] + o[:, 0]
    props["y"] = props["y"] + o[:, 1]
    return props


def kron_radius(data, positions, a, b, theta, r_max: float = 6.0, *, mask=None) -> np.ndarray:
    """Kron (first-moment) radius in units of the ellipse scale, as Source Extractor's KRON_RADIUS / 2.5.

    ``r_K = Σ r_i I_i / Σ I_i`` over the pixels whose centres lie within the ellipse of scale
    ``r_max`` (i.e. semi-axes ``r_max·a``, ``r_max·b``), with ``r_i`` the elliptical radius
    ``sqrt(cxx x² + cyy y² + cxy x y)`` in units of (a, b).

    Parameters
    ----------
    data : array_like (H, W)
        Background-subtracted image.
    positions : array_like (N, 2)
        ``(x, y)`` centres.
    a, b, theta : array_like (N,)
        Ellipse shape (px, px, rad), e.g. from :func:`segment_properties`.
    r_max : float
        Scale of the integration ellipse.
    mask : array_like of bool (H, W), optional

    Returns
    -------
    ndarray (N,)
        Kron radius (dimensionless, multiply by a for pixels); NaN where Σ I <= 0.
    """
    d = np.asarray(data, dtype=float)
    pos = np.asarray(positions, dtype=float)
    a, b, theta = (np.broadcast_to(np.asarray(t, float), (pos.shape[0],)) for t in (a, b, theta))
    h = int(np.ceil(r_max * np.max(a, initial=1.0))) + 1
    K = 2 * h + 1
    i0 = np.floor(pos[:, 0] + 0.5).astype(int) - h
    j0 = np.floor(pos[:, 1] + 0.5).astype(int) - h
    k = np.arange(K)
    cols = i0[:, None] + k
    rows = j0[:, None] + k
    H, W = d.shape
    bad = ~np.isfinite(d) if mask is None else ~np.isfinite(d) | np.asarray(mask, bool)
    inimg = ((rows >= 0) & (rows < H))[:, :, None] & ((cols >= 0) & (cols < W))[:, None, :]
    rr = np.clip(rows, 0, H - 1)[:, :, None]
    cc = np.clip(cols, 0, W - 1)[:, None, :]
    cut = np.where(inimg & ~bad[rr, cc], d[rr, cc], 0.0)
    dx = cc - pos[:, 0, None, None]
    dy = rr - pos[:, 1, None, None]
    c, s = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    xr = dx * c + dy * s
    yr = -dx * s + dy * c
    re = np.sqrt((xr / a[:, None, None]) ** 2 + (yr / b[:, None, None]) ** 2)
    sel = re <= r_max
    num = np.sum(np.where(sel, re * cut, 0.0), axis=(1, 2))
    den = np.sum(np.where(sel, cut, 0.0), axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((den > 0) & (num > 0), num / den, np.nan)


def flux_radius(
    data,
    positions,
    fractions,
    r_max,
    *,
    normflux=None,
    method: str = "subpixel",
    subpixels: int = 5,
    mask=None,
) -> np.ndarray:
    """Radii of circular apertures enclosing given fractions of the flux (half-light radius at 0.5).

    The curve of growth is the exact one of the n×n sub-pixel sampling (Source Extractor's FLUX_RADIUS
    convention): sub-samples are sorted by distance and accumulated, then interpolated linearly.

    Parameters
    ----------
    data : array_like (H, W)
        Background-subtracted image.
    positions : array_like (N, 2)
    fractions : sequence of float
        Fractions in (0, 1].
    r_max : float or array (N,)
        Largest radius (px); the normalising flux is the flux within it unless ``normflux`` is given.
    normflux : array_like (N,), optional
        Total flux used for normalisation (e.g. FLUX_AUTO).
    method : {"subpixel", "center"}
        Pixel sampling of the growth curve (``subpixels`` per axis for "subpixel").

    Returns
    -------
    ndarray (N, F)
        Radii in px (NaN when a fraction is never reached).
    """
    pos = np.asarray(positions, dtype=float)
    N = pos.shape[0]
    fr = np.atleast_1d(np.asarray(fractions, dtype=float))
    rmax = np.broadcast_to(np.asarray(r_max, dtype=float), (N,))
    d = np.asarray(data, dtype=float)
    H, W = d.shape
    bad = ~np.isfinite(d) if mask is None else ~np.isfinite(d) | np.asarray(mask, bool)
    # Exact curve of growth of the n×n sub-pixel sampling: sort every sub-sample of each cutout by
    # its distance from the centre and accumulate (value / n²); no radius grid is needed.
    n = int(subpixels) if method == "subpixel" else 1
    h = int(np.ceil(rmax.max(initial=1.0))) + 1
    K = 2 * h + 1
    i0 = np.floor(pos[:, 0] + 0.5).astype(int) - h
    j0 = np.floor(pos[:, 1] + 0.5).astype(int) - h
    k = np.arange(K)
    rows = j0[:, None] + k
    cols = i0[:, None] + k
    inimg = ((rows >= 0) & (rows < H))[:, :, None] & ((cols >= 0) & (cols < W))[:, None, :]
    rr = np.clip(rows, 0, H - 1)[:, :, None]
    cc = np.clip(cols, 0, W - 1)[:, None, :]
    val = np.where(inimg & ~bad[rr, cc], d[rr, cc], 0.0) / (n * n)
    s = (np.arange(n) + 0.5) / n - 0.5
    dx = (cc - pos[:, 0, None, None])[..., None, None] + s[None, None, None, None, :]
    dy = (rr - pos[:, 1, None, None])[..., None, None] + s[None, None, None, :, None]
    dist = np.sqrt(dx**2 + dy**2).reshape(N, -1)
    vals = np.broadcast_to(val[..., None, None], (N, K, K, n, n)).reshape(N, -1)
    order = np.argsort(dist, axis=1, kind="stable")
    r_all = np.take_along_axis(dist, order, axis=1)
    f_all = np.cumsum(np.take_along_axis(vals, order, axis=1), axis=1)
    inside = r_all < rmax[:, None]
    f_all = np.where(inside, f_all, np.nan)
    tot = (
        np.nanmax(np.where(inside, f_all, -np.inf), axis=1)
        if normflux is None
        else np.asarray(normflux, dtype=float)
    )
    r_all = np.concatenate([np.zeros((N, 1)), r_all], axis=1)
    f_all = np.concatenate([np.zeros((N, 1)), np.nan_to_num(f_all, nan=-np.inf)], axis=1)
    out = np.full((N, fr.size), np.nan)
    for k, f in enumerate(fr):  # loop over the few fractions, vectorised over sources
        target = f * tot
        above = f_all >= target[:, None]
        idx = np.argmax(above, axis=1)
        found = above.any(axis=1) & (idx > 0) & (tot > 0)
        i1 = np.clip(idx, 1, None)
        f0 = f_all[np.arange(N), i1 - 1]
        f1 = f_all[np.arange(N), i1]
        r0 = r_all[np.arange(N), i1 - 1]
        r1 = r_all[np.arange(N), i1]
        with np.errstate(divide="ignore", invalid="ignore"):
            rr = r0 + (target - f0) / (f1 - f0) * (r1 - r0)
        out[:, k] = np.where(found, rr, np.nan)
    return out
