"""FITS input with clear errors, detector keywords, WCS -> (ra, dec), and catalog output.

Every reader raises :class:`ValueError` with a one-line message that names the file and the
problem (unreadable file, missing HDU, no image data...), so that the command line can print
it without a traceback.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from pathlib import Path

import numpy as np
from astropy.table import Table

__all__ = [
    "FitsImage",
    "ImageInfo",
    "read_image",
    "image_info",
    "hdu_key",
    "HeaderValue",
    "read_header_value",
    "header_gain",
    "header_read_noise",
    "header_saturation",
    "celestial_wcs",
    "pixel_to_radec",
    "write_catalog",
    "write_image",
]

_GAIN_KEYS = ("GAIN", "CCDGAIN", "EGAIN", "ATODGAIN")
_RDNOISE_KEYS = ("RDNOISE", "READNOIS", "RON", "READNOISE")
_SATURATE_KEYS = ("SATURATE", "SATLEVEL", "MAXLIN")
_EXPTIME_KEYS = ("EXPTIME", "ETIMEAVE")
_CATALOG_FORMATS = {
    ".ecsv": "ascii.ecsv",
    ".fits": "fits",
    ".fit": "fits",
    ".fts": "fits",
    ".csv": "ascii.csv",
}


class _HeaderKeywords:
    """Detector keywords of an image's header (shared by :class:`FitsImage` and :class:`ImageInfo`)."""

    header: object

    @property
    def gain(self) -> float | None:
        """Electrons per image unit from the header (see :func:`header_gain`)."""
        return header_gain(self.header, path=self.path)

    @property
    def read_noise(self) -> float | None:
        """Read noise in electrons from the header (see :func:`header_read_noise`)."""
        return header_read_noise(self.header, path=self.path)

    @property
    def saturation(self) -> float | None:
        """Saturation level in image units from the header (see :func:`header_saturation`)."""
        return header_saturation(self.header, path=self.path)

    def header_value(self, quantity: str) -> HeaderValue:
        """:func:`read_header_value` of this image's header (warnings name its file)."""
        return read_header_value(self.header, quantity, path=self.path)

    @property
    def bunit(self) -> str | None:
        """The header's BUNIT (unit of the pixel values), or None."""
        v = self.header.get("BUNIT") if self.header is not None else None
        return str(v).strip() if v else None


@dataclasses.dataclass
class FitsImage(_HeaderKeywords):
    """An image (or a section of one) read by :func:`read_image`.

    Attributes
    ----------
    data : (H, W) float64 ndarray
        Pixel values (BSCALE/BZERO applied), in the image's units.
    header : astropy.io.fits.Header
        The HDU's header.
    wcs : astropy.wcs.WCS or None
        Celestial WCS of the whole image when the header has one (pixel positions of a
        section are offset by the section's start).
    path : Path
    hdu : int or str
        The HDU that was read.
    """

    data: np.ndarray
    header: object
    wcs: object
    path: Path
    hdu: int | str


@dataclasses.dataclass
class ImageInfo(_HeaderKeywords):
    """Shape and header of a FITS image, read without its pixels (see :func:`image_info`).

    Attributes
    ----------
    shape : (int, int)
        (H, W) in pixels.
    header : astropy.io.fits.Header
    wcs : astropy.wcs.WCS or None
    path : Path
    hdu : int or str
        The HDU found; pass it to :func:`read_image` to read sections of the same image.
    """

    shape: tuple[int, int]
    header: object
    wcs: object
    path: Path
    hdu: int | str


def hdu_key(hdu):
    """An HDU given on the command line: ``'1'`` is the index 1, other strings are EXTNAMEs."""
    if isinstance(hdu, str) and hdu.lstrip("-").isdigit():
        return int(hdu)
    return hdu


def _open_fits(path: Path, what: str, memmap: bool):
    """``fits.open`` with one-line errors; the caller closes the HDU list."""
    from astropy.io import fits

    if not path.exists():
        raise ValueError(f"{what} file {str(path)!r} does not exist")
    try:
        with warnings.catch_warnings():  # junk files warn before they fail: just fail
            warnings.simplefilter("ignore")
            hdul = fits.open(path, memmap=memmap)
            try:
                hdul.verify("silentfix")
            except Exception:
                hdul.close()
                raise
    except Exception as exc:  # astropy raises OSError, TypeError, ValueError... on junk
        raise ValueError(f"cannot read {what} {str(path)!r} as FITS: {exc}") from None
    return hdul


def _has_pixels(h) -> bool:
    # From the header only: finding the HDU must not read any HDU's pixels.
    return bool(getattr(h, "is_image", False) and len(h.shape) >= 2 and all(h.shape))


def _find_hdu(hdul, hdu, path: Path, what: str) -> int | str:
    """The index or EXTNAME of the HDU to read: ``hdu``, or the first with 2-D image data."""
    if hdu is None:
        idx = next((i for i, h in enumerate(hdul) if _has_pixels(h)), None)
        if idx is None:
            raise ValueError(f"{what} {str(path)!r} has no HDU with 2-D image data")
        return idx
    idx = hdu_key(hdu)
    try:
        hdul[idx]
    except (KeyError, IndexError):
        raise ValueError(
            f"{what} {str(path)!r} has no HDU {idx!r} (it has {len(hdul)} HDU"
            f"{'s' if len(hdul) != 1 else ''}: "
            f"{', '.join(str(i) + ':' + (h.name or '?') for i, h in enumerate(hdul))})"
        ) from None
    return idx


def _plane_shape(h, idx, path: Path, what: str) -> tuple[int, int]:
    """(H, W) of a 2-D image HDU (leading axes of length 1 allowed), from its header alone."""
    shape = tuple(int(s) for s in h.shape) if getattr(h, "is_image", False) else ()
    if not shape:
        raise ValueError(f"HDU {idx!r} of {what} {str(path)!r} holds no image data")
    if len(shape) < 2 or any(s != 1 for s in shape[:-2]):
        raise ValueError(f"HDU {idx!r} of {what} {str(path)!r} is not a 2-D image (shape {shape})")
    return shape[-2], shape[-1]


def _why_unreadable(h, path: Path, exc: Exception) -> str:
    """The reason an HDU's data cannot be read, in the user's words: a file cut short (its size
    against what the header promises), else the reader's own message."""
    try:
        need = abs(int(h.header.get("BITPIX", 0))) // 8 * int(np.prod(h.shape))
        have = path.stat().st_size - int(h.fileinfo()["datLoc"])
    except Exception:  # the header gives no size: fall back to the reader's words
        return str(exc)
    if 0 <= have < need:
        return (f"the file is truncated ({have} of the {need} data bytes its header announces "
                f"for a {'x'.join(str(s) for s in h.shape[::-1])} image)")
    return str(exc)


def _read_pixels(h, idx, path: Path, what: str, section) -> np.ndarray:
    """All of the HDU's data, or only ``section`` (read from the file, not the whole image)."""
    if section is not None:
        _plane_shape(h, idx, path, what)  # a section of a 2-D image only
    try:
        if section is None:
            data = h.data
        else:
            data = h.section[(0,) * (len(h.shape) - 2) + tuple(section)]
    except Exception as exc:
        raise ValueError(f"cannot read the data of HDU {idx!r} of {what} {str(path)!r}: "
                         f"{_why_unreadable(h, path, exc)}") from None
    if data is None:
        raise ValueError(f"HDU {idx!r} of {what} {str(path)!r} holds no image data")
    return np.asarray(data)


def read_image(
    path,
    hdu: int | str | None = None,
    *,
    what: str = "image",
    cube: bool = False,
    section: tuple[slice, slice] | None = None,
) -> FitsImage:
    """Read a 2-D image, a section of it, or (``cube=True``) an (N, H, W) stack from a FITS file.

    This is the package's one FITS image reader: images, tiles of large images, error maps,
    masks and PSF files all come through it, so every file gets the same checks and the same
    messages. :func:`image_info` gives the shape and header without the pixels.

    Parameters
    ----------
    path : str or Path
        The FITS file.
    hdu : int or str, optional
        HDU index or EXTNAME. Default: the first HDU with 2-D image data.
    what : str
        Word used in error messages ("image", "error map", "mask"...).
    cube : bool
        Accept 3-D data as it is (PSF grids); otherwise a 3-D HDU is accepted only with one plane.
    section : (slice, slice), optional
        Rows and columns (0-based pixels, ``(slice(y0, y1), slice(x0, x1))``) to read: only
        they are read from the (memory-mapped) file, never the whole image.

    Returns
    -------
    FitsImage

    Raises
    ------
    ValueError
        If the file is missing or not FITS, the HDU does not exist, or it holds no 2-D
        image (a 3-D cube with one plane is accepted).
    """
    path = Path(path)
    with _open_fits(path, what, memmap=section is not None) as hdul:
        idx = _find_hdu(hdul, hdu, path, what)
        h = hdul[idx]
        data = _read_pixels(h, idx, path, what, section)
        if data.ndim > 2 and all(s == 1 for s in data.shape[:-2]):
            data = data.reshape(data.shape[-2:])
        if data.ndim not in ((2, 3) if cube else (2,)) or data.dtype.kind not in "fiub":
            raise ValueError(
                f"HDU {idx!r} of {what} {str(path)!r} is not a 2-D image "
                f"(shape {data.shape}, dtype {data.dtype})"
            )
        header = h.header.copy()
        # A copy: a section may be a view of the memory-mapped file, which is closed here.
        data = np.array(data, np.float64) if section is not None else np.asarray(data, np.float64)
    return FitsImage(data, header, celestial_wcs(header), path, idx)


def image_info(path, hdu: int | str | None = None, *, what: str = "image") -> ImageInfo:
    """Shape and header of a 2-D FITS image, without reading its pixels.

    Finds the HDU as :func:`read_image` does, with the same checks and messages; read the
    image by sections with ``read_image(path, info.hdu, section=...)``.

    Returns
    -------
    ImageInfo

    Raises
    ------
    ValueError
        As :func:`read_image`.
    """
    path = Path(path)
    with _open_fits(path, what, memmap=True) as hdul:
        idx = _find_hdu(hdul, hdu, path, what)
        h = hdul[idx]
        shape = _plane_shape(h, idx, path, what)
        header = h.header.copy()
    return ImageInfo(shape, header, celestial_wcs(header), path, idx)


# Unit words of keyword comments: electrons, and data numbers (ADU, DN, counts).
_ELECTRON_RE = re.compile(r"(?<![a-z])(e-?|el|electrons?|e\^?-)(?![a-z])")
_ADU_RE = re.compile(r"(?<![a-z])(adus?|dns?|counts?|data\s*numbers?)(?![a-z])")
_PER_RE = re.compile(r"/|\bper\b")


@dataclasses.dataclass(frozen=True)
class HeaderValue:
    """A detector quantity read from a header by :func:`read_header_value`.

    Attributes
    ----------
    value : float or None
        In the quantity's documented unit (``unit``); None when the header has no usable value.
    unit : str
        ``"e-/ADU"`` (gain: electrons per image unit), ``"e-"`` (read noise), ``"image units"``
        (saturation) or ``"s"`` (exposure time).
    source : str
        Where it came from, e.g. ``"header RDNOISE (ADU, x gain 2)"``; ``"none"`` when absent.
    keyword : str or None
        The keyword used.
    """

    value: float | None
    unit: str
    source: str
    keyword: str | None = None


_QUANTITIES = {
    # quantity: (keywords, unit, smallest accepted value is > 0 (True) or >= 0 (False))
    "gain": (_GAIN_KEYS, "e-/ADU", True),
    "read_noise": (_RDNOISE_KEYS, "e-", False),
    "saturation": (_SATURATE_KEYS, "image units", True),
    "exptime": (_EXPTIME_KEYS, "s", True),
}


def _comment_unit(comment: str) -> str | None:
    """``"e"``, ``"adu"``, ``"e/adu"`` or ``"adu/e"`` from a keyword comment; None if silent."""
    c = comment.lower()
    e = _ELECTRON_RE.search(c)
    d = _ADU_RE.search(c)
    if e and d:
        lo, hi = sorted((e, d), key=lambda m: m.start())
        if _PER_RE.search(c, lo.end(), hi.start()):
            return "e/adu" if lo is e else "adu/e"
        return "e"  # both words, no ratio ("e- rms, in ADU units..."): electrons win
    if e:
        return "e"
    if d:
        return "adu"
    return None


def _warn_ignored(path, key, raw, why, default) -> None:
    where = f"{str(path)!r}: " if path is not None else ""
    warnings.warn(
        f"{where}header keyword {key} = {raw!r} {why}; ignored, using {default}",
        UserWarning,
        stacklevel=3,
    )


_DEFAULTS = {
    "gain": "no gain (sky-rms weights)",
    "read_noise": "no read noise",
    "saturation": "no saturation level",
    "exptime": "no exposure time",
}


def read_header_value(header, quantity: str, *, path=None) -> HeaderValue:
    """One detector quantity of a header, with its unit taken from the keyword comment.

    Parameters
    ----------
    header : astropy.io.fits.Header, dict or None
    quantity : {"gain", "read_noise", "saturation", "exptime"}
        ``gain``: GAIN, CCDGAIN, EGAIN or ATODGAIN, returned in e-/ADU; a comment saying
        ADU/e- (or DN/e-, counts/electron) is inverted. ``read_noise``: RDNOISE, READNOIS,
        RON or READNOISE, returned in e-; a comment in ADU/DN/counts is multiplied by the
        header's gain (RDNOISE = 1.8 / ADU with GAIN = 2 -> 3.6 e-). ``saturation``:
        SATURATE, SATLEVEL or MAXLIN, returned in image units; a comment in electrons is
        divided by the gain. ``exptime``: EXPTIME or ETIMEAVE, seconds. A comment without a
        unit means the default: e-/ADU, e-, image units, s.
    path : str or Path, optional
        The file, named in warnings.

    Returns
    -------
    HeaderValue
        ``value`` None when no keyword holds a usable value.

    Warns
    -----
    UserWarning
        For a keyword that is present but not a finite number in range (``GAIN = -2``,
        ``RDNOISE = 'abc'``), naming the keyword and the file; the next keyword is tried,
        else the default (none) is used. Also for a value in electrons or ADU that needs a
        gain the header does not give.
    """
    if quantity not in _QUANTITIES:
        raise ValueError(f"quantity must be one of {sorted(_QUANTITIES)}, got {quantity!r}")
    keys, unit, strict = _QUANTITIES[quantity]
    none = HeaderValue(None, unit, "none")
    if header is None:
        return none
    for k in keys:
        if k not in header:
            continue
        raw = header[k]
        try:
            v = float(raw)
        except (TypeError, ValueError):
            _warn_ignored(path, k, raw, "is not a number", _DEFAULTS[quantity])
            continue
        if not np.isfinite(v) or (v <= 0 if strict else v < 0):
            sign = "positive" if strict else "non-negative"
            _warn_ignored(path, k, raw, f"is not a finite {sign} number", _DEFAULTS[quantity])
            continue
        comments = getattr(header, "comments", None)
        cu = _comment_unit(str(comments[k])) if comments is not None else None
        return _convert(header, quantity, k, v, cu, unit, path) or none
    return none


def _convert(header, quantity, key, v, cu, unit, path) -> HeaderValue | None:
    """``v`` of keyword ``key`` in the documented unit, given the comment unit ``cu``."""
    if quantity == "gain":
        if cu == "adu/e":
            return HeaderValue(1.0 / v, unit, f"header {key} ({v:g} ADU/e-, inverted)", key)
        return HeaderValue(v, unit, f"header {key}", key)
    if quantity == "read_noise" and cu == "adu" or quantity == "saturation" and cu == "e":
        g = read_header_value(header, "gain", path=path).value
        if g is None:
            have = "ADU" if quantity == "read_noise" else "e-"
            _warn_ignored(path, key, v, f"is in {have} and the header has no usable gain",
                          _DEFAULTS[quantity])
            return None
        if quantity == "read_noise":
            return HeaderValue(v * g, unit, f"header {key} ({v:g} ADU x gain {g:g})", key)
        return HeaderValue(v / g, unit, f"header {key} ({v:g} e- / gain {g:g})", key)
    return HeaderValue(v, unit, f"header {key}", key)


def header_gain(header, *, path=None) -> float | None:
    """Electrons per image unit from the header; None if it has no usable gain keyword.

    GAIN (or CCDGAIN, EGAIN, ATODGAIN) is in electrons per DN unless its comment says ADU/e-
    (:func:`read_header_value`). When the image is flux-calibrated (BUNIT in MJy/sr, as
    Spitzer mosaics) and the header gives FLUXCONV (MJy/sr per DN/s) and EXPTIME (s), the
    gain per image unit is ``GAIN * EXPTIME / FLUXCONV``; a calibrated image without those
    keywords gets None (its GAIN does not apply to its units).
    """
    g = read_header_value(header, "gain", path=path).value
    if g is None:
        return None
    bunit = str(header.get("BUNIT", "")).strip().lower().replace(" ", "")
    if "jy" in bunit:
        conv = _header_positive(header, "FLUXCONV")
        t = read_header_value(header, "exptime", path=path).value
        return g * t / conv if conv and t else None
    return g


def _header_positive(header, key) -> float | None:
    try:
        v = float(header[key]) if key in header else None
    except (TypeError, ValueError):
        return None
    return v if v is not None and np.isfinite(v) and v > 0 else None


def header_read_noise(header, *, path=None) -> float | None:
    """Read noise in electrons from RDNOISE (or READNOIS, RON, READNOISE); None if absent.

    A comment in ADU is converted with the header's gain (:func:`read_header_value`).
    """
    return read_header_value(header, "read_noise", path=path).value


def header_saturation(header, *, path=None) -> float | None:
    """Saturation level in image units from SATURATE (or SATLEVEL, MAXLIN); None if absent.

    A comment in electrons is converted with the header's gain (:func:`read_header_value`).
    """
    return read_header_value(header, "saturation", path=path).value


def celestial_wcs(header):
    """The celestial part of a header's WCS, or None when it has none (or it is broken)."""
    if header is None:
        return None
    try:
        from astropy.wcs import WCS, FITSFixedWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            w = WCS(header, naxis=2)
        if not w.has_celestial:
            return None
        return w.celestial
    except Exception:  # a malformed WCS must not stop photometry
        return None


def pixel_to_radec(wcs, x, y):
    """ICRS (ra, dec) in degrees for 0-based pixel positions; None when ``wcs`` is unusable.

    Works for any celestial frame (e.g. Galactic GLON-CAR mosaics), which is converted to
    ICRS. Non-finite positions give NaN.
    """
    if wcs is None:
        return None
    try:
        from astropy.coordinates import SkyCoord
        from astropy.wcs.utils import pixel_to_skycoord

        x = np.asarray(x, float)
        y = np.asarray(y, float)
        ok = np.isfinite(x) & np.isfinite(y)
        ra = np.full(x.shape, np.nan)
        dec = np.full(x.shape, np.nan)
        if ok.any():
            c = pixel_to_skycoord(x[ok], y[ok], wcs, origin=0)
            c = SkyCoord(c).icrs
            ra[ok], dec[ok] = c.ra.deg, c.dec.deg
        return ra, dec
    except Exception:
        return None


def _atomic(path: Path, overwrite: bool, write) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it onto ``path``: a
    reader never sees half a file, and a failed write leaves the old file intact."""
    import os
    import uuid

    if path.exists() and not overwrite:
        raise OSError(f"{str(path)!r} exists (overwrite=False)")
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_catalog(table: Table, path, *, overwrite: bool = True) -> Path:
    """Write a catalog as ECSV (``.ecsv``), FITS (``.fits``/``.fit``/``.fts``) or CSV.

    Raises
    ------
    ValueError
        For another extension or a path that cannot be written.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _CATALOG_FORMATS:
        raise ValueError(
            f"catalog {str(path)!r}: unknown format {suffix or '(no extension)'}; use .ecsv, "
            ".fits or .csv"
        )
    t = table.copy(copy_data=False)
    fmt = _CATALOG_FORMATS[suffix]
    if fmt == "fits":
        # FITS headers hold only scalars: keep the simple meta, drop nested structures.
        t.meta = {
            k[:8].upper(): v
            for k, v in t.meta.items()
            if isinstance(v, (int, float, str, bool, np.integer, np.floating))
        }
    try:
        _atomic(path, overwrite, lambda tmp: t.write(tmp, format=fmt, overwrite=True))
    except OSError as exc:
        raise ValueError(f"cannot write catalog {str(path)!r}: {exc}") from None
    return path


def write_image(path, data, header=None, *, overwrite: bool = True) -> Path:
    """Write an image (e.g. the residual) as a FITS primary HDU, keeping ``header``'s WCS."""
    from astropy.io import fits

    path = Path(path)
    hdr = fits.Header()
    if header is not None:
        for card in header.cards:
            if card.keyword in (
                "SIMPLE",
                "BITPIX",
                "NAXIS",
                "NAXIS1",
                "NAXIS2",
                "EXTEND",
                "BSCALE",
                "BZERO",
                "XTENSION",
                "PCOUNT",
                "GCOUNT",
            ):
                continue
            try:
                hdr.append(card)
            except Exception:  # skip cards astropy refuses to copy
                continue
    try:
        hdu = fits.PrimaryHDU(np.asarray(data, np.float32), header=hdr)
        _atomic(path, overwrite, lambda tmp: hdu.writeto(tmp, overwrite=True))
    except OSError as exc:
        raise ValueError(f"cannot write image {str(path)!r}: {exc}") from None
    return path
