"""Files of a many-image run: input paths, catalog names, and writes that are atomic.

A catalog is written to a hidden temporary file in its directory and renamed into place
(``os.replace`` is atomic on POSIX), so a catalog that exists is complete; that is what makes
a batch resumable. Temporary files of a killed run are removed by the next one.
"""

from __future__ import annotations

import glob
import os
import uuid
from pathlib import Path

__all__ = [
    "SUMMARY_NAME",
    "ERRORS_NAME",
    "CATALOG_FORMATS",
    "expand_images",
    "image_stem",
    "catalog_path",
    "temporary_path",
    "atomic_write_table",
    "atomic_write_text",
    "remove_stale_temporaries",
    "is_complete",
]

SUMMARY_NAME = "jaxphot_batch_summary.ecsv"  # the run summary, in the output directory
ERRORS_NAME = "jaxphot_batch_errors.txt"  # the tracebacks of the failed images
CATALOG_FORMATS = ("ecsv", "fits", "csv")
_FITS_SUFFIXES = (".fits.gz", ".fits.fz", ".fit.gz", ".fts.gz", ".fits", ".fit", ".fts")


def expand_images(images) -> list[Path]:
    """Paths from a glob pattern, a path, or an iterable of either; sorted, without repeats.

    Raises
    ------
    ValueError
        When nothing matches.
    """
    items = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    out: list[Path] = []
    seen = set()
    for item in items:
        s = os.fspath(item)
        for m in sorted(glob.glob(s)) if glob.has_magic(s) else [s]:
            key = Path(m).resolve()
            if key not in seen:
                seen.add(key)
                out.append(Path(m))
    if not out:
        raise ValueError(f"no images match {images!r}")
    return out


def image_stem(path) -> str:
    """The image's file name without its FITS suffix (``img.fits.fz`` -> ``img``)."""
    path = Path(path)
    name = path.name
    for suf in _FITS_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return path.stem


def catalog_path(image, outdir, fmt: str = "ecsv") -> Path:
    """The catalog of ``image`` in ``outdir``: the image's name with its FITS suffix replaced."""
    if fmt not in CATALOG_FORMATS:
        raise ValueError(f"catalog format must be one of {CATALOG_FORMATS}, got {fmt!r}")
    return Path(outdir) / f"{image_stem(image)}.{fmt}"


def temporary_path(final: Path) -> Path:
    """A fresh hidden name next to ``final``, with its suffix, for writing then renaming."""
    # Same directory (same file system: os.replace is atomic) and the same suffix
    # (write_catalog picks the format from it).
    return final.with_name(f".{final.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{final.suffix}")


def _replace_atomically(path: Path, write) -> Path:
    """``write(tmp)``, flush it to disk, rename it to ``path``; no temporary file is left."""
    tmp = temporary_path(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_table(table, path) -> Path:
    """Write a catalog (format from the suffix) so that ``path`` either does not exist or is complete."""
    from .. import io  # looked up at call time: tests replace io.write_catalog

    return _replace_atomically(Path(path), lambda tmp: io.write_catalog(table, tmp, overwrite=True))


def atomic_write_text(text: str, path) -> Path:
    """Write a text file so that ``path`` either keeps its old content or has all of ``text``."""
    return _replace_atomically(Path(path), lambda tmp: tmp.write_text(text))


def remove_stale_temporaries(outdir: Path) -> None:
    """Remove the temporary files that a killed run left in ``outdir``."""
    for p in Path(outdir).glob(".*.tmp-*"):
        try:
            p.unlink()
        except OSError:
            pass


def is_complete(path: Path) -> bool:
    """Whether the catalog ``path`` exists (and so is complete: see the module's note)."""
    # Catalogs only ever appear through os.replace of a fully written file.
    try:
        return Path(path).stat().st_size > 0
    except OSError:
        return False
