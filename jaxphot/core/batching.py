"""Batching: bucket sizes, padding, fixed-size chunks and the one runner that maps them.

Every batched computation in jaxphot (the fit, the sharded fit, aperture sums, the CRLB) cuts
its rows into fixed-size chunks padded to a few bucket sizes, so a new N does not compile a new
program, and runs the chunks through :func:`map_chunks`: the first alone (it compiles, or loads
from the cache, exactly once), the rest on a thread pool (XLA runs one CPU call on one core and
releases the GIL, so threads fill the other cores).

A per-cutout PSF (a spatially varying PSF evaluated at every cutout, ``batch_size`` attribute,
array leaves with a trailing batch axis) is sliced along with the rows (:func:`slice_psf`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Int, Shaped

__all__ = [
    "MIN_BUCKET", "default_chunk_size", "default_threads", "bucket", "chunks", "pad", "unpad",
    "map_chunks", "concat_trees", "psf_batch_size", "slice_psf", "take_psf", "scatter_rows",
]

MIN_BUCKET = 64  # smallest padded batch: tiny batches share one compiled shape

T = TypeVar("T")
R = TypeVar("R")


# Jacobian elements (pixels x parameters) per CPU chunk: about what a 2 MB L2 cache holds in
# float32 with the model and residual beside it. Measured on 15x15 cutouts with 6 parameters
# (1,350 elements a row): 128 / 256 / 512 / 1024 rows gave 24.5k / 28.1k / 27.3k / 24.3k
# Gaussian fits/s, and 256 against 1024 rows 7.7k against 5.3k for a 4x discrete PSF.
_CPU_CHUNK_ELEMENTS = 1 << 19


def default_chunk_size(shape: tuple[int, int] | None = None, n_params: int = 6) -> int:
    """Problems per compiled call: large on accelerators, cache-sized on CPUs.

    Parameters
    ----------
    shape : (H, W), optional
        Cutout shape (pixels). On a CPU the chunk is then the largest power of two in
        [MIN_BUCKET, 1024] whose Jacobian (rows x H x W x ``n_params`` float32 words) stays about
        L2-sized; without it, 1024.
    n_params : int
        Parameters per cutout (3 + 3K).
    """
    if jax.default_backend() != "cpu":
        return 65536
    if shape is None:
        return 1024
    per_row = max(1, int(shape[0]) * int(shape[1]) * int(n_params))
    rows = 1 << max(0, (_CPU_CHUNK_ELEMENTS // per_row).bit_length() - 1)  # a power of two below
    return min(1024, max(MIN_BUCKET, rows))


def default_threads() -> int:
    """Chunks run concurrently: one per CPU core (XLA runs each CPU call on one core)."""
    return max(1, os.cpu_count() or 1) if jax.default_backend() == "cpu" else 1


def bucket(n: int, chunk: int) -> int:
    """Padded size of a batch of ``n``: the next power of two >= MIN_BUCKET, at most ``chunk``."""
    return min(chunk, max(MIN_BUCKET, 1 << max(0, math.ceil(math.log2(max(n, 1))))))


def chunks(n: int, chunk: int) -> Iterator[tuple[int, int, int]]:
    """Yield (start, stop, padded_size) covering range(n).

    A batch of more than one chunk pads its last piece to a whole chunk as well: it then runs
    one compiled shape whatever its length, for at most one chunk of padding.
    """
    start = 0
    while start < n:
        stop = min(n, start + chunk)
        yield start, stop, chunk if n > chunk else bucket(stop - start, chunk)
        start = stop


def pad(a: Shaped[np.ndarray, " n *rest"], size: int, fill) -> Shaped[np.ndarray, " size *rest"]:
    """``a`` with rows of ``fill`` appended up to ``size`` rows."""
    if a.shape[0] == size:
        return a
    extra = np.full((size - a.shape[0],) + a.shape[1:], fill, dtype=a.dtype)
    return np.concatenate([a, extra])


def unpad(tree, n: int):
    """The first ``n`` rows of every leaf of a padded chunk's result, as numpy."""
    return jax.tree_util.tree_map(lambda v: np.asarray(v)[:n], tree)


def map_chunks(fn: Callable[[T], R], jobs: Sequence[T], threads: int | None = None) -> list[R]:
    """``[fn(job) for job in jobs]``, the first job alone and the rest on a thread pool.

    The first call compiles (or loads from the cache) the jitted function once, so that threads
    never race to compile the same program. ``threads`` defaults to :func:`default_threads`.
    """
    if not jobs:
        return []
    outs = [fn(jobs[0])]
    n_threads = default_threads() if threads is None else int(threads)
    if len(jobs) > 2 and n_threads > 1:
        with ThreadPoolExecutor(min(n_threads, len(jobs) - 1)) as pool:
            outs += list(pool.map(fn, jobs[1:]))
    else:
        outs += [fn(j) for j in jobs[1:]]
    return outs


def concat_trees(trees: Sequence):
    """Concatenate matching pytrees of numpy arrays along their first axis."""
    return jax.tree_util.tree_map(lambda *v: np.concatenate(v), *trees)


def psf_batch_size(psf) -> int | None:
    """N for a per-cutout (batched) PSF, whose array leaves carry a trailing batch axis."""
    return getattr(psf, "batch_size", None)


def slice_psf(psf, start: int, stop: int, size: int):
    """Rows start:stop of a batched PSF, padded to ``size`` by repeating the last row."""
    if psf_batch_size(psf) is None:
        return psf

    def cut(leaf):
        leaf = jnp.asarray(leaf)[..., start:stop]
        reps = size - (stop - start)
        return jnp.concatenate([leaf, jnp.repeat(leaf[..., -1:], reps, axis=-1)], -1) if reps else leaf

    return jax.tree_util.tree_map(cut, psf)


def take_psf(psf, idx: Int[np.ndarray, " M"]):
    """Rows ``idx`` of a batched PSF (identity for an ordinary PSF)."""
    if psf_batch_size(psf) is None:
        return psf
    return jax.tree_util.tree_map(lambda leaf: jnp.asarray(leaf)[..., idx], psf)


def scatter_rows(full: Shaped[np.ndarray, " N *rest"], idx: Int[np.ndarray, " M"],
                 part: Shaped[np.ndarray, " M *rest"]) -> Shaped[np.ndarray, " N *rest"]:
    """A copy of ``full`` with rows ``idx`` replaced by ``part``."""
    out = np.array(full, copy=True)
    out[idx] = part
    return out
