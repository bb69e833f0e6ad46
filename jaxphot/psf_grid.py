"""Spatially varying PSFs: polynomial and gridded ePSFs, FITS I/O, the HST WFC3/UVIS grid reader.

A spatially varying PSF is an immutable pytree with a method ``at(x, y)`` that takes image
coordinates ``x, y`` (arrays (N,), pixels, pixel ``[j, i]`` centred at ``(i, j)``) and returns a
:class:`BatchedDiscretePSF`: N discrete PSFs stacked along a *trailing* batch axis of their
coefficient array, with ``batch_size = N``. Its ``evaluate(x, y, shape)`` takes star positions whose
last axis is that batch axis (e.g. (K, N) for K stars in each of N cutouts) and uses the n-th PSF
for column n. This is the hook :func:`jaxphot.fit.fit_cutouts` calls (with ``origin``), so every
cutout is fitted with the PSF at its own detector position.

Models
------
:class:`PolynomialPSF`
    ``C(x, y) = sum_t P_t(u, v) C_t`` with monomials ``P_t`` of degree <= 2 in the normalised
    coordinates ``u = (x - x0)/sx``, ``v = (y - y0)/sy``. Built by :func:`jaxphot.epsf.build_epsf`
    with ``degree > 0``.
:class:`GriddedPSF`
    PSFs on a rectangular grid of detector positions, bilinearly interpolated between the nodes and
    held constant beyond the outermost ones (as photutils' ``GriddedPSFModel`` does).

Every PSF returned by ``at`` is renormalised exactly to the convention of DESIGN.md (sum of the
samples = s^2 for an integrated ePSF, 1 for a MATPHOT PSF), so a polynomial or an interpolation
never changes a star's flux scale.

File formats
------------
:func:`write_psf_fits` / :func:`read_psf_fits` store a :class:`~jaxphot.psf.DiscretePSF`, a
:class:`PolynomialPSF` or a :class:`GriddedPSF` as one FITS image (samples, not spline
coefficients) with the metadata in the header: ``OVERSAMP``, ``INTEGRAT``, ``KERNEL``,
``PSFTYPE`` (``DISCRETE``/``POLY``/``GRID``), for polynomials ``POLYDEG, POLYX0, POLYY0, POLYSX,
POLYSY``, ``PSFNORM`` when the samples' sum is not the convention's (an aperture-corrected
ePSF), for grids one ``DET_YX{i} = '(x, y)'`` card per plane and ``NODENORM = T`` when the
planes' sums carry per-node norms (aperture-corrected gridded ePSFs), ``EXTRAPOL = T`` for a
grid extrapolated beyond its outermost nodes. The grid cards follow the
WebbPSF/photutils ``GriddedPSFModel`` layout (photutils reads the first number as x), so
:func:`read_psf_fits` also reads photutils-style gridded PSF files and those files can be read by
photutils.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ._pytree import pytree
from .kernels import KERNELS, bspline_prefilter
from .psf import DiscretePSF, interpolation_matrix

__all__ = [
    "BatchedDiscretePSF",
    "PolynomialPSF",
    "GriddedPSF",
    "poly_terms",
    "render_image",
    "write_psf_fits",
    "read_psf_fits",
    "read_wfc3_uvis_grid",
    "wfc3_uvis_grid_positions",
    "sample_sum_weights",
    "PSFGridWarning",
]

_HIGHEST = jax.lax.Precision.HIGHEST


class PSFGridWarning(UserWarning):
    """A PSF grid file with corrupt nodes that were dropped."""


def poly_terms(degree: int) -> tuple[tuple[int, int], ...]:
    """Exponents ``(a, b)`` of the monomials ``u^a v^b`` with ``a + b <= degree``."""
    if degree not in (0, 1, 2):
        raise ValueError(f"degree must be 0, 1 or 2, got {degree!r}")
    return tuple((d - b, b) for d in range(degree + 1) for b in range(d + 1))


def _monomials(u, v, degree: int):
    """(T,) + u.shape array of the monomials of :func:`poly_terms`."""
    return jnp.stack([u**a * v**b for a, b in poly_terms(degree)])


def sample_sum_weights(n: int, kernel: str) -> np.ndarray:
    """(n,) weights e with ``sum(samples) = e_y^T C e_x`` for coefficient array C along one axis.

    For the cubic B-spline a sample is ``(c[m-1] + 4 c[m] + c[m+1]) / 6`` with zero coefficients
    beyond the edges, so the two edge coefficients count 5/6; other kernels store samples.
    """
    e = np.ones(n)
    if kernel == "bspline3":
        e[0] = e[-1] = 5.0 / 6.0
    return e


def _check_kernel_and_oversampling(kernel, oversampling):
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {sorted(KERNELS)}, got {kernel!r}")
    s = int(oversampling)
    if s < 1 or s != oversampling:
        raise ValueError(f"oversampling must be a positive integer, got {oversampling!r}")
    return s


@pytree(data_fields=("coeffs",), meta_fields=("oversampling", "integrated", "kernel", "batch_size"))
class BatchedDiscretePSF:
    """N discrete PSFs of one shape, one per cutout: what spatially varying PSFs' ``at`` returns.

    Parameters
    ----------
    coeffs : (ny, nx, N) array
        Interpolation coefficients (prefiltered B-spline coefficients for ``"bspline3"``), already
        normalised; see :class:`~jaxphot.psf.DiscretePSF` for the conventions.
    oversampling, integrated, kernel
        As for :class:`~jaxphot.psf.DiscretePSF`.
    """

    def __init__(self, coeffs, oversampling: int, integrated: bool = True, kernel="bspline3"):
        c = jnp.asarray(coeffs)
        if c.ndim != 3:
            raise ValueError(f"coeffs must have shape (ny, nx, N), got {c.shape}")
        object.__setattr__(self, "coeffs", c)
        object.__setattr__(
            self, "oversampling", _check_kernel_and_oversampling(kernel, oversampling)
        )
        object.__setattr__(self, "integrated", bool(integrated))
        object.__setattr__(self, "kernel", kernel)
        object.__setattr__(self, "batch_size", int(c.shape[-1]))

    def _axis_matrix(self, x0, n_pix, n_arr, dtype):
        return interpolation_matrix(self.kernel, self.oversampling, self.integrated,
                                    x0, n_pix, n_arr, dtype)

    def evaluate(self, x, y, shape):
        """PRF of unit-flux stars at (x, y): (H, W) + x.shape; x's last axis indexes the PSFs."""
        dtype = jnp.result_type(x, y, float)
        x, y = jnp.broadcast_arrays(jnp.asarray(x, dtype), jnp.asarray(y, dtype))
        if x.ndim == 0 or x.shape[-1] != self.coeffs.shape[-1]:
            raise ValueError(
                f"the last axis of x ({x.shape}) must index the {self.coeffs.shape[-1]} PSFs"
            )
        lead = x.shape[:-1]
        n = x.shape[-1]
        x2, y2 = x.reshape(-1, n), y.reshape(-1, n)  # (K, N)
        c = self.coeffs.astype(dtype)
        rx = self._axis_matrix(x2, shape[1], c.shape[1], dtype)  # (W, nx, K, N)
        ry = self._axis_matrix(y2, shape[0], c.shape[0], dtype)  # (H, ny, K, N)
        t = jnp.einsum("abn,wbkn->awkn", c, rx, precision=_HIGHEST)
        out = jnp.einsum("hakn,awkn->hwkn", ry, t, precision=_HIGHEST)
        return out.reshape(tuple(shape) + lead + (n,))

    def __repr__(self):
        return (
            f"BatchedDiscretePSF(shape={tuple(self.coeffs.shape[:2])}, N={self.batch_size}, "
            f"oversampling={self.oversampling}, integrated={self.integrated})"
        )


def _normalised_batch(c, oversampling, integrated, kernel, norm=1.0):
    """Rescale coefficients (ny, nx, N) so that every PSF's samples sum to ``norm`` s^2 (or 1)."""
    ey = jnp.asarray(sample_sum_weights(c.shape[0], kernel), c.dtype)
    ex = jnp.asarray(sample_sum_weights(c.shape[1], kernel), c.dtype)
    total = jnp.einsum("a,abn,b->n", ey, c, ex, precision=_HIGHEST)
    target = (oversampling**2 if integrated else 1.0) * norm
    # A polynomial may in principle reach a non-positive sum far outside the fitted field; keep
    # the PSF finite there (it is flagged by the fit's chi2, not by a NaN).
    total = jnp.where(total > 0, total, 1.0)
    return BatchedDiscretePSF(c * (target / total), oversampling, integrated, kernel)


@pytree(
    data_fields=("coeffs",),
    meta_fields=("oversampling", "integrated", "kernel", "degree", "center", "scale", "norm"),
)
class PolynomialPSF:
    """A discrete PSF whose samples vary with detector position as a polynomial of degree <= 2.

    Parameters
    ----------
    arrays : (T, ny, nx) array
        Samples of each polynomial term, ``T = (degree+1)(degree+2)/2`` in the order of
        :func:`poly_terms` (1, u, v, u^2, uv, v^2). Term 0 is the PSF at ``center``.
    oversampling : int
        Samples per detector pixel (s).
    degree : int
        0, 1 or 2.
    center, scale : (float, float)
        ``u = (x - center[0]) / scale[0]``, ``v = (y - center[1]) / scale[1]`` (pixels). Typically
        the centre and half-size of the image, so that u, v lie in [-1, 1].
    integrated : bool
        True for an ePSF (PRF samples, sum s^2), as built by :func:`jaxphot.epsf.build_epsf`.
    kernel : str
        Interpolation kernel.
    norm : float
        Sum of every PSF's samples relative to the convention (s^2 or 1): the fraction of a
        star's total flux the model holds. 1 (default) makes fitted fluxes the flux the model
        holds; ``1 / apcor`` (``build_epsf(normalize="aperture")``) makes them total fluxes.
    """

    def __init__(
        self,
        arrays,
        oversampling: int,
        degree: int,
        center,
        scale,
        integrated: bool = True,
        kernel: str = "bspline3",
        norm: float = 1.0,
    ):
        a = np.asarray(arrays, np.float64)
        terms = poly_terms(degree)
        if a.ndim != 3 or a.shape[0] != len(terms) or min(a.shape[1:]) < 3:
            raise ValueError(
                f"arrays must have shape ({len(terms)}, ny, nx) for degree {degree}, got {a.shape}"
            )
        if not np.all(np.isfinite(a)):
            raise ValueError("arrays (the PSF terms) contain non-finite values")
        s = _check_kernel_and_oversampling(kernel, oversampling)
        cx, cy = (float(v) for v in center)
        sx, sy = (float(v) for v in scale)
        if not (sx > 0 and sy > 0):
            raise ValueError(f"scale must be positive (pixels), got {scale!r}")
        c = np.stack([bspline_prefilter(t) for t in a]) if kernel == "bspline3" else a
        object.__setattr__(self, "coeffs", jnp.asarray(c, jnp.float32))
        object.__setattr__(self, "oversampling", s)
        object.__setattr__(self, "integrated", bool(integrated))
        object.__setattr__(self, "kernel", kernel)
        object.__setattr__(self, "degree", int(degree))
        object.__setattr__(self, "center", (cx, cy))
        object.__setattr__(self, "scale", (sx, sy))
        if not (np.isfinite(norm) and norm > 0):
            raise ValueError(f"norm must be a positive number, got {norm!r}")
        object.__setattr__(self, "norm", float(norm))

    @property
    def arrays(self) -> np.ndarray:
        """(T, ny, nx) samples of each term (float64 numpy)."""
        return np.stack([_samples(c, self.kernel) for c in np.asarray(self.coeffs, np.float64)])

    def at(self, x, y) -> BatchedDiscretePSF:
        """The PSFs at image positions ``x, y`` (N,): a :class:`BatchedDiscretePSF` of N PSFs."""
        x, y = jnp.atleast_1d(jnp.asarray(x)), jnp.atleast_1d(jnp.asarray(y))
        u = (x - self.center[0]) / self.scale[0]
        v = (y - self.center[1]) / self.scale[1]
        p = _monomials(u, v, self.degree).astype(self.coeffs.dtype)  # (T, N)
        c = jnp.einsum("tab,tn->abn", self.coeffs, p, precision=_HIGHEST)
        return _normalised_batch(c, self.oversampling, self.integrated, self.kernel, self.norm)

    def psf_at(self, x: float, y: float) -> DiscretePSF:
        """One :class:`~jaxphot.psf.DiscretePSF` for the image position (x, y)."""
        return _single(self.at(np.array([x]), np.array([y])))

    def __repr__(self):
        return (
            f"PolynomialPSF(shape={tuple(self.coeffs.shape[1:])}, degree={self.degree}, "
            f"oversampling={self.oversampling}, center={self.center}, scale={self.scale})"
        )


@pytree(
    data_fields=("coeffs",),
    meta_fields=("oversampling", "integrated", "kernel", "grid_x", "grid_y", "norm", "extrapolate"),
)
class GriddedPSF:
    """Discrete PSFs on a rectangular grid of detector positions, bilinearly interpolated.

    Parameters
    ----------
    arrays : (ny_grid, nx_grid, ny, nx) or (ny_grid * nx_grid, ny, nx) array
        The PSF samples at each node; a flat stack is in row-major order (x varies fastest).
    grid_x, grid_y : sequences of float
        Increasing image coordinates of the grid columns and rows (pixels, 0-based).
    oversampling : int
        Samples per detector pixel (s).
    integrated : bool
        True for ePSFs (PRF samples, sum s^2). Each node is renormalised to its convention.
    kernel : str
        Interpolation kernel.
    norm : float or (ny_grid, nx_grid) array
        Sum of each node's samples relative to the convention (s^2 or 1): the fraction of a star's
        total flux the model holds, as for :class:`PolynomialPSF`. 1 (default) for PSFs that hold
        all the light; ``1 / apcor`` per node for aperture-corrected ePSFs
        (:func:`jaxphot.epsf.build_epsf_grid`). Interpolated bilinearly like the samples.
    extrapolate : bool
        Beyond the outermost nodes, continue the outermost cells' linear variation (True) instead
        of holding the edge nodes' PSFs (False, default, as photutils). Meant for nodes at the
        centres of regions that tile the image (:func:`jaxphot.epsf.build_epsf_grid`), where the
        image extends half a region beyond them; far outside, an extrapolated PSF degrades.

    Notes
    -----
    Between nodes the *samples* are interpolated linearly in x and y, then renormalised (to the
    interpolated ``norm``); outside the grid the nearest edge value is used unless
    ``extrapolate``.
    """

    def __init__(
        self,
        arrays,
        grid_x,
        grid_y,
        oversampling: int,
        integrated: bool = True,
        kernel: str = "bspline3",
        norm=1.0,
        extrapolate: bool = False,
    ):
        gx = tuple(float(v) for v in np.atleast_1d(grid_x))
        gy = tuple(float(v) for v in np.atleast_1d(grid_y))
        a = np.asarray(arrays, np.float64)
        if a.ndim == 3:
            if a.shape[0] != len(gx) * len(gy):
                raise ValueError(
                    f"{a.shape[0]} PSFs do not fill a {len(gy)} x {len(gx)} grid of positions"
                )
            a = a.reshape(len(gy), len(gx), *a.shape[1:])
        if a.ndim != 4 or a.shape[:2] != (len(gy), len(gx)) or min(a.shape[2:]) < 3:
            raise ValueError(
                f"arrays must have shape ({len(gy)}, {len(gx)}, ny, nx), got {np.shape(arrays)}"
            )
        for name, g in (("grid_x", gx), ("grid_y", gy)):
            if len(g) > 1 and not np.all(np.diff(g) > 0):
                raise ValueError(f"{name} must be strictly increasing, got {g}")
        if not np.all(np.isfinite(a)):
            raise ValueError("arrays (the PSF grid) contain non-finite values")
        s = _check_kernel_and_oversampling(kernel, oversampling)
        sums = a.sum(axis=(2, 3))
        if not np.all(sums > 0):
            raise ValueError("every PSF of the grid must have a positive sum")
        nrm = np.broadcast_to(np.asarray(norm, np.float64), sums.shape)
        if not (np.all(np.isfinite(nrm)) and np.all(nrm > 0)):
            raise ValueError(f"norm must be positive, scalar or ({len(gy)}, {len(gx)}), got {norm!r}")
        a = a * ((s * s if integrated else 1.0) * nrm / sums)[:, :, None, None]
        flat = a.reshape(-1, *a.shape[2:])
        c = np.stack([bspline_prefilter(t) for t in flat]) if kernel == "bspline3" else flat
        object.__setattr__(self, "coeffs", jnp.asarray(c.reshape(a.shape), jnp.float32))
        object.__setattr__(self, "oversampling", s)
        object.__setattr__(self, "integrated", bool(integrated))
        object.__setattr__(self, "kernel", kernel)
        object.__setattr__(self, "grid_x", gx)
        object.__setattr__(self, "grid_y", gy)
        object.__setattr__(self, "extrapolate", bool(extrapolate))
        # a hashable static field: a float when uniform (the common case), else nested tuples
        uni = bool(np.all(nrm == nrm.flat[0]))
        object.__setattr__(
            self, "norm", float(nrm.flat[0]) if uni else tuple(map(tuple, nrm.tolist()))
        )

    @property
    def arrays(self) -> np.ndarray:
        """(ny_grid, nx_grid, ny, nx) samples (float64 numpy); each sums to ``norm`` s^2 (or norm)."""
        c = np.asarray(self.coeffs, np.float64)
        flat = np.stack([_samples(t, self.kernel) for t in c.reshape(-1, *c.shape[2:])])
        return flat.reshape(c.shape)

    @staticmethod
    def _weights(p, grid, extrapolate=False):
        """(len(grid), N) linear-interpolation weights of positions p, clamped to the grid unless
        ``extrapolate`` (then the outermost intervals' weights continue linearly)."""
        g = jnp.asarray(grid, p.dtype)
        if len(grid) == 1:
            return jnp.ones((1,) + p.shape, p.dtype)
        i = jnp.clip(jnp.searchsorted(g, p) - 1, 0, len(grid) - 2)
        f = (p - g[i]) / (g[i + 1] - g[i])
        if not extrapolate:
            f = jnp.clip(f, 0.0, 1.0)
        hot = jax.nn.one_hot(i, len(grid), dtype=p.dtype).T  # (G, N)
        nxt = jax.nn.one_hot(i + 1, len(grid), dtype=p.dtype).T
        return hot * (1.0 - f) + nxt * f

    def at(self, x, y) -> BatchedDiscretePSF:
        """The PSFs at image positions ``x, y`` (N,): a :class:`BatchedDiscretePSF` of N PSFs."""
        x = jnp.atleast_1d(jnp.asarray(x, jnp.float32))
        y = jnp.atleast_1d(jnp.asarray(y, jnp.float32))
        wx = self._weights(x, self.grid_x, self.extrapolate)
        wy = self._weights(y, self.grid_y, self.extrapolate)
        c = jnp.einsum("ijab,in,jn->abn", self.coeffs, wy, wx, precision=_HIGHEST)
        if isinstance(self.norm, float):
            nrm = self.norm
        else:
            nrm = jnp.einsum("ij,in,jn->n", jnp.asarray(self.norm, c.dtype), wy, wx, precision=_HIGHEST)
        return _normalised_batch(c, self.oversampling, self.integrated, self.kernel, nrm)

    def psf_at(self, x: float, y: float) -> DiscretePSF:
        """One :class:`~jaxphot.psf.DiscretePSF` for the image position (x, y)."""
        return _single(self.at(np.array([x]), np.array([y])))

    def __repr__(self):
        return (
            f"GriddedPSF(grid={len(self.grid_y)}x{len(self.grid_x)}, "
            f"shape={tuple(self.coeffs.shape[2:])}, oversampling={self.oversampling})"
        )


def _samples(c: np.ndarray, kernel: str) -> np.ndarray:
    """Samples from (prefiltered) coefficients, as DiscretePSF.array does."""
    if kernel != "bspline3":
        return np.asarray(c, np.float64)
    k = np.array([1.0, 4.0, 1.0]) / 6.0
    p = np.pad(np.asarray(c, np.float64), 1)
    rows = k[0] * p[:-2] + k[1] * p[1:-1] + k[2] * p[2:]
    return k[0] * rows[:, :-2] + k[1] * rows[:, 1:-1] + k[2] * rows[:, 2:]


def _single(batch: BatchedDiscretePSF) -> DiscretePSF:
    c = np.asarray(batch.coeffs[..., 0], np.float64)
    # the batch is already normalised (to ``norm`` s^2 for a PolynomialPSF): keep its sum
    return DiscretePSF(
        _samples(c, batch.kernel),
        batch.oversampling,
        integrated=batch.integrated,
        kernel=batch.kernel,
        normalize=False,
    )


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
        Stars per evaluation (bounds memory).

    Returns
    -------
    (H, W) float64 array
    """
    x, y, flux = (np.atleast_1d(np.asarray(v, np.float64)) for v in (x, y, flux))
    stamp = int(stamp or 25) | 1
    half = stamp // 2
    h, w = shape
    img = np.zeros((h + 2 * stamp, w + 2 * stamp))  # padded so stamps never fall off the edge
    jj, ii = np.mgrid[0:stamp, 0:stamp]
    for start in range(0, x.size, chunk):
        sl = slice(start, start + chunk)
        xs, ys, fs = x[sl], y[sl], flux[sl]
        ox, oy = np.round(xs).astype(int) - half, np.round(ys).astype(int) - half
        lx, ly = xs - ox, ys - oy
        if hasattr(psf, "at"):
            p = psf.at(jnp.asarray(xs), jnp.asarray(ys))
            st = np.asarray(p.evaluate(jnp.asarray(lx)[None], jnp.asarray(ly)[None], (stamp,) * 2))
            st = st[:, :, 0, :]
        else:
            st = np.asarray(psf.evaluate(jnp.asarray(lx), jnp.asarray(ly), (stamp, stamp)))
        st = np.moveaxis(st, -1, 0) * fs[:, None, None]
        rows = (oy[:, None, None] + jj[None] + stamp).ravel()
        cols = (ox[:, None, None] + ii[None] + stamp).ravel()
        ok = (rows >= 0) & (rows < img.shape[0]) & (cols >= 0) & (cols < img.shape[1])
        np.add.at(img, (rows[ok], cols[ok]), st.ravel()[ok])
    return img[stamp : stamp + h, stamp : stamp + w]


# ----------------------------------------------------------------------------------------------
# FITS I/O


def write_psf_fits(psf, path, overwrite: bool = False) -> None:
    """Save a DiscretePSF, PolynomialPSF or GriddedPSF to a FITS file (samples + metadata).

    See the module docstring for the header keywords.
    """
    from astropy.io import fits

    hdr = fits.Header()
    hdr["OVERSAMP"] = (psf.oversampling, "PSF samples per detector pixel")
    hdr["INTEGRAT"] = (psf.integrated, "T: samples of the PRF (ePSF, sum s^2)")
    hdr["KERNEL"] = (psf.kernel, "interpolation kernel")
    hdr["ORIGIN0"] = ("centre", "PSF origin at the array's geometric centre")
    if isinstance(psf, DiscretePSF):
        hdr["PSFTYPE"] = "DISCRETE"
        data = psf.array
        norm = data.sum() / (psf.oversampling**2 if psf.integrated else 1.0)
        if abs(norm - 1.0) > 1e-6:  # e.g. an aperture-corrected ePSF (build_epsf normalize=...)
            hdr["PSFNORM"] = (norm, "sum of the samples / convention (flux fraction)")
    elif isinstance(psf, PolynomialPSF):
        hdr["PSFTYPE"] = "POLY"
        if psf.norm != 1.0:
            hdr["PSFNORM"] = (psf.norm, "sum of the samples / convention (flux fraction)")
        hdr["POLYDEG"] = (psf.degree, "degree of the polynomial in (u, v)")
        hdr["POLYX0"], hdr["POLYY0"] = psf.center[0], psf.center[1]
        hdr["POLYSX"], hdr["POLYSY"] = psf.scale[0], psf.scale[1]
        hdr["COMMENT"] = "u=(x-POLYX0)/POLYSX, v=(y-POLYY0)/POLYSY, 0-based pixels"
        hdr["COMMENT"] = "planes: terms 1, u, v, u^2, uv, v^2 (up to POLYDEG)"
        data = psf.arrays
    elif isinstance(psf, GriddedPSF):
        hdr["PSFTYPE"] = "GRID"
        a = psf.arrays
        data = a.reshape(-1, *a.shape[2:])
        i = 0
        for yv in psf.grid_y:
            for xv in psf.grid_x:
                # photutils reads the first number of DET_YX as x (see module docstring)
                hdr[f"DET_YX{i}"] = (f"({xv:.3f}, {yv:.3f})", "(x, y) 0-based pixels")
                i += 1
        hdr["NXPSFS"], hdr["NYPSFS"] = len(psf.grid_x), len(psf.grid_y)
        if psf.norm != 1.0:
            # the planes keep their sums: each plane's sum / convention is its node's norm
            hdr["NODENORM"] = (True, "plane sum / convention = flux fraction (norm)")
        if psf.extrapolate:
            hdr["EXTRAPOL"] = (True, "linear extrapolation beyond the outermost nodes")
    else:
        raise ValueError(f"cannot write a {type(psf).__name__} to FITS")
    fits.PrimaryHDU(np.asarray(data, np.float64), header=hdr).writeto(path, overwrite=overwrite)


def read_psf_fits(path, oversampling: int | None = None, kernel: str | None = None):
    """Read a PSF from :func:`write_psf_fits`, a photutils/WebbPSF gridded PSF or a plain image.

    Parameters
    ----------
    path : str or Path
        FITS file.
    oversampling : int, optional
        Overrides the header's ``OVERSAMP`` (required when the file has none and is oversampled).
    kernel : str, optional
        Overrides the header's ``KERNEL`` (default ``"bspline3"``).

    Returns
    -------
    DiscretePSF, PolynomialPSF or GriddedPSF
        A file with ``DET_YX*`` cards is a :class:`GriddedPSF`; ``PSFTYPE = 'POLY'`` a
        :class:`PolynomialPSF`; a 2-D image a :class:`~jaxphot.psf.DiscretePSF`. Files without
        ``INTEGRAT`` are taken to hold ePSFs (integrated), which is what photutils and
        WebbPSF grids are.
    """
    from astropy.io import fits

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path) as hdul:
                data = np.asarray(hdul[0].data, np.float64)
                hdr = hdul[0].header.copy()
    except (OSError, KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"cannot read a PSF from {str(path)!r}: {exc}") from exc
    s = int(oversampling or hdr.get("OVERSAMP", 1))
    kern = kernel or hdr.get("KERNEL", "bspline3")
    integ = bool(hdr.get("INTEGRAT", True))
    norm = float(hdr.get("PSFNORM", 1.0))
    ptype = str(hdr.get("PSFTYPE", "")).upper()
    det = [k for k in hdr if k.startswith("DET_YX")]
    if det or ptype == "GRID":
        if not det:
            raise ValueError(f"{path}: PSFTYPE='GRID' but no DET_YX* position cards")
        det.sort(key=lambda k: int(k[6:]))
        xy = []
        for k in det:
            vals = str(hdr[k]).strip().lstrip("(").rstrip(")").split(",")
            xy.append((float(vals[0]), float(vals[1])))
        return _grid_from_points(
            np.atleast_3d(data) if data.ndim == 2 else data,
            np.array(xy),
            s,
            integ,
            kern,
            str(path),
            node_norm=bool(hdr.get("NODENORM", False)),
            extrapolate=bool(hdr.get("EXTRAPOL", False)),
        )
    if ptype == "POLY":
        return PolynomialPSF(
            data,
            s,
            int(hdr["POLYDEG"]),
            (hdr["POLYX0"], hdr["POLYY0"]),
            (hdr["POLYSX"], hdr["POLYSY"]),
            integrated=integ,
            kernel=kern,
            norm=norm,
        )
    if data.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D PSF image, got shape {data.shape}")
    if norm == 1.0:
        return DiscretePSF(data, s, integrated=integ, kernel=kern)
    a = data * ((s * s if integ else 1.0) * norm / data.sum())
    return DiscretePSF(a, s, integrated=integ, kernel=kern, normalize=False)


def _grid_from_points(data, xy, s, integrated, kernel, name, node_norm=False, extrapolate=False):
    """GriddedPSF from a stack (N, ny, nx) and arbitrary-order node positions (N, 2).

    With ``node_norm`` each plane's sum relative to the convention is its node's ``norm``.
    """
    if data.ndim != 3 or data.shape[0] != len(xy):
        raise ValueError(f"{name}: {len(xy)} grid positions but data of shape {data.shape}")
    gx, gy = np.unique(xy[:, 0]), np.unique(xy[:, 1])
    if gx.size * gy.size != len(xy):
        raise ValueError(f"{name}: the {len(xy)} PSF positions do not form a rectangular grid")
    ix, iy = np.searchsorted(gx, xy[:, 0]), np.searchsorted(gy, xy[:, 1])
    arr = np.zeros((gy.size, gx.size) + data.shape[1:])
    arr[iy, ix] = data
    norm = arr.sum(axis=(2, 3)) / (s * s if integrated else 1.0) if node_norm else 1.0
    return GriddedPSF(
        arr, gx, gy, s, integrated=integrated, kernel=kernel, norm=norm, extrapolate=extrapolate
    )


# ----------------------------------------------------------------------------------------------
# HST WFC3/UVIS library PSFs


def wfc3_uvis_grid_positions(detector: str = "both") -> tuple[np.ndarray, np.ndarray]:
    """Assumed detector positions (0-based pixels) of the 7 x 8 WFC3/UVIS library PSF grid.

    STScI's WFC3/UVIS "STDPSF" library (Anderson) holds 56 = 7 x 8 PSFs: 7 columns across the
    4096 pixels of x and 4 rows on each of the two 4096 x 2051 chips (8 rows in all), stored
    row-major with x fastest, the rows of UVIS2 ([sci,1], bottom) first, then UVIS1 ([sci,2]) on
    top. This is the layout photutils' ``stdpsf_reader`` decodes from the ``IPSFXnn``/``JPSFYnn``
    header cards. Those cards are not in the numpy repackaging we read, so we *assume* nodes evenly
    spaced from edge to edge: x = 0, 682.5, ..., 4095 and, on each chip, y = 0, 683.3, ..., 2050
    (UVIS1 rows offset by 2051 in the stacked frame). With ``detector="both"`` the y values are in
    the stacked 4096 x 4102 frame; ``"uvis2"``/``"uvis1"`` give one chip's own frame.

    Returns
    -------
    grid_x : (7,) array
    grid_y : (8,) array for "both", else (4,)
    """
    gx = np.linspace(0.0, 4095.0, 7)
    chip = np.linspace(0.0, 2050.0, 4)
    if detector == "both":
        return gx, np.concatenate([chip, chip + 2051.0])
    if detector in ("uvis1", "uvis2"):
        return gx, chip
    raise ValueError(f"detector must be 'both', 'uvis1' or 'uvis2', got {detector!r}")


def read_wfc3_uvis_grid(
    path,
    detector: str = "both",
    kernel: str = "bspline3",
    *,
    corrupt: str = "drop",
    floor_frac: float = 0.01,
) -> GriddedPSF:
    """Read the HST WFC3/UVIS F814W library PSF grid (``emp_psf_f814w_4x.npy`` or a FITS cube).

    The cube is (56, 101, 101): 4x oversampled ePSFs (101 samples = 25 pixels) at the positions of
    :func:`wfc3_uvis_grid_positions`. The repackaged file had each PSF's minimum subtracted and
    arbitrary sums, so every PSF is renormalised to sum s^2 = 16 here. Negative samples (none are
    expected after the minimum subtraction) are kept.

    Some PSFs of the repackaged ``emp_psf_f814w_4x.npy`` are corrupt: the 14 of the two middle
    grid rows (the chips' inner edges) and the 8 of the last column (x = 4095) carry a flat floor
    of ~0.37 x their peak (sums ~1030 instead of ~17.5), which renormalisation would turn into a
    PSF with 98 % of its light in a pedestal. A node is corrupt when the median of its outermost
    1-pixel rim exceeds ``floor_frac`` times its peak (good nodes: ~3e-4). A grid must stay
    rectangular, so whole grid rows or columns are dropped, the one with the most corrupt nodes
    first, until none is left (for this file: rows y = 2050, 2051 and column x = 4095, leaving
    6 x 6 nodes for ``"both"``, 3 x 6 for one chip), with a :class:`PSFGridWarning`; beyond the
    remaining nodes the PSF is held constant (see :class:`GriddedPSF`).

    Parameters
    ----------
    path : str or Path
        ``.npy`` (numpy) or ``.fits`` file holding the (56, ny, nx) cube.
    detector : {"both", "uvis2", "uvis1"}
        The whole two-chip grid (8 rows, stacked frame) or one chip (its 4 rows, own frame).
    kernel : str
        Interpolation kernel.
    corrupt : {"drop", "raise"}
        What to do with corrupt nodes: drop them (grid rows/columns, with a warning) or raise a
        ValueError naming them.
    floor_frac : float
        Rim-median-to-peak ratio above which a node is corrupt.

    Raises
    ------
    ValueError
        A cube of the wrong shape, corrupt nodes with ``corrupt="raise"``, or no valid node left.
    """
    path = Path(path)
    if path.suffix == ".npy":
        data = np.load(path)
    else:
        from astropy.io import fits

        data = fits.getdata(path)
    data = np.asarray(data, np.float64)
    if data.ndim != 3 or data.shape[0] != 56:
        raise ValueError(f"{path}: expected a (56, ny, nx) WFC3/UVIS PSF cube, got {data.shape}")
    if corrupt not in ("drop", "raise"):
        raise ValueError(f"corrupt must be 'drop' or 'raise', got {corrupt!r}")
    gx, gy = wfc3_uvis_grid_positions(detector)
    rows = data.reshape(8, 7, *data.shape[1:])
    if detector == "uvis2":
        rows = rows[:4]
    elif detector == "uvis1":
        rows = rows[4:]
    bad = _floored_nodes(rows, floor_frac)
    if bad.any():
        where = ", ".join(f"({gx[i]:.0f}, {gy[j]:.0f})" for j, i in zip(*np.nonzero(bad), strict=True))
        if corrupt == "raise":
            raise ValueError(f"{path}: {int(bad.sum())} corrupt PSFs (flat floor) at (x, y) = {where}")
        keep_r, keep_c = np.ones(bad.shape[0], bool), np.ones(bad.shape[1], bool)
        while (b := bad[np.ix_(keep_r, keep_c)]).any():
            # drop the grid row or column holding the most corrupt nodes (rows on a tie)
            nr, nc = b.sum(1), b.sum(0)
            if nr.max() >= nc.max():
                keep_r[np.nonzero(keep_r)[0][np.argmax(nr)]] = False
            else:
                keep_c[np.nonzero(keep_c)[0][np.argmax(nc)]] = False
        if not (keep_r.any() and keep_c.any()):
            raise ValueError(f"{path}: no valid PSF left after dropping the corrupt ones")
        warnings.warn(
            f"{path.name}: {int(bad.sum())} corrupt PSFs (flat floor > {floor_frac:g} x peak) at "
            f"(x, y) = {where}; dropped grid rows y = {_fmt(np.asarray(gy)[~keep_r])} and columns "
            f"x = {_fmt(np.asarray(gx)[~keep_c])}, leaving {keep_r.sum()} x {keep_c.sum()} nodes",
            PSFGridWarning,
            stacklevel=2,
        )
        rows, gx, gy = rows[np.ix_(keep_r, keep_c)], np.asarray(gx)[keep_c], np.asarray(gy)[keep_r]
    return GriddedPSF(rows, gx, gy, oversampling=4, integrated=True, kernel=kernel)


def _fmt(v) -> str:
    return "[" + ", ".join(f"{a:.0f}" for a in v) + "]"


def _floored_nodes(rows: np.ndarray, floor_frac: float) -> np.ndarray:
    """(ny, nx) bool: nodes whose outermost 1-pixel rim median exceeds ``floor_frac`` x peak."""
    k = 4  # samples per pixel of the library
    rim = np.zeros(rows.shape[-2:], bool)
    rim[:k], rim[-k:], rim[:, :k], rim[:, -k:] = True, True, True, True
    med = np.median(rows[..., rim], axis=-1)
    return ~(med <= floor_frac * rows.max(axis=(-2, -1)))


def _poly_scale(shape) -> tuple[tuple[float, float], tuple[float, float]]:
    """Default (center, scale) of a polynomial PSF for an image of ``shape`` (H, W)."""
    h, w = shape
    return ((w - 1) / 2.0, (h - 1) / 2.0), (max((w - 1) / 2.0, 1.0), max((h - 1) / 2.0, 1.0))
