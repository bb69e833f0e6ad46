"""Process set-up for many-image runs: GPU allocator settings and the Dask workers' environment.

Nothing here runs at import. :func:`configure_accelerator_memory` changes ``os.environ`` of
the calling process, and only when called; :func:`worker_environment` only computes the
variables that :func:`jaxphot.scale.images.batch` hands to its worker processes, and
:func:`restored_environ` puts back what Dask's LocalCluster writes into ``os.environ``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator, Mapping

__all__ = [
    "accelerator_memory_settings",
    "configure_accelerator_memory",
    "gpu_installed",
    "worker_environment",
    "setup_worker",
    "worker_memory_limit",
    "restored_environ",
]

# Variables a worker inherits from the run that started it (when set there).
_PASSED_ON = ("XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION", "JAXPHOT_CACHE_DIR")
_GPU_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin")


def accelerator_memory_settings(
    processes_per_device: int = 1, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """GPU allocator settings for processes sharing a GPU, less those ``environ`` already has.

    Parameters
    ----------
    processes_per_device : int
        How many processes (e.g. Dask workers) share one GPU.
    environ : mapping, optional
        The environment to complete (default ``os.environ``); it is not changed.

    Returns
    -------
    dict
        ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` (allocate on demand) and
        ``XLA_PYTHON_CLIENT_MEM_FRACTION`` (``0.9 / processes_per_device`` of the GPU's memory
        at most per process), each only where ``environ`` does not set it.
    """
    env = os.environ if environ is None else environ
    n = max(1, int(processes_per_device))
    want = {
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
        "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{min(0.9, 0.9 / n):.3f}",
    }
    return {k: v for k, v in want.items() if k not in env}


def configure_accelerator_memory(processes_per_device: int = 1) -> dict[str, str]:
    """Set sensible GPU allocator settings in ``os.environ``, unless the user set them.

    JAX preallocates 75 % of a GPU's memory at start-up by default, which makes a second
    process on the same GPU fail. Call this before JAX starts; see
    :func:`accelerator_memory_settings` for the values.

    Parameters
    ----------
    processes_per_device : int
        How many processes (e.g. Dask workers) share one GPU.

    Returns
    -------
    dict
        The variables this call set (empty when the user had set both). They have no effect
        on a process whose JAX backend has already started; child processes inherit them.
    """
    done = accelerator_memory_settings(processes_per_device)
    os.environ.update(done)
    return done


def gpu_installed() -> bool:
    """Whether a CUDA/ROCm JAX plugin is installed (checked without starting JAX)."""
    for name in _GPU_PLUGINS:
        try:
            if importlib.util.find_spec(name) is not None:
                return True
        except (ImportError, ValueError):
            continue
    return False


def worker_environment(processes_per_device: int | None = None) -> dict[str, str]:
    """Variables for worker processes: this process's JAX-related ones plus GPU allocator settings.

    Parameters
    ----------
    processes_per_device : int, optional
        Workers sharing one GPU; when given, the allocator settings this process lacks are
        added (see :func:`accelerator_memory_settings`). ``os.environ`` is not changed.
    """
    env = {k: os.environ[k] for k in _PASSED_ON if k in os.environ}
    if processes_per_device is not None:
        env.update(accelerator_memory_settings(processes_per_device))
    return env


def setup_worker(env: Mapping[str, str]) -> bool:
    """Run on each worker before its first task: allocator settings, then import the pipeline.

    Importing here (once per worker process) and switching on the persistent compilation
    cache keeps every jitted function warm between tasks. Variables the worker already has
    win over ``env``.
    """
    for k, v in env.items():
        os.environ.setdefault(k, v)
    from ..core.config import enable_compilation_cache
    from ..image import pipeline  # noqa: F401

    enable_compilation_cache()
    return True


def worker_memory_limit() -> int | None:
    """The Dask worker's memory limit in bytes, or None outside a worker (or unlimited)."""
    try:
        from distributed import get_worker

        w = get_worker()
    except (ImportError, ValueError):
        return None
    lim = getattr(getattr(w, "memory_manager", None), "memory_limit", None)
    return int(lim) if lim else None


@contextlib.contextmanager
def restored_environ() -> Iterator[None]:
    """Undo, on exit, what the block wrote into ``os.environ``.

    Dask's Nanny sets ``OMP_NUM_THREADS=1``, ``PYTHONHASHSEED``... in the *parent's*
    environment before it spawns a worker; a batch run must not leave them behind. Only the
    keys the block added or changed are put back, so nothing else is touched.
    """
    saved = dict(os.environ)
    try:
        yield
    finally:
        for k in [k for k in os.environ if k not in saved]:
            del os.environ[k]
        for k, v in saved.items():
            if os.environ.get(k) != v:
                os.environ[k] = v
