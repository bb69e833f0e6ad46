"""Pixel-overlap geometry for apertures (pure JAX, batched over sources).

All functions take the pixel-grid *edges* of one cutout per source, expressed relative to the source
centre: ``u`` (N, K+1) are the x edges and ``v`` (N, K+1) the y edges, so pixel ``[n, a, b]`` spans
``[u[n, b], u[n, b+1]] x [v[n, a], v[n, a+1]]``. They return weights (N, K, K): the fraction of each
pixel covered by the aperture (its overlap area, since pixels have unit area).

Run under ``jax.enable_x64(True)`` with float64 edges for the 1e-10 area accuracy.

Methods
-------
exact
    Analytic overlap area. Circles use the signed "corner" integral
    ``F(x, y) = ∫_0^x ∫_0^y 1[disk]`` whose four-corner difference is the overlap with a pixel; it is
    separable enough that only O(K) arcsines are needed per source. Ellipses map to the unit disk, where
    each pixel becomes a parallelogram whose overlap is a sum of signed (origin, edge) triangle ∩ disk
    areas, computed once per grid edge. Rectangles use Green's theorem on the two convex boundaries.
center
    1 if the pixel centre is inside, else 0.
subpixel
    Fraction of the ``n x n`` sub-pixel centres (offsets ``(k + 1/2)/n - 1/2``) inside the aperture, the
    sampling Source Extractor uses for FLUX_APER (n = 5).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array

# ----------------------------------------------------------------------------------------------------
# inside tests (used by "center" and "subpixel")


def _rot(dx: Array, dy: Array, theta: Array) -> tuple[Array, Array]:
    """Coordinates in the frame rotated by ``theta`` (counter-clockwise from +x)."""
    c, s = jnp.cos(theta), jnp.sin(theta)
    return dx * c + dy * s, -dx * s + dy * c


def inside(kind: str, params: tuple[Array, ...], dx: Array, dy: Array) -> Array:
    """Boolean "point inside aperture" for offsets (dx, dy) from the centre.

    ``params`` entries broadcast against ``dx``/``dy`` (callers reshape them to (N, 1, 1, ...)).
    """
    if kind == "circle":
        (r,) = params
        return dx * dx + dy * dy < r * r
    if kind == "ellipse":
        a, b, theta = params
        xr, yr = _rot(dx, dy, theta)
        return (xr / a) ** 2 + (yr / b) ** 2 < 1.0
    if kind == "rectangle":
        w, h, theta = params
        xr, yr = _rot(dx, dy, theta)
        return (jnp.abs(xr) < 0.5 * w) & (jnp.abs(yr) < 0.5 * h)
    raise ValueError(f"unknown aperture kind {kind!r}")


def _expand(params: tuple[Array, ...], nextra: int) -> tuple[Array, ...]:
    return tuple(jnp.reshape(p, p.shape + (1,) * nextra) for p in params)


def weights_center(kind: str, params: tuple[Array, ...], u: Array, v: Array) -> Array:
    cx = 0.5 * (u[:, 1:] + u[:, :-1])
    cy = 0.5 * (v[:, 1:] + v[:, :-1])
    p = _expand(params, 2)
    return inside(kind, p, cx[:, None, :], cy[:, :, None]).astype(u.dtype)


def weights_subpixel(kind: str, params: tuple[Array, ...], u: Array, v: Array, n: int) -> Array:
    cx = 0.5 * (u[:, 1:] + u[:, :-1])
    cy = 0.5 * (v[:, 1:] + v[:, :-1])
    s = (jnp.arange(n, dtype=u.dtype) + 0.5) / n - 0.5
    # (N, K, K, n, n): rows a, cols b, sub-rows p, sub-cols q
    dx = cx[:, None, :, None, None] + s[None, None, None, None, :]
    dy = cy[:, :, None, None, None] + s[None, None, None, :, None]
    p = _expand(params, 4)
    hit = inside(kind, p, dx, dy)
    return jnp.sum(hit, axis=(-1, -2)).astype(u.dtype) / (n * n)


# ----------------------------------------------------------------------------------------------------
# exact: circle


# Cephes atan coefficients: atan(z) = z + z^3 P(z^2)/Q(z^2) on |z| <= tan(pi/8) (relative error ~1e-16)
_ATAN_P = (
    -8.750608600031904122785e-1, -1.615753718733365076637e1, -7.500855792314704667340e1,
    -1.228866684490136173410e2, -6.485021904942025371773e1,
)  # fmt: skip
_ATAN_Q = (
    2.485846490142306297962e1, 1.650270098316988542046e2, 4.328810604912902668951e2,
    4.853903996359136964868e2, 1.945506571482613964425e2,
)  # fmt: skip
_PIO2_LO = 6.123233995736765886130e-17  # pi/2 - float(pi/2)


def _atan2_nonneg(y: Array, x: Array) -> Array:
    """``atan2(y, x)`` for ``y, x >= 0`` (``atan2(0, 0) = 0``), to ~2 ulp.

    XLA's CPU atan2 is a scalar library call (~14 ns an element); this is plain arithmetic that
    vectorises (~1 ns). Cephes' reduction: swap to an argument in [0, 1], then to [0, tan(pi/8)] via
    atan(z) = pi/4 + atan((z - 1)/(z + 1)), then a rational minimax approximation.
    """
    swap = y > x
    num = jnp.where(swap, x, y)
    den = jnp.where(swap, y, x)  # num / den in [0, 1]
    big = num > 0.41421356237309504880 * den  # num / den > tan(pi/8)
    a = jnp.where(big, num - den, num)
    b = jnp.where(big, num + den, den)
    z = a / jnp.where(b > 0, b, 1.0)
    zz = z * z
    p = (((_ATAN_P[0] * zz + _ATAN_P[1]) * zz + _ATAN_P[2]) * zz + _ATAN_P[3]) * zz + _ATAN_P[4]
    q = ((((zz + _ATAN_Q[0]) * zz + _ATAN_Q[1]) * zz + _ATAN_Q[2]) * zz + _ATAN_Q[3]) * zz + _ATAN_Q[4]
    t = z + z * (zz * p / q)
    # the low-order parts of pi/4 and pi/2 go into the small term first (Cephes' MOREBITS)
    t = jnp.where(big, (t + 0.5 * _PIO2_LO) + 0.78539816339744830962, t)
    return jnp.where(swap, (_PIO2_LO - t) + 1.57079632679489661923, t)


def _circle_H(t: Array, r: Array) -> Array:
    """2 ∫_0^t sqrt(r^2 - s^2) ds = t sqrt(r^2 - t^2) + r^2 asin(t/r), for 0 <= t <= r."""
    # (r - t)(r + t), not r*r - t*t: the latter is contracted to an FMA on CPU and leaves a ~1e-15
    # residue at t = r whose square root is ~1e-8, far above the 1e-10 area target.
    d2 = jnp.maximum((r - t) * (r + t), 0.0)
    sq = jnp.sqrt(d2)
    # atan2(t, sqrt(r^2 - t^2)) rather than asin(t / r): XLA's division is not correctly rounded, and
    # asin has an infinite slope at 1, so t/r = 1 - 1e-16 would cost 1.5e-8 in angle.
    return t * sq + r * r * _atan2_nonneg(t, sq)


def circle_corner_integral(r: Array, u: Array, v: Array) -> Array:
    """Signed corner integral ``F(u, v) = ∫_0^u ∫_0^v 1[disk of radius r]`` on the grid -> (N, K+1, K+1).

    ``F[n, a, b]`` is at corner ``(u[n, b], v[n, a])``; the overlap of pixel ``[a, b]`` is the
    four-corner difference ``F[a+1, b+1] - F[a+1, b] - F[a, b+1] + F[a, b]``.

    With x' = min(|x|, r), y' = min(|y|, r) and t0 = sqrt(r^2 - y'^2), the first-quadrant area is
    g = x' y' for a corner inside the circle (x' <= t0), else g = A(y') + B(x') with
    A = y' t0 - H(t0)/2 and B = H(x')/2. Everything but one compare, one product and one sum is per
    axis (O(K) per source, with the arctangents), so the (K+1)^2 part is a handful of flops.
    """
    rr = r[:, None]
    su, sv = jnp.sign(u), jnp.sign(v)
    xp = jnp.minimum(jnp.abs(u), rr)
    yp = jnp.minimum(jnp.abs(v), rr)
    t0 = jnp.sqrt(jnp.maximum((rr - yp) * (rr + yp), 0.0))
    ay = yp * t0 - 0.5 * _circle_H(t0, rr)  # per row
    bx = 0.5 * _circle_H(xp, rr)  # per column
    inside = xp[:, None, :] <= t0[:, :, None]
    # sign(x) sign(y) g, with the signs folded into the per-axis terms
    f_in = (su * xp)[:, None, :] * (sv * yp)[:, :, None]
    f_out = su[:, None, :] * (sv * ay)[:, :, None] + sv[:, :, None] * (su * bx)[:, None, :]
    return jnp.where(inside, f_in, f_out)


def corner_difference(F: Array) -> Array:
    """(N, K+1, K+1) corner values -> (N, K, K) four-corner differences (pixel areas).

    Plain slices in a fixed order, for the weights that feed the off-image / masked areas and their
    1e-12 flag thresholds: e.g. pixels beyond the radius in x get exact zeros (F repeats along the
    row), which a convolution's summation order would not promise.
    """
    return F[:, 1:, 1:] - F[:, 1:, :-1] - F[:, :-1, 1:] + F[:, :-1, :-1]


_STENCIL = ((1.0, -1.0), (-1.0, 1.0))


def corner_difference_conv(F: Array) -> Array:
    """:func:`corner_difference` as a 2x2 convolution, for weights that are only summed.

    XLA CPU inlines the four shifted slices of F into every consumer (computing F four times, or
    copying each slice); a convolution is a fusion boundary, so F is computed once. The summation
    order is the convolution's, so far-away pixels may get ~1e-14 instead of exact zeros.
    """
    k = jnp.asarray(_STENCIL, F.dtype)[None, None]
    return jax.lax.conv_general_dilated(F[:, None], k, (1, 1), "VALID")[:, 0]


def weights_circle_exact(r: Array, u: Array, v: Array) -> Array:
    """Exact overlap of disks of radius r (N,) with the pixels of each cutout -> (N, K, K)."""
    return corner_difference(circle_corner_integral(r, u, v))


# ----------------------------------------------------------------------------------------------------
# exact: ellipse (edges mapped to the unit disk)


def _tri_disk(px: Array, py: Array, qx: Array, qy: Array) -> Array:
    """Signed area of triangle (O, P, Q) ∩ unit disk."""
    dx, dy = qx - px, qy - py
    a = dx * dx + dy * dy
    b = px * dx + py * dy
    c = px * px + py * py - 1.0
    disc = b * b - a * c
    asafe = jnp.where(a > 0, a, 1.0)
    sq = jnp.sqrt(jnp.maximum(disc, 0.0))
    t1 = jnp.clip((-b - sq) / asafe, 0.0, 1.0)
    t2 = jnp.clip((-b + sq) / asafe, 0.0, 1.0)
    hit = (disc > 0) & (a > 0)
    t1 = jnp.where(hit, t1, 0.0)
    t2 = jnp.where(hit, t2, 0.0)
    x1, y1 = px + t1 * dx, py + t1 * dy
    x2, y2 = px + t2 * dx, py + t2 * dy

    def ang(ux, uy, wx, wy):
        return jnp.arctan2(ux * wy - uy * wx, ux * wx + uy * wy)

    # sector P->P1 (outside part), triangle P1->P2 (inside chord), sector P2->Q
    return 0.5 * (ang(px, py, x1, y1) + (x1 * y2 - y1 * x2) + ang(x2, y2, qx, qy))


def weights_ellipse_exact(a: Array, b: Array, theta: Array, u: Array, v: Array) -> Array:
    """Exact overlap of ellipses (semi-axes a, b, angle theta; each (N,)) with cutout pixels."""
    c, s = jnp.cos(theta)[:, None, None], jnp.sin(theta)[:, None, None]
    A, B = a[:, None, None], b[:, None, None]
    X = u[:, None, :]  # (N, 1, K+1)
    Y = v[:, :, None]  # (N, K+1, 1)
    # grid corners in the unit-disk frame, (N, K+1, K+1)
    px = (X * c + Y * s) / A
    py = (-X * s + Y * c) / B
    # horizontal edges (a, b)->(a, b+1): (N, K+1, K); vertical edges (a, b)->(a+1, b): (N, K, K+1)
    eh = _tri_disk(px[:, :, :-1], py[:, :, :-1], px[:, :, 1:], py[:, :, 1:])
    ev = _tri_disk(px[:, :-1, :], py[:, :-1, :], px[:, 1:, :], py[:, 1:, :])
    area_unit = eh[:, :-1, :] + ev[:, :, 1:] - eh[:, 1:, :] - ev[:, :, :-1]
    return area_unit * (A * B)


# ----------------------------------------------------------------------------------------------------
# exact: rectangle


def _overlap_1d(lo: Array, hi: Array, half: Array) -> Array:
    return jnp.clip(jnp.minimum(hi, half) - jnp.maximum(lo, -half), 0.0, None)


def _clip_t(px, py, dx, dy, nx, ny, off):
    """Liang–Barsky parameter interval of P + t D inside {n·p <= off} for several half-planes.

    ``nx, ny, off`` have a trailing axis of half-planes. Returns (t0, t1) over t in [0, 1].
    """
    num = off - (nx * px[..., None] + ny * py[..., None])  # need t * den <= num
    den = nx * dx[..., None] + ny * dy[..., None]
    big = jnp.inf
    dsafe = jnp.where(den != 0, den, 1.0)
    tq = num / dsafe
    t_low = jnp.where(den < 0, tq, -big)
    t_high = jnp.where(den > 0, tq, big)
    par_out = (den == 0) & (num < 0)
    t0 = jnp.maximum(0.0, jnp.max(t_low, axis=-1))
    t1 = jnp.minimum(1.0, jnp.min(t_high, axis=-1))
    t1 = jnp.where(jnp.any(par_out, axis=-1), t0, t1)
    return t0, jnp.maximum(t1, t0)


def _seg_green(px, py, dx, dy, t0, t1):
    """∮ contribution 1/2 (x dy - y dx) of the sub-segment [t0, t1] of P + t D."""
    ax, ay = px + t0 * dx, py + t0 * dy
    bx, by = px + t1 * dx, py + t1 * dy
    return 0.5 * (ax * by - ay * bx)


def weights_rectangle_exact(w: Array, h: Array, theta: Array, u: Array, v: Array) -> Array:
    """Exact overlap of rotated rectangles (full widths w, h, angle theta) with cutout pixels.

    Green's theorem: the boundary of (pixel ∩ rectangle) is the part of each convex boundary inside the
    other. Exactly axis-aligned rectangles (theta a multiple of pi/2, where edges can be collinear with
    pixel edges) use the separable product of 1-D overlaps instead.
    """
    N = u.shape[0]
    c, s = jnp.cos(theta), jnp.sin(theta)
    hw, hh = 0.5 * w, 0.5 * h
    # rectangle half-planes in the pixel frame: n·p <= off, n = ±(c, s), ±(-s, c)
    nx = jnp.stack([c, -c, -s, s], axis=-1)[:, None, None, :]
    ny = jnp.stack([s, -s, c, -c], axis=-1)[:, None, None, :]
    off = jnp.stack([hw, hw, hh, hh], axis=-1)[:, None, None, :]
    X = jnp.broadcast_to(u[:, None, :], (N, v.shape[1], u.shape[1]))
    Y = jnp.broadcast_to(v[:, :, None], (N, v.shape[1], u.shape[1]))
    # grid edges clipped to the rectangle
    hx, hy = X[:, :, :-1], Y[:, :, :-1]
    hdx, hdy = X[:, :, 1:] - hx, jnp.zeros_like(hx)
    t0, t1 = _clip_t(hx, hy, hdx, hdy, nx, ny, off)
    eh = _seg_green(hx, hy, hdx, hdy, t0, t1)
    vx, vy = X[:, :-1, :], Y[:, :-1, :]
    vdx, vdy = jnp.zeros_like(vx), Y[:, 1:, :] - vy
    t0, t1 = _clip_t(vx, vy, vdx, vdy, nx, ny, off)
    ev = _seg_green(vx, vy, vdx, vdy, t0, t1)
    pix = eh[:, :-1, :] + ev[:, :, 1:] - eh[:, 1:, :] - ev[:, :, :-1]
    # rectangle edges (CCW) clipped to each pixel box
    cx = jnp.stack([hw, hw, -hw, -hw], -1)
    cy = jnp.stack([-hh, hh, hh, -hh], -1)
    corner_x = cx * c[:, None] - cy * s[:, None]
    corner_y = cx * s[:, None] + cy * c[:, None]
    ex0, ey0 = corner_x, corner_y
    edx = jnp.roll(corner_x, -1, axis=-1) - corner_x
    edy = jnp.roll(corner_y, -1, axis=-1) - corner_y
    xl = u[:, None, :-1, None]
    xr = u[:, None, 1:, None]
    yb = v[:, :-1, None, None]
    yt = v[:, 1:, None, None]
    K = u.shape[1] - 1
    one = jnp.ones((N, K, K, 1), u.dtype)
    bnx = jnp.concatenate([-one, one, 0 * one, 0 * one], -1)[:, :, :, None, :]
    bny = jnp.concatenate([0 * one, 0 * one, -one, one], -1)[:, :, :, None, :]
    boff = jnp.concatenate(
        [-jnp.broadcast_to(xl, (N, K, K, 1)), jnp.broadcast_to(xr, (N, K, K, 1)),
         -jnp.broadcast_to(yb, (N, K, K, 1)), jnp.broadcast_to(yt, (N, K, K, 1))], -1
    )[:, :, :, None, :]  # fmt: skip
    PX = ex0[:, None, None, :]
    PY = ey0[:, None, None, :]
    DX = edx[:, None, None, :]
    DY = edy[:, None, None, :]
    PX, PY, DX, DY = (jnp.broadcast_to(t, (N, K, K, 4)) for t in (PX, PY, DX, DY))
    t0, t1 = _clip_t(PX, PY, DX, DY, bnx, bny, boff)
    er = jnp.sum(_seg_green(PX, PY, DX, DY, t0, t1), axis=-1)
    rot_area = pix + er
    # axis-aligned fallback (also the swap case theta = pi/2)
    swap = jnp.abs(s) > jnp.abs(c)
    ww = jnp.where(swap, h, w)[:, None]
    hh2 = jnp.where(swap, w, h)[:, None]
    ox = _overlap_1d(u[:, :-1], u[:, 1:], 0.5 * ww)
    oy = _overlap_1d(v[:, :-1], v[:, 1:], 0.5 * hh2)
    sep_area = oy[:, :, None] * ox[:, None, :]
    aligned = (jnp.abs(s * c) < 1e-14)[:, None, None]
    return jnp.where(aligned, sep_area, rot_area)


def weights(
    kind: str, method: str, params: tuple[Array, ...], u: Array, v: Array, subpixels: int = 5
) -> Array:
    """Dispatch: overlap weights (N, K, K) for one aperture kind and pixel method."""
    if method == "center":
        return weights_center(kind, params, u, v)
    if method == "subpixel":
        return weights_subpixel(kind, params, u, v, subpixels)
    if method != "exact":
        raise ValueError(f"method must be 'exact', 'center' or 'subpixel', got {method!r}")
    if kind == "circle":
        return weights_circle_exact(params[0], u, v)
    if kind == "ellipse":
        return weights_ellipse_exact(*params, u, v)
    if kind == "rectangle":
        return weights_rectangle_exact(*params, u, v)
    raise ValueError(f"unknown aperture kind {kind!r}")
