r"""How well can a star be measured? PRF shape quantities, MATPHOT's performance model, exact CRLBs.

Three levels of answer, from the cheapest to the exact one:

1. **PRF quantities** (:func:`prf_quantities`) of any PRF at any sub-pixel phase: the volume V,
   the sharpness, the effective-background area beta and the critical-sampling scale length L.
2. **MATPHOT's performance model** (Mighell 2005, section 2; :func:`photometric_variance`,
   :func:`photometric_snr`, :func:`mag_error`, :func:`astrometric_rms`): closed forms in the
   intensity E, sky B, read noise RON, V, beta, L and the number of fitted pixels N.
3. **The exact Cramer-Rao lower bound** (:func:`fisher_crlb`, :func:`crlb`) from the Fisher matrix
   of the model actually fitted (plane background, blended neighbours, pixelisation, detector
   response) with Poisson plus read-noise variance.

Definitions (docs/conventions.md)
---------------------------------
For a PRF ``P_i`` (pixel values of a unit-intensity star, summing to V over an infinite detector)
and its normalised version ``Pn_i = P_i / V``::

    sharpness = sum_i Pn_i^2                     (<= 1; 1/(4 pi) for a critically sampled Gaussian)
    beta      = 1 / sum_i P_i^2 = 1 / (V^2 sharpness)                       [px^2]
    L         = 1 / sqrt(4 pi sharpness)      (= sigma for a well-sampled Gaussian)  [px]

Photometric model, derivation
-----------------------------
Model of one isolated star on a flat sky: ``m_i = B + E V Pn_i`` (E in photons, B in observed
electrons per pixel). The least-squares error of E is ``[sum_i (dm_i/dE)^2 / sigma_i^2]^-1``
with ``dm_i/dE = V Pn_i``:

* bright star, ``sigma_i^2 = E V Pn_i``: ``sigma_E^2 = [sum_i V^2 Pn_i^2 / (E V Pn_i)]^-1 = E / V``;
* faint star, ``sigma_i^2 = B + RON^2``: ``sigma_E^2 = (B + RON^2) / (V^2 sharpness)
  = beta (B + RON^2)``;
* the flat sky fitted on N pixels has ``sigma_B^2 = (B + RON^2) / N``. A sky offset dB changes
  the fitted observed flux by ``dB / sharpness`` and hence E by ``dB / (V sharpness) = beta V dB``,
  so it adds ``(beta V)^2 sigma_B^2`` to ``sigma_E^2``. (Inverting the 2x2 Fisher matrix of
  (E, B) exactly gives ``beta sigma^2 / (1 - 1/(N sharpness))``, i.e. the same first-order term.)
  MATPHOT writes ``beta^2 sigma_B^2``, which is the same for V = 1; the V factor matters for
  inefficient detectors only when the sky term matters.

So ``SNR = E / sqrt(E/V + beta (B + RON^2) + (beta V)^2 (B + RON^2)/N)`` and the magnitude error is
``1.0857 / SNR`` (1.0857 = 2.5 / ln 10, Pogson).

Astrometric model, derivation
-----------------------------
For an oversampled Gaussian PRF of width s, ``dm_i/dx = E V Pn_i (x_i - x)/s^2``:

* bright star (``sigma_i^2 = E V Pn_i``):
  ``sigma_x^2 = [E V sum Pn_i (x_i-x)^2 / s^4]^-1 = s^2/(E V)``;
* faint star (``sigma_i^2 = B + RON^2``):
  ``sigma_x^2 = (B+RON^2) s^4 / (E^2 V^2 sum Pn_i^2 (x_i-x)^2)
  = 8 pi (B + RON^2) s^4 / (E V)^2``, since ``integral G^2 (x-x0)^2 = 1/(8 pi s^2)``.

Replacing s by L, which is defined for any PRF, and adding the two variances
as MATPHOT does::

    sigma_x^2 = (L^2 / (E V)) * [1 + 8 pi (B + RON^2) L^2 / (E V)]     (same for y)

This is the *photonic* limit (infinitely small pixels). For undersampled data (L < 1 px) the true
bound with square pixels is larger; :func:`fisher_crlb` gives it.

Why both closed forms are optimistic between the two limits
-----------------------------------------------------------
Write the Fisher information of a parameter as ``F = sum_i g_i^2 / (B' + E V Pn_i)`` with
``B' = B + RON^2`` and ``g_i`` the derivative of pixel i. Per pixel,
``g^2 / (B' + E V Pn) = 1 / (1/a_i + 1/b_i)`` with ``a_i = g_i^2 / B'`` (sky-limited) and
``b_i = g_i^2 / (E V Pn_i)`` (photon-limited). MATPHOT adds the variances of the two limits,
i.e. it uses ``1 / (1/sum a + 1/sum b)``, and the "parallel sum" is super-additive::

    sum_i 1/(1/a_i + 1/b_i)  <=  1 / (1/sum_i a_i + 1/sum_i b_i)

with equality only when a_i / b_i is the same in every pixel (one regime everywhere). In reality
the core of the star is photon-limited while the wings, which carry most of the position
information, are sky-limited, so the exact variance is *larger* than the model's. For a 3 px
FWHM Gaussian on 100 e- of sky the model's sigma_x is 7-10 % below the CRLB for
E = 3e3 - 1e5 photons, and sigma_m 3-6 % below (``benchmarks/matphot.py``, experiment 1);
at the faint and bright ends the two agree. The measured scatter follows the CRLB.

Exact CRLB
----------
``F = J^T diag(1/sigma_i^2) J`` over the free parameters, with ``J`` the autodiff Jacobian of the
expected pixel values and ``sigma_i^2 = m_i/g + (RON/g)^2`` (ADU, gain g). The CRLB of parameter j
is ``sqrt((F^-1)_jj)``; it is evaluated at whatever parameters are given (truth for planning, the
fit for the ``*_crlb`` columns).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .constants import FWHM_CRITICAL, POGSON
from .core import params as layout
from .core.config import enable_compilation_cache
from .core.fisher import fisher_crlb

__all__ = [
    "PRFQuantities",
    "prf_quantities",
    "photometric_variance",
    "photometric_snr",
    "mag_error",
    "astrometric_rms",
    "box_quantiles",
    "mixture_median",
    "fisher_crlb",
    "crlb",
    "POGSON",
    "FWHM_CRITICAL",
]

_PRF_CHUNK = 256  # phases per prf_quantities call


class PRFQuantities(NamedTuple):
    """Shape quantities of a PRF at given sub-pixel phases; each array has the phase's shape."""

    volume: np.ndarray  # V, sum of the PRF (dimensionless, <= 1)
    sharpness: np.ndarray  # sum of the squared normalised PRF (dimensionless, <= 1)
    beta: np.ndarray  # effective-background area 1/(V^2 sharpness), px^2
    L: np.ndarray  # critical-sampling scale length 1/sqrt(4 pi sharpness), px


@functools.partial(jax.jit, static_argnames=("shape",))
def _prf_sums(psf, x, y, shape):
    prf = psf.evaluate(x, y, shape)  # (H, W) + batch
    return jnp.sum(prf, axis=(0, 1)), jnp.sum(prf * prf, axis=(0, 1))


def prf_quantities(psf, x=0.0, y=0.0, size: int = 65) -> PRFQuantities:
    """V, sharpness, beta and L of a PRF for stars at sub-pixel phases (x, y).

    Parameters
    ----------
    psf : PSF model
        Anything with ``evaluate(x, y, shape)`` (batch axes last), e.g. a
        :class:`~jaxphot.detector.DetectorPRF`.
    x, y : float or array
        Sub-pixel phases (px) of the star relative to the centre of a pixel, usually in
        [-0.5, 0.5]; any shape (the outputs take it).
    size : int
        Side (px) of the square grid the PRF is summed over; it must contain the PRF's wings
        (the default 65 px holds any PSF in this package's tests and benchmarks).

    Returns
    -------
    PRFQuantities
        ``volume, sharpness, beta (px^2), L (px)`` as float64 numpy arrays of ``x``'s shape.
    """
    enable_compilation_cache()  # persistent cache on first use, never at import
    x, y = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(y, np.float64))
    c = (size - 1) / 2.0
    dtype = jnp.result_type(float)
    xf, yf = (x + c).ravel(), (y + c).ravel()
    v, s2 = np.empty(xf.size), np.empty(xf.size)
    # Small fixed chunks bound the memory (a 4x sub-pixel DetectorPRF on 65x65 holds 260x260 per
    # star) and keep one compiled shape. (The old "wrong values at >= 1,024 stars" was int32
    # overflow in DiscretePSF.evaluate, fixed in the core: jit == eager at 2,048 stars on 60x60
    # and 65x65, tests/test_detector.py.)
    for i in range(0, xf.size, _PRF_CHUNK):
        a, b = _prf_sums(
            psf,
            jnp.asarray(xf[i : i + _PRF_CHUNK], dtype),
            jnp.asarray(yf[i : i + _PRF_CHUNK], dtype),
            (size, size),
        )
        v[i : i + _PRF_CHUNK], s2[i : i + _PRF_CHUNK] = np.asarray(a), np.asarray(b)
    v, s2 = v.reshape(x.shape), s2.reshape(x.shape)
    sharp = s2 / (v * v)
    return PRFQuantities(v, sharp, 1.0 / s2, 1.0 / np.sqrt(4.0 * np.pi * sharp))


class PhotometricVariance(NamedTuple):
    """Terms of MATPHOT's photometric error budget, photons^2 (arrays broadcast from inputs)."""

    bright: np.ndarray  # E / V: photon noise of the star
    faint: np.ndarray  # beta (B + RON^2): sky and read noise under the PRF
    sky: np.ndarray  # (beta V)^2 (B + RON^2) / N: error of the fitted flat sky
    total: np.ndarray


def photometric_variance(intensity, sky, read_noise, volume, beta, n_pix=np.inf):
    """MATPHOT's photometric error budget (Mighell 2005 eqs. for sigma_E, section 2.3).

    Parameters
    ----------
    intensity : float or array
        Measured stellar intensity E (photons above the detector).
    sky : float or array
        Observed sky B (electrons per pixel).
    read_noise : float or array
        RON (electrons rms per pixel).
    volume : float or array
        PRF volume V (quantum efficiency), <= 1.
    beta : float or array
        Effective-background area (px^2) of the PRF, ``1/(V^2 sharpness)``.
    n_pix : float or array
        Number of pixels over which the flat sky is fitted; ``inf`` drops the sky-error term.

    Returns
    -------
    PhotometricVariance
        ``bright, faint, sky, total`` variances of E (photons^2); see the module docstring for
        the derivation (note the ``(beta V)^2`` factor of the sky term).
    """
    e, b, r = (np.asarray(a, np.float64) for a in (intensity, sky, read_noise))
    v, beta, n = (np.asarray(a, np.float64) for a in (volume, beta, n_pix))
    rms2 = b + r * r
    bright = e / v
    faint = beta * rms2
    skyterm = (beta * v) ** 2 * rms2 / n
    return PhotometricVariance(bright, faint, skyterm, bright + faint + skyterm)


def photometric_snr(intensity, sky, read_noise, volume, beta, n_pix=np.inf):
    """Upper limit of the photometric signal-to-noise ratio, ``E / sigma_E`` (dimensionless).

    ``SNR = E / sqrt(E/V + beta (B + RON^2) + (beta V)^2 (B + RON^2)/N)``; arguments as in
    :func:`photometric_variance`.
    """
    var = photometric_variance(intensity, sky, read_noise, volume, beta, n_pix).total
    return np.asarray(intensity, np.float64) / np.sqrt(var)


def mag_error(intensity, sky, read_noise, volume, beta, n_pix=np.inf):
    """Lower limit of the magnitude error (mag rms): ``1.0857 / SNR`` (:func:`photometric_snr`)."""
    return POGSON / photometric_snr(intensity, sky, read_noise, volume, beta, n_pix)


def astrometric_rms(intensity, sky, read_noise, volume, L):
    """MATPHOT's astrometric limit per axis (px rms), Mighell 2005 section 2.4.

    ``sigma_x = sqrt(L^2/(E V) * [1 + 8 pi (B + RON^2) L^2 / (E V)])``: the photonic limit, exact
    for well-sampled Gaussians; it underestimates the error of undersampled data (L < 1 px).

    Parameters
    ----------
    intensity : photons; sky : electrons/pixel; read_noise : electrons; volume : V;
    L : critical-sampling scale length (px). All broadcast together.
    """
    e, b, r, v, ll = (np.asarray(a, np.float64) for a in (intensity, sky, read_noise, volume, L))
    bright = ll * ll / (e * v)
    return np.sqrt(bright * (1.0 + 8.0 * np.pi * (b + r * r) * bright))


# Normal-distribution tail of a 5-sigma outlier (two-sided), MATPHOT's dashed curve.
_P5SIGMA = 1.0 - 5.733031e-7


def box_quantiles(sigma, kind: str = "abs"):
    """Theoretical box-plot curves (Mighell 2005, appendix) for errors of rms ``sigma`` per axis.

    Parameters
    ----------
    sigma : array
        rms error per axis (mag for photometry, px for astrometry).
    kind : {"abs", "radial"}
        ``"abs"``: |N(0, sigma)| (absolute magnitude errors, half-normal);
        ``"radial"``: sqrt(dx^2 + dy^2) with dx, dy ~ N(0, sigma) (total astrometric error,
        Rayleigh).

    Returns
    -------
    dict
        ``median, hinge (75 %), fence (upper hinge + 1.5 IQR), five_sigma`` arrays like sigma.
        For "abs" these are 0.6745, 1.1503, 2.398 (98.35 %) and 5 sigma; for "radial" 1.1774,
        1.6651, 3.025 (98.97 %) and 5.36 sigma.
    """
    from scipy import stats

    sigma = np.asarray(sigma, np.float64)
    if kind == "abs":
        q = lambda p: stats.norm.ppf(0.5 + p / 2.0)  # noqa: E731
    elif kind == "radial":
        q = lambda p: np.sqrt(-2.0 * np.log1p(-p))  # noqa: E731
    else:
        raise ValueError(f"kind must be 'abs' or 'radial', got {kind!r}")
    lo, med, hi = q(0.25), q(0.5), q(0.75)
    return {
        "median": med * sigma,
        "hinge": hi * sigma,
        "fence": (hi + 1.5 * (hi - lo)) * sigma,
        "five_sigma": q(_P5SIGMA) * sigma,
    }


def mixture_median(sigma, kind: str = "abs", axis=None) -> np.ndarray:
    """Median of |error| for a population of stars with different rms errors ``sigma``.

    Solves ``mean_i CDF(t; sigma_i) = 1/2`` by bisection, where CDF is that of |N(0, sigma_i)|
    (``kind="abs"``) or of the Rayleigh distribution (``kind="radial"``). For one sigma this is
    0.6745 sigma or 1.1774 sigma; for a bin of stars it is the exact theoretical median of the
    bin, which is what the measured median should be compared with.
    """
    from scipy import special

    s = np.asarray(sigma, np.float64)
    s = s[np.isfinite(s) & (s > 0)] if axis is None else s
    if s.size == 0:
        return np.nan
    cdf = (
        (lambda t: special.erf(t / (np.sqrt(2.0) * s)))
        if kind == "abs"
        else (lambda t: -np.expm1(-0.5 * (t / s) ** 2))
    )
    lo, hi = 0.0, 10.0 * float(np.max(s))
    for _ in range(80):  # bisection on a monotone scalar function; 80 halvings reach 1e-24
        mid = 0.5 * (lo + hi)
        if np.mean(cdf(mid)) < 0.5:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def crlb(
    psf,
    flux,
    x,
    y,
    sky,
    read_noise,
    shape,
    *,
    gain: float = 1.0,
    background: str | None = "plane",
    fixed=(),
    mask=None,
) -> dict:
    """How well could these stars be measured? The exact CRLB without any data.

    Parameters
    ----------
    psf : PSF model
        e.g. ``DetectorPRF(DiscretePSF(...), sensitivity=...)`` (then fluxes are photons).
    flux, x, y : (N,) or (N, K) arrays
        True intensities (ADU; photons above the detector with a DetectorPRF) and positions (px,
        in the cutout frame, pixel [j, i] centred at (i, j)). K stars in one cutout are blended
        neighbours: their correlations enter the bound.
    sky : float or (N,) array
        Observed sky level (ADU per pixel), the plane's B0.
    read_noise : float
        Read noise (electrons rms).
    shape : (H, W)
        Cutout (fitting box) shape in pixels.
    gain : float
        Electrons per ADU.
    background : {"plane", "constant", None}
        Background parameters that are fitted, as in :func:`~jaxphot.fit.fit_cutouts`.
    fixed : iterable of str
        Parameters held fixed: any of "bkg", "bkg_x", "bkg_y", "flux", "x", "y".
    mask : bool array broadcastable to (N, H, W), optional
        Pixels that would be ignored.

    Returns
    -------
    dict
        ``"flux", "x", "y"``: (N, K) CRLBs (ADU, px, px); ``"bkg"``: (N,) (ADU/pixel);
        ``"snr"``: (N, K) flux / CRLB(flux); ``"mag"``: (N, K) 1.0857 / snr.
    """
    f = np.atleast_1d(np.asarray(flux, np.float64))
    f = f[:, None] if f.ndim == 1 else f

    def per_star(a):  # scalars (one position for every star) or (N,) / (N, K) arrays
        a = np.asarray(a, np.float64)
        return np.broadcast_to(a.reshape(f.shape[0], -1) if a.ndim else a, f.shape)

    xs, ys = per_star(x), per_star(y)
    n, k = f.shape
    b0 = np.broadcast_to(np.asarray(sky, np.float64), (n,))
    params = layout.pack(b0, 0.0, 0.0, f, xs, ys)
    free = layout.free_mask(np.ones((n, k), bool), background, fixed)
    c = fisher_crlb(psf, params, shape, free, read_noise=read_noise, gain=gain, mask=mask)
    plane, fc, xc, yc = layout.unpack_rows(c)
    out = {"flux": fc, "x": xc, "y": yc, "bkg": plane[:, 0]}
    with np.errstate(divide="ignore", invalid="ignore"):
        out["snr"] = f / out["flux"]
        out["mag"] = POGSON / out["snr"]
    return out
