"""Empirical PSFs (ePSFs) built from the stars of an image.

:func:`build_epsf` fits a supersampled PRF (``DiscretePSF(integrated=True)``, Anderson & King's
ePSF) jointly with every star's position and flux, by alternating two exact sub-problems. Each
star's sky is the median of its cutout's 2-pixel rim, held fixed: a free local background would be
exactly degenerate with a pedestal under the ePSF, so (as in DAOPHOT and Anderson & King) the ePSF
is what lies above the rim level within the cutout.

(a) **stars**: with the ePSF fixed, every star's ``(x, y, flux)`` is fitted at once with the
    batched Levenberg-Marquardt of :func:`jaxphot.fit.fit_cutouts`;
(b) **ePSF**: with the stars fixed, the model is *linear* in the ePSF's spline coefficients, so the
    update is a regularised weighted linear least-squares problem. It is solved by Jacobi-
    preconditioned conjugate gradients (warm-started from the previous ePSF) on the normal
    equations, whose operator is applied matrix-free: each pixel depends on 4 x 4 coefficients, so
    the forward model is a gather and its transpose (``jax.linear_transpose``) a scatter-add.
    A second-difference penalty (``smoothness``) keeps the coefficients that the data barely
    constrain (the array's rim, sparse sub-pixel phases) well behaved. It acts on the ePSF minus
    an elliptical Moffat PRF fitted to the previous iterate (``prior="moffat"``): a penalty on
    the ePSF's own curvature is strongest, relative to the data, in the Poisson-limited core, and
    with undersampled stars it flattens the core, which the star fits turn into position errors
    that depend on pixel phase (an S-curve, ~4 mpx for FWHM 1.5 px). For a spatially varying
    ePSF, Moffats are fitted at a few field points and every polynomial term gets the reference
    of the polynomial through them.

Two degeneracies of the joint problem are pinned after every ePSF update: the ePSF is rescaled so
that its samples sum to s^2 (fluxes absorb the scale) and resampled so that its centre sits at the
array centre (positions absorb the shift). The centre is that of an elliptical Moffat fitted to the
core (radius 1.2 FWHM), not the first moment: a PSF library, like the optics, puts a star's
position at its core, and asymmetric wings pull the first moment away from it by an amount that
changes across the field (17 mpx for the WFC3/UVIS library), which no global offset removes.
Outliers are rejected at every iteration, non-cumulatively: pixels whose normalised residual
exceeds ``clip_sigma`` and stars whose reduced chi^2 is far above the others' (blends, cosmic rays,
galaxies) are left out of the next ePSF update. The rejection is a continuous taper (a cosine ramp
over +-1 sigma around ``clip_sigma``, +-10 % around the chi^2 limit), not a hard cut: one bright
star's pixel crossing a hard threshold by a rounding error moved the ePSF by 3.6 % of its peak,
so the same stars gave different ePSFs on different processors.

With ``degree = 1`` or ``2`` the ePSF coefficients are a polynomial in the detector position
(:class:`~jaxphot.psf_grid.PolynomialPSF`): the model is still linear in all the polynomial terms,
and the star step goes through ``fit_cutouts``' spatially varying PSF hook.

Because each star's sky is its rim level, the ePSF holds only the light above that level within
the box (96 % for the WFC3/UVIS PSF in a 21 px box). :func:`aperture_correction` measures the
missing fraction from the PSF stars themselves, as DAOPHOT users do: large-aperture flux (annulus
sky) over ePSF-fitted flux, a clipped weighted mean over the stars. ``build_epsf`` reports it
(``aperture_radius``) and can fold it into the ePSF (``normalize="aperture"``), so that fluxes
fitted with the ePSF are total fluxes.

The noise model is ``var = sky_var + max(model, 0) / gain`` per pixel, where ``sky_var`` is each
star's border variance and ``1/gain`` is estimated from the residuals when ``gain`` is not given
(unless ``error`` is given, which is used as is).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import jax.numpy as jnp
import numpy as np
from astropy.stats import mad_std
from astropy.table import Table

from ..core.config import enable_compilation_cache
from ..core.fit import fit_cutouts
from ..image.cutouts import extract_cutouts
from ..psf import DiscretePSF, PolynomialPSF, poly_terms
from ..psf.kernels import spline_samples
from ..psf.varying import poly_scale
from ..validate import check_positive
from ._pin import pin_psf
from ._reference import lowpass_reference_terms, moffat_reference_terms
from ._spline import model_pixels, solve_coeffs
from .apcorr import aperture_correction


class EPSFWarning(UserWarning):
    """Warnings about PSF stars that were dropped or a model that was simplified."""


# ----------------------------------------------------------------------------------------------
# Positions and the stars table


class EPSFStars(Table):
    """Table of candidate PSF stars with what became of them (column ``status``).

    ``status`` is ``"used"`` or the reason a star was left out: ``"edge"``, ``"bad core"`` (NaN or
    masked pixels near its centre), ``"saturated"``, ``"rejected"`` (outlier fit). Fitted columns
    ``x_fit, y_fit, flux_fit, chi2_red`` are in image coordinates / data units.
    """


#: The (x, y) column pairs looked for in a table of positions, in order.
XY_COLUMNS = (
    ("x_centroid", "y_centroid"),
    ("x", "y"),
    ("xcentroid", "ycentroid"),
    ("x_fit", "y_fit"),
    ("x_0", "y_0"),
)


def table_xy(table: Table, pairs=XY_COLUMNS):
    """(x, y) float arrays (N,) from the first of the column ``pairs`` that ``table`` has, or None."""
    for xn, yn in pairs:
        if xn in table.colnames and yn in table.colnames:
            return np.asarray(table[xn], float), np.asarray(table[yn], float)
    return None


def as_positions(positions) -> np.ndarray:
    """(N, 2) float array of (x, y) pixel positions from an array or a table (:data:`XY_COLUMNS`)."""
    if isinstance(positions, Table):
        xy = table_xy(positions)
        if xy is None:
            raise ValueError(f"positions table has no x/y columns: {positions.colnames}")
        return np.stack(xy, 1)
    p = np.asarray(positions, np.float64)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"positions must have shape (N, 2) as (x, y) pairs, got {p.shape}")
    return p


def odd_shape(shape) -> tuple[int, int]:
    """``(h, w)`` (pixels) from an int or a pair; raises a ValueError unless both are odd and >= 5."""
    h, w = (shape, shape) if np.ndim(shape) == 0 else tuple(shape)
    h, w = int(h), int(w)
    if h < 5 or w < 5 or h % 2 == 0 or w % 2 == 0:
        raise ValueError(f"shape must be odd and >= 5 pixels, got {(h, w)}")
    return h, w


def build_epsf(
    image,
    positions,
    *,
    oversampling: int = 4,
    shape=15,
    error=None,
    mask=None,
    gain: float | None = None,
    saturation: float | None = None,
    degree: int = 0,
    smoothness: float | None = None,
    prior: str | None = "moffat",
    maxiters: int = 20,
    tol: float = 5e-4,
    clip_sigma: float = 5.0,
    min_stars: int = 5,
    relax: float = 1.5,
    normalize: str = "sum",
    aperture_radius: float | None = None,
    aperture_annulus=None,
    return_stars: bool = False,
):
    """Build an ePSF (supersampled PRF) from the stars at ``positions`` in ``image``.

    Parameters
    ----------
    image : (H, W) array
        Image in counts (any linear unit). NaNs are ignored (masked). The background need not be
        subtracted: each star's sky is the median of its cutout's rim.
    positions : (N, 2) array or Table
        Approximate (x, y) of the PSF stars (pixels, 0-based; pixel ``[j, i]`` centred at
        ``(i, j)``), e.g. ``x_centroid, y_centroid`` of :func:`jaxphot.detection.find_stars`.
        Within ~0.5 px is enough.
    oversampling : int
        ePSF samples per pixel (s). The ePSF array has ``s * shape + 1`` samples per axis.
    shape : int or (int, int)
        Odd size (pixels) of the cutout fitted around each star; the ePSF covers it.
    error : (H, W) array, optional
        1-sigma uncertainty of each pixel (image units). Default: the noise model in the module
        docstring.
    mask : (H, W) bool array, optional
        True for pixels to ignore.
    gain : float, optional
        Electrons per image unit, for the Poisson part of the noise model; estimated from the
        residuals when None.
    saturation : float, optional
        Stars with any cutout pixel at or above this level are dropped.
    degree : {0, 1, 2}
        Degree of the polynomial variation of the ePSF with detector position. Lowered, with an
        :class:`EPSFWarning`, when there are fewer than ``8 * n_terms`` usable stars.
    smoothness : float, optional
        Weight of the second-difference penalty on the spline coefficients, relative to the
        median data weight of one coefficient (dimensionless). Default 1e-3 for ``degree = 0``,
        1e-2 otherwise. With one image the data leave a family of ePSFs exactly degenerate with
        star positions warped periodically in pixel phase (an S-curve): the prior picks the
        member, so the residual pixel-phase bias depends on how well the prior fits the PSF, and
        more weakly on this weight. Measured on simulated fields (200 stars, mpx = 1e-3 px of
        S-curve amplitude): constant Moffat FWHM 1.5-3, 1e-3 or 1e-2: < 1 mpx, pulls like the
        true PSF's; constant WFC3/UVIS, 1e-3: ~4 mpx, core rms 0.21 %, 1e-2: ~7 mpx, 0.36 %;
        degree 2 (Moffat FWHM 2.6-3.4 across the field), 1e-3: 6-15 mpx (y pulls 1.11), 1e-2:
        < 1.5 mpx (pulls like the true PSF's) and half the iterations.
    prior : {"moffat", "lowpass", None}
        What the penalty pulls toward. ``"moffat"``: the ePSF minus an elliptical Moffat PRF
        refitted to it at every iteration (DAOPHOT's analytic-plus-residual split), so only the
        residual is smoothed and a sharp core is not flattened. None: the ePSF itself (zero
        curvature), which broadens undersampled cores and biases positions with pixel phase.
        Neither is unbiased for every PSF. A PSF unlike a Moffat (WFC3/UVIS: diffraction
        structure) gets a small systematic S-curve from the Moffat reference: built noise-free
        from exact positions, ``"moffat"`` leaves +-6 mpx and None +-1.6 mpx. With 200 noisy stars
        the two give like pulls (x 1.05-1.06 vs 1.03-1.05, y 1.01 vs 1.03). ``"lowpass"``: the
        ePSF minus its own low-pass (spatial frequencies below ~1.2 / FWHM cycles per pixel), so
        only the band where the S-curve family lives is smoothed (default weight 1e-2). For
        diffraction-limited PSFs it is the best choice: WFC3/UVIS F814W, 200 stars, core rms
        0.15 % of peak, pulls 0.99 / 1.02 / 1.00 (true PSF 1.005 / 1.013 / 0.993), converged in 7
        iterations; noise-free build S-curve +-1.2 mpx; varying WFC3 (``build_epsf_grid`` 4 x 4,
        1600 stars): x / y 1.015-1.028 / 1.009-1.015 against 1.05-1.09 / 1.04-1.05, built 5x
        faster; Moffat FWHM 3: 0.98 / 1.00 / 0.99; FWHM
        1.5 (50 stars): 1.00 / 1.00 / 1.03. It is not the default because it damps real power
        above that frequency when the PSF's FWHM is set by something other than diffraction:
        on Spitzer/IRAC (undersampled, optics passing up to ~1.1 cycles per pixel) ``--psf auto``
        fluxes drop to a median of 0.964 x GLIMPSE (0.976 with ``"moffat"``).
    maxiters : int
        Maximum number of (star fit, ePSF update) iterations.
    tol : float
        Stop when no ePSF sample changes by more than ``tol`` times the peak.
    clip_sigma : float
        Pixels with ``|data - model| > clip_sigma * sigma`` are left out of the next update
        (their weight ramps from 1 at ``clip_sigma - 1`` to 0 at ``clip_sigma + 1``).
    min_stars : int
        Fewest usable stars accepted; fewer raise a ValueError naming why stars were dropped.
    relax : float
        Over-relaxation factor of the position updates (1 = plain alternation).
    normalize : {"sum", "aperture"}
        ``"sum"``: the samples sum to s^2, so fitted fluxes are the light the ePSF holds (above
        the box's rim level: less than the total for PSFs with extended wings). ``"aperture"``:
        the ePSF is divided by the aperture correction measured on the PSF stars (see
        ``aperture_radius``), so that fluxes fitted with it are the fluxes within that aperture,
        i.e. total fluxes when it encloses the PSF (DAOPHOT's aperture-corrected photometry).
    aperture_radius : float, optional
        Radius (pixels) of the large aperture for the aperture correction
        (:func:`aperture_correction` on the used stars at their fitted positions and fluxes).
        Measured when given or with ``normalize="aperture"``; default then the box half-size
        ``shape / 2``. Choose a radius that holds (nearly) all the light: light beyond it is not
        restored.
    aperture_annulus : (float, float), optional
        Its sky annulus (pixels); default as in :func:`aperture_correction`.
    return_stars : bool
        Also return an :class:`EPSFStars` table. With an aperture correction its ``meta`` holds
        ``apcor`` (multiply fluxes fitted with a ``normalize="sum"`` ePSF by it), ``apcor_err``,
        ``apcor_radius``, ``apcor_annulus``, ``apcor_nstars``, ``normalize``, and the column
        ``apcor_ratio`` each star's ratio; ``flux_fit`` is on the scale of the returned PSF.

    Returns
    -------
    psf : DiscretePSF or PolynomialPSF
        ``DiscretePSF(integrated=True)`` with samples summing to s^2 and origin at the array
        centre (``docs/conventions.md``, "Discrete PSFs") for ``degree = 0``; a
        :class:`~jaxphot.psf_grid.PolynomialPSF` otherwise.
    stars : EPSFStars
        Only with ``return_stars=True``.

    Raises
    ------
    ValueError
        Bad shapes or arguments, or fewer than ``min_stars`` usable stars (the message counts the
        stars dropped at the edge, with bad cores, saturated).
    """
    enable_compilation_cache()  # persistent cache on first use, never at import
    if gain is not None:
        check_positive("gain", gain, "electrons/ADU")
    img, pos, s, (h, w), bad_img, err_img = _check_inputs(
        image, positions, degree, oversampling, shape, smoothness, prior, normalize, mask, error
    )
    cut = _cut_stars(img, bad_img, err_img, pos, (h, w), saturation)
    _check_enough(cut.status, min_stars)
    degree = _settle_degree(degree, len(cut.idx))
    if smoothness is None:  # (after the degree is settled)
        smoothness = 1e-2 if (degree > 0 or prior == "lowpass") else 1e-3
    sky, sky_var, flux = _rim_sky(cut.data, cut.valid)
    if h != w:
        raise ValueError(f"shape must be square for now, got {(h, w)}")
    center, scale = poly_scale(img.shape)
    pb = _Problem(
        cut.data, cut.valid, cut.err, cut.org, sky, sky_var, s=s, n=s * max(h, w) + 1,
        degree=degree, center=center, scale=scale,
        inv_gain=None if gain is None else 1.0 / float(gain), smoothness=smoothness, prior=prior,
        tol=tol, clip_sigma=clip_sigma, min_stars=min_stars, relax=relax,
    )  # fmt: skip
    fit = _iterate(pb, cut.xl, cut.yl, flux, maxiters)
    apc = None
    if aperture_radius is not None or normalize == "aperture":
        r_ap = float(aperture_radius) if aperture_radius is not None else h / 2.0
        try:
            apc = _aperture_correction(img, bad_img, err_img, pb, fit, r_ap, aperture_annulus)
        except ValueError as exc:  # every star at an edge or on masked pixels
            warnings.warn(f"no aperture correction ({exc}): fluxes fitted with this ePSF are the "
                          "light its box holds", EPSFWarning, stacklevel=2)
            normalize = "sum"
    norm = apc.value if normalize == "aperture" else 1.0
    out = _result_psf(pb, fit.coeffs, norm)
    if not return_stars:
        return out
    return out, _stars_table(pos, cut, pb, fit, apc, norm, normalize)


def _check_inputs(image, positions, degree, oversampling, shape, smoothness, prior, normalize, mask,
                  error):  # fmt: skip
    """Validated :func:`build_epsf` inputs.

    Returns ``img`` (H, W) float64, ``pos`` (N, 2) pixels, the oversampling ``s``, the cutout
    shape ``(h, w)`` (pixels), ``bad_img`` (H, W) bool (NaN, masked, or bad ``error``) and
    ``err_img`` ((H, W) 1-sigma errors, image units, or None).
    """
    img = np.asarray(image, np.float64)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {img.shape}")
    pos = as_positions(positions)
    if len(pos) == 0:
        raise ValueError("no PSF star positions given")
    if degree not in (0, 1, 2):
        raise ValueError(f"degree must be 0, 1 or 2, got {degree!r}")
    s = int(oversampling)
    if s < 1 or s != oversampling:
        raise ValueError(f"oversampling must be a positive integer, got {oversampling!r}")
    h, w = odd_shape(shape)
    if smoothness is not None and not smoothness >= 0:
        raise ValueError(f"smoothness must be >= 0, got {smoothness}")
    if prior not in ("lowpass", "moffat", None):
        raise ValueError(f"prior must be 'lowpass', 'moffat' or None, got {prior!r}")
    if normalize not in ("sum", "aperture"):
        raise ValueError(f"normalize must be 'sum' or 'aperture', got {normalize!r}")
    bad_img = ~np.isfinite(img)
    if mask is not None:
        m = np.asarray(mask, bool)
        if m.shape != img.shape:
            raise ValueError(f"mask must have the image's shape {img.shape}, got {m.shape}")
        bad_img |= m
    err_img = None
    if error is not None:
        err_img = np.broadcast_to(np.asarray(error, np.float64), img.shape)
        bad_img = bad_img | ~(np.isfinite(err_img) & (err_img > 0))
    return img, pos, s, (h, w), bad_img, err_img


# ----------------------------------------------------------------------------------------------
# Star cutouts, their sky, and the stars left out


@dataclass
class _Cut:
    """The cutouts of the M usable stars among N candidates, each ``(h, w)`` pixels.

    ``status`` (N,): ``"used"`` or why a star is unusable; ``idx`` (M,): the usable stars' rows
    of ``positions``; ``data`` (M, h, w) image units; ``valid`` (M, h, w) bool; ``err`` (M, h, w)
    1-sigma errors (1 on invalid pixels) or None; ``org`` (M, 2) float, the image pixel (x, y) of
    each cutout's pixel ``[0, 0]``; ``xl, yl`` (M,) the stars' positions in cutout pixels.
    """

    status: np.ndarray
    idx: np.ndarray
    data: np.ndarray
    valid: np.ndarray
    err: np.ndarray | None
    org: np.ndarray
    xl: np.ndarray
    yl: np.ndarray


def _cut_stars(img, bad_img, err_img, pos, shape, saturation) -> _Cut:
    """Cutouts around the rounded positions (vectorised) and the reasons stars are unusable."""
    h, w = shape
    H, W = img.shape
    status = np.full(len(pos), "used", dtype=object)
    finite = np.all(np.isfinite(pos), axis=1)
    status[~finite] = "non-finite position"
    p = np.where(finite[:, None], pos, 0.0)
    ox = np.rint(p[:, 0]).astype(int) - w // 2
    oy = np.rint(p[:, 1]).astype(int) - h // 2
    edge = (ox < 0) | (oy < 0) | (ox + w > W) | (oy + h > H)
    status[finite & edge] = "edge"
    # edge stars are dropped: their cutouts are only there to keep the arrays rectangular
    data = extract_cutouts(img, ox, oy, shape, mode="nearest")[0]
    bad = extract_cutouts(bad_img, ox, oy, shape, mode="nearest")[0]
    cy, cx = h // 2, w // 2
    core_bad = bad[:, cy - 1 : cy + 2, cx - 1 : cx + 2].any(axis=(1, 2))
    status[(status == "used") & core_bad] = "bad core"
    if saturation is not None:
        sat = np.nanmax(np.where(bad, -np.inf, data), axis=(1, 2)) >= saturation
        status[(status == "used") & sat] = "saturated"
    idx = np.nonzero(status == "used")[0]
    valid = ~bad[idx]
    err = None
    if err_img is not None:
        e = extract_cutouts(err_img, ox[idx], oy[idx], shape, mode="nearest")[0]
        err = np.where(valid, e, 1.0)
    org = np.stack([ox[idx], oy[idx]], 1).astype(np.float64)
    return _Cut(status, idx, data[idx], valid, err, org, p[idx, 0] - org[:, 0], p[idx, 1] - org[:, 1])


# The ``status`` values in the user's words, for the warnings and errors.
_REASONS = {"edge": "too close to the image edge",
            "bad core": "with NaN, masked or zero-error pixels in its core",
            "saturated": "saturated"}


def _check_enough(status, min_stars: int) -> None:
    """Warn about the stars left out; raise a ValueError when fewer than ``min_stars`` are left."""
    n_use = int(np.sum(status == "used"))
    counts = {_REASONS.get(r, r): int(np.sum(status == r)) for r in set(status) if r != "used"}
    if counts:
        warnings.warn(
            f"{sum(counts.values())} of {len(status)} PSF stars dropped: "
            + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())),
            EPSFWarning,
            stacklevel=3,  # build_epsf's caller
        )
    if n_use < min_stars:
        why = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "none dropped"
        raise ValueError(
            f"too few usable PSF stars: {n_use} of {len(status)} (need >= {min_stars}); dropped: {why}"
        )


def _settle_degree(degree: int, n_use: int) -> int:
    """The variation degree, lowered (with a warning) until there are 8 stars per polynomial term."""
    while degree > 0 and n_use < 8 * len(poly_terms(degree)):
        new = degree - 1
        warnings.warn(
            f"only {n_use} usable PSF stars: spatial variation degree lowered from {degree} to "
            f"{new} (degree {degree} needs >= {8 * len(poly_terms(degree))})",
            EPSFWarning,
            stacklevel=3,  # build_epsf's caller
        )
        degree = new
    return degree


def _rim_sky(data, valid):
    """Sky (M,) and sky variance (M,) of each cutout, and a first flux (M,) above it.

    The sky is the median, its variance the squared MAD std, of each cutout's 2-pixel rim, held
    fixed. A free local background would be exactly degenerate with a pedestal under the ePSF
    (F_i * eps is absorbed by each star's own sky), so, as in DAOPHOT and Anderson & King, the
    sky comes from outside the PSF's core and the ePSF is whatever remains above it within the
    cutout.
    """
    n_st, h, w = data.shape
    border = np.zeros((h, w), bool)
    border[:2], border[-2:], border[:, :2], border[:, -2:] = True, True, True, True
    bvals = np.where(valid & border, data, np.nan).reshape(n_st, -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sky = np.nanmedian(bvals, axis=1)
        sky_var = mad_std(bvals, axis=1, ignore_nan=True) ** 2
    sky = np.where(np.isfinite(sky), sky, 0.0)
    pos_var = sky_var[np.isfinite(sky_var) & (sky_var > 0)]
    floor = np.median(pos_var) if pos_var.size else 1.0
    sky_var = np.where(np.isfinite(sky_var) & (sky_var > 0), sky_var, floor)
    flux = np.sum(np.where(valid, data - sky[:, None, None], 0.0), axis=(1, 2))
    flux = np.maximum(flux, 1e-3 * np.max(np.abs(flux)) + 1e-30)
    return sky, sky_var, flux


# ----------------------------------------------------------------------------------------------
# The alternation: (b) ePSF update, (a) star fits, noise model and outliers


@dataclass
class _Problem:
    """What the iterations hold fixed: M stars' cutouts ``(h, w)`` and the ePSF's layout.

    ``data, valid, err, org`` as in :class:`_Cut`; ``sky, sky_var`` (M,) the rim level and its
    variance (image units, units^2); ``s`` the oversampling and ``n = s h + 1`` the samples per
    ePSF axis; ``center, scale`` (2,) the detector-position normalisation of the polynomial
    terms (pixels); ``inv_gain`` 1 / gain (image units per electron) or None (estimated); the
    rest are :func:`build_epsf`'s options. ``template`` is the degree-0 PSF whose coefficients
    each star step replaces.
    """

    data: np.ndarray
    valid: np.ndarray
    err: np.ndarray | None
    org: np.ndarray
    sky: np.ndarray
    sky_var: np.ndarray
    s: int
    n: int
    degree: int
    center: np.ndarray
    scale: np.ndarray
    inv_gain: float | None
    smoothness: float
    prior: str | None
    tol: float
    clip_sigma: float
    min_stars: int
    relax: float
    template: DiscretePSF = field(init=False)

    def __post_init__(self):
        self.template = DiscretePSF(np.ones((self.n, self.n)), self.s, integrated=True)

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape[1:]

    def image_xy(self, fit: _Fit) -> tuple[np.ndarray, np.ndarray]:
        """The stars' image positions (M,) x, y (pixels)."""
        return self.org[:, 0] + fit.xl, self.org[:, 1] + fit.yl

    def amplitudes(self, fit: _Fit) -> np.ndarray:
        """(T, M): each star's flux times each polynomial term at its position."""
        gx_img, gy_img = self.image_xy(fit)
        u = (gx_img - self.center[0]) / self.scale[0]
        v = (gy_img - self.center[1]) / self.scale[1]
        return np.stack([fit.flux * u**a * v**b for a, b in poly_terms(self.degree)])


@dataclass
class _Fit:
    """The iterate, updated in place by the steps of :func:`_iterate` (M stars).

    ``coeffs`` (T, n*n) float32 spline coefficients of the T polynomial terms; ``xl, yl`` (M,)
    star positions in cutout pixels and ``flux`` (M,); ``var`` (M, h, w) pixel variances;
    ``pix_w`` (M, h, w) and ``star_w`` (M,) the weights in [0, 1] of pixels and stars in the
    next ePSF update (``star_ok``: the stars counted as used, weight >= 1/2); ``chi2_red`` (M,);
    ``g_est`` the 1 / gain in use; ``fwhm`` (pixels); ``samples`` the previous term-0 samples
    (the convergence test); ``iterations`` done.
    """

    coeffs: np.ndarray
    xl: np.ndarray
    yl: np.ndarray
    flux: np.ndarray
    var: np.ndarray
    pix_w: np.ndarray
    star_w: np.ndarray
    chi2_red: np.ndarray
    g_est: float | None
    fwhm: float | None = None
    samples: np.ndarray | None = None
    iterations: int = 0

    @property
    def star_ok(self) -> np.ndarray:
        """(M,) bool: the stars counted as used (weight >= 1/2)."""
        return self.star_w >= 0.5


def _iterate(pb: _Problem, xl, yl, flux, maxiters: int) -> _Fit:
    """Alternate the ePSF update and the star fits from the start positions and fluxes (M,)."""
    n_st = len(pb.data)
    if pb.err is not None:
        var = pb.err**2
    else:
        g0 = 0.0 if pb.inv_gain is None else pb.inv_gain
        var = pb.sky_var[:, None, None] + g0 * np.maximum(pb.data - pb.sky[:, None, None], 0.0)
    fit = _Fit(
        coeffs=np.zeros((len(poly_terms(pb.degree)), pb.n * pb.n), np.float32), xl=xl, yl=yl,
        flux=flux, var=var, pix_w=pb.valid.astype(float),
        star_w=np.ones(n_st),
        chi2_red=np.full(n_st, np.nan), g_est=pb.inv_gain,
    )  # fmt: skip
    for it in range(maxiters):
        fit.iterations = it + 1
        if _update_epsf(pb, fit, it) < pb.tol:
            break
        good = _fit_stars(pb, fit, it)
        _update_noise(pb, fit, good)
    else:
        fit.iterations = maxiters
    return fit


def _reference(pb: _Problem, coeffs: np.ndarray, it: int) -> np.ndarray:
    """(T, n*n) coefficients the smoothness penalty pulls toward (see ``prior``)."""
    # The first update has no iterate to fit a reference to: it smooths toward zero curvature.
    c_ref = np.zeros_like(coeffs)
    if pb.prior == "moffat" and it > 0:
        got = moffat_reference_terms(coeffs, pb.n, pb.s, pb.degree)
        if got is not None:
            c_ref[: len(got)] = got
    elif pb.prior == "lowpass" and it > 0:
        c_ref = lowpass_reference_terms(coeffs, pb.n, pb.s).astype(coeffs.dtype)
    return c_ref


def _update_epsf(pb: _Problem, fit: _Fit, it: int) -> float:
    """(b) The ePSF update with the stars fixed; returns the largest sample change over the peak."""
    n_st = len(pb.data)
    wgt = fit.pix_w * fit.star_w[:, None, None] / fit.var
    target = np.where(pb.valid, pb.data - pb.sky[:, None, None], 0.0)
    c_new, _ = solve_coeffs(
        jnp.asarray(fit.coeffs, jnp.float32),
        jnp.asarray(_reference(pb, fit.coeffs, it), jnp.float32),
        jnp.asarray(target.reshape(n_st, -1), jnp.float32),
        jnp.asarray(wgt.reshape(n_st, -1), jnp.float32),
        jnp.asarray(fit.xl, jnp.float32),
        jnp.asarray(fit.yl, jnp.float32),
        jnp.asarray(pb.amplitudes(fit), jnp.float32),
        jnp.float32(pb.smoothness),
        n=pb.n,
        s=pb.s,
        shape=pb.shape,
        max_cg=400 if it == 0 else 150,
        cg_tol=jnp.float32(1e-5),
    )
    coeffs, fit.fwhm = pin_psf(np.asarray(c_new), pb.s, pb.n, centre=True)
    fit.coeffs = coeffs.astype(np.float32)
    s0 = spline_samples(fit.coeffs[0].reshape(pb.n, pb.n), "bspline3")
    change = np.inf if fit.samples is None else np.max(np.abs(s0 - fit.samples)) / s0.max()
    fit.samples = s0
    return change


def _fit_stars(pb: _Problem, fit: _Fit, it: int) -> np.ndarray:
    """(a) Every star's (x, y, flux) fitted with the ePSF fixed; returns the (M,) good fits."""
    n, (h, w) = pb.n, pb.shape
    if pb.degree == 0:
        psf = pb.template.replace(coeffs=jnp.asarray(fit.coeffs[0].reshape(n, n)))
        kw = {}
    else:
        psf = PolynomialPSF(
            np.stack([spline_samples(t.reshape(n, n), "bspline3") for t in fit.coeffs]),
            pb.s,
            pb.degree,
            pb.center,
            pb.scale,
        )
        kw = {"origin": pb.org}
    res = fit_cutouts(pb.data, psf, fit.xl, fit.yl, fit.flux, error=np.sqrt(fit.var),
                      mask=~pb.valid, background=None, max_iter=30, bkg=pb.sky, **kw)  # fmt: skip
    xf, yf, ff = res.x_fit[:, 0], res.y_fit[:, 0], res.flux_fit[:, 0]
    good = (
        np.isfinite(xf)
        & np.isfinite(yf)
        & np.isfinite(ff)
        & (ff > 0)
        & (np.abs(xf - (w - 1) / 2.0) < 1.5)
        & (np.abs(yf - (h - 1) / 2.0) < 1.5)
    )
    # Over-relaxed position update. Undersampled data leave the ePSF's sharpness nearly
    # degenerate with pixel-phase-dependent position errors (Anderson & King 2000), and plain
    # alternation crawls along that valley; stepping past the fitted positions (omega < 2,
    # still convergent) roughly halves the number of iterations.
    om = 1.0 if it == 0 else pb.relax
    fit.xl = np.where(good, fit.xl + om * (xf - fit.xl), fit.xl)
    fit.yl = np.where(good, fit.yl + om * (yf - fit.yl), fit.yl)
    fit.flux = np.where(good, ff, fit.flux)
    return good


def _update_noise(pb: _Problem, fit: _Fit, good: np.ndarray) -> None:
    """The noise model, outlier pixels and outlier stars, from the residuals of the new fits."""
    n_st = len(pb.data)
    stars_model = np.asarray(
        model_pixels(
            jnp.asarray(fit.coeffs),
            jnp.asarray(fit.xl, jnp.float32),
            jnp.asarray(fit.yl, jnp.float32),
            jnp.asarray(pb.amplitudes(fit), jnp.float32),
            n=pb.n,
            s=pb.s,
            shape=pb.shape,
        )
    ).reshape(n_st, *pb.shape)
    model = pb.sky[:, None, None] + stars_model
    resid = np.where(pb.valid, pb.data - model, 0.0)
    if pb.err is None:
        g_inv = pb.inv_gain
        if g_inv is None:
            g_inv = _estimate_inv_gain(pb, fit.star_ok, stars_model, resid)
        fit.g_est = g_inv
        fit.var = pb.sky_var[:, None, None] + g_inv * np.maximum(stars_model, 0.0)
    zres = resid / np.sqrt(fit.var)
    fit.pix_w = np.where(pb.valid, _taper(np.abs(zres), pb.clip_sigma, 1.0), 0.0)
    dof = np.maximum(fit.pix_w.sum(axis=(1, 2)) - 6, 1)
    fit.chi2_red = np.sum(fit.pix_w * zres**2, axis=(1, 2)) / dof
    med = np.median(fit.chi2_red[good])
    spread = mad_std(fit.chi2_red[good], axis=0, ignore_nan=True)
    limit = max(med + 5.0 * spread, 1.5 * med)
    fit.star_w = np.where(good, _taper(fit.chi2_red, limit, 0.1 * limit), 0.0)
    if fit.star_ok.sum() < pb.min_stars:
        fit.star_w = good.astype(float)


def _taper(z: np.ndarray, edge: float, width: float) -> np.ndarray:
    """Weights: 1 below ``edge - width``, 0 above ``edge + width``, a cosine ramp between."""
    t = np.clip((z - (edge - width)) / (2.0 * width), 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * t))


def _estimate_inv_gain(pb: _Problem, star_ok, stars_model, resid) -> float:
    """1 / gain (image units per electron) from the residuals (M, h, w) of the used stars.

    ``var - sky_var ~ model / gain``: least squares on the pixels with signal.
    """
    sky_var = pb.sky_var[:, None, None]
    sel = pb.valid & (stars_model > 3.0 * np.sqrt(pb.sky_var)[:, None, None])
    sel &= star_ok[:, None, None]
    excess = resid**2 - sky_var
    num = np.sum(np.where(sel, excess * stars_model, 0.0))
    den = np.sum(np.where(sel, stars_model**2, 0.0))
    return max(num / den, 0.0) if den > 0 else 0.0


# ----------------------------------------------------------------------------------------------
# Aperture correction and results


def _aperture_correction(img, bad_img, err_img, pb: _Problem, fit: _Fit, radius, annulus):
    """Aperture correction (large-aperture / fitted flux) from the used stars."""
    gx_img, gy_img = pb.image_xy(fit)
    ok = fit.star_ok
    return aperture_correction(
        np.where(bad_img, np.nan, img),
        gx_img[ok],
        gy_img[ok],
        fit.flux[ok],
        radius,
        annulus=annulus,
        mask=bad_img,
        error=err_img,
        gain=1.0 / fit.g_est if fit.g_est else None,
    )


def _result_psf(pb: _Problem, coeffs: np.ndarray, norm: float):
    """The ePSF's samples as a DiscretePSF (degree 0) or PolynomialPSF, divided by ``norm``."""
    n, s = pb.n, pb.s
    arrays = np.stack([spline_samples(t.reshape(n, n).astype(np.float64), "bspline3") for t in coeffs])
    if pb.degree == 0:
        # samples summing to s^2 / apcor: fitted fluxes come out aperture-corrected
        a0 = arrays[0] * (s * s / arrays[0].sum() / norm)
        return DiscretePSF(a0, s, integrated=True, normalize=False)
    return PolynomialPSF(arrays, s, pb.degree, pb.center, pb.scale, norm=1.0 / norm)


def _stars_table(pos, cut: _Cut, pb: _Problem, fit: _Fit, apc, norm: float, normalize: str):
    """The :class:`EPSFStars` table of :func:`build_epsf` (N rows, one per position)."""
    tab = EPSFStars()
    tab["x"], tab["y"] = pos[:, 0], pos[:, 1]
    st = cut.status.copy()
    idx = cut.idx
    xo, yo, fo, co = (np.full(len(pos), np.nan) for _ in range(4))
    xo[idx], yo[idx] = pb.image_xy(fit)
    fo[idx], co[idx] = fit.flux * norm, fit.chi2_red
    st[idx[~fit.star_ok]] = "rejected"
    tab["x_fit"], tab["y_fit"], tab["flux_fit"], tab["chi2_red"] = xo, yo, fo, co
    tab["status"] = st.astype(str)
    tab.meta.update(
        iterations=fit.iterations, degree=pb.degree, fwhm=fit.fwhm, oversampling=pb.s,
        normalize=normalize,
    )  # fmt: skip
    if apc is not None:
        ratio = np.full(len(pos), np.nan)
        ratio[idx[fit.star_ok]] = apc.ratio
        tab["apcor_ratio"] = ratio
        tab.meta.update(
            apcor=apc.value,
            apcor_err=apc.error,
            apcor_radius=apc.radius,
            apcor_annulus=apc.annulus,
            apcor_nstars=int(apc.used.sum()),
        )
    return tab
