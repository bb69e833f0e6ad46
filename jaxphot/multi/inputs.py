"""The inputs of a multi-image measurement: exposures, per-image maps, transforms and the catalogue.

Each exposure becomes an :class:`Exposure`: its pixels (or the reason it could not be read),
header, WCS and observation time. A corrupt file is an exposure with an ``error`` message, never
an exception, so one bad file cannot stop the others.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from astropy.table import Table

from ..io import read_image
from ..validate import check_psf

__all__ = ["Exposure", "exposure_list", "load_exposures", "per_image", "PerImage", "per_image_inputs",
           "catalog_positions", "image_positions", "header_mjd", "BadImageWarning", "warn_bad"]


class BadImageWarning(UserWarning):
    """An exposure could not be used (unreadable file, no WCS); its rows are NaN and flagged."""


@dataclasses.dataclass
class Exposure:
    """One image of a multi-image measurement.

    ``data`` is (H, W) float or None when the exposure is unusable (``error`` says why);
    ``wcs`` is its celestial WCS from the header, if any; ``mjd`` its MJD (NaN when unknown).
    """

    data: np.ndarray | None
    header: object | None = None
    wcs: object | None = None
    mjd: float = np.nan
    name: str = ""
    error: str | None = None


def header_mjd(header) -> float:
    """MJD of an exposure from ``MJD-OBS`` or ``DATE-OBS`` (NaN when neither is usable)."""
    if header is None:
        return np.nan
    try:
        v = header.get("MJD-OBS")
        if v is not None and np.isfinite(float(v)):
            return float(v)
        d = header.get("DATE-OBS")
        if d:
            from astropy.time import Time

            return float(Time(str(d), scale="utc").mjd)
    except Exception:  # a malformed date is not worth losing the photometry for
        pass
    return np.nan


def _from_path(path) -> Exposure:
    try:
        img = read_image(path)
    except Exception as exc:  # noqa: BLE001  (any unreadable file becomes a flagged exposure)
        return Exposure(None, name=str(path), error=f"{type(exc).__name__}: {exc}")
    return Exposure(img.data, img.header, img.wcs, header_mjd(img.header), str(path))


def exposure_list(images) -> list:
    """The exposures as a list of entries (2-D arrays and/or paths), nothing read yet.

    ``images`` is one path or 2-D array, a (T, H, W) cube, or a sequence of them.

    Raises
    ------
    ValueError
        If ``images`` is empty or an array that is neither 2-D nor 3-D.
    """
    if isinstance(images, (str, Path)):
        images = [images]
    if isinstance(images, np.ndarray):
        if images.ndim == 2:
            images = images[None]
        if images.ndim != 3:
            raise ValueError(f"images must be a (T, H, W) cube or a list of 2-D images, got shape "
                             f"{images.shape}")
    images = list(images)
    if not images:
        raise ValueError("images is empty: give at least one image")
    return images


def load_exposures(images) -> list[Exposure]:
    """Exposures from a (T, H, W) cube, a list of 2-D arrays and/or FITS paths, or one path/array.

    Raises
    ------
    ValueError
        If ``images`` is empty or an in-memory entry is not a 2-D numeric array.
    """
    images = exposure_list(images)
    out = []
    for i, im in enumerate(images):
        if isinstance(im, (str, Path)):
            out.append(_from_path(im))
            continue
        a = np.asarray(im)
        if a.ndim != 2 or a.dtype.kind not in "fiub" or min(a.shape) == 0:
            raise ValueError(f"images[{i}] must be a non-empty 2-D numeric array or a FITS path, "
                             f"got shape {a.shape} and dtype {a.dtype}")
        if a.dtype.kind == "f" and a.dtype.itemsize >= 4:
            # float32 stays float32 (native byte order): a (T, H, W) stack is not doubled in memory
            data = a.astype(a.dtype.newbyteorder("="), copy=False)
        else:
            data = np.asarray(a, np.float64)
        out.append(Exposure(data, name=f"images[{i}]"))
    return out


def per_image(name: str, value, n: int, *, is_single: Callable[[object], bool]) -> list:
    """``value`` as a list of ``n`` per-image entries: one shared entry or a list of ``n``.

    ``is_single(value)`` tells one entry from a list of them (e.g. a 2-D array from a cube).
    """
    if value is None or is_single(value):
        return [value] * n
    items = list(value)
    if len(items) != n:
        raise ValueError(f"{name} has {len(items)} entries for {n} images: give one {name} for all "
                         f"images or exactly one per image")
    return items


@dataclasses.dataclass(frozen=True)
class PerImage:
    """The per-exposure options of a multi-image call, each a list of T entries."""

    psfs: list
    transforms: list
    errors: list
    masks: list
    gains: list
    noises: list


def per_image_inputs(n: int, *, psf, wcs=None, error=None, mask=None, gain=None,
                     read_noise=None) -> PerImage:
    """The options of :func:`~jaxphot.forced_photometry` and its kin as T-entry lists.

    Each option is one value for every exposure or a list/tuple of ``n``; a PSF may be a spec
    string. Maps (``error``, ``mask``) are shared when scalar or 2-D, per image when a list.

    Raises
    ------
    ValueError
        For a list of the wrong length, or an unusable PSF (named ``psf[i]`` in a list).
    """
    listy = lambda v: isinstance(v, (list, tuple))  # noqa: E731
    one_map = lambda v: not listy(v) and np.ndim(v) in (0, 2)  # noqa: E731
    scalar = lambda v: np.ndim(v) == 0  # noqa: E731
    psfs = per_image("psf", psf, n, is_single=lambda v: not listy(v))
    return PerImage(
        psfs=[check_psf(p, f"psf[{i}]" if listy(psf) else "psf") for i, p in enumerate(psfs)],
        transforms=per_image("wcs", wcs, n, is_single=lambda v: not listy(v)),
        errors=per_image("error", error, n, is_single=one_map),
        masks=per_image("mask", mask, n, is_single=one_map),
        gains=per_image("gain", gain, n, is_single=scalar),
        noises=per_image("read_noise", read_noise, n, is_single=scalar),
    )


def _column(catalog: Table, *names):
    for nm in names:
        if nm in catalog.colnames:
            return np.asarray(catalog[nm], np.float64)
    return None


def catalog_positions(catalog) -> dict:
    """``{"ra", "dec", "x", "y", "flux", "star_id"}`` arrays from the master catalogue (None if absent).

    Raises
    ------
    TypeError
        If ``catalog`` is not a table.
    ValueError
        If it has neither ``ra, dec`` nor ``x, y`` columns, or no row with finite coordinates.
    """
    if not isinstance(catalog, Table):
        try:
            catalog = Table(catalog)
        except Exception as exc:
            raise TypeError(f"catalog must be an astropy Table (or convertible), got "
                            f"{type(catalog).__name__}") from exc
    ra, dec = _column(catalog, "ra", "RA"), _column(catalog, "dec", "DEC", "Dec")
    x = _column(catalog, "x", "x_fit", "x_0", "xcentroid")
    y = _column(catalog, "y", "y_fit", "y_0", "ycentroid")
    if (ra is None or dec is None) and (x is None or y is None):
        raise ValueError(f"catalog must have ra, dec (degrees) or x, y (pixels of the first image) "
                         f"columns, got {catalog.colnames}")
    n = len(catalog)
    usable = np.zeros(n, bool)
    if ra is not None and dec is not None:
        usable |= np.isfinite(ra) & np.isfinite(dec)
    if x is not None and y is not None:
        usable |= np.isfinite(x) & np.isfinite(y)
    if not usable.any():
        raise ValueError(f"catalog has no usable rows: none of its {n} rows has finite coordinates")
    ids = catalog["star_id"] if "star_id" in catalog.colnames else (
        catalog["id"] if "id" in catalog.colnames else np.arange(n))
    return {"ra": ra, "dec": dec, "x": x, "y": y,
            "flux": _column(catalog, "flux", "flux_fit", "flux_init"),
            "star_id": np.asarray(ids)}


def _is_wcs(w) -> bool:
    return hasattr(w, "world_to_pixel") and hasattr(w, "pixel_to_world")


def _apply_transform(t, x, y):
    """Pixel positions under a user transform: a callable ``(x, y) -> (x', y')`` or a (2, 3) affine."""
    if callable(t):
        u, v = t(x, y)
        return np.asarray(u, np.float64), np.asarray(v, np.float64)
    m = np.asarray(t, np.float64)
    if m.shape not in ((2, 3), (3, 3)):
        raise ValueError(f"a pixel transform in wcs must be a WCS, a callable (x, y) -> (x', y') "
                         f"or a (2, 3) affine matrix, got shape {m.shape}")
    return m[0, 0] * x + m[0, 1] * y + m[0, 2], m[1, 0] * x + m[1, 1] * y + m[1, 2]


def _sky_to_pixel(w, ra, dec):
    from astropy.coordinates import SkyCoord

    ok = np.isfinite(ra) & np.isfinite(dec)
    x = np.full(ra.shape, np.nan)
    y = np.full(ra.shape, np.nan)
    if ok.any():
        px, py = w.world_to_pixel(SkyCoord(ra[ok], dec[ok], unit="deg"))
        x[ok], y[ok] = px, py
    return x, y


def image_positions(cat: dict, transforms: Sequence, exposures: Sequence[Exposure]) -> list:
    """Per exposure, the (N,) pixel positions of the catalogue stars, or a string: why there are none.

    Each entry of ``transforms`` is a WCS (astropy), a pixel transform from the first image's
    pixels (callable or (2, 3) affine), or None (then the header's WCS, or with ``x, y`` in the
    catalogue and no WCS anywhere, the identity: the images are registered).

    Raises
    ------
    ValueError
        If no exposure can place the catalogue: sky positions only and no WCS anywhere.
    """
    wcss = [t if _is_wcs(t) else (e.wcs if t is None else None)
            for t, e in zip(transforms, exposures, strict=True)]
    have_pix = cat["x"] is not None and cat["y"] is not None
    any_wcs = any(w is not None for w in wcss)
    any_transform = any(t is not None and not _is_wcs(t) for t in transforms)
    if not have_pix and not any_wcs:
        raise ValueError("wcs: the catalog gives only ra, dec but no image has a WCS (header or "
                         "the wcs argument); give wcs=, or x, y columns with a pixel transform")
    ra, dec = cat["ra"], cat["dec"]
    if have_pix and wcss[0] is not None:  # fill rows without sky positions from the first image
        sky = wcss[0].pixel_to_world(cat["x"], cat["y"])
        r0, d0 = sky.icrs.ra.deg, sky.icrs.dec.deg
        ra = r0 if ra is None else np.where(np.isfinite(ra), ra, r0)
        dec = d0 if dec is None else np.where(np.isfinite(dec), dec, d0)
    out = []
    for t, w, e in zip(transforms, wcss, exposures, strict=True):
        if e.error is not None:
            out.append(e.error)
        elif t is not None and not _is_wcs(t):
            if not have_pix:
                raise ValueError("wcs: a pixel transform needs x, y columns in the catalog")
            out.append(_apply_transform(t, cat["x"], cat["y"]))
        elif w is not None and ra is not None:
            out.append(_sky_to_pixel(w, ra, dec))
        elif have_pix and not any_wcs and not any_transform:
            out.append((cat["x"].copy(), cat["y"].copy()))
        else:
            out.append("no WCS and no pixel transform for this image")
    return out


def warn_bad(name: str, why: str) -> None:
    """Warn that exposure ``name`` is skipped (its rows NaN and flagged) and why."""
    warnings.warn(f"{name}: {why}; its rows are NaN and flagged", BadImageWarning, stacklevel=3)
