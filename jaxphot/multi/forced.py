"""Forced PSF photometry of a fixed master list in many exposures: :func:`forced_photometry`.

With positions fixed, the model of a group of K stars in a cutout,
``B0 + Bx (x - xc) + By (y - yc) + sum_k F_k PRF_k``, is linear in the fluxes and the sky, so
each group in each exposure is an exact weighted linear least-squares problem. The normal
equations of every star-epoch are formed and solved at once, batched with JAX (batch axis
innermost), in fixed-size padded chunks so memory is bounded for any number of star-epochs.
With a Poisson noise model (``gain``) the weights depend on the model; the solve is then
repeated a few times with the weights of the previous model (iteratively reweighted), which
converges to the same solution as the non-linear fit of :func:`~jaxphot.core.fit.fit_cutouts`
with ``fixed=("x", "y")``.

Groups of interacting stars are found per exposure (their pixel positions differ from image to
image) with :func:`~jaxphot.image.grouping.group_buckets`, and rows of all exposures that share
a PSF and a bucket shape are solved in the same batch.
"""

from __future__ import annotations

import enum
import functools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from astropy.table import Table
from jaxtyping import Array, Bool, Float

from ..core.batching import chunks, default_chunk_size, map_chunks, pad
from ..core.config import default_dtype, enable_compilation_cache
from ..core.flags import FitFlag
from ..core.solve import covariance, decouple_fixed, normal_matrix
from ..image.cutouts import extract_cutouts
from ..image.grouping import group_buckets, group_slots
from ..image.render import render_image
from ..progress import Progress
from ..psf.measure import is_varying, psf_fwhm, support_half
from ..validate import check_non_negative, check_positive
from .inputs import (
    PerImage,
    catalog_positions,
    image_positions,
    load_exposures,
    per_image_inputs,
    warn_bad,
)

__all__ = ["forced_photometry", "pivot_light_curves", "ForcedFlag", "solve_linear_chunk", "forced_table",
           "check_forced_options"]

_N_REWEIGHT = 3  # re-solves with model-based Poisson weights (the change after 3 is << 1e-3 sigma)
_PIXELS_PER_CHUNK = 1 << 22  # bounds one chunk's PRF stack: rows * H * W * (K + 3)


class ForcedFlag(enum.IntFlag):
    """Bits of the ``flags`` column of :func:`forced_photometry`.

    The low bits are those of :class:`~jaxphot.FitFlag` with the same meaning; the high bits
    are specific to forced photometry.

    Attributes
    ----------
    SINGULAR_COVARIANCE (2)
        The group's normal matrix could not be inverted: flux and error are NaN.
    NON_FINITE (4)
        The solution is not finite: values are NaN.
    TOO_FEW_PIXELS (16)
        Fewer valid pixels than fitted parameters + 1: values are NaN.
    BAD_PIXELS (32)
        Part of the star's PRF fell on masked, invalid or off-image pixels (still measured).
    OFF_IMAGE (65536)
        The star's position lies outside the image: values are NaN.
    MASKED (131072)
        The pixel under the star is masked or invalid: values are NaN.
    BAD_IMAGE (262144)
        The exposure could not be used (unreadable file, no WCS or transform): values are NaN.
    NO_POSITION (524288)
        The catalogue row has no finite position in this image: values are NaN.
    POOR_FIT (1048576)
        The group's reduced chi^2 is above 3 x max(1, the image's median): light the model
        does not hold (a companion missing from the catalogue, a star split from its group),
        so the flux is biased beyond its error (still measured).
    """

    SINGULAR_COVARIANCE = int(FitFlag.SINGULAR_COVARIANCE)
    NON_FINITE = int(FitFlag.NON_FINITE)
    TOO_FEW_PIXELS = int(FitFlag.TOO_FEW_PIXELS)
    BAD_PIXELS = int(FitFlag.BAD_PIXELS)
    OFF_IMAGE = 1 << 16
    MASKED = 1 << 17
    BAD_IMAGE = 1 << 18
    NO_POSITION = 1 << 19
    POOR_FIT = 1 << 20


@functools.partial(jax.jit, static_argnames=("n_basis", "n_reweight", "per_star"))
def solve_linear_chunk(
    psf, data: Float[Array, " N H W"], var0: Float[Array, " N H W"], valid: Bool[Array, " N H W"],
    x: Float[Array, " N K"], y: Float[Array, " N K"], active: Bool[Array, " N K"],
    inv_gain: Float[Array, " N"], neighbours: Float[Array, " N H W"], flux1: Float[Array, " N K"],
    *, n_basis: int, n_reweight: int, per_star: bool,
):
    """Exact fluxes and sky of fixed-position stars in a chunk of cutouts (batch-first in and out).

    Parameters
    ----------
    psf : PSF model
        One PSF for all rows, or (``per_star``) a batched PSF with one entry per star slot,
        ordered slot-major (entry ``k * N + n`` is star k of row n).
    data, var0, valid : (N, H, W)
        Cutouts (counts, zero where invalid), model-independent variance (1 where invalid) and
        the valid-pixel mask.
    x, y : (N, K)
        Star positions in each cutout's pixel frame; ``active`` False marks padding slots.
    inv_gain : (N,)
        1/gain (ADU/e-) for the Poisson term ``model * inv_gain`` of the variance; 0 for none.
    n_basis : {1, 3}
        Sky terms: a constant, or a tilted plane.
    n_reweight : int
        Re-solves with the previous model's Poisson variance (0 when the variance is fixed).
    neighbours : (N, H, W)
        Model of the stars of a first pass (all of them, the group's own included), counts.
    flux1 : (N, K)
        The group's own first-pass fluxes: what of ``neighbours`` is the group itself. The
        light of every other star is subtracted from the data and added to the variance.
    per_star : bool
        Whether ``psf`` is batched per star slot (spatially varying PSFs).

    Returns
    -------
    theta : (N, n_basis + K)
        Sky terms then fluxes.
    var : (N, n_basis + K)
        Their variances (the diagonal of the inverse normal matrix).
    singular : (N,) bool
    chi2, n_valid : (N,)
    cover : (N, K)
        Fraction of each star's PRF (within the cutout) on valid pixels.
    """
    last = lambda a: jnp.moveaxis(a, 0, -1)  # noqa: E731
    d, v0, ok = last(data), last(var0), last(valid).astype(data.dtype)
    xk, yk, ak = x.T, y.T, active.T  # (K, N)
    h, w = d.shape[:2]
    k, n = xk.shape
    if per_star:
        prf = psf.evaluate(xk.reshape(-1), yk.reshape(-1), (h, w)).reshape(h, w, k, n)
    else:
        prf = psf.evaluate(xk, yk, (h, w))  # (H, W, K, N)
    prf = jnp.where(ak[None, None], prf, 0.0)
    others = last(neighbours) - jnp.sum(prf * flux1.T[None, None], axis=2)
    d = d - others * ok
    yy, xx = jnp.mgrid[0:h, 0:w].astype(d.dtype)
    basis = [jnp.ones((h, w, 1), d.dtype), (xx - (w - 1) / 2.0)[..., None],
             (yy - (h - 1) / 2.0)[..., None]][:n_basis]
    rows = basis + [prf[:, :, j] for j in range(k)]
    free = jnp.concatenate([jnp.ones((n_basis, n), bool), ak])
    ig = inv_gain[None, None, :]
    floor = ig * ig + 1e-30  # one electron: as the non-linear fit's noise model

    def solve(var):
        wgt = ok / var
        a = decouple_fixed(normal_matrix(rows, wgt), free)
        wd = wgt * d
        b = jnp.where(free, jnp.stack([jnp.sum(r * wd, axis=(0, 1)) for r in rows]), 0.0)
        cov, singular = covariance(a, free)
        theta = jnp.einsum("ijn,jn->in", cov, b)
        sky = sum(theta[j] * rows[j] for j in range(n_basis))
        model = sky + sum(theta[j] * rows[j] for j in range(n_basis, len(rows)))
        return theta, cov, singular, (model, sky), wgt

    # The first pass weights by the data (no model yet); the re-solves by the model, unbiased.
    # The model's variance never drops below the sky's: where a bad first solve (unmodelled
    # light in the box) gives a star a large negative flux, a floor at one electron would
    # weight those pixels 50x and more, and the re-solves would run away (seen at 4e-5 of the
    # rows of a 10^5-star field: fluxes of -2e4 with chi2/dof 2000).
    def var_of(model_sky):
        model, sky = model_sky
        return jnp.maximum(v0 + ig * jnp.maximum(jnp.maximum(model + others, sky), 0.0), floor)

    first = (d, jnp.zeros_like(d))
    model = solve(var_of(first))[3]
    # one compiled body for the re-solves (unrolling them multiplies the compile time)
    model = jax.lax.fori_loop(0, max(n_reweight - 1, 0), lambda _, m: solve(var_of(m))[3], model)
    theta, cov, singular, (model, _), wgt = solve(var_of(model)) if n_reweight else solve(var_of(first))
    chi2 = jnp.sum(wgt * (d - model) ** 2, axis=(0, 1))
    n_valid = jnp.sum(ok, axis=(0, 1))
    total = jnp.sum(prf, axis=(0, 1))
    cover = jnp.sum(prf * ok[:, :, None], axis=(0, 1)) / jnp.where(total > 0, total, 1.0)
    var = jnp.diagonal(cov, axis1=0, axis2=1)  # (N, P)
    return theta.T, var, singular, chi2, n_valid, cover.T


class _Rows:
    """Group cutouts waiting to be solved together: one bucket shape and one PSF."""

    def __init__(self, psf, size: int, k: int):
        self.psf, self.size, self.k = psf, size, k
        self.parts: list[dict] = []
        self.n = 0

    def add(self, **part) -> None:
        self.parts.append(part)
        self.n += len(part["img"])

    def take(self) -> dict:
        out = {key: np.concatenate([p[key] for p in self.parts]) for key in self.parts[0]}
        self.parts, self.n = [], 0
        return out


def _noise(err, gain, read_noise, shape, i):
    """``(var0 (H, W) or scalar, inv_gain, unweighted)`` of exposure ``i``."""
    if err is not None:
        if np.ndim(err) and np.shape(err) != shape:
            raise ValueError(f"error[{i}] has shape {np.shape(err)}, image {i} has {shape}")
        e = np.broadcast_to(np.asarray(err, np.float64), shape)
        return e**2, 0.0, False
    if gain is None and read_noise is None:
        return 1.0, 0.0, True
    g = 1.0 if gain is None else check_positive("gain", gain, "e-/ADU")
    rn = 0.0 if read_noise is None else check_non_negative("read_noise", read_noise, "e-")
    return (rn / g) ** 2, 1.0 / g, False


class _Geometry:
    """Fitting box and grouping radius of one PSF (pixels)."""

    def __init__(self, psf, fit_half, crit_sep):
        fwhm = psf_fwhm(psf)
        self.fit_half = int(fit_half) if fit_half is not None else max(3, int(math.ceil(1.5 * fwhm)))
        # Stars whose light reaches each other's box are fitted together.
        self.crit_sep = float(crit_sep) if crit_sep is not None else self.fit_half + 1.5 * fwhm
        # Stars within a FWHM are near-degenerate: never fitted apart (unless crit_sep is smaller).
        self.keep_sep = min(fwhm, self.crit_sep)
        self.support = support_half(psf, fwhm)


def _image_rows(i, data, var0, valid, xs, ys, live, geom, max_k, inv_gain, model, flux1):
    """The group cutouts of exposure ``i``: one dict of row arrays per (size, K) bucket."""
    idx = np.nonzero(live)[0]
    if not len(idx):
        return []
    gid, buckets = group_buckets(xs[idx], ys[idx], geom.crit_sep, max_k, geom.fit_half,
                                 keep_sep=geom.keep_sep)
    out = []
    for b in buckets:
        slot = group_slots(gid, b.group_ids, b.k)
        act = slot >= 0
        star = np.where(act, idx[np.maximum(slot, 0)], -1)
        sx = np.where(act, xs[np.maximum(star, 0)], np.nan)
        sy = np.where(act, ys[np.maximum(star, 0)], np.nan)
        cx = np.rint(0.5 * (np.nanmin(sx, 1) + np.nanmax(sx, 1))).astype(np.int64)
        cy = np.rint(0.5 * (np.nanmin(sy, 1) + np.nanmax(sy, 1))).astype(np.int64)
        ox, oy = cx - b.size // 2, cy - b.size // 2
        ok = extract_cutouts(valid, ox, oy, b.size, False)[0]
        # Fit only the pixels within fit_half (a box) of a group star's pixel: a bucket's cutout
        # is sized for its widest group and would otherwise hold stars that are not modelled.
        g = np.arange(b.size)
        rx, ry = np.rint(sx) - ox[:, None], np.rint(sy) - oy[:, None]  # (G, K), NaN for padding
        with np.errstate(invalid="ignore"):
            near_x = np.abs(g[None, :, None] - rx[:, None, :]) <= geom.fit_half  # (G, S, K)
            near_y = np.abs(g[None, :, None] - ry[:, None, :]) <= geom.fit_half
        ny8, nx8 = near_y.astype(np.uint8), near_x.astype(np.uint8)
        # a star is partly on bad (masked, invalid, off-image) pixels when its own box holds one
        partial = np.einsum("gyx,gyk,gxk->gk", (~ok).astype(np.uint8), ny8, nx8) > 0
        ok &= np.einsum("gyk,gxk->gyx", ny8, nx8) > 0
        d = extract_cutouts(data, ox, oy, b.size, 0.0)[0]
        v = extract_cutouts(var0, ox, oy, b.size, 1.0)[0] if np.ndim(var0) else np.full(d.shape, var0)
        nb = (extract_cutouts(model, ox, oy, b.size, 0.0)[0] if model is not None
              else np.zeros(d.shape))
        f1 = np.where(act, flux1[np.maximum(star, 0)], 0.0)
        lx = np.where(act, sx - ox[:, None], b.size / 2.0)
        ly = np.where(act, sy - oy[:, None], b.size / 2.0)
        out.append((b.size, b.k, dict(
            data=np.where(ok, d, 0.0), var0=np.where(ok, v, 1.0), valid=ok, x=lx, y=ly,
            active=act, star=star, ox=ox, oy=oy, img=np.full(len(ox), i),
            inv_gain=np.full(len(ox), inv_gain), neighbours=nb, flux1=f1, partial=partial & act)))
    return out


def _solve_rows(rows: _Rows, n_basis: int, chunk: int, dtype) -> dict:
    """Solve a batch of group cutouts in padded chunks; returns per-row numpy results."""
    r = rows.take()
    psf, size, k = rows.psf, rows.size, rows.k
    per_star = is_varying(psf)
    cap = max(64, 1 << int(math.log2(max(1, _PIXELS_PER_CHUNK // (size * size * (k + 3))))))
    chunk = min(chunk, cap)
    reweight = _N_REWEIGHT if np.any(r["inv_gain"] > 0) else 0

    def run(span):
        a, b, s = span
        sl = slice(a, b)
        x = pad(r["x"][sl], s, size / 2.0)
        y = pad(r["y"][sl], s, size / 2.0)
        p = psf
        if per_star:  # the PSF at each star's own image position, slot-major
            gx = x + pad(r["ox"][sl], s, 0)[:, None]
            gy = y + pad(r["oy"][sl], s, 0)[:, None]
            p = psf.at(gx.T.ravel(), gy.T.ravel())
        res = solve_linear_chunk(
            p, jnp.asarray(pad(r["data"][sl], s, 0.0), dtype), jnp.asarray(pad(r["var0"][sl], s, 1.0), dtype),
            jnp.asarray(pad(r["valid"][sl], s, False)), jnp.asarray(x, dtype), jnp.asarray(y, dtype),
            jnp.asarray(pad(r["active"][sl], s, False)), jnp.asarray(pad(r["inv_gain"][sl], s, 0.0), dtype),
            jnp.asarray(pad(r["neighbours"][sl], s, 0.0), dtype),
            jnp.asarray(pad(r["flux1"][sl], s, 0.0), dtype),
            n_basis=n_basis, n_reweight=reweight, per_star=per_star)
        return [np.asarray(v, np.float64)[: b - a] for v in res]

    # every chunk padded to one size: one compilation per bucket shape, whatever the batch sizes
    parts = map_chunks(run, [(a, b, chunk) for a, b, _ in chunks(len(r["img"]), chunk)])
    theta, var, sing, chi2, nval, cover = (np.concatenate(v) for v in zip(*parts, strict=True))
    r.update(theta=theta, var=var, singular=sing.astype(bool), chi2=chi2, n_valid=nval, cover=cover,
             size=np.full(len(chi2), size))
    return r


def _scatter(out: dict, r: dict, n_basis: int, unweighted: np.ndarray) -> None:
    """Write solved rows into the (T, N) output arrays."""
    act = r["active"]
    k = act.shape[1]
    n_free = n_basis + act.sum(1)
    dof = r["n_valid"] - n_free
    theta, var = r["theta"], r["var"]
    flux = theta[:, n_basis:]
    err = np.sqrt(np.maximum(var[:, n_basis:], 0.0))
    scale = np.where(unweighted[r["img"]], np.sqrt(np.where(dof > 0, r["chi2"] / np.maximum(dof, 1), np.nan)),
                     1.0)
    err = err * scale[:, None]
    c = (r["size"] - 1) / 2.0
    bkg = theta[:, :1]
    if n_basis == 3:
        bkg = bkg + theta[:, 1:2] * (r["x"] - c[:, None]) + theta[:, 2:3] * (r["y"] - c[:, None])
    bkg = np.broadcast_to(bkg, flux.shape)
    flags = np.zeros(flux.shape, np.int64)
    too_few = (dof < 1)[:, None]
    nonfinite = ~np.isfinite(flux) | ~np.isfinite(r["chi2"])[:, None]
    sing = r["singular"][:, None] & ~too_few
    flags |= np.where(too_few, ForcedFlag.TOO_FEW_PIXELS, 0)
    flags |= np.where(nonfinite & ~too_few, ForcedFlag.NON_FINITE, 0)
    flags |= np.where(sing, ForcedFlag.SINGULAR_COVARIANCE, 0)
    flags |= np.where(r["partial"], ForcedFlag.BAD_PIXELS, 0)
    bad = too_few | nonfinite | sing
    flux = np.where(bad, np.nan, flux)
    err = np.where(bad, np.nan, err)
    rows, slots = np.nonzero(act)
    img, star = r["img"][rows], r["star"][rows, slots]
    out["flux"][img, star] = flux[rows, slots]
    out["flux_err"][img, star] = err[rows, slots]
    out["bkg"][img, star] = np.where(bad, np.nan, bkg)[rows, slots]
    out["chi2"][img, star] = np.where(too_few[:, 0], np.nan, r["chi2"])[rows]
    out["dof"][img, star] = dof[rows]
    out["group_size"][img, star] = act.sum(1)[rows]
    out["flags"][img, star] |= flags[rows, slots]
    del k


def forced_photometry(
    images,
    catalog,
    psf,
    *,
    wcs=None,
    error=None,
    mask=None,
    gain=None,
    read_noise=None,
    background: str = "plane",
    progress=False,
    fit_half: int | None = None,
    crit_sep: float | None = None,
    max_group_size: int = 16,
    chunk_size: int | None = None,
    neighbours: int = 1,
) -> Table:
    """PSF photometry at fixed catalogue positions in every exposure (forced photometry).

    In each exposure every star's flux and a local sky are fitted with the positions held; stars
    close enough to interact are fitted together. With positions fixed the problem is linear,
    so it is solved exactly (normal equations, batched with JAX over all star-epochs).

    Parameters
    ----------
    images : (T, H, W) array, or list of (H, W) arrays and/or FITS paths
        The exposures (counts, ADU). An unreadable file gives NaN rows flagged ``BAD_IMAGE`` and
        a :class:`~jaxphot.multi.inputs.BadImageWarning`; the others are measured.
    catalog : astropy Table
        The master list: ``ra, dec`` (degrees) and/or ``x, y`` (pixels of the first image), with
        optional ``id``/``star_id``. Rows without finite coordinates get NaN and ``NO_POSITION``.
    psf : PSF model, spec string, or list of T of them
        One PSF for all exposures or one per exposure; a spatially varying PSF (with ``.at``)
        is evaluated at each star's own position.
    wcs : WCS, pixel transform, or list of T of them, optional
        Per exposure: an astropy WCS, a callable ``(x, y) -> (x', y')`` or a (2, 3) affine
        matrix from first-image pixels to this image's, or None (the FITS header's WCS; without
        any WCS and with ``x, y`` in the catalogue, the images are taken as registered).
    error : float, (H, W) array, (T, H, W) array or list of T, optional
        1-sigma pixel errors (counts). Without it the variance is ``model/gain +
        (read_noise/gain)**2``; without gain and read noise too the fit is unweighted and the
        errors are scaled by ``sqrt(chi2/dof)``.
    mask : bool (H, W), (T, H, W) or list of T, optional
        True for pixels to ignore.
    gain, read_noise : float or list of T floats, optional
        Electrons per ADU and read noise (electrons), for the Poisson noise model.
    background : {"plane", "constant"}
        Local sky per group and exposure: a tilted plane or a constant.
    progress : bool or callable
        Progress report (see :class:`~jaxphot.progress.Progress`).
    fit_half : int, optional
        Half size of the fitting box around a star (pixels); default ``max(3, ceil(1.5 FWHM))``.
    crit_sep : float, optional
        Stars closer than this (pixels) are fitted together; default ``fit_half + 1.5 FWHM``.
    max_group_size : int
        Largest group fitted jointly (bigger groups are split).
    chunk_size : int, optional
        Group cutouts per compiled call (bounds memory).
    neighbours : int
        Passes after the first in which the light of the stars outside each group (rendered
        with the previous pass's fluxes) is subtracted from its cutout and added to its
        variance (0: groups alone). It matters where grouping splits a large cluster.

    Returns
    -------
    astropy Table
        One row per star and exposure (star-major): ``star_id, image_id, x, y`` (pixels in that
        exposure), ``flux, flux_err`` (counts), ``bkg`` (sky per pixel at the star), ``chi2,
        dof`` (of the star's group), ``group_size``, ``flags`` (:class:`ForcedFlag`), and ``mjd``
        when a header gives ``MJD-OBS`` or ``DATE-OBS``. Every catalogue row appears for every
        exposure. ``meta["images"]`` names the exposures.

    Raises
    ------
    ValueError
        For an unusable catalogue, mismatched per-image lists, sky positions without any WCS,
        an unknown ``background`` or a malformed PSF.
    """
    enable_compilation_cache()
    check_forced_options(background, max_group_size, neighbours)
    n_basis = 3 if background == "plane" else 1
    exps = load_exposures(images)
    t = len(exps)
    cat = catalog_positions(catalog)
    n = len(cat["star_id"])
    opts = per_image_inputs(t, psf=psf, wcs=wcs, error=error, mask=mask, gain=gain,
                            read_noise=read_noise)
    psfs, transforms, errors, masks = opts.psfs, opts.transforms, opts.errors, opts.masks
    gains, noises = opts.gains, opts.noises
    positions = image_positions(cat, transforms, exps)

    shape2 = (t, n)
    out = {"x": np.full(shape2, np.nan), "y": np.full(shape2, np.nan),
           "flux": np.full(shape2, np.nan), "flux_err": np.full(shape2, np.nan),
           "bkg": np.full(shape2, np.nan), "chi2": np.full(shape2, np.nan),
           "dof": np.zeros(shape2, np.int64), "group_size": np.zeros(shape2, np.int64),
           "flags": np.zeros(shape2, np.int64)}
    unweighted = np.zeros(t, bool)
    geoms: dict[int, _Geometry] = {}
    pending: dict[tuple, _Rows] = {}
    chunk = int(chunk_size or default_chunk_size())
    dtype = default_dtype(np.zeros(1))
    prog = Progress(progress, total=t, desc="forced")

    def flush(key):
        _scatter(out, _solve_rows(pending[key], n_basis, chunk, dtype), n_basis, unweighted)

    states = []
    for i, (e, pos) in enumerate(zip(exps, positions, strict=True)):
        if isinstance(pos, str):
            warn_bad(e.name, pos)
            out["flags"][i] |= ForcedFlag.BAD_IMAGE
            states.append(None)
            continue
        data = e.data
        h, w = data.shape
        xs, ys = (np.asarray(a, np.float64) for a in pos)
        out["x"][i], out["y"][i] = xs, ys
        var0, inv_gain, unweighted[i] = _noise(errors[i], gains[i], noises[i], data.shape, i)
        valid = np.isfinite(data)
        if np.ndim(var0):
            valid &= np.isfinite(var0) & (var0 > 0)
        if masks[i] is not None:
            m = np.broadcast_to(np.asarray(masks[i], bool), data.shape) if np.ndim(masks[i]) else None
            if m is None or m.shape != data.shape:
                raise ValueError(f"mask[{i}] must have the shape {data.shape} of image {i}")
            valid &= ~m
        finite = np.isfinite(xs) & np.isfinite(ys)
        on = finite & (xs >= -0.5) & (xs < w - 0.5) & (ys >= -0.5) & (ys < h - 0.5)
        ix = np.clip(np.rint(np.where(on, xs, 0)).astype(np.int64), 0, w - 1)
        iy = np.clip(np.rint(np.where(on, ys, 0)).astype(np.int64), 0, h - 1)
        centre_ok = on & valid[iy, ix]
        out["flags"][i] |= np.where(~finite, ForcedFlag.NO_POSITION, 0)
        out["flags"][i] |= np.where(finite & ~on, ForcedFlag.OFF_IMAGE, 0)
        out["flags"][i] |= np.where(on & ~centre_ok, ForcedFlag.MASKED, 0)
        p = psfs[i]
        geoms.setdefault(id(p), _Geometry(p, fit_half, crit_sep))
        states.append((data, var0, valid, xs, ys, centre_ok, inv_gain))
    input_flags = out["flags"].copy()

    n_pass = 1 + int(neighbours)
    for it in range(n_pass):
        flux1 = np.nan_to_num(out["flux"])
        out["flags"][:] = input_flags
        for i, st in enumerate(states):
            if st is None:
                continue
            data, var0, valid, xs, ys, live, inv_gain = st
            p = psfs[i]
            model = None
            if it:  # every star of the first pass: neighbours outside a group are subtracted
                good = live & np.isfinite(out["flux"][i])
                model = render_image(p, xs[good], ys[good], flux1[i, good], data.shape,
                                     stamp=2 * geoms[id(p)].support + 1)
            for size, k, part in _image_rows(i, data, var0, valid, xs, ys, live, geoms[id(p)],
                                             int(max_group_size), inv_gain, model, flux1[i]):
                key = (id(p), size, k)
                pending.setdefault(key, _Rows(p, size, k)).add(**part)
                if pending[key].n >= 4 * chunk:
                    flush(key)
            prog(f"pass {it + 1}/{n_pass}, image {i + 1}/{t}", (it * t + i + 1) / n_pass)
        for key, rows in pending.items():
            if rows.n:
                flush(key)
    prog.close()
    _flag_poor_fits(out)
    return forced_table(out, cat["star_id"], [e.name for e in exps], [e.mjd for e in exps])


def check_forced_options(background: str = "plane", max_group_size: int = 16,
                         neighbours: int = 1, opts: PerImage | None = None) -> None:
    """ValueError for a :func:`forced_photometry` option that would fail every exposure.

    ``opts`` (from :func:`~jaxphot.multi.inputs.per_image_inputs`): also each exposure's
    ``gain`` (> 0) and ``read_noise`` (>= 0) where no ``error`` replaces them.
    """
    if background not in ("plane", "constant"):
        raise ValueError(f"background must be 'plane' or 'constant', got {background!r}")
    if int(max_group_size) < 1:
        raise ValueError(f"max_group_size must be >= 1, got {max_group_size}")
    if int(neighbours) < 0:
        raise ValueError(f"neighbours must be >= 0, got {neighbours}")
    for err, g, rn in zip(*((opts.errors, opts.gains, opts.noises) if opts else ((),) * 3),
                          strict=True):
        if err is None and g is not None:
            check_positive("gain", g, "e-/ADU")
        if err is None and rn is not None:
            check_non_negative("read_noise", rn, "e-")


def _flag_poor_fits(out: dict) -> None:
    """``POOR_FIT`` on rows whose reduced chi^2 is far above their image's median."""
    red = out["chi2"] / np.where(out["dof"] > 0, out["dof"], np.nan)  # (T, N), NaN when unmeasured
    with warnings.catch_warnings():  # an image with no measured row has no median: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(red, axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):
        poor = red > 3.0 * np.maximum(np.nan_to_num(med, nan=1.0), 1.0)
    out["flags"] |= np.where(poor, ForcedFlag.POOR_FIT, 0)


def forced_table(cols: dict, star_id: np.ndarray, names: list, mjd) -> Table:
    """The long (star-major) table of :func:`forced_photometry` from its (T, N) columns.

    ``cols`` maps ``x, y, flux, flux_err, bkg, chi2, dof, group_size, flags`` to (T, N)
    arrays; ``star_id`` is (N,), ``names`` the T exposures' names and ``mjd`` their (T,) MJDs
    (NaN where unknown; the column is left out when none is known).
    """
    t, n = cols["flux"].shape
    tab = Table()
    tab["star_id"] = np.repeat(star_id, t)
    tab["image_id"] = np.tile(np.arange(t), n)
    for name in ("x", "y", "flux", "flux_err", "bkg", "chi2", "dof", "group_size", "flags"):
        tab[name] = cols[name].T.ravel()
    mjd = np.asarray(mjd, float)
    if np.isfinite(mjd).any():
        tab["mjd"] = np.tile(mjd, n)
    tab["x"].unit = tab["y"].unit = "pix"
    tab.meta["images"] = list(names)
    tab.meta["flag_bits"] = {f.name: int(f.value) for f in ForcedFlag}
    return tab


def pivot_light_curves(long_table: Table, columns=("flux", "flux_err", "bkg", "flags")) -> Table:
    """The (star x image) light-curve table of a :func:`forced_photometry` long table.

    Returns one row per star (``star_id``, in order of first appearance) with a (T,) vector
    column per name in ``columns``, ordered by ``image_id``; ``meta["image_id"]`` (and
    ``meta["mjd"]`` when the long table has it) give the exposure of each vector element.
    Star-epochs missing from the long table are NaN (flags 0).
    """
    for c in ("star_id", "image_id", *columns):
        if c not in long_table.colnames:
            raise ValueError(f"long_table has no column {c!r} (columns: {long_table.colnames})")
    sid = np.asarray(long_table["star_id"])
    iid = np.asarray(long_table["image_id"])
    stars, first, srow = np.unique(sid, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(len(stars), np.int64)
    rank[order] = np.arange(len(stars))
    srow = rank[srow.ravel()]
    images, icol = np.unique(iid, return_inverse=True)
    icol = icol.ravel()
    wide = Table()
    wide["star_id"] = stars[order]
    for c in columns:
        v = np.asarray(long_table[c])
        fill = 0 if v.dtype.kind in "iub" else np.nan
        a = np.full((len(stars), len(images)), fill, dtype=v.dtype if v.dtype.kind in "iub" else np.float64)
        a[srow, icol] = v
        wide[c] = a
    wide.meta["image_id"] = images.tolist()
    if "mjd" in long_table.colnames:
        mjd = np.full(len(images), np.nan)
        mjd[icol] = np.asarray(long_table["mjd"], np.float64)
        wide.meta["mjd"] = mjd.tolist()
    return wide
