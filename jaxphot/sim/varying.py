"""Spatially varying PSFs with known truth, and crowded fields simulated with them.

:func:`varying_psf` builds a :class:`~jaxphot.psf.PolynomialPSF` of an exactly known order (0, 1
or 2) from pixel-integrated elliptical Gaussians, so tests can ask whether the ePSF builder finds
that order; :func:`simulate_varying_field` is :func:`~jaxphot.sim.simulate_cluster` with such a
PSF (stars rendered each with the PSF at its own position) and a FITS header carrying the noise.
"""

from __future__ import annotations

import math

import numpy as np
from astropy.io import fits

from ..psf import PolynomialPSF
from ..psf.varying import poly_scale
from .cluster import SimulatedField, simulate_cluster

__all__ = ["gaussian_epsf_samples", "varying_psf", "simulate_varying_field", "regional_table"]

_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def gaussian_epsf_samples(fwhm: float, q: float = 1.0, theta: float = 0.0, *, half: int = 8,
                          oversampling: int = 2, sub: int = 6) -> np.ndarray:
    """Oversampled ePSF samples (PRF values) of an elliptical Gaussian, summing to s^2.

    Parameters
    ----------
    fwhm : float
        FWHM along the major axis (pixels).
    q : float
        Axis ratio minor/major (0 < q <= 1).
    theta : float
        Position angle of the major axis from +x, counter-clockwise (radians).
    half : int
        Half size of the samples' support (pixels); the array is (2 half s + 1) square.
    oversampling : int
        Samples per pixel, s.
    sub : int
        Sub-pixel points per axis for the pixel integration.

    Returns
    -------
    (n, n) float64 array
        Sample m at offset m / s (pixels) from the centre holds the pixel-integrated PSF.
    """
    s = int(oversampling)
    n = 2 * half * s + 1
    o = (np.arange(n) - n // 2) / s
    t = (np.arange(sub) + 0.5) / sub - 0.5
    px = (o[None, :, None, None] + t[None, None, None, :])  # (1, n, 1, sub)
    py = (o[:, None, None, None] + t[None, None, :, None])  # (n, 1, sub, 1)
    c, sn = math.cos(theta), math.sin(theta)
    a = px * c + py * sn
    b = -px * sn + py * c
    sa, sb = fwhm * _FWHM_TO_SIGMA, q * fwhm * _FWHM_TO_SIGMA
    g = np.exp(-0.5 * ((a / sa) ** 2 + (b / sb) ** 2)).mean(axis=(2, 3))
    return g * (s * s / g.sum())


def varying_psf(shape, kind: str = "strong", *, fwhm: float = 3.0, growth: float = 0.6,
                q: float = 0.7, half: int | None = None, oversampling: int = 2) -> PolynomialPSF:
    """A PSF of known spatial variation over an image of ``shape`` (H, W).

    Parameters
    ----------
    shape : (H, W)
        Image shape (pixels); the polynomial's u, v run over [-1, 1] across it.
    kind : {"constant", "linear", "quadratic", "strong"}
        ``constant``: a round Gaussian of ``fwhm`` (degree 0). ``linear`` (degree 1): FWHM
        ``fwhm`` at the left edge to ``fwhm (1 + growth)`` at the right edge, exactly linear in
        the samples. ``quadratic`` (degree 2): round, ``fwhm`` at the centre, ``fwhm (1 +
        growth)`` at the corners, through ``(u^2 + v^2)``. ``strong`` (degree 2): as quadratic,
        but elliptical (axis ratio ``q``) in the corners, the major axis along the diagonal
        through the centre in the corners (+-45 deg, so differently oriented in neighbouring
        corners), through a ``uv`` term. Every PSF inside the image is a non-negative mixture.
    fwhm, growth, q : float
        Centre FWHM (pixels), fractional FWHM growth to the corners, corner axis ratio.
    half : int, optional
        Support half size (pixels); default ``ceil(2.5 fwhm (1 + growth))``.
    oversampling : int
        Samples per pixel.

    Returns
    -------
    PolynomialPSF
    """
    center, scale = poly_scale(tuple(shape))
    f1 = fwhm * (1.0 + growth)
    half = int(math.ceil(2.5 * f1)) if half is None else int(half)
    g = lambda f, qq=1.0, th=0.0: gaussian_epsf_samples(  # noqa: E731
        f, qq, th, half=half, oversampling=oversampling)
    g0 = g(fwhm)
    if kind == "constant":
        terms, degree = [g0], 0
    elif kind == "linear":
        left, right = g0, g(f1)
        terms, degree = [(left + right) / 2, (right - left) / 2, 0 * g0], 1
    elif kind in ("quadratic", "strong"):
        if kind == "quadratic":
            ed = ea = g(f1)
        else:
            # major axis f1 / sqrt(q): the geometric-mean FWHM still grows by (1 + growth)
            ed = g(f1 / math.sqrt(q), q, math.pi / 4)
            ea = g(f1 / math.sqrt(q), q, -math.pi / 4)
        # P = g0 (1 - r^2/2) + ed (u + v)^2 / 4 + ea (u - v)^2 / 4: at the corners ed or ea,
        # and non-negative weights everywhere in |u|, |v| <= 1
        a2 = (ed + ea) / 4 - g0 / 2
        terms, degree = [g0, 0 * g0, 0 * g0, a2, (ed - ea) / 2, a2], 2
    else:
        raise ValueError(f"kind must be constant, linear, quadratic or strong, got {kind!r}")
    return PolynomialPSF(np.stack(terms), oversampling, degree, center, scale)


def simulate_varying_field(shape=(1024, 1024), n_stars: int = 3000, kind: str = "strong", *,
                           fwhm: float = 3.0, growth: float = 0.6, q: float = 0.7,
                           flux_ratio: float = 10 ** (8 / 2.5), snr_min: float = 5.0,
                           cluster_fraction: float = 0.3, sky: float = 200.0, gain: float = 2.0,
                           read_noise: float = 5.0, seed: int | None = 0,
                           **kwargs) -> tuple[SimulatedField, fits.Header]:
    """A crowded field whose PSF varies as :func:`varying_psf` (``kind``), with its FITS header.

    ``flux_ratio`` defaults to 8 magnitudes; ``GAIN`` (e-/ADU) and ``RDNOISE`` (e-) go in the
    header so ``jaxphot photometry`` finds the noise model without options. Other keywords go
    to :func:`~jaxphot.sim.simulate_cluster`.

    Returns
    -------
    (SimulatedField, astropy.io.fits.Header)
        The field (``truth`` has x, y, flux, snr, mag; ``psf`` the true PSF) and a header.
    """
    psf = varying_psf(shape, kind, fwhm=fwhm, growth=growth, q=q)
    fld = simulate_cluster(shape, n_stars, psf, sky=sky, gain=gain, read_noise=read_noise,
                           snr_min=snr_min, flux_ratio=flux_ratio,
                           cluster_fraction=cluster_fraction, seed=seed, **kwargs)
    hdr = fits.Header()
    hdr["GAIN"] = (float(gain), "e-/ADU")
    hdr["RDNOISE"] = (float(read_noise), "e-")
    hdr["BUNIT"] = ("ADU", "simulated")
    hdr["PSFVARY"] = (kind, "true PSF variation (jaxphot.sim.varying_psf)")
    return fld, hdr


def _regional_scores(catalog, truth, shape, grid, radius: float):
    """Per true star: region index, found, fitted flux and error, true flux and S/N."""
    from .scoring import match_to_truth

    ny, nx = grid
    h, w = shape
    ci, ti = match_to_truth(catalog, truth, radius, use=np.isfinite(np.asarray(catalog["flux_fit"], float)))
    tx, ty = np.asarray(truth["x"], float), np.asarray(truth["y"], float)
    reg = (np.clip((ty / h * ny).astype(int), 0, ny - 1) * nx
           + np.clip((tx / w * nx).astype(int), 0, nx - 1))
    found = np.zeros(len(truth), bool)
    found[ti] = True
    ff = np.full(len(truth), np.nan)
    fe = np.full(len(truth), np.nan)
    ff[ti] = np.asarray(catalog["flux_fit"], float)[ci]
    fe[ti] = np.asarray(catalog["flux_err"], float)[ci]
    return (reg, found, ff, fe, np.asarray(truth["flux"], float), np.asarray(truth["snr"], float))


def regional_table(catalog, truth, shape, *, grid=(3, 3), radius: float = 1.0,
                   snr_bright: float = 30.0, snr_complete: float = 10.0):
    """Per-region photometry scores of a catalog against the truth, on a ``grid`` (ny, nx).

    Parameters
    ----------
    catalog : Table or sequence of Tables
        ``x_fit, y_fit, flux_fit, flux_err`` (pixels, image units). A sequence (one catalog per
        field, with ``truth`` the matching sequence) pools fields of the same ``shape``: each is
        matched to its own truth and the regions' stars are taken together.
    truth : Table or sequence of Tables
        ``x, y, flux, snr``.
    shape : (H, W)
        Image shape (pixels), split into ``grid`` equal regions by the true positions.
    radius : float
        Match radius (pixels).
    snr_bright, snr_complete : float
        True S/N above which bias and pulls, and completeness, are measured.

    Returns
    -------
    Table
        One row per region (``row, col`` from the bottom left) with ``n_bright``, ``bias_mmag``
        (median fitted minus true magnitude, mmag), ``pull_mad_std`` (MAD standard deviation of
        (flux_fit - flux) / flux_err) and its standard error ``pull_mad_std_err`` (1.166 /
        sqrt(n) of it for a normal sample: the MAD's efficiency is 0.37), ``completeness``
        (matched fraction at S/N > ``snr_complete``), and a last row ``row = col = -1`` for the
        whole image.
    """
    from astropy.stats import mad_std
    from astropy.table import Table

    pairs = (list(zip(catalog, truth, strict=True)) if isinstance(catalog, (list, tuple))
             else [(catalog, truth)])
    scores = [_regional_scores(c, t, shape, grid, radius) for c, t in pairs]
    reg, found, ff, fe, ft, snr = (np.concatenate(a) for a in zip(*scores, strict=True))
    ny, nx = grid
    rows = []
    for r in list(range(ny * nx)) + [-1]:
        inr = np.ones(len(reg), bool) if r < 0 else reg == r
        b = inr & found & (snr > snr_bright) & (ff > 0)
        c = inr & (snr > snr_complete)
        dm = -2.5 * np.log10(ff[b] / ft[b])
        pull = (ff[b] - ft[b]) / fe[b]
        width = float(mad_std(pull[np.isfinite(pull)])) if b.any() else np.nan
        rows.append((r // nx if r >= 0 else -1, r % nx if r >= 0 else -1, int(b.sum()),
                     1e3 * float(np.median(dm)) if b.any() else np.nan, width,
                     1.166 * width / np.sqrt(max(int(b.sum()), 1)),
                     float(found[c].mean()) if c.any() else np.nan))
    return Table(rows=rows, names=("row", "col", "n_bright", "bias_mmag", "pull_mad_std",
                                   "pull_mad_std_err", "completeness"))
