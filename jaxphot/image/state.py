"""The state of the crowded-field driver: its star list and its stage clock.

:func:`jaxphot.photometry` keeps every star it has ever detected or been given in one
:class:`Stars` (removed stars stay, flagged, so that every star has exactly one catalogue
row), and sums the wall time of its stages in a :class:`StageTimer`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time

import numpy as np

from .render import EXCLUDED_FROM_MODEL

__all__ = ["Stars", "StageTimer", "STAGES"]

#: Stages of :func:`jaxphot.photometry` timed in ``table.meta["timings"]``, in pipeline order.
STAGES = ("background", "detection", "grouping", "fitting", "rendering", "residual_detection",
          "catalog")


def _fill(dtype) -> float | int:
    """What a star that was never fitted holds in a column of this dtype."""
    return np.nan if np.dtype(dtype).kind == "f" else 0


@dataclasses.dataclass
class Stars:
    """Every star of one :func:`jaxphot.photometry` run, as (N,) arrays in catalogue order.

    Attributes
    ----------
    x, y : (N,) float arrays
        Current positions (0-based pixels): the last fit's, or the initial ones.
    flux : (N,) float array
        Current total flux (image units x pixels).
    x_init, y_init, flux_init : (N,) float arrays
        As detected or given.
    iter_detected : (N,) int64 array
        0 for ``init_params`` rows, 1 for the first detection, i + 1 for stars found on the
        residual of iteration i.
    flags : (N,) int64 array
        :class:`~jaxphot.FitFlag` bits of the last fit (plus MERGED/FADED once removed).
    group_id : (N,) int64 array
        Group of the star's last fit (0 before any fit).
    fitted : dict of str to (N,) array
        The last fit's per-star columns (``x_fit, flux_err, chi2, dof...``); NaN (float) or
        0 (int) for stars never fitted.
    """

    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    x_init: np.ndarray
    y_init: np.ndarray
    flux_init: np.ndarray
    iter_detected: np.ndarray
    flags: np.ndarray
    group_id: np.ndarray
    fitted: dict

    @classmethod
    def empty(cls) -> Stars:
        """No star yet."""
        f, i = np.zeros(0), np.zeros(0, np.int64)
        return cls(f, f, f, f, f, f, i, i, i, {})

    def __len__(self) -> int:
        return len(self.x)

    def append(self, x, y, flux, iteration: int, flags=None, x_init=None, y_init=None) -> None:
        """Add stars at the end.

        Parameters
        ----------
        x, y, flux : (M,) arrays
            Starting positions (pixels) and fluxes; also their ``*_init`` values unless
            ``x_init``/``y_init`` are given.
        iteration : int
            Their ``iter_detected``.
        flags : (M,) int array, optional
            Initial flag bits (default 0).
        x_init, y_init : (M,) arrays, optional
            Reported initial positions when they differ from the starting ones (rows of
            ``init_params`` that cannot be fitted start at NaN but report what was given).
        """
        m = len(x)
        self.x, self.y, self.flux = np.r_[self.x, x], np.r_[self.y, y], np.r_[self.flux, flux]
        self.x_init = np.r_[self.x_init, x if x_init is None else x_init]
        self.y_init = np.r_[self.y_init, y if y_init is None else y_init]
        self.flux_init = np.r_[self.flux_init, flux]
        self.iter_detected = np.r_[self.iter_detected, np.full(m, iteration)]
        self.flags = np.r_[self.flags, np.zeros(m, np.int64) if flags is None else flags]
        self.group_id = np.r_[self.group_id, np.zeros(m, np.int64)]
        for name, col in self.fitted.items():
            self.fitted[name] = np.r_[col, np.full(m, _fill(col.dtype), dtype=col.dtype)]

    def live(self) -> np.ndarray:
        """(L,) indices of the stars that take part in fits and in the model image."""
        return np.nonzero((self.flags & EXCLUDED_FROM_MODEL) == 0)[0]

    def record_fit(self, idx: np.ndarray, cols: dict) -> np.ndarray:
        """Store a fit of stars ``idx``; returns the (L,) mask of usable fits.

        ``cols`` are per-star columns aligned with ``idx`` (``x_fit, y_fit, flux_fit, flags``
        and the rest); positions and fluxes move only where the fit gave finite values.
        """
        for name, col in cols.items():
            self.fitted.setdefault(name, np.full(len(self), _fill(col.dtype), dtype=col.dtype))
            self.fitted[name][idx] = col
        self.flags[idx] = cols["flags"].astype(np.int64)  # live stars: this fit's flags
        ok = np.isfinite(cols["x_fit"]) & np.isfinite(cols["flux_fit"])
        self.x[idx] = np.where(ok, cols["x_fit"], self.x[idx])
        self.y[idx] = np.where(ok, cols["y_fit"], self.y[idx])
        self.flux[idx] = np.where(ok, cols["flux_fit"], self.flux[idx])
        return ok


class StageTimer:
    """Wall seconds per stage of :data:`STAGES`, summed over iterations.

    ``with timer("fitting"): ...`` adds the block's wall time to ``timer.seconds["fitting"]``.
    """

    def __init__(self):
        self.seconds = dict.fromkeys(STAGES, 0.0)

    @contextlib.contextmanager
    def __call__(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - t0

    def rounded(self, digits: int = 4) -> dict[str, float]:
        """The seconds per stage, rounded (for ``table.meta``)."""
        return {k: round(v, digits) for k, v in self.seconds.items()}
