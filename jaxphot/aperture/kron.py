"""Kron ("automatic") elliptical-aperture photometry, photutils' ``kron_params`` semantics.

The Kron aperture of a source with moment ellipse (a, b, θ) and unscaled Kron radius ``r_K`` is the
ellipse of semi-axes ``k·r_K·a, k·r_K·b`` at angle θ, with ``k, r_min = kron_params[:2]`` and ``r_K``
raised to at least ``r_min`` (photutils' defaults (2.5, 1.4)). A third entry ``r_circ`` replaces the
ellipse by a circle of radius ``r_circ`` (px) where ``k·r_K·sqrt(a b) <= r_circ``.

This sits in the aperture layer because it sums with :func:`aperture_sums`; the moment-based parts
of a catalogue live in :mod:`jaxphot.morphology` (layer 0), whose :func:`segment_properties` takes this
function as its ``kron_photometry`` argument to add ``kron_flux`` and ``kron_flux_err``.
"""

from __future__ import annotations

import numpy as np

from .sums import aperture_sums

__all__ = ["kron_photometry", "kron_aperture"]


def kron_aperture(a, b, theta, kron_radius, kron_params=(2.5, 1.4)) -> dict[str, np.ndarray]:
    """Semi-axes and angle of the Kron apertures (photutils' ``kron_params`` rules).

    Parameters
    ----------
    a, b : array_like (N,)
        Moment (rms) semi-axes in px.
    theta : array_like (N,)
        Position angle (rad, counter-clockwise from +x).
    kron_radius : array_like (N,)
        Unscaled Kron radius, in units of (a, b) (:func:`jaxphot.morphology.kron_radius`).
    kron_params : (k, r_min) or (k, r_min, r_circ)
        Scale, minimum unscaled Kron radius, optional minimum circular radius (px).

    Returns
    -------
    dict
        ``a, b`` (px), ``theta`` (rad) of each aperture (NaN axes where the Kron radius is NaN or the
        moments are not finite) and ``circular`` (bool, the ``r_circ`` rule applied).
    """
    kp = tuple(float(v) for v in kron_params)
    if len(kp) not in (2, 3) or kp[0] <= 0 or kp[1] < 0:
        raise ValueError(f"kron_params must be (k > 0, r_min >= 0[, r_circ >= 0]); got {kron_params}")
    a, b, theta, kr = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (a, b, theta, kron_radius)))
    rk = np.maximum(kr, kp[1])  # NaN stays NaN
    ka, kb = kp[0] * rk * a, kp[0] * rk * b
    circ = np.zeros(a.shape, bool)
    if len(kp) == 3 and kp[2] > 0:
        with np.errstate(invalid="ignore"):
            circ = np.isfinite(ka) & (kp[0] * rk * np.sqrt(a * b) <= kp[2])
        ka = np.where(circ, kp[2], ka)
        kb = np.where(circ, kp[2], kb)
    return {"a": ka, "b": kb, "theta": np.where(circ, 0.0, theta), "circular": circ}


def kron_photometry(
    data,
    positions,
    a,
    b,
    theta,
    kron_radius,
    *,
    kron_params=(2.5, 1.4),
    error=None,
    mask=None,
    method: str = "exact",
    subpixels: int = 5,
) -> dict[str, np.ndarray]:
    """Fluxes in the Kron elliptical apertures of N sources, in one batched call.

    Parameters
    ----------
    data : array_like (H, W)
        Background-subtracted image (counts).
    positions : array_like (N, 2)
        ``(x, y)`` aperture centres (px).
    a, b, theta, kron_radius : array_like (N,)
        Moment ellipse (px, px, rad) and unscaled Kron radius, as from
        :func:`jaxphot.segment_properties`.
    kron_params : tuple
        See :func:`kron_aperture`.
    error : float or array_like (H, W), optional
        1-sigma error per pixel; ``kron_flux_err = sqrt(Σ w σ²)``.
    mask : array_like of bool (H, W), optional
        True = exclude the pixel (non-finite pixels are excluded too).
    method, subpixels
        Pixel overlap, as in :func:`aperture_sums`.

    Returns
    -------
    dict
        ``kron_flux``, ``kron_flux_err`` (NaN without ``error``), ``kron_a``, ``kron_b``,
        ``kron_theta`` (the aperture) and ``kron_area`` (px², usable pixels), arrays of shape (N,).
        Sources whose Kron radius is NaN get NaN.
    """
    d = np.asarray(data, dtype=float)
    if d.ndim != 2:
        raise ValueError(f"data must be a 2-D image; got shape {d.shape}")
    pos = np.asarray(positions, dtype=float).reshape(-1, 2)
    n = pos.shape[0]
    ap = kron_aperture(*(np.broadcast_to(np.asarray(v, float), (n,)) for v in (a, b, theta, kron_radius)),
                       kron_params=kron_params)  # fmt: skip
    good = np.isfinite(ap["a"]) & np.isfinite(ap["b"]) & np.all(np.isfinite(pos), axis=1)
    var = None
    if error is not None:
        e = np.asarray(error, dtype=float)
        if e.ndim not in (0, 2) or (e.ndim == 2 and e.shape != d.shape):
            raise ValueError(f"error must be a scalar or an image of shape {d.shape}; got {e.shape}")
        var = np.broadcast_to(e**2, d.shape)
    out = {k: np.full(n, np.nan) for k in ("kron_flux", "kron_flux_err", "kron_area")}
    out.update(kron_a=ap["a"], kron_b=ap["b"], kron_theta=ap["theta"])
    if good.any():
        s = aperture_sums(d, pos[good], "ellipse", (ap["a"][good], ap["b"][good], ap["theta"][good]),
                          method=method, subpixels=subpixels, mask=mask, variance=var)  # fmt: skip
        out["kron_flux"][good] = s["sum"][:, 0]
        out["kron_area"][good] = s["area"][:, 0]
        if var is not None:
            out["kron_flux_err"][good] = np.sqrt(s["sum_var"][:, 0])
    return out
