"""Spatially varying PSFs: polynomial and gridded (e)PSFs.

A spatially varying PSF is an immutable pytree with a method ``at(x, y)`` that takes image
coordinates ``x, y`` (arrays (N,), pixels, pixel ``[j, i]`` centred at ``(i, j)``) and returns a
:class:`BatchedDiscretePSF`: N discrete PSFs stacked along a *trailing* batch axis of their
coefficient array, with ``batch_size = N``. Its ``evaluate(x, y, shape)`` takes star positions whose
last axis is that batch axis (e.g. (K, N) for K stars in each of N cutouts) and uses the n-th PSF
for column n; with (ny, nx, K, N) coefficients (:meth:`BatchedDiscretePSF.per_member`) every
star k of cutout n has a PSF of its own, as the members of a blend do. This is the hook
:func:`jaxphot.fit.fit_cutouts` calls (with ``origin``), so every
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

Every PSF returned by ``at`` is renormalised exactly to the package's convention
(docs/conventions.md: the samples sum to s^2 for an integrated ePSF, 1 for a MATPHOT PSF), so a
polynomial or an interpolation never changes a star's flux scale.

FITS I/O is :mod:`jaxphot.psf.fits`; the HST WFC3/UVIS grid reader :mod:`jaxphot.psf.instruments`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ..core.pytree import pytree, static
from .base import HIGHEST
from .discrete import DiscretePSF, check_sampling, interpolation_matrix
from .kernels import spline_coefficients, spline_samples

__all__ = [
    "BatchedDiscretePSF",
    "PolynomialPSF",
    "GriddedPSF",
    "poly_terms",
    "poly_scale",
    "sample_sum_weights",
    "PSFGridWarning",
]


class PSFGridWarning(UserWarning):
    """A PSF grid file with corrupt nodes that were dropped."""


def poly_terms(degree: int) -> tuple[tuple[int, int], ...]:
    """Exponents ``(a, b)`` of the monomials ``u^a v^b`` with ``a + b <= degree``."""
    if degree not in (0, 1, 2):
        raise ValueError(f"degree must be 0, 1 or 2, got {degree!r}")
    return tuple((d - b, b) for d in range(degree + 1) for b in range(d + 1))


def _monomials(u: Float[Array, " N"], v: Float[Array, " N"], degree: int) -> Float[Array, " T N"]:
    """(T,) + u.shape array of the monomials of :func:`poly_terms`."""
    return jnp.stack([u**a * v**b for a, b in poly_terms(degree)])


def sample_sum_weights(n: int, kernel: str) -> Float[np.ndarray, " n"]:
    """(n,) weights e with ``sum(samples) = e_y^T C e_x`` for coefficient array C along one axis.

    For the cubic B-spline a sample is ``(c[m-1] + 4 c[m] + c[m+1]) / 6`` with zero coefficients
    beyond the edges, so the two edge coefficients count 5/6; other kernels store samples.
    """
    e = np.ones(n)
    if kernel == "bspline3":
        e[0] = e[-1] = 5.0 / 6.0
    return e


@pytree
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

    coeffs: Float[Array, " ny nx *K N"]
    oversampling: int = static()
    integrated: bool = static()
    kernel: str = static()
    batch_size: int = static()

    def __init__(self, coeffs, oversampling: int, integrated: bool = True, kernel="bspline3"):
        c = jnp.asarray(coeffs)
        if c.ndim not in (3, 4):
            raise ValueError(f"coeffs must have shape (ny, nx, N) or (ny, nx, K, N), got {c.shape}")
        self.coeffs = c
        self.oversampling = check_sampling(kernel, oversampling)
        self.integrated = bool(integrated)
        self.kernel = kernel
        self.batch_size = int(c.shape[-1])

    def per_member(self, k: int) -> BatchedDiscretePSF:
        """Regroup K*N PSFs (member-major: index k*N + n) as (ny, nx, K, N): one per star of
        each of N cutouts, so that every member of a blend has its own PSF."""
        c = self.coeffs
        if c.ndim != 3 or c.shape[-1] % k:
            raise ValueError(f"cannot regroup {c.shape} coefficients into {k} members")
        c = c.reshape(c.shape[:2] + (k, c.shape[-1] // k))
        return BatchedDiscretePSF(c, self.oversampling, self.integrated, self.kernel)

    def evaluate(self, x: Float[ArrayLike, " *lead N"], y: Float[ArrayLike, " *lead N"],
                 shape: tuple[int, int]) -> Float[Array, " H W *lead N"]:
        """PRF of unit-flux stars at (x, y): (H, W) + x.shape; x's last axis indexes the PSFs.

        With (ny, nx, K, N) coefficients, x must be (K, N): star k of cutout n has its own PSF.
        """
        dtype = jnp.result_type(x, y, float)
        x, y = jnp.broadcast_arrays(jnp.asarray(x, dtype), jnp.asarray(y, dtype))
        if x.ndim == 0 or x.shape[-1] != self.coeffs.shape[-1]:
            raise ValueError(
                f"the last axis of x ({x.shape}) must index the {self.coeffs.shape[-1]} PSFs"
            )
        per_star = self.coeffs.ndim == 4
        if per_star and x.shape != self.coeffs.shape[2:]:
            raise ValueError(f"x must have shape {self.coeffs.shape[2:]} (K, N) for per-star PSFs, "
                             f"got {x.shape}")
        lead = x.shape[:-1]
        n = x.shape[-1]
        x2, y2 = x.reshape(-1, n), y.reshape(-1, n)  # (K, N)
        c = self.coeffs.astype(dtype)
        matrix = functools.partial(interpolation_matrix, self.kernel, self.oversampling, self.integrated)
        rx = matrix(x2, shape[1], c.shape[1], dtype)  # (W, nx, K, N)
        ry = matrix(y2, shape[0], c.shape[0], dtype)  # (H, ny, K, N)
        t = jnp.einsum("abkn,wbkn->awkn" if per_star else "abn,wbkn->awkn", c, rx,
                       precision=HIGHEST)
        out = jnp.einsum("hakn,awkn->hwkn", ry, t, precision=HIGHEST)
        return out.reshape(tuple(shape) + lead + (n,))

    def __repr__(self):
        return (
            f"BatchedDiscretePSF(shape={tuple(self.coeffs.shape[:2])}, N={self.batch_size}, "
            f"oversampling={self.oversampling}, integrated={self.integrated})"
        )


def _normalised_batch(c: Float[Array, " ny nx N"], oversampling: int, integrated: bool, kernel: str,
                      norm: float | Float[Array, " N"] = 1.0) -> BatchedDiscretePSF:
    """Rescale coefficients (ny, nx, N) so that every PSF's samples sum to ``norm`` s^2 (or 1)."""
    ey = jnp.asarray(sample_sum_weights(c.shape[0], kernel), c.dtype)
    ex = jnp.asarray(sample_sum_weights(c.shape[1], kernel), c.dtype)
    total = jnp.einsum("a,abn,b->n", ey, c, ex, precision=HIGHEST)
    target = (oversampling**2 if integrated else 1.0) * norm
    # A polynomial may in principle reach a non-positive sum far outside the fitted field; keep
    # the PSF finite there (it is flagged by the fit's chi2, not by a NaN).
    total = jnp.where(total > 0, total, 1.0)
    return BatchedDiscretePSF(c * (target / total), oversampling, integrated, kernel)


class _Varying:
    """What the spatially varying PSFs share: one PSF at a position from their ``at``."""

    def at(self, x, y) -> BatchedDiscretePSF:
        raise NotImplementedError

    def psf_at(self, x: float, y: float) -> DiscretePSF:
        """One :class:`~jaxphot.psf.DiscretePSF` for the image position (x, y)."""
        return _single(self.at(np.array([x]), np.array([y])))


@pytree
class PolynomialPSF(_Varying):
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

    coeffs: Float[Array, " T ny nx"]
    oversampling: int = static()
    integrated: bool = static()
    kernel: str = static()
    degree: int = static()
    center: tuple[float, float] = static()
    scale: tuple[float, float] = static()
    norm: float = static()

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
        s = check_sampling(kernel, oversampling)
        cx, cy = (float(v) for v in center)
        sx, sy = (float(v) for v in scale)
        if not (sx > 0 and sy > 0):
            raise ValueError(f"scale must be positive (pixels), got {scale!r}")
        if not (np.isfinite(norm) and norm > 0):
            raise ValueError(f"norm must be a positive number, got {norm!r}")
        self.coeffs = jnp.asarray(spline_coefficients(a, kernel), jnp.float32)
        self.oversampling = s
        self.integrated = bool(integrated)
        self.kernel = kernel
        self.degree = int(degree)
        self.center = (cx, cy)
        self.scale = (sx, sy)
        self.norm = float(norm)

    @property
    def arrays(self) -> Float[np.ndarray, " T ny nx"]:
        """(T, ny, nx) samples of each term (float64 numpy)."""
        return spline_samples(np.asarray(self.coeffs, np.float64), self.kernel)

    def at(self, x: Float[ArrayLike, " N"], y: Float[ArrayLike, " N"]) -> BatchedDiscretePSF:
        """The PSFs at image positions ``x, y`` (N,): a :class:`BatchedDiscretePSF` of N PSFs."""
        x, y = jnp.atleast_1d(jnp.asarray(x)), jnp.atleast_1d(jnp.asarray(y))
        u = (x - self.center[0]) / self.scale[0]
        v = (y - self.center[1]) / self.scale[1]
        p = _monomials(u, v, self.degree).astype(self.coeffs.dtype)  # (T, N)
        c = jnp.einsum("tab,tn->abn", self.coeffs, p, precision=HIGHEST)
        return _normalised_batch(c, self.oversampling, self.integrated, self.kernel, self.norm)

    def __repr__(self):
        return (
            f"PolynomialPSF(shape={tuple(self.coeffs.shape[1:])}, degree={self.degree}, "
            f"oversampling={self.oversampling}, center={self.center}, scale={self.scale})"
        )


def _grid_stack(arrays, gx: tuple[float, ...], gy: tuple[float, ...]) -> Float[np.ndarray, " gy gx ny nx"]:
    """The node PSFs as a (len(gy), len(gx), ny, nx) float64 array, after checking the grid."""
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
    return a


def _node_norms(norm, sums: Float[np.ndarray, " gy gx"]) -> Float[np.ndarray, " gy gx"]:
    """Each node's ``norm`` (scalar or per node), checked positive."""
    if not np.all(sums > 0):
        raise ValueError("every PSF of the grid must have a positive sum")
    nrm = np.broadcast_to(np.asarray(norm, np.float64), sums.shape)
    if not (np.all(np.isfinite(nrm)) and np.all(nrm > 0)):
        raise ValueError(f"norm must be positive, scalar or {sums.shape}, got {norm!r}")
    return nrm


def _grid_weights(p: Float[Array, " N"], grid: tuple[float, ...],
                  extrapolate: bool = False) -> Float[Array, " G N"]:
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


@pytree
class GriddedPSF(_Varying):
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

    coeffs: Float[Array, " gy gx ny nx"]
    oversampling: int = static()
    integrated: bool = static()
    kernel: str = static()
    grid_x: tuple[float, ...] = static()
    grid_y: tuple[float, ...] = static()
    norm: float | tuple[tuple[float, ...], ...] = static()
    extrapolate: bool = static()

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
        a = _grid_stack(arrays, gx, gy)
        s = check_sampling(kernel, oversampling)
        sums = a.sum(axis=(2, 3))
        nrm = _node_norms(norm, sums)
        a = a * ((s * s if integrated else 1.0) * nrm / sums)[:, :, None, None]
        self.coeffs = jnp.asarray(spline_coefficients(a, kernel), jnp.float32)
        self.oversampling = s
        self.integrated = bool(integrated)
        self.kernel = kernel
        self.grid_x = gx
        self.grid_y = gy
        self.extrapolate = bool(extrapolate)
        # a hashable static field: a float when uniform (the common case), else nested tuples
        uni = bool(np.all(nrm == nrm.flat[0]))
        self.norm = float(nrm.flat[0]) if uni else tuple(map(tuple, nrm.tolist()))

    @property
    def arrays(self) -> Float[np.ndarray, " gy gx ny nx"]:
        """(ny_grid, nx_grid, ny, nx) samples (float64 numpy); each sums to ``norm`` s^2 (or norm)."""
        return spline_samples(np.asarray(self.coeffs, np.float64), self.kernel)

    def at(self, x: Float[ArrayLike, " N"], y: Float[ArrayLike, " N"]) -> BatchedDiscretePSF:
        """The PSFs at image positions ``x, y`` (N,): a :class:`BatchedDiscretePSF` of N PSFs."""
        x = jnp.atleast_1d(jnp.asarray(x, jnp.float32))
        y = jnp.atleast_1d(jnp.asarray(y, jnp.float32))
        wx = _grid_weights(x, self.grid_x, self.extrapolate)
        wy = _grid_weights(y, self.grid_y, self.extrapolate)
        c = jnp.einsum("ijab,in,jn->abn", self.coeffs, wy, wx, precision=HIGHEST)
        if isinstance(self.norm, float):
            nrm = self.norm
        else:
            nrm = jnp.einsum("ij,in,jn->n", jnp.asarray(self.norm, c.dtype), wy, wx, precision=HIGHEST)
        return _normalised_batch(c, self.oversampling, self.integrated, self.kernel, nrm)

    def __repr__(self):
        return (
            f"GriddedPSF(grid={len(self.grid_y)}x{len(self.grid_x)}, "
            f"shape={tuple(self.coeffs.shape[2:])}, oversampling={self.oversampling})"
        )


def _single(batch: BatchedDiscretePSF) -> DiscretePSF:
    """The first PSF of a batch as a :class:`~jaxphot.psf.DiscretePSF`."""
    c = np.asarray(batch.coeffs[..., 0], np.float64)
    # the batch is already normalised (to ``norm`` s^2 for a PolynomialPSF): keep its sum
    return DiscretePSF(
        spline_samples(c, batch.kernel),
        batch.oversampling,
        integrated=batch.integrated,
        kernel=batch.kernel,
        normalize=False,
    )


def poly_scale(shape: tuple[int, int]) -> tuple[tuple[float, float], tuple[float, float]]:
    """Default (center, scale) of a polynomial PSF for an image of ``shape`` (H, W)."""
    h, w = shape
    return ((w - 1) / 2.0, (h - 1) / 2.0), (max((w - 1) / 2.0, 1.0), max((h - 1) / 2.0, 1.0))
