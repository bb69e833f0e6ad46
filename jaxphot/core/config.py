"""Process-wide JAX settings, switched on by an explicit call, never by an import.

:func:`enable_compilation_cache` turns on JAX's persistent compilation cache in
``$JAXPHOT_CACHE_DIR`` (default ``~/.cache/jaxphot/xla``), so that a second process does not
pay compilation again. Every jaxphot entry point that compiles (``fit_cutouts``,
``photometry``, ``find_stars``, ``aperture_sums``, ``build_epsf``, the CRLB) calls it first; call
it yourself to choose the directory. ``JAXPHOT_CACHE_DIR=off`` leaves JAX untouched, and a
``jax_compilation_cache_dir`` you configured yourself is respected.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import numpy as np
from jaxtyping import ArrayLike

__all__ = ["enable_compilation_cache", "default_dtype"]

_state: dict = {"done": False, "path": None}


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Turn on JAX's persistent compilation cache (idempotent). Returns the directory or None."""
    if _state["done"] and path is None:
        return _state["path"]
    env = os.environ.get("JAXPHOT_CACHE_DIR", "")
    _state["done"] = True
    if env.lower() in ("off", "0", "none"):
        return None
    current = jax.config.jax_compilation_cache_dir
    if current and path is None:
        _state["path"] = Path(current)
        return _state["path"]
    target = Path(path or env or Path.home() / ".cache" / "jaxphot" / "xla")
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(target))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _state["path"] = target
    return target


def default_dtype(like: ArrayLike | None = None) -> type:
    """float64 when JAX's x64 mode is on and ``like`` is float64 (or None); else float32."""
    if not jax.config.jax_enable_x64:
        return np.float32
    if like is None or np.asarray(like).dtype == np.float64:
        return np.float64
    return np.float32
