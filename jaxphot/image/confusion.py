"""Confusion noise: the flux error that stars too faint to detect add to every PSF fit.

A crowded image holds, besides the catalogued stars, a sea of stars below the detection
limit. Each undetected star of flux ``f`` at offset ``s`` from a fitted star biases the fitted
flux by ``f b(s)``, where ``b(s)`` is the flux row of the fit's least-squares projection
applied to the PRF at ``s`` (the fitted local sky and position absorb part of it). For
undetected stars scattered at random with surface density ``n(f)``, the bias has variance

    var_conf = <n f^2> sum_s b(s)^2                                   (per fitted star)

while the same stars add ``V = <n f^2> sum_p P(p)^2`` to the variance of every pixel of the
residual image. So ``var_conf = K V`` with the PSF's *confusion kernel*
``K = sum_s b(s)^2 / sum_p P(p)^2`` (pixels^2). For a Gaussian PSF of width sigma and a
flux-only fit, ``b(s) = exp(-s^2 / 4 sigma^2)`` and ``K = 8 pi^2 sigma^4``: about ten times
``1 / sum P^2``, the factor of white noise of the same pixel variance, because the
intruders have the PSF's own shape.

``V`` is measured on the residual of the final fit: the mean of ``r^2 - sigma^2`` (``sigma``
the noise model of the fit weights) over blocks of the image, less one standard error
(clipped at 0, so that pure noise adds little), interpolated to each star. The
fit's own ``flux_err`` misses this term entirely; :func:`jaxphot.photometry` adds it in
quadrature (``flux_err``) and keeps both parts (``flux_err_fit``, ``flux_err_confusion``).

The same residual excess also holds what the PSF model misses around bright stars, whose
effect on neighbours' fluxes is of the same kind: it is counted too.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Bool, Float
from scipy import ndimage

from ..constants import POGSON
from ..psf.measure import sample_psfs
from .cutouts import values_at

__all__ = ["add_confusion_errors", "confusion_flux_variance", "confusion_kernel",
           "confusion_variance_map"]

_STEP = 0.5  # px: grid of intruder offsets for the kernel sum
_CLIP = 25.0  # residual pixels beyond 5 sigma (cosmic rays, bad cores) count as 5 sigma


def _reference_psf(psf):
    """A constant PSF standing for ``psf``: the central node of a spatially varying one."""
    ref = sample_psfs(psf)
    return ref[len(ref) // 2]


def confusion_kernel(psf, half: int, fit_background: str | None = "constant",
                     contrast=0.0) -> np.ndarray:
    """The confusion kernel ``K`` (pixels^2) of a weighted fit of flux, x, y and local sky.

    Parameters
    ----------
    psf : PSF model
        The PSF of the fit (a varying one is taken at its central node).
    half : int
        Half size of the (2 half + 1)^2 fitting box, pixels.
    fit_background : {"constant", "plane", None}
        The local sky fitted with the star (what it absorbs of the intruders' light).
    contrast : float or (M,) array
        The star's flux over its sky variance per pixel, ``flux / (gain sigma_sky^2)``
        (pixels^2): the fit weights are ``1 / (1 + contrast P)``. A bright star's core
        weighs little, so its flux leans on the wings where intruders sit: K grows with it.
        0 (default) is a sky-limited star, or fixed weights.

    Returns
    -------
    float or (M,) array
        ``K = sum_s b(s)^2 ds^2 / sum_p P(p)^2``: the flux variance per unit of residual
        pixel variance due to undetected point sources (module docstring).
    """
    if fit_background not in ("constant", "plane", None):
        raise ValueError(f"fit_background must be 'constant', 'plane' or None, got {fit_background!r}")
    c_arr = np.asarray(contrast, np.float64)
    if np.any(~np.isfinite(c_arr)) or np.any(c_arr < 0):
        raise ValueError("contrast must be finite and >= 0")
    ref = _reference_psf(psf)
    n = 2 * int(half) + 1
    c = float(half)
    eps = 0.05
    xs = np.array([c, c + eps, c - eps, c, c])
    ys = np.array([c, c, c, c + eps, c - eps])
    p = np.asarray(ref.evaluate(xs, ys, (n, n)), np.float64).reshape(n * n, 5)
    cols = [p[:, 0], (p[:, 1] - p[:, 2]) / (2 * eps), (p[:, 3] - p[:, 4]) / (2 * eps)]
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    if fit_background is not None:
        cols.append(np.ones(n * n))
    if fit_background == "plane":
        cols += [(xx - c).ravel(), (yy - c).ravel()]
    jac = np.stack(cols, 1)  # (n*n, P): the fit's Jacobian at the truth
    # Intruders anywhere their light reaches the box: offsets up to 2 half + the PSF's reach.
    reach = 2 * int(half)
    g = np.arange(-reach, reach + _STEP / 2, _STEP)
    ox, oy = (a.ravel() for a in np.meshgrid(g, g))
    stamps = np.asarray(ref.evaluate(c + ox, c + oy, (n, n)), np.float64).reshape(n * n, -1)
    big = 4 * int(half) + 1  # sum P^2 over the whole PRF, not only the box
    full = np.asarray(ref.evaluate(2.0 * half, 2.0 * half, (big, big)), np.float64)
    norm = _STEP**2 / np.sum(full**2)

    def one(rho: float) -> float:
        w = 1.0 / (1.0 + rho * p[:, 0])  # inverse variance, in units of the sky's
        jw = jac * w[:, None]
        flux_row = np.linalg.solve(jac.T @ jw, jw.T)[0]  # (n*n,): weights of the flux estimate
        b = flux_row @ stamps  # (n_offsets,) flux bias per unit intruder flux
        return float(np.sum(b**2) * norm)

    flat = c_arr.ravel()
    if flat.size <= 1:
        k = np.array([one(float(v)) for v in flat]) if flat.size else np.zeros(0)
        return float(k[0]) if c_arr.ndim == 0 else k.reshape(c_arr.shape)
    # Many stars: K on a log grid of contrasts (smooth in log contrast), interpolated.
    top = max(float(flat.max()), 1.0)
    grid = np.r_[0.0, np.geomspace(1e-2, top * 1.01, 24)]
    kg = np.array([one(v) for v in grid])
    return np.interp(np.log1p(flat), np.log1p(grid), kg).reshape(c_arr.shape)


def confusion_variance_map(
    residual: Float[np.ndarray, "H W"],
    sigma: Float[np.ndarray, "H W"],
    good: Bool[np.ndarray, "H W"],
    box: int = 64,
) -> Float[np.ndarray, "BY BX"]:
    """Excess pixel variance ``V`` of a residual image over its noise model, per block.

    Parameters
    ----------
    residual : (H, W) array
        ``data - background - model`` of the final fit, image units.
    sigma : (H, W) array
        The fit's 1-sigma noise model, image units.
    good : (H, W) bool array
        Usable pixels.
    box : int
        Block size, pixels (the last block of a row/column takes the remainder).

    Returns
    -------
    (ceil(H / box), ceil(W / box)) array
        ``max(0, mean(r^2 - sigma^2) - se)`` per block, image units^2 (0 for a block
        with fewer than 16 usable pixels).
    """
    box = int(box)
    if box < 4:
        raise ValueError(f"box must be at least 4 pixels, got {box!r}")
    s2 = np.asarray(sigma, np.float64) ** 2
    r2 = np.asarray(residual, np.float64) ** 2
    use = np.asarray(good, bool) & np.isfinite(r2) & np.isfinite(s2)
    e = np.where(use, np.minimum(r2, _CLIP * s2) - s2, 0.0)
    h, w = e.shape
    labels = (np.arange(h)[:, None] // box) * (-(-w // box)) + np.arange(w)[None, :] // box
    nb = int(labels.max()) + 1
    idx = np.arange(nb)
    cnt = ndimage.sum_labels(use, labels, idx)
    tot = ndimage.sum_labels(e, labels, idx)
    tot2 = ndimage.sum_labels(e * e, labels, idx)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = tot / cnt
        se = np.sqrt(np.maximum(tot2 / cnt - mean**2, 0.0) / np.maximum(cnt - 1, 1))
    v = np.where(cnt >= 16, np.maximum(mean - se, 0.0), 0.0)
    return v.reshape(-(-h // box), -(-w // box))


def confusion_flux_variance(vmap: Float[np.ndarray, "BY BX"], box: int, kernel: float,
                            x: Float[np.ndarray, " N"], y: Float[np.ndarray, " N"]
                            ) -> Float[np.ndarray, " N"]:
    """``K V(x, y)`` at each star: the block map interpolated bilinearly between block centres.

    Parameters
    ----------
    vmap : (BY, BX) array
        :func:`confusion_variance_map`, image units^2.
    box : int
        Its block size, pixels.
    kernel : float or (N,) array
        :func:`confusion_kernel`, pixels^2 (one per star, or one for all).
    x, y : (N,) arrays
        Star positions, pixels (NaN gives NaN).

    Returns
    -------
    (N,) array
        Confusion variance of each star's flux, (image units x pixels)^2.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    # Block j covers pixels [j box, (j + 1) box): its centre is at j box + (box - 1) / 2.
    gy = (np.where(ok, y, 0.0) - (box - 1) / 2.0) / box
    gx = (np.where(ok, x, 0.0) - (box - 1) / 2.0) / box
    v = ndimage.map_coordinates(np.asarray(vmap, np.float64), [gy, gx], order=1, mode="nearest")
    return np.where(ok, kernel * np.maximum(v, 0.0), np.nan)


def add_confusion_errors(table, residual, sigma, good, psf, half: int,
                         fit_background: str | None, box: int = 64, *, sky_sigma=None,
                         gain: float | None = None) -> dict:
    """Fold the confusion noise into a :func:`jaxphot.photometry` catalogue's flux errors.

    ``flux_err`` becomes ``sqrt(flux_err_fit^2 + flux_err_confusion^2)`` and ``mag_err``
    follows it; the fit's own error is kept as ``flux_err_fit``. Arguments as in
    :func:`confusion_variance_map` and :func:`confusion_kernel`; ``table`` needs
    ``x_fit, y_fit, flux_fit, flux_err`` and is changed in place. With ``sky_sigma``
    ((H, W), the weights' noise without the stars) and ``gain``, each star's kernel takes
    its Poisson weights (``contrast``); without them the weights are taken as fixed.

    Returns
    -------
    dict
        ``confusion_kernel`` (pixels^2) and ``confusion_variance`` (median block ``V``,
        image units^2) for the table's meta.
    """
    x = np.asarray(table["x_fit"], np.float64)
    y = np.asarray(table["y_fit"], np.float64)
    contrast = np.zeros(len(x))
    if sky_sigma is not None and gain is not None:
        s2 = values_at(np.asarray(sky_sigma, np.float64), x, y) ** 2
        flux = np.nan_to_num(np.asarray(table["flux_fit"], np.float64), nan=0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            contrast = np.where(s2 > 0, np.maximum(flux, 0.0) / (gain * s2), 0.0)
    kern = confusion_kernel(psf, half, fit_background, np.nan_to_num(contrast, posinf=0.0))
    vmap = confusion_variance_map(residual, sigma, good, box)
    var = confusion_flux_variance(vmap, box, kern, x, y)
    fit_err = np.asarray(table["flux_err"], np.float64)
    conf = np.sqrt(var)
    total = np.where(np.isfinite(conf), np.hypot(fit_err, np.nan_to_num(conf)), fit_err)
    table["flux_err_fit"] = fit_err
    table["flux_err_confusion"] = conf
    table["flux_err"] = total
    flux = np.asarray(table["flux_fit"], np.float64)
    if "mag_err" in table.colnames:
        with np.errstate(invalid="ignore", divide="ignore"):
            table["mag_err"] = np.where(flux > 0, POGSON * total / flux, np.nan)
    return {"confusion_kernel": round(float(np.median(kern)), 3),
            "confusion_variance": float(np.median(vmap))}
