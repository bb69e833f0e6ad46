"""Forced photometry of many exposures on Dask: :func:`forced_batch`.

With the positions fixed every exposure is measured on its own, so the exposure list is split
into chunks and each chunk is one task running :func:`~jaxphot.multi.forced.forced_photometry`
(on a :class:`distributed.LocalCluster`, an existing scheduler, or in this process). The chunk
results are put together into the table of one call over the whole list.

- **Placed once, here.** A catalogue in pixels of the *first* exposure is placed in the others
  through that exposure's WCS; a chunk's first exposure is not the list's. So the catalogue is
  placed in every exposure here, from the headers alone
  (:func:`~jaxphot.multi.inputs.image_positions` over the whole list, the same rules), and
  each task gets the pixel positions of its exposures.
- **Failure isolation.** An unreadable file gives ``BAD_IMAGE`` rows, as in one call; a task
  that fails as a whole (its worker died, an exposure's inputs are unusable) gives
  ``BAD_IMAGE`` rows for its exposures and a warning. Only when every task fails is its error
  raised, as one call would.
- ``psf="auto"``: an ePSF built from each exposure
  (:func:`~jaxphot.epsf.build_epsf_from_image`), inside its task, on the worker.
"""

from __future__ import annotations

import functools
import inspect
import math
import sys
from pathlib import Path

import numpy as np
from astropy.table import Table

from ..io import image_info
from ..multi.forced import ForcedFlag, check_forced_options, forced_photometry, forced_table
from ..multi.inputs import (
    Exposure,
    catalog_positions,
    exposure_list,
    header_mjd,
    image_positions,
    load_exposures,
    per_image_inputs,
    warn_bad,
)
from ..progress import Progress
from .images import dask_completed, dask_session, is_auto_psf

__all__ = ["forced_batch"]

# Pixels of the exposures of one task: forced_photometry holds each exposure's data, variance,
# mask and (with neighbours) model at once, so this bounds a task to ~2 GB.
_PIXELS_PER_TASK = 1 << 26
_TASKS_PER_WORKER = 4  # a few tasks per worker: a slow exposure does not idle the others
_FLOAT_COLUMNS = ("x", "y", "flux", "flux_err", "bkg", "chi2")
_INT_COLUMNS = ("dof", "group_size", "flags")
_PER_IMAGE = ("error", "mask", "gain", "read_noise")  # per-exposure lists, sliced per task


class _Placed:
    """Pixel positions placed in advance, given to a task as a pixel transform (input ignored)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __call__(self, x, y):
        return self.x, self.y


class _EPSFPerExposure:
    """Stands in for ``psf="auto"`` while the options are checked; the tasks build the ePSFs."""

    evaluate = None


# --------------------------------------------------------------------------------------
# One chunk (the task)
# --------------------------------------------------------------------------------------


def _epsfs(exps, options, why: dict) -> list:
    """An ePSF from each readable exposure; one that cannot be built makes it bad (``why``)."""
    from ..epsf import build_epsf_from_image

    out = []
    for j, e in enumerate(exps):
        p = None
        if j not in why:
            m = options["mask"][j]
            try:
                p = build_epsf_from_image(e.data, gain=options["gain"][j],
                                          mask=None if m is None else np.asarray(m, bool))
            except ValueError as exc:
                why[j] = f"psf auto: cannot build an ePSF from this exposure: {exc}"
        out.append(p)
    return out


def _measure_chunk(images, positions, psfs, options) -> dict:
    """Forced photometry of some exposures at positions placed by the caller (one task).

    Parameters
    ----------
    images : list of T_c FITS paths or (H, W) arrays
    positions : list of T_c ``(x, y)`` pairs of (N,) arrays
        Pixel positions of the N catalogue stars in each exposure.
    psfs : list of T_c PSFs, or None
        None builds an ePSF from each exposure (``psf="auto"``).
    options : dict
        Keywords of forced_photometry; those of ``_PER_IMAGE`` are lists of T_c.

    Returns
    -------
    dict
        ``keep`` (indices of the measured exposures), ``cols`` (name -> (len(keep), N) array),
        ``mjd`` (T_c,) and ``bad`` (index -> why, the exposures not measured).
    """
    exps = load_exposures(images)
    why = {j: e.error for j, e in enumerate(exps) if e.error is not None}
    if psfs is None:
        psfs = _epsfs(exps, options, why)
    keep = [j for j in range(len(exps)) if j not in why]
    cols = {}
    if keep:
        n = len(positions[0][0])
        pick = lambda v: [v[j] for j in keep]  # noqa: E731
        kw = {k: pick(v) if k in _PER_IMAGE else v for k, v in options.items()}
        # x, y only stand in: each exposure's _Placed transform gives its positions
        tab = forced_photometry([exps[j].data for j in keep], Table({"x": np.zeros(n), "y": np.zeros(n)}),
                                pick(psfs), wcs=[_Placed(*positions[j]) for j in keep], progress=False, **kw)
        cols = {c: np.asarray(tab[c]).reshape(n, len(keep)).T for c in _FLOAT_COLUMNS + _INT_COLUMNS}
    return {"keep": keep, "cols": cols, "mjd": [e.mjd for e in exps], "bad": why}


# --------------------------------------------------------------------------------------
# The whole list
# --------------------------------------------------------------------------------------


def _file_header(path) -> tuple[Exposure, int]:
    """A FITS exposure's header, WCS and MJD (no pixels), and its pixel count."""
    try:
        info = image_info(path)
    except Exception as exc:  # noqa: BLE001  (as forced_photometry: a flagged exposure, not an error)
        return Exposure(None, name=str(path), error=f"{type(exc).__name__}: {exc}"), 0
    h, w = info.shape
    return Exposure(None, info.header, info.wcs, header_mjd(info.header), str(path)), h * w


def _headers(items) -> tuple[list[Exposure], list[int]]:
    """Each exposure as placing the catalogue needs it, and its pixel count; no file's pixels.

    Arrays go through load_exposures (its checks, names and dtypes); files stand in there as
    1x1 arrays and are then read for their headers only.
    """
    is_path = [isinstance(im, (str, Path)) for im in items]
    exps = load_exposures([np.zeros((1, 1)) if p else im for p, im in zip(is_path, items, strict=True)])
    sizes = [e.data.size for e in exps]
    for i, im in enumerate(items):
        if is_path[i]:
            exps[i], sizes[i] = _file_header(im)
    return exps, sizes


def _check_options(workers, images_per_task, kw: dict) -> None:
    """Fail before any work on options that would fail every task."""
    if workers is not None and int(workers) < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if images_per_task is not None and int(images_per_task) < 1:
        raise ValueError(f"images_per_task must be >= 1, got {images_per_task}")
    inspect.signature(forced_photometry).bind(None, None, None, **kw)  # TypeError: unknown option
    check_forced_options(**{k: kw[k] for k in ("background", "max_group_size", "neighbours") if k in kw})


def _chunks(todo: list[int], sizes: list[int], n_workers: int, per_task) -> list[list[int]]:
    """``todo`` split into tasks of at most ``per_task`` exposures (default: by memory, and
    ~``_TASKS_PER_WORKER`` tasks per worker); balanced, in order."""
    if per_task is None:
        per_task = max(1, _PIXELS_PER_TASK // max(1, max(sizes[i] for i in todo)))
        if n_workers:
            per_task = min(per_task, math.ceil(len(todo) / (_TASKS_PER_WORKER * n_workers)))
    n = math.ceil(len(todo) / int(per_task))
    return [c.tolist() for c in np.array_split(np.asarray(todo), n)]


class _Results:
    """The (T, N) columns of the whole list, filled task by task (``BAD_IMAGE`` until measured)."""

    def __init__(self, names: list[str], mjd: np.ndarray, n_stars: int, progress):
        t = len(names)
        self.names, self.mjd = names, mjd
        self.cols = {c: np.full((t, n_stars), np.nan) for c in _FLOAT_COLUMNS}
        self.cols.update({c: np.zeros((t, n_stars), np.int64) for c in _INT_COLUMNS})
        self.cols["flags"][:] = ForcedFlag.BAD_IMAGE
        self.progress, self.bar = progress, None
        self.errors: list[tuple[list[int], BaseException]] = []
        self.n_tasks = self.n_done = self.n_images = 0

    def bad(self, i: int, why: str) -> None:
        warn_bad(self.names[i], why)

    def begin(self, n_tasks: int) -> None:
        self.n_tasks = n_tasks
        self.bar = Progress(self.progress, total=n_tasks, desc="jaxphot forced")

    def add(self, idx: list[int], res) -> None:
        """The result of the task of exposures ``idx``: its dict, or the exception it raised."""
        self.n_done += 1
        if isinstance(res, BaseException):  # warned about once the others are in (or raised)
            self.errors.append((idx, res))
        else:
            sel = np.asarray(idx)
            kept = sel[res["keep"]]
            for c, v in res["cols"].items():
                self.cols[c][kept] = v
            self.mjd[sel] = res["mjd"]
            for j, why in res["bad"].items():
                self.bad(idx[j], why)
            self.n_images += len(kept)
        if self.bar is not None:
            self.bar(f"{self.n_images} exposures measured", self.n_done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def report_failures(self) -> None:
        """Warn about the exposures of failed tasks, or raise when every task failed (nothing
        was measured: the error is the call's, as in one forced_photometry call)."""
        if self.errors and len(self.errors) == self.n_tasks:
            raise self.errors[0][1]
        for idx, exc in self.errors:
            for i in idx:
                self.bad(i, f"its task failed ({type(exc).__name__}: {exc})")

    def table(self, star_id: np.ndarray) -> Table:
        """The long table, star-major, as forced_photometry's."""
        return forced_table(self.cols, star_id, self.names, self.mjd)


def _run_here(jobs, results: _Results) -> None:
    for idx, args in jobs:
        try:
            res = _measure_chunk(*args)
        except Exception as exc:  # noqa: BLE001  (isolated as a task on a worker would be)
            res = exc
        results.add(idx, res)


def _run_dask(make_jobs, n_images: int, workers, scheduler, results: _Results) -> None:
    """The tasks of ``make_jobs(n_workers)`` on Dask, each result passed to ``results``."""
    with dask_session(workers, scheduler, n_images, "forced_batch") as client:
        # tasks for every thread of the cluster (scheduler_info() lists only a few workers)
        jobs = make_jobs(max(1, sum(client.nthreads().values())))
        results.begin(len(jobs))
        calls = [(tuple(idx), f"jaxphot-forced-{k}", functools.partial(_measure_chunk, *args))
                 for k, (idx, args) in enumerate(jobs)]
        for idx, res in dask_completed(client, calls):
            results.add(list(idx), res)


def forced_batch(
    images,
    catalog,
    psf,
    *,
    workers: int | None = None,
    scheduler=None,
    images_per_task: int | None = None,
    progress=None,
    **forced_kwargs,
) -> Table:
    """Forced photometry of many exposures, in chunks of exposures run as Dask tasks.

    The result is the table of :func:`~jaxphot.multi.forced.forced_photometry` over the whole
    list, whatever the chunking: the same rows in the same (star-major) order, ``image_id``
    numbered over the whole list, ``meta["images"]`` naming every exposure.

    Parameters
    ----------
    images : (T, H, W) array, or list of T (H, W) arrays and/or FITS paths
        The exposures (counts, ADU). Files are read by the tasks (here only their headers).
    catalog : astropy Table
        The master list: ``ra, dec`` (degrees) and/or ``x, y`` (pixels of the first exposure
        of the whole list), as for forced_photometry. It is placed in every exposure here,
        once, through the WCSs or pixel transforms; the tasks get pixel positions.
    psf : PSF model, spec string, list of T of them, or ``"auto"``
        As for forced_photometry; ``"auto"`` builds an ePSF from each exposure in its task
        (:func:`~jaxphot.epsf.build_epsf_from_image`, with that exposure's gain and mask). An
        exposure where none can be built gives ``BAD_IMAGE`` rows.
    workers : int, optional
        Worker processes of the LocalCluster (one thread each). Default: one per CPU core, or
        1 when a GPU JAX plugin is installed. ``0`` runs the chunks one after another in this
        process, without Dask.
    scheduler : str or distributed.Client, optional
        Address of a running Dask scheduler (``tcp://host:8786``), or a Client, instead of a
        LocalCluster. Files must be readable from the workers at the same paths.
    images_per_task : int, optional
        Exposures per task. Default: at most 2^26 pixels of exposures per task, and about 4
        tasks per worker (in this process: the pixel bound only).
    progress : bool or callable, optional
        Progress over the tasks: a bar on stderr (default: when stderr is a terminal), or
        ``f(message, fraction)`` (see :class:`jaxphot.progress.Progress`).
    **forced_kwargs
        Passed to forced_photometry (``wcs``, ``error``, ``mask``, ``gain``, ``read_noise``,
        ``background``, ``fit_half``, ``neighbours``...). Per-exposure lists of T entries are
        sliced per task; ``wcs`` is used here, to place the catalogue.

    Returns
    -------
    astropy Table
        One row per star and exposure (star-major), with forced_photometry's columns:
        ``star_id, image_id, x, y`` (pixels), ``flux, flux_err`` (counts), ``bkg`` (counts per
        pixel), ``chi2, dof, group_size, flags`` (:class:`~jaxphot.multi.ForcedFlag`) and
        ``mjd`` when a header gives it. A task that failed gives NaN rows flagged
        ``BAD_IMAGE`` for its exposures, with a :class:`~jaxphot.multi.BadImageWarning`.

    Raises
    ------
    ValueError
        As forced_photometry (unusable catalogue, mismatched per-exposure lists, sky positions
        without any WCS...), for a negative ``workers`` or ``images_per_task`` < 1, and for
        the Dask path without dask.distributed installed.
    TypeError
        For a keyword forced_photometry does not take.
    Exception
        The error of the tasks when every task failed.

    Notes
    -----
    Every file's header is read here, one after another, to place the catalogue. One
    difference from a single call: a file whose header reads but whose pixels do not (cut
    short) still lends its WCS to placing the catalogue, where one call would ignore its WCS.
    """
    kw = dict(forced_kwargs)
    _check_options(workers, images_per_task, kw)
    items = exposure_list(images)
    heads, sizes = _headers(items)
    cat = catalog_positions(catalog)
    auto = is_auto_psf(psf)
    opts = per_image_inputs(len(heads), psf=_EPSFPerExposure() if auto else psf,
                            **{k: kw.pop(k, None) for k in ("wcs", *_PER_IMAGE)})
    check_forced_options(opts=opts)
    placed = image_positions(cat, opts.transforms, heads)
    show = sys.stderr.isatty() if progress is None else progress
    results = _Results([e.name for e in heads], np.array([e.mjd for e in heads], float),
                       len(cat["star_id"]), show if callable(show) else bool(show))
    todo = []
    for i, pos in enumerate(placed):
        if isinstance(pos, str):
            results.bad(i, pos)
        else:
            todo.append(i)
    sent = [str(im) if isinstance(im, (str, Path)) else e.data for im, e in zip(items, heads, strict=True)]
    per = dict(error=opts.errors, mask=opts.masks, gain=opts.gains, read_noise=opts.noises)

    def make_jobs(n_workers: int) -> list:
        return [(idx, ([sent[i] for i in idx], [placed[i] for i in idx],
                       None if auto else [opts.psfs[i] for i in idx],
                       {**kw, **{k: [v[i] for i in idx] for k, v in per.items()}}))
                for idx in _chunks(todo, sizes, n_workers, images_per_task)]

    try:
        if todo and workers == 0 and scheduler is None:
            jobs = make_jobs(0)
            results.begin(len(jobs))
            _run_here(jobs, results)
        elif todo:
            _run_dask(make_jobs, len(todo), workers, scheduler, results)
    finally:
        results.close()
    results.report_failures()
    return results.table(cat["star_id"])
