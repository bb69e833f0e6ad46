"""Locating the real data sets used by examples, tests and benchmarks.

The data are never shipped with jaxphot. They are looked up, in order, in

1. the directory named by the ``JAXPHOT_DATA`` environment variable;
2. ``../shared/data`` relative to the current working directory and to the source checkout.

Callers that cannot find a data set should skip (tests) or print a short message (examples).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["find_data_dir", "DataNotFoundError"]


class DataNotFoundError(FileNotFoundError):
    """Raised when a real data set is not available on this machine."""


def _candidates() -> list[Path]:
    out = []
    env = os.environ.get("JAXPHOT_DATA")
    if env:
        out.append(Path(env))
    out.append(Path.cwd() / ".." / "shared" / "data")
    out.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    return out


def find_data_dir(name: str) -> Path:
    """Return the directory of the data set ``name`` (e.g. ``"sep_ntt"``).

    Raises
    ------
    DataNotFoundError
        If none of the search locations holds ``name``.
    """
    for root in _candidates():
        p = root / name
        if p.is_dir():
            return p.resolve()
    raise DataNotFoundError(
        f"data set {name!r} not found; set JAXPHOT_DATA to the directory holding it"
    )
