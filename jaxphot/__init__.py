"""jaxphot: differentiable, batched stellar photometry in JAX, on CPUs and GPUs.

The public names below are imported lazily (on first use), so ``import jaxphot`` is quick and
pulls in only what a program uses.

Core engine
    :class:`GaussianPRF`, :class:`MoffatPSF`, :class:`DiscretePSF` (``jaxphot.psf``);
    :func:`fit_cutouts`, :class:`FitResult` (``jaxphot.fit``); :class:`FitFlag`.
Whole images
    :func:`photometry`, :func:`estimate_background`, :func:`find_stars`, :func:`group_stars`.
Apertures and shapes
    :func:`aperture_photometry`, :func:`aperture_light_curves`, :func:`crossmatch`, morphology.
Empirical PSFs
    :func:`build_epsf`, :func:`select_stars`, spatially varying PSFs (``jaxphot.psf_grid``).
Theory
    ``jaxphot.theory``: PRF sharpness, beta, L, MATPHOT's performance model and exact CRLBs.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    # core engine
    "GaussianPRF": "psf",
    "MoffatPSF": "psf",
    "DiscretePSF": "psf",
    "fit_cutouts": "fit",
    "FitResult": "fit",
    "model_cutouts": "fit",
    "FitFlag": "flags",
    "simulate_cutouts": "simulate",
    # whole-image pipeline
    "photometry": "photometry",
    "estimate_background": "background",
    "Background": "background",
    "find_stars": "detection",
    "segment": "detection",
    "centroid_moments": "detection",
    "centroid_gaussian_marginal": "detection",
    "group_stars": "grouping",
    "bucket_groups": "grouping",
    # apertures, morphology, catalogues
    "aperture_photometry": "aperture",
    "aperture_light_curves": "aperture",
    "aperture_sums": "aperture",
    "aperture_corrections": "aperture",
    "growth_curve": "aperture",
    "ApertureFlag": "aperture",
    "moments_from_cutouts": "morphology",
    "segment_properties": "morphology",
    "kron_radius": "morphology",
    "flux_radius": "morphology",
    "ellipse_from_moments": "morphology",
    "crossmatch": "crossmatch",
    # empirical and spatially varying PSFs
    "build_epsf": "epsf",
    "select_stars": "epsf",
    "build_epsf_from_image": "epsf",
    "build_epsf_grid": "epsf",
    "PolynomialPSF": "psf_grid",
    "GriddedPSF": "psf_grid",
    "read_psf_fits": "psf_grid",
    "write_psf_fits": "psf_grid",
    # detector response
    "DetectorPRF": "detector",
    # whole-image results and simulated fields
    "PhotometryResult": "photometry",
    "make_model_image": "photometry",
    "make_residual_image": "photometry",
    "simulate_cluster": "demo",
    # scale-out
    "batch": "distributed",
    "photometry_tiled": "distributed",
    "fit_sharded": "sharding",
    "use_devices": "sharding",
}

_SUBMODULES = {
    "psf", "fit", "scene", "solve", "kernels", "flags", "simulate", "photometry", "background",
    "detection", "grouping", "aperture", "morphology", "crossmatch", "stats", "epsf", "psf_grid",
    "theory", "detector", "datasets", "io", "cli", "demo", "distributed", "sharding",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'jaxphot' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS) | _SUBMODULES)
