"""Process-wide JAX settings that jaxphot turns on once: the persistent compilation cache.

The cache lives in ``$JAXPHOT_CACHE_DIR`` (default ``~/.cache/jaxphot/xla``), so that a second
process does not pay compilation again. Set ``JAXPHOT_CACHE_DIR=off`` to leave JAX untouched, or
configure ``jax_compilation_cache_dir`` yourself before importing jaxphot (it is then respected).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

__all__ = ["enable_compilation_cache", "default_dtype"]

_done = False


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Turn on JAX's persistent compilation cache (idempotent). Returns the directory or None."""
    global _done
    env = os.environ.get("JAXPHOT_CACHE_DIR", "")
    if env.lower() in ("off", "0", "none"):
        return None
    current = jax.config.jax_compilation_cache_dir
    if current and path is None:
        _done = True
        return Path(current)
    target = Path(path or env or Path.home() / ".cache" / "jaxphot" / "xla")
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(target))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _done = True
    return target


def default_dtype(like=None):
    """float64 when JAX's x64 mode is on and ``like`` is float64 (or None); else float32."""
    import numpy as np

    if not jax.config.jax_enable_x64:
        return np.float32
    if like is None or np.asarray(like).dtype == np.float64:
        return np.float64
    return np.float32
