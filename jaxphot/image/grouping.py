"""Grouping of stars whose PSFs overlap, and bucketing of group sizes for batched fits.

Stars closer than a critical separation are linked, and groups are the connected
components of that graph (DAOPHOT's NSTAR groups; photutils' ``SourceGrouper``). Here the
separation grows with the brighter star's flux, because a bright star's wings disturb a
neighbour further away. Groups larger than ``max_group_size`` are split, first by tightening
the separation (which keeps the closest pairs together), then by median cuts in space, so
that no group can exhaust memory in the batched fitter.

None of these splits separates two stars closer than a "keep" separation (``keep_sep``, about
one FWHM): the fluxes of such a pair are strongly correlated (for a Gaussian PSF of width σ
the normalised overlap of the two PSFs, ∫P₁P₂ / ∫P², is exp(−d²/4σ²): 1/4 at one FWHM, 0.93
at 0.23 FWHM), and fitting each with the other held fixed as a neighbour gives both fluxes
wrong. The connected components of those close pairs ("atoms") are cut between, never
through; only an atom that alone exceeds the largest group is split, as without ``keep_sep``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

__all__ = ["group_stars", "pair_critical_separation", "group_sizes", "bucket_groups", "group_buckets",
           "group_slots", "smallest_bucket", "Bucket", "STAR_BUCKETS"]


def pair_critical_separation(
    flux_i, flux_j, crit_sep: float, sigma: float, flux_ref: float, max_factor: float = 3.0
) -> np.ndarray:
    """Critical separation of pairs of stars, widened for bright stars.

    For a Gaussian PSF of width σ, a star of flux F disturbs a neighbour at distance d by
    F·exp(−d²/2σ²). Asking the brighter star of the pair to be no more disturbing than a
    ``flux_ref`` star at ``crit_sep`` gives

        d_crit² = crit_sep² + 2σ² · max(0, ln(max(F_i, F_j) / flux_ref)),

    capped at ``max_factor · crit_sep``.

    Parameters
    ----------
    flux_i, flux_j : array_like, shape (P,)
        Fluxes of the two stars of each pair (non-finite or ≤ 0 counts as faint).
    crit_sep, sigma, flux_ref : float
        Base separation (pixels), PSF σ (pixels), reference flux.
    max_factor : float
        Upper bound of d_crit / crit_sep.

    Returns
    -------
    ndarray, shape (P,)
        Critical separation in pixels.
    """
    f = np.fmax(np.asarray(flux_i, float), np.asarray(flux_j, float))
    with np.errstate(divide="ignore", invalid="ignore"):
        boost = np.where(np.isfinite(f) & (f > 0), np.log(f / flux_ref), 0.0)
    d2 = crit_sep**2 + 2.0 * sigma**2 * np.maximum(boost, 0.0)
    return np.minimum(np.sqrt(d2), max_factor * crit_sep)


def _components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    g = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
    return connected_components(g, directed=False)[1]


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Consecutive ids 1..G, numbered in order of each group's first star."""
    _, first, inv = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(1, len(first) + 1)
    return rank[inv.ravel()]


def _close_pairs(pts: np.ndarray, r: float) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs ``(i, j)`` of the rows of ``pts`` (P, 2) closer than ``r`` (strictly)."""
    if not r > 0 or len(pts) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pairs = cKDTree(pts).query_pairs(r, output_type="ndarray")
    close = np.hypot(*(pts[pairs[:, 0]] - pts[pairs[:, 1]]).T) < r
    return pairs[close, 0], pairs[close, 1]


def _atoms(pts: np.ndarray, keep_sep: float, max_size: int | None = None):
    """Atoms: the connected components of the pairs of rows of ``pts`` (P, 2) closer than
    ``keep_sep``, kept whole by every split.

    An atom of more than ``max_size`` stars cannot be kept whole: each of its stars is then an
    atom of its own, so that it is split as if there were no ``keep_sep``.

    Returns
    -------
    atom : (P,) int64
        Atom label of each row.
    i, j : (L,) int64
        The close pairs inside the atoms kept whole: links of every re-grouping.
    """
    i, j = _close_pairs(pts, keep_sep)
    atom = _components(len(pts), i, j)
    if max_size is None:
        return atom, i, j
    whole = np.bincount(atom)[atom] <= max_size
    atom = np.where(whole, atom, atom.max(initial=0) + 1 + np.arange(len(pts)))
    return atom, i[whole[i]], j[whole[i]]


def _pair_key(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Consecutive ids 0..U-1 of the distinct ``(a, b)`` pairs of non-negative ints, in their order."""
    return np.unique(a * (int(b.max(initial=0)) + 1) + b, return_inverse=True)[1].ravel()


def _longer_axis(lab: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Each star's coordinate along its group's longer axis (x on ties)."""
    ng = int(lab.max()) + 1
    lo_x, lo_y = np.full(ng, np.inf), np.full(ng, np.inf)
    hi_x, hi_y = np.full(ng, -np.inf), np.full(ng, -np.inf)
    np.minimum.at(lo_x, lab, xs)
    np.minimum.at(lo_y, lab, ys)
    np.maximum.at(hi_x, lab, xs)
    np.maximum.at(hi_y, lab, ys)
    use_x = (hi_x - lo_x) >= (hi_y - lo_y)
    return np.where(use_x[lab], xs, ys)


def _upper_half(lab: np.ndarray, coord: np.ndarray, unit: np.ndarray, size: np.ndarray) -> np.ndarray:
    """(n,) bool: the stars on the upper side of their group's median cut, units kept whole.

    ``lab``, ``coord``, ``unit``: each star's group, coordinate along the cut axis and unit
    (atom) label; ``size``: stars per group, indexed by group. Units are ranked by their mean
    coordinate; one goes up when the middle of its star ranks is at or past the group's
    middle. The first unit of a group always stays down and the last always goes up, so every
    group of two or more units is split; with single-star units this is the plain median cut
    (the upper ``size - size // 2`` stars).
    """
    nu = int(unit.max()) + 1
    mean = np.bincount(unit, coord, nu) / np.maximum(np.bincount(unit, minlength=nu), 1)
    order = np.lexsort((coord, unit, mean[unit], lab))
    start = np.searchsorted(lab[order], lab[order], side="left")
    rank = np.empty(len(lab), np.int64)
    rank[order] = np.arange(len(lab)) - start
    lo, hi = np.full(nu, len(lab)), np.full(nu, -1)
    np.minimum.at(lo, unit, rank)
    np.maximum.at(hi, unit, rank)
    return lo[unit] + hi[unit] >= size[lab] - 1


def _bisect(labels: np.ndarray, x: np.ndarray, y: np.ndarray, max_size: int,
            atom: np.ndarray | None = None) -> np.ndarray:
    """Split every group larger than ``max_size`` by median cuts along its longer axis.

    With ``atom`` ((N,) labels, each atom within one group and of at most ``max_size`` stars),
    cuts run between atoms, never through one.
    """
    labels = _relabel(labels)
    for _ in range(64):  # each pass cuts every oversized group in two, near its median
        size = np.bincount(labels)
        big = size[labels] > max_size
        if not big.any():
            return labels
        lab = labels[big]
        unit = np.arange(len(lab)) if atom is None else atom[big]
        half = _upper_half(lab, _longer_axis(lab, x[big], y[big]), unit, size)
        new = labels.copy()
        new[np.nonzero(big)[0][half]] = labels.max() + 1 + lab[half]
        labels = _relabel(new)
    if atom is not None and (np.bincount(labels)[labels] > max_size).any():
        return _bisect(labels, x, y, max_size)  # a last bound, not reached in practice
    return labels


def group_stars(
    x,
    y,
    flux=None,
    *,
    crit_sep: float,
    max_group_size: int = 25,
    sigma: float | None = None,
    flux_ref: float | None = None,
    max_factor: float = 3.0,
    shrink: float = 0.8,
    max_shrink_steps: int = 8,
    keep_sep: float = 0.0,
) -> np.ndarray:
    """Group stars whose PSFs overlap.

    Two stars are linked when their distance is below their pair's critical separation
    (see :func:`pair_critical_separation`; just ``crit_sep`` when ``flux`` is None). Groups
    are the connected components. A group of more than ``max_group_size`` stars is
    re-linked with the separation multiplied by ``shrink`` (up to ``max_shrink_steps``
    times), and whatever is still too large is cut at the median along its longer axis
    until every group fits. Neither step separates stars closer than ``keep_sep``.

    Parameters
    ----------
    x, y : array_like, shape (N,)
        Star positions in pixels.
    flux : array_like, shape (N,), optional
        Star fluxes (any consistent unit). Widens the separation around bright stars.
    crit_sep : float
        Base critical separation in pixels (a common choice is 2–2.5 × FWHM).
    max_group_size : int
        Largest group allowed.
    sigma : float, optional
        PSF σ in pixels for the flux widening; default ``crit_sep / 6`` (i.e. crit_sep ≈
        2.5 FWHM).
    flux_ref : float, optional
        Flux at which no widening happens; default the median finite positive flux.
    max_factor : float
        Cap on the widening, as a multiple of ``crit_sep``.
    shrink, max_shrink_steps : float, int
        Tightening factor and number of tries before spatial bisection.
    keep_sep : float
        Separation in pixels (≥ 0; 0, the default, for none) below which two stars are always
        in the same group, whatever ``crit_sep`` and the splits of oversized groups: a pair
        that close is near-degenerate and must be fitted together (about 1 FWHM is right).
        The exception is a connected set of such pairs (an "atom") of more than
        ``max_group_size`` stars, which is split as without ``keep_sep``.

    Returns
    -------
    group_id : ndarray of int64, shape (N,)
        1..G, numbered in order of each group's first star. Every input row gets an id; a
        star with a non-finite position is a group of its own.

    Raises
    ------
    ValueError
        If the shapes differ, ``crit_sep``/``max_group_size`` are not positive or
        ``keep_sep`` is negative.
    """
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    n = len(x)
    if len(y) != n:
        raise ValueError(f"x and y must have the same length, got {n} and {len(y)}")
    if not (np.isfinite(crit_sep) and crit_sep > 0):
        raise ValueError(f"crit_sep must be a positive number of pixels, got {crit_sep}")
    if int(max_group_size) < 1:
        raise ValueError(f"max_group_size must be >= 1, got {max_group_size}")
    if not 0 < shrink < 1:
        raise ValueError(f"shrink must be in (0, 1), got {shrink}")
    if not (np.isfinite(keep_sep) and keep_sep >= 0):
        raise ValueError(f"keep_sep must be a non-negative number of pixels, got {keep_sep}")
    if n == 0:
        return np.zeros(0, np.int64)
    if flux is not None:
        flux = np.asarray(flux, dtype=float).ravel()
        if len(flux) != n:
            raise ValueError(f"flux must have the same length as x ({n}), got {len(flux)}")
    sig = crit_sep / 6.0 if sigma is None else float(sigma)
    ok = np.isfinite(x) & np.isfinite(y)
    idx = np.nonzero(ok)[0]
    pts = np.c_[x[idx], y[idx]]

    def link(scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cs = crit_sep * scale
        if flux is None:
            pairs = cKDTree(pts).query_pairs(cs, output_type="ndarray")
            return pairs[:, 0], pairs[:, 1], np.full(len(pairs), cs)
        good = flux[idx][np.isfinite(flux[idx]) & (flux[idx] > 0)]
        fref = float(np.median(good)) if flux_ref is None and len(good) else flux_ref or 1.0
        rmax = max_factor * cs
        pairs = cKDTree(pts).query_pairs(rmax, output_type="ndarray")
        i, j = pairs[:, 0], pairs[:, 1]
        dc = pair_critical_separation(flux[idx][i], flux[idx][j], cs, sig * scale, fref, max_factor)
        return i, j, dc

    i, j, dc = link(1.0)
    d = np.hypot(*(pts[i] - pts[j]).T) if len(i) else np.zeros(0)
    linked = d < dc
    # The close pairs are links at every step, so atoms are never split by the re-linking.
    atom, ki, kj = _atoms(pts, keep_sep, int(max_group_size))
    lab = _components(len(idx), np.r_[i[linked], ki], np.r_[j[linked], kj])
    # Tighten only the oversized groups, keeping the others as they are.
    for step in range(1, max_shrink_steps + 1):
        size = np.bincount(lab)
        big = size[lab] > max_group_size
        if not big.any():
            break
        keep_pair = linked & big[i] & big[j] & (d < dc * shrink**step)
        sub = _components(len(idx), np.r_[i[keep_pair], ki], np.r_[j[keep_pair], kj])
        lab = np.where(big, lab.max() + 1 + sub, lab)
        lab = _relabel(lab)
    lab = _bisect(lab, pts[:, 0], pts[:, 1], int(max_group_size), atom)

    out = np.empty(n, np.int64)
    out[idx] = lab
    nbad = n - len(idx)
    out[~ok] = lab.max(initial=0) + 1 + np.arange(nbad)
    return _relabel(out)


def group_sizes(group_id) -> tuple[np.ndarray, np.ndarray]:
    """Unique group ids and the number of stars in each.

    Parameters
    ----------
    group_id : array_like of int, shape (N,)

    Returns
    -------
    ids, sizes : ndarray, shape (G,)
    """
    ids, sizes = np.unique(np.asarray(group_id), return_counts=True)
    return ids, sizes


def smallest_bucket(needs, capacities) -> np.ndarray:
    """Index of the smallest bucket that holds each item, for buckets that grow in every need.

    Parameters
    ----------
    needs : sequence of D arrays, each shape (G,)
        What each item needs (e.g. its number of stars, its extent in pixels).
    capacities : sequence of D arrays, each shape (B,)
        What each bucket holds, in the same order as ``needs``; every one ascending, so that a
        bucket holds everything a smaller one does.

    Returns
    -------
    ndarray of int64, shape (G,)
        Index into the buckets; ``B`` where no bucket holds the item.
    """
    idx = [np.searchsorted(np.asarray(c), np.asarray(n), side="left")
           for n, c in zip(needs, capacities, strict=True)]
    return np.maximum.reduce(idx).astype(np.int64)


def bucket_groups(group_id, buckets=None) -> dict[int, np.ndarray]:
    """Assign groups to a few padded sizes, so a batched fit compiles once per bucket.

    Parameters
    ----------
    group_id : array_like of int, shape (N,)
    buckets : sequence of int, optional
        Allowed padded group sizes, ascending. Default: powers of two up to the largest
        group (1, 2, 4, 8, ...).

    Returns
    -------
    dict
        ``{bucket_size: group ids}`` for every non-empty bucket; each group goes to the
        smallest bucket that holds it.

    Raises
    ------
    ValueError
        If a group is larger than the largest bucket.
    """
    ids, sizes = group_sizes(group_id)
    if len(ids) == 0:
        return {}
    if buckets is None:
        top = int(2 ** np.ceil(np.log2(sizes.max())))
        buckets = 2 ** np.arange(int(np.log2(top)) + 1)
    b = np.sort(np.asarray(buckets, dtype=np.int64))
    if sizes.max() > b[-1]:
        raise ValueError(f"a group of {sizes.max()} stars exceeds the largest bucket {b[-1]}")
    which = b[smallest_bucket([sizes], [b])]
    return {int(s): ids[which == s] for s in np.unique(which)}


#: Stars per cutout that the whole-image fit compiles for (groups are padded up to one of these).
STAR_BUCKETS = (1, 2, 4, 8, 16)


class Bucket(NamedTuple):
    """One compiled fit shape of :func:`group_buckets` and the groups padded to it."""

    size: int  #: cutout side, pixels
    k: int  #: star slots per cutout
    group_ids: np.ndarray  #: (G,) ids of the groups in this bucket


def _group_stats(gid, x, y):
    """Size and extent (max of x/y span, +1 px for the rounding of the cutout centre).

    Returns two ``(max(gid) + 1,)`` arrays indexed by group id (entry 0 is unused: size 0).
    """
    ng = int(gid.max()) + 1
    size = np.bincount(gid, minlength=ng)
    lo_x = np.full(ng, np.inf)
    hi_x = np.full(ng, -np.inf)
    lo_y, hi_y = lo_x.copy(), hi_x.copy()
    np.minimum.at(lo_x, gid, x)
    np.maximum.at(hi_x, gid, x)
    np.minimum.at(lo_y, gid, y)
    np.maximum.at(hi_y, gid, y)
    with np.errstate(invalid="ignore"):
        extent = np.maximum(hi_x - lo_x, hi_y - lo_y) + 1.0
    extent[size <= 1] = 0.0
    return size, extent


def _relabel_by_id(gid):
    """Consecutive ids 1..G in order of the old ids."""
    return np.unique(gid, return_inverse=True)[1].ravel() + 1


def _unfit_groups(gid, x, y, ks, ext):
    """(max(gid) + 1,) bool: groups that no (K, extent) bucket holds."""
    size, extent = _group_stats(gid, x, y)
    return smallest_bucket([size, extent], [ks, ext]) == len(ks)


def _split_unfit(gid, x, y, ks, ext, part):
    """Give the stars of every group that no bucket holds the ids of their ``part`` ((N,)
    labels) within it: a group is split along ``part``'s boundaries."""
    bad = _unfit_groups(gid, x, y, ks, ext)[gid]
    if not bad.any():
        return gid
    gid = gid.copy()
    gid[bad] = gid.max() + 1 + _pair_key(gid[bad], part[bad])
    return _relabel_by_id(gid)


def group_buckets(x, y, crit_sep: float, max_k: int, fit_half: int,
                  keep_sep: float = 0.0) -> tuple[np.ndarray, list[Bucket]]:
    """Groups of live stars and the padded (cutout size, K) buckets they are fitted in.

    A group whose member count or extent does not fit the largest bucket is re-grouped with a
    tighter separation, and what still does not fit is split into its atoms (the components
    of the pairs closer than ``keep_sep``), then what of those still does not fit into single
    stars (neighbour subtraction then couples them across outer iterations). Two stars closer
    than ``keep_sep`` are thus in different groups only when their atom alone is too large
    (stars) or too wide (extent) for every bucket.

    Parameters
    ----------
    x, y : (N,) arrays
        Finite star positions, pixels.
    crit_sep : float
        Critical separation of :func:`group_stars`, pixels.
    max_k : int
        Most stars per group; rounded down to one of :data:`STAR_BUCKETS`.
    fit_half : int
        Half size of the fitting box around a star, pixels.
    keep_sep : float
        Pairs closer than this (pixels) are never split (see :func:`group_stars`); about one
        FWHM. 0 (the default) for none.

    Returns
    -------
    group_id : (N,) int64 array
        1..G.
    buckets : list of Bucket
        The non-empty buckets, by increasing K; each group is in the smallest that holds it.
    """
    ks = np.array([k for k in STAR_BUCKETS if k <= max(1, max_k)])
    sep = int(math.ceil(crit_sep))
    # Extent (px) a K bucket holds: a pair is at most crit_sep apart; bigger groups are
    # compact chains, allowed ~log2(K) links, so cutouts stay small (fast, few shapes).
    ext = np.array([0 if k == 1 else (int(math.log2(k)) * sep + 1) for k in ks])
    sizes = 2 * fit_half + 1 + 2 * np.ceil(ext / 2).astype(int)
    if len(x) == 0:
        return np.zeros(0, np.int64), []
    kw = dict(max_group_size=int(ks[-1]), keep_sep=keep_sep)
    gid = group_stars(x, y, crit_sep=crit_sep, **kw)
    scale = 1.0
    for _ in range(6):
        bad_g = _unfit_groups(gid, x, y, ks, ext)
        if not bad_g.any():
            break
        bad = bad_g[gid]
        scale *= 0.7
        sub = group_stars(x[bad], y[bad], crit_sep=crit_sep * scale, **kw)
        gid = gid.copy()
        gid[bad] = gid.max() + sub
        gid = _relabel_by_id(gid)
    if _unfit_groups(gid, x, y, ks, ext).any():
        gid = _split_unfit(gid, x, y, ks, ext, _atoms(np.c_[x, y], keep_sep)[0])
        gid = _split_unfit(gid, x, y, ks, ext, np.arange(len(x)))
    which = smallest_bucket(_group_stats(gid, x, y), [ks, ext])
    which[0] = -1  # id 0 is no group
    out = []
    for i, k in enumerate(ks):
        ids = np.nonzero(which == i)[0]
        if len(ids):
            out.append(Bucket(int(sizes[i]), int(k), ids))
    return gid, out


def group_slots(gid: np.ndarray, group_ids: np.ndarray, k: int) -> np.ndarray:
    """(G, K) indices of the stars of each group in ``group_ids``, padded with -1."""
    order = np.argsort(gid, kind="stable")
    starts = np.searchsorted(gid[order], np.arange(gid.max() + 2))
    cnt = starts[group_ids + 1] - starts[group_ids]
    slot = np.full((len(group_ids), k), -1, np.int64)
    rank = np.arange(k)[None, :]
    take = rank < cnt[:, None]
    slot[take] = order[(starts[group_ids][:, None] + rank)[take]]
    return slot
