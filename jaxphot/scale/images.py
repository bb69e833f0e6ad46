"""Photometry of many images with Dask: :func:`batch` and the ``jaxphot batch`` command.

One Dask task per image, on a :class:`distributed.LocalCluster` (default) or an existing
scheduler. Each task reads its image, runs :func:`jaxphot.photometry` and writes one catalog
named after the image (``img_001.fits`` -> ``outdir/img_001.ecsv``).

- **Resumable.** A catalog is written to a hidden temporary file in ``outdir`` and renamed into
  place (``os.replace`` is atomic on POSIX), so a catalog that exists is complete; images that
  have one are skipped unless ``overwrite=True``. Stale temporary files of a killed run are
  removed at the next start.
- **Failure isolation.** An image that fails (unreadable FITS, no stars...) becomes a
  ``failed`` row of the run summary with its error; the other images go on. A worker that dies
  is reported the same way.
- **Large images** (more pixels than a worker's memory allows, or ``tile_size``) are split
  into tiles with overlapping margins, processed one after another in the same task (so memory
  is bounded by a tile: tiles are read from the FITS file with ``section``, never the whole
  image), and merged: each star belongs to the tile whose *core* holds its fitted position
  (the cores partition the image), and pairs of stars closer than ``merge_sep`` found by two
  different tiles at a seam are reduced to the one found deeper inside its tile.
- **Warm workers.** Worker processes live for the whole run and import jaxphot once, so the
  compiled functions stay in memory between tasks; JAX's persistent compilation cache (on by
  default, ``$JAXPHOT_CACHE_DIR``) saves the compilation of a new worker process too.
- **GPU memory.** :func:`configure_accelerator_memory` sets ``XLA_PYTHON_CLIENT_PREALLOCATE``
  and ``XLA_PYTHON_CLIENT_MEM_FRACTION`` (unless the user did) before JAX starts in the workers,
  so several worker processes can share a GPU.

A run summary (one row per image: status, stars, time, error) is returned and written to
``outdir/jaxphot_batch_summary.ecsv``; full tracebacks of failures go to
``outdir/jaxphot_batch_errors.txt``.
"""

from __future__ import annotations

import glob
import math
import os
import socket
import sys
import time
import traceback
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from astropy.table import Table, vstack

__all__ = [
    "batch",
    "photometry_tiled",
    "catalog_path",
    "configure_accelerator_memory",
    "add_batch_subcommand",
    "run_batch_cli",
    "SUMMARY_NAME",
]

SUMMARY_NAME = "jaxphot_batch_summary.ecsv"
ERRORS_NAME = "jaxphot_batch_errors.txt"
_FITS_SUFFIXES = (".fits.gz", ".fits.fz", ".fit.gz", ".fts.gz", ".fits", ".fit", ".fts")
_FORMATS = ("ecsv", "fits", "csv")
# Peak bytes per image pixel of photometry(): ~10 float64 maps (image, level, rms, data,
# model, residual, detection filter...) plus masks and temporaries.
_BYTES_PER_PIXEL = 160
_MIN_TILE = 128


# --------------------------------------------------------------------------------------
# Process set-up
# --------------------------------------------------------------------------------------


def configure_accelerator_memory(processes_per_device: int = 1) -> dict[str, str]:
    """Sensible GPU allocator settings, unless the user set them; call before JAX starts.

    JAX preallocates 75 % of a GPU's memory at start-up by default, which makes a second
    process on the same GPU fail. This sets (only where unset):

    - ``XLA_PYTHON_CLIENT_PREALLOCATE=false``: allocate on demand;
    - ``XLA_PYTHON_CLIENT_MEM_FRACTION``: ``0.9 / processes_per_device`` of the GPU's memory
      at most for each process.

    Parameters
    ----------
    processes_per_device : int
        How many processes (e.g. Dask workers) share one GPU.

    Returns
    -------
    dict
        The variables this call set (empty when the user had set both). They have no effect
        on a process whose JAX backend has already started; worker processes inherit them.
    """
    n = max(1, int(processes_per_device))
    want = {
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
        "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{min(0.9, 0.9 / n):.3f}",
    }
    done = {}
    for k, v in want.items():
        if k not in os.environ:
            os.environ[k] = v
            done[k] = v
    return done


def _gpu_installed() -> bool:
    """Whether a CUDA/ROCm JAX plugin is installed (checked without starting JAX)."""
    import importlib.util

    names = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_plugins")
    for name in names:
        try:
            if importlib.util.find_spec(name) is not None and name != "jax_plugins":
                return True
        except (ImportError, ValueError):
            continue
    return False


def _worker_setup(env: Mapping[str, str]) -> bool:
    """Run on each worker before its first task: allocator settings, then import jaxphot.

    Importing here (once per worker process) and switching on the persistent compilation
    cache keeps every jitted function warm between tasks.
    """
    for k, v in env.items():
        os.environ.setdefault(k, v)
    from ..core.config import enable_compilation_cache
    from ..image import pipeline  # noqa: F401

    enable_compilation_cache()

    return True


# --------------------------------------------------------------------------------------
# Paths and atomic output
# --------------------------------------------------------------------------------------


def expand_images(images) -> list[Path]:
    """Paths from a glob pattern, a path, or an iterable of either; sorted, without repeats.

    Raises
    ------
    ValueError
        When nothing matches.
    """
    items = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    out: list[Path] = []
    seen = set()
    for item in items:
        s = os.fspath(item)
        matches = sorted(glob.glob(s)) if glob.has_magic(s) else [s]
        for m in matches:
            p = Path(m)
            key = p.resolve()
            if key not in seen:
                seen.add(key)
                out.append(p)
    if not out:
        raise ValueError(f"no images match {images!r}")
    return out


def _stem(path: Path) -> str:
    name = path.name
    for suf in _FITS_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return path.stem


def catalog_path(image, outdir, fmt: str = "ecsv") -> Path:
    """The catalog of ``image`` in ``outdir``: the image's name with its FITS suffix replaced."""
    if fmt not in _FORMATS:
        raise ValueError(f"catalog format must be one of {_FORMATS}, got {fmt!r}")
    return Path(outdir) / f"{_stem(Path(image))}.{fmt}"


def _tmp_name(final: Path) -> Path:
    # Hidden, same directory (same file system: os.replace is atomic) and the same suffix
    # (write_catalog picks the format from it).
    return final.with_name(f".{final.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{final.suffix}")


def _atomic_write_table(table: Table, path: Path) -> Path:
    """Write a catalog so that ``path`` either does not exist or is complete."""
    from ..io import write_catalog

    tmp = _tmp_name(path)
    try:
        write_catalog(table, tmp, overwrite=True)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _remove_stale_tmp(outdir: Path) -> None:
    for p in outdir.glob(".*.tmp-*"):
        try:
            p.unlink()
        except OSError:
            pass


def _is_complete(path: Path) -> bool:
    # Catalogs only ever appear through os.replace of a fully written file.
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


# --------------------------------------------------------------------------------------
# Image access (whole, or by sections for tiles)
# --------------------------------------------------------------------------------------


class _FitsSource:
    """Shape and header of a FITS image, with sections read on demand (memory-mapped)."""

    def __init__(self, path: Path, hdu=None):
        from astropy.io import fits

        from ..io import celestial_wcs, hdu_key

        self.path = path
        if not path.exists():
            raise ValueError(f"image file {str(path)!r} does not exist")
        try:
            with warnings.catch_warnings():  # junk files warn before they fail: just fail
                warnings.simplefilter("ignore")
                self._hdul = fits.open(path, memmap=True)
        except Exception as exc:
            raise ValueError(f"cannot read image {str(path)!r} as FITS: {exc}") from None
        try:
            if hdu is None:
                idx = next(
                    (i for i, h in enumerate(self._hdul) if h.is_image and h.header.get("NAXIS", 0) >= 2),
                    None,
                )
                if idx is None:
                    raise ValueError(f"image {str(path)!r} has no HDU with 2-D image data")
            else:
                idx = hdu_key(hdu)
            h = self._hdul[idx]
            shape = tuple(int(h.header[f"NAXIS{i}"]) for i in range(h.header["NAXIS"], 0, -1))
        except (KeyError, IndexError) as exc:
            self.close()
            raise ValueError(f"image {str(path)!r}: no usable HDU {hdu!r} ({exc})") from None
        except Exception:
            self.close()
            raise
        if len(shape) < 2 or any(s != 1 for s in shape[:-2]):
            self.close()
            raise ValueError(f"HDU {idx!r} of {str(path)!r} is not a 2-D image (shape {shape})")
        self.hdu, self._h, self.shape = idx, h, shape[-2:]
        self.header = h.header.copy()
        self.wcs = celestial_wcs(self.header)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        lead = (0,) * (len(self._h.shape) - 2) if self._h.shape else ()
        try:
            a = self._h.section[lead + (slice(y0, y1), slice(x0, x1))]
        except Exception as exc:
            raise ValueError(f"cannot read pixels of {str(self.path)!r}: {exc}") from None
        return np.asarray(a, np.float64)

    def close(self):
        try:
            self._hdul.close()
        except Exception:
            pass


def _worker_memory_limit() -> int | None:
    """The Dask worker's memory limit in bytes, or None outside a worker (or unlimited)."""
    try:
        from distributed import get_worker

        w = get_worker()
    except (ImportError, ValueError):
        return None
    lim = getattr(getattr(w, "memory_manager", None), "memory_limit", None)
    return int(lim) if lim else None


def auto_tile_size(shape: tuple[int, int], overlap: int, memory_limit: int | None) -> int | None:
    """Tile core size (px) that fits half of ``memory_limit`` (bytes); None when not needed."""
    if not memory_limit:
        return None
    budget_px = 0.5 * memory_limit / _BYTES_PER_PIXEL
    if shape[0] * shape[1] <= budget_px:
        return None
    return max(_MIN_TILE, int(math.sqrt(budget_px)) - 2 * overlap)


def _tiles(shape, core: int, overlap: int):
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


def photometry_tiled(
    source, psf, *, tile_size: int, overlap: int | None = None, wcs=None, **photometry_kwargs
) -> Table:
    """:func:`~jaxphot.photometry` of a large image, tile by tile, merged without duplicates.

    Parameters
    ----------
    source : (H, W) array, or a reader with ``shape`` and ``read(y0, y1, x0, x1)``
        The image (image units).
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
        ``group_id`` made unique across tiles. ``meta['n_tiles']`` is the number of tiles and
        ``meta['n_seam_duplicates']`` the number of seam duplicates removed.
    """
    from ..image.pipeline import photometry
    from ..psf import psf_fwhm

    if photometry_kwargs.get("error") is not None or photometry_kwargs.get("mask") is not None:
        raise ValueError("photometry_tiled does not tile error or mask maps")
    if isinstance(source, np.ndarray) or not hasattr(source, "read"):
        arr = np.asarray(source, np.float64)
        if arr.ndim != 2:
            raise ValueError(f"image must be 2-D, got shape {arr.shape}")
        shape = arr.shape

        def read(y0, y1, x0, x1):
            return arr[y0:y1, x0:x1]
    else:
        shape, read = tuple(source.shape), source.read
    tile_size = int(tile_size)
    if tile_size < 1:
        raise ValueError(f"tile_size must be a positive number of pixels, got {tile_size}")
    ov = default_overlap(psf, photometry_kwargs) if overlap is None else int(overlap)
    if ov < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    h, w = shape
    parts, boxes = [], []
    meta = {}
    group_offset = 0
    for t, (core, ext) in enumerate(_tiles(shape, tile_size, ov)):
        y0, y1, x0, x1 = ext
        sub = read(y0, y1, x0, x1)
        try:
            cat = photometry(sub, psf, **photometry_kwargs)
        except ValueError as exc:
            if "no usable pixel" in str(exc) or "smaller than" in str(exc):
                continue  # an empty (all-NaN) or sliver tile contributes no stars
            raise
        if not meta:
            meta = dict(cat.meta)
        for c in ("x_init", "x_fit"):
            cat[c] = np.asarray(cat[c]) + x0
        for c in ("y_init", "y_fit"):
            cat[c] = np.asarray(cat[c]) + y0
        cat["tile"] = np.full(len(cat), t, np.int32)
        cat["group_id"] = np.asarray(cat["group_id"]) + group_offset
        if len(cat):
            group_offset = int(np.max(cat["group_id"])) + 1
        # Ownership by the core: half-open pixel-edge intervals; edge tiles extend to infinity
        # so stars fitted just outside the image are kept once.
        xs, ys = _positions(cat)
        cy0, cy1, cx0, cx1 = core
        lo_x = -np.inf if cx0 == 0 else cx0 - 0.5
        hi_x = np.inf if cx1 == w else cx1 - 0.5
        lo_y = -np.inf if cy0 == 0 else cy0 - 0.5
        hi_y = np.inf if cy1 == h else cy1 - 0.5
        own = (xs >= lo_x) & (xs < hi_x) & (ys >= lo_y) & (ys < hi_y)
        parts.append(cat[own])
        boxes.append(ext)
        cat.meta = {}
    if not parts:
        raise ValueError("no tile of the image has usable pixels")
    for p in parts:
        p.meta = {}
    merged = vstack(parts, metadata_conflicts="silent")
    msep = photometry_kwargs.get("merge_sep") or 0.5 * psf_fwhm(psf)
    merged, n_dup = _drop_seam_duplicates(merged, boxes, float(msep))
    merged["id"] = np.arange(1, len(merged) + 1, dtype=np.int64)
    if wcs is not None:
        from ..io import pixel_to_radec

        radec = pixel_to_radec(wcs, np.asarray(merged["x_fit"]), np.asarray(merged["y_fit"]))
        if radec is not None:
            merged["ra"], merged["dec"] = radec
            merged["ra"].unit = merged["dec"].unit = "deg"
    meta.pop("history", None)
    meta.pop("elapsed_s", None)
    meta.update(n_tiles=len(boxes), tile_size=tile_size, tile_overlap=ov, n_seam_duplicates=int(n_dup))
    merged.meta = meta
    return merged


def _positions(cat: Table):
    """Fitted positions, falling back to the initial ones where the fit failed (NaN)."""
    x = np.asarray(cat["x_fit"], float)
    y = np.asarray(cat["y_fit"], float)
    bad = ~(np.isfinite(x) & np.isfinite(y))
    x = np.where(bad, np.asarray(cat["x_init"], float), x)
    y = np.where(bad, np.asarray(cat["y_init"], float), y)
    return x, y


def _drop_seam_duplicates(cat: Table, boxes, radius: float):
    """Remove one of each pair closer than ``radius`` px that two different tiles found.

    A star on a seam can be fitted by both neighbouring tiles at positions a hair on either
    side of the boundary, so that each tile's core keeps its copy. Of such a pair we keep the
    copy whose position lies deeper inside its own tile (farther from the tile's edge), where
    the fit saw more of the star's surroundings.
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


# --------------------------------------------------------------------------------------
# One image (the task)
# --------------------------------------------------------------------------------------


def _resolve_psf(psf, data=None):
    if isinstance(psf, str):
        if psf.strip().lower() == "auto":
            from ..epsf import build_epsf_from_image

            if data is None:
                raise ValueError("--psf auto cannot be used with tiled images")
            return build_epsf_from_image(data)
        from ..psf import parse_psf_spec

        return parse_psf_spec(psf)
    return psf


def _summary_row(image, catalog, status: str, worker: str = "") -> dict:
    """A run-summary row with nothing measured yet (filled in as the image is processed)."""
    return dict(
        image=str(image), catalog=str(catalog), status=status, n_stars=-1, n_flagged=-1,
        n_tiles=0, elapsed_s=0.0, worker=worker, error="", traceback="",
    )


def process_image(
    image,
    psf,
    catalog,
    *,
    hdu=None,
    tile_size: int | None = None,
    tile_overlap: int | None = None,
    overwrite: bool = False,
    **photometry_kwargs,
) -> dict:
    """Photometry of one FITS image into one catalog; never raises (the task of :func:`batch`).

    Parameters
    ----------
    image : path
        FITS image.
    psf : PSF model or str
        A PSF, or a command-line spec (``gaussian:fwhm=3``, a PSF FITS file, ``auto``).
    catalog : path
        Output catalog (.ecsv, .fits or .csv), written atomically.
    hdu : int or str, optional
        HDU of the image (default: the first with 2-D data).
    tile_size : int, optional
        Tile core size (px). Default: tiles only when the image has more pixels than half the
        Dask worker's memory limit allows (no tiling outside a worker).
    tile_overlap : int, optional
        Tile margin (px), default :func:`default_overlap`.
    overwrite : bool
        Redo an image whose catalog exists.
    **photometry_kwargs
        Passed to :func:`~jaxphot.photometry`. ``gain`` and ``read_noise`` default to the
        header's (GAIN, RDNOISE...).

    Returns
    -------
    dict
        A row of the run summary: ``image, catalog, status`` ("ok", "skipped", "failed"),
        ``n_stars, n_flagged, n_tiles, elapsed_s, worker, error``, and ``traceback``.
    """
    t0 = time.perf_counter()
    image, catalog = Path(image), Path(catalog)
    row = _summary_row(image, catalog, "failed", worker=f"{socket.gethostname()}:{os.getpid()}")
    src = None
    try:
        if not overwrite and _is_complete(catalog):
            row["status"] = "skipped"
            return row
        kw = dict(photometry_kwargs)
        kw.pop("progress", None)
        kw.pop("return_images", None)
        src = _FitsSource(image, hdu)
        if "gain" not in kw:
            kw["gain"] = _header_value(src.header, "gain")
        if "read_noise" not in kw:
            kw["read_noise"] = _header_value(src.header, "read_noise")
        if kw["read_noise"] is not None and kw["gain"] is None and kw.get("error") is None:
            kw["read_noise"] = None  # read noise alone cannot be turned into image units
        auto = isinstance(psf, str) and psf.strip().lower() == "auto"
        psf_obj = None if auto else _resolve_psf(psf)  # "auto": built from the image below
        ts = tile_size
        if ts is None and not auto:
            ov0 = default_overlap(psf_obj, kw) if tile_overlap is None else int(tile_overlap)
            ts = auto_tile_size(src.shape, ov0, _worker_memory_limit())
        if ts and (src.shape[0] > ts or src.shape[1] > ts):
            if auto:
                raise ValueError("--psf auto cannot be used with tiled images")
            cat = photometry_tiled(src, psf_obj, tile_size=ts, overlap=tile_overlap, wcs=src.wcs, **kw)
            row["n_tiles"] = int(cat.meta.get("n_tiles", 1))
        else:
            from ..image.pipeline import photometry
            from ..io import read_image

            img = read_image(image, hdu)  # whole image, with io's checks and messages
            if auto:
                psf_obj = _resolve_psf("auto", img.data)
            cat = photometry(img.data, psf_obj, wcs=img.wcs, **kw)
            cat.meta.pop("history", None)
            cat.meta.pop("elapsed_s", None)  # timings would make reruns differ
            row["n_tiles"] = 1
        cat.meta["image"] = str(image)
        cat.meta["hdu"] = str(src.hdu)
        cat.meta["psf"] = repr(psf_obj)
        if src.header.get("BUNIT"):
            cat.meta["bunit"] = str(src.header["BUNIT"]).strip()
        catalog.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write_table(cat, catalog)
        row.update(status="ok", n_stars=len(cat), n_flagged=int(np.count_nonzero(cat["flags"])))
    except Exception as exc:  # isolate the failure: it becomes a row of the summary
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        row["error"] = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
        row["traceback"] = traceback.format_exc()
    finally:
        if src is not None:
            src.close()
        row["elapsed_s"] = round(time.perf_counter() - t0, 3)
    return row


def _header_value(header, what):
    from ..io import header_gain, header_read_noise

    return header_gain(header) if what == "gain" else header_read_noise(header)


# --------------------------------------------------------------------------------------
# Many images
# --------------------------------------------------------------------------------------


class _Bar:
    """A one-line text progress bar on stderr."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.on, self.t0 = total, enabled, time.perf_counter()
        self.counts = {"ok": 0, "skipped": 0, "failed": 0}

    def update(self, status: str) -> None:
        self.counts[status] = self.counts.get(status, 0) + 1
        if not self.on:
            return
        done = sum(self.counts.values())
        n = int(round(30 * done / max(self.total, 1)))
        c = self.counts
        sys.stderr.write(
            f"\r[{'#' * n}{'.' * (30 - n)}] {done}/{self.total} images  ok {c['ok']}  "
            f"skipped {c['skipped']}  failed {c['failed']}  {time.perf_counter() - self.t0:6.1f}s"
        )
        if done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


_SUMMARY_COLUMNS = (
    "image",
    "catalog",
    "status",
    "n_stars",
    "n_flagged",
    "n_tiles",
    "elapsed_s",
    "worker",
    "error",
)


def batch(
    images,
    psf,
    outdir,
    *,
    workers: int | None = None,
    scheduler=None,
    overwrite: bool = False,
    tile_size: int | None = None,
    tile_overlap: int | None = None,
    catalog_format: str = "ecsv",
    hdu=None,
    progress: bool | None = None,
    **photometry_kwargs,
) -> Table:
    """PSF photometry of many FITS images, one Dask task per image, one catalog per image.

    Parameters
    ----------
    images : str, path or iterable of them
        FITS files or glob patterns (``'images/*.fits'``).
    psf : PSF model or str
        One PSF for all images, or a command-line spec (``gaussian:fwhm=3``, ``moffat:...``,
        a PSF FITS file, or ``auto`` for an ePSF built from each image).
    outdir : path
        Directory of the catalogs (created). ``img.fits`` -> ``outdir/img.<catalog_format>``.
    workers : int, optional
        Worker processes of the LocalCluster (one thread each). Default: one per CPU core
        (at most one per image), or 1 when a GPU JAX plugin is installed. ``0`` runs the
        images one after another in this process, without Dask.
    scheduler : str or distributed.Client, optional
        Address of a running Dask scheduler (``tcp://host:8786``), or a Client, to use
        instead of a LocalCluster.
    overwrite : bool
        Redo images that already have a catalog (default: skip them, which makes an
        interrupted run resumable).
    tile_size, tile_overlap : int, optional
        Tile core size and margin (px) for large images; see :func:`process_image`.
    catalog_format : {"ecsv", "fits", "csv"}
    hdu : int or str, optional
        HDU of every image.
    progress : bool, optional
        Progress bar on stderr; default when stderr is a terminal.
    **photometry_kwargs
        Passed to :func:`~jaxphot.photometry` (``threshold``, ``maxiters``, ``gain``...).

    Returns
    -------
    Table
        The run summary, one row per image in input order: ``image, catalog, status``
        ("ok", "skipped" or "failed"), ``n_stars, n_flagged, n_tiles, elapsed_s, worker,
        error``; ``meta`` holds the counts and the wall time. It is also written to
        ``outdir/jaxphot_batch_summary.ecsv``.

    Raises
    ------
    ValueError
        When no image matches, two images would write the same catalog, or an option is
        invalid. Failures of single images do not raise: see the summary.
    """
    t0 = time.perf_counter()
    paths = expand_images(images)
    outdir = Path(outdir)
    if catalog_format not in _FORMATS:
        raise ValueError(f"catalog_format must be one of {_FORMATS}, got {catalog_format!r}")
    cats = [catalog_path(p, outdir, catalog_format) for p in paths]
    dup = {c for c in cats if cats.count(c) > 1}
    if dup:
        raise ValueError(f"several images would write the same catalog: {sorted(map(str, dup))}")
    if workers is not None and int(workers) < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if tile_size is not None and int(tile_size) < _MIN_TILE:
        raise ValueError(f"tile_size must be >= {_MIN_TILE} px, got {tile_size}")
    if isinstance(psf, str) and psf.strip().lower() != "auto":
        from ..psf import PSFSpecError, parse_psf_spec

        try:
            parse_psf_spec(psf)  # fail early on a bad spec, not once per image
        except PSFSpecError as exc:
            raise ValueError(str(exc)) from None
    outdir.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(outdir)
    show = sys.stderr.isatty() if progress is None else bool(progress)
    bar = _Bar(len(paths), show)
    kw = dict(
        hdu=hdu,
        tile_size=tile_size,
        tile_overlap=tile_overlap,
        overwrite=overwrite,
        **photometry_kwargs,
    )

    rows: dict[int, dict] = {}
    todo = []
    for i, (p, c) in enumerate(zip(paths, cats, strict=True)):
        if not overwrite and _is_complete(c):  # resumable: skip without a task
            rows[i] = _summary_row(p, c, "skipped")
            bar.update("skipped")
        else:
            todo.append(i)

    if todo and workers == 0 and scheduler is None:
        for i in todo:
            rows[i] = process_image(paths[i], psf, cats[i], **kw)
            bar.update(rows[i]["status"])
    elif todo:
        _run_dask(paths, cats, todo, psf, kw, workers, scheduler, rows, bar)

    summary = _summary([rows[i] for i in range(len(paths))], time.perf_counter() - t0)
    _atomic_write_table(summary, outdir / SUMMARY_NAME)
    errors = [r for r in rows.values() if r["status"] == "failed"]
    err_file = outdir / ERRORS_NAME
    if errors:
        tmp = _tmp_name(err_file)
        tmp.write_text("".join(f"==> {r['image']}\n{r['traceback'] or r['error']}\n" for r in errors))
        os.replace(tmp, err_file)
    elif err_file.exists():
        err_file.unlink()
    return summary


def _run_dask(paths, cats, todo, psf, kw, workers, scheduler, rows, bar) -> None:
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise ValueError(
            "jaxphot batch needs dask.distributed (pip install 'jaxphot[distributed]'), "
            "or workers=0 to run in this process"
        ) from None
    gpu = _gpu_installed()
    # LocalCluster sets OMP_NUM_THREADS=1, PYTHONHASHSEED... in *this* process's environment
    # (for its workers); put the caller's environment back afterwards.
    saved_env = dict(os.environ)
    cluster = None
    own_client = False
    if isinstance(scheduler, Client):
        client = scheduler
    elif scheduler is not None:
        client, own_client = Client(str(scheduler)), True
    else:
        n = int(workers) if workers else (1 if gpu else (os.cpu_count() or 1))
        n = max(1, min(n, len(todo)))
        # Set before the workers start JAX: they inherit this process's environment.
        if gpu:
            configure_accelerator_memory(processes_per_device=n)
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
        client, own_client = Client(cluster), True
    try:
        env = {
            k: os.environ[k]
            for k in (
                "XLA_PYTHON_CLIENT_PREALLOCATE",
                "XLA_PYTHON_CLIENT_MEM_FRACTION",
                "JAXPHOT_CACHE_DIR",
            )
            if k in os.environ
        }
        if gpu and scheduler is not None:
            env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        client.run(_worker_setup, env)
        futures = {}
        for i in todo:
            f = client.submit(
                process_image,
                paths[i],
                psf,
                cats[i],
                **kw,
                key=f"jaxphot-{_stem(paths[i])}-{uuid.uuid4().hex[:8]}",
                pure=False,
            )
            futures[f] = i
        for f in as_completed(futures):
            i = futures[f]
            try:
                rows[i] = f.result()
            except Exception as exc:  # the worker died (KilledWorker...) or the task was lost
                rows[i] = dict(
                    image=str(paths[i]),
                    catalog=str(cats[i]),
                    status="failed",
                    n_stars=-1,
                    n_flagged=-1,
                    n_tiles=0,
                    elapsed_s=0.0,
                    worker="",
                    error=f"{type(exc).__name__}: {exc}".splitlines()[0],
                    traceback=traceback.format_exc(),
                )
            bar.update(rows[i]["status"])
    finally:
        if own_client:
            client.close()
        if cluster is not None:
            cluster.close()
            os.environ.clear()
            os.environ.update(saved_env)


def _summary(rows: list[dict], wall: float) -> Table:
    t = (
        Table(
            rows=[[r[c] for c in _SUMMARY_COLUMNS] for r in rows],
            names=_SUMMARY_COLUMNS,
            dtype=[str, str, str, np.int64, np.int64, np.int64, float, str, str],
        )
        if rows
        else Table(names=_SUMMARY_COLUMNS)
    )
    st = [r["status"] for r in rows]
    t.meta.update(
        n_images=len(rows),
        n_ok=st.count("ok"),
        n_skipped=st.count("skipped"),
        n_failed=st.count("failed"),
        wall_s=round(wall, 3),
    )
    return t


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def add_batch_subcommand(subparsers) -> None:
    """Add ``jaxphot batch`` to the ``jaxphot`` parser's subparsers (see :mod:`jaxphot.cli`)."""
    b = subparsers.add_parser(
        "batch",
        help="PSF photometry of many images with Dask (one catalog per image)",
        description="Run photometry on many FITS images, one Dask task per image, on a local "
        "cluster or an existing scheduler. One catalog per image, named after it. Images that "
        "already have a catalog are skipped (resumable); failures are listed in "
        f"OUTDIR/{SUMMARY_NAME} and do not stop the others.",
    )
    b.add_argument("images", nargs="+", help="FITS files or quoted glob patterns ('img/*.fits')")
    b.add_argument(
        "--psf",
        default="gaussian:fwhm=3",
        help="gaussian:fwhm=F | moffat:fwhm=F,beta=B | PSF.fits | auto",
    )
    b.add_argument("--outdir", required=True, help="directory of the catalogs")
    g = b.add_mutually_exclusive_group()
    g.add_argument(
        "--workers",
        type=int,
        default=None,
        help="local worker processes (default: one per core; 0 = no Dask)",
    )
    g.add_argument("--scheduler", default=None, help="address of a Dask scheduler, tcp://host:8786")
    b.add_argument("--format", choices=_FORMATS, default="ecsv", help="catalog format")
    b.add_argument("--overwrite", action="store_true", help="redo images that have a catalog")
    b.add_argument(
        "--tile-size",
        type=int,
        default=None,
        help="tile core size in px for large images (default: from worker memory)",
    )
    b.add_argument("--tile-overlap", type=int, default=None, help="tile margin in px")
    b.add_argument("--hdu", default=None, help="HDU index or EXTNAME of every image")
    b.add_argument("--gain", type=float, default=None, help="e-/image unit (default: header)")
    b.add_argument("--read-noise", type=float, default=None, help="e- (default: header)")
    b.add_argument("--threshold", type=float, default=4.5, help="detection threshold (sigma)")
    b.add_argument("--maxiters", type=int, default=4, help="fit/detect cycles")
    b.add_argument("--background-box", type=int, default=64, help="mesh box size (px)")
    b.add_argument("--zeropoint", type=float, default=0.0, help="magnitude zero point")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_batch_cli(args) -> int:
    """Run ``jaxphot batch``. Exit status: 0 all done, 1 some image failed.

    Bad options raise ValueError (``jaxphot.cli.main`` prints them and exits with 2).
    """
    kw = dict(
        threshold=args.threshold,
        maxiters=args.maxiters,
        background_box=args.background_box,
        zeropoint=args.zeropoint,
    )
    if args.gain is not None:
        kw["gain"] = args.gain
    if args.read_noise is not None:
        kw["read_noise"] = args.read_noise
    if args.workers is None and args.scheduler is None and _gpu_installed():
        configure_accelerator_memory()
    summary = batch(
        args.images,
        args.psf,
        args.outdir,
        workers=args.workers,
        scheduler=args.scheduler,
        overwrite=args.overwrite,
        tile_size=args.tile_size,
        tile_overlap=args.tile_overlap,
        catalog_format=args.format,
        hdu=args.hdu,
        progress=False if args.no_progress else None,
        **kw,
    )
    m = summary.meta
    print(
        f"jaxphot: {m['n_images']} images: {m['n_ok']} ok, {m['n_skipped']} skipped, "
        f"{m['n_failed']} failed in {m['wall_s']:.1f} s -> {args.outdir}/{SUMMARY_NAME}",
        file=sys.stderr,
    )
    for r in summary[summary["status"] == "failed"]:
        print(f"jaxphot: failed: {r['image']}: {r['error']}", file=sys.stderr)
    return 1 if m["n_failed"] else 0
