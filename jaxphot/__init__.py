"""jaxphot: differentiable, batched stellar photometry in JAX, on CPUs and GPUs.

The package is layered; each folder imports only from the ones above it in this list:

``core``      the engine: parameter layout, scene model, solver, CRLB, batching, :func:`fit_cutouts`
``psf``       PSF/PRF models (analytic, discrete, spatially varying), the PSF file format
``image``     background, detection, grouping, cutouts, rendering and the driver :func:`photometry`
``aperture``  aperture photometry
``epsf``      empirical PSFs built from stars
``sim``       simulated cutouts and fields with known truth, and scoring
``scale``     several devices, many images (Dask)
``cli``       the ``jaxphot`` command and its demo

Beside them: ``constants``, ``io`` (FITS and WCS), ``stats``, ``morphology``, ``matching``,
``datasets`` (below every folder) and ``theory`` (MATPHOT's performance model; uses ``core``).

The public names below are imported on first use, so ``import jaxphot`` is quick, pulls in only
what a program uses, and changes no global setting (the compilation cache is switched on by the
first call that compiles, or by :func:`enable_compilation_cache`).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    # core engine
    "fit_cutouts": "core.fit",
    "FitResult": "core.fit",
    "model_cutouts": "core.fit",
    "FitFlag": "core.flags",
    "enable_compilation_cache": "core.config",
    # PSF models
    "GaussianPRF": "psf",
    "MoffatPSF": "psf",
    "DiscretePSF": "psf",
    "DetectorPRF": "psf",
    "PolynomialPSF": "psf",
    "GriddedPSF": "psf",
    "read_psf_fits": "psf",
    "write_psf_fits": "psf",
    # whole images
    "photometry": "image.pipeline",
    "apply_cuts": "image.quality",
    "PhotometryResult": "image.pipeline",
    "estimate_background": "image.background",
    "Background": "image.background",
    "find_stars": "image.detection",
    "segment": "image.detection",
    "find_peaks": "image.detection",
    "deblend": "image.deblend",
    "centroid_moments": "image.detection",
    "centroid_gaussian_marginal": "image.detection",
    "group_stars": "image.grouping",
    "bucket_groups": "image.grouping",
    "make_model_image": "image.render",
    "make_residual_image": "image.render",
    "artificial_star_test": "image.artificial",
    "completeness": "image.artificial",
    # apertures, morphology, catalogues
    "aperture_photometry": "aperture",
    "aperture_light_curves": "aperture",
    "aperture_sums": "aperture",
    "aperture_corrections": "aperture",
    "growth_curve": "aperture",
    "ApertureFlag": "aperture",
    "kron_photometry": "aperture",
    "moments_from_cutouts": "morphology",
    "segment_properties": "morphology",
    "kron_radius": "morphology",
    "flux_radius": "morphology",
    "ellipse_from_moments": "morphology",
    "crossmatch": "matching",
    # empirical PSFs
    "build_epsf": "epsf",
    "select_stars": "epsf",
    "build_epsf_from_image": "epsf",
    "build_epsf_grid": "epsf",
    # simulated data
    "simulate_cutouts": "sim",
    "simulate_cluster": "sim",
    # scale-out
    "batch": "scale.images",
    "forced_batch": "scale.forced",
    "photometry_tiled": "scale.images",
    "fit_sharded": "scale.sharding",
    "use_devices": "scale.sharding",
    # many exposures
    "forced_photometry": "multi.forced",
    "pivot_light_curves": "multi.forced",
    "ForcedFlag": "multi.forced",
    "refine_alignment": "multi.align",
    "joint_photometry": "multi.joint",
    # plots (matplotlib imported only when called)
    "plot_apertures": "plotting",
    "plot_segments": "plotting",
    "plot_light_curve": "plotting",
    "plot_ast": "plotting",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        importlib.import_module(".psf", __name__)  # registers PSF spec strings ("gaussian:fwhm=3")
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    try:  # a submodule used as an attribute, e.g. jaxphot.theory.crlb(...)
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise  # the submodule exists but needs something missing: say what
        raise AttributeError(f"module 'jaxphot' has no attribute {name!r}") from None


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
