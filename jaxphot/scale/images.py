"""Photometry of many images with Dask: :func:`batch`, and :func:`process_image` (its task).

One Dask task per image, on a :class:`distributed.LocalCluster` (default) or an existing
scheduler. Each task reads its image, runs :func:`jaxphot.photometry` and writes one catalog
named after the image (``img_001.fits`` -> ``outdir/img_001.ecsv``).

- **Resumable.** Catalogs are written atomically (:mod:`jaxphot.scale.files`), so a catalog
  that exists is complete; images that have one are skipped unless ``overwrite=True``.
- **Failure isolation.** An image that fails (unreadable FITS, no stars...) becomes a
  ``failed`` row of the run summary with its error; the other images go on. A worker that dies
  is reported the same way.
- **Large images** (more pixels than a worker's memory allows, or ``tile_size``) are fitted
  tile by tile in the same task, reading the FITS file by section
  (:mod:`jaxphot.scale.tiling`).
- **Warm workers.** Worker processes live for the whole run and import the pipeline once, so
  the compiled functions stay in memory between tasks; JAX's persistent compilation cache
  (``$JAXPHOT_CACHE_DIR``) saves the compilation of a new worker process too.
- **GPU memory.** The workers of a LocalCluster get GPU allocator settings in their own
  environment (:mod:`jaxphot.scale.accelerator`), so several can share a GPU; the calling
  process's ``os.environ`` is left as it was.

A run summary (one row per image: status, stars, time, error) is returned and written to
``outdir/jaxphot_batch_summary.ecsv``; full tracebacks of failures go to
``outdir/jaxphot_batch_errors.txt``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import sys
import time
import traceback
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
from astropy.table import Table

from ..io import read_image
from ..progress import Progress
from .accelerator import (
    gpu_installed,
    restored_environ,
    setup_worker,
    worker_environment,
    worker_memory_limit,
)
from .files import (
    CATALOG_FORMATS,
    ERRORS_NAME,
    SUMMARY_NAME,
    atomic_write_table,
    atomic_write_text,
    catalog_path,
    expand_images,
    image_stem,
    is_complete,
    remove_stale_temporaries,
)
from .tiling import MIN_TILE, FitsSections, auto_tile_size, default_overlap, photometry_tiled

# photometry_tiled is re-exported: jaxphot.photometry_tiled and old code find it here.
__all__ = ["batch", "process_image", "dask_client", "dask_session", "dask_completed", "is_auto_psf",
           "photometry_tiled", "SUMMARY_NAME", "ERRORS_NAME"]

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
_SUMMARY_DTYPES = (str, str, str, np.int64, np.int64, np.int64, float, str, str)


# --------------------------------------------------------------------------------------
# One image (the task)
# --------------------------------------------------------------------------------------


def is_auto_psf(psf) -> bool:
    """True for the spec ``"auto"``: an ePSF built from each image."""
    return isinstance(psf, str) and psf.strip().lower() == "auto"


def _resolve_psf(psf):
    """A PSF model from a model or a command-line spec (not ``auto``)."""
    if isinstance(psf, str):
        from ..psf import parse_psf_spec

        return parse_psf_spec(psf)
    return psf


def _summary_row(image, catalog, status: str, **values) -> dict:
    """A run-summary row with nothing measured yet, updated with ``values``."""
    row = dict(
        image=str(image),
        catalog=str(catalog),
        status=status,
        n_stars=-1,
        n_flagged=-1,
        n_tiles=0,
        elapsed_s=0.0,
        worker="",
        error="",
        traceback="",
    )
    row.update(values)
    return row


def _error_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _photometry_options(photometry_kwargs, info) -> dict:
    """The keywords for photometry(): ``gain``, ``read_noise`` and ``saturation`` default to the
    header's."""
    kw = dict(photometry_kwargs)
    kw.pop("progress", None)  # one bar for the whole run, none per image
    kw.pop("return_images", None)
    if "gain" not in kw:
        kw["gain"] = info.gain
    if "read_noise" not in kw:
        kw["read_noise"] = info.read_noise
    if "saturation" not in kw:
        kw["saturation"] = info.saturation
    if kw["read_noise"] is not None and kw["gain"] is None and kw.get("error") is None:
        kw["read_noise"] = None  # read noise alone cannot be turned into image units
    return kw


def _whole_image_catalog(image, hdu, psf, kw):
    """photometry() of the whole image; ``psf=None`` builds an ePSF from it (``auto``)."""
    from ..image.pipeline import photometry

    img = read_image(image, hdu)
    if psf is None:
        from ..epsf import build_epsf_from_image

        psf = build_epsf_from_image(img.data, gain=kw.get("gain"), saturation=kw.get("saturation"))
    cat = photometry(img.data, psf, wcs=img.wcs, **kw)
    cat.meta.pop("history", None)
    cat.meta.pop("elapsed_s", None)  # timings would make reruns differ
    return cat, psf


def _image_catalog(image: Path, psf, hdu, tile_size, tile_overlap, photometry_kwargs):
    """The catalog of one image, whole or tiled, and its number of tiles."""
    src = FitsSections(image, hdu)  # the header only: pixels are read whole or by tile below
    info = src.info
    kw = _photometry_options(photometry_kwargs, info)
    psf_obj = None if is_auto_psf(psf) else _resolve_psf(psf)
    ts = tile_size
    if ts is None and psf_obj is not None:
        ov = default_overlap(psf_obj, kw) if tile_overlap is None else int(tile_overlap)
        ts = auto_tile_size(src.shape, ov, worker_memory_limit())
    if ts and (src.shape[0] > ts or src.shape[1] > ts):
        if psf_obj is None:
            raise ValueError("--psf auto cannot be used with tiled images")
        cat = photometry_tiled(src, psf_obj, tile_size=ts, overlap=tile_overlap, wcs=info.wcs, **kw)
        n_tiles = int(cat.meta.get("n_tiles", 1))
    else:
        cat, psf_obj = _whole_image_catalog(image, info.hdu, psf_obj, kw)
        n_tiles = 1
    cat.meta.update(image=str(image), hdu=str(info.hdu), psf=repr(psf_obj))
    if info.bunit:
        cat.meta["bunit"] = info.bunit
    return cat, n_tiles


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
        Tile margin (px), default :func:`~jaxphot.scale.tiling.default_overlap`.
    overwrite : bool
        Redo an image whose catalog exists.
    **photometry_kwargs
        Passed to :func:`~jaxphot.photometry`. ``gain`` (e-/image unit), ``read_noise``
        (e-) and ``saturation`` (image units) default to the header's (GAIN, RDNOISE,
        SATURATE...).

    Returns
    -------
    dict
        A row of the run summary: ``image, catalog, status`` ("ok", "skipped", "failed"),
        ``n_stars, n_flagged, n_tiles, elapsed_s`` (s), ``worker, error``, and ``traceback``.
    """
    t0 = time.perf_counter()
    image, catalog = Path(image), Path(catalog)
    row = _summary_row(image, catalog, "failed", worker=f"{socket.gethostname()}:{os.getpid()}")
    try:
        if not overwrite and is_complete(catalog):
            row["status"] = "skipped"
            return row
        cat, n_tiles = _image_catalog(image, psf, hdu, tile_size, tile_overlap, photometry_kwargs)
        catalog.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_table(cat, catalog)
        n_flagged = int(np.count_nonzero(cat["flags"]))
        row.update(status="ok", n_stars=len(cat), n_flagged=n_flagged, n_tiles=n_tiles)
    except Exception as exc:  # isolate the failure: it becomes a row of the summary
        row.update(error=_error_line(exc), traceback=traceback.format_exc())
    finally:
        row["elapsed_s"] = round(time.perf_counter() - t0, 3)
    return row


# --------------------------------------------------------------------------------------
# Many images
# --------------------------------------------------------------------------------------


def _check_batch_options(psf, workers, tile_size, catalog_format) -> None:
    """Fail before any work on options that would fail every image."""
    if catalog_format not in CATALOG_FORMATS:
        raise ValueError(f"catalog_format must be one of {CATALOG_FORMATS}, got {catalog_format!r}")
    if workers is not None and int(workers) < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if tile_size is not None and int(tile_size) < MIN_TILE:
        raise ValueError(f"tile_size must be >= {MIN_TILE} px, got {tile_size}")
    if isinstance(psf, str) and not is_auto_psf(psf):
        _resolve_psf(psf)  # a bad spec raises PSFSpecError (a ValueError) once, not per image


def _catalog_paths(paths, outdir: Path, catalog_format: str) -> list[Path]:
    cats = [catalog_path(p, outdir, catalog_format) for p in paths]
    dup = {c for c in cats if cats.count(c) > 1}
    if dup:
        raise ValueError(f"several images would write the same catalog: {sorted(map(str, dup))}")
    inputs = {p.resolve(): p for p in map(Path, paths)}
    for c in cats:  # never take an input for an output (e.g. --outdir dir --format fits)
        if c.resolve() in inputs:
            raise ValueError(f"catalog {str(c)!r} would replace the input image "
                             f"{str(inputs[c.resolve()])!r}; choose another --outdir or --format")
    if outdir.exists() and not outdir.is_dir():
        raise ValueError(f"--outdir {str(outdir)!r} is a file, not a folder")
    return cats


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
    progress=None,
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
    progress : bool or callable, optional
        Progress bar on stderr (default: when stderr is a terminal), or a callable
        ``f(message, fraction)`` (see :class:`jaxphot.progress.Progress`).
    **photometry_kwargs
        Passed to :func:`~jaxphot.photometry` (``threshold``, ``maxiters``, ``gain``...).

    Returns
    -------
    Table
        The run summary, one row per image in input order: ``image, catalog, status``
        ("ok", "skipped" or "failed"), ``n_stars, n_flagged, n_tiles, elapsed_s, worker,
        error``; ``meta`` holds the counts and the wall time (s). It is also written to
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
    _check_batch_options(psf, workers, tile_size, catalog_format)
    cats = _catalog_paths(paths, outdir, catalog_format)
    outdir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(outdir)
    kw = dict(
        hdu=hdu, tile_size=tile_size, tile_overlap=tile_overlap, overwrite=overwrite, **photometry_kwargs
    )
    show = sys.stderr.isatty() if progress is None else progress
    bar = Progress(show if callable(show) else bool(show), total=len(paths), desc="jaxphot batch")
    rows: dict[int, dict] = {}
    counts: Counter = Counter()

    def record(i: int, row: dict) -> None:
        rows[i] = row
        counts[row["status"]] += 1
        bar(", ".join(f"{counts[s]} {s}" for s in ("ok", "skipped", "failed")), len(rows))

    try:
        todo = []
        for i, (p, c) in enumerate(zip(paths, cats, strict=True)):
            if not overwrite and is_complete(c):  # resumable: skip without a task
                record(i, _summary_row(p, c, "skipped"))
            else:
                todo.append((i, p, c))
        if todo and workers == 0 and scheduler is None:
            for i, p, c in todo:
                record(i, process_image(p, psf, c, **kw))
        elif todo:
            _run_dask(todo, psf, kw, workers, scheduler, record)
    finally:
        bar.close()
    ordered = [rows[i] for i in range(len(paths))]
    summary = _summary(ordered, time.perf_counter() - t0)
    atomic_write_table(summary, outdir / SUMMARY_NAME)
    _write_errors(outdir / ERRORS_NAME, ordered)
    return summary


@contextlib.contextmanager
def dask_client(workers, scheduler, n_tasks: int):
    """A Dask client and the environment its workers get; a LocalCluster is closed after.

    The one client helper of :mod:`jaxphot.scale` (:func:`batch`, :func:`~jaxphot.scale.forced.forced_batch`):
    ``scheduler`` (an address or a Client) wins; else a LocalCluster of ``workers`` one-thread
    processes (default one per core, or 1 with a GPU), at most ``n_tasks``. Yields
    ``(client, env)``; run :func:`~jaxphot.scale.accelerator.setup_worker` with ``env`` on it.
    """
    from distributed import Client, LocalCluster

    gpu = gpu_installed()
    if scheduler is not None:  # workers started elsewhere: they may have started JAX already
        env = worker_environment()
        if gpu:
            env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        if isinstance(scheduler, Client):
            yield scheduler, env
        else:
            with Client(str(scheduler)) as client:
                yield client, env
        return
    n = int(workers) if workers else (1 if gpu else (os.cpu_count() or 1))
    n = max(1, min(n, n_tasks))
    # The workers get the allocator settings in their own environment, before JAX starts.
    env = worker_environment(processes_per_device=n if gpu else None)
    with (
        restored_environ(),  # the Nanny writes OMP_NUM_THREADS... into this process's environ
        LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None, env=env
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client, env


@contextlib.contextmanager
def dask_session(workers, scheduler, n_tasks: int, what: str):
    """A Dask client whose workers are set up for JAX (:func:`dask_client`, then
    :func:`~jaxphot.scale.accelerator.setup_worker` on every worker).

    ``what`` names the caller in the error when dask.distributed is not installed.
    """
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise ValueError(
            f"{what} on Dask needs dask.distributed (pip install 'jaxphot[distributed]'); "
            "workers=0 runs in this process"
        ) from None
    with dask_client(workers, scheduler, n_tasks) as (client, env):
        client.run(setup_worker, env)
        yield client


def dask_completed(client, calls):
    """Submit ``(tag, key, fn)`` calls (``fn()`` takes no argument; ``key`` names the task) and
    yield ``(tag, result)`` as they complete; the result is the exception when a task raised
    or its worker died, so one failure never stops the others."""
    from distributed import as_completed

    run = uuid.uuid4().hex[:8]
    futures = {client.submit(fn, key=f"{key}-{run}", pure=False): tag for tag, key, fn in calls}
    for f in as_completed(futures):
        try:
            res = f.result()
        except Exception as exc:  # noqa: BLE001  (KilledWorker, a lost task, or the task's error)
            res = exc
        yield futures[f], res


def _run_dask(todo, psf, kw, workers, scheduler, record) -> None:
    """Run :func:`process_image` for each ``(index, image, catalog)`` of ``todo`` on Dask."""
    with dask_session(workers, scheduler, len(todo), "jaxphot batch") as client:
        calls = [((i, p, c), f"jaxphot-{image_stem(p)}", functools.partial(process_image, p, psf, c, **kw))
                 for i, p, c in todo]
        for (i, p, c), row in dask_completed(client, calls):
            if isinstance(row, BaseException):
                row = _summary_row(p, c, "failed", error=_error_line(row),
                                   traceback="".join(traceback.format_exception(row)))
            record(i, row)


def _summary(rows: list[dict], wall: float) -> Table:
    """The run summary table; ``wall`` is the run's wall time (s)."""
    if rows:
        t = Table(
            rows=[[r[c] for c in _SUMMARY_COLUMNS] for r in rows],
            names=_SUMMARY_COLUMNS,
            dtype=_SUMMARY_DTYPES,
        )
    else:
        t = Table(names=_SUMMARY_COLUMNS)
    st = [r["status"] for r in rows]
    t.meta.update(
        n_images=len(rows),
        n_ok=st.count("ok"),
        n_skipped=st.count("skipped"),
        n_failed=st.count("failed"),
        wall_s=round(wall, 3),
    )
    return t


def _write_errors(path: Path, rows: list[dict]) -> None:
    """The tracebacks of the failed images, or no file when none failed."""
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        atomic_write_text(
            "".join(f"==> {r['image']}\n{r['traceback'] or r['error']}\n" for r in failed), path
        )
    elif path.exists():
        path.unlink()
