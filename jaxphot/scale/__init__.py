"""Scale-out: several devices in one process, and many images on a Dask cluster.

``sharding``
    :func:`fit_sharded` and :func:`use_devices` (the fit over a device mesh).
``images``
    :func:`batch` (one catalogue per image, resumable) and :func:`photometry_tiled`.
``forced``
    :func:`forced_batch` (forced photometry of many exposures, in chunks run as Dask tasks).

Names are imported on first use, so the command line can build its parser without JAX.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"batch": "images", "photometry_tiled": "images", "forced_batch": "forced",
            "fit_sharded": "sharding", "use_devices": "sharding"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
