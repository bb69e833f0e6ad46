"""Simulated crowded star clusters with known truth.

:func:`simulate_cluster` makes a field of stars (a Plummer-profile cluster on a uniform field
population) with a power-law luminosity function down to a chosen S/N, on a flat sky with
Poisson and read noise. :mod:`jaxphot.sim.scoring` compares a catalog with the truth.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from astropy.table import Table

from ..image.render import scatter_stamps, stamps
from ..psf import GaussianPRF, psf_fwhm, support_half
from .cutouts import add_noise

__all__ = ["SimulatedField", "simulate_cluster", "prf_sharpness"]


@dataclasses.dataclass
class SimulatedField:
    """A simulated image and its truth.

    Attributes
    ----------
    image : (H, W) ndarray
        Noisy image in ADU.
    expected : (H, W) ndarray
        Noiseless image (sky + stars) in ADU.
    truth : Table
        ``x, y`` (0-based pixels), ``flux`` (ADU, total), ``snr`` (expected S/N of an isolated
        PSF fit), ``mag`` (-2.5 log10 flux).
    sky, gain, read_noise : float
        Sky (ADU per pixel), gain (e-/ADU), read noise (e-).
    psf : PSF model
    """

    image: np.ndarray
    expected: np.ndarray
    truth: Table
    sky: float
    gain: float
    read_noise: float
    psf: object


def prf_sharpness(psf, n: int = 41) -> float:
    """Sharpness sum(PRF^2) of a star centred on a pixel (docs/conventions.md: beta = 1/sharpness)."""
    c = (n - 1) / 2.0
    if callable(getattr(psf, "at", None)) and not hasattr(psf, "evaluate"):
        psf = psf.psf_at(*psf.center) if hasattr(psf, "center") else psf.psf_at(
            float(np.mean(psf.grid_x)), float(np.mean(psf.grid_y)))  # the field centre's PSF
    p = np.asarray(psf.evaluate(c, c, (n, n)), float)
    return float(np.sum(p * p))


def _snr(flux_e, beta, sky_e, rn):
    """Expected S/N of an isolated PSF fit: F / sqrt(F + beta (B + RON^2)), electrons."""
    return flux_e / np.sqrt(flux_e + beta * (sky_e + rn * rn))


def simulate_cluster(
    shape=(512, 512),
    n_stars: int = 400,
    psf=None,
    *,
    sky: float = 100.0,
    gain: float = 1.0,
    read_noise: float = 5.0,
    snr_min: float = 3.0,
    flux_ratio: float = 3000.0,
    slope: float = 1.6,
    cluster_fraction: float = 0.6,
    core_radius: float | None = None,
    margin: float = 0.0,
    seed: int | None = 0,
) -> SimulatedField:
    """Simulate a crowded star cluster.

    Parameters
    ----------
    shape : (H, W)
        Image shape in pixels.
    n_stars : int
        Number of stars.
    psf : PSF model, optional
        Default ``GaussianPRF(3.0)``.
    sky : float
        Sky level in electrons per pixel.
    gain, read_noise : float
        e-/ADU and e- (the image is in ADU).
    snr_min : float
        The faintest star has this expected S/N (isolated PSF fit).
    flux_ratio : float
        Brightest/faintest flux ratio of the luminosity function.
    slope : float
        Power-law index of the luminosity function, dN/dF ∝ F^-slope (> 1: faint stars
        dominate).
    cluster_fraction : float
        Fraction of stars in the Plummer cluster; the rest are uniform.
    core_radius : float, optional
        Plummer radius in pixels; default ``min(shape) / 6``.
    margin : float
        Keep star centres this many pixels inside the edges.
    seed : int
        Random seed.

    Returns
    -------
    SimulatedField
    """
    rng = np.random.default_rng(seed)
    psf = GaussianPRF(3.0) if psf is None else psf
    h, w = shape
    beta = 1.0 / prf_sharpness(psf)
    b = beta * (sky + read_noise**2)
    s2 = snr_min**2
    f_min = 0.5 * (s2 + math.sqrt(s2 * s2 + 4 * s2 * b))  # electrons at S/N = snr_min
    # Power law between f_min and f_min * flux_ratio (inverse-CDF sampling).
    u = rng.uniform(size=n_stars)
    a = 1.0 - slope
    lo, hi = f_min**a, (f_min * flux_ratio) ** a
    flux_e = (lo + u * (hi - lo)) ** (1.0 / a)
    n_cl = int(round(cluster_fraction * n_stars))
    rc = min(shape) / 6.0 if core_radius is None else float(core_radius)
    xs, ys = [], []
    need_cl, need_f = n_cl, n_stars - n_cl
    while need_cl > 0:  # Plummer radii, rejected outside the image
        q = rng.uniform(size=2 * need_cl + 10)
        r = rc / np.sqrt(q ** (-2.0 / 3.0) - 1.0)
        t = rng.uniform(0, 2 * np.pi, r.size)
        x = (w - 1) / 2 + r * np.cos(t)
        y = (h - 1) / 2 + r * np.sin(t)
        ok = (
            (x >= margin - 0.5)
            & (x <= w - 0.5 - margin)
            & (y >= margin - 0.5)
            & (y <= h - 0.5 - margin)
        )
        xs.append(x[ok][:need_cl])
        ys.append(y[ok][:need_cl])
        need_cl -= len(xs[-1])
    xs.append(rng.uniform(margin - 0.5, w - 0.5 - margin, need_f))
    ys.append(rng.uniform(margin - 0.5, h - 0.5 - margin, need_f))
    x, y = np.concatenate(xs), np.concatenate(ys)
    half = support_half(psf, psf_fwhm(psf))
    st, x0, y0 = stamps(psf, x, y, flux_e / gain, half)
    stars = scatter_stamps(shape, st, x0, y0)
    expected = stars + sky / gain
    image = add_noise(expected, read_noise, gain, rng)
    t = Table()
    t["x"], t["y"] = x, y
    t["flux"] = flux_e / gain
    t["snr"] = _snr(flux_e, beta, sky, read_noise)
    t["mag"] = -2.5 * np.log10(t["flux"])
    return SimulatedField(image, expected, t, sky / gain, gain, read_noise, psf)


