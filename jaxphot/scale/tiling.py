"""Photometry of an image too large for memory, tile by tile: :func:`photometry_tiled`.

The image is split into tiles whose *cores* partition it; each tile is fitted with a margin
(``overlap``) on every side, so that a star in a core is fitted with all the neighbours that
affect it, and only the stars whose fitted position lies in the core are kept. A star on a
seam can still be kept by two tiles (fitted a hair on either side of the boundary): of such
pairs closer than ``merge_sep`` the copy deeper inside its tile is kept. Tiles of a FITS file
are read by section (:class:`FitsSections`), never the whole image, so memory is bounded by a
tile.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import numpy as np
from astropy.table import Table, vstack

from ..io import image_info, pixel_to_radec, read_image

__all__ = [
    "MIN_TILE",
    "FitsSections",
    "auto_tile_size",
    "default_overlap",
    "photometry_tiled",
    "drop_seam_duplicates",
]

# Peak bytes per image pixel of photometry(): ~10 float64 maps (image, level, rms, data,
# model, residual, detection filter...) plus masks and temporaries.
_BYTES_PER_PIXEL = 160
MIN_TILE = 128  # px: smaller cores would be mostly margin


class FitsSections:
    """A FITS image read tile by tile: ``shape`` and ``read(y0, y1, x0, x1)``.

    Parameters
    ----------
    path : path
        The FITS file.
    hdu : int or str, optional
        As :func:`jaxphot.io.read_image`. The header is read here (and bad files fail here,
        into ``info``: :class:`jaxphot.io.ImageInfo`); pixels only by :meth:`read`, one
        section at a time.
    """

    def __init__(self, path, hdu=None):
        self.info = image_info(path, hdu)
        self.shape = self.info.shape

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels ``[y0:y1, x0:x1]`` (float64, image units)."""
        section = (slice(y0, y1), slice(x0, x1))
        return read_image(self.info.path, self.info.hdu, section=section).data


def auto_tile_size(shape: tuple[int, int], overlap: int, memory_limit: int | None) -> int | None:
    """Tile core size (px) that fits half of ``memory_limit`` (bytes); None when not needed."""
    if not memory_limit:
        return None
    budget_px = 0.5 * memory_limit / _BYTES_PER_PIXEL
    if shape[0] * shape[1] <= budget_px:
        return None
    return max(MIN_TILE, int(math.sqrt(budget_px)) - 2 * overlap)


def default_overlap(psf, photometry_kwargs: Mapping | None = None) -> int:
    """Tile margin (px): a star's group, fitting box and PSF wings fit inside it.

    ``2 * fit_half + crit_sep + 3 * fwhm``, rounded up, so that a star in a tile's core is
    fitted with all the neighbours that affect it.
    """
    from ..psf import psf_fwhm

    kw = dict(photometry_kwargs or {})
    fwhm = psf_fwhm(psf)
    fh = kw.get("fit_half") or max(3, math.ceil(1.5 * fwhm))
    csep = kw.get("crit_sep") or 2.0 * fwhm
    return int(math.ceil(2 * fh + csep + 3 * fwhm))


def _tiles(shape, core: int, overlap: int) -> Iterator[tuple[tuple, tuple]]:
    """(core box, extended box) pairs; boxes are (y0, y1, x0, x1), cores partition the image."""
    h, w = shape
    ny, nx = max(1, math.ceil(h / core)), max(1, math.ceil(w / core))
    ys = np.linspace(0, h, ny + 1).round().astype(int)
    xs = np.linspace(0, w, nx + 1).round().astype(int)
    for j in range(ny):
        for i in range(nx):
            c = (ys[j], ys[j + 1], xs[i], xs[i + 1])
            e = (
                max(0, c[0] - overlap),
                min(h, c[1] + overlap),
                max(0, c[2] - overlap),
                min(w, c[3] + overlap),
            )
            yield c, e


def _reader(source):
    """``(shape, read(y0, y1, x0, x1))`` of an array or of a reader such as :class:`FitsSections`."""
    if not isinstance(source, np.ndarray) and hasattr(source, "read"):
        return tuple(source.shape), source.read
    arr = np.asarray(source, np.float64)
    if arr.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {arr.shape}")
    return arr.shape, lambda y0, y1, x0, x1: arr[y0:y1, x0:x1]


def _positions(cat: Table):
    """Fitted positions, falling back to the initial ones where the fit failed (NaN)."""
    x = np.asarray(cat["x_fit"], float)
    y = np.asarray(cat["y_fit"], float)
    bad = ~(np.isfinite(x) & np.isfinite(y))
    x = np.where(bad, np.asarray(cat["x_init"], float), x)
    y = np.where(bad, np.asarray(cat["y_init"], float), y)
    return x, y


def shift_psf(psf, x0: float, y0: float):
    """A varying PSF re-expressed in the pixels of a tile whose origin is image pixel (x0, y0).

    A PolynomialPSF's centre and a GriddedPSF's nodes move by (-x0, -y0), so a star at tile pixel
    (x, y) gets the PSF of image pixel (x + x0, y + y0); any other PSF is returned unchanged.
    """
    from ..psf import GriddedPSF, PolynomialPSF

    if isinstance(psf, PolynomialPSF):
        (cx, cy) = psf.center
        return PolynomialPSF(psf.arrays, psf.oversampling, psf.degree, (cx - x0, cy - y0),
                             psf.scale, psf.integrated, psf.kernel, psf.norm)
    if isinstance(psf, GriddedPSF):
        nrm = psf.norm if isinstance(psf.norm, float) else np.asarray(psf.norm)
        return GriddedPSF(psf.arrays, np.asarray(psf.grid_x) - x0, np.asarray(psf.grid_y) - y0,
                          psf.oversampling, psf.integrated, psf.kernel, nrm, psf.extrapolate)
    return psf


def _fit_tile(read, ext, psf, photometry_kwargs) -> Table | None:
    """The catalog of one extended tile, positions in tile pixels; None for a tile without stars."""
    import warnings

    from ..image.pipeline import photometry
    from ..psf.measure import PSFCoverageWarning

    y0, y1, x0, x1 = ext
    try:
        with warnings.catch_warnings():
            # a tile sees only part of the field's PSF domain: that is expected here
            warnings.simplefilter("ignore", PSFCoverageWarning)
            return photometry(read(y0, y1, x0, x1), shift_psf(psf, x0, y0), **photometry_kwargs)
    except ValueError as exc:
        if "no usable pixel" in str(exc) or "smaller than" in str(exc):
            return None  # an empty (all-NaN) or sliver tile contributes no stars
        raise


def _owned(cat: Table, core, shape) -> np.ndarray:
    """Stars (whole-image positions) whose position lies in the tile's core."""
    # Half-open pixel-edge intervals; edge tiles extend to infinity so that stars fitted just
    # outside the image are kept once.
    h, w = shape
    xs, ys = _positions(cat)
    cy0, cy1, cx0, cx1 = core
    lo_x = -np.inf if cx0 == 0 else cx0 - 0.5
    hi_x = np.inf if cx1 == w else cx1 - 0.5
    lo_y = -np.inf if cy0 == 0 else cy0 - 0.5
    hi_y = np.inf if cy1 == h else cy1 - 0.5
    return (xs >= lo_x) & (xs < hi_x) & (ys >= lo_y) & (ys < hi_y)


def _tile_parts(read, shape, tile_size, overlap, psf, photometry_kwargs):
    """The stars each tile owns (whole-image positions), the boxes of all tiles and a tile's meta."""
    parts, boxes, meta = [], [], {}
    group_offset = 0
    for t, (core, ext) in enumerate(_tiles(shape, tile_size, overlap)):
        boxes.append(ext)  # indexed by the ``tile`` column, also for tiles without stars
        cat = _fit_tile(read, ext, psf, photometry_kwargs)
        if cat is None:
            continue
        meta = meta or dict(cat.meta)
        cat.meta = {}
        for c in ("x_init", "x_fit"):
            cat[c] = np.asarray(cat[c]) + ext[2]
        for c in ("y_init", "y_fit"):
            cat[c] = np.asarray(cat[c]) + ext[0]
        cat["tile"] = np.full(len(cat), t, np.int32)
        cat["group_id"] = np.asarray(cat["group_id"]) + group_offset  # unique across tiles
        if len(cat):
            group_offset = int(np.max(cat["group_id"])) + 1
        parts.append(cat[_owned(cat, core, shape)])
    return parts, boxes, meta


def photometry_tiled(
    source, psf, *, tile_size: int, overlap: int | None = None, wcs=None, **photometry_kwargs
) -> Table:
    """:func:`~jaxphot.photometry` of a large image, tile by tile, merged without duplicates.

    Parameters
    ----------
    source : (H, W) array, or a reader with ``shape`` and ``read(y0, y1, x0, x1)``
        The image (image units), e.g. :class:`FitsSections` of a FITS file.
    psf : PSF model
    tile_size : int
        Core size of a tile (px). Cores partition the image; each tile is processed with a
        margin of ``overlap`` px on every side (clipped at the image edges).
    overlap : int, optional
        Margin (px). Default :func:`default_overlap`.
    wcs : astropy.wcs.WCS, optional
        Adds ``ra, dec`` (degrees) computed from the merged, whole-image positions.
    **photometry_kwargs
        Passed to :func:`~jaxphot.photometry` (not ``error``/``mask``, which are not tiled).

    Returns
    -------
    Table
        As :func:`~jaxphot.photometry`, positions in whole-image pixels, plus a ``tile``
        column (index of the tile that fitted the star). ``id`` is renumbered 1..N and
        ``group_id`` made unique across tiles. ``meta['n_tiles']`` is the number of tiles
        with usable pixels and ``meta['n_seam_duplicates']`` the number of seam duplicates
        removed.
    """
    from ..psf import psf_fwhm

    if photometry_kwargs.get("error") is not None or photometry_kwargs.get("mask") is not None:
        raise ValueError("photometry_tiled does not tile error or mask maps")
    shape, read = _reader(source)
    tile_size = int(tile_size)
    if tile_size < 1:
        raise ValueError(f"tile_size must be a positive number of pixels, got {tile_size}")
    ov = default_overlap(psf, photometry_kwargs) if overlap is None else int(overlap)
    if ov < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    parts, boxes, meta = _tile_parts(read, shape, tile_size, ov, psf, photometry_kwargs)
    if not parts:
        raise ValueError("no tile of the image has usable pixels")
    merged = vstack(parts, metadata_conflicts="silent")
    msep = photometry_kwargs.get("merge_sep") or 0.5 * psf_fwhm(psf)
    merged, n_dup = drop_seam_duplicates(merged, boxes, float(msep))
    merged["id"] = np.arange(1, len(merged) + 1, dtype=np.int64)
    radec = pixel_to_radec(wcs, np.asarray(merged["x_fit"]), np.asarray(merged["y_fit"]))
    if radec is not None:
        merged["ra"], merged["dec"] = radec
        merged["ra"].unit = merged["dec"].unit = "deg"
    meta.pop("history", None)
    meta.pop("elapsed_s", None)  # timings would make reruns differ
    meta.update(n_tiles=len(parts), tile_size=tile_size, tile_overlap=ov, n_seam_duplicates=int(n_dup))
    merged.meta = meta
    return merged


def drop_seam_duplicates(cat: Table, boxes, radius: float) -> tuple[Table, int]:
    """Remove one of each pair closer than ``radius`` px that two different tiles found.

    A star on a seam can be fitted by both neighbouring tiles at positions a hair on either
    side of the boundary, so that each tile's core keeps its copy. Of such a pair we keep the
    copy whose position lies deeper inside its own tile (farther from the tile's edge), where
    the fit saw more of the star's surroundings.

    Parameters
    ----------
    cat : Table
        Stars with ``x_fit, y_fit, x_init, y_init`` (whole-image px) and ``tile``.
    boxes : sequence of (y0, y1, x0, x1)
        Extended box of each tile (px), indexed by ``tile``.
    radius : float
        Separation (px) under which two stars of different tiles are one.

    Returns
    -------
    (Table, int)
        The catalog without the duplicates, and how many were removed.
    """
    if len(cat) < 2 or radius <= 0:
        return cat, 0
    from scipy.spatial import cKDTree

    x, y = _positions(cat)
    tile = np.asarray(cat["tile"])
    b = np.asarray(boxes, float)[tile]  # (N, 4): y0, y1, x0, x1 of each star's tile
    depth = np.minimum.reduce([x - b[:, 2], b[:, 3] - 1 - x, y - b[:, 0], b[:, 1] - 1 - y])
    pairs = cKDTree(np.c_[x, y]).query_pairs(radius, output_type="ndarray")
    drop = np.zeros(len(cat), bool)
    for i, j in pairs:
        if tile[i] == tile[j] or drop[i] or drop[j]:
            continue
        drop[j if depth[i] >= depth[j] else i] = True
    return cat[~drop], int(drop.sum())
