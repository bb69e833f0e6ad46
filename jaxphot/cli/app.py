"""The ``jaxphot`` command: ``jaxphot photometry``, ``demo``, ``epsf`` and ``batch``.

Bad input (unreadable files, missing HDUs, unusable images or PSFs) ends with a one-line
``jaxphot: error: ...`` message on stderr and exit status 2, never a traceback. Exit 0 on
success.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from .batch import add_batch_subcommand, run_batch_cli

__all__ = ["main", "CLIError"]


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


def _psf_from_spec(spec: str, oversampling: int | None):
    from ..psf import PSFSpecError, parse_psf_spec

    try:
        return parse_psf_spec(spec, oversampling)
    except PSFSpecError as exc:
        raise CLIError(str(exc)) from None


def _add_photometry(sub) -> None:
    p = sub.add_parser(
        "photometry",
        help="PSF photometry of a whole FITS image",
        description="Detect, group and fit every star of an image; write a "
        "catalog (ECSV or FITS) and optionally the residual image.",
    )
    p.add_argument("image", help="FITS image")
    p.add_argument("--hdu", default=None, help="HDU index or EXTNAME (default: first image)")
    p.add_argument("--error", help="FITS image of 1-sigma errors (same units as the image)")
    p.add_argument("--mask", help="FITS mask, non-zero = bad pixel")
    p.add_argument(
        "--psf",
        default="gaussian:fwhm=3",
        help="gaussian:fwhm=F | moffat:fwhm=F,beta=B | PSF.fits | auto (default gaussian:fwhm=3)",
    )
    p.add_argument(
        "--oversampling",
        type=int,
        default=None,
        help="oversampling of a PSF FITS file (default: header OVERSAMP or 1)",
    )
    p.add_argument(
        "--variation", default="auto",
        help="with --psf auto: spatial variation of the ePSF, auto | 0 | 1 | 2 | grid:NYxNX "
        "(default auto: chosen by cross-validation on held-out PSF stars)",
    )
    p.add_argument(
        "--gain", type=float, default=None, help="e-/image unit (default: header GAIN, else none)"
    )
    p.add_argument(
        "--read-noise", type=float, default=None,
        help="read noise in e- (default: header RDNOISE/READNOIS; used only with a gain)",
    )
    _add_saturation(p)
    _add_apcorr(p)
    p.add_argument("--threshold", type=float, default=4.5, help="detection threshold (sigma)")
    p.add_argument("--maxiters", type=int, default=4, help="fit/detect cycles")
    p.add_argument("--background-box", type=int, default=64, help="mesh box size (px)")
    p.add_argument("--zeropoint", type=float, default=0.0, help="magnitude zero point")
    p.add_argument("-o", "--output", required=True, help="catalog: .ecsv, .fits or .csv")
    p.add_argument("--residual", help="write the residual image to this FITS file")
    p.add_argument("--model", help="write the model image (stars only) to this FITS file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--cuts", choices=["default"], default=None,
                   help="add a boolean good column from the default quality cuts (jaxphot.apply_cuts)")
    p.add_argument("--confusion-noise", action="store_true",
                   help="add the confusion noise of undetected stars, measured on the residual, "
                   "to flux_err (keeps flux_err_fit and flux_err_confusion)")


def _add_saturation(p) -> None:
    p.add_argument(
        "--saturation", type=float, default=None,
        help="saturation level in image units (default: header SATURATE, SATLEVEL or MAXLIN; "
        "converted from e- with the gain if its comment says so); saturated pixels and their "
        "bleed columns are masked",
    )


def _add_demo(sub) -> None:
    d = sub.add_parser(
        "demo",
        help="the whole pipeline on a simulated crowded cluster",
        description="Simulate a crowded cluster field, run photometry, print "
        "completeness and accuracy against the truth, write the catalog and a "
        "diagnostic PNG. No files or network needed.",
    )
    d.add_argument("-o", "--outdir", default="jaxphot_demo", help="output directory")
    d.add_argument("--size", type=int, default=512, help="image side in pixels")
    d.add_argument("--nstars", type=int, default=400, help="number of stars")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--no-png", action="store_true", help="skip the diagnostic PNG")


def _add_epsf(sub) -> None:
    e = sub.add_parser(
        "epsf",
        help="build an ePSF from the stars of an image",
        description="Build an oversampled effective PSF from the bright isolated "
        "stars of an image and write it as FITS (usable with --psf).",
    )
    e.add_argument("image", help="FITS image")
    e.add_argument("--hdu", default=None)
    e.add_argument("--oversampling", type=int, default=4)
    e.add_argument("--fwhm", type=float, default=None, help="FWHM guess in pixels")
    e.add_argument("--variation", default="auto",
                   help="auto | 0 | 1 | 2 | grid:NYxNX (default auto: cross-validated)")
    _add_saturation(e)
    _add_apcorr(e)
    e.add_argument("-o", "--output", required=True, help="output FITS file (.fits)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def _add_forced(sub) -> None:
    f = sub.add_parser(
        "forced",
        help="forced PSF photometry of a master catalogue in many exposures",
        description="Fit every catalogue star's flux and a local sky at fixed positions in each "
        "exposure (positions from ra, dec through each header's WCS, or x, y of registered "
        "images) and write the long light-curve table. A corrupt exposure is flagged, not fatal. "
        "The exposures are measured in chunks, in this process (default) or as Dask tasks "
        "(--workers N, --scheduler); the table is the same either way.",
    )
    f.add_argument("images", nargs="+", help="FITS exposures (quoted globs are expanded)")
    f.add_argument("--catalog", required=True, help="master catalogue (ra, dec or x, y columns)")
    f.add_argument("--psf", required=True,
                   help="gaussian:fwhm=F | moffat:fwhm=F,beta=B | PSF.fits | auto (an ePSF built "
                   "from each exposure)")
    f.add_argument("--gain", type=float, default=None, help="electrons per ADU (Poisson weights)")
    f.add_argument("--read-noise", type=float, default=None, help="read noise, electrons")
    f.add_argument("--background", choices=("plane", "constant"), default="plane")
    g = f.add_mutually_exclusive_group()
    g.add_argument("--workers", type=int, default=0,
                   help="local Dask worker processes (default 0: in this process, no Dask)")
    g.add_argument("--scheduler", default=None, help="address of a Dask scheduler, tcp://host:8786")
    f.add_argument("--wide", default=None, help="also write the (star x image) table here")
    f.add_argument("-o", "--output", required=True, help="output table (.ecsv, .fits, ...)")
    f.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")


def _forced_where(a) -> str:
    """Where ``jaxphot forced`` runs, in words."""
    if a.scheduler:
        return f"on the Dask scheduler {a.scheduler}"
    return "in this process" if a.workers == 0 else f"on {a.workers} local Dask workers"


def _cmd_forced(a) -> int:
    import glob

    from astropy.table import Table

    from ..io import write_catalog
    from ..multi import ForcedFlag, pivot_light_curves
    from ..scale.accelerator import configure_accelerator_memory, gpu_installed
    from ..scale.forced import forced_batch

    if a.workers < 0:
        raise CLIError(f"--workers must be >= 0, got {a.workers}")
    paths = []
    for pat in a.images:
        hits = sorted(glob.glob(pat))
        paths += hits if hits else [pat]  # a missing file becomes a flagged exposure
    outs = [a.output] + ([a.wide] if a.wide else [])
    for o in outs:
        if Path(o).exists() and not a.overwrite:
            raise CLIError(f"{o!r} exists (use --overwrite)")
    try:
        cat = Table.read(a.catalog)
    except Exception as exc:
        raise CLIError(f"cannot read --catalog {a.catalog!r}: {exc}") from None
    auto = a.psf.strip().lower() == "auto"
    psf = "auto" if auto else _psf_from_spec(a.psf, None)
    where = _forced_where(a)
    print(f"jaxphot: forced photometry of {len(cat)} stars in {len(paths)} exposures, psf "
          f"{'auto (an ePSF from each exposure)' if auto else repr(psf)}, {where}", file=sys.stderr)
    if a.workers and gpu_installed():
        configure_accelerator_memory()  # this process shares the GPU with the workers it starts
    try:
        tab = forced_batch(paths, cat, psf, workers=a.workers, scheduler=a.scheduler,
                           progress=False if a.no_progress else None, gain=a.gain,
                           read_noise=a.read_noise, background=a.background)
    except OSError as exc:
        if not a.scheduler:
            raise
        raise CLIError(f"--scheduler {a.scheduler}: {exc}") from None
    write_catalog(tab, a.output, overwrite=True)
    if a.wide:
        write_catalog(pivot_light_curves(tab), a.wide, overwrite=True)
    n_bad = len({int(i) for i in tab["image_id"][(tab["flags"] & ForcedFlag.BAD_IMAGE) > 0]})
    print(f"jaxphot: forced photometry of {len(cat)} stars in {len(paths)} exposures "
          f"({n_bad} unusable) -> {a.output}", file=sys.stderr)
    return 0


def _build_parser() -> argparse.ArgumentParser:
    """The ``jaxphot`` parser; building it imports no JAX."""
    ap = argparse.ArgumentParser(prog="jaxphot", description="Batched stellar PSF photometry in JAX.")
    ap.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_photometry, _add_demo, _add_epsf, add_batch_subcommand,
                _add_forced,
                _add_ast):
        add(sub)
    return ap


def _read_aux(path, hdu, shape, what):
    from ..io import read_image

    img = read_image(path, hdu, what=what)
    if img.data.shape != shape:
        raise CLIError(f"{what} {str(path)!r} has shape {img.data.shape}, the image has {shape}")
    return img.data


def _variation_arg(text):
    from ..epsf.variation import parse_variation

    try:
        return parse_variation(text)
    except ValueError as exc:
        raise CLIError(f"--variation: {exc}") from None


def _report_variation(psf) -> None:
    """Print the ePSF's variation choice and its cross-validation evidence."""
    choice = getattr(psf, "variation", None)
    if choice is not None:
        print(f"jaxphot: {choice.summary()}", file=sys.stderr)
    else:
        print(f"jaxphot: ePSF {type(psf).__name__}", file=sys.stderr)


def _add_apcorr(p) -> None:
    """The --apcorr-radius option of the commands that build ePSFs."""
    p.add_argument(
        "--apcorr-radius", type=float, default=None, metavar="PX",
        help="with an ePSF built from the image: scale it so that fitted fluxes are the light "
        "within PX pixels of the PSF stars (aperture correction; for uncrowded images). "
        "Default: the light the ePSF's box holds",
    )


def _apcorr_kwargs(radius) -> dict:
    """build_epsf_from_image's flux-scale keywords for --apcorr-radius."""
    if radius is None:
        return {}
    if not (math.isfinite(radius) and radius > 0):
        raise CLIError(f"--apcorr-radius must be a positive number of pixels, got {radius:g}")
    return {"normalize": "aperture", "aperture_radius": float(radius)}


def _auto_psf(data, mask, oversampling, variation="auto", gain=None, saturation=None,
              apcorr_radius=None):
    try:
        from ..epsf import build_epsf_from_image
    except ImportError:
        raise CLIError(
            "--psf auto needs the ePSF builder (jaxphot.epsf), which is not "
            "available in this installation"
        ) from None
    import numpy as np

    d = np.where(mask, np.nan, data) if mask is not None else data
    try:
        psf = build_epsf_from_image(d, oversampling=oversampling or 4,
                                    variation=_variation_arg(variation), gain=gain,
                                    saturation=saturation, **_apcorr_kwargs(apcorr_radius))
    except ValueError as exc:
        raise CLIError(f"--psf auto: cannot build an ePSF from this image: {exc}") from None
    _report_variation(psf)
    return psf


def _detector(a, img, error) -> dict:
    """Gain (e-/image unit), read noise (e-) and saturation (image units) with their sources.

    Each is ``(value or None, where it came from)``: the option, else the header keyword
    (:func:`jaxphot.io.read_header_value`), else none.
    """
    for opt, v, ok in (("--gain", a.gain, lambda v: v > 0),
                       ("--read-noise", a.read_noise, lambda v: v >= 0),
                       ("--saturation", getattr(a, "saturation", None), lambda v: v > 0)):
        if v is not None and not (math.isfinite(v) and ok(v)):
            sign = "non-negative" if opt == "--read-noise" else "positive"
            raise CLIError(f"{opt} must be a finite {sign} number, got {v:g}")
    out = {}
    for name, opt, val in (("gain", "--gain", a.gain), ("read_noise", "--read-noise",
                           a.read_noise), ("saturation", "--saturation",
                           getattr(a, "saturation", None))):
        if val is not None:
            out[name] = (float(val), f"option {opt}")
        else:
            hv = img.header_value(name)
            out[name] = (hv.value, hv.source)
    if a.gain is None and "jy" in (img.bunit or "").lower() and out["gain"][0] is not None:
        # A flux-calibrated image: the header gain (e-/DN) is rescaled to its units.
        g = img.gain
        out["gain"] = (g, out["gain"][1] + " x EXPTIME / FLUXCONV" if g else "none (BUNIT "
                       f"{img.bunit} without FLUXCONV/EXPTIME)")
    gain, rn = out["gain"][0], out["read_noise"][0]
    if rn is not None and gain is None and error is None:
        # Read noise (e-) cannot be put in image units without a gain: the sky rms is used.
        print(f"jaxphot: read noise {rn:g} e- ({out['read_noise'][1]}) not used: no gain; "
              "the noise is the measured sky rms", file=sys.stderr)
        out["read_noise"] = (None, out["read_noise"][1] + ", unused without a gain")
    return out


def _warn_if_oversampled(path, psf, data, mask) -> None:
    """One warning line when the PSF file, read at 1x, is much wider than the image's stars
    (an oversampled PSF without OVERSAMP: it would find a fraction of the stars)."""
    import warnings

    from ..epsf import measure_star_fwhm
    from ..psf import PSFOversamplingWarning, check_psf_sampling

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            star_fwhm = measure_star_fwhm(data, mask)
    except ValueError:  # too few stars to tell: the fit's chi2 check still warns
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PSFOversamplingWarning)
        check_psf_sampling(psf, star_fwhm, source=f"PSF file {str(path)!r}")
    for w in caught:
        print(f"jaxphot: warning: {w.message}", file=sys.stderr)


def _describe_inputs(a, img, psf, det: dict) -> str:
    msgs = [f"image {a.image} {img.data.shape[1]}x{img.data.shape[0]}", f"psf {psf!r}"]
    units = {"gain": "e-/unit", "read_noise": "e-", "saturation": "image units"}
    words = {"gain": "gain", "read_noise": "read noise", "saturation": "saturation"}
    for k in ("gain", "read_noise", "saturation"):
        v, src = det[k]
        msgs.append(f"{words[k]} {v:g} {units[k]} ({src})" if v is not None
                    else f"{words[k]} none")
    if img.bunit:
        msgs.append(f"BUNIT {img.bunit}")
    return "jaxphot: " + ", ".join(msgs)


def _write_outputs(a, res, img, psf, out: Path) -> None:
    """The catalog (with the image's units and provenance), then the residual and model images."""
    import numpy as np

    from ..io import write_catalog, write_image

    t = res.table
    if img.bunit:
        t["flux_fit"].unit = t["flux_err"].unit = t["flux_init"].unit = f"{img.bunit} pix"
        t.meta["bunit"] = img.bunit
    t.meta.update(image=str(a.image), hdu=str(img.hdu), psf=repr(psf))
    if getattr(psf, "variation", None) is not None:  # --psf auto: the choice and its evidence
        t.meta["psf_variation"] = psf.variation.summary()
    write_catalog(t, out)
    n_flag = int(np.count_nonzero(t["flags"]))
    print(
        f"jaxphot: {len(t)} stars ({n_flag} flagged), {t.meta['n_iterations']} iterations, "
        f"{t.meta['elapsed_s']:.1f} s -> {out}",
        file=sys.stderr,
    )
    for path, data, what in ((a.residual, res.residual, "residual"), (a.model, res.model, "model")):
        if path:
            write_image(path, data, img.header)
            print(f"jaxphot: {what} image -> {path}", file=sys.stderr)


_FITS = (".fits", ".fit", ".fts")


def _check_outputs(a, outputs) -> None:
    """Every ``(option, path, suffixes)`` output checked before any work: not an input, not
    another output, known extension, writable folder, replaced only with ``--overwrite``."""
    from ..validate import check_output_path

    inputs = [getattr(a, k, None) for k in ("image", "error", "mask")]
    psf = getattr(a, "psf", None)
    if psf and Path(psf).is_file():
        inputs.append(psf)
    seen: dict = {}
    for opt, path, suffixes in outputs:
        if not path:
            continue
        try:
            out = check_output_path(path, inputs=inputs, overwrite=a.overwrite, suffixes=suffixes,
                                    what=opt)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        key = out.resolve()
        if key in seen:
            raise CLIError(f"{opt} {path!r} and {seen[key]} name the same file")
        seen[key] = f"{opt} {path!r}"


def _cmd_photometry(a) -> int:
    from ..image.pipeline import photometry
    from ..io import read_image

    _check_outputs(a, [("-o", a.output, (".ecsv", ".csv") + _FITS),
                       ("--residual", a.residual, _FITS), ("--model", a.model, _FITS)])
    from ..validate import check_size

    check_size("--background-box", a.background_box)  # in the user's words, before any work
    img = read_image(a.image, a.hdu)
    shape = img.data.shape
    error = _read_aux(a.error, None, shape, "error map") if a.error else None
    mask = _read_aux(a.mask, None, shape, "mask") != 0 if a.mask else None
    out = Path(a.output)
    det = _detector(a, img, error)
    if a.psf.strip().lower() == "auto":
        psf = _auto_psf(img.data, mask, a.oversampling, a.variation, det["gain"][0],
                        det["saturation"][0], a.apcorr_radius)
    else:
        psf = _psf_from_spec(a.psf, a.oversampling)
        if a.oversampling is None and Path(a.psf).is_file():
            _warn_if_oversampled(a.psf, psf, img.data, mask)
    print(_describe_inputs(a, img, psf, det), file=sys.stderr)
    res = photometry(
        img.data,
        psf,
        error=error,
        mask=mask,
        gain=det["gain"][0],
        read_noise=det["read_noise"][0],
        saturation=det["saturation"][0],
        threshold=a.threshold,
        maxiters=a.maxiters,
        background_box=a.background_box,
        zeropoint=a.zeropoint,
        wcs=img.wcs,
        confusion_noise=a.confusion_noise,
        progress=not a.no_progress and sys.stderr.isatty(),
        return_images=True,
    )
    if getattr(a, "cuts", None):
        from ..image.quality import apply_cuts

        apply_cuts(res.table if hasattr(res, "table") else res, a.cuts)
    _write_outputs(a, res, img, psf, out)
    return 0


def _cmd_demo(a) -> int:
    from .demo import run_demo

    if a.size < 64 or a.nstars < 1:
        raise CLIError("--size must be >= 64 and --nstars >= 1")
    run_demo(a.outdir, shape=(a.size, a.size), n_stars=a.nstars, seed=a.seed, png=not a.no_png)
    return 0


def _cmd_epsf(a) -> int:
    from ..io import read_image
    from ..psf import write_psf_fits

    _check_outputs(a, [("-o", a.output, _FITS)])
    img = read_image(a.image, a.hdu)
    if a.saturation is not None and not (math.isfinite(a.saturation) and a.saturation > 0):
        raise CLIError(f"--saturation must be a finite positive number, got {a.saturation:g}")
    if a.saturation is not None:
        sat, src = a.saturation, "option --saturation"
    else:
        hv = img.header_value("saturation")
        sat, src = hv.value, hv.source
    print(f"jaxphot: saturation {sat:g} image units ({src})" if sat is not None
          else "jaxphot: saturation none", file=sys.stderr)
    try:
        from ..epsf import build_epsf_from_image
    except ImportError:
        raise CLIError("the ePSF builder (jaxphot.epsf) is not available") from None
    try:
        psf = build_epsf_from_image(img.data, fwhm_guess=a.fwhm, oversampling=a.oversampling,
                                    variation=_variation_arg(a.variation), saturation=sat,
                                    **_apcorr_kwargs(a.apcorr_radius))
    except ValueError as exc:
        raise CLIError(f"cannot build an ePSF from {a.image!r}: {exc}") from None
    try:
        write_psf_fits(psf, a.output, overwrite=True)  # the one PSF file format
    except OSError as exc:
        raise CLIError(f"cannot write {a.output!r}: {exc}") from None
    _report_variation(psf)
    print(f"jaxphot: ePSF {type(psf).__name__} at {psf.oversampling}x -> {a.output}", file=sys.stderr)
    return 0


def _add_ast(sub) -> None:
    t = sub.add_parser(
        "ast", help="artificial-star test: completeness, bias and error honesty",
        description="Inject stars of known flux with the image's PSF, redo the photometry and "
        "write one row per injected star; print the completeness per magnitude bin and the "
        "50 %% / 90 %% completeness magnitudes.")
    t.add_argument("image", help="FITS image")
    t.add_argument("--hdu", default=None, help="HDU index or EXTNAME (default: first image)")
    t.add_argument("--mask", help="FITS mask, non-zero = bad pixel")
    t.add_argument("--psf", default="gaussian:fwhm=3",
                   help="gaussian:fwhm=F | moffat:fwhm=F,beta=B | PSF.fits | auto")
    t.add_argument("--oversampling", type=int, default=None, help="oversampling of a PSF FITS file")
    t.add_argument("--variation", default="auto", help="with --psf auto: as for photometry")
    t.add_argument("-n", "--n-stars", type=int, default=2000, help="injected stars (default 2000)")
    t.add_argument("--flux-range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="injected total fluxes, image units x pixels (default: from the image)")
    t.add_argument("--gain", type=float, default=None, help="e-/image unit (default: header GAIN)")
    t.add_argument("--read-noise", type=float, default=None, help="read noise in e-")
    _add_saturation(t)
    _add_apcorr(t)
    t.add_argument("--threshold", type=float, default=4.5, help="detection threshold (sigma)")
    t.add_argument("--zeropoint", type=float, default=0.0, help="magnitude zero point")
    t.add_argument("--bins", type=float, default=0.25, help="magnitude bin width (default 0.25)")
    t.add_argument("--seed", type=int, default=0, help="random seed")
    t.add_argument("--full-rerun", action="store_true", help="re-run the whole image per pass")
    t.add_argument("-o", "--output", required=True, help="AST table: .ecsv, .fits or .csv")
    t.add_argument("--plot", help="write the four-panel AST figure to this PNG/PDF")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--overwrite", action="store_true", help="replace existing output files")


def _cmd_ast(a) -> int:
    from ..image.artificial import artificial_star_test, completeness
    from ..io import read_image, write_catalog

    _check_outputs(a, [("-o", a.output, (".ecsv", ".csv") + _FITS),
                       ("--plot", a.plot, (".png", ".pdf", ".svg"))])
    if a.n_stars < 1:
        raise CLIError(f"-n/--n-stars must be >= 1, got {a.n_stars}")
    if not (math.isfinite(a.bins) and a.bins > 0):
        raise CLIError(f"--bins must be a positive width in mag, got {a.bins:g}")
    img = read_image(a.image, a.hdu)
    mask = _read_aux(a.mask, None, img.data.shape, "mask") != 0 if a.mask else None
    a.error = None
    det = _detector(a, img, None)
    if a.psf.strip().lower() == "auto":
        psf = _auto_psf(img.data, mask, a.oversampling, a.variation, det["gain"][0],
                        det["saturation"][0], a.apcorr_radius)
    else:
        psf = _psf_from_spec(a.psf, a.oversampling)
    print(_describe_inputs(a, img, psf, det), file=sys.stderr)
    try:
        tab = artificial_star_test(
            img.data, psf, n_stars=a.n_stars, flux_range=a.flux_range, seed=a.seed,
            full_rerun=a.full_rerun, progress=not a.no_progress and sys.stderr.isatty(),
            mask=mask, gain=det["gain"][0], read_noise=det["read_noise"][0],
            saturation=det["saturation"][0], threshold=a.threshold, zeropoint=a.zeropoint)
    except ValueError as exc:
        raise CLIError(f"ast: {exc}") from None
    tab.meta.update(image=str(a.image), hdu=str(img.hdu), psf=repr(psf))
    comp = completeness(tab, bins=a.bins)
    write_catalog(tab, a.output)
    cols = ("mag", "n", "n_recovered", "completeness", "completeness_err", "dmag_median",
            "dmag_sigma", "pull_sigma")
    view = comp[cols]
    for c in cols[3:]:
        view[c].format = ".3f"
    view["mag"].format = ".2f"
    view.pprint_all()
    print(f"mag50 {comp.meta['mag50']:.3f}  mag90 {comp.meta['mag90']:.3f}  "
          f"({int(tab['recovered'].sum())}/{len(tab)} recovered, {tab.meta['n_passes']} passes)")
    print(f"jaxphot: AST of {len(tab)} stars -> {a.output}", file=sys.stderr)
    if a.plot:
        try:
            import matplotlib
        except ImportError:
            raise CLIError('--plot needs matplotlib: pip install "jaxphot[plot]"') from None
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from ..plotting import plot_ast

        fig = plt.figure(figsize=(10, 8))
        plot_ast(fig, tab, bins=a.bins)
        fig.suptitle(f"AST {Path(a.image).name}: mag50 {comp.meta['mag50']:.2f}, "
                     f"mag90 {comp.meta['mag90']:.2f}")
        fig.tight_layout()
        fig.savefig(a.plot, dpi=90)
        plt.close(fig)
        print(f"jaxphot: AST figure -> {a.plot}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    """Entry point of the ``jaxphot`` command. Returns the exit status."""
    ap = _build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere on the line, not only before the command
    argv = [x for x in argv if x != "--debug"]
    try:
        a = ap.parse_args(argv)
        a.debug = debug
    except SystemExit as exc:  # argparse already printed its one-line usage error
        return int(exc.code or 0)
    if a.command is None:
        ap.print_help()
        return 2
    try:
        commands = {"photometry": _cmd_photometry, "demo": _cmd_demo, "epsf": _cmd_epsf,
                    "batch": run_batch_cli,
                    "forced": _cmd_forced,
                    "ast": _cmd_ast}
        return commands[a.command](a)
    except (CLIError, ValueError, OSError) as exc:
        if a.debug:
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"jaxphot: error: {msg}", file=sys.stderr)
        return 2
    except MemoryError:
        print("jaxphot: error: out of memory (try a smaller image)", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("jaxphot: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line, the traceback only with --debug
        if a.debug:
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"jaxphot: internal error: {type(exc).__name__}: {msg} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
