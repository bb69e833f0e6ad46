"""The matrix PSF: a (supersampled) PSF or ePSF shifted by separable interpolation."""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ..core.pytree import pytree, static
from ..io import read_image
from .base import HIGHEST, axis_derivatives, dtype_of, separable_derivatives, trail
from .kernels import KERNELS, kernel_weights, spline_coefficients, spline_samples

__all__ = ["DiscretePSF", "interpolation_matrix", "integrated_card", "check_sampling"]


def check_sampling(kernel: str, oversampling) -> int:
    """``oversampling`` as an int, after checking it and the interpolation ``kernel``'s name."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {sorted(KERNELS)}, got {kernel!r}")
    s = int(oversampling)
    if s < 1 or s != oversampling:
        raise ValueError(f"oversampling must be a positive integer, got {oversampling!r}")
    return s


def integrated_card(header, default: bool) -> bool:
    """Whether a PSF file's samples are an ePSF: its ``INTEGRAT`` (or ``EPSF``) card, else ``default``."""
    for key in ("INTEGRAT", "EPSF"):
        if key in header:
            return bool(header[key])
    return default


def interpolation_matrix(kernel: str, oversampling: int, integrated: bool,
                         x0: Float[ArrayLike, " *batch"], n_pix: int, n_arr: int,
                         dtype) -> Float[Array, " n_pix n_arr *batch"]:
    """Weights mapping the samples of a discrete PSF to detector pixels along one axis.

    Returns (n_pix, n_arr) + x0.shape: entry ``[i, m]`` is the weight of array sample ``m`` in
    detector pixel ``i`` for a star at ``x0`` — the kernel weights at the pixel centre
    (``integrated=True``) or summed over the pixel's ``oversampling`` sub-pixel centres.
    """
    s = oversampling
    nb = jnp.ndim(x0)
    centre = (n_arr - 1) / 2.0
    pix = jnp.arange(n_pix, dtype=dtype)
    if integrated:
        u = pix[:, None]  # sample the PRF at the pixel centre
    else:
        sub = (jnp.arange(s, dtype=dtype) + 0.5) / s - 0.5
        u = pix[:, None] + sub[None, :]  # the s sub-pixel centres in each pixel
    tau = s * (trail(u, nb) - x0)  # (n_pix, n_sub, ...): fractional array index - centre
    m = trail(jnp.arange(n_arr, dtype=dtype) - centre, nb)
    t = tau[:, :, None] - m[None, None]  # (n_pix, n_sub, n_arr, ...)
    return kernel_weights(kernel, t, axis=2).sum(axis=1)


@pytree
class DiscretePSF:
    """A PSF given as a matrix, possibly supersampled, shifted by separable interpolation.

    Parameters
    ----------
    array : (ny, nx) array
        The PSF samples. Its origin (the star's position) is the geometric centre of the array,
        ``((nx-1)/2, (ny-1)/2)`` in array index units.
    oversampling : int
        Samples per detector pixel along each axis (s).
    integrated : bool
        ``False`` (MATPHOT): ``array`` samples the PSF at sub-pixel centres and is normalised to
        unit sum. The shifted array is summed over each s x s block to give a detector pixel.
        ``True`` (ePSF, Anderson & King): ``array`` samples the PRF; it is normalised to sum s^2,
        and a detector pixel's value is the interpolated PRF at the pixel centre.
    kernel : {"bspline3", "keys", "sinc"}
        Interpolation kernel (:mod:`jaxphot.kernels`). ``"sinc"`` is MATPHOT's 21-tap damped sinc.
    normalize : bool
        Rescale ``array`` to the sum required by its convention (default True).

    Notes
    -----
    Evaluation never builds a shifted sub-pixel image. Interpolation and the block sum are both
    separable, so for a star at (x, y) the PRF is ``Ry @ C @ Rx.T`` where ``Rx[i, m]`` sums the
    kernel weights of array column ``m`` over the s sub-pixels of detector column ``i``. The
    position derivatives come from differentiating the kernel (autodiff), not finite differences.
    """

    coeffs: Float[Array, " ny nx"]
    oversampling: int = static()
    integrated: bool = static()
    kernel: str = static()

    def __init__(
        self, array, oversampling: int = 1, integrated: bool = False, kernel: str = "bspline3",
        normalize: bool = True,
    ):
        a = np.asarray(array, dtype=np.float64)
        if a.ndim != 2 or min(a.shape) < 3:
            raise ValueError(f"array must be a 2-D PSF matrix of at least 3x3, got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError("array (the PSF) contains non-finite values")
        s = check_sampling(kernel, oversampling)
        total = a.sum()
        if not total > 0:
            raise ValueError("array (the PSF) must have a positive sum")
        if normalize:
            a = a * ((s * s if integrated else 1.0) / total)
        self.coeffs = jnp.asarray(spline_coefficients(a, kernel), dtype=jnp.float32)
        self.oversampling = s
        self.integrated = bool(integrated)
        self.kernel = kernel

    @classmethod
    def from_header(cls, data: Float[np.ndarray, " ny nx"], header, *,
                    oversampling: int | None = None, integrated: bool | None = None,
                    kernel: str | None = None) -> DiscretePSF:
        """A DiscretePSF from a 2-D sample array and its FITS header.

        ``oversampling`` defaults to ``OVERSAMP`` (1 when absent); ``integrated`` to
        ``INTEGRAT`` or ``EPSF`` (False when both are absent: an image of the PSF itself, the
        MATPHOT convention); ``kernel`` to ``KERNEL`` (``"bspline3"``). ``PSFNORM``, when
        present, is the samples' sum relative to the convention (an aperture-corrected ePSF)
        and is kept.
        """
        data = np.asarray(data, np.float64)
        s = int(oversampling or header.get("OVERSAMP", 1))
        integ = integrated_card(header, default=False) if integrated is None else bool(integrated)
        kern = kernel or header.get("KERNEL", "bspline3")
        norm = float(header.get("PSFNORM", 1.0))
        if norm == 1.0:
            return cls(data, s, integrated=integ, kernel=kern)
        a = data * ((s * s if integ else 1.0) * norm / data.sum())
        return cls(a, s, integrated=integ, kernel=kern, normalize=False)

    @classmethod
    def from_fits(cls, path, oversampling: int | None = None, hdu: int | str = 0,
                  **kwargs) -> DiscretePSF:
        """Read a PSF image from a FITS file (header keywords as in :meth:`from_header`).

        ``kwargs`` (``integrated``, ``kernel``) override the header. Spatially varying PSF
        files need :func:`jaxphot.psf.read_psf_fits`, which reads every kind.
        """
        try:
            img = read_image(path, hdu, what="PSF")
        except ValueError as exc:
            raise ValueError(f"cannot read PSF from {str(path)!r}: {exc}") from None
        return cls.from_header(img.data, img.header, oversampling=oversampling, **kwargs)

    @property
    def array(self) -> Float[np.ndarray, " ny nx"]:
        """The PSF samples (inverting the spline prefilter when needed), as float64 numpy."""
        return spline_samples(np.asarray(self.coeffs, dtype=np.float64), self.kernel)

    def evaluate(self, x: Float[ArrayLike, " *batch"], y: Float[ArrayLike, " *batch"],
                 shape: tuple[int, int]) -> Float[Array, " H W *batch"]:
        """Pixel-integrated PRF of unit-flux stars at (x, y) on an (H, W) grid: (H, W) + x.shape."""
        return self.evaluate_derivatives(x, y, shape, order=0)[0]

    def evaluate_derivatives(
        self, x: Float[ArrayLike, " *batch"], y: Float[ArrayLike, " *batch"],
        shape: tuple[int, int], order: int = 1,
    ) -> tuple[Float[Array, " H W *batch"], ...]:
        """PRF and its derivatives in the star position (see :func:`jaxphot.core.scene.linearize`).

        With ``Rx, Rx', Rx''`` the interpolation matrix and its derivatives (autodiff of the
        kernel), every image is ``Ry^(i) @ C @ Rx^(j)T``: three large matmuls ``C @ Rx^(j)T``
        shared by all stars, then small per-star contractions.
        """
        dtype = dtype_of(x, y)
        x, y = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
        c = self.coeffs.astype(dtype)
        matrix = functools.partial(interpolation_matrix, self.kernel, self.oversampling, self.integrated)

        def rx(a):
            return matrix(a, shape[1], c.shape[1], dtype)  # (W, nx, ...)

        def ry(b):
            return matrix(b, shape[0], c.shape[0], dtype)  # (H, ny, ...)

        if order == 0:
            ax, ay = (rx(x),), (ry(y),)
        else:
            ax, ay = axis_derivatives(rx, x, order), axis_derivatives(ry, y, order)
        # C @ Rx^T is one large matmul over all stars: (ny, W, ...).
        ct = [jnp.tensordot(c, a, axes=([1], [1]), precision=HIGHEST) for a in ax]

        def combine(ryk, j):
            # Per-star contraction over the array rows: a batched matmul, no big intermediate.
            return jnp.einsum("am...,mb...->ab...", ryk, ct[j], precision=HIGHEST)

        if order == 0:
            return (combine(ay[0], 0),)
        return separable_derivatives(range(len(ax)), ay, lambda yk, j: combine(yk, j), order)

    def scaled(self, factor: int) -> DiscretePSF:
        """The same PSF in units of 1/factor pixel; ``oversampling`` must be divisible by it.

        Only for ``integrated=False`` (a PSF, not a PRF: a PRF cannot be re-pixelated).
        """
        if self.integrated:
            raise ValueError("an integrated (ePSF) DiscretePSF cannot be rescaled to sub-pixels")
        if self.oversampling % factor:
            raise ValueError(
                f"oversampling {self.oversampling} is not divisible by the factor {factor}"
            )
        return self.replace(oversampling=self.oversampling // factor)

    def __repr__(self):
        return (
            f"DiscretePSF(shape={tuple(self.coeffs.shape)}, oversampling={self.oversampling}, "
            f"integrated={self.integrated}, kernel={self.kernel!r})"
        )

