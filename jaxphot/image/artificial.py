"""Artificial-star tests (ASTs): completeness, bias and error honesty on the user's own image.

:func:`artificial_star_test` injects stars of known flux into the image with the photometry's
own PSF, runs the same photometry again and reports, for every injected star, what came back.
:func:`completeness` turns that table into completeness, bias and pull width per magnitude bin.

Fast path
---------
A star far from the injected one cannot change its fit, so only the neighbourhood of each
injected star is re-run. Each injected star gets a tile of ``2 R + 1`` pixels around it holding

    background + residual of the original fit + the original models of the original stars
    within ``r_keep`` of it + the injected star (with its Poisson noise),

i.e. the original stars further away are held fixed at their original fit (subtracted), the
near ones are detected, grouped and fitted again together with the injected star. All tiles,
of all passes, are laid side by side (separated by masked pixels) in one mosaic image, and one
:func:`~jaxphot.photometry` call on the mosaic (with the original background maps) fits them all
as one batch. ``r_keep = 2 fit_half + crit_sep`` (every star whose fitting box or group can reach
the injected star) and ``R = r_keep + fit_half + 1`` (the fitting boxes of the kept stars fit in
the tile).

``full_rerun=True`` instead adds the stars of each pass to the whole image and runs
:func:`~jaxphot.photometry` on it, once per pass. A spatially varying PSF always takes this
path (the mosaic would move the stars to other PSF positions).

Recovery rule
-------------
An output star is *matched* to the injected star when it lies within
``r_match = max(1 px, 0.5 FWHM)`` of it and is closer to it than to any original-catalogue star
(DOLPHOT's rule: the detection must be a new one, not an original star re-found; an injected
star landing on a brighter original star is then lost when the blend's centre sits nearer the
original star). Stars removed by the fit (``MERGED``, ``FADED``, non-finite) are not
detections. Of several matches the nearest is kept. A matched star is *recovered* when
``|mag - mag_in| < 0.75``; a matched but not recovered star is a *spurious match* (a blend or
a noise peak took its place).
"""

from __future__ import annotations

import math

import numpy as np
from astropy.stats import mad_std
from astropy.table import Table
from scipy.spatial import cKDTree

from ..progress import Progress
from ..psf.measure import is_varying, psf_fwhm, support_half
from ..validate import check_psf as as_psf_object
from .background import Background
from .inputs import background_maps
from .pipeline import photometry
from .render import EXCLUDED_FROM_MODEL, scatter_stamps, stamps

__all__ = ["artificial_star_test", "completeness", "assign_passes", "MATCH_DMAG"]

#: Largest |mag - mag_in| of a recovered star (DOLPHOT's usual cut).
MATCH_DMAG = 0.75
#: Quality and error columns carried over from the photometry catalogue when present.
_EXTRA = ("x_err", "y_err", "sharpness", "roundness", "crowding", "qfit", "cfit", "reduced_chi2")
_GAP = 2  # masked pixels between mosaic tiles


def assign_passes(x, y, min_separation: float, seed=0) -> np.ndarray:
    """Pass index of each star so that no two stars of one pass are closer than ``min_separation``.

    Greedy maximal independent sets (Luby's rounds on random priorities): each pass takes every
    remaining star that has no closer-than-``min_separation`` remaining neighbour of higher
    priority, then their neighbours are set aside for later passes. Loops run over passes and
    rounds, not stars.

    Parameters
    ----------
    x, y : (N,) arrays
        Positions, pixels.
    min_separation : float
        Pixels.
    seed : int or Generator

    Returns
    -------
    (N,) int array, passes numbered from 0.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    out = np.full(n, -1, np.int64)
    if n < 2 or min_separation <= 0:
        return np.zeros(n, np.int64)
    rng = np.random.default_rng(seed)
    pairs = cKDTree(np.c_[x, y]).query_pairs(min_separation, output_type="ndarray")
    prio = rng.permutation(n)
    p = 0
    while (out < 0).any():
        cand = out < 0
        a, b = pairs[:, 0], pairs[:, 1]
        keep = cand[a] & cand[b]
        a, b = a[keep], b[keep]
        while cand.any():
            live = cand[a] & cand[b]
            aa, bb = a[live], b[live]
            beaten = np.zeros(n, bool)
            a_wins = prio[aa] < prio[bb]
            beaten[bb[a_wins]] = True
            beaten[aa[~a_wins]] = True
            sel = cand & ~beaten
            out[sel] = p
            cand &= ~sel
            near = np.zeros(n, bool)
            near[b[sel[a]]] = True
            near[a[sel[b]]] = True
            cand &= ~near
        p += 1
    return out


def _as_background(level, rms) -> Background:
    """A :class:`Background` holding the given (H, W) maps (no mesh)."""
    z = np.zeros((1, 1))
    return Background(level=level, rms=rms, mesh_level=z, mesh_rms=z, mesh_x=np.zeros(1),
                      mesh_y=np.zeros(1), global_level=float(np.nanmedian(level)),
                      global_rms=float(np.nanmedian(rms)), mesh_bad=np.zeros((1, 1), bool),
                      box_size=(1, 1), estimator="given")


def _check_inputs(img, n_stars, flux_range, positions):
    """Validated ``(n_stars, flux_range, positions)``; ValueError naming the argument."""
    if positions is not None:
        pos = np.asarray(positions, float)
        if pos.ndim != 2 or pos.shape[1] != 2 or len(pos) < 1:
            raise ValueError(f"positions must be an (N, 2) array of (x, y), got shape {pos.shape}")
        h, w = img.shape
        off = ~np.all(np.isfinite(pos), axis=1) | (pos[:, 0] < -0.5) | (pos[:, 0] > w - 0.5) \
            | (pos[:, 1] < -0.5) | (pos[:, 1] > h - 0.5)
        if off.any():
            raise ValueError(f"positions: {int(off.sum())} of {len(pos)} lie off the image of "
                             f"shape {img.shape} (first {pos[np.argmax(off)].tolist()})")
        n_stars = len(pos)
    else:
        pos = None
        if isinstance(n_stars, bool) or not isinstance(n_stars, (int, np.integer)) or n_stars < 1:
            raise ValueError(f"n_stars must be an integer >= 1, got {n_stars!r}")
    if flux_range is not None:
        fr = np.asarray(flux_range, float)
        if fr.shape != (2,) or not np.all(np.isfinite(fr)) or fr[0] <= 0 or fr[1] <= fr[0]:
            raise ValueError(f"flux_range must be (low, high) with 0 < low < high, got {flux_range!r}")
        flux_range = (float(fr[0]), float(fr[1]))
    return int(n_stars), flux_range, pos


def _default_flux_range(cat: Table, rms, good, beta: float, threshold: float):
    """0.3x the detection-limit flux (``threshold * sqrt(beta) * sky rms``) to the brightest
    unflagged star (1000x the limit without one)."""
    f_lim = threshold * math.sqrt(beta) * float(np.median(rms[good]))
    hi = 0.0
    if len(cat):
        f = np.asarray(cat["flux_fit"], float)
        ok = (np.asarray(cat["flags"]) & EXCLUDED_FROM_MODEL) == 0
        ok &= np.isfinite(f)
        hi = float(np.max(f[ok])) if ok.any() else 0.0
    return 0.3 * f_lim, max(hi, 30.0 * f_lim)


def _live_positions(cat: Table):
    """(x, y, flux) of the original stars that are part of the model image."""
    if len(cat) == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    x, y = np.asarray(cat["x_fit"], float), np.asarray(cat["y_fit"], float)
    f = np.asarray(cat["flux_fit"], float)
    ok = ((np.asarray(cat["flags"]) & EXCLUDED_FROM_MODEL) == 0) & np.isfinite(x + y + f)
    return x[ok], y[ok], f[ok]


def _match(out_x, out_y, out_mag, target, x_in, y_in, mag_in, orig_tree, r_match):
    """Per injected star: index of its matched output row (-1 for none), and ``recovered``.

    ``target`` (M,) is the injected star each output row is compared with (-1: none).
    """
    n = len(x_in)
    best = np.full(n, -1, np.int64)
    ok = target >= 0
    if not ok.any():
        return best, np.zeros(n, bool)
    t = np.where(ok, target, 0)
    d_inj = np.hypot(out_x - x_in[t], out_y - y_in[t])
    if orig_tree is not None:
        d_orig, _ = orig_tree.query(np.c_[out_x, out_y])
    else:
        d_orig = np.full(len(out_x), np.inf)
    cand = ok & (d_inj <= r_match) & (d_inj < d_orig)
    idx = np.nonzero(cand)[0]
    order = idx[np.lexsort((d_inj[idx], t[idx]))]
    first = np.unique(t[order], return_index=True)[1]
    best[t[order[first]]] = order[first]
    rec = best >= 0
    dm = np.full(n, np.inf)
    dm[rec] = np.abs(out_mag[best[rec]] - mag_in[rec])
    return best, rec & (dm < MATCH_DMAG)


def _usable(cat: Table):
    """(M,) bool: output rows that are detections (finite, not removed by the fit)."""
    x, y = np.asarray(cat["x_fit"], float), np.asarray(cat["y_fit"], float)
    return ((np.asarray(cat["flags"]) & EXCLUDED_FROM_MODEL) == 0) & np.isfinite(x + y)


def _cut(arr, ox, oy, size, fill):
    """(G, size, size) tiles of ``arr`` with pixel [0, 0] at image (ox, oy); ``fill`` outside."""
    h, w = arr.shape
    d = np.arange(size)
    yy = oy[:, None, None] + d[None, :, None]
    xx = ox[:, None, None] + d[None, None, :]
    inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
    vals = arr[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]
    if fill is None:  # clamp to the edge value
        return vals
    return np.where(inside, vals, fill)


def _mosaic(tiles, nc: int):
    """(G, T, T) tiles -> (nr T, nc T) image, row-major, padded with the last tile's fill."""
    g, t, _ = tiles.shape
    nr = -(-g // nc)
    pad = nr * nc - g
    if pad:
        tiles = np.concatenate([tiles, np.repeat(tiles[-1:] * np.nan, pad, axis=0)])
    return tiles.reshape(nr, nc, t, t).transpose(0, 2, 1, 3).reshape(nr * t, nc * t)


def _fast_path(img, psf, res, bkg, good, inj, x_in, y_in, geom, kw, mask, error, prog):
    """One photometry() run on the mosaic of the local tiles; returns (catalog, target, x, y)."""
    stamp_half, r_keep, half = geom
    g = len(x_in)
    body = 2 * half + 1
    size = body + _GAP
    ox = np.rint(x_in).astype(np.int64) - half
    oy = np.rint(y_in).astype(np.int64) - half
    # Data without the model + the model of the kept (near) original stars + the injected star.
    resid = np.where(good, res.residual, np.nan)
    data = _cut(res.background + resid, ox, oy, size, np.nan)
    body_mask = np.zeros((size, size), bool)
    body_mask[:body, :body] = True
    data[:, ~body_mask] = np.nan
    xs, ys, fs = _live_positions(res.table)
    flat = np.zeros(g * size * size)
    if len(xs):
        pairs = cKDTree(np.c_[x_in, y_in]).sparse_distance_matrix(
            cKDTree(np.c_[xs, ys]), r_keep, output_type="ndarray")
        if len(pairs):
            gi, sj = pairs["i"].astype(np.int64), pairs["j"].astype(np.int64)
            used, inv = np.unique(sj, return_inverse=True)
            st, x0, y0 = stamps(psf, xs[used], ys[used], fs[used], stamp_half)
            inv = inv.ravel()
            scatter_stamps((g, size, size), st[inv], x0[inv], y0[inv], out=flat,
                           offset=(gi, ox[gi], oy[gi]))
    st, x0, y0 = inj
    scatter_stamps((g, size, size), st, x0, y0, out=flat, offset=(np.arange(g), ox, oy))
    data = data + flat.reshape(g, size, size) * body_mask
    nc = max(1, int(math.ceil(math.sqrt(g))))
    mos = _mosaic(data, nc)
    level = _mosaic(_cut(bkg.level, ox, oy, size, None), nc)
    rms = _mosaic(_cut(bkg.rms, ox, oy, size, None), nc)
    level = np.where(np.isfinite(level), level, np.nanmedian(bkg.level))
    rms = np.where(np.isfinite(rms), rms, np.nanmedian(bkg.rms))
    m_mask = None if mask is None else _mosaic(_cut(mask, ox, oy, size, True).astype(float), nc) > 0
    m_err = None if error is None else _mosaic(_cut(error, ox, oy, size, np.nan), nc)
    cat = photometry(mos, psf, background=_as_background(level, rms), mask=m_mask, error=m_err,
                     progress=lambda msg, f: prog(f"local fits: {msg}", 0.3 + 0.65 * f), **kw)
    ok = _usable(cat)
    mx, my = np.asarray(cat["x_fit"], float), np.asarray(cat["y_fit"], float)
    col = np.floor((np.where(ok, mx, 0) + 0.5) / size).astype(np.int64)
    row = np.floor((np.where(ok, my, 0) + 0.5) / size).astype(np.int64)
    tile = row * nc + col
    ok &= (tile >= 0) & (tile < g)
    tile = np.where(ok, tile, 0)
    x_img = mx - col * size + ox[tile]
    y_img = my - row * size + oy[tile]
    return cat, np.where(ok, tile, -1), x_img, y_img


def _full_path(img, psf, bkg, inj, x_in, y_in, passes, kw, mask, error, prog):
    """photometry() of the whole image with each pass's stars added; per pass, the catalog."""
    st, x0, y0 = inj
    n_pass = int(passes.max()) + 1
    out = []
    for p in range(n_pass):
        sel = np.nonzero(passes == p)[0]
        added = img + scatter_stamps(img.shape, st[sel], x0[sel], y0[sel])
        lo, span = 0.3 + 0.65 * p / n_pass, 0.65 / n_pass
        cat = photometry(added, psf, background=bkg, mask=mask, error=error,
                         progress=lambda msg, f, lo=lo, span=span, p=p: prog(
                             f"pass {p + 1}/{n_pass}: {msg}", lo + span * f), **kw)
        ok = _usable(cat)
        mx, my = np.asarray(cat["x_fit"], float), np.asarray(cat["y_fit"], float)
        target = np.full(len(cat), -1, np.int64)
        if ok.any():
            _, k = cKDTree(np.c_[x_in[sel], y_in[sel]]).query(np.c_[mx[ok], my[ok]])
            target[ok] = sel[k]
        out.append((cat, target, mx, my))
    return out


def artificial_star_test(image, psf, *, n_stars: int = 2000, flux_range=None, positions=None,
                         min_separation: float | None = None, seed=0, full_rerun: bool = False,
                         progress=False, **photometry_kwargs) -> Table:
    """Inject stars of known flux into ``image``, redo the photometry, report each one.

    Parameters
    ----------
    image : (H, W) array
        The image, image units (as for :func:`~jaxphot.photometry`). The real stars stay in it.
    psf : PSF model or spec string
        The photometry's PSF; the stars are injected with it (a varying PSF: at each position).
    n_stars : int
        Number of injected stars (ignored when ``positions`` is given).
    flux_range : (low, high), optional
        Total fluxes (image units x pixels) are log-uniform in it. Default: from 0.3x the
        detection-limit flux of an isolated star on the sky (``threshold * sqrt(beta) * rms``)
        to the brightest star of the original catalogue.
    positions : (N, 2) array, optional
        Given (x, y) positions (0-based pixels). Default: uniform over the good (finite,
        unmasked) pixels, with a uniform sub-pixel offset.
    min_separation : float, optional
        No two injected stars of one pass are closer than this (pixels). Default
        ``max(2 stamp_half + 2 FWHM, r_keep + stamp_half)`` (module docstring): they do not
        interact.
    seed : int
        Seed of the positions, fluxes, passes and the injected stars' noise.
    full_rerun : bool
        Run :func:`~jaxphot.photometry` on the whole image once per pass instead of the fast
        local re-runs (module docstring).
    progress : bool or callable
        As for :func:`~jaxphot.photometry`.
    **photometry_kwargs
        Passed to :func:`~jaxphot.photometry` for the original run and the re-runs (``gain``,
        ``threshold``, ``zeropoint``, ``mask``, ``error``, ``background``...). With ``gain``
        each injected star carries its Poisson noise (``Poisson(model * gain) / gain``);
        without it the stars are added noiseless (the image's noise is then unknown).
        ``init_params`` is not accepted (the test needs detection); ``wcs`` is ignored.

    Returns
    -------
    Table
        One row per injected star, in order: ``x_in, y_in, flux_in, mag_in`` (``mag_in =
        zeropoint - 2.5 log10 flux_in``), ``pass``, ``matched``, ``recovered`` (module
        docstring), ``x_fit, y_fit, flux_fit, flux_err, mag, mag_err, flags`` of the matched
        output star (NaN, flags -1 when none), plus ``x_err, y_err`` and the quality columns
        (``sharpness, roundness, crowding, qfit, cfit, reduced_chi2``) when the catalogue has
        them. ``meta``: ``shape, fwhm, r_match, min_separation, n_passes, flux_range,
        zeropoint, full_rerun, n_original``.

    Raises
    ------
    ValueError
        ``n_stars < 1``, ``flux_range`` not ``0 < low < high``, ``positions`` off the image or
        not (N, 2), ``init_params`` given; and whatever :func:`~jaxphot.photometry` rejects.
    """
    if "init_params" in photometry_kwargs:
        raise ValueError("init_params is not accepted by artificial_star_test (it needs detection)")
    kw = dict(photometry_kwargs)
    for k in ("return_images", "wcs", "progress"):
        kw.pop(k, None)
    psf = as_psf_object(psf)
    img = np.asarray(image, float)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {img.shape}")
    n_stars, flux_range, pos = _check_inputs(img, n_stars, flux_range, positions)
    mask = kw.pop("mask", None)
    error = kw.pop("error", None)
    background = kw.pop("background", "mesh")
    box = kw.pop("background_box", 64)
    mask = None if mask is None else np.asarray(mask, bool)
    good = np.isfinite(img) if mask is None else np.isfinite(img) & ~mask
    if not good.any():
        raise ValueError("image has no usable (finite, unmasked) pixel")
    prog = Progress(progress, desc="ast")
    rng = np.random.default_rng(seed)
    zp = float(kw.get("zeropoint", 0.0))
    gain = kw.get("gain")

    prog("original photometry", 0.01)
    level, rms = background_maps(img, good, background, box)
    bkg = _as_background(level, rms)
    res = photometry(img, psf, background=bkg, mask=mask, error=error, return_images=True,
                     progress=lambda msg, f: prog(f"original: {msg}", 0.25 * f), **kw)
    cat = res.table
    fwhm = float(cat.meta.get("fwhm", psf_fwhm(psf)))
    fit_half = int(cat.meta["fit_half"])
    crit_sep = float(cat.meta["crit_sep"])
    stamp_half = support_half(psf, fwhm)
    r_keep = 2 * fit_half + crit_sep
    half = int(math.ceil(r_keep)) + fit_half + 1
    r_match = max(1.0, 0.5 * fwhm)
    if min_separation is None:
        min_separation = max(2 * stamp_half + 2 * fwhm, r_keep + stamp_half)

    # What to inject: fluxes, positions, passes.
    prog("injecting", 0.27)
    if flux_range is None:
        c = float(stamp_half)
        ref = psf.psf_at(0.5 * (img.shape[1] - 1), 0.5 * (img.shape[0] - 1)) if is_varying(psf) else psf
        prf = np.asarray(ref.evaluate(c, c, (2 * stamp_half + 1,) * 2), float)
        beta = float(np.sum(prf) ** 2 / np.sum(prf**2))
        flux_range = _default_flux_range(cat, rms, good, beta, float(kw.get("threshold", 4.5)))
    flux_in = np.exp(rng.uniform(np.log(flux_range[0]), np.log(flux_range[1]), n_stars))
    if pos is None:
        jj, ii = np.nonzero(good)
        k = rng.integers(0, len(ii), n_stars)
        x_in = ii[k] + rng.uniform(-0.5, 0.5, n_stars)
        y_in = jj[k] + rng.uniform(-0.5, 0.5, n_stars)
    else:
        x_in, y_in = pos[:, 0].copy(), pos[:, 1].copy()
    passes = assign_passes(x_in, y_in, float(min_separation), rng)
    st, x0, y0 = stamps(psf, x_in, y_in, flux_in, stamp_half)
    if gain is not None:  # the stars' own shot noise; the sky's is already in the image
        g = float(gain)
        st = rng.poisson(np.maximum(st, 0.0) * g) / g
    inj = (st, x0, y0)
    mag_in = zp - 2.5 * np.log10(flux_in)

    xs, ys, _ = _live_positions(cat)
    orig_tree = cKDTree(np.c_[xs, ys]) if len(xs) else None
    full = bool(full_rerun) or is_varying(psf)
    if full:
        runs = _full_path(img, psf, bkg, inj, x_in, y_in, passes, kw, mask, error, prog)
    else:
        runs = [_fast_path(img, psf, res, bkg, good, inj, x_in, y_in, (stamp_half, r_keep, half),
                           kw, mask, error, prog)]

    t = Table()
    t["x_in"], t["y_in"], t["flux_in"], t["mag_in"] = x_in, y_in, flux_in, mag_in
    t["pass"] = passes
    matched = np.zeros(n_stars, bool)
    recovered = np.zeros(n_stars, bool)
    cols = {c: np.full(n_stars, np.nan) for c in ("x_fit", "y_fit", "flux_fit", "flux_err", "mag",
                                                   "mag_err")}
    flags = np.full(n_stars, -1, np.int64)
    extra = {}
    for out, target, ox_, oy_ in runs:
        mag = np.asarray(out["mag"], float) if len(out) else np.zeros(0)
        best, rec = _match(ox_, oy_, mag, target, x_in, y_in, mag_in, orig_tree, r_match)
        hit = best >= 0
        if not hit.any():
            continue
        b = best[hit]
        matched |= hit
        recovered |= rec
        cols["x_fit"][hit], cols["y_fit"][hit] = ox_[b], oy_[b]
        for c in ("flux_fit", "flux_err", "mag", "mag_err"):
            cols[c][hit] = np.asarray(out[c], float)[b]
        flags[hit] = np.asarray(out["flags"])[b]
        for c in _EXTRA:
            if c in out.colnames:
                extra.setdefault(c, np.full(n_stars, np.nan))[hit] = np.asarray(out[c], float)[b]
    t["matched"], t["recovered"] = matched, recovered
    for c, v in cols.items():
        t[c] = v
    t["flags"] = flags
    for c, v in extra.items():
        t[c] = v
    t.meta.update({
        "shape": list(img.shape), "fwhm": fwhm, "r_match": r_match,
        "min_separation": float(min_separation), "n_passes": int(passes.max()) + 1,
        "flux_range": list(flux_range), "zeropoint": zp, "full_rerun": full,
        "n_original": int(len(cat)), "match_dmag": MATCH_DMAG,
    })
    prog(f"done: {int(recovered.sum())}/{n_stars} recovered", 1.0)
    return t


# --------------------------------------------------------------------------------------
# Completeness
# --------------------------------------------------------------------------------------


def _bin_edges(mag, bins) -> np.ndarray:
    """Edges from a bin width (float), a number of bins (int) or the edges themselves."""
    mag = mag[np.isfinite(mag)]
    if np.ndim(bins) == 0:
        if isinstance(bins, (int, np.integer)) and not isinstance(bins, bool):
            if bins < 1:
                raise ValueError(f"bins must be >= 1, got {bins}")
            return np.linspace(mag.min(), mag.max() + 1e-9, int(bins) + 1)
        width = float(bins)
        if not width > 0:
            raise ValueError(f"bins (a width) must be > 0, got {bins!r}")
        lo = math.floor(mag.min() / width) * width
        return np.arange(lo, mag.max() + width, width)
    edges = np.asarray(bins, float)
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError("bins must be increasing edges (at least two)")
    return edges


def _crossing(mags, comp, level: float) -> float:
    """Magnitude where ``comp`` (bright to faint) first falls below ``level`` (linear)."""
    ok = np.isfinite(comp)
    m, c = mags[ok], comp[ok]
    if len(c) == 0 or c[0] < level:
        return float("nan")
    below = np.nonzero(c < level)[0]
    if len(below) == 0:
        return float("nan")
    i = below[0]
    return float(m[i - 1] + (c[i - 1] - level) * (m[i] - m[i - 1]) / (c[i - 1] - c[i]))


def _region(t: Table, by):
    """(N,) region index and the grid (ny, nx) for ``by="region:NYxNX"`` (or "region:N")."""
    if by is None:
        return np.zeros(len(t), np.int64), (1, 1)
    if not isinstance(by, str) or not by.startswith("region:"):
        raise ValueError(f"by must be None or 'region:NYxNX', got {by!r}")
    try:
        parts = [int(v) for v in by.split(":", 1)[1].lower().split("x")]
    except ValueError:
        raise ValueError(f"by must be None or 'region:NYxNX', got {by!r}") from None
    ny, nx = (parts[0], parts[0]) if len(parts) == 1 else parts[:2]
    if ny < 1 or nx < 1:
        raise ValueError(f"by: region grid must be positive, got {by!r}")
    shape = t.meta.get("shape")
    h, w = shape if shape is not None else (np.max(t["y_in"]) + 1, np.max(t["x_in"]) + 1)
    iy = np.clip(((np.asarray(t["y_in"]) + 0.5) * ny / h).astype(np.int64), 0, ny - 1)
    ix = np.clip(((np.asarray(t["x_in"]) + 0.5) * nx / w).astype(np.int64), 0, nx - 1)
    return iy * nx + ix, (ny, nx)


def completeness(ast_table: Table, bins=0.25, by: str | None = None) -> Table:
    """Completeness, bias and error honesty per input-magnitude bin of an AST table.

    Parameters
    ----------
    ast_table : Table
        From :func:`artificial_star_test`.
    bins : float, int or array
        Bin width in mag (float, default 0.25), number of bins (int) or edges (array), over
        ``mag_in``.
    by : str, optional
        ``"region:NYxNX"`` (or ``"region:N"``): also per cell of an NY x NX grid over the image.

    Returns
    -------
    Table
        One row per (region,) bin: ``region`` (with ``by``), ``mag_lo, mag_hi, mag`` (bin
        centre), ``n``, ``n_recovered``, ``completeness`` and ``completeness_err`` (binomial,
        the standard deviation of the Beta(k+1, n-k+1) posterior: never 0 for k = 0 or n),
        ``dmag_median`` and ``dmag_sigma`` (median and MAD-std of ``mag - mag_in`` of the
        recovered stars), ``pull_sigma`` (MAD-std of ``(flux_fit - flux_in) / flux_err``:
        1 when ``flux_err`` is honest), ``spurious_fraction`` (matched but ``|dmag| >= 0.75``,
        over matched). ``meta``: ``mag50``, ``mag90`` (all regions together, interpolated
        where the completeness first falls below 50 % / 90 % going faint; NaN if it never
        does) and ``bins``.
    """
    for c in ("mag_in", "recovered", "matched", "mag", "flux_in", "flux_fit", "flux_err"):
        if c not in ast_table.colnames:
            raise ValueError(f"ast_table lacks column {c!r} (use artificial_star_test's table)")
    mag_in = np.asarray(ast_table["mag_in"], float)
    if len(mag_in) == 0:
        raise ValueError("ast_table is empty")
    edges = _bin_edges(mag_in, bins)
    nb = len(edges) - 1
    reg, (ny, nx) = _region(ast_table, by)
    nreg = ny * nx
    b = np.digitize(mag_in, edges) - 1
    inb = (b >= 0) & (b < nb)
    key = np.where(inb, reg * nb + b, -1)
    rec = np.asarray(ast_table["recovered"], bool)
    mat = np.asarray(ast_table["matched"], bool)
    n = np.bincount(key[inb], minlength=nreg * nb)
    k = np.bincount(key[inb & rec], minlength=nreg * nb)
    nm = np.bincount(key[inb & mat], minlength=nreg * nb)
    dmag = np.asarray(ast_table["mag"], float) - mag_in
    with np.errstate(invalid="ignore", divide="ignore"):
        pull = (np.asarray(ast_table["flux_fit"], float) - np.asarray(ast_table["flux_in"], float)) \
            / np.asarray(ast_table["flux_err"], float)
        comp = k / n
        err = np.sqrt((k + 1.0) * (n - k + 1.0) / ((n + 2.0) ** 2 * (n + 3.0)))
        spur = (nm - k) / nm
    err = np.where(n > 0, err, np.nan)
    # Robust statistics per cell: sort recovered stars by cell, split (no loop over stars).
    sel = np.nonzero(inb & rec)[0]
    order = sel[np.argsort(key[sel], kind="stable")]
    splits = np.searchsorted(key[order], np.arange(1, nreg * nb))
    med, sig, psig = (np.full(nreg * nb, np.nan) for _ in range(3))
    for i, part in enumerate(np.split(order, splits)):  # loop over bins, not stars
        if len(part):
            med[i] = np.median(dmag[part])
            sig[i] = mad_std(dmag[part]) if len(part) > 1 else np.nan
            pp = pull[part][np.isfinite(pull[part])]
            psig[i] = mad_std(pp) if len(pp) > 1 else np.nan
    t = Table()
    if by is not None:
        t["region"] = np.repeat(np.arange(nreg), nb)
    t["mag_lo"] = np.tile(edges[:-1], nreg)
    t["mag_hi"] = np.tile(edges[1:], nreg)
    t["mag"] = 0.5 * (t["mag_lo"] + t["mag_hi"])
    t["n"] = n
    t["n_recovered"] = k
    t["completeness"] = comp
    t["completeness_err"] = err
    t["dmag_median"] = med
    t["dmag_sigma"] = sig
    t["pull_sigma"] = psig
    t["spurious_fraction"] = spur
    nt = n.reshape(nreg, nb).sum(0)
    kt = k.reshape(nreg, nb).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ct = kt / nt
    centres = 0.5 * (edges[:-1] + edges[1:])
    t.meta["mag50"] = _crossing(centres, ct, 0.5)
    t.meta["mag90"] = _crossing(centres, ct, 0.9)
    t.meta["bins"] = edges.tolist()
    if by is not None:
        t.meta["region_grid"] = [ny, nx]
    return t
