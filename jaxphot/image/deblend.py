"""Deblending of touching sources: multi-thresholding and a watershed (SExtractor, photutils).

Every segment of a segmentation map is re-thresholded at ``nlevels`` levels between its own
minimum and maximum. Walking up the levels, a marker region that holds two or more components
of at least ``npixels`` pixels is replaced by those components (the branches of the source's
tree). The surviving markers seed a watershed of ``-data`` inside the parent segment, and a
branch whose flux is below ``contrast`` times the segment's flux is dropped (the faintest first,
one at a time, re-flooding after each), as in SExtractor (Bertin & Arnouts 1996) and photutils'
``deblend_sources``.

All segments are processed at once: each threshold level is one labelling of the whole image
(thresholds are per segment, looked up per pixel), and one watershed floods every segment.
Segments that touch each other are split into batches that do not touch, so that components
never merge across segments. The watershed is scikit-image's
(:func:`skimage.segmentation.watershed`); connected components come from :mod:`scipy.ndimage`.

Pixel ``a[j, i]`` is centred at ``x = i, y = j`` (0-based).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

from ..progress import Progress

__all__ = ["deblend"]

# photutils' guard: a source with more markers than this in a non-linear mode is re-thresholded
# linearly (the many low levels of the exponential mode can fragment a noisy source).
_MAX_MARKERS = 200
_SINH_A = 0.25


def deblend(
    data,
    labels,
    *,
    npixels: int,
    nlevels: int = 32,
    contrast: float = 0.001,
    mode: Literal["exponential", "linear", "sinh"] = "exponential",
    connectivity: int = 8,
    progress=False,
) -> np.ndarray:
    """Split segments that hold several touching sources.

    The watershed is scikit-image's :func:`skimage.segmentation.watershed`; connected
    components are labelled with :func:`scipy.ndimage.label`.

    Parameters
    ----------
    data : array_like, shape (ny, nx)
        The image the segments were found on (image units), background subtracted and, if a
        filter was used for detection, filtered the same way. NaN pixels never rise above a
        threshold.
    labels : array_like of int, shape (ny, nx)
        Segmentation map: 0 is background, each positive value one segment (e.g. from
        :func:`jaxphot.segment`).
    npixels : int
        Minimum number of connected pixels of a branch (use the value given to ``segment``).
        Segments with fewer than ``2 * npixels`` pixels are left alone.
    nlevels : int
        Number of thresholds between each segment's minimum and maximum (both excluded).
    contrast : float
        A branch is kept as a separate source only if its flux is at least this fraction of
        its segment's flux, in [0, 1]; 1 disables deblending.
    mode : {"exponential", "linear", "sinh"}
        Spacing of the thresholds between the segment's minimum and maximum. "exponential"
        (SExtractor's) falls back to "linear" for a segment whose minimum is not positive.
    connectivity : {4, 8}
        Pixel connectivity; it must be the one used to make ``labels``.
    progress : bool or callable
        Report progress over the threshold levels (see :class:`jaxphot.progress.Progress`).

    Returns
    -------
    ndarray of int32, shape (ny, nx)
        The new segmentation map, labels 1..n consecutive. Segments that were not split keep
        their relative order and come first; the pieces of split segments follow, in the order
        of their parents' labels and, within a parent, in raster order of their peak regions.
        This is the numbering of photutils' ``deblend_sources(..., relabel=True)``.

    Raises
    ------
    ValueError
        For a non-2-D ``data``, ``labels`` of another shape or with negative values, or an
        invalid ``npixels``, ``nlevels``, ``contrast``, ``mode`` or ``connectivity``.
    """
    a, lab = _checked(data, labels, npixels, nlevels, contrast, mode, connectivity)
    if contrast == 1 or lab.max() == 0:
        return _relabel(lab)
    struct = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    nlab = int(lab.max())
    area = np.bincount(lab.ravel(), minlength=nlab + 1)
    finite = np.isfinite(a)
    good = finite & (lab > 0)
    vmin = np.full(nlab + 1, np.inf)
    vmax = np.full(nlab + 1, -np.inf)
    np.minimum.at(vmin, lab[good], a[good])
    np.maximum.at(vmax, lab[good], a[good])
    vsum = np.bincount(lab.ravel(), weights=np.where(finite, a, 0.0).ravel(), minlength=nlab + 1)
    cand = (area >= 2 * int(npixels)) & np.isfinite(vmin) & np.isfinite(vmax) & (vmax > vmin)
    cand[0] = False
    seg_mode = np.full(nlab + 1, mode, dtype=object)
    if mode == "exponential":
        seg_mode[~(vmin > 0)] = "linear"
    batches = _batches(lab, cand, struct)
    out = lab.astype(np.int64).copy()
    next_label = nlab + 1
    bar = Progress(progress, desc="deblend")
    for bi, batch in enumerate(batches):
        def report(k, bi=bi):
            bar(f"batch {bi + 1}/{len(batches)}", (bi + k / nlevels) / len(batches))

        in_batch = np.zeros(nlab + 1, bool)
        in_batch[batch] = True
        markers = _markers(a, lab, in_batch, vmin, vmax, seg_mode, nlevels, npixels, struct, report)
        # Too many markers in a non-linear mode: redo those segments with linear thresholds.
        nmark = _per_segment_count(markers, lab, nlab)
        redo = in_batch & (nmark > _MAX_MARKERS) & (seg_mode != "linear")
        if redo.any():
            seg_mode[redo] = "linear"
            again = _markers(a, lab, redo, vmin, vmax, seg_mode, nlevels, npixels, struct, None)
            sel = redo[lab]
            markers = np.where(sel, again + np.where(again > 0, markers.max(), 0), markers)
        regions = _watershed_contrast(a, lab, in_batch, markers, vsum, contrast, struct)
        next_label = _assign(out, lab, regions, next_label)
    bar.close()
    return _relabel(out)


def _checked(data, labels, npixels, nlevels, contrast, mode, connectivity):
    """The image (float) and the segmentation map (int64), after checking every argument."""
    a = np.asarray(data, dtype=float)
    if a.ndim != 2:
        raise ValueError(f"data must be a 2-D image, got shape {a.shape}")
    lab = np.asarray(labels)
    if lab.shape != a.shape:
        raise ValueError(f"labels shape {lab.shape} differs from data shape {a.shape}")
    if not np.issubdtype(lab.dtype, np.integer):
        if not np.all(np.isfinite(lab)) or np.any(lab != np.round(lab)):
            raise ValueError("labels must be an integer segmentation map")
    lab = lab.astype(np.int64)
    if lab.size and lab.min() < 0:
        raise ValueError("labels must be >= 0 (0 is background)")
    if isinstance(npixels, bool) or int(npixels) != npixels or int(npixels) < 1:
        raise ValueError(f"npixels must be a positive integer, got {npixels!r}")
    if isinstance(nlevels, bool) or int(nlevels) != nlevels or int(nlevels) < 1:
        raise ValueError(f"nlevels must be a positive integer, got {nlevels!r}")
    if not (0 <= contrast <= 1):
        raise ValueError(f"contrast must be in [0, 1], got {contrast!r}")
    if mode not in ("exponential", "linear", "sinh"):
        raise ValueError(f"mode must be 'exponential', 'linear' or 'sinh', got {mode!r}")
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")
    return a, lab


def _relabel(lab: np.ndarray) -> np.ndarray:
    """Consecutive labels 1..n in the order of the input values (0 stays 0)."""
    u = np.unique(lab)
    u = u[u > 0]
    lut = np.zeros(int(lab.max()) + 1 if lab.size else 1, np.int32)
    lut[u] = np.arange(1, len(u) + 1, dtype=np.int32)
    return lut[lab]


def _neighbour_pairs(lab: np.ndarray, struct: np.ndarray) -> np.ndarray:
    """(M, 2) distinct label pairs that touch under ``struct``, smaller label first."""
    pairs = []
    ny, nx = lab.shape
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        if not struct[1 + dy, 1 + dx]:
            continue
        if dx >= 0:
            p, q = lab[: ny - dy, : nx - dx], lab[dy:, dx:]
        else:  # q is below-left of p
            p, q = lab[: ny - dy, -dx:], lab[dy:, : nx + dx]
        t = (p > 0) & (q > 0) & (p != q)
        pairs.append(np.stack([np.minimum(p[t], q[t]), np.maximum(p[t], q[t])], axis=1))
    allp = np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)
    return np.unique(allp, axis=0) if len(allp) else allp


def _batches(lab, cand, struct) -> list[np.ndarray]:
    """Candidate labels split into groups of segments that never touch one another.

    Segments from one thresholding never touch; user-made maps may. A greedy colouring of the
    touching ones keeps the number of groups small (usually one).
    """
    ids = np.nonzero(cand)[0]
    if not len(ids):
        return []
    pairs = _neighbour_pairs(lab, struct)
    pairs = pairs[cand[pairs[:, 0]] & cand[pairs[:, 1]]] if len(pairs) else pairs
    if not len(pairs):
        return [ids]
    colour = np.zeros(len(cand), np.int64)
    nbrs: dict[int, list[int]] = {}
    for p, q in pairs.tolist():  # only touching segments, few in practice
        nbrs.setdefault(p, []).append(q)
        nbrs.setdefault(q, []).append(p)
    for s in sorted(nbrs):
        used = {colour[t] for t in nbrs[s] if t < s}
        c = 0
        while c in used:
            c += 1
        colour[s] = c
    return [ids[colour[ids] == c] for c in range(int(colour[ids].max()) + 1)]


def _thresholds(vmin, vmax, seg_mode, nlevels) -> np.ndarray:
    """(nlab + 1, nlevels) thresholds of every segment, its minimum and maximum excluded."""
    q = np.linspace(0.0, 1.0, nlevels + 2)[None, 1:-1]
    lo, hi = vmin[:, None], vmax[:, None]
    span = hi - lo
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        lin = lo + q * span
        sinh = lo + span * np.sinh(q / _SINH_A) / np.sinh(1.0 / _SINH_A)
        expo = lo * (hi / lo) ** q
    m = seg_mode[:, None]
    return np.where(m == "exponential", expo, np.where(m == "sinh", sinh, lin))


def _component_ids(on: np.ndarray, struct, npixels: int, jj, ii) -> np.ndarray:
    """Component id at pixels ``(jj, ii)`` of the components of ``on`` with >= ``npixels`` pixels.

    0 where a pixel is off or its component is smaller.
    """
    comp, n = ndimage.label(on, structure=struct)
    u = comp[jj, ii]
    if n == 0:
        return u
    keep = np.bincount(u, minlength=n + 1) >= npixels
    keep[0] = False
    return np.where(keep[u], u, 0)


def _markers(a, lab, in_batch, vmin, vmax, seg_mode, nlevels, npixels, struct, report):
    """Marker map (ny, nx) of the peaks of the segments ``in_batch`` (bool per label).

    The marker regions start as the whole segments. At each level, a region holding two or
    more components above the level is replaced by them; a region with one keeps its (larger)
    extent, which is what the watershed then grows from.
    """
    inside = in_batch[lab] & (lab > 0)
    # Work in the bounding box of the batch: every labelling is over this box only.
    rows, cols = np.nonzero(inside.any(axis=1))[0], np.nonzero(inside.any(axis=0))[0]
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    jj, ii = np.nonzero(inside[box])
    seg = lab[box][jj, ii]
    vals = a[box][jj, ii]
    thr = _thresholds(vmin, vmax, seg_mode, nlevels)
    m = seg.copy()  # marker id of every segment pixel (0 = not a marker)
    on = np.zeros(inside[box].shape, bool)
    for k in range(nlevels):
        if report is not None:
            report(k)
        with np.errstate(invalid="ignore"):
            on[jj, ii] = vals > thr[seg, k]
        u = _component_ids(on, struct, int(npixels), jj, ii)
        both = (m > 0) & (u > 0)
        if not both.any():
            continue
        # A component above a level lies inside exactly one marker region: its parent.
        parent = np.zeros(int(u.max()) + 1, np.int64)
        parent[u[both]] = m[both]
        comps = np.unique(u[both])
        split = np.bincount(parent[comps], minlength=int(m.max()) + 1) >= 2
        if not split.any():
            continue
        sp = split[m]
        on[jj, ii] = ((m > 0) & ~sp) | ((u > 0) & sp)
        m = ndimage.label(on, structure=struct)[0][jj, ii]
    markers = np.zeros(lab.shape, np.int64)
    markers[box][jj, ii] = m
    return markers


def _parents(regions, lab):
    """Ids (K,) of the regions of ``regions`` and the segment (K,) each lies in."""
    ids, first = np.unique(regions.ravel(), return_index=True)
    sel = ids > 0
    return ids[sel], lab.ravel()[first[sel]]


def _per_segment_count(markers, lab, nlab) -> np.ndarray:
    """(nlab + 1,) number of marker regions in each segment."""
    _, parent = _parents(markers, lab)
    return np.bincount(parent, minlength=nlab + 1)


def _watershed_contrast(a, lab, in_batch, markers, vsum, contrast, struct) -> np.ndarray:
    """Watershed of ``-a`` from ``markers`` in each segment, dropping branches below ``contrast``.

    Returns the region map (ny, nx): marker ids inside the flooded segments, 0 elsewhere.
    """
    inside = in_batch[lab] & (lab > 0)
    # NaN pixels are flooded last: give them the lowest surface value of all.
    fin = np.isfinite(a)
    surface = np.where(fin, -a, 0.0)
    surface[~fin] = surface.max() + 1.0
    weights = np.where(np.isfinite(a), a, 0.0)
    regions = watershed(surface, markers, mask=inside, connectivity=struct)
    active = inside
    while True:
        ids, parent = _parents(np.where(active, regions, 0), lab)
        if not len(ids):
            break
        flux = np.bincount(regions.ravel(), weights.ravel())[ids]
        frac = flux / vsum[parent]
        # regions per parent, and each parent's faintest region
        order = np.lexsort((frac, parent))
        p_sorted = parent[order]
        first = np.r_[True, p_sorted[1:] != p_sorted[:-1]]
        nreg = np.bincount(parent, minlength=len(vsum))
        weak = np.zeros(len(vsum), bool)
        np.logical_or.at(weak, parent, frac < contrast)
        drop_parent = weak & (nreg >= 2)
        drop = ids[order][first & drop_parent[p_sorted]]
        if not len(drop):
            break
        # remove the faintest branch of each such segment, then re-flood those segments only
        regions[np.isin(regions, drop)] = 0
        active = drop_parent[lab] & inside
        regions = np.where(active, watershed(surface, regions * active, mask=active,
                                             connectivity=struct), regions)
    return regions


def _assign(out, lab, regions, next_label) -> int:
    """Give the pieces of every segment split into >= 2 regions new labels, in ``out``."""
    ids, parent = _parents(regions, lab)
    if not len(ids):
        return next_label
    nreg = np.bincount(parent)
    split = nreg[parent] >= 2
    # new labels in the order of the parent, then of the region id (raster order of markers)
    order = np.lexsort((ids, parent))
    ids_s, split_s = ids[order], split[order]
    new_ids = ids_s[split_s]
    lut = np.zeros(int(regions.max()) + 1, np.int64)
    lut[new_ids] = next_label + np.arange(len(new_ids))
    sel = (regions > 0) & (lut[regions] > 0)
    out[sel] = lut[regions[sel]]
    return next_label + len(new_ids)
