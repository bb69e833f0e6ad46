"""Detector response: PRF = PSF (photons above the detector) convolved with the detector response.

:class:`DetectorPRF` wraps any PSF model and multiplies it by a detector response made of

* a **volume** (overall quantum efficiency, 0 < V <= 1), and
* an optional **intrapixel sensitivity map** ``S`` of shape (s, s): the quantum efficiency of each
  of the s x s sub-pixels of every detector pixel (row 0 is the bottom sub-row, ``y = j - 1/2 +
  1/(2s)``; column 0 is the left sub-column).

The pixel value of a unit-intensity star at (x, y) is::

    PRF[j, i] = V * sum_{b, a} S[b, a] * integral of the PSF over sub-pixel (b, a) of pixel (j, i)

The sub-pixel integrals come from ``psf.scaled(s)`` evaluated on the (s*H, s*W) sub-pixel grid, then
summed back to detector pixels: no sub-pixel image survives the function (the Jacobian that
:func:`jaxphot.scene.linearize` builds is still per detector pixel).

Because the response is part of the model, **fluxes fitted with a DetectorPRF are the measured
intensities: photons above the detector**, not the observed electrons. The observed electrons of a
star are ``flux * PRF.sum()``, which depends on where the star falls inside its pixel when the
sensitivity map is not flat (MATPHOT's "ugly detector" loses 40-47 % of the light).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ..core.pytree import pytree
from ..core.scene import PSFModel

__all__ = ["DetectorPRF", "ugly_detector_sensitivity"]


def ugly_detector_sensitivity(s: int = 4) -> Float[np.ndarray, " s s"]:
    """MATPHOT's "ugly detector" (Mighell 2005, section 5.4): s x s sub-pixels whose first row and
    first column are dead gate structures (QE 0) and the rest have QE 1. For s = 4, 9/16 of the
    pixel is active (V = 0.5625 for a broad PSF).

    Returns
    -------
    (s, s) float64 array
    """
    sens = np.ones((s, s))
    sens[0, :] = 0.0
    sens[:, 0] = 0.0
    return sens


@pytree
class DetectorPRF:
    """A PSF seen through a detector with a quantum efficiency and an intrapixel sensitivity map.

    Parameters
    ----------
    psf : PSF model
        Any model with ``evaluate(x, y, shape)`` (batch axes last) describing photons above the
        detector. When ``sensitivity`` is given it must also have ``scaled(s)`` (analytic PSFs
        and ``DiscretePSF(..., integrated=False)`` whose oversampling is divisible by ``s``).
    volume : float
        Overall quantum efficiency, multiplying the sensitivity map (dimensionless, > 0).
    sensitivity : (s, s) array, optional
        Quantum efficiency of each sub-pixel (dimensionless, >= 0). None: flat response.

    Notes
    -----
    Fluxes fitted with this model are photons above the detector (the *measured* intensity in
    MATPHOT's terms). The PRF volume (``prf.sum()`` over an infinite grid) is
    ``volume * mean(sensitivity)`` for a broad PSF and depends on the sub-pixel phase otherwise.
    """

    psf: PSFModel
    volume: Float[Array, ""]
    sensitivity: Float[Array, " s s"] | None

    def __init__(self, psf, volume: float = 1.0, sensitivity=None):
        v = float(volume)
        if not (np.isfinite(v) and v > 0):
            raise ValueError(f"volume must be a positive quantum efficiency, got {volume!r}")
        sens = None
        if sensitivity is not None:
            sens = np.asarray(sensitivity, np.float64)
            if sens.ndim != 2 or sens.shape[0] != sens.shape[1] or sens.shape[0] < 1:
                raise ValueError(f"sensitivity must be a square (s, s) map, got {sens.shape}")
            if not np.all(np.isfinite(sens)) or np.any(sens < 0):
                raise ValueError("sensitivity must be finite and non-negative")
            if not hasattr(psf, "scaled"):
                raise ValueError("an intrapixel sensitivity map needs a PSF with scaled(s)")
            sens = jnp.asarray(sens, jnp.float32)
        self.psf = psf
        self.volume = v
        self.sensitivity = sens

    @property
    def subsampling(self) -> int:
        """Sub-pixels per pixel axis of the sensitivity map (1 when flat)."""
        return 1 if self.sensitivity is None else int(self.sensitivity.shape[0])

    def _fine(self, x: ArrayLike, y: ArrayLike, shape: tuple[int, int]):
        """Star positions and grid shape on the (sH, sW) sub-pixel grid of ``psf.scaled(s)``.

        Sub-pixel (J, I) of the fine grid is centred at fine coordinate (I, J); detector pixel i
        spans fine columns s*i .. s*i+s-1, whose centre is s*i + (s-1)/2.
        """
        s = self.subsampling
        x, y = jnp.asarray(x), jnp.asarray(y)
        return s * x + (s - 1) / 2.0, s * y + (s - 1) / 2.0, (s * shape[0], s * shape[1])

    def _to_pixels(self, fine: Float[Array, " sH sW *batch"],
                   shape: tuple[int, int]) -> Float[Array, " H W *batch"]:
        """Sub-pixel values summed to detector pixels, weighted by the sensitivity map."""
        s = self.subsampling
        h, w = shape
        nb = fine.ndim - 2
        fine = fine.reshape((h, s, w, s) + fine.shape[2:])
        sens = self.sensitivity.astype(fine.dtype).reshape((1, s, 1, s) + (1,) * nb)
        return jnp.sum(fine * sens, axis=(1, 3))

    def evaluate(self, x: Float[ArrayLike, " *batch"], y: Float[ArrayLike, " *batch"],
                 shape: tuple[int, int]) -> Float[Array, " H W *batch"]:
        """PRF of one-photon stars at (x, y) on an (H, W) grid: (H, W) + x.shape."""
        if self.sensitivity is None:
            return self.volume * self.psf.evaluate(x, y, shape)
        fine = self.psf.scaled(self.subsampling).evaluate(*self._fine(x, y, shape))  # (sH, sW, ...)
        return self.volume * self._to_pixels(fine, shape)

    def evaluate_derivatives(
        self, x: Float[ArrayLike, " *batch"], y: Float[ArrayLike, " *batch"],
        shape: tuple[int, int], order: int = 1,
    ) -> tuple[Float[Array, " H W *batch"], ...] | None:
        """PRF and its position derivatives (see :func:`jaxphot.core.scene.linearize`), or None.

        Forwards to the wrapped PSF's fast separable derivatives when it has them: the detector
        response is linear (a volume, and a weighted sum of sub-pixels), so it commutes with
        differentiation. On the sub-pixel grid the coordinates are ``s*x + (s-1)/2``, so every
        first derivative gains a factor s and every second derivative s^2 (chain rule).
        Returns None (generic autodiff) when the PSF has no such method or declines.
        """
        s = self.subsampling
        if s == 1:
            fast = getattr(self.psf, "evaluate_derivatives", None)
            out = None if fast is None else fast(x, y, shape, order)
            return None if out is None else tuple(self.volume * a for a in out)
        fast = getattr(self.psf.scaled(s), "evaluate_derivatives", None)
        out = None if fast is None else fast(*self._fine(x, y, shape), order)
        if out is None:
            return None
        factors = (1.0, s, s) + ((s * s,) * 3 if order == 2 else ())
        return tuple(self.volume * f * self._to_pixels(a, shape)
                     for f, a in zip(factors, out, strict=True))

    def __repr__(self):
        return (
            f"DetectorPRF({self.psf!r}, volume={self.volume}, "
            f"sensitivity={None if self.sensitivity is None else self.sensitivity.shape})"
        )
