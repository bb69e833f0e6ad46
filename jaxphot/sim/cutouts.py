"""Simulated star cutouts and fields with known truth, for tests, benchmarks and the demo."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..constants import FWHM_TO_SIGMA
from ..core.fit import model_cutouts

__all__ = ["SimulatedCutouts", "simulate_cutouts", "add_noise", "gaussian_psf_matrix"]


@dataclasses.dataclass
class SimulatedCutouts:
    """Noisy cutouts and the parameters that made them. Star arrays are (N, K)."""

    data: np.ndarray  # (N, H, W) counts
    expected: np.ndarray  # (N, H, W) noiseless model
    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    sky: np.ndarray  # (N,)
    read_noise: float
    gain: float


def gaussian_psf_matrix(
    fwhm: float, oversampling: int = 1, n_samples: int = 61, integrated: bool = False
) -> np.ndarray:
    """A circular Gaussian as a discrete PSF matrix, for :class:`~jaxphot.DiscretePSF`.

    Parameters
    ----------
    fwhm : float
        Full width at half maximum in detector pixels.
    oversampling : int
        Samples per detector pixel (s).
    n_samples : int
        Samples along each axis; the Gaussian is centred on the array's geometric centre.
    integrated : bool
        False (MATPHOT): each sample is the Gaussian integrated over its 1/s x 1/s cell.
        True (ePSF): each sample is the PRF, the Gaussian integrated over a whole pixel centred
        on the sample.

    Returns
    -------
    (n_samples, n_samples) float64 array (unnormalised; DiscretePSF normalises it).
    """
    from scipy.special import erf

    s = oversampling
    u = (np.arange(n_samples) - (n_samples - 1) / 2) / s
    sig = fwhm * FWHM_TO_SIGMA
    half = 0.5 if integrated else 0.5 / s
    e = 0.5 * (erf((u + half) / np.sqrt(2) / sig) - erf((u - half) / np.sqrt(2) / sig))
    return np.outer(e, e)


def add_noise(expected, read_noise: float = 0.0, gain: float = 1.0, rng=None) -> np.ndarray:
    """Poisson noise on ``expected`` (ADU, converted with ``gain`` e-/ADU) plus Gaussian read noise (e-)."""
    rng = np.random.default_rng(rng)
    electrons = rng.poisson(np.clip(expected, 0, None) * gain).astype(np.float64)
    electrons += rng.normal(0.0, read_noise, size=np.shape(expected)) if read_noise > 0 else 0.0
    return electrons / gain


def simulate_cutouts(
    psf,
    n: int,
    shape: tuple[int, int] = (15, 15),
    *,
    flux=(300.0, 1e5),
    x=None,
    y=None,
    k: int = 1,
    separation: float | None = None,
    sky: float = 100.0,
    read_noise: float = 5.0,
    gain: float = 1.0,
    seed: int | None = 0,
) -> SimulatedCutouts:
    """Simulate ``n`` cutouts of ``k`` stars on a flat sky with Poisson and read noise.

    Parameters
    ----------
    psf : PSF model
        Used to make the noiseless images (evaluated in float64 when JAX x64 is on).
    n : int
        Number of cutouts.
    shape : (H, W)
        Cutout shape in pixels.
    flux : (lo, hi) tuple or array
        Star fluxes in electrons: log-uniform between lo and hi, or given explicitly (N,) / (N, K).
    x, y : arrays, optional
        Positions; default: uniformly within +-0.5 px of the cutout centre. With ``k = 2`` and
        ``separation``, the two stars sit +-separation/2 from the centre along a random direction.
    sky : float
        Sky level, electrons per pixel.
    read_noise : float
        Read noise, electrons.
    gain : float
        Electrons per ADU; the data are returned in ADU.
    seed : int
        Random seed.
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    xc, yc = (w - 1) / 2.0, (h - 1) / 2.0
    if isinstance(flux, tuple) and len(flux) == 2:
        lo, hi = flux
        flux = np.exp(rng.uniform(np.log(lo), np.log(hi), size=(n, k)))
    flux = np.broadcast_to(np.asarray(flux, np.float64).reshape(n, -1), (n, k)).copy()
    if x is None or y is None:
        cx = xc + rng.uniform(-0.5, 0.5, n)
        cy = yc + rng.uniform(-0.5, 0.5, n)
        if k == 1:
            x, y = cx[:, None], cy[:, None]
        else:
            if separation is None:
                raise ValueError("separation is required to place k > 1 stars")
            ang = rng.uniform(0, np.pi, n)
            offs = np.linspace(-0.5, 0.5, k) * separation
            x = cx[:, None] + np.cos(ang)[:, None] * offs
            y = cy[:, None] + np.sin(ang)[:, None] * offs
    x = np.asarray(x, np.float64).reshape(n, k)
    y = np.asarray(y, np.float64).reshape(n, k)
    sky_adu = np.full(n, sky / gain)
    zeros = np.zeros(n)
    params = np.concatenate([np.stack([sky_adu, zeros, zeros], 1), flux / gain, x, y], axis=1)
    expected = model_cutouts(psf, params, shape).astype(np.float64)
    data = add_noise(expected, read_noise, gain, rng)
    return SimulatedCutouts(data, expected, x, y, flux / gain, sky_adu, read_noise, gain)
