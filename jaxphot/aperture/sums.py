"""The functional core of aperture photometry: batched weighted sums with annulus sky.

:func:`aperture_sums` handles any aperture kind in one batched call, chunked over sources with a
fixed chunk size so a new N does not recompile. Geometry runs in float64 (under a local
``jax.enable_x64`` context; the global JAX config is never changed). Conventions: ``positions``
are (N, 2) ``(x, y)`` 0-based pixel coordinates; pixel ``data[j, i]`` is centred at ``x = i, y = j``.
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from .. import stats
from ..core.batching import map_chunks
from ..core.config import enable_compilation_cache
from . import overlap

__all__ = ["aperture_sums", "ApertureFlag", "SKY_METHODS", "as_positions", "radius_array", "as_image"]

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
    BAD_ERROR = 128  #: the aperture holds pixels whose ``error`` is <= 0 or not finite (errors NaN)


def as_positions(positions) -> np.ndarray:
    p = np.asarray(positions, dtype=float)
    if p.ndim == 1 and p.shape[0] == 2:
        p = p[None, :]
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"positions must have shape (N, 2) as (x, y); got shape {p.shape}")
    return p


def radius_array(name: str, value, n: int) -> np.ndarray:
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


def as_image(name: str, value, shape=None) -> np.ndarray:
    a = np.asarray(value)
    if a.ndim not in (2, 3):
        raise ValueError(f"{name} must be a 2-D image or a (T, H, W) cube; got shape {a.shape}")
    if shape is not None and a.shape != shape and a.shape != shape[-2:]:
        raise ValueError(f"{name} must have the shape of data {shape}; got {a.shape}")
    return a


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


def _in_annulus_kind(u, v, ann, kind):
    """(N, K, K) bool: pixel centres inside the outer and not inside the inner aperture of ``kind``.

    ``ann`` (N, 2 p): the p inner then the p outer aperture parameters (p = 1 for circles, where
    this is :func:`_in_annulus`).
    """
    if kind == "circle":
        return _in_annulus(u, v, ann[:, 0], ann[:, 1])
    cx = 0.5 * (u[:, 1:] + u[:, :-1])[:, None, :]
    cy = 0.5 * (v[:, 1:] + v[:, :-1])[:, :, None]
    p = ann.shape[1] // 2
    inner = tuple(ann[:, k, None, None] for k in range(p))
    outer = tuple(ann[:, p + k, None, None] for k in range(p))
    return overlap.inside(kind, outer, cx, cy) & ~overlap.inside(kind, inner, cx, cy)


def _count(mask, axis):
    """Integer count of True along ``axis``, summed as float64 (exact below 2^53).

    XLA CPU sums booleans by converting them to an int64 array and reducing that with a slow
    reduce-window; a float sum is one vectorised pass.
    """
    return jnp.sum(jnp.where(mask, 1.0, 0.0), axis=axis).astype(jnp.int64)


@functools.partial(
    jax.jit,
    static_argnames=(
        "K", "Ka", "pad", "HW", "kind", "method", "subpixels", "nparams", "sky", "has_var", "sky_kw",
        "ann_kind",
    ),
)  # fmt: skip
def _core(
    data, var, x, y, params, ann, *, K, Ka, pad, HW, kind, method, subpixels, nparams, sky, has_var,
    sky_kw, ann_kind="circle",
):  # fmt: skip
    """One chunk. data/var: (…, Hp, Wp) padded with NaN; masked pixels are NaN too.

    params: tuple of (N, R) arrays for the aperture; ann: (N, 2 p) inner then outer parameters of
    an ``ann_kind`` annulus (circles: (r_in, r_out)) or None. The aperture
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
        w = overlap.weights(kind, method, p, ua, va, subpixels)  # (N, Ka, Ka)
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
        res.update(_annulus_terms(d, ok, u, v, ann, method=method, subpixels=subpixels, sky=sky,
                                  sky_kw=sky_kw, kind=ann_kind))  # fmt: skip
    return res


def _annulus_terms(d, ok, u, v, ann, *, method, subpixels, sky, sky_kw, kind="circle"):
    """The sky terms of :func:`_core` (traced inside it): level, std and pixel counts.

    d: (N, [T,] K, K) cutouts (NaN where bad); ok: (N, K, K) usable pixels; u, v: (N, K+1) pixel
    edges relative to the sources; ann: (N, 2 p) the inner then the outer parameters of a ``kind``
    annulus (circles: (r_in, r_out)). Returns ``sky, sky_std, n_sky``
    ((N,) or (N, T)) and ``sky_geom_n, sky_off_n`` (N,).
    """
    cube = d.ndim == 4
    res = {}
    inann = _in_annulus_kind(u, v, ann, kind)
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
        p = ann.shape[1] // 2
        if method == "exact" and kind == "circle":  # only summed (no flags): one convolution of F
            rin, rout = ann[:, 0], ann[:, 1]
            wa = overlap.corner_difference_conv(
                overlap.circle_corner_integral(rout, u, v) - overlap.circle_corner_integral(rin, u, v)
            )
        else:
            inner = tuple(ann[:, k] for k in range(p))
            outer = tuple(ann[:, p + k] for k in range(p))
            wa = overlap.weights(kind, method, outer, u, v, subpixels) - overlap.weights(
                kind, method, inner, u, v, subpixels
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
        F = overlap.circle_corner_integral(radii[:, r], ua, va)
        w = overlap.corner_difference_conv(F)
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
            Fa = overlap.circle_corner_integral(rout, u, v) - overlap.circle_corner_integral(rin, u, v)
            wa = overlap.corner_difference_conv(Fa)
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
    annulus_kind: str = "circle",
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
    annulus : (r_in, r_out) or (inner, outer), optional
        Sky annulus: for ``annulus_kind="circle"`` the radii (scalars or (N,) arrays); otherwise two
        parameter tuples of ``annulus_kind`` (``(a, b, theta)`` or ``(w, h, theta)``, entries
        scalars or (N,)), the inner and the outer boundary. The robust estimators use the pixels
        whose centres are inside the outer and not inside the inner boundary.
    sky : str
        One of ``"median", "mean", "sigma_clip", "mode", "mmm", "biweight"``.
    annulus_kind : {"circle", "ellipse", "rectangle"}
        Shape of the sky annulus (independent of ``kind``).

    Returns
    -------
    dict of numpy arrays
        ``sum, area, geom_area, off_area, bad_area`` (+ ``sum_var``): shape (N, R) for an image,
        (N, R, T) for a cube (``area`` etc. (N, R)); with an annulus also ``sky, sky_std, n_sky``
        ((N,) or (N, T)), ``sky_geom_n, sky_off_n`` (N,).
    """
    enable_compilation_cache()  # persistent cache on first use, never at import
    nparams = _check_options(kind, params, method, sky, subpixels)
    if annulus_kind not in ("circle", "ellipse", "rectangle"):
        raise ValueError(f"annulus_kind must be 'circle', 'ellipse' or 'rectangle', got {annulus_kind!r}")
    data = as_image("data", data)
    pos = as_positions(positions)
    N = pos.shape[0]
    if N == 0:  # no sources: the outputs of one placeholder source, with 0 rows
        one = _one_source(params, annulus, annulus_kind)
        out = aperture_sums(
            data, np.zeros((1, 2)), kind, one[0], method=method, subpixels=subpixels, mask=mask,
            variance=variance, annulus=one[1], sky=sky, sky_sigma=sky_sigma,
            sky_maxiters=sky_maxiters, annulus_kind=annulus_kind,
        )  # fmt: skip
        return {k: val[:0] for k, val in out.items()}
    H, W = data.shape[-2:]
    T = data.shape[0] if data.ndim == 3 else 0
    P = _aperture_params(kind, params, N)
    ap_reach = _reach(kind, P)
    ann, reach = _annulus(annulus, N, ap_reach, annulus_kind)
    # odd cutout size from a bucketed half-size so nearby radii share one compilation. The cutout's
    # edges are at least h from the source (which is within half a pixel of the centre pixel), so
    # h = ceil(reach) covers every pixel an aperture or annulus touches, and every pixel centre
    # closer than reach + 1/2.
    h = int(math.ceil(reach))
    K = 2 * h + 1
    Ka = min(K, 2 * int(math.ceil(ap_reach)) + 1)
    finite_pos = np.all(np.isfinite(pos), axis=1)
    # sources far off the image are clamped (they are flagged OFF_IMAGE from the off-image area)
    lim = np.array([W + K, H + K], dtype=float)
    pos_c = np.where(finite_pos[:, None], np.clip(pos, -K, lim), -K)
    with jax.enable_x64(True):
        d_p, var_p, bad = _padded_images(data, mask, variance, K)
        batch = _Batch(
            d_p, var_p, pos_c, tuple(P), ann, K=K, Ka=Ka, pad=K, HW=(H, W), kind=kind,
            method=method, subpixels=int(subpixels), nparams=nparams, sky=sky,
            sky_kw=(float(sky_sigma), int(sky_maxiters)), ann_kind=annulus_kind,
        )  # fmt: skip
        # Exact circles on a 2-D image: sources whose whole cutout is on the image and unmasked take
        # the lean path; the rest (edges, masked pixels) the general one. Same outputs either way.
        lean = kind == "circle" and annulus_kind == "circle" and method == "exact" and T == 0
        is_clean = _clean_sources(bad, pos_c, finite_pos, K) if lean else np.zeros(N, dtype=bool)
        parts = map_chunks(batch.run, _plan_jobs(pos_c, is_clean, K, T, W))  # threads on CPUs
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


def _check_options(kind, params, method, sky, subpixels) -> int:
    """Validate :func:`aperture_sums`' options; returns the number of aperture parameters."""
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
    return nparams


def _aperture_params(kind, params, N: int) -> list[np.ndarray]:
    """The aperture parameters as (N, R) float arrays (pixels; ``theta`` in radians)."""
    names = {"circle": ("r",), "ellipse": ("a", "b", "theta"), "rectangle": ("w", "h", "theta")}[
        kind
    ]
    P = [
        radius_array(nm, pv, N) if nm != "theta" else None
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
    return P


def _reach(kind, P) -> float:
    """Farthest reach (pixels) of any aperture from its centre (ellipse: a; rectangle: half-diagonal)."""
    if kind == "circle":
        return P[0].max(initial=0.0)
    if kind == "ellipse":
        return max(P[0].max(initial=0.0), P[1].max(initial=0.0))
    return 0.5 * math.hypot(P[0].max(initial=0.0), P[1].max(initial=0.0))


def _one_source(params, annulus, annulus_kind):
    """``params`` and ``annulus`` cut to their first source (for the placeholder of N = 0)."""

    def first(value):
        a = np.asarray(value, dtype=float)
        if isinstance(value, list | tuple) or a.ndim == 0:
            return value  # a list of R apertures (or a scalar) is the same for every source
        if a.shape[0] == 0:  # per-source sizes of no source: a placeholder of ones
            return np.ones((1,) + a.shape[1:])
        return a[:1]

    params = tuple(first(p) for p in params)
    if annulus is None:
        return params, None
    if annulus_kind == "circle":
        return params, tuple(first(q) for q in annulus)
    return params, tuple(tuple(first(q) for q in side) for side in annulus)


def _annulus(annulus, N: int, reach: float, kind: str = "circle"):
    """The annulus as an (N, 2 p) array (inner then outer parameters; circles ``(r_in, r_out)``), or
    None, and the reach it brings (pixels)."""
    if annulus is None:
        return None, reach
    if kind == "circle":
        rin = radius_array("r_in", annulus[0], N)[:, 0]
        rout = radius_array("r_out", annulus[1], N)[:, 0]
        if np.any(rout < rin):
            raise ValueError("r_out must be >= r_in")
        return np.stack([rin, rout], axis=1), max(reach, rout.max(initial=0.0))
    inner, outer = (_aperture_params(kind, tuple(side), N) for side in annulus)
    if any(p.shape[1] != 1 for p in inner + outer):
        raise ValueError("the annulus takes one value per source, not a list of several")
    ann = np.concatenate([p for p in inner + outer], axis=1)
    return ann, max(reach, _reach(kind, outer))


def _padded_images(data, mask, variance, pad: int):
    """Image (or cube) and variance as float64 JAX arrays padded by ``pad`` pixels on each side.

    NaN marks masked, non-finite and off-image pixels alike in the image (off-image is told apart
    by index); non-finite variances are 0. Also returns the (H, W) or (T, H, W) bool map of bad
    pixels. Call under ``jax.enable_x64``.
    """
    H, W = data.shape[-2:]
    d = np.asarray(data, dtype=np.float64)
    bad = ~np.isfinite(d)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != (H, W):
            raise ValueError(f"mask must have shape {(H, W)}; got {m.shape}")
        bad = bad | m
    padw = [(0, 0)] * (d.ndim - 2) + [(pad, pad), (pad, pad)]
    d_p = jnp.asarray(np.pad(np.where(bad, np.nan, d), padw, constant_values=np.nan), dtype=jnp.float64)
    var_p = None
    if variance is not None:
        vv = np.broadcast_to(np.asarray(variance, dtype=np.float64), d.shape)
        var_p = jnp.asarray(np.pad(np.where(np.isfinite(vv), vv, 0.0), padw))
    return d_p, var_p, bad


def _plan_jobs(pos_c, is_clean, K: int, T: int, W: int) -> list[tuple]:
    """Fixed-size chunks ``(fast, idx, start, chunk)`` of the sources, lean-path ones first.

    Chunks of sources near each other on the image: their cutouts then share cache lines and
    pages, and the gathers stop being random DRAM reads (outputs are scattered back by index).
    """
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
    return jobs


@dataclass(frozen=True)
class _Batch:
    """What every chunk of one :func:`aperture_sums` call shares (N sources, R apertures).

    ``d_p, var_p``: the padded image or cube and its variance (or None), from
    :func:`_padded_images`; ``pos_c`` (N, 2) the clamped positions (pixels); ``P`` the (N, R)
    aperture parameters; ``ann`` (N, 2) the annulus radii or None; the rest are the static
    arguments of :func:`_core`.
    """

    d_p: jax.Array
    var_p: jax.Array | None
    pos_c: np.ndarray
    P: tuple
    ann: np.ndarray | None
    K: int
    Ka: int
    pad: int
    HW: tuple[int, int]
    kind: str
    method: str
    subpixels: int
    nparams: int
    sky: str
    sky_kw: tuple[float, int]
    ann_kind: str = "circle"

    def run(self, job):
        """One fixed-size chunk (the last one padded by repeating its final source).

        Returns the chunk's source indices and its outputs (numpy, padding removed).
        """
        fast, idx, start, chunk = job
        sl = idx[np.arange(start, start + chunk).clip(max=idx.size - 1)]
        has_var, dtype = self.var_p is not None, jnp.float64
        with jax.enable_x64(True):  # (x64 is per thread: chunks run on a thread pool)
            xs, ys = jnp.asarray(self.pos_c[sl, 0], dtype), jnp.asarray(self.pos_c[sl, 1], dtype)
            an = None if self.ann is None else jnp.asarray(self.ann[sl], dtype)
            if fast:
                r = _core_clean_circle(
                    self.d_p, self.var_p, xs, ys, jnp.asarray(self.P[0][sl], dtype), an,
                    K=self.K, Ka=self.Ka, pad=self.pad, has_var=has_var, has_ann=self.ann is not None,
                    sky=self.sky, sky_kw=self.sky_kw,
                )  # fmt: skip
            else:
                r = _core(
                    self.d_p, self.var_p, xs, ys, tuple(jnp.asarray(p[sl], dtype) for p in self.P), an,
                    K=self.K, Ka=self.Ka, pad=self.pad, HW=self.HW, kind=self.kind, method=self.method,
                    subpixels=self.subpixels, nparams=self.nparams, sky=self.sky, has_var=has_var,
                    sky_kw=self.sky_kw, ann_kind=self.ann_kind,
                )  # fmt: skip
            n = min(idx.size, start + chunk) - start
            return idx[start : start + n], {k: np.asarray(val)[:n] for k, val in r.items()}
