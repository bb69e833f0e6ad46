"""Batched aperture photometry: exact/center/subpixel apertures, local sky, CCD-equation errors.

Functional core: :func:`aperture_sums` (any aperture kind, one batched call, chunked over sources with
a fixed chunk size so a new N does not recompile). Friendly shell: :func:`aperture_photometry`
(circular apertures with an optional sky annulus, returning an astropy Table) and
:func:`aperture_light_curves` (a (T, H, W) cube to (T, N) arrays).

Conventions: ``positions`` are (N, 2) ``(x, y)`` 0-based pixel coordinates; pixel ``data[j, i]`` is
centred at ``x = i, y = j``. Geometry runs in float64 (under a local ``jax.enable_x64`` context; the
global JAX config is never changed).

Flags (:class:`ApertureFlag`) are set per source and per radius; no bad row raises for the batch.
"""

from __future__ import annotations

import concurrent.futures
import enum
import functools
import math
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from astropy.table import Table

from . import _overlap, stats

__all__ = [
    "ApertureFlag",
    "aperture_corrections",
    "aperture_light_curves",
    "aperture_photometry",
    "aperture_sums",
    "growth_curve",
]

SKY_METHODS = ("median", "mean", "sigma_clip", "mode", "mmm", "biweight")


class ApertureFlag(enum.IntFlag):
    """Bitmask in the ``flags`` column (0 = clean)."""

    TRUNCATED = 1  #: aperture partly off the image (sum is over the on-image part)
    OFF_IMAGE = 2  #: aperture wholly off the image (values NaN)
    HAS_MASKED = 4  #: aperture contains masked or non-finite pixels (excluded from the sum)
    ALL_MASKED = 8  #: every aperture pixel masked / non-finite (values NaN)
    SKY_EMPTY = 16  #: no valid sky pixels, e.g. a zero-area annulus (sky, flux NaN)
    SKY_TRUNCATED = 32  #: sky annulus partly off the image or masked
    NONPOSITIVE = 64  #: flux <= 0, so mag is NaN


# ----------------------------------------------------------------------------------------------------
# input handling


def _as_positions(positions) -> np.ndarray:
    p = np.asarray(positions, dtype=float)
    if p.ndim == 1 and p.shape[0] == 2:
        p = p[None, :]
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"positions must have shape (N, 2) as (x, y); got shape {p.shape}")
    return p


def _radius_array(name: str, value, n: int) -> np.ndarray:
    """Radii -> (N, R) float array. Scalar, per-source (N,), list of R radii, or (N, R)."""
    if value is None:
        raise ValueError(f"{name} is required")
    a = np.asarray(value, dtype=float)
    if a.ndim == 0:
        a = np.full((n, 1), float(a))
    elif a.ndim == 1:
        if isinstance(value, list | tuple):  # a list means several radii for every source
            a = np.broadcast_to(a[None, :], (n, a.size))
        elif a.shape[0] == n:
            a = a[:, None]
        else:
            raise ValueError(f"{name} must be a scalar, a list of radii, or have length N={n}")
    elif a.ndim == 2:
        if a.shape[0] != n:
            raise ValueError(f"{name} with 2 dimensions must have shape (N, R); got {a.shape}")
    else:
        raise ValueError(f"{name} must be at most 2-D; got shape {a.shape}")
    if np.any(~np.isfinite(a)) or np.any(a < 0):
        raise ValueError(f"{name} must be finite and non-negative")
    return np.ascontiguousarray(a)


def _image(name: str, value, shape=None) -> np.ndarray:
    a = np.asarray(value)
    if a.ndim not in (2, 3):
        raise ValueError(f"{name} must be a 2-D image or a (T, H, W) cube; got shape {a.shape}")
    if shape is not None and a.shape != shape and a.shape != shape[-2:]:
        raise ValueError(f"{name} must have the shape of data {shape}; got {a.shape}")
    return a


# ----------------------------------------------------------------------------------------------------
# functional core


def _cutout_edges(x, y, K):
    """Integer cutout origin and pixel-edge offsets relative to each source (float64)."""
    h = (K - 1) // 2
    # the edges from the float origin (same values): XLA recomputes them inside every fused loop
    # over the cutouts, where a float -> int -> float round trip per element is not free
    i0f = jnp.floor(x + 0.5) - h
    j0f = jnp.floor(y + 0.5) - h
    k = jnp.arange(K + 1, dtype=x.dtype)
    u = (i0f[:, None] - 0.5 + k[None, :]) - x[:, None]
    v = (j0f[:, None] - 0.5 + k[None, :]) - y[:, None]
    return i0f.astype(jnp.int32), j0f.astype(jnp.int32), u, v


def _gather(img, i0, j0, K, pad):
    """(…, Hp, Wp) padded image -> (N, …, K, K) cutouts with origin (j0, i0) in unpadded coords."""
    lead = img.shape[:-2]

    def one(j, i):
        start = (jnp.int32(0),) * len(lead) + (j + pad, i + pad)
        return jax.lax.dynamic_slice(img, start, lead + (K, K))

    return jax.vmap(one)(j0, i0)


def _in_annulus(u, v, rin, rout):
    """(N, K, K) bool: pixel centres with r_in <= r < r_out, from the (N, K+1) pixel edges.

    The robust sky estimators and ``sky_std`` use these whole pixels (unweighted).
    """
    cx = 0.5 * (u[:, 1:] + u[:, :-1])
    cy = 0.5 * (v[:, 1:] + v[:, :-1])
    r2 = cx[:, None, :] ** 2 + cy[:, :, None] ** 2
    return (r2 >= (rin**2)[:, None, None]) & (r2 < (rout**2)[:, None, None])


def _count(mask, axis):
    """Integer count of True along ``axis``, summed as float64 (exact below 2^53).

    XLA CPU sums booleans by converting them to an int64 array and reducing that with a slow
    reduce-window; a float sum is one vectorised pass.
    """
    return jnp.sum(jnp.where(mask, 1.0, 0.0), axis=axis).astype(jnp.int64)


@functools.partial(
    jax.jit,
    static_argnames=(
        "K", "Ka", "pad", "HW", "kind", "method", "subpixels", "nparams", "sky", "has_var", "sky_kw"
    ),
)  # fmt: skip
def _core(
    data, var, x, y, params, ann, *, K, Ka, pad, HW, kind, method, subpixels, nparams, sky, has_var,
    sky_kw,
):  # fmt: skip
    """One chunk. data/var: (…, Hp, Wp) padded with NaN; masked pixels are NaN too.

    params: tuple of (N, R) arrays for the aperture; ann: (N, 2) (r_in, r_out) or None. The aperture
    weights are evaluated on the central Ka×Ka block only (the annulus needs the full K×K cutout).
    Returns a dict of arrays with shapes (N, R) or (N, R, T) (cube) for the aperture terms and (N,)
    or (N, T) for the sky terms.
    """
    H, W = HW
    i0, j0, u, v = _cutout_edges(x, y, K)
    d = _gather(data, i0, j0, K, pad)  # (N, [T,] K, K)
    cube = d.ndim == 4
    fin = jnp.isfinite(d)
    ok = jnp.all(fin, axis=1) if cube else fin  # cube: a pixel bad in any frame is bad in all
    k = jnp.arange(K)
    cols = i0[:, None] + k[None, :]
    rows = j0[:, None] + k[None, :]
    off = ((rows < 0) | (rows >= H))[:, :, None] | ((cols < 0) | (cols >= W))[:, None, :]
    okb = ok[:, None] if cube else ok
    dz = jnp.where(okb, d, 0.0)
    vz = jnp.where(okb, _gather(var, i0, j0, K, pad), 0.0) if has_var else None
    o = (K - Ka) // 2
    blk = slice(o, o + Ka)
    ua, va = u[:, o : o + Ka + 1], v[:, o : o + Ka + 1]
    ok_a, off_a, dz_a = ok[:, blk, blk], off[:, blk, blk], dz[..., blk, blk]
    vz_a = vz[..., blk, blk] if has_var else None
    R = params[0].shape[1]
    out = {k: [] for k in ("sum", "var", "area", "geom", "off", "bad")}
    for r in range(R):
        p = tuple(q[:, r] for q in params[:nparams])
        w = _overlap.weights(kind, method, p, ua, va, subpixels)  # (N, Ka, Ka)
        wv = jnp.where(ok_a, w, 0.0)
        if cube:
            s = jnp.einsum("nkl,ntkl->nt", wv, dz_a)
        else:
            s = jnp.einsum("nkl,nkl->n", wv, dz_a)
        out["sum"].append(s)
        if has_var:
            if cube:
                out["var"].append(jnp.einsum("nkl,ntkl->nt", wv, vz_a))
            else:
                out["var"].append(jnp.einsum("nkl,nkl->n", wv, vz_a))
        out["area"].append(jnp.sum(wv, axis=(1, 2)))
        out["geom"].append(jnp.sum(w, axis=(1, 2)))
        out["off"].append(jnp.sum(jnp.where(off_a, w, 0.0), axis=(1, 2)))
        out["bad"].append(jnp.sum(jnp.where(~ok_a & ~off_a, w, 0.0), axis=(1, 2)))
    res = {k: jnp.stack(vv, axis=1) for k, vv in out.items() if vv}
    if ann is not None:
        rin, rout = ann[:, 0], ann[:, 1]
        inann = _in_annulus(u, v, rin, rout)
        sky_ok = inann & ok
        res["sky_geom_n"] = _count(inann, (1, 2))
        res["sky_off_n"] = _count(inann & ~ok, (1, 2))  # off-image or masked
        flat = (lambda a: a.reshape(a.shape[0], -1)) if not cube else None
        if cube:
            T = d.shape[1]
            vals = d.reshape(d.shape[0], T, -1)
            valid = jnp.broadcast_to(sky_ok.reshape(d.shape[0], 1, -1), vals.shape)
        else:
            vals = flat(d)
            valid = flat(sky_ok)
        n_sky = _count(valid, -1)
        sigma, maxiters = sky_kw
        if sky == "mean":
            # exact-weighted annulus mean (area-weighted, like summing an annulus aperture)
            if method == "exact":  # only summed (no flags): one convolution of F (see _overlap)
                wa = _overlap.corner_difference_conv(
                    _overlap.circle_corner_integral(rout, u, v) - _overlap.circle_corner_integral(rin, u, v)
                )
            else:
                wa = _overlap.weights("circle", method, (rout,), u, v, subpixels) - _overlap.weights(
                    "circle", method, (rin,), u, v, subpixels
                )
            wa = jnp.where(ok, wa, 0.0)
            wflat = wa.reshape(wa.shape[0], 1, -1) if cube else flat(wa)
            wsum = jnp.sum(wflat, axis=-1)
            # wa is 0 on masked/off-image pixels, whose values are NaN: zero them before weighting
            level = jnp.sum(wflat * jnp.where(jnp.isfinite(vals), vals, 0.0), axis=-1) / jnp.where(
                wsum > 0, wsum, 1.0
            )
            level = jnp.where(wsum > 0, level, jnp.nan)
            std = _shifted_std(vals, jnp.where(valid, 1.0, 0.0), level[..., None], -1)
        else:
            level, std = _robust_sky(vals, valid, sky, sigma, maxiters)
        res["sky"] = level
        res["sky_std"] = std
        res["n_sky"] = n_sky
    return res


def _shifted_std(vals, m, shift, axis):
    """Population std over ``axis`` of the values where the 0/1 mask ``m`` is 1 (NaN if none).

    ``sky_std`` of the weighted-mean sky: the two-pass formula on data shifted by ``shift`` (the
    weighted mean, close to the plain one; broadcastable to ``vals``), so neither pass loses digits
    to a large sky level, and a single pixel gives exactly 0. Counts are float sums (see
    :func:`_count`).
    """
    c = jnp.where(jnp.isfinite(shift), shift, 0.0)
    n = jnp.sum(m, axis=axis)
    dc = jnp.where(m > 0, vals - c, 0.0)  # (masked values may be NaN)
    mean = jnp.sum(dc, axis=axis, keepdims=True) / jnp.maximum(jnp.expand_dims(n, axis), 1.0)
    dev = jnp.where(m > 0, dc - mean, 0.0)
    var = jnp.sum(dev * dev, axis=axis) / jnp.maximum(n, 1.0)
    return jnp.where(n > 0, jnp.sqrt(var), jnp.nan)


def _robust_sky(vals, valid, sky, sigma, maxiters):
    """(level, std) of the annulus pixels for the robust estimators (shared by both paths)."""
    if sky == "median":
        return stats.masked_median_select(vals, valid), stats.masked_mean_std(vals, valid)[1]
    if sky == "sigma_clip":
        level, _, std = stats.sigma_clipped_stats(vals, valid, sigma=sigma, maxiters=maxiters)
        return level, std
    if sky == "mode":
        mean, med, std = stats.sigma_clipped_stats(vals, valid, sigma=sigma, maxiters=maxiters)
        return stats.sky_mode(mean, med), std
    if sky == "mmm":
        return stats.mmm_sky(vals, valid, sigma=sigma, maxiters=maxiters)
    if sky == "biweight":
        return stats.biweight_location(vals, valid), stats.biweight_scale(vals, valid)
    raise ValueError(sky)  # pragma: no cover - validated in the shell


@functools.partial(jax.jit, static_argnames=("K", "Ka", "pad", "has_var", "has_ann", "sky", "sky_kw"))
def _core_clean_circle(data, var, x, y, radii, ann, *, K, Ka, pad, has_var, has_ann, sky, sky_kw):
    """Fast path of :func:`_core` for exact circles on a 2-D image, with any sky estimator.

    Only for sources whose whole K×K cutout lies on the image with no masked or non-finite pixel
    (chosen on the host by :func:`_clean_sources`), so there is nothing to mask: no ``isfinite`` or
    ``where`` passes over the cutouts, the off-image / masked areas are 0 and the area is the
    geometric area. Same outputs (keys, shapes, dtypes) as :func:`_core`.

    The pixel weights are one 2×2 convolution of the corner integral F (see :mod:`jaxphot._overlap`;
    a convolution is a fusion boundary, so F is computed once, not once per corner), and the total
    area is the four-corner difference of F over the whole cutout, i.e. the analytic area, with no
    reduction. ``sky="mean"`` gets ``sky_std`` in one shifted pass (:func:`_shifted_std`); the robust
    estimators get the cutout and the annulus mask as in :func:`_core`.
    """
    i0, j0, u, v = _cutout_edges(x, y, K)
    d = _gather(data, i0, j0, K, pad)  # (N, K, K), all finite
    N = x.shape[0]
    o = (K - Ka) // 2
    blk = slice(o, o + Ka)
    ua, va = u[:, o : o + Ka + 1], v[:, o : o + Ka + 1]
    d_a = d[:, blk, blk]
    vz_a = _gather(var, i0 + o, j0 + o, Ka, pad) if has_var else None

    def outer(F):  # four-corner difference over the whole grid = total area
        return F[:, -1, -1] - F[:, -1, 0] - F[:, 0, -1] + F[:, 0, 0]

    out = {k: [] for k in ("sum", "var", "area")}
    for r in range(radii.shape[1]):
        F = _overlap.circle_corner_integral(radii[:, r], ua, va)
        w = _overlap.corner_difference_conv(F)
        out["sum"].append(jnp.einsum("nkl,nkl->n", w, d_a))
        if has_var:
            out["var"].append(jnp.einsum("nkl,nkl->n", w, vz_a))
        out["area"].append(outer(F))
    res = {k: jnp.stack(vv, axis=1) for k, vv in out.items() if vv}
    res["geom"] = res["area"]
    res["off"] = jnp.zeros_like(res["area"])
    res["bad"] = jnp.zeros_like(res["area"])
    if has_ann:
        rin, rout = ann[:, 0], ann[:, 1]
        inann = _in_annulus(u, v, rin, rout)
        m = jnp.where(inann, 1.0, 0.0)  # one 0/1 array for all sums: XLA would rebuild `inann` in each
        n = jnp.sum(m, axis=(1, 2))
        if sky == "mean":
            Fa = _overlap.circle_corner_integral(rout, u, v) - _overlap.circle_corner_integral(rin, u, v)
            wa = _overlap.corner_difference_conv(Fa)
            wsum = outer(Fa)
            level = jnp.einsum("nkl,nkl->n", wa, d) / jnp.where(wsum > 0, wsum, 1.0)
            level = jnp.where(wsum > 0, level, jnp.nan)
            std = _shifted_std(d, m, level[:, None, None], (1, 2))  # (N, K, K): no reshape, faster
        else:
            level, std = _robust_sky(d.reshape(N, -1), inann.reshape(N, -1), sky, *sky_kw)
        n_int = n.astype(jnp.int64)
        res["sky"] = level
        res["sky_std"] = std
        res["n_sky"] = n_int
        res["sky_geom_n"] = n_int
        res["sky_off_n"] = jnp.zeros((N,), jnp.int64)
    return res


def _clean_sources(bad: np.ndarray, pos: np.ndarray, finite: np.ndarray, K: int) -> np.ndarray:
    """(N,) bool: the K×K cutout (as placed by :func:`_cutout_edges`) is on the image and has no bad pixel.

    ``bad`` (H, W) marks masked / non-finite pixels; the count in each cutout comes from a summed-area
    table, so this is O(H W + N).
    """
    H, W = bad.shape
    h = (K - 1) // 2
    with np.errstate(invalid="ignore"):
        i0 = np.floor(pos[:, 0] + 0.5) - h  # same float64 arithmetic as _cutout_edges
        j0 = np.floor(pos[:, 1] + 0.5) - h
    ok = finite & (i0 >= 0) & (j0 >= 0) & (i0 + K <= W) & (j0 + K <= H)
    if ok.any() and bad.any():
        sat = np.zeros((H + 1, W + 1), dtype=np.int64)
        np.cumsum(np.cumsum(bad, axis=0, dtype=np.int64), axis=1, out=sat[1:, 1:])
        a, b = j0[ok].astype(np.int64), i0[ok].astype(np.int64)
        n_bad = sat[a + K, b + K] - sat[a, b + K] - sat[a + K, b] + sat[a, b]
        ok[np.flatnonzero(ok)[n_bad > 0]] = False
    return ok


def _chunk_size(K: int, T: int) -> int:
    """Fixed chunk size: the power of two nearest to 2^18 / (K² max(T, 1)), at least 16.

    Small chunks win on CPU: with ~2^23-element (chunk, [T,] K, K) float64 temporaries (the old size)
    every call spent most of its time in page faults on freshly mapped buffers and in DRAM traffic;
    at ~2^18 elements (2 MiB) they are reused from the allocator and mostly stay in cache, while the
    fixed cost of a call (~0.1-0.2 ms) stays small. (Subpixel samples are reduced inside one fused
    loop, so they do not count.)
    """
    return max(16, 2 ** round(math.log2((1 << 18) / (K * K * max(T, 1)))))


def aperture_sums(
    data,
    positions,
    kind: str = "circle",
    params: Sequence = (3.0,),
    *,
    method: str = "exact",
    subpixels: int = 5,
    mask=None,
    variance=None,
    annulus=None,
    sky: str = "median",
    sky_sigma: float = 3.0,
    sky_maxiters: int = 5,
) -> dict[str, np.ndarray]:
    """Functional core: batched weighted sums of one aperture kind, optionally with annulus sky.

    Parameters
    ----------
    data : array_like, shape (H, W) or (T, H, W)
        Image or cube (counts).
    positions : array_like, shape (N, 2)
        ``(x, y)`` 0-based pixel centres.
    kind : {"circle", "ellipse", "rectangle"}
        Aperture shape.
    params : sequence
        ``(r,)`` for circles; ``(a, b, theta)`` for ellipses (semi-axes in px, theta in radians
        counter-clockwise from +x); ``(w, h, theta)`` for rectangles (full widths in px). Each entry is a
        scalar, an (N,) array, a list of R values, or an (N, R) array (R apertures per source).
    method : {"exact", "center", "subpixel"}
        Pixel-overlap method.
    subpixels : int
        n for the n×n ``subpixel`` sampling.
    mask : array_like of bool, shape (H, W), optional
        True = bad pixel; excluded like non-finite pixels.
    variance : array_like, shape of data, optional
        Per-pixel variance (counts²) for ``sum_var``.
    annulus : (r_in, r_out), optional
        Circular sky annulus radii (scalars or (N,) arrays).
    sky : str
        One of ``"median", "mean", "sigma_clip", "mode", "mmm", "biweight"``.

    Returns
    -------
    dict of numpy arrays
        ``sum, area, geom_area, off_area, bad_area`` (+ ``sum_var``): shape (N, R) for an image,
        (N, R, T) for a cube (``area`` etc. (N, R)); with an annulus also ``sky, sky_std, n_sky``
        ((N,) or (N, T)), ``sky_geom_n, sky_off_n`` (N,).
    """
    if kind not in ("circle", "ellipse", "rectangle"):
        raise ValueError(f"kind must be 'circle', 'ellipse' or 'rectangle', got {kind!r}")
    if method not in ("exact", "center", "subpixel"):
        raise ValueError(f"method must be 'exact', 'center' or 'subpixel', got {method!r}")
    if sky not in SKY_METHODS:
        raise ValueError(f"sky must be one of {SKY_METHODS}, got {sky!r}")
    if int(subpixels) < 1:
        raise ValueError(f"subpixels must be >= 1, got {subpixels}")
    nparams = {"circle": 1, "ellipse": 3, "rectangle": 3}[kind]
    if len(params) != nparams:
        raise ValueError(f"params for kind={kind!r} must have {nparams} entries; got {len(params)}")
    data = _image("data", data)
    pos = _as_positions(positions)
    N = pos.shape[0]
    H, W = data.shape[-2:]
    T = data.shape[0] if data.ndim == 3 else 0
    names = {"circle": ("r",), "ellipse": ("a", "b", "theta"), "rectangle": ("w", "h", "theta")}[
        kind
    ]
    P = [
        _radius_array(nm, pv, N) if nm != "theta" else None
        for nm, pv in zip(names, params, strict=True)
    ]
    R = max(p.shape[1] for p in P if p is not None)
    for idx, nm in enumerate(names):
        if nm == "theta":
            th = np.asarray(params[idx], dtype=float)
            th = np.broadcast_to(th[:, None] if th.ndim == 1 and th.shape[0] == N else th, (N, R))
            P[idx] = np.ascontiguousarray(th)
        else:
            P[idx] = np.broadcast_to(P[idx], (N, R))
    # half-size of the cutout: farthest reach of any aperture (ellipse: a; rectangle: half-diagonal)
    if kind == "circle":
        reach = P[0].max(initial=0.0)
    elif kind == "ellipse":
        reach = max(P[0].max(initial=0.0), P[1].max(initial=0.0))
    else:
        reach = 0.5 * math.hypot(P[0].max(initial=0.0), P[1].max(initial=0.0))
    ap_reach = reach
    ann = None
    if annulus is not None:
        rin = _radius_array("r_in", annulus[0], N)[:, 0]
        rout = _radius_array("r_out", annulus[1], N)[:, 0]
        if np.any(rout < rin):
            raise ValueError("r_out must be >= r_in")
        ann = np.stack([rin, rout], axis=1)
        reach = max(reach, rout.max(initial=0.0))
    # odd cutout size from a bucketed half-size so nearby radii share one compilation. The cutout's
    # edges are at least h from the source (which is within half a pixel of the centre pixel), so
    # h = ceil(reach) covers every pixel an aperture or annulus touches, and every pixel centre
    # closer than reach + 1/2.
    h = int(math.ceil(reach))
    K = 2 * h + 1
    Ka = min(K, 2 * int(math.ceil(ap_reach)) + 1)
    pad = K
    finite_pos = np.all(np.isfinite(pos), axis=1)
    # sources far off the image are clamped (they are flagged OFF_IMAGE from the off-image area)
    lim = np.array([W + K, H + K], dtype=float)
    pos_c = np.where(finite_pos[:, None], np.clip(pos, -K, lim), -K)
    with jax.enable_x64(True):
        dtype = jnp.float64
        d = np.asarray(data, dtype=np.float64)
        bad = ~np.isfinite(d)
        if mask is not None:
            m = np.asarray(mask, dtype=bool)
            if m.shape != (H, W):
                raise ValueError(f"mask must have shape {(H, W)}; got {m.shape}")
            bad = bad | m
        padw = [(0, 0)] * (d.ndim - 2) + [(pad, pad), (pad, pad)]
        # NaN marks masked, non-finite and off-image pixels alike; off-image is told apart by index
        d_p = jnp.asarray(
            np.pad(np.where(bad, np.nan, d), padw, constant_values=np.nan), dtype=dtype
        )
        has_var = variance is not None
        var_p = None
        if has_var:
            vv = np.broadcast_to(np.asarray(variance, dtype=np.float64), d.shape)
            var_p = jnp.asarray(np.pad(np.where(np.isfinite(vv), vv, 0.0), padw))
        sky_kw = (float(sky_sigma), int(sky_maxiters))
        # Exact circles on a 2-D image: sources whose whole cutout is on the image and unmasked take
        # the lean path; the rest (edges, masked pixels) the general one. Same outputs either way.
        lean = kind == "circle" and method == "exact" and T == 0
        is_clean = _clean_sources(bad, pos_c, finite_pos, K) if lean else np.zeros(N, dtype=bool)
        # Chunks of sources near each other on the image: their cutouts then share cache lines and
        # pages, and the gathers stop being random DRAM reads (outputs are scattered back by index).
        band = np.floor(pos_c[:, 1] / K + 2).astype(np.int64)  # >= 1 (positions are clipped to >= -K)
        order = np.argsort(band * (W + 3 * K) + np.floor(pos_c[:, 0] + K).astype(np.int64))
        jobs = []
        for fast in (True, False):
            idx = order[is_clean[order] == fast]
            if idx.size == 0:
                continue
            chunk = _chunk_size(K, T)
            # a small batch gets a smaller power-of-two chunk (one compilation per size)
            chunk = min(chunk, 1 << max(4, math.ceil(math.log2(idx.size))))
            jobs += [(fast, idx, s0, chunk) for s0 in range(0, idx.size, chunk)]

        def run(job):
            fast, idx, start, chunk = job
            # one fixed-size chunk (the last one padded by repeating its final source)
            sl = idx[np.arange(start, start + chunk).clip(max=idx.size - 1)]
            with jax.enable_x64(True):
                xs, ys = jnp.asarray(pos_c[sl, 0], dtype), jnp.asarray(pos_c[sl, 1], dtype)
                an = None if ann is None else jnp.asarray(ann[sl], dtype)
                if fast:
                    r = _core_clean_circle(
                        d_p, var_p, xs, ys, jnp.asarray(P[0][sl], dtype), an,
                        K=K, Ka=Ka, pad=pad, has_var=has_var, has_ann=ann is not None, sky=sky,
                        sky_kw=sky_kw,
                    )  # fmt: skip
                else:
                    r = _core(
                        d_p, var_p, xs, ys, tuple(jnp.asarray(p[sl], dtype) for p in P), an,
                        K=K, Ka=Ka, pad=pad, HW=(H, W), kind=kind, method=method,
                        subpixels=int(subpixels), nparams=nparams, sky=sky, has_var=has_var,
                        sky_kw=sky_kw,
                    )  # fmt: skip
                n = min(idx.size, start + chunk) - start
                return idx[start : start + n], {k: np.asarray(val)[:n] for k, val in r.items()}

        # XLA CPU runs one fused kernel on one core; independent chunks on a small thread pool use
        # the other cores (JAX releases the GIL while a computation runs).
        nthreads = min(len(jobs), os.cpu_count() or 1, 8)
        if nthreads > 1:
            with concurrent.futures.ThreadPoolExecutor(nthreads) as ex:
                parts = list(ex.map(run, jobs))
        else:
            parts = [run(j) for j in jobs]
        out = {}
        for rows, part in parts:
            for k, val in part.items():
                if k not in out:
                    out[k] = np.empty((N,) + val.shape[1:], dtype=val.dtype)
                out[k][rows] = val
    out["geom_area"] = out.pop("geom")
    out["off_area"] = out.pop("off")
    out["bad_area"] = out.pop("bad")
    if "var" in out:
        out["sum_var"] = out.pop("var")
    else:
        out.pop("var", None)
    out["finite_position"] = finite_pos
    return out


# ----------------------------------------------------------------------------------------------------
# shell


def _flags_and_values(core: dict, n_r: int, cube: bool):
    """Compute flags (N, R) and NaN-out invalid values."""
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
    data = _image("data", data)
    cube = data.ndim == 3
    pos = _as_positions(positions)
    N = pos.shape[0]
    if sky not in SKY_METHODS:
        raise ValueError(f"sky must be one of {SKY_METHODS}, got {sky!r}")
    if (r_in is None) != (r_out is None):
        raise ValueError("r_in and r_out must be given together")
    if gain is not None and not gain > 0:
        raise ValueError(f"gain must be > 0, got {gain}")
    multi = isinstance(r, list | tuple) or np.ndim(r) == 2
    radii = _radius_array("r", r, N)
    variance = None
    if error is not None:
        e = np.asarray(error, dtype=float)
        if e.ndim not in (0, 2, 3):
            raise ValueError(f"error must be a scalar or an image; got shape {e.shape}")
        if e.ndim > 0 and e.shape[-2:] != data.shape[-2:]:
            raise ValueError(f"error must have the shape of data {data.shape}; got {e.shape}")
        if e.ndim > 0:
            variance = np.broadcast_to(e**2, data.shape)
    elif gain is not None:
        rn = 0.0 if read_noise is None else float(read_noise)
        variance = np.maximum(np.asarray(data, dtype=float), 0.0) / gain + (rn / gain) ** 2
    elif read_noise is not None:
        raise ValueError("read_noise needs gain (e-/ADU) to convert to counts")
    annulus = None if r_in is None else (r_in, r_out)
    core = aperture_sums(
        data, pos, "circle", (radii,), method=method, subpixels=subpixels, mask=mask,
        variance=variance, annulus=annulus, sky=sky, sky_sigma=sky_sigma, sky_maxiters=sky_maxiters,
    )  # fmt: skip
    R = radii.shape[1]
    flags, invalid = _flags_and_values(core, R, cube)
    asum = core["sum"]  # (N, R) or (N, R, T)
    area = core["area"]
    ex = (lambda a: a[..., None]) if cube else (lambda a: a)
    asum = np.where(ex(invalid), np.nan, asum)
    area_v = np.where(invalid, np.nan, area)
    scalar_err = error is not None and np.ndim(error) == 0
    if variance is not None or scalar_err:
        # a scalar error needs no per-pixel gather: Σ w σ² = σ² · area
        var = core["sum_var"] if not scalar_err else float(error) ** 2 * ex(area)
        if error is not None and gain is not None:
            var = var + np.maximum(asum, 0.0) / gain  # source Poisson term on top of the error map
        sum_err = np.sqrt(np.where(ex(invalid), np.nan, var))
    else:
        sum_err = np.full_like(asum, np.nan)
    if annulus is not None:
        skyv = core["sky"]  # (N,) or (N, T)
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
        flux = asum - ex(area_v) * sky_b
        flux_err = np.sqrt(sum_err**2 + (ex(area_v) * skyerr_b) ** 2)
    else:
        skyv = np.zeros((N,) + ((data.shape[0],) if cube else ()))
        sky_err = np.zeros_like(skyv)
        n_sky = np.zeros(N, dtype=int)
        sky_std = np.zeros_like(skyv)
        flux = asum
        flux_err = sum_err
    with np.errstate(invalid="ignore", divide="ignore"):
        mag = np.where(flux > 0, zeropoint - 2.5 * np.log10(np.where(flux > 0, flux, 1.0)), np.nan)
        mag_err = np.where(flux > 0, (2.5 / np.log(10)) * flux_err / np.abs(flux), np.nan)
    nonpos = ~(flux > 0) & np.isfinite(flux)
    flags |= np.where(
        nonpos if not cube else np.any(nonpos, axis=-1), int(ApertureFlag.NONPOSITIVE), 0
    )

    def shape(a):
        if multi:
            return a
        return a[:, 0]

    t = Table()
    t["id"] = np.arange(1, N + 1)
    t["x"] = pos[:, 0]
    t["y"] = pos[:, 1]
    if multi:
        t["r"] = radii
    t["aperture_sum"] = shape(asum)
    t["aperture_sum_err"] = shape(sum_err)
    t["area"] = shape(area_v)
    t["sky"] = skyv
    t["sky_err"] = sky_err
    t["flux"] = shape(flux)
    t["flux_err"] = shape(flux_err)
    t["mag"] = shape(mag)
    t["mag_err"] = shape(mag_err)
    t["flags"] = shape(flags) if multi else np.bitwise_or.reduce(flags, axis=1)
    t["n_sky"] = n_sky
    t["sky_std"] = sky_std
    t.meta["method"] = method
    t.meta["sky"] = sky if annulus is not None else "none"
    if cube:
        t.meta["time_axis"] = "last"
    return t


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


# ----------------------------------------------------------------------------------------------------
# growth curves and aperture corrections


def growth_curve(
    data, positions, radii, *, normalize_radius=None, **kwargs
) -> dict[str, np.ndarray]:
    """Curves of growth of (bright, isolated) stars.

    Parameters
    ----------
    data : array_like (H, W)
        Image in counts.
    positions : array_like (N, 2)
        Star positions ``(x, y)``.
    radii : sequence of float
        Increasing aperture radii (px).
    normalize_radius : float, optional
        Radius whose flux normalises each curve; default the largest radius.
    **kwargs
        Passed to :func:`aperture_photometry` (sky annulus etc.).

    Returns
    -------
    dict
        ``radii`` (R,), ``flux`` (N, R), ``fraction`` (N, R) flux/flux(normalize_radius),
        ``mean_fraction`` (R,) and ``std_fraction`` (R,) over stars (NaN-aware).
    """
    radii = [float(x) for x in radii]
    if normalize_radius is not None and normalize_radius not in radii:
        radii = sorted(radii + [float(normalize_radius)])
    t = aperture_photometry(data, positions, list(radii), **kwargs)
    flux = np.asarray(t["flux"], dtype=float)
    iref = radii.index(float(normalize_radius)) if normalize_radius is not None else len(radii) - 1
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = flux / flux[:, iref : iref + 1]
    return {
        "radii": np.asarray(radii),
        "flux": flux,
        "fraction": frac,
        "mean_fraction": np.nanmean(frac, axis=0),
        "std_fraction": np.nanstd(frac, axis=0, ddof=1)
        if frac.shape[0] > 1
        else np.zeros(len(radii)),
    }


def aperture_corrections(
    data, positions, r, r_ref, *, sigma: float = 3.0, **kwargs
) -> tuple[float, float, np.ndarray]:
    """Aperture correction from radius ``r`` to the reference (large) radius ``r_ref``.

    The correction per star is ``Δm = m(r_ref) - m(r)`` (negative: the large aperture is brighter);
    it is combined over stars with a sigma-clipped mean, and its uncertainty is the standard error of
    that mean.

    Parameters
    ----------
    data : array_like (H, W)
    positions : array_like (N, 2)
        Bright, isolated stars.
    r, r_ref : float
        Measurement and reference radii (px).
    sigma : float
        Clipping threshold over stars.
    **kwargs
        Passed to :func:`aperture_photometry`.

    Returns
    -------
    corr, corr_err : float
        Magnitudes to add to ``m(r)`` to get ``m(r_ref)``, and its uncertainty.
    per_star : ndarray (N,)
        The individual corrections (NaN for unusable stars).
    """
    t = aperture_photometry(data, positions, [float(r), float(r_ref)], **kwargs)
    mag = np.asarray(t["mag"], dtype=float)
    d = mag[:, 1] - mag[:, 0]
    with jax.enable_x64(True):
        keep = np.asarray(stats.sigma_clip_mask(d, sigma=sigma, maxiters=5))
    n = int(keep.sum())
    if n == 0:
        return float("nan"), float("nan"), d
    vals = d[keep]
    corr = float(vals.mean())
    err = float(vals.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return corr, err, d
