"""Robust, batched, masked statistics in JAX.

Every function reduces the **last** axis of ``values`` and broadcasts over all leading axes, so one call
handles a whole batch (for example one row of annulus pixels per source, or one row of pixels per
background-mesh box). Validity is a boolean array of the same shape (``True`` = use this element);
non-finite values are always treated as invalid, so NaN-marked pixels never need a separate mask.

Rows with no valid elements return NaN rather than raising, so one bad row never spoils a batch.

Implementation note: each function sorts a row at most once. Sigma clipping about the median keeps a
contiguous run of the sorted row, so the clipped median is a single gather at a computed index and the
clipped mean and standard deviation are masked sums; no iteration re-sorts. This keeps the cost at one
sort plus ``maxiters`` linear passes, which matters for 10^5 annuli at once.

The dtype follows the input (run under ``jax.enable_x64(True)`` with float64 input for float64 results).
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

__all__ = [
    "biweight_location",
    "biweight_scale",
    "masked_mean_std",
    "masked_median",
    "masked_median_select",
    "mmm_sky",
    "sigma_clip_mask",
    "sigma_clipped_stats",
    "sky_mode",
]


def _prepare(values: ArrayLike, valid: ArrayLike | None) -> tuple[Array, Array]:
    """Return (values, valid) with NaN/inf folded into ``valid``."""
    v = jnp.asarray(values)
    if not jnp.issubdtype(v.dtype, jnp.floating):
        v = v.astype(jnp.result_type(float))
    ok = jnp.isfinite(v)
    if valid is not None:
        ok = ok & jnp.broadcast_to(jnp.asarray(valid, dtype=bool), v.shape)
    return v, ok


def _sorted_valid(v: Array, ok: Array) -> tuple[Array, Array]:
    """Sort each row with invalid elements pushed to +inf; return (sorted, n_valid)."""
    s = jnp.sort(jnp.where(ok, v, jnp.inf), axis=-1)
    n = jnp.sum(ok, axis=-1)
    return s, n


def _median_from_sorted(s: Array, lo: Array, n: Array) -> Array:
    """Median of the contiguous run ``s[..., lo:lo+n]`` of a sorted row (NaN where n == 0)."""
    last = s.shape[-1] - 1
    i1 = jnp.clip(lo + (n - 1) // 2, 0, last)
    i2 = jnp.clip(lo + n // 2, 0, last)
    a = jnp.take_along_axis(s, i1[..., None], axis=-1)[..., 0]
    b = jnp.take_along_axis(s, i2[..., None], axis=-1)[..., 0]
    med = 0.5 * (a + b)
    return jnp.where(n > 0, med, jnp.nan)


def masked_mean_std(
    values: ArrayLike, valid: ArrayLike | None = None, ddof: int = 0
) -> tuple[Array, Array]:
    """Mean and standard deviation of the valid elements along the last axis.

    Parameters
    ----------
    values : array_like, shape (..., M)
        Samples.
    valid : array_like of bool, shape (..., M), optional
        ``True`` for elements to use. Non-finite values are always excluded.
    ddof : int
        Delta degrees of freedom for the standard deviation (0 = population std, as astropy's
        ``sigma_clipped_stats`` uses).

    Returns
    -------
    mean, std : Array, shape (...)
        NaN where fewer than ``ddof + 1`` elements are valid.
    """
    v, ok = _prepare(values, valid)
    n = jnp.sum(ok, axis=-1)
    w = jnp.where(ok, v, 0.0)
    mean = jnp.sum(w, axis=-1) / jnp.maximum(n, 1)
    # two-pass variance: avoids the cancellation of E[x^2] - E[x]^2 in float32
    d = jnp.where(ok, v - mean[..., None], 0.0)
    var = jnp.sum(d * d, axis=-1) / jnp.maximum(n - ddof, 1)
    mean = jnp.where(n > 0, mean, jnp.nan)
    std = jnp.where(n > ddof, jnp.sqrt(var), jnp.nan)
    return mean, std


def masked_median(values: ArrayLike, valid: ArrayLike | None = None) -> Array:
    """Median of the valid elements along the last axis.

    Parameters
    ----------
    values : array_like, shape (..., M)
        Samples.
    valid : array_like of bool, shape (..., M), optional
        ``True`` for elements to use. Non-finite values are always excluded.

    Returns
    -------
    Array, shape (...)
        The median (mean of the two middle elements for an even count); NaN for rows with no valid
        elements.
    """
    v, ok = _prepare(values, valid)
    s, n = _sorted_valid(v, ok)
    return _median_from_sorted(s, jnp.zeros_like(n), n)


def masked_median_select(values: ArrayLike, valid: ArrayLike | None = None) -> Array:
    """Exact median of the valid elements along the last axis, by selection instead of sorting.

    Same result as :func:`masked_median` (bit for bit: the middle order statistics are elements of the
    row, averaged the same way), but without a sort: a bracket ``[a, b]`` of row elements containing the
    wanted order statistic is narrowed by counting passes (one fused compare-and-reduce over the row
    each) at thresholds interpolated on rank, until ``a == b``. Each pass moves an end of the bracket to
    a row element strictly inside it, so it ends after at most as many passes as there are distinct
    values; for sky-like rows it takes a handful. XLA's CPU sort is slow (a comparator call per
    comparison), so for rows of a few hundred elements this is several times faster; it is the annulus
    median of :func:`jaxphot.aperture.aperture_photometry`.

    Parameters
    ----------
    values : array_like, shape (..., M)
        Samples.
    valid : array_like of bool, shape (..., M), optional
        ``True`` for elements to use. Non-finite values are always excluded.

    Returns
    -------
    Array, shape (...)
        The median (mean of the two middle elements for an even count); NaN for rows with no valid
        elements.
    """
    v, ok = _prepare(values, valid)
    lead = v.shape[:-1]
    v2 = v.reshape((-1, v.shape[-1]))
    ok2 = ok.reshape(v2.shape)
    med = _select_median_2d(v2, ok2)
    return med.reshape(lead)


def _select_median_2d(v: Array, ok: Array) -> Array:
    inf = jnp.asarray(jnp.inf, v.dtype)
    n = jnp.sum(ok, axis=-1)
    k = (n - 1) // 2  # lower middle order statistic (0-based)
    a = jnp.min(jnp.where(ok, v, inf), axis=-1)  # s_k >= a; #(v < a) = ca
    b = jnp.max(jnp.where(ok, v, -inf), axis=-1)  # s_k <= b; #(v <= b) = cb
    ca = jnp.zeros_like(n)
    cb = n
    empty = n == 0
    a = jnp.where(empty, 0.0, a)
    b = jnp.where(empty, 0.0, b)
    fk = k.astype(v.dtype) + 0.5

    def cond(c):
        a, b, _, _ = c
        return jnp.any(a < b)

    def body(c):
        a, b, ca, cb = c
        frac = (fk - ca) / jnp.maximum(cb - ca, 1).astype(v.dtype)
        frac = jnp.clip(frac, 1.0 / 64, 63.0 / 64)
        t = a + (b - a) * frac
        # strictly above a (progress) and at most b
        t = jnp.minimum(jnp.maximum(t, jnp.nextafter(a, inf)), b)
        lt = ok & (v < t[:, None])
        cnt = jnp.sum(lt, axis=-1)
        mx = jnp.max(jnp.where(lt, v, -inf), axis=-1)
        mn = jnp.min(jnp.where(ok & ~lt, v, inf), axis=-1)
        go_up = cnt <= k  # s_k >= t, so s_k >= min{v >= t}
        active = a < b
        a2 = jnp.where(active & go_up, mn, a)
        ca2 = jnp.where(active & go_up, cnt, ca)
        b2 = jnp.where(active & ~go_up, mx, b)
        cb2 = jnp.where(active & ~go_up, cnt, cb)
        return a2, b2, ca2, cb2

    a, _, _, _ = jax.lax.while_loop(cond, body, (a, b, ca, cb))
    lo = a
    # upper middle element for even counts: s_{k+1} = lo if more than k+1 elements are <= lo
    le = jnp.sum(ok & (v <= lo[:, None]), axis=-1)
    nxt = jnp.min(jnp.where(ok & (v > lo[:, None]), v, inf), axis=-1)
    hi = jnp.where(le > k + 1, lo, nxt)
    hi = jnp.where(n % 2 == 1, lo, hi)
    med = 0.5 * (lo + hi)
    return jnp.where(empty, jnp.nan, med)


def _clip_core(
    v: Array,
    ok: Array,
    sigma_lower: float,
    sigma_upper: float,
    maxiters: int,
    cenfunc: str,
) -> tuple[Array, Array, Array, Array]:
    """Shared sigma-clipping loop. Returns (kept mask, mean, median, std) of the kept sample."""
    s, n = _sorted_valid(v, ok)
    keep = ok
    lo = jnp.zeros_like(n)
    m = n
    for _ in range(maxiters):
        # statistics of the current sample; the kept set is always a contiguous run [lo, lo+m) of s
        mean, std = masked_mean_std(v, keep)
        med = _median_from_sorted(s, lo, m)
        cen = med if cenfunc == "median" else mean
        low = cen - sigma_lower * std
        high = cen + sigma_upper * std
        # a row whose std is 0 or NaN keeps what it has (nothing can be clipped meaningfully)
        usable = jnp.isfinite(std) & (std > 0)
        new_keep = ok & (v >= low[..., None]) & (v <= high[..., None])
        keep = jnp.where(usable[..., None], new_keep, keep)
        lo = jnp.where(usable, jnp.sum(s < low[..., None], axis=-1), lo)
        m = jnp.sum(keep, axis=-1)
    mean, std = masked_mean_std(v, keep)
    med = _median_from_sorted(s, lo, m)
    return keep, mean, med, std


def sigma_clip_mask(
    values: ArrayLike,
    valid: ArrayLike | None = None,
    sigma: float = 3.0,
    maxiters: int = 5,
    cenfunc: Literal["median", "mean"] = "median",
    *,
    sigma_lower: float | None = None,
    sigma_upper: float | None = None,
) -> Array:
    """Iterative sigma clipping; return which elements survive.

    Each iteration computes the centre (median or mean) and the population standard deviation of the
    surviving elements and keeps ``cen - sigma_lower*std <= x <= cen + sigma_upper*std``. Running a fixed
    ``maxiters`` iterations gives the same result as astropy's ``sigma_clip`` (which stops early at
    convergence, a fixed point of the same map) and keeps the function jit-friendly.

    Parameters
    ----------
    values : array_like, shape (..., M)
        Samples (e.g. sky pixels, counts).
    valid : array_like of bool, shape (..., M), optional
        Initial validity; non-finite values are always invalid.
    sigma : float
        Clipping threshold in standard deviations, used for both sides unless overridden.
    maxiters : int
        Number of clipping iterations (static).
    cenfunc : {"median", "mean"}
        Centre used for the clipping bounds.
    sigma_lower, sigma_upper : float, optional
        Asymmetric thresholds.

    Returns
    -------
    Array of bool, shape (..., M)
        ``True`` for elements that are valid and not clipped.
    """
    if cenfunc not in ("median", "mean"):
        raise ValueError(f"cenfunc must be 'median' or 'mean', got {cenfunc!r}")
    v, ok = _prepare(values, valid)
    sl = sigma if sigma_lower is None else sigma_lower
    su = sigma if sigma_upper is None else sigma_upper
    keep, _, _, _ = _clip_core(v, ok, sl, su, int(maxiters), cenfunc)
    return keep


def sigma_clipped_stats(
    values: ArrayLike,
    valid: ArrayLike | None = None,
    sigma: float = 3.0,
    maxiters: int = 5,
    cenfunc: Literal["median", "mean"] = "median",
) -> tuple[Array, Array, Array]:
    """Mean, median and standard deviation after iterative sigma clipping.

    Matches ``astropy.stats.sigma_clipped_stats`` defaults (median centre, population std).

    Parameters
    ----------
    values : array_like, shape (..., M)
        Samples.
    valid : array_like of bool, shape (..., M), optional
        ``True`` for elements to use. Non-finite values are always excluded.
    sigma : float
        Clipping threshold in standard deviations.
    maxiters : int
        Number of clipping iterations.
    cenfunc : {"median", "mean"}
        Centre used for the clipping bounds.

    Returns
    -------
    mean, median, std : Array, shape (...)
        Statistics of the surviving elements, in the units of ``values``; NaN for empty rows.
    """
    if cenfunc not in ("median", "mean"):
        raise ValueError(f"cenfunc must be 'median' or 'mean', got {cenfunc!r}")
    v, ok = _prepare(values, valid)
    _, mean, med, std = _clip_core(v, ok, sigma, sigma, int(maxiters), cenfunc)
    return mean, med, std


def sky_mode(mean: ArrayLike, median: ArrayLike) -> Array:
    """Pearson's mode estimate ``3*median - 2*mean``.

    For a sky distribution skewed to high values by faint sources this moves the estimate toward the
    mode; it is biased high for strongly contaminated skies (docs/conventions.md), so prefer feeding it
    sigma-clipped mean and median.

    Parameters
    ----------
    mean, median : array_like
        Broadcastable estimates, same units.

    Returns
    -------
    Array
        The mode estimate.
    """
    return 3.0 * jnp.asarray(median) - 2.0 * jnp.asarray(mean)


def _mad(v: Array, ok: Array, center: Array) -> Array:
    """Median absolute deviation about ``center`` (unscaled)."""
    return masked_median(jnp.abs(v - center[..., None]), ok)


def biweight_location(
    values: ArrayLike, valid: ArrayLike | None = None, c: float = 6.0, M: ArrayLike | None = None
) -> Array:
    """Tukey biweight location (one step from ``M``), as ``astropy.stats.biweight_location``.

    ``loc = M + sum((x-M) (1-u^2)^2) / sum((1-u^2)^2)`` over ``|u| < 1`` with
    ``u = (x - M) / (c * MAD)``.

    Parameters
    ----------
    values : array_like, shape (..., M)
        Samples.
    valid : array_like of bool, shape (..., M), optional
        Elements to use; non-finite values are always excluded.
    c : float
        Tuning constant (6 by default).
    M : array_like, shape (...), optional
        Initial location; the median by default.

    Returns
    -------
    Array, shape (...)
        The location; equals ``M`` when the MAD is zero; NaN for empty rows.
    """
    v, ok = _prepare(values, valid)
    m0 = (
        masked_median(v, ok)
        if M is None
        else jnp.broadcast_to(jnp.asarray(M, v.dtype), v.shape[:-1])
    )
    mad = _mad(v, ok, m0)
    d = v - m0[..., None]
    u = d / jnp.where(mad > 0, c * mad, 1.0)[..., None]
    w = jnp.where(ok & (jnp.abs(u) < 1), (1 - u * u) ** 2, 0.0)
    num = jnp.sum(jnp.where(ok, d, 0.0) * w, axis=-1)
    den = jnp.sum(w, axis=-1)
    loc = m0 + num / jnp.where(den > 0, den, 1.0)
    return jnp.where(mad > 0, loc, m0)


def biweight_scale(
    values: ArrayLike,
    valid: ArrayLike | None = None,
    c: float = 9.0,
    M: ArrayLike | None = None,
    modify_sample_size: bool = False,
) -> Array:
    """Biweight midvariance square root (robust scale), as ``astropy.stats.biweight_scale``.

    Parameters
    ----------
    values : array_like, shape (..., M)
        Samples.
    valid : array_like of bool, shape (..., M), optional
        Elements to use; non-finite values are always excluded.
    c : float
        Tuning constant (9 by default).
    M : array_like, shape (...), optional
        Location; the median by default.
    modify_sample_size : bool
        If True, ``n`` counts only the elements with ``|u| < 1`` (astropy's option).

    Returns
    -------
    Array, shape (...)
        The scale, in the units of ``values``; 0 when the MAD is zero; NaN for empty rows.
    """
    v, ok = _prepare(values, valid)
    m0 = (
        masked_median(v, ok)
        if M is None
        else jnp.broadcast_to(jnp.asarray(M, v.dtype), v.shape[:-1])
    )
    mad = _mad(v, ok, m0)
    d = jnp.where(ok, v - m0[..., None], 0.0)
    u = d / jnp.where(mad > 0, c * mad, 1.0)[..., None]
    inside = ok & (jnp.abs(u) < 1)
    u2 = u * u
    n = jnp.sum(inside if modify_sample_size else ok, axis=-1)
    num = jnp.sum(jnp.where(inside, d * d * (1 - u2) ** 4, 0.0), axis=-1)
    den = jnp.sum(jnp.where(inside, (1 - u2) * (1 - 5 * u2), 0.0), axis=-1)
    scale = jnp.sqrt(n * num) / jnp.where(den != 0, jnp.abs(den), 1.0)
    scale = jnp.where(mad > 0, scale, 0.0)
    return jnp.where(jnp.sum(ok, axis=-1) > 0, scale, jnp.nan)


def mmm_sky(
    values: ArrayLike,
    valid: ArrayLike | None = None,
    sigma: float = 3.0,
    maxiters: int = 10,
) -> tuple[Array, Array]:
    """DAOPHOT MMM-like sky: iterate a mode estimate and clip about the mode.

    Each iteration computes mean, median and std of the surviving pixels and takes
    ``mode = 3*median - 2*mean`` when ``mean > median`` (the sky is skewed high by stars, as in DAOPHOT's
    MMM), else the mean; then keeps pixels within ``mode ± sigma*std``. This is simpler than Stetson's
    MMM (no final bias correction of the mode, no asymmetric rejection table), hence "MMM-like".

    Parameters
    ----------
    values : array_like, shape (..., M)
        Sky samples.
    valid : array_like of bool, shape (..., M), optional
        Elements to use; non-finite values are always excluded.
    sigma : float
        Clipping half-width in standard deviations.
    maxiters : int
        Number of iterations (static).

    Returns
    -------
    sky, sky_sigma : Array, shape (...)
        The sky estimate and the standard deviation of the surviving pixels; NaN for empty rows.
    """
    v, ok = _prepare(values, valid)
    s, n = _sorted_valid(v, ok)
    keep = ok
    lo = jnp.zeros_like(n)
    m = n
    for _ in range(int(maxiters)):
        mean, std = masked_mean_std(v, keep)
        med = _median_from_sorted(s, lo, m)
        mode = jnp.where(mean > med, sky_mode(mean, med), mean)
        low = mode - sigma * std
        high = mode + sigma * std
        usable = jnp.isfinite(std) & (std > 0)
        new_keep = ok & (v >= low[..., None]) & (v <= high[..., None])
        keep = jnp.where(usable[..., None], new_keep, keep)
        lo = jnp.where(usable, jnp.sum(s < low[..., None], axis=-1), lo)
        m = jnp.sum(keep, axis=-1)
    mean, std = masked_mean_std(v, keep)
    med = _median_from_sorted(s, lo, m)
    mode = jnp.where(mean > med, sky_mode(mean, med), mean)
    return mode, std
