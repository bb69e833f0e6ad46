"""The engine: pure functions over arrays and pytrees, from the model to the batched fit.

``params``
    The packed parameter layout ``[B0, Bx, By, F_1..F_K, x_1..x_K, y_1..y_K]``.
``scene``
    The model of one cutout (tilted plane + K PRFs) and its linearisation (exact Jacobian).
``solve``
    The batched Levenberg-Marquardt / Newton solver.
``fisher``
    The exact Cramer-Rao bound from the Fisher information.
``batching``
    Buckets, padding, chunks and :func:`~jaxphot.core.batching.map_chunks`, which runs them.
``fit``
    :func:`fit_cutouts` and :class:`FitResult`: validation, noise model, the rows to solve as a
    :class:`~jaxphot.core.fit.FitJob` and the chunk runner, the result.
``flags``, ``config``, ``pytree``
    Quality flags; process-wide JAX settings (explicit); the ``@pytree`` decorator that makes
    annotated classes immutable pytrees (``static()`` fields are compile-time metadata).
"""

from __future__ import annotations

from .fit import FitResult, fit_cutouts, model_cutouts
from .flags import FitFlag

__all__ = ["fit_cutouts", "FitResult", "model_cutouts", "FitFlag"]
