"""Rendering stars: model stamps, their sum into images, model and residual images.

One renderer for the whole package: every star model that is drawn into an image (neighbour
subtraction in :func:`jaxphot.photometry`, the model image, ePSF neighbour subtraction, the
demo's simulated fields) goes through :func:`stamps` and :func:`scatter_stamps`.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from astropy.table import Table

from ..core.batching import pad, slice_psf
from ..core.fit import model_cutouts
from ..core.flags import FitFlag
from ..core.params import pack
from ..psf.measure import psf_fwhm, support_half

__all__ = ["stamps", "scatter_stamps", "make_model_image", "make_residual_image", "render_image",
           "EXCLUDED_FROM_MODEL"]

#: Flag bits of stars that are not part of the model image (removed or failed).
EXCLUDED_FROM_MODEL = int(
    FitFlag.MERGED
    | FitFlag.FADED
    | FitFlag.NON_FINITE
    | FitFlag.TOO_FEW_PIXELS
    | FitFlag.OUTSIDE_CUTOUT
)

_MODEL_CHUNK = 256


def stamps(psf, x, y, flux, half: int):
    """Models of single stars on (2h+1)^2 stamps around their nearest pixel.

    Parameters
    ----------
    psf : PSF model
        One PSF for all stars, or a spatially varying one (with ``at``), which is evaluated at
        each star's own image position.
    x, y : (N,) arrays
        Image positions (pixels).
    flux : (N,) array
        Total fluxes (counts).
    half : int
        Half size of the stamps (pixels).

    Returns
    -------
    stamps : (N, P, P) float64 array, P = 2 half + 1
    x0, y0 : (N,) int arrays
        Image coordinates of each stamp's pixel [0, 0].
    """
    n = len(x)
    p = 2 * half + 1
    x0 = np.rint(x).astype(np.int64) - half
    y0 = np.rint(y).astype(np.int64) - half
    if n == 0:
        return np.zeros((0, p, p)), x0, y0
    size = -(-n // _MODEL_CHUNK) * _MODEL_CHUNK  # pad so model_cutouts compiles one shape
    zeros = np.zeros(size)
    lx, ly = pad(x - x0, size, half), pad(y - y0, size, half)
    params = pack(zeros, zeros, zeros, pad(np.asarray(flux, float), size, 0.0)[:, None],
                  lx[:, None], ly[:, None])
    if hasattr(psf, "at"):  # varying: the PSF at each star, padded like the rows
        psf = slice_psf(psf.at(jnp.asarray(x), jnp.asarray(y)), 0, n, size)
    st = model_cutouts(psf, params, (p, p), chunk_size=_MODEL_CHUNK)[:n]
    return np.asarray(st, np.float64), x0, y0


def scatter_stamps(shape, stamps, x0, y0, out=None, offset=None) -> np.ndarray:
    """Sum stamps into images. ``shape`` is (H, W) for one image or (G, H, W) with ``offset``.

    For ``(G, H, W)``, ``offset`` is ``(g (N,), ox (N,), oy (N,))``: stamp ``i`` goes into
    image ``g[i]`` whose pixel [0, 0] is at image coordinates ``(ox[i], oy[i])``.
    """
    n, p, _ = stamps.shape
    if offset is None:
        g = np.zeros(n, np.int64)
        ox = oy = np.zeros(n, np.int64)
        h, w = shape
        ng = 1
    else:
        g, ox, oy = offset
        ng, h, w = shape
    out = np.zeros(ng * h * w) if out is None else out.reshape(-1)
    d = np.arange(p)
    # Process stars in blocks to bound the index arrays' memory (100k stars x P^2 entries).
    block = max(1, 4_000_000 // (p * p))
    for s in range(0, n, block):
        sl = slice(s, s + block)
        yy = (y0[sl] - oy[sl])[:, None, None] + d[None, :, None]
        xx = (x0[sl] - ox[sl])[:, None, None] + d[None, None, :]
        ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        flat = (g[sl][:, None, None] * h + yy) * w + xx
        out += np.bincount(flat[ok], weights=stamps[sl][ok], minlength=out.size)
    return out.reshape((h, w) if offset is None else (ng, h, w))


def make_model_image(catalog: Table, psf, shape, *, support: int | None = None) -> np.ndarray:
    """Model image of the stars of a :func:`photometry` catalog (no background).

    Parameters
    ----------
    catalog : Table
        Needs ``x_fit, y_fit, flux_fit`` and ``flags``; rows whose flags contain any bit of
        :data:`EXCLUDED_FROM_MODEL`, or with non-finite values, are left out.
    psf : PSF model
        The PSF used for the photometry.
    shape : (H, W)
        Image shape in pixels.
    support : int, optional
        Half size of each star's stamp in pixels (default from the PSF's extent).

    Returns
    -------
    (H, W) ndarray
        Sum of ``flux_fit * PRF`` over the kept stars, image units.
    """
    x = np.asarray(catalog["x_fit"], float)
    y = np.asarray(catalog["y_fit"], float)
    f = np.asarray(catalog["flux_fit"], float)
    flags = np.asarray(catalog["flags"], np.int64)
    keep = np.isfinite(x) & np.isfinite(y) & np.isfinite(f) & ((flags & EXCLUDED_FROM_MODEL) == 0)
    half = support if support is not None else support_half(psf, psf_fwhm(psf))
    st, x0, y0 = stamps(psf, x[keep], y[keep], f[keep], half)
    return scatter_stamps(tuple(shape), st, x0, y0)


def make_residual_image(image, catalog: Table, psf, *, background=None) -> np.ndarray:
    """``image - background - model``, with the model from :func:`make_model_image`.

    ``background`` is a scalar or an (H, W) map (default 0: only the stars are removed).
    """
    image = np.asarray(image, float)
    model = make_model_image(catalog, psf, image.shape)
    bkg = 0.0 if background is None else np.asarray(background, float)
    return image - bkg - model


def render_image(psf, x, y, flux, shape, *, stamp: int | None = None, chunk: int = 2048):
    """Noiseless image of point sources: ``sum_k flux_k PRF(x - x_k, y - y_k)``.

    Parameters
    ----------
    psf : PSF model
        Any PSF with ``evaluate``; a spatially varying one (with ``at``) is evaluated at each
        star's own position.
    x, y, flux : (N,) arrays
        Image positions (pixels) and total fluxes (counts).
    shape : (H, W)
        Image shape.
    stamp : int, optional
        Odd size (pixels) of the square stamp drawn around each star; default 25.
    chunk : int
        Ignored (kept for compatibility): stars are evaluated in fixed chunks of 256.

    Returns
    -------
    (H, W) float64 array
    """
    x, y, flux = (np.atleast_1d(np.asarray(v, np.float64)) for v in (x, y, flux))
    half = (int(stamp or 25) | 1) // 2
    st, x0, y0 = stamps(psf, x, y, flux, half)
    return scatter_stamps(tuple(shape), st, x0, y0)
