"""Checks of user input at the package's boundary, shared by the public API and the CLI.

Every check raises ``ValueError`` whose message names the argument in the user's words and says
what was expected. PSF spec strings (``"gaussian:fwhm=3"``) are turned into PSF objects by a
parser that :mod:`jaxphot.psf` registers here, so low layers accept them without importing it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

__all__ = ["check_positive", "check_non_negative", "check_size", "check_psf",
           "register_psf_parser", "check_columns", "check_output_path"]

_psf_parser: list[Callable] = []


def register_psf_parser(parse: Callable) -> None:
    """Make ``parse(spec) -> PSF`` the parser of PSF spec strings given to :func:`check_psf`."""
    _psf_parser[:] = [parse]


def _number(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


def check_positive(name: str, value, unit: str = "") -> float:
    """``value`` as a float > 0, or ValueError naming ``name`` (e.g. ``"gain"``)."""
    v = _number(name, value)
    if v <= 0:
        raise ValueError(f"{name} must be > 0{' ' + unit if unit else ''}, got {value!r}")
    return v


def check_non_negative(name: str, value, unit: str = "") -> float:
    """``value`` as a float >= 0, or ValueError naming ``name`` (e.g. ``"read_noise"``)."""
    v = _number(name, value)
    if v < 0:
        raise ValueError(f"{name} must be >= 0{' ' + unit if unit else ''}, got {value!r}")
    return v


def check_size(name: str, value, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum`` (a size in pixels or a count), or ValueError."""
    v = _number(name, value)
    if v != int(v) or v < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(v)


def check_psf(psf, name: str = "psf"):
    """A PSF object: ``psf`` itself, or the PSF a spec string such as ``"gaussian:fwhm=3"`` names.

    Raises ValueError naming ``name`` for None, an unparsable spec or an object that is no PSF
    (it has neither ``evaluate`` nor, for a spatially varying PSF, ``at``).
    """
    if psf is None:
        raise ValueError(f"{name} is required: a PSF object or a spec such as 'gaussian:fwhm=3'")
    if isinstance(psf, str):
        if not _psf_parser:
            raise ValueError(f"{name} {psf!r}: PSF spec strings need jaxphot.psf to be imported")
        try:
            return _psf_parser[0](psf)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    if not (hasattr(psf, "evaluate") or callable(getattr(psf, "at", None))):
        raise ValueError(f"{name} must be a PSF object or a spec such as 'gaussian:fwhm=3', "
                         f"got {type(psf).__name__}")
    return psf


def check_columns(table, columns: Iterable[str], name: str = "table") -> None:
    """ValueError naming the first of ``columns`` missing from ``table`` (and the ones it has)."""
    for c in columns:
        if c not in table.colnames:
            raise ValueError(f"{name} has no column {c!r} (columns: {', '.join(table.colnames)})")


def check_output_path(path, *, inputs: Sequence = (), overwrite: bool = False,
                      suffixes: Sequence[str] = (), what: str = "output"):
    """Check an output file before any work; return it as a :class:`pathlib.Path`.

    Refuses (ValueError naming both paths) an output that is one of ``inputs``; an existing file
    without ``overwrite``; a folder that does not exist or is not writable; a suffix not in
    ``suffixes`` (when given).
    """
    import os
    from pathlib import Path

    out = Path(path)
    for src in inputs:
        if src is None:
            continue
        s = Path(src)
        same = s.exists() and out.exists() and os.path.samefile(s, out)
        if same or out.resolve() == s.resolve():
            raise ValueError(f"{what} {str(out)!r} is the input {str(s)!r}; refusing to write over it")
    if suffixes and out.suffix.lower() not in suffixes:
        raise ValueError(f"{what} {str(out)!r}: the extension must be one of {', '.join(suffixes)}")
    if out.is_dir():
        raise ValueError(f"{what} {str(out)!r} is a folder, not a file")
    if out.exists() and not overwrite:
        raise ValueError(f"{what} {str(out)!r} exists; pass --overwrite (overwrite=True) to replace it")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise ValueError(f"{what} {str(out)!r}: folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{what} {str(out)!r}: folder {str(folder)!r} is not writable")
    return out
