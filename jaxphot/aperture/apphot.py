"""Aperture photometry for people: circles, ellipses and rectangles (in pixels or on the sky) with
annulus sky, errors and magnitudes.

:func:`aperture_photometry` returns an astropy Table; :func:`aperture_light_curves` turns a
(T, H, W) cube into (T, N) light curves. Flags (:class:`~jaxphot.aperture.ApertureFlag`) are set
per source and per radius; no bad row raises for the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.table import Table

from ..constants import POGSON
from ..validate import check_non_negative, check_positive
from .sums import SKY_METHODS, ApertureFlag, aperture_sums, as_image, as_positions, radius_array

__all__ = ["aperture_photometry", "aperture_light_curves"]


def _flags_and_values(core: dict):
    """Flags (N, R) int32 and the (N, R) bool map of apertures with no value (no pixel left)."""
    tol = 1e-12
    geom = core["geom_area"]
    off = core["off_area"] > tol
    whole_off = core["off_area"] >= geom - tol
    badpix = core["bad_area"] > tol
    area = core["area"]
    none_left = area <= tol
    flags = np.zeros(geom.shape, dtype=np.int32)
    flags |= np.where(off & ~whole_off, int(ApertureFlag.TRUNCATED), 0)
    flags |= np.where(whole_off | ~core["finite_position"][:, None], int(ApertureFlag.OFF_IMAGE), 0)
    flags |= np.where(badpix, int(ApertureFlag.HAS_MASKED), 0)
    flags |= np.where(badpix & none_left & ~whole_off, int(ApertureFlag.ALL_MASKED), 0)
    invalid = none_left | ~core["finite_position"][:, None]
    return flags, invalid


_SIZES = {
    "circle": ("r", "r_in", "r_out"),
    "ellipse": ("a", "b", "a_in", "a_out", "b_in", "b_out", "r_in", "r_out"),
    "rectangle": ("w", "h", "w_in", "w_out", "h_in", "h_out", "r_in", "r_out"),
}
_ALL_SIZES = ("r", "a", "b", "w", "h", "r_in", "r_out", "a_in", "a_out", "b_in", "b_out", "w_in",
              "w_out", "h_in", "h_out")  # fmt: skip


@dataclass
class _Spec:
    """One call's apertures: ``kind`` and its (N, R) ``params`` for :func:`aperture_sums`, the
    annulus (or None) of ``annulus_kind``, and the (N, R) size columns of a multi-aperture table
    (None for one aperture per source)."""

    kind: str
    params: tuple
    annulus: tuple | None
    annulus_kind: str
    columns: dict | None


def aperture_photometry(
    data,
    positions,
    r=None,
    *,
    shape: str = "circle",
    a=None,
    b=None,
    theta=None,
    w=None,
    h=None,
    r_in=None,
    r_out=None,
    a_in=None,
    a_out=None,
    b_in=None,
    b_out=None,
    w_in=None,
    w_out=None,
    h_in=None,
    h_out=None,
    wcs=None,
    method: str = "exact",
    subpixels: int = 5,
    error=None,
    mask=None,
    gain: float | None = None,
    read_noise: float | None = None,
    sky: str = "median",
    sky_sigma: float = 3.0,
    sky_maxiters: int = 5,
    zeropoint: float = 0.0,
) -> Table:
    """Aperture photometry (circles, ellipses, rectangles) with local annulus sky, errors and mags.

    The shapes and their annuli follow photutils' ``CircularAperture``/``CircularAnnulus``,
    ``EllipticalAperture``/``EllipticalAnnulus`` and ``RectangularAperture``/``RectangularAnnulus``.

    Parameters
    ----------
    data : array_like, shape (H, W) or (T, H, W)
        Image in counts (ADU) or a cube of T images (e.g. TESS cut-outs); the cube gives light
        curves in one batched call.
    positions : array_like, shape (N, 2), or astropy.coordinates.SkyCoord
        ``(x, y)`` 0-based pixel coordinates, or sky positions (then ``wcs`` is required and all
        sizes are angular Quantities; see *Sky apertures* below).
    r : float, array (N,), list of R radii, or array (N, R)
        Circle radius/radii in pixels (``shape="circle"``).
    shape : {"circle", "ellipse", "rectangle"}
        Aperture shape.
    a, b : float, array (N,), list of R values, or array (N, R)
        Ellipse semi-major and semi-minor axes in pixels (``0 < b <= a``).
    theta : float or array (N,)
        Rotation in radians, counter-clockwise from +x, of the ellipse's major axis or of the
        rectangle's ``w`` side (default 0). The annulus has the same ``theta``.
    w, h : float, array (N,), list of R values, or array (N, R)
        Rectangle full lengths in pixels along its x' and y' axes (x' at ``theta`` from +x).
    r_in, r_out : float or array (N,), optional
        Circular sky annulus radii in pixels (any shape). Without an annulus the sky is 0 (data
        assumed sky-subtracted).
    a_in, a_out, b_out, b_in : float or array (N,), optional
        Elliptical sky annulus (``shape="ellipse"``): inner and outer semi-major axes, outer
        semi-minor axis, and inner semi-minor axis (default ``b_out * a_in / a_out``, as photutils).
        The annulus must enclose the aperture: ``a_in >= a``, ``b_in >= b``, ``a_out > a_in``,
        ``b_out > b_in``.
    w_in, w_out, h_out, h_in : float or array (N,), optional
        Rectangular sky annulus (``shape="rectangle"``), full lengths; ``h_in`` defaults to
        ``h_out * w_in / w_out``. It must enclose the aperture: ``w_in >= w``, ``h_in >= h``,
        ``w_out > w_in``, ``h_out > h_in``.
    wcs : astropy.wcs.WCS, optional
        Celestial WCS of ``data``, for sky ``positions``.
    method : {"exact", "center", "subpixel"}
        Pixel overlap: exact area, pixel centre inside, or n×n sub-pixel sampling (``subpixels``).
        (photutils' rectangle ``"exact"`` is its ``"subpixel"`` with n = 32; here it is exact.)
    subpixels : int
        n for ``method="subpixel"`` (Source Extractor uses 5).
    error : array_like, optional
        1-sigma error per pixel (counts), same shape as data (or (H, W) for a cube), or a scalar
        > 0. Its square is summed with the aperture weights: ``var = Σ w σ²``. Apertures holding
        a pixel whose error is <= 0 or not finite get flag ``BAD_ERROR`` and NaN errors.
    mask : array_like of bool (H, W), optional
        True marks bad pixels; they and non-finite pixels are excluded (flag ``HAS_MASKED``).
    gain : float, optional
        e⁻/ADU (> 0). With ``error`` it adds the source Poisson term ``flux/gain``; without
        ``error`` the per-pixel variance is the CCD equation ``max(data, 0)/gain +
        (read_noise/gain)²`` (data must then be un-sky-subtracted ADU).
    read_noise : float, optional
        Read noise in e⁻ (>= 0; used only without ``error``).
    sky : {"median", "mean", "sigma_clip", "mode", "mmm", "biweight"}
        Annulus sky estimator. ``mean`` is the overlap-weighted annulus mean (with ``method``); the
        others use the pixels whose centres lie inside the outer and not inside the inner boundary
        (photutils ``ApertureStats`` uses the same "center" pixels). ``sigma_clip`` is the
        sigma-clipped mean, ``mode`` is 3·median − 2·mean of the sigma-clipped sample, ``mmm`` is
        DAOPHOT-MMM-like.
    sky_sigma, sky_maxiters : float, int
        Clipping parameters of the robust sky estimators.
    zeropoint : float
        Added to the instrumental magnitudes ``-2.5 log10(flux)``.

    Returns
    -------
    astropy.table.Table
        One row per input position, in input order: ``id, x, y, [ra, dec,] aperture_sum,
        aperture_sum_err, area, sky, sky_err, flux, flux_err, mag, mag_err, flags`` (+ ``n_sky``,
        ``sky_std``). ``sky`` is per pixel; ``sky_err = sky_std/sqrt(n_sky)``; ``flux =
        aperture_sum - area·sky``; ``flux_err² = aperture_sum_err² + area²·sky_err²`` (the
        N_A²σ_sky²/N_B term of the CCD equation); ``mag_err = 2.5/ln10 · flux_err/flux``. With R
        apertures per source, the aperture columns are (N, R) and the sizes (``r``; ``a, b``;
        ``w, h``) are columns too; with a cube of T images, (N, T) or (N, R, T).

    Notes
    -----
    *Sky apertures.* With a SkyCoord, each position becomes ``wcs.world_to_pixel(positions)``;
    angular sizes are divided by the pixel scale ``sqrt(sx sy)`` from
    ``astropy.wcs.utils.proj_plane_pixel_scales`` (square pixels assumed); ``theta`` (an angle
    Quantity, or radians) is then the position angle on the sky, from north through east, as in
    photutils' ``SkyEllipticalAperture``. Its pixel angle is the direction, at each source, of the
    chord between the points one pixel away at position angles ``theta`` and ``theta + 180°``
    (``SkyCoord.directional_offset_by`` and ``wcs.world_to_pixel``), so mirrored or rotated WCSs
    need no sign convention. The table gains ``ra, dec`` (ICRS, degrees). The result is exactly
    the pixel aperture of the converted sizes at the converted positions.
    """
    data = as_image("data", data)
    cube = data.ndim == 3
    sizes = dict(r=r, a=a, b=b, w=w, h=h, r_in=r_in, r_out=r_out, a_in=a_in, a_out=a_out,
                 b_in=b_in, b_out=b_out, w_in=w_in, w_out=w_out, h_in=h_in, h_out=h_out)  # fmt: skip
    pos, sizes, theta, radec = _pixel_positions(positions, wcs, sizes, theta)
    if sky not in SKY_METHODS:
        raise ValueError(f"sky must be one of {SKY_METHODS}, got {sky!r}")
    spec = _aperture_spec(shape, pos.shape[0], sizes, theta)
    gain, read_noise = _check_noise(error, gain, read_noise)
    variance = _pixel_variance(data, error, gain, read_noise)
    core = aperture_sums(
        data, pos, spec.kind, spec.params, method=method, subpixels=subpixels, mask=mask,
        variance=variance, annulus=spec.annulus, sky=sky, sky_sigma=sky_sigma,
        sky_maxiters=sky_maxiters, annulus_kind=spec.annulus_kind,
    )  # fmt: skip
    flags, invalid = _flags_and_values(core)
    bad_err = _bad_error_area(data, pos, spec, error, mask, method, subpixels)
    cols, s = _measure(core, flags, invalid, cube, error, gain, variance, bad_err,
                       spec.annulus is not None, zeropoint)  # fmt: skip
    t = _table(pos, spec.columns, cols, flags, s, radec)
    t.meta["shape"] = shape
    t.meta["method"] = method
    t.meta["sky"] = sky if spec.annulus is not None else "none"
    if cube:
        t.meta["time_axis"] = "last"
    return t


def _measure(core, flags, invalid, cube, error, gain, variance, bad_err, has_annulus, zeropoint):
    """Aperture sums, errors, sky, flux and magnitudes from :func:`aperture_sums`' ``core``.

    Sets the ``BAD_ERROR``, sky and ``NONPOSITIVE`` bits in ``flags`` (N, R). ``bad_err`` (N, R)
    is the aperture area on pixels with a bad ``error`` (or None). Returns the (N, R[, T])
    aperture columns and the sky columns (see :func:`_annulus_sky`).
    """
    N = flags.shape[0]
    ex = (lambda a: a[..., None]) if cube else (lambda a: a)  # (N, R) -> like the sums
    asum = np.where(ex(invalid), np.nan, core["sum"])  # (N, R) or (N, R, T)
    area_v = np.where(invalid, np.nan, core["area"])
    sum_err = _sum_error(core, invalid, asum, ex, error, gain, variance)
    if bad_err is not None:
        has_bad = bad_err > 1e-12
        flags |= np.where(has_bad, int(ApertureFlag.BAD_ERROR), 0)
        sum_err = np.where(ex(has_bad), np.nan, sum_err)  # unknown, not a wrong number
    if has_annulus:
        s = _annulus_sky(core, cube, flags)
        flux = asum - ex(area_v) * s["sky_b"]
        flux_err = np.sqrt(sum_err**2 + (ex(area_v) * s["skyerr_b"]) ** 2)
    else:
        T = asum.shape[2:]
        s = {"sky": np.zeros((N,) + T)}
        s.update(sky_err=np.zeros_like(s["sky"]), n_sky=np.zeros(N, dtype=int),
                 sky_std=np.zeros_like(s["sky"]))  # fmt: skip
        flux = asum
        flux_err = sum_err
    with np.errstate(invalid="ignore", divide="ignore"):
        mag = np.where(flux > 0, zeropoint - 2.5 * np.log10(np.where(flux > 0, flux, 1.0)), np.nan)
        mag_err = np.where(flux > 0, POGSON * flux_err / np.abs(flux), np.nan)
    nonpos = ~(flux > 0) & np.isfinite(flux)
    flags |= np.where(
        nonpos if not cube else np.any(nonpos, axis=-1), int(ApertureFlag.NONPOSITIVE), 0
    )
    cols = dict(aperture_sum=asum, aperture_sum_err=sum_err, area=area_v, flux=flux,
                flux_err=flux_err, mag=mag, mag_err=mag_err)  # fmt: skip
    return cols, s


def _check_noise(error, gain, read_noise):
    """Validated ``gain`` and ``read_noise`` (or None); a scalar ``error`` must be > 0."""
    if gain is not None:
        gain = check_positive("gain", gain, "e-/ADU")
    if read_noise is not None:
        read_noise = check_non_negative("read_noise", read_noise, "e-")
    if error is not None and np.ndim(error) == 0:
        check_positive("error", error, "counts")
    return gain, read_noise


def _bad_error_area(data, pos, spec: _Spec, error, mask, method, subpixels):
    """(N, R) aperture area on usable pixels whose ``error`` is <= 0 or not finite, or None.

    A second, plain sum of the 0/1 map of such pixels with the same apertures: it runs only when
    the error image has a bad pixel on a usable one, so clean error maps cost nothing.
    """
    if error is None or np.ndim(error) == 0:
        return None
    e = np.asarray(error, dtype=float)
    with np.errstate(invalid="ignore"):
        bad = ~(e > 0)
    bad = bad.any(axis=0) if bad.ndim == 3 else bad
    unusable = ~np.isfinite(data)
    unusable = unusable.any(axis=0) if unusable.ndim == 3 else unusable
    if mask is not None:
        unusable = unusable | np.asarray(mask, dtype=bool)
    bad = bad & ~unusable
    if not bad.any():
        return None
    res = aperture_sums(bad.astype(float), pos, spec.kind, spec.params, method=method,
                        subpixels=subpixels, mask=unusable)  # fmt: skip
    return res["sum"]


# ----------------------------------------------------------------------------------------------------
# aperture shapes and sizes


def _aperture_spec(shape: str, N: int, sizes: dict, theta) -> _Spec:
    """Check the shape's sizes and build its :class:`_Spec` (N sources, pixel units)."""
    if shape not in _SIZES:
        raise ValueError(f"shape must be 'circle', 'ellipse' or 'rectangle', got {shape!r}")
    for name in _ALL_SIZES:
        if sizes[name] is not None and name not in _SIZES[shape]:
            raise ValueError(f"{name} is not an argument of shape={shape!r} "
                             f"(it takes {', '.join(_SIZES[shape])})")  # fmt: skip
    if shape == "circle":
        if theta is not None:
            raise ValueError("theta is not an argument of shape='circle'")
        return _circle_spec(N, sizes)
    th = _theta_array(theta, N)
    one, two = ("a", "b") if shape == "ellipse" else ("w", "h")
    multi = any(_is_multi(sizes[k]) for k in (one, two))
    p1, p2 = (_positive_sizes(k, sizes[k], N) for k in (one, two))
    try:
        p1, p2 = np.broadcast_arrays(p1, p2)
    except ValueError:
        raise ValueError(f"{one} and {two} must give the same number of apertures; got "
                         f"{p1.shape[1]} and {p2.shape[1]}") from None  # fmt: skip
    if shape == "ellipse" and np.any(p2 > p1):
        raise ValueError("b must be <= a (a is the semi-major axis)")
    params = (p1, p2, np.broadcast_to(th, p1.shape))
    annulus, ann_kind = _annulus_spec(shape, N, sizes, th[:, 0], p1, p2)
    cols = {one: p1, two: p2} if multi else None
    return _Spec(shape, params, annulus, ann_kind, cols)


def _circle_spec(N: int, sizes: dict) -> _Spec:
    r = sizes["r"]
    if r is None:
        raise ValueError("r is required for shape='circle'")
    radii = radius_array("r", r, N)
    annulus = _circular_annulus(sizes)
    if annulus is not None:
        r_in, r_out = (radius_array(k, v, N)[:, 0] for k, v in zip(("r_in", "r_out"), annulus,
                                                                   strict=True))
        if np.any(r_in < radii.max(axis=1)):
            raise ValueError("r_in must be >= r: the annulus would overlap the aperture")
        if np.any(r_out < r_in):
            raise ValueError("r_out must be >= r_in")
    return _Spec("circle", (radii,), annulus, "circle", {"r": radii} if _is_multi(r) else None)


def _circular_annulus(sizes: dict):
    if (sizes["r_in"] is None) != (sizes["r_out"] is None):
        raise ValueError("r_in and r_out must be given together")
    return None if sizes["r_in"] is None else (sizes["r_in"], sizes["r_out"])


def _annulus_spec(shape, N, sizes, th, p1, p2):
    """The annulus of an ellipse or rectangle: its ``aperture_sums`` form and kind, or None.

    Names as photutils (``a_in, a_out, b_out, b_in`` or ``w_in, w_out, h_out, h_in``); the inner
    minor size defaults to ``outer * in / out``. The annulus must enclose the aperture.
    """
    one, two = ("a", "b") if shape == "ellipse" else ("w", "h")
    names = (f"{one}_in", f"{one}_out", f"{two}_out", f"{two}_in")
    given = [sizes[k] is not None for k in names]
    circ = _circular_annulus(sizes)
    if circ is not None:
        if any(given):
            raise ValueError(f"give either r_in, r_out or {', '.join(names)}, not both")
        rin = radius_array("r_in", circ[0], N)[:, 0]
        reach = p1 if shape == "ellipse" else 0.5 * np.hypot(p1, p2)
        if np.any(rin < reach.max(axis=1)):
            raise ValueError("r_in must be at least the aperture's reach (the annulus would overlap it)")
        return circ, "circle"
    if not any(given):
        return None, shape
    if not all(given[:3]):
        raise ValueError(f"{', '.join(names[:3])} must be given together ({names[3]} is optional)")
    v_in, v_out, u_out = (_positive_sizes(k, sizes[k], N, single=True) for k in names[:3])
    u_in = (u_out * v_in / v_out if sizes[names[3]] is None
            else _positive_sizes(names[3], sizes[names[3]], N, single=True))  # fmt: skip
    checks = (
        (v_out <= v_in, f"{names[1]} must be > {names[0]}"),
        (u_out <= u_in, f"{names[2]} must be > {names[3]}"),
        (v_in < p1.max(axis=1), f"{names[0]} must be >= {one}: the annulus would overlap the aperture"),
        (u_in < p2.max(axis=1), f"{names[3]} must be >= {two}: the annulus would overlap the aperture"),
    )
    for bad, msg in checks:
        if np.any(bad):
            raise ValueError(msg)
    return ((v_in, u_in, th), (v_out, u_out, th)), shape


def _is_multi(value) -> bool:
    """Several apertures per source: a list/tuple of values or an (N, R) array."""
    return isinstance(value, list | tuple) or np.ndim(value) == 2


def _positive_sizes(name: str, value, N: int, single: bool = False) -> np.ndarray:
    """Sizes > 0 as an (N, R) array ((N,) with ``single``), or ValueError naming ``name``."""
    if value is None:
        raise ValueError(f"{name} is required")
    p = radius_array(name, value, N)
    if np.any(p <= 0):
        raise ValueError(f"{name} must be > 0 pixels")
    if single:
        if p.shape[1] != 1:
            raise ValueError(f"{name} takes one value per source, not a list of several")
        return p[:, 0]
    return p


def _theta_array(theta, N: int) -> np.ndarray:
    """``theta`` (radians) as an (N, 1) array: a scalar or one value per source."""
    th = np.asarray(0.0 if theta is None else theta, dtype=float)
    if th.ndim == 0:
        th = np.full(N, float(th))
    if th.shape != (N,):
        raise ValueError(f"theta must be a scalar or have one value per source (N={N}); "
                         f"got shape {th.shape}")  # fmt: skip
    if not np.all(np.isfinite(th)):
        raise ValueError("theta must be finite")
    return th[:, None]


# ----------------------------------------------------------------------------------------------------
# sky positions


def _pixel_positions(positions, wcs, sizes: dict, theta):
    """Pixel positions (N, 2), sizes and theta in pixels/radians, and (ra, dec) (or None).

    A SkyCoord is converted with ``wcs`` (see *Sky apertures* in :func:`aperture_photometry`);
    otherwise the sizes must be numbers in pixels.
    """
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    if not isinstance(positions, SkyCoord):
        for name, value in sizes.items():
            if _is_angle(value):
                raise ValueError(f"{name} is an angle: give positions as a SkyCoord with wcs=, "
                                 "or sizes in pixels")  # fmt: skip
        if isinstance(theta, u.Quantity):
            theta = theta.to_value(u.rad)
        return as_positions(positions), sizes, theta, None
    if wcs is None:
        raise ValueError("wcs is required when positions is a SkyCoord (an astropy WCS of data)")
    from astropy.wcs.utils import proj_plane_pixel_scales

    coords = positions.reshape((-1,)) if positions.ndim else positions.reshape((1,))
    cel = wcs.celestial
    x, y = cel.world_to_pixel(coords)
    pos = np.column_stack([np.asarray(x, dtype=float), np.asarray(y, dtype=float)])
    scale = float(np.sqrt(np.prod(proj_plane_pixel_scales(cel)))) * u.Unit(cel.wcs.cunit[0])
    pix = {k: (None if v is None else _angle_to_pixels(k, v, scale)) for k, v in sizes.items()}
    if theta is not None:
        theta = _sky_theta(coords, cel, theta, scale, pos)
    icrs = coords.icrs
    return pos, pix, theta, (icrs.ra.deg, icrs.dec.deg)


def _is_angle(value) -> bool:
    from astropy import units as u

    items = value if isinstance(value, list | tuple) else [value]
    return any(isinstance(q, u.Quantity) and q.unit.physical_type == "angle" for q in items)


def _angle_to_pixels(name: str, value, scale):
    """An angular size (Quantity, or a list of them) in pixels; ValueError naming ``name``."""
    from astropy import units as u

    if isinstance(value, list | tuple):
        return [_angle_to_pixels(name, q, scale) for q in value]
    if not (isinstance(value, u.Quantity) and value.unit.physical_type == "angle"):
        raise ValueError(f"{name} must be an angular Quantity (e.g. 3 * u.arcsec) when positions "
                         f"is a SkyCoord; got {value!r}")  # fmt: skip
    return np.asarray((value / scale).to_value(u.dimensionless_unscaled), dtype=float)


def _sky_theta(coords, wcs, theta, scale, pos) -> np.ndarray:
    """Position angle(s) on the sky (north through east) -> pixel angles (radians CCW from +x).

    The direction of the chord between the points one pixel away at position angles theta and
    theta + 180° (second-order accurate in the pixel size; exact for any WCS handedness).
    """
    from astropy import units as u

    pa = theta if isinstance(theta, u.Quantity) else np.asarray(theta, dtype=float) * u.rad
    pa = np.broadcast_to(pa.to_value(u.rad), coords.shape) * u.rad  # broadcast_to drops units
    ends = []
    for sign in (0.0, np.pi):
        c = coords.directional_offset_by(pa + sign * u.rad, scale)
        ends.append(np.column_stack([np.asarray(q, dtype=float) for q in wcs.world_to_pixel(c)]))
    d = ends[0] - ends[1]
    return np.arctan2(d[:, 1], d[:, 0])


def _table(pos, sizes, cols: dict, flags, sky: dict, radec=None) -> Table:
    """The result table: one row per position; ``sizes`` the (N, R) size columns of several
    apertures (e.g. ``{"r": radii}``), else None; ``radec`` (ra, dec) in degrees or None.

    ``cols`` holds the (N, R[, T]) aperture columns, ``sky`` the (N[, T]) sky columns.
    """
    multi = sizes is not None
    shape = (lambda a: a) if multi else (lambda a: a[:, 0])
    t = Table()
    t["id"] = np.arange(1, len(pos) + 1)
    t["x"] = pos[:, 0]
    t["y"] = pos[:, 1]
    if radec is not None:
        t["ra"], t["dec"] = radec
    if multi:
        for name, value in sizes.items():
            t[name] = value
    for name in ("aperture_sum", "aperture_sum_err", "area"):
        t[name] = shape(cols[name])
    t["sky"] = sky["sky"]
    t["sky_err"] = sky["sky_err"]
    for name in ("flux", "flux_err", "mag", "mag_err"):
        t[name] = shape(cols[name])
    t["flags"] = shape(flags) if multi else np.bitwise_or.reduce(flags, axis=1)
    t["n_sky"] = sky["n_sky"]
    t["sky_std"] = sky["sky_std"]
    return t


def _pixel_variance(data, error, gain, read_noise):
    """Per-pixel variance (counts², shape of ``data``) to sum in the apertures, or None.

    From an ``error`` image, else from the CCD equation when ``gain`` is given; a scalar error
    needs none (see :func:`_sum_error`).
    """
    if error is not None:
        e = np.asarray(error, dtype=float)
        if e.ndim not in (0, 2, 3):
            raise ValueError(f"error must be a scalar or an image; got shape {e.shape}")
        if e.ndim > 0 and e.shape[-2:] != data.shape[-2:]:
            raise ValueError(f"error must have the shape of data {data.shape}; got {e.shape}")
        with np.errstate(invalid="ignore"):
            n_neg = int(np.count_nonzero(e < 0))
        if n_neg:  # a sign error: sigma**2 would hide it
            raise ValueError(f"error must be a 1-sigma value or map >= 0 (counts); it is negative "
                             f"on {n_neg} pixel(s)")
        return np.broadcast_to(e**2, data.shape) if e.ndim > 0 else None
    if read_noise is not None and not float(read_noise) >= 0:
        raise ValueError(f"read_noise must be >= 0 electrons, got {read_noise}")
    if gain is not None:
        rn = 0.0 if read_noise is None else float(read_noise)
        return np.maximum(np.asarray(data, dtype=float), 0.0) / gain + (rn / gain) ** 2
    if read_noise is not None:
        raise ValueError("read_noise needs gain (e-/ADU) to convert to counts")
    return None


def _sum_error(core, invalid, asum, ex, error, gain, variance):
    """1-sigma error of the aperture sums (shape of ``asum``; NaN without any noise model)."""
    scalar_err = error is not None and np.ndim(error) == 0
    if variance is None and not scalar_err:
        return np.full_like(asum, np.nan)
    # a scalar error needs no per-pixel gather: Σ w σ² = σ² · area
    var = core["sum_var"] if not scalar_err else float(error) ** 2 * ex(core["area"])
    if error is not None and gain is not None:
        var = var + np.maximum(asum, 0.0) / gain  # source Poisson term on top of the error map
    return np.sqrt(np.where(ex(invalid), np.nan, var))


def _annulus_sky(core, cube: bool, flags) -> dict:
    """Annulus sky per pixel and its error ((N,) or (N, T)); sets the sky flags in ``flags``.

    Returns ``sky, sky_err, n_sky, sky_std`` and ``sky_b, skyerr_b``: sky and error broadcast
    against the (N, R[, T]) aperture sums.
    """
    skyv = core["sky"]
    n_sky = core["n_sky"]
    sky_std = core["sky_std"]
    sky_empty = (n_sky == 0) if not cube else np.all(n_sky == 0, axis=-1)
    flags |= np.where(sky_empty, int(ApertureFlag.SKY_EMPTY), 0)[:, None]
    sky_trunc = (core["sky_off_n"] > 0) & ~sky_empty
    flags |= np.where(sky_trunc, int(ApertureFlag.SKY_TRUNCATED), 0)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        sky_err = sky_std / np.sqrt(n_sky)
    skyv = np.where(n_sky > 0, skyv, np.nan)
    sky_err = np.where(n_sky > 0, sky_err, np.nan)
    sky_b = skyv[:, None] if not cube else skyv[:, None, :]
    skyerr_b = sky_err[:, None] if not cube else sky_err[:, None, :]
    return dict(sky=skyv, sky_err=sky_err, n_sky=n_sky, sky_std=sky_std, sky_b=sky_b,
                skyerr_b=skyerr_b)  # fmt: skip


def aperture_light_curves(cube, positions, r, **kwargs) -> dict[str, np.ndarray]:
    """Light curves from a (T, H, W) cube in one batched call.

    Parameters
    ----------
    cube : array_like, shape (T, H, W)
        Image stack (e.g. TESS FFI cut-outs or target-pixel ``FLUX``).
    positions : array_like, shape (N, 2)
        ``(x, y)`` 0-based pixel coordinates (fixed over time).
    r : float or array (N,)
        Aperture radius in pixels.
    **kwargs
        As for :func:`aperture_photometry`.

    Returns
    -------
    dict
        ``flux, flux_err, sky, aperture_sum, mag`` as (T, N) arrays and ``flags`` (N,).
    """
    c = np.asarray(cube)
    if c.ndim != 3:
        raise ValueError(f"cube must have shape (T, H, W); got {c.shape}")
    t = aperture_photometry(c, positions, r, **kwargs)
    out = {k: np.asarray(t[k]).T for k in ("flux", "flux_err", "sky", "aperture_sum", "mag")}
    out["flags"] = np.asarray(t["flags"])
    return out
