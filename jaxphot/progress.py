"""The package's one progress bar: tqdm on stderr, or a user's callback.

Long jobs (the crowded-field pipeline, many-image batches) report ``(message, fraction)``;
:class:`Progress` turns that into a tqdm bar (tqdm is well kept, handles terminals, notebooks
and redirected output, and costs nothing when disabled), or passes it to a callable.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["Progress"]


class Progress:
    """Report progress of a long job.

    Parameters
    ----------
    progress : bool or callable
        False: silent. True: a tqdm bar on stderr. A callable ``f(message, fraction)`` receives
        every update instead (fraction in [0, 1]).
    total : int, optional
        Count units instead of fractions (e.g. images): updates then pass ``done`` counts.
    desc : str
        Label in front of the bar.
    """

    def __init__(self, progress: bool | Callable[[str, float], None] = False, *,
                 total: int | None = None, desc: str = "jaxphot"):
        self.callback = progress if callable(progress) else None
        self.total = total
        self._bar = None
        if progress and self.callback is None:
            from tqdm.auto import tqdm

            scale = total if total is not None else 1.0
            fmt = "{desc}: {percentage:3.0f}%|{bar}| {elapsed} {postfix}" if total is None else None
            self._bar = tqdm(total=scale, desc=desc, file=sys.stderr, leave=True, dynamic_ncols=True,
                             **({"bar_format": fmt} if fmt else {}))

    def __call__(self, message: str, done: float) -> None:
        """Report ``done`` (a fraction in [0, 1], or a count with ``total``) and a message."""
        if self.callback is not None:
            frac = done / self.total if self.total else done
            self.callback(message, float(min(max(frac, 0.0), 1.0)))
        elif self._bar is not None:
            self._bar.n = min(max(done, 0), self._bar.total)
            self._bar.set_postfix_str(message[:60], refresh=False)
            self._bar.refresh()
            if done >= self._bar.total:
                self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
