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
    areas, computed once per grid edge. Rectangles use a corner integral too: the area of the
    rectangle clipped to each grid corner's lower-left quadrant (polygon clipping, shoelace area).
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


def _clip_polygon(px: Array, py: Array, lim: Array, axis: int) -> tuple[Array, Array]:
    """Clip closed polygons (vertices along the last axis) to ``coord <= lim``, as 2 points per edge.

    ``axis`` 0 clips in x, 1 in y; ``lim`` broadcasts against the vertex arrays without their last
    axis. Each edge A -> B gives the clipped segment [S, E] (Sutherland–Hodgman with a fixed vertex
    count): an edge wholly outside gives A and B projected onto the line ``coord = lim``. Consecutive
    points on that line are collinear, so the extra points add no area; the clipped points get
    ``coord = lim`` exactly, and each intersection is computed once and shared by the two boundary
    pieces that meet there, so the closed boundary is exactly consistent.
    """
    shape = jnp.broadcast_shapes(px.shape, py.shape, lim.shape + (1,))
    c, o = (jnp.broadcast_to(q, shape) for q in ((px, py) if axis == 0 else (py, px)))
    L = lim[..., None]
    cb, ob = jnp.roll(c, -1, axis=-1), jnp.roll(o, -1, axis=-1)
    ina, inb = c <= L, cb <= L
    cross = ina != inb
    den = jnp.where(cross, cb - c, 1.0)
    t = jnp.clip((L - c) / den, 0.0, 1.0)
    oi = o + t * (ob - o)  # the other coordinate at the crossing
    Lb = jnp.broadcast_to(L, c.shape)
    s_c = jnp.where(ina, c, Lb)
    s_o = jnp.where(ina, o, jnp.where(inb, oi, o))
    e_c = jnp.where(inb, cb, Lb)
    e_o = jnp.where(inb, ob, jnp.where(ina, oi, ob))
    nc = jnp.stack([s_c, e_c], axis=-1).reshape(c.shape[:-1] + (2 * c.shape[-1],))
    no = jnp.stack([s_o, e_o], axis=-1).reshape(c.shape[:-1] + (2 * c.shape[-1],))
    return (nc, no) if axis == 0 else (no, nc)


def rectangle_corner_integral(w: Array, h: Array, theta: Array, u: Array, v: Array) -> Array:
    """``G(X, Y)`` = area of rectangle ∩ {x <= X, y <= Y} at every grid corner -> (N, K+1, K+1).

    ``G[n, a, b]`` is at corner ``(u[n, b], v[n, a])`` (as :func:`circle_corner_integral`), so a
    pixel's overlap is the four-corner difference. The rectangle (full widths ``w`` along x', ``h``
    along y', rotated by ``theta`` CCW; each (N,)) is clipped to x <= X (per column: O(K) work),
    then to y <= Y, and the area is the shoelace sum of the 16 clipped points. Corners left of or
    below the rectangle give exact zeros, and corners right of it repeat the same column values, so
    pixels outside its bounding box get exact zeros.
    """
    c, s = jnp.cos(theta)[:, None], jnp.sin(theta)[:, None]
    hw, hh = 0.5 * w[:, None], 0.5 * h[:, None]
    sx = jnp.asarray([1.0, 1.0, -1.0, -1.0], u.dtype)  # CCW corners in the rectangle frame
    sy = jnp.asarray([-1.0, 1.0, 1.0, -1.0], u.dtype)
    qx, qy = sx * hw, sy * hh
    vx, vy = qx * c - qy * s, qx * s + qy * c  # (N, 4) in the pixel frame
    # clip to x <= X for every column corner: (N, K+1, 8)
    x1, y1 = _clip_polygon(vx[:, None, :], vy[:, None, :], u, axis=0)
    # then to y <= Y for every row corner: (N, K+1 rows, K+1 cols, 16)
    x2, y2 = _clip_polygon(x1[:, None], y1[:, None], v[:, :, None], axis=1)
    area = 0.5 * jnp.sum(x2 * jnp.roll(y2, -1, axis=-1) - jnp.roll(x2, -1, axis=-1) * y2, axis=-1)
    below = (u <= jnp.min(vx, axis=1, keepdims=True))[:, None, :] | (
        v <= jnp.min(vy, axis=1, keepdims=True)
    )[:, :, None]
    return jnp.where(below, 0.0, area)


def weights_rectangle_exact(w: Array, h: Array, theta: Array, u: Array, v: Array) -> Array:
    """Exact overlap of rotated rectangles (full widths w, h, angle theta) with cutout pixels.

    The four-corner difference of :func:`rectangle_corner_integral`. (An earlier Green's-theorem
    version clipped pixel edges to the rectangle and rectangle edges to each pixel separately: the
    two computed the same crossing points in two ways, and under XLA's FMA contraction they differed
    enough, for nearly axis-aligned rectangles, to cost ~1e-9 in area; here each crossing is
    computed once.)
    """
    return corner_difference(rectangle_corner_integral(w, h, theta, u, v))


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
