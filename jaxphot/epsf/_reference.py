"""What the ePSF smoothness penalty pulls toward: an elliptical Moffat PRF or the ePSF's own low-pass."""

from __future__ import annotations

import math

import numpy as np

from ..psf.kernels import bspline_prefilter, spline_samples
from ..psf.varying import poly_terms

_GL_X, _GL_W = np.polynomial.legendre.leggauss(5)


def fwhm_samples(samples: np.ndarray) -> float:
    """FWHM (array units) from the area above half maximum."""
    peak = samples.max()
    area = np.count_nonzero(samples >= 0.5 * peak)
    return 2.0 * math.sqrt(area / math.pi)


def _moffat_prf(p, u, v):
    """Pixel-integrated elliptical Moffat at offsets ``u, v`` (pixels, arrays of one shape).

    ``p = (amplitude, x0, y0, log a, log c, atanh(b / sqrt(ac)), log(beta - 1))`` for the profile
    ``(1 + a du^2 + 2 b du dv + c dv^2)^-beta``; the pixel integral is 5 x 5 Gauss-Legendre.
    """
    amp, x0, y0, la, lc, tb, lb = p
    a, c = np.exp(la), np.exp(lc)
    b = np.tanh(tb) * np.sqrt(a * c)
    beta = 1.0 + np.exp(lb)
    g = 0.5 * _GL_X
    du = u[..., None, None] - x0 + g[:, None]
    dv = v[..., None, None] - y0 + g[None, :]
    q = a * du * du + 2 * b * du * dv + c * dv * dv
    w = 0.25 * _GL_W[:, None] * _GL_W[None, :]
    return amp * np.sum(w * (1.0 + q) ** -beta, axis=(-2, -1))


def moffat_lsq(samples: np.ndarray, s: int, core: np.ndarray | None = None):
    """Least-squares elliptical Moffat PRF fit to ePSF samples (n, n), over ``core`` (bool) if given.

    Returns ``(result, u, v)``: scipy's ``least_squares`` result (``x``, ``jac``, ``success``) and
    the sample offsets in pixels; raises ``ValueError`` / ``LinAlgError`` on a failed fit. Every
    fit starts afresh at beta = 4 and the samples' FWHM (warm starts from the previous
    iteration's parameters changed the Spitzer ePSF's EE(2 px) enough to fail its 3 % check).
    """
    from scipy.optimize import least_squares

    n = samples.shape[0]
    off = (np.arange(n) - (n - 1) / 2.0) / s
    u, v = np.meshgrid(off, off)
    fw = max(fwhm_samples(samples) / s, 0.5)
    alpha2 = (fw / 2.0) ** 2 / (2 ** (1 / 4.0) - 1)
    p0 = np.array([samples.max(), 0, 0, -np.log(alpha2), -np.log(alpha2), 0.0, np.log(3.0)])
    sel = np.ones(samples.shape, bool) if core is None else core
    uc, vc, sc = u[sel], v[sel], samples[sel]
    with np.errstate(all="ignore"):
        r = least_squares(lambda p: _moffat_prf(p, uc, vc) - sc, p0, method="lm")
    return r, u, v


def _moffat_fit(samples: np.ndarray, s: int):
    """Samples (n, n) of the elliptical Moffat PRF that best fits the ePSF samples, or None."""
    try:
        r, u, v = moffat_lsq(samples, s)
        with np.errstate(all="ignore"):
            ref = _moffat_prf(r.x, u, v)
    except (ValueError, np.linalg.LinAlgError):
        return None
    return ref if np.all(np.isfinite(ref)) else None


# where (in u, v) a varying ePSF's Moffat references are fitted: enough points to determine a
# polynomial of each degree (1, u, v[, u^2, uv, v^2])
_REF_POINTS = {
    1: np.array([[0.0, 0.0], [0.7, 0.0], [0.0, 0.7]]),
    2: np.array([[0.0, 0.0], [0.7, 0.0], [-0.7, 0.0], [0.0, 0.7], [0.0, -0.7], [0.7, 0.7]]),
}


def moffat_reference_terms(coeffs: np.ndarray, n: int, s: int, degree: int):
    """Moffat references (T, n*n coefficients) of every polynomial term of a varying ePSF.

    The ePSF is evaluated at the points of ``_REF_POINTS``, a Moffat is fitted at each, and the
    polynomial through those Moffats gives each term's reference, so the variation terms too are
    smoothed only in what a (varying) Moffat does not explain, rather than toward zero curvature.
    Measured on a Moffat FWHM 2.6-3.4 field (smoothness 1e-2): a small gain (corner core rms 0.19
    vs 0.24 %, pulls unchanged); the smoothness weight matters more (see :func:`build_epsf`). None when a fit
    fails (the penalty then pulls toward zero curvature).
    """
    terms = [spline_samples(t.reshape(n, n), "bspline3") for t in coeffs]
    if degree == 0:
        ref = _moffat_fit(terms[0], s)
        return None if ref is None else bspline_prefilter(ref).ravel()[None]
    pts = _REF_POINTS[degree]
    mono = np.array([[u**a * v**b for a, b in poly_terms(degree)] for u, v in pts])  # (K, T)
    refs = []
    for m in mono:
        ref = _moffat_fit(np.tensordot(m, np.asarray(terms), axes=1), s)
        if ref is None:
            return None
        refs.append(ref.ravel())
    sol = np.linalg.solve(mono, np.asarray(refs))  # (T, n*n) samples of each term's reference
    return np.stack([bspline_prefilter(t.reshape(n, n)).ravel() for t in sol])


def lowpass_reference_terms(coeffs: np.ndarray, n: int, s: int, cutoff: float = 1.2) -> np.ndarray:
    """Each term's coefficients with the spatial frequencies above ``~cutoff / FWHM`` removed.

    The reference of ``prior="lowpass"``: the penalty then acts only on the ePSF's content
    above that frequency. A diffraction-limited PSF is band-limited (its optical transfer
    function ends at D / lambda ~ 1.03 / FWHM cycles per pixel), and so is its PRF (the pixel
    only multiplies by a sinc), while the S-curve family of ePSFs that the data cannot tell
    apart lives near 1 cycle per pixel (a warp periodic in pixel phase). A PSF broadened by
    aberrations, jitter or the pixel itself has a larger FWHM than its optics' cut-off implies,
    and this reference then damps real power. A raised cosine from 0.8 to 1.2 times
    ``cutoff / FWHM`` keeps the low band.
    """
    c = np.asarray(coeffs, np.float64).reshape(-1, n, n)
    fwhm = max(fwhm_samples(spline_samples(c[0], "bspline3")) / s, 0.5)  # pixels
    fc = cutoff / fwhm  # cycles per pixel
    f = np.fft.fftfreq(n) * s
    r = np.hypot(f[:, None], f[None, :])
    t = np.clip((1.2 * fc - r) / (0.4 * fc), 0.0, 1.0)
    keep = 0.5 - 0.5 * np.cos(np.pi * t)
    return np.stack([np.real(np.fft.ifft2(np.fft.fft2(term) * keep)).ravel() for term in c])
