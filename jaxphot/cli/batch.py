"""``jaxphot batch``: photometry of many images with Dask, one catalog per image.

Building the parser imports no JAX (``jaxphot --help`` stays quick); :func:`run_batch_cli`
imports the pipeline when it runs.
"""

from __future__ import annotations

import sys

from ..scale.files import CATALOG_FORMATS, SUMMARY_NAME

__all__ = ["add_batch_subcommand", "run_batch_cli"]


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
        "--psf", default="gaussian:fwhm=3", help="gaussian:fwhm=F | moffat:fwhm=F,beta=B | PSF.fits | auto"
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
    b.add_argument("--format", choices=CATALOG_FORMATS, default="ecsv", help="catalog format")
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
    from ..scale.accelerator import configure_accelerator_memory, gpu_installed
    from ..scale.images import batch
    from ..validate import check_size

    check_size("--background-box", args.background_box)  # before any image is read
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
    if args.workers is None and args.scheduler is None and gpu_installed():
        # This command's own process shares the GPU with the local workers it starts.
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
