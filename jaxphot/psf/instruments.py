"""Instrument PSF libraries: the HST WFC3/UVIS empirical PSF grid."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from jaxtyping import Bool, Float

from .varying import GriddedPSF, PSFGridWarning

__all__ = ["read_wfc3_uvis_grid", "wfc3_uvis_grid_positions"]


def wfc3_uvis_grid_positions(
    detector: str = "both",
) -> tuple[Float[np.ndarray, " 7"], Float[np.ndarray, " G"]]:
    """Assumed detector positions (0-based pixels) of the 7 x 8 WFC3/UVIS library PSF grid.

    STScI's WFC3/UVIS "STDPSF" library (Anderson) holds 56 = 7 x 8 PSFs: 7 columns across the
    4096 pixels of x and 4 rows on each of the two 4096 x 2051 chips (8 rows in all), stored
    row-major with x fastest, the rows of UVIS2 ([sci,1], bottom) first, then UVIS1 ([sci,2]) on
    top. This is the layout photutils' ``stdpsf_reader`` decodes from the ``IPSFXnn``/``JPSFYnn``
    header cards. Those cards are not in the numpy repackaging we read, so we *assume* nodes evenly
    spaced from edge to edge: x = 0, 682.5, ..., 4095 and, on each chip, y = 0, 683.3, ..., 2050
    (UVIS1 rows offset by 2051 in the stacked frame). With ``detector="both"`` the y values are in
    the stacked 4096 x 4102 frame; ``"uvis2"``/``"uvis1"`` give one chip's own frame.

    Returns
    -------
    grid_x : (7,) array
    grid_y : (8,) array for "both", else (4,)
    """
    gx = np.linspace(0.0, 4095.0, 7)
    chip = np.linspace(0.0, 2050.0, 4)
    if detector == "both":
        return gx, np.concatenate([chip, chip + 2051.0])
    if detector in ("uvis1", "uvis2"):
        return gx, chip
    raise ValueError(f"detector must be 'both', 'uvis1' or 'uvis2', got {detector!r}")


def read_wfc3_uvis_grid(
    path,
    detector: str = "both",
    kernel: str = "bspline3",
    *,
    corrupt: str = "drop",
    floor_frac: float = 0.01,
) -> GriddedPSF:
    """Read the HST WFC3/UVIS F814W library PSF grid (``emp_psf_f814w_4x.npy`` or a FITS cube).

    The cube is (56, 101, 101): 4x oversampled ePSFs (101 samples = 25 pixels) at the positions of
    :func:`wfc3_uvis_grid_positions`. The repackaged file had each PSF's minimum subtracted and
    arbitrary sums, so every PSF is renormalised to sum s^2 = 16 here. Negative samples (none are
    expected after the minimum subtraction) are kept.

    Some PSFs of the repackaged ``emp_psf_f814w_4x.npy`` are corrupt: the 14 of the two middle
    grid rows (the chips' inner edges) and the 8 of the last column (x = 4095) carry a flat floor
    of ~0.37 x their peak (sums ~1030 instead of ~17.5), which renormalisation would turn into a
    PSF with 98 % of its light in a pedestal. A node is corrupt when the median of its outermost
    1-pixel rim exceeds ``floor_frac`` times its peak (good nodes: ~3e-4). A grid must stay
    rectangular, so whole grid rows or columns are dropped, the one with the most corrupt nodes
    first, until none is left (for this file: rows y = 2050, 2051 and column x = 4095, leaving
    6 x 6 nodes for ``"both"``, 3 x 6 for one chip), with a :class:`PSFGridWarning`; beyond the
    remaining nodes the PSF is held constant (see :class:`GriddedPSF`).

    Parameters
    ----------
    path : str or Path
        ``.npy`` (numpy) or ``.fits`` file holding the (56, ny, nx) cube.
    detector : {"both", "uvis2", "uvis1"}
        The whole two-chip grid (8 rows, stacked frame) or one chip (its 4 rows, own frame).
    kernel : str
        Interpolation kernel.
    corrupt : {"drop", "raise"}
        What to do with corrupt nodes: drop them (grid rows/columns, with a warning) or raise a
        ValueError naming them.
    floor_frac : float
        Rim-median-to-peak ratio above which a node is corrupt.

    Raises
    ------
    ValueError
        A cube of the wrong shape, corrupt nodes with ``corrupt="raise"``, or no valid node left.
    """
    path = Path(path)
    if path.suffix == ".npy":
        data = np.load(path)
    else:
        from astropy.io import fits

        data = fits.getdata(path)
    data = np.asarray(data, np.float64)
    if data.ndim != 3 or data.shape[0] != 56:
        raise ValueError(f"{path}: expected a (56, ny, nx) WFC3/UVIS PSF cube, got {data.shape}")
    if corrupt not in ("drop", "raise"):
        raise ValueError(f"corrupt must be 'drop' or 'raise', got {corrupt!r}")
    gx, gy = wfc3_uvis_grid_positions(detector)
    rows = data.reshape(8, 7, *data.shape[1:])
    if detector == "uvis2":
        rows = rows[:4]
    elif detector == "uvis1":
        rows = rows[4:]
    bad = _floored_nodes(rows, floor_frac)
    if bad.any():
        rows, gx, gy = _drop_corrupt(rows, np.asarray(gx), np.asarray(gy), bad, path, corrupt,
                                     floor_frac)
    return GriddedPSF(rows, gx, gy, oversampling=4, integrated=True, kernel=kernel)


def _drop_corrupt(rows: Float[np.ndarray, " gy gx ny nx"], gx: Float[np.ndarray, " gx"],
                  gy: Float[np.ndarray, " gy"], bad: Bool[np.ndarray, " gy gx"], path: Path,
                  corrupt: str, floor_frac: float):
    """``(rows, gx, gy)`` without the grid rows and columns holding corrupt nodes (warned), or
    a ValueError naming them (``corrupt="raise"``)."""
    where = ", ".join(f"({gx[i]:.0f}, {gy[j]:.0f})" for j, i in zip(*np.nonzero(bad), strict=True))
    if corrupt == "raise":
        raise ValueError(f"{path}: {int(bad.sum())} corrupt PSFs (flat floor) at (x, y) = {where}")
    keep_r, keep_c = np.ones(bad.shape[0], bool), np.ones(bad.shape[1], bool)
    while (b := bad[np.ix_(keep_r, keep_c)]).any():
        # drop the grid row or column holding the most corrupt nodes (rows on a tie)
        nr, nc = b.sum(1), b.sum(0)
        if nr.max() >= nc.max():
            keep_r[np.nonzero(keep_r)[0][np.argmax(nr)]] = False
        else:
            keep_c[np.nonzero(keep_c)[0][np.argmax(nc)]] = False
    if not (keep_r.any() and keep_c.any()):
        raise ValueError(f"{path}: no valid PSF left after dropping the corrupt ones")
    warnings.warn(
        f"{path.name}: {int(bad.sum())} corrupt PSFs (flat floor > {floor_frac:g} x peak) at "
        f"(x, y) = {where}; dropped grid rows y = {_fmt(gy[~keep_r])} and columns "
        f"x = {_fmt(gx[~keep_c])}, leaving {keep_r.sum()} x {keep_c.sum()} nodes",
        PSFGridWarning,
        stacklevel=3,  # the caller of read_wfc3_uvis_grid
    )
    return rows[np.ix_(keep_r, keep_c)], gx[keep_c], gy[keep_r]


def _fmt(v) -> str:
    """``[a, b, ...]`` of pixel coordinates, for messages."""
    return "[" + ", ".join(f"{a:.0f}" for a in v) + "]"


def _floored_nodes(rows: Float[np.ndarray, " gy gx ny nx"],
                   floor_frac: float) -> Bool[np.ndarray, " gy gx"]:
    """(ny, nx) bool: nodes whose outermost 1-pixel rim median exceeds ``floor_frac`` x peak."""
    k = 4  # samples per pixel of the library
    rim = np.zeros(rows.shape[-2:], bool)
    rim[:k], rim[-k:], rim[:, :k], rim[:, -k:] = True, True, True, True
    med = np.median(rows[..., rim], axis=-1)
    return ~(med <= floor_frac * rows.max(axis=(-2, -1)))

