"""The fit batch sharded over several devices in one process: :func:`fit_sharded`.

:func:`jaxphot.core.fit.fit_cutouts` runs fixed-size chunks through one compiled solver, on threads
on a CPU. This module is the alternative path for several *devices* (GPUs, or CPU host devices
made with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``): each compiled call takes
``n_devices x chunk`` problems, laid out over a 1-D :class:`jax.sharding.Mesh` of the devices
with a :class:`~jax.sharding.NamedSharding`, and runs the jitted solver under
:func:`jax.shard_map`, so every device runs its *own* Levenberg-Marquardt loop on its own
slice (a global ``jit`` would make all devices wait on the slowest problem of the whole batch
at every iteration).

Everything else -- validation, starting values, the noise model, the straggler re-run, the
result table -- is :func:`~jaxphot.fit.fit_cutouts` itself: :func:`use_devices` swaps its
chunk runner for the sharded one in the current thread only (a :mod:`contextvars` variable),
so ``with use_devices(): photometry(...)`` shards the whole-image pipeline too.

Memory: on accelerators the per-device chunk follows the device's free memory
(:func:`adaptive_chunk_size`), and a ``RESOURCE_EXHAUSTED`` error from XLA halves the chunk and
retries (:func:`fit_sharded` never crashes on an out-of-memory chunk it can split).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ..core import fit as _fit
from ..core.batching import bucket, concat_trees, psf_batch_size, unpad
from ..core.fit import FitJob
from ..core.params import n_params

__all__ = ["fit_sharded", "use_devices", "adaptive_chunk_size", "is_out_of_memory"]

_AXIS = "batch"
_MIN_CHUNK = 16  # below this an OOM is not a chunk-size problem
_MAX_CHUNK = 1 << 17


def is_out_of_memory(exc: BaseException) -> bool:
    """True for XLA's out-of-memory errors (``RESOURCE_EXHAUSTED``), on any backend."""
    msg = str(exc)
    return "RESOURCE_EXHAUSTED" in msg or "Out of memory" in msg or "out of memory" in msg


def adaptive_chunk_size(
    shape: tuple[int, int],
    n_params: int = 6,
    *,
    device=None,
    oversampling: int = 1,
    fraction: float = 0.5,
) -> int:
    """Problems per device and compiled call that fit in the device's free memory.

    Parameters
    ----------
    shape : (H, W)
        Cutout shape in pixels.
    n_params : int
        Parameters per cutout (3 background + 3 per star).
    device : jax.Device, optional
        Default ``jax.devices()[0]``.
    oversampling : int
        PSF supersampling factor s: the PSF is evaluated on s^2 sub-pixels per pixel.
    fraction : float
        Share of the free memory one call may use (the rest is for XLA's scratch and the
        next chunk's transfer, which overlaps the current call).

    Returns
    -------
    int
        A power of two in [64, 131072]. On a CPU (no memory statistics) this is
        :func:`jaxphot.fit.default_chunk_size` for this cutout (cache-sized chunks are fastest
        there).
    """
    device = device or jax.devices()[0]
    stats = None
    if device.platform != "cpu":
        try:
            stats = device.memory_stats()
        except Exception:  # some backends do not implement it
            stats = None
    if not stats or "bytes_limit" not in stats:
        return _fit.default_chunk_size(shape, n_params)
    free = max(0, int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)))
    h, w = shape
    pix = h * w
    # Per problem, in float32 words: the inputs (data, var, valid), the model, the Jacobian rows
    # (P per pixel), the Newton curvature terms (~P^2/2 per pixel at most) and the 1-D PSF
    # factors at s^2 sub-pixels; x4 bytes, x3 for XLA temporaries and the double-buffered chunk.
    words = pix * (8 + 2 * n_params + n_params * n_params // 2) + pix * oversampling**2 * 2
    per_problem = 4 * 3 * words
    n = int(free * fraction // max(per_problem, 1))
    n = 1 << max(6, int(math.floor(math.log2(max(n, 1)))))
    return int(min(_MAX_CHUNK, max(64, n)))


def _mesh(devices: Sequence) -> Mesh:
    return Mesh(np.asarray(list(devices), dtype=object), (_AXIS,))


@functools.lru_cache(maxsize=32)
def _compiled(mesh: Mesh, newton: bool, psf_tree, psf_ndims: tuple[int, ...] | None):
    """:func:`~jaxphot.core.fit.solve_chunk` under shard_map: batch axes split over the mesh,
    scalars replicated.

    One Levenberg-Marquardt ``while_loop`` per device: each shard stops when its own problems
    have converged. ``check_vma`` is off because the loop mixes replicated scalars with
    per-shard state, which is what we want. ``psf_ndims`` is None for one PSF for all
    (replicated), else the leaves' ranks of a per-cutout PSF (split on the trailing axis).
    """
    b = P(_AXIS)
    if psf_ndims is None:
        psf_specs = jax.tree_util.tree_unflatten(psf_tree, [P()] * psf_tree.num_leaves)
    else:
        psf_specs = jax.tree_util.tree_unflatten(
            psf_tree, [P(*([None] * (nd - 1)), _AXIS) for nd in psf_ndims]
        )

    def body(psf, *args):
        return _fit.solve_chunk(psf, *args, newton=newton)

    # the psf, FitJob.span's eight row arrays, FitJob.scalars' three scalars
    in_specs = (psf_specs, *[b] * 8, P(), P(), P())
    out_specs = b  # every LMResult field is batch-first after solve_chunk
    fn = jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
    return jax.jit(fn), psf_specs


class _ShardedRunner:
    """Drop-in replacement for :func:`jaxphot.core.fit.thread_runner` over a device mesh.

    ``chunk`` is per device; it halves (for the rest of the fit) after an out-of-memory error.
    """

    def __init__(self, devices: Sequence, chunk: int | None):
        self.devices = list(devices)
        self.mesh = _mesh(self.devices)
        self.sharding = NamedSharding(self.mesh, P(_AXIS))
        self.chunk = chunk  # None: whatever fit_cutouts passes (its chunk_size)
        self.n_oom = 0

    def __call__(self, job: FitJob, chunk: int, min_bucket: int = 0):
        """Solve every row of ``job`` (as :func:`~jaxphot.core.fit.thread_runner` does)."""
        if self.chunk is None:
            self.chunk = int(chunk)
        n = job.n
        nd = len(self.devices)
        out = []
        start = 0
        pending = None
        while start < n:
            per = self.chunk
            stop = min(n, start + nd * per)
            # Per-device bucket: a power of two (>= 64) so a new N does not recompile.
            size = max(bucket(-(-(stop - start) // nd), per), min(min_bucket, per))
            try:
                handle = self._dispatch(job, start, stop, size)
            except Exception as exc:
                if not self._shrink(exc):
                    raise
                continue  # same start, smaller chunk
            # Dispatch is asynchronous: collect the previous span while this one runs, so the
            # host-side preparation and device->host copies overlap the device work.
            if pending is not None:
                out.append(self._collect(*pending, job))
            pending = (handle, start, stop)
            start = stop
        if pending is not None:
            out.append(self._collect(*pending, job))
        return concat_trees(out)

    def _shrink(self, exc) -> bool:
        if not is_out_of_memory(exc) or self.chunk // 2 < _MIN_CHUNK:
            return False
        self.chunk //= 2
        self.n_oom += 1
        return True

    def _dispatch(self, job: FitJob, start: int, stop: int, size: int):
        p, a = job.span(start, stop, size * len(self.devices))
        # One host->device transfer per array, already split over the devices.
        a = jax.device_put(a, self.sharding)
        leaves, tree = jax.tree_util.tree_flatten(p)
        batched = psf_batch_size(job.psf) is not None
        ndims = tuple(np.ndim(v) for v in leaves) if batched else None
        fn, specs = _compiled(self.mesh, bool(job.newton), tree, ndims)
        if batched:
            p = jax.device_put(
                p,
                jax.tree_util.tree_map(
                    lambda s: NamedSharding(self.mesh, s), specs, is_leaf=lambda s: isinstance(s, P)
                ),
            )
        return fn(p, *a, *job.scalars)

    def _collect(self, handle, start: int, stop: int, job: FitJob):
        try:
            return unpad(handle, stop - start)
        except Exception as exc:
            if not self._shrink(exc):
                raise
        # Out of memory while running: redo this span alone with the smaller chunk.
        return self(job.subset(np.arange(start, stop)), self.chunk)


@contextlib.contextmanager
def use_devices(
    devices: Sequence | None = None, *, chunk_size: int | None = None
) -> Iterator[_ShardedRunner]:
    """Shard every :func:`~jaxphot.fit_cutouts` call in this block (this thread) over devices.

    Parameters
    ----------
    devices : sequence of jax.Device, optional
        Default ``jax.local_devices()``.
    chunk_size : int, optional
        Problems per device and call. Default: ``fit_cutouts``' ``chunk_size`` argument
        (whose own default is :func:`jaxphot.fit.default_chunk_size`).

    Yields
    ------
    runner
        Its ``n_oom`` attribute counts chunk halvings after out-of-memory errors.

    Examples
    --------
    >>> with use_devices():                      # doctest: +SKIP
    ...     table = photometry(image, psf)
    """
    devices = list(devices) if devices is not None else jax.local_devices()
    if not devices:
        raise ValueError("use_devices needs at least one device")
    kinds = {d.platform for d in devices}
    if len(kinds) > 1:
        raise ValueError(f"devices must share one platform, got {sorted(kinds)}")
    runner = _ShardedRunner(devices, chunk_size)
    token = _fit.chunk_runner.set(runner)
    try:
        yield runner
    finally:
        _fit.chunk_runner.reset(token)


def fit_sharded(
    data,
    psf,
    x,
    y,
    flux=None,
    *,
    devices: Sequence | None = None,
    chunk_size: int | None = None,
    **kwargs,
) -> _fit.FitResult:
    """:func:`~jaxphot.fit_cutouts` with the batch sharded over several devices.

    Parameters
    ----------
    data : (N, H, W) array
        The cutouts (counts).
    psf : PSF model
    x, y : (N,) or (N, K) arrays
        Initial star positions in each cutout's pixel frame (pixels).
    flux : (N,) or (N, K) array, optional
        Initial total fluxes (counts).
    devices : sequence of jax.Device, optional
        Default: all local devices (``jax.local_devices()``). One device runs the same
        compiled program as ``fit_cutouts`` without its CPU thread pool.
    chunk_size : int, optional
        Problems per device and compiled call. Default: :func:`adaptive_chunk_size` on
        accelerators (from the device's free memory), :func:`~jaxphot.fit.default_chunk_size`
        on CPUs. Halved automatically after an out-of-memory error.
    **kwargs
        Every other :func:`~jaxphot.fit_cutouts` option (``error``, ``mask``, ``gain``,
        ``read_noise``, ``background``, ``fixed``, ``max_iter``...).

    Returns
    -------
    FitResult
        Equal to ``fit_cutouts``' result to float rounding (the same solver runs on every
        problem; only the grouping of problems into calls differs).
    """
    devices = list(devices) if devices is not None else jax.local_devices()
    if chunk_size is None:
        d = np.shape(data)
        k = 1 if np.ndim(x) < 2 else np.shape(x)[1]
        over = int(getattr(psf, "oversampling", 1) or 1)
        chunk_size = adaptive_chunk_size(tuple(d[-2:]), n_params(k), device=devices[0],
                                         oversampling=over)
    with use_devices(devices, chunk_size=chunk_size):
        return _fit.fit_cutouts(data, psf, x, y, flux, chunk_size=chunk_size, **kwargs)
