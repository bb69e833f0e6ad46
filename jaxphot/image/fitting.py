"""Fitting groups of stars in whole images: cutouts with neighbours subtracted, padded fits.

:func:`fit_groups` runs one padded :func:`~jaxphot.fit.fit_cutouts` call per bucket of
:func:`~jaxphot.image.grouping.group_buckets`. Each group's cutout is the sky-subtracted image
minus the current model of every star *outside* the group, so neighbours in other groups (or
other buckets) are accounted for; the results come back as per-star columns.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..core.batching import pad
from ..core.fit import fit_cutouts
from .cutouts import extract_cutouts
from .grouping import Bucket, group_slots
from .render import scatter_stamps

__all__ = ["fit_groups", "FIT_CHUNK", "FIT_FLOAT_COLUMNS"]

# Cutouts per compiled call of single stars (_fit_chunk: fewer for larger groups). fit_cutouts
# pads every call (and its re-run of stragglers) to a power of two >= 64, capped at the chunk
# size; with one fixed chunk per K every call has one shape, so each (cutout size, K) bucket
# compiles once instead of once per power of two.
FIT_CHUNK = 64
#: Per-star float columns the fitter returns (NaN where a star was not fitted).
FIT_FLOAT_COLUMNS = (
    "x_fit", "y_fit", "flux_fit", "x_err", "y_err", "flux_err", "bkg", "bkg_x", "bkg_y", "chi2",
)
# Per-cutout columns, repeated for each star of the group.
_GROUP_COLUMNS = ("bkg", "bkg_x", "bkg_y", "chi2", "dof", "n_iter")


def _group_cutouts(frame, sigma, model, star_stamps, slot, x, y, size: int):
    """Cutouts of groups with every star outside the group subtracted.

    Parameters
    ----------
    frame : Frame
        The sky-subtracted data and its masks.
    sigma, model : (H, W) arrays
        Per-pixel noise and the current model of all live stars, image units.
    star_stamps : (stamps (L, P, P), x0 (L,), y0 (L,))
        The stamps that make up ``model``.
    slot : (G, K) int array
        Star indices of each group, -1 for padding.
    x, y : (L,) arrays
        Star positions, pixels.
    size : int
        Cutout side, pixels.

    Returns
    -------
    cut, err : (G, S, S) float arrays
        Data (NaN on bad pixels) and sigma.
    msk : (G, S, S) bool array
        Masked or outside the image.
    ox, oy : (G,) int arrays
        Image coordinates of each cutout's pixel [0, 0].
    """
    act = slot >= 0
    sx = np.where(act, x[np.maximum(slot, 0)], np.nan)
    sy = np.where(act, y[np.maximum(slot, 0)], np.nan)
    cx = np.rint(0.5 * (np.nanmin(sx, 1) + np.nanmax(sx, 1))).astype(np.int64)
    cy = np.rint(0.5 * (np.nanmin(sy, 1) + np.nanmax(sy, 1))).astype(np.int64)
    ox, oy = cx - size // 2, cy - size // 2
    cut, inside = extract_cutouts(frame.data, ox, oy, size, 0.0)
    # Remove every star's model, then add back the group's own stars: what is left is
    # the group plus sky, with all neighbours outside the group subtracted.
    cut = cut - extract_cutouts(model, ox, oy, size, 0.0)[0]
    st, sx0, sy0 = star_stamps
    mem = slot[act]
    gi = np.nonzero(act)[0]
    own = scatter_stamps((len(slot), size, size), st[mem], sx0[mem], sy0[mem],
                         offset=(gi, ox[gi], oy[gi]))
    cut = cut + own
    nanc = extract_cutouts(frame.bad_data, ox, oy, size, False)[0]
    cut = np.where(nanc, np.nan, cut)
    msk = ~inside | extract_cutouts(frame.mask, ox, oy, size, False)[0]
    err = extract_cutouts(sigma, ox, oy, size, 1.0)[0]
    return cut, err, msk, ox, oy


def fit_groups(psf, frame, sigma, model, star_stamps, x, y, flux, gid, buckets: list[Bucket],
               fit_background, max_iter: int, report) -> dict[str, np.ndarray]:
    """Fit every group, bucket by bucket.

    Parameters
    ----------
    psf : PSF model
    frame : Frame
        Sky-subtracted data, masks (:func:`~jaxphot.image.inputs.prepare_frame`).
    sigma, model : (H, W) arrays
        Noise of the fit weights and model image of the live stars, image units.
    star_stamps : (stamps (L, P, P), x0 (L,), y0 (L,))
        The stamps that make up ``model``.
    x, y, flux : (L,) arrays
        Starting positions (pixels) and fluxes of the live stars.
    gid : (L,) int array
        Their group ids, 1..G.
    buckets : list of Bucket
        From :func:`~jaxphot.image.grouping.group_buckets`.
    fit_background : {"constant", "plane", None}
    max_iter : int
        Levenberg-Marquardt iteration cap.
    report : callable
        ``report(message, fraction)`` before each bucket.

    Returns
    -------
    dict of str to (L,) array
        ``x_fit, y_fit`` (image pixels), ``flux_fit``, errors, the group's ``bkg, bkg_x,
        bkg_y, chi2, dof, n_iter``, ``flags`` and the fitter's extra per-star columns.
    """
    n = len(x)
    out = {k: np.full(n, np.nan) for k in FIT_FLOAT_COLUMNS}
    for k in ("dof", "n_iter", "flags"):
        out[k] = np.zeros(n, np.int64)
    extra_cols: dict[str, np.ndarray] = {}
    total = sum(len(b.group_ids) for b in buckets) or 1
    done = 0
    for size, k, gids in buckets:
        report(f"fitting {len(gids)} groups of <= {k} stars ({size}x{size} px)", done / total)
        slot = group_slots(gid, gids, k)
        act = slot >= 0
        mem = slot[act]
        cut, err, msk, ox, oy = _group_cutouts(frame, sigma, model, star_stamps, slot, x, y, size)
        lx = np.where(act, x[np.maximum(slot, 0)] - ox[:, None], (size - 1) / 2.0)
        ly = np.where(act, y[np.maximum(slot, 0)] - oy[:, None], (size - 1) / 2.0)
        lf = np.where(act, flux[np.maximum(slot, 0)], 0.0)
        lf = np.where(np.isfinite(lf) & (lf > 0), lf, 1.0)
        org = np.stack([ox, oy], 1).astype(np.float64)  # a varying PSF is taken at each cutout
        res = _fit_padded(cut, psf, lx, ly, lf, err, msk, act, fit_background, max_iter, org)
        # Back to image coordinates.
        out["x_fit"][mem] = (res.x_fit + ox[:, None])[act]
        out["y_fit"][mem] = (res.y_fit + oy[:, None])[act]
        for name in ("flux_fit", "x_err", "y_err", "flux_err", "flags"):
            out[name][mem] = getattr(res, name)[act]
        for name in _GROUP_COLUMNS:
            out[name][mem] = np.repeat(getattr(res, name)[:, None], k, 1)[act]
        for name, col in res.extra.items():
            col = np.asarray(col)
            if col.shape == act.shape:
                extra_cols.setdefault(name, np.full(n, np.nan))[mem] = col[act]
        done += len(gids)
    out.update(extra_cols)
    return out


def _fit_padded(cut, psf, lx, ly, lf, err, msk, act, fit_background, max_iter, origin=None):
    """fit_cutouts on the G cutouts padded to a multiple of FIT_CHUNK (one compiled shape).

    The first chunk is a call of its own, solved in one pass with the full iteration cap; the
    rest form a second call, in which fit_cutouts caps its first pass and re-runs the
    stragglers together. This schedule fixes the recorded results (tests/test_golden.py).
    ``origin`` (G, 2), the cutouts' image offsets, is passed for a spatially varying PSF, which
    is then evaluated at every member's own position (fit_cutouts). Returns a FitResult of G
    rows.
    """
    n = len(cut)
    chunk = _fit_chunk(act.shape[1])
    size = -(-n // chunk) * chunk
    c = (cut.shape[2] - 1) / 2.0
    args = [pad(a, size, fill) for a, fill in ((cut, 0.0), (lx, c), (ly, c), (lf, 1.0))]
    kw = {"error": pad(err, size, 1.0), "mask": pad(msk, size, False),
          "active": pad(act, size, False), "bkg": np.zeros(size)}
    if origin is not None and callable(getattr(psf, "at", None)):
        kw["origin"] = pad(origin, size, 0.0)
    # First chunk alone, then the rest (if any) in one call.
    bounds = [slice(0, chunk)] + ([slice(chunk, size)] if size > chunk else [])
    parts = [
        fit_cutouts(args[0][sl], psf, *(a[sl] for a in args[1:]), background=fit_background,
                    max_iter=max_iter, chunk_size=chunk, **{k: v[sl] for k, v in kw.items()})
        for sl in bounds
    ]
    fields = dataclasses.fields(parts[0])
    return type(parts[0])(**{f.name: _join([getattr(p, f.name) for p in parts], n) for f in fields})


def _fit_chunk(k: int) -> int:
    """Cutouts per compiled call for groups of up to ``k`` stars: FIT_CHUNK for single stars,
    halved for each doubling of ``k``, but at least 16. A fit's cost grows as ~k^2 per cutout,
    and a field's few large groups would otherwise sit in mostly empty padding; below 16 the
    batch axis (innermost) no longer fills the CPU's vector lanes (measured: 4-8 per call for
    K = 8 was slower than 16 on the 1024^2 and 2048^2 crowded frames)."""
    return max(16, FIT_CHUNK >> max(0, int(k).bit_length() - 1))


def _join(vals: list, n: int):
    """Consecutive results' values of one FitResult field, cut to the first ``n`` rows."""
    if isinstance(vals[0], dict):  # extra columns: those every part has
        return {k: _join([v[k] for v in vals], n) for k in vals[0] if all(k in v for v in vals)}
    return np.concatenate([np.asarray(v) for v in vals])[:n]
