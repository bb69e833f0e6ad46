"""Star fields with known truth, and scoring against it: for tests, benchmarks and the demo.

``cutouts``
    :func:`simulate_cutouts`: batches of cutouts with known positions, fluxes and noise.
``cluster``
    :func:`simulate_cluster`: a whole crowded field (Plummer cluster on a field population).
``scoring``
    :func:`match_to_truth`, :func:`score`, :func:`completeness_by_mag`.
"""

from __future__ import annotations

from .cluster import SimulatedField, prf_sharpness, simulate_cluster
from .cutouts import SimulatedCutouts, add_noise, gaussian_psf_matrix, simulate_cutouts
from .scoring import completeness_by_mag, match_to_truth, score

__all__ = [
    "SimulatedCutouts", "simulate_cutouts", "add_noise", "gaussian_psf_matrix",
    "SimulatedField", "simulate_cluster", "prf_sharpness",
    "match_to_truth", "score", "completeness_by_mag",
]
