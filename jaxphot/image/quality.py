"""Per-star quality columns of a PSF-photometry catalogue, and the cuts on them.

Every column is measured in a box of ``(2 h + 1)^2`` pixels (``h`` = the fit's half size)
around the star's nearest pixel, from the data ``d`` (sky-subtracted), the model ``M`` of every
fitted star, the star's own model ``F P`` (flux ``F``, PRF ``P`` at the fitted position), the
local background offset ``b`` fitted in its cutout, and the per-pixel noise ``sigma`` of the fit
weights (``w = 1 / sigma^2``; masked pixels have ``w = 0``). The residual is ``r = d - M - b``.

================  ==============================================================================
column            definition
================  ==============================================================================
``sharpness``     ``-c_s / err(c_s)``: minus the z-score of a width change. ``c_s`` is the
                  coefficient of the width template ``T_s = F dP_s/ds`` (``P_s(u, v) = P(u/s,
                  v/s) / s^2`` at ``s = 1``) in the weighted linear least-squares fit of ``r`` by
                  ``[P, F dP/dx, F dP/dy, 1, T_s, T_+, T_x]``; ``err(c_s)`` its 1-sigma error
                  from that fit. N(0, 1) for a star the PSF describes, at any flux; > 0 too
                  sharp (cosmic ray, hot pixel), < 0 too broad (galaxy, unresolved blend), as
                  DOLPHOT's sharpness; its size grows with S/N for a real mismatch.
``roundness``     ``sqrt(z_+^2 + z_x^2)``: the z-scores of the two ellipticity templates
                  ``T_+ = F (u dP/dx0 - v dP/dy0)`` (stretch along x) and ``T_x = F (v dP/dx0 +
                  u dP/dy0)`` (along the diagonal) of the same fit. Rayleigh(1) for a round
                  star (median 1.18, 99.8 % below 3.5); large for an elongated source.
``crowding``      ``-2.5 log10(F / (F + N))``, mag: how much brighter the star would be measured
                  if its fitted neighbours were not subtracted. ``N = sum(P (M - F P)) /
                  sum(P^2)`` is the neighbours' model light in the star's PSF-weighted aperture
                  (unweighted sums over the box). 0 for an isolated star.
``qfit``          ``sum |r| / F`` over the box (photutils' ``qfit``: absolute residuals of the
                  fit in the source's fitting region over the fitted flux).
``cfit``          ``r[j0, i0] / F`` at the pixel nearest the fitted centre (photutils' ``cfit``).
``reduced_chi2``  ``sum w r^2 / (n - 3)`` over the box's ``n`` usable pixels (photutils'
                  ``reduced_chi2``: 3 free parameters x, y, flux).
================  ==============================================================================

:func:`apply_cuts` adds a boolean ``good`` column from cuts on these columns and ``flags``.
Rows excluded from the model (merged, faded or failed) get NaN.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from astropy.table import Table

from ..core.batching import pad, slice_psf
from ..core.fit import model_cutouts
from ..core.flags import FitFlag
from ..core.params import pack
from .cutouts import extract_cutouts, values_at
from .render import EXCLUDED_FROM_MODEL

__all__ = ["quality_columns", "add_quality_columns", "apply_cuts", "DEFAULT_CUTS", "QUALITY_COLUMNS"]

#: Names of the columns :func:`quality_columns` returns.
QUALITY_COLUMNS = ("sharpness", "roundness", "crowding", "qfit", "cfit", "reduced_chi2")

#: The default cuts of :func:`apply_cuts`: ``column: (low, high)`` (None: open), and ``flags``:
#: the bits a good star must not have. Sharpness and roundness are z-scores (a star: N(0, 1)
#: and Rayleigh(1)); 3.5 keeps 99.95 % / 99.8 % of the stars the PSF describes.
DEFAULT_CUTS = {
    "sharpness": (-3.5, 3.5),
    "roundness": (None, 3.5),
    "reduced_chi2": (None, 2.0),
    "crowding": (None, 0.5),
    "flags": int(EXCLUDED_FROM_MODEL | FitFlag.NOT_CONVERGED | FitFlag.SINGULAR_COVARIANCE
                 | FitFlag.SATURATED),
}

_CHUNK = 256  # stars per model_cutouts call: one compiled shape
_STEP = 0.05  # px, central differences of the PRF


def _prf_boxes(psf, lx, ly, p: int, cx=None, cy=None) -> np.ndarray:
    """(N, p, p) unit-flux PRFs at local positions ``lx, ly`` (a varying PSF at ``cx, cy``)."""
    n = len(lx)
    size = -(-n // _CHUNK) * _CHUNK
    zeros = np.zeros(size)
    c = (p - 1) / 2.0
    par = pack(zeros, zeros, zeros, pad(np.ones(n), size, 0.0)[:, None],
               pad(lx, size, c)[:, None], pad(ly, size, c)[:, None])
    if hasattr(psf, "at"):
        import jax.numpy as jnp

        psf = slice_psf(psf.at(jnp.asarray(cx), jnp.asarray(cy)), 0, n, size)
    return np.asarray(model_cutouts(psf, par, (p, p), chunk_size=_CHUNK)[:n], np.float64)


def quality_columns(data, sigma, model, psf, x, y, flux, bkg, half: int,
                    usable=None) -> dict[str, np.ndarray]:
    """The quality columns (module docstring) of stars in an image.

    Parameters
    ----------
    data : (H, W) array
        Sky-subtracted image (image units); NaN where unusable.
    sigma : (H, W) array
        1-sigma noise of each pixel (image units), as in the fit weights.
    model : (H, W) array
        Model image of every fitted star (no background), image units.
    psf : PSF model
        The PSF of the fit (a varying one is taken at each star).
    x, y, flux : (N,) arrays
        Fitted positions (pixels) and fluxes (image units x pixels) of the stars.
    bkg : (N,) array
        The local background offset fitted under each star (image units per pixel; 0 if none).
    half : int
        Half size of the box, pixels.
    usable : (N,) bool array, optional
        Stars to measure (default: finite x, y and flux > 0); the others get NaN.

    Returns
    -------
    dict of str to (N,) float arrays
        ``sharpness, roundness, crowding, qfit, cfit, reduced_chi2``.
    """
    x, y, flux = (np.asarray(v, np.float64) for v in (x, y, flux))
    n = len(x)
    if int(half) < 1:
        raise ValueError(f"half must be >= 1 pixel, got {half!r}")
    out = {k: np.full(n, np.nan) for k in QUALITY_COLUMNS}
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(flux) & (flux > 0)
    if usable is not None:
        ok &= np.asarray(usable, bool)
    idx = np.nonzero(ok)[0]
    if len(idx) == 0:
        return out
    half = int(half)
    p = 2 * half + 1
    xs, ys, fs = x[idx], y[idx], flux[idx]
    b = np.nan_to_num(np.asarray(bkg, np.float64)[idx] if np.ndim(bkg) else np.full(len(idx), bkg))
    ox = np.rint(xs).astype(np.int64) - half
    oy = np.rint(ys).astype(np.int64) - half
    lx, ly = xs - ox, ys - oy
    # PRF and its position derivatives (central differences), one batched call.
    h = _STEP
    shifts = [(0, 0), (h, 0), (-h, 0), (0, h), (0, -h)]
    allx = np.concatenate([lx + sx for sx, _ in shifts])
    ally = np.concatenate([ly + sy for _, sy in shifts])
    boxes = _prf_boxes(psf, allx, ally, p, np.tile(xs, 5), np.tile(ys, 5)).reshape(5, len(idx), p, p)
    prf = boxes[0]
    dpx = (boxes[1] - boxes[2]) / (2 * h)  # dP/dx0
    dpy = (boxes[3] - boxes[4]) / (2 * h)
    u = np.arange(p)[None, None, :] - lx[:, None, None]
    v = np.arange(p)[None, :, None] - ly[:, None, None]
    f3 = fs[:, None, None]
    t_s = f3 * (-2.0 * prf + u * dpx + v * dpy)  # dP_s/ds = -2P - u dP/du - v dP/dv
    t_p = f3 * (u * dpx - v * dpy)
    t_x = f3 * (v * dpx + u * dpy)

    d, inside = extract_cutouts(np.asarray(data, np.float64), ox, oy, p, np.nan)
    s = extract_cutouts(np.asarray(sigma, np.float64), ox, oy, p, np.inf)[0]
    m = extract_cutouts(np.asarray(model, np.float64), ox, oy, p, 0.0)[0]
    valid = inside & np.isfinite(d) & np.isfinite(s) & (s > 0)
    w = np.where(valid, 1.0 / np.where(valid, s, 1.0) ** 2, 0.0)
    r = np.where(valid, d - m - b[:, None, None], 0.0)

    # Weighted linear fit of the residual: flux, position, offset, width, two ellipticities.
    design = np.stack([prf, f3 * dpx, f3 * dpy, np.ones_like(prf), t_s, t_p, t_x], 1)
    design = design.reshape(len(idx), 7, p * p)
    wf, rf = w.reshape(len(idx), -1), r.reshape(len(idx), -1)
    a = np.einsum("nip,np,njp->nij", design, wf, design)
    rhs = np.einsum("nip,np,np->ni", design, wf, rf)
    npix = valid.reshape(len(idx), -1).sum(1)
    fit_ok = npix > 7
    a = np.where(fit_ok[:, None, None], a, np.eye(7))
    # Scale to unit diagonal: the columns differ by orders of magnitude.
    dg = np.sqrt(np.maximum(np.einsum("nii->ni", a), 1e-300))
    an = a / dg[:, :, None] / dg[:, None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = np.linalg.pinv(an) / dg[:, :, None] / dg[:, None, :]
        coef = np.einsum("nij,nj->ni", cov, rhs)
        z = coef / np.sqrt(np.einsum("nii->ni", cov))
    z = np.where(fit_ok[:, None], z, np.nan)
    out["sharpness"][idx] = -z[:, 4]
    out["roundness"][idx] = np.hypot(z[:, 5], z[:, 6])

    own = f3 * prf
    nb = np.where(inside, m - own, 0.0)
    p2 = np.sum(np.where(inside, prf**2, 0.0), (1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        nflux = np.sum(np.where(inside, prf, 0.0) * nb, (1, 2)) / p2
        out["crowding"][idx] = 2.5 * np.log10(np.maximum(fs + nflux, 1e-300) / fs)
        out["qfit"][idx] = np.sum(np.abs(r), (1, 2)) / fs
        ci = np.clip(np.rint(lx).astype(np.int64), 0, p - 1)
        cj = np.clip(np.rint(ly).astype(np.int64), 0, p - 1)
        cen = r[np.arange(len(idx)), cj, ci]
        out["cfit"][idx] = np.where(valid[np.arange(len(idx)), cj, ci], cen, np.nan) / fs
        dof = npix - 3
        out["reduced_chi2"][idx] = np.where(dof > 0, np.sum(w * r**2, (1, 2)) / np.maximum(dof, 1),
                                            np.nan)
    return out


def _resolve_cuts(cuts) -> dict:
    """The cut dictionary of ``cuts`` ("default", None or a mapping merged onto the default)."""
    if cuts is None or (isinstance(cuts, str) and cuts == "default"):
        return dict(DEFAULT_CUTS)
    if isinstance(cuts, str):
        raise ValueError(f"cuts must be 'default' or a mapping of column to (low, high), got {cuts!r}")
    if not isinstance(cuts, Mapping):
        raise TypeError(f"cuts must be 'default' or a mapping, got {type(cuts).__name__}")
    out = dict(DEFAULT_CUTS)
    for name, rng in cuts.items():
        if name == "flags":
            out[name] = int(rng)
        elif rng is None:
            out.pop(name, None)  # None drops a default cut
        else:
            if len(rng) != 2:
                raise ValueError(f"cuts[{name!r}] must be (low, high), got {rng!r}")
            out[name] = (rng[0], rng[1])
    return out


def apply_cuts(table: Table, cuts="default") -> Table:
    """Add a boolean ``good`` column: the rows that pass the quality cuts.

    Parameters
    ----------
    table : Table
        A :func:`jaxphot.photometry` catalogue (the columns named in the cuts, and ``flags``).
    cuts : "default" or mapping
        ``"default"``: :data:`DEFAULT_CUTS` (|sharpness| < 3.5, roundness < 3.5, reduced_chi2
        < 2, crowding < 0.5 mag, none of the removed/failed/saturated flag bits). A mapping
        ``{column: (low, high)}`` (None for an open end) replaces or adds cuts on top of the
        default; ``{column: None}`` drops one; ``{"flags": bits}`` sets the forbidden bits.
        A row passes when every cut column is finite and within its range (low < v < high).

    Returns
    -------
    Table
        ``table`` itself, with ``good`` added (or replaced) and ``meta["cuts"]``.

    Raises
    ------
    ValueError
        For a ``cuts`` string other than "default", a range that is not a pair, or a cut on a
        column the table lacks.
    """
    if not isinstance(table, Table):
        raise TypeError(f"table must be an astropy Table, got {type(table).__name__}")
    spec = _resolve_cuts(cuts)
    good = np.ones(len(table), bool)
    for name, rng in spec.items():
        if name == "flags":
            if "flags" in table.colnames:
                good &= (np.asarray(table["flags"], np.int64) & int(rng)) == 0
            continue
        if name not in table.colnames:
            raise ValueError(f"cuts: the table has no column {name!r} (columns: {table.colnames})")
        val = np.asarray(table[name], np.float64)
        lo, hi = rng
        good &= np.isfinite(val)
        with np.errstate(invalid="ignore"):
            if lo is not None:
                good &= val > float(lo)
            if hi is not None:
                good &= val < float(hi)
    table["good"] = good
    table.meta["cuts"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.items()}
    return table


def add_quality_columns(table: Table, data, sigma, model, psf, half: int, level=None) -> Table:
    """Add the :data:`QUALITY_COLUMNS` to a catalogue (``x_fit, y_fit, flux_fit, bkg, flags``).

    ``level`` (H, W), the background map that ``data`` had subtracted, turns the catalogue's
    ``bkg`` (map + fitted offset) back into the fitted offset. Rows with a flag bit of
    :data:`~jaxphot.image.render.EXCLUDED_FROM_MODEL` get NaN. Returns ``table``.
    """
    x = np.asarray(table["x_fit"], np.float64)
    y = np.asarray(table["y_fit"], np.float64)
    offset = np.zeros(len(table))
    if "bkg" in table.colnames:
        offset = np.asarray(table["bkg"], np.float64)
        if level is not None:
            offset = offset - values_at(level, x, y)
    live = (np.asarray(table["flags"], np.int64) & EXCLUDED_FROM_MODEL) == 0
    cols = quality_columns(data, sigma, model, psf, x, y, np.asarray(table["flux_fit"], np.float64),
                           offset, half, usable=live)
    for name in QUALITY_COLUMNS:
        table[name] = cols[name]
    table["crowding"].unit = "mag"
    return table
