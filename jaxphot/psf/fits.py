"""The one PSF file format: :func:`write_psf_fits` and :func:`read_psf_fits`.

:func:`write_psf_fits` / :func:`read_psf_fits` store a :class:`~jaxphot.psf.DiscretePSF`, a
:class:`PolynomialPSF` or a :class:`GriddedPSF` as one FITS image (samples, not spline
coefficients) with the metadata in the header: ``OVERSAMP``, ``INTEGRAT``, ``KERNEL``,
``PSFTYPE`` (``DISCRETE``/``POLY``/``GRID``), for polynomials ``POLYDEG, POLYX0, POLYY0, POLYSX,
POLYSY``, ``PSFNORM`` when the samples' sum is not the convention's (an aperture-corrected
ePSF), for grids one ``DET_YX{i} = '(x, y)'`` card per plane and ``NODENORM = T`` when the
planes' sums carry per-node norms (aperture-corrected gridded ePSFs), ``EXTRAPOL = T`` for a
grid extrapolated beyond its outermost nodes. The grid cards follow the
WebbPSF/photutils ``GriddedPSFModel`` layout (photutils reads the first number as x), so
:func:`read_psf_fits` also reads photutils-style gridded PSF files and those files can be read by
photutils.
"""

from __future__ import annotations

import warnings

import numpy as np
from jaxtyping import Float

from ..io import read_image
from .discrete import DiscretePSF, integrated_card
from .measure import psf_fwhm
from .varying import GriddedPSF, PolynomialPSF

__all__ = ["write_psf_fits", "read_psf_fits", "grid_from_points", "PSFOversamplingWarning",
           "check_psf_sampling"]

# A PSF read at 1x whose FWHM is more than this many times the stars' looks oversampled.
_OVERSAMPLED_RATIO = 1.8


class PSFOversamplingWarning(UserWarning):
    """A PSF file read at 1x looks oversampled: its FWHM is several times the stars'."""


def check_psf_sampling(psf, star_fwhm: float, source: str = "the PSF file") -> int | None:
    """Warn (PSFOversamplingWarning) when ``psf``, read at 1x, is much wider than the stars.

    Parameters
    ----------
    psf : PSF model
        As read, e.g. by :func:`read_psf_fits` from a file without ``OVERSAMP``.
    star_fwhm : float
        The stars' measured FWHM, detector pixels.
    source : str
        How to name the PSF in the warning (its path).

    Returns
    -------
    int or None
        The oversampling the widths suggest (their ratio, rounded), or None when they agree.
    """
    if getattr(psf, "oversampling", 1) != 1 or not (np.isfinite(star_fwhm) and star_fwhm > 0):
        return None
    ratio = psf_fwhm(psf) / float(star_fwhm)
    if ratio < _OVERSAMPLED_RATIO:
        return None
    guess = int(round(ratio))
    warnings.warn(
        f"{source} looks {guess}x oversampled: read at 1x (it has no OVERSAMP card and no "
        f"oversampling was given) its FWHM is {psf_fwhm(psf):.1f} px, {ratio:.1f}x the stars' "
        f"{star_fwhm:.1f} px; give its oversampling (--oversampling {guess}, or "
        f"oversampling={guess}) or add OVERSAMP to its header",
        PSFOversamplingWarning, stacklevel=2)
    return guess


def write_psf_fits(psf: DiscretePSF | PolynomialPSF | GriddedPSF, path, overwrite: bool = False) -> None:
    """Save a DiscretePSF, PolynomialPSF or GriddedPSF to a FITS file (samples + metadata).

    See the module docstring for the header keywords.
    """
    from astropy.io import fits

    hdr = fits.Header()
    hdr["OVERSAMP"] = (psf.oversampling, "PSF samples per detector pixel")
    hdr["INTEGRAT"] = (psf.integrated, "T: samples of the PRF (ePSF, sum s^2)")
    hdr["KERNEL"] = (psf.kernel, "interpolation kernel")
    hdr["ORIGIN0"] = ("centre", "PSF origin at the array's geometric centre")
    if isinstance(psf, DiscretePSF):
        hdr["PSFTYPE"] = "DISCRETE"
        data = psf.array
        norm = data.sum() / (psf.oversampling**2 if psf.integrated else 1.0)
        if abs(norm - 1.0) > 1e-6:  # e.g. an aperture-corrected ePSF (build_epsf normalize=...)
            hdr["PSFNORM"] = (norm, "sum of the samples / convention (flux fraction)")
    elif isinstance(psf, PolynomialPSF):
        hdr["PSFTYPE"] = "POLY"
        if psf.norm != 1.0:
            hdr["PSFNORM"] = (psf.norm, "sum of the samples / convention (flux fraction)")
        hdr["POLYDEG"] = (psf.degree, "degree of the polynomial in (u, v)")
        hdr["POLYX0"], hdr["POLYY0"] = psf.center[0], psf.center[1]
        hdr["POLYSX"], hdr["POLYSY"] = psf.scale[0], psf.scale[1]
        hdr["COMMENT"] = "u=(x-POLYX0)/POLYSX, v=(y-POLYY0)/POLYSY, 0-based pixels"
        hdr["COMMENT"] = "planes: terms 1, u, v, u^2, uv, v^2 (up to POLYDEG)"
        data = psf.arrays
    elif isinstance(psf, GriddedPSF):
        hdr["PSFTYPE"] = "GRID"
        a = psf.arrays
        data = a.reshape(-1, *a.shape[2:])
        i = 0
        for yv in psf.grid_y:
            for xv in psf.grid_x:
                # photutils reads the first number of DET_YX as x (see module docstring)
                hdr[f"DET_YX{i}"] = (f"({xv:.3f}, {yv:.3f})", "(x, y) 0-based pixels")
                i += 1
        hdr["NXPSFS"], hdr["NYPSFS"] = len(psf.grid_x), len(psf.grid_y)
        if psf.norm != 1.0:
            # the planes keep their sums: each plane's sum / convention is its node's norm
            hdr["NODENORM"] = (True, "plane sum / convention = flux fraction (norm)")
        if psf.extrapolate:
            hdr["EXTRAPOL"] = (True, "linear extrapolation beyond the outermost nodes")
    else:
        raise ValueError(f"cannot write a {type(psf).__name__} to FITS")
    choice = getattr(psf, "variation", None)
    if choice is not None and hasattr(choice, "header_cards"):
        # how the variation was chosen (jaxphot.epsf.variation): choice and CV evidence
        for key, value, comment in choice.header_cards():
            hdr[key] = (value, comment)
        hdr["COMMENT"] = "VARIATN/VARDEG/CVCHI2_d: variation chosen by k-fold CV on held-out stars"
    fits.PrimaryHDU(np.asarray(data, np.float64), header=hdr).writeto(path, overwrite=overwrite)


def read_psf_fits(path, oversampling: int | None = None, kernel: str | None = None, *,
                  star_fwhm: float | None = None) -> DiscretePSF | PolynomialPSF | GriddedPSF:
    """Read a PSF from :func:`write_psf_fits`, a photutils/WebbPSF gridded PSF or a plain image.

    Parameters
    ----------
    path : str or Path
        FITS file.
    oversampling : int, optional
        Overrides the header's ``OVERSAMP`` (required when the file has none and is oversampled).
    kernel : str, optional
        Overrides the header's ``KERNEL`` (default ``"bspline3"``).
    star_fwhm : float, optional
        The FWHM of the stars it is for (detector pixels, e.g. from
        :func:`jaxphot.epsf.measure_star_fwhm`): a file without ``OVERSAMP``, read at 1x, that
        is much wider than them gets a :class:`PSFOversamplingWarning`.

    Returns
    -------
    DiscretePSF, PolynomialPSF or GriddedPSF
        A file with ``DET_YX*`` cards is a :class:`GriddedPSF`; ``PSFTYPE = 'POLY'`` a
        :class:`PolynomialPSF`; a 2-D image a :class:`~jaxphot.psf.DiscretePSF`. ``INTEGRAT``
        (or ``EPSF``) says whether the samples are an ePSF; without it grids and polynomials are
        taken to be ePSFs (what photutils and WebbPSF grids are) and a plain image a PSF
        (MATPHOT), as :meth:`DiscretePSF.from_header` reads it.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PSF files often carry odd WCS cards
        img = read_image(path, what="PSF", cube=True)
    data, hdr, path = img.data, img.header, img.path
    s = int(oversampling or hdr.get("OVERSAMP", 1))
    kern = kernel or hdr.get("KERNEL", "bspline3")
    ptype = str(hdr.get("PSFTYPE", "")).upper()
    xy = _node_positions(hdr, path, ptype == "GRID")
    if xy is not None:
        return grid_from_points(
            data[None] if data.ndim == 2 else data,
            xy,
            s,
            integrated_card(hdr, default=True),
            kern,
            str(path),
            node_norm=bool(hdr.get("NODENORM", False)),
            extrapolate=bool(hdr.get("EXTRAPOL", False)),
        )
    if ptype == "POLY":
        return PolynomialPSF(
            data,
            s,
            int(hdr["POLYDEG"]),
            (hdr["POLYX0"], hdr["POLYY0"]),
            (hdr["POLYSX"], hdr["POLYSY"]),
            integrated=integrated_card(hdr, default=True),
            kernel=kern,
            norm=float(hdr.get("PSFNORM", 1.0)),
        )
    if data.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D PSF image, got shape {data.shape}")
    psf = DiscretePSF.from_header(data, hdr, oversampling=oversampling, kernel=kernel)
    if star_fwhm is not None and oversampling is None and "OVERSAMP" not in hdr:
        check_psf_sampling(psf, star_fwhm, source=f"PSF file {str(path)!r}")
    return psf


def _node_positions(hdr, path, grid: bool) -> Float[np.ndarray, " N 2"] | None:
    """The (x, y) of every plane from the ``DET_YX{i}`` cards, in plane order; None without
    cards (a ValueError when ``grid`` says the file is a grid)."""
    det = [k for k in hdr if k.startswith("DET_YX")]
    if not det:
        if grid:
            raise ValueError(f"{path}: PSFTYPE='GRID' but no DET_YX* position cards")
        return None
    det.sort(key=lambda k: int(k[6:]))
    xy = []
    for k in det:
        # photutils reads the first number of DET_YX as x (see module docstring)
        vals = str(hdr[k]).strip().lstrip("(").rstrip(")").split(",")
        xy.append((float(vals[0]), float(vals[1])))
    return np.array(xy)


def grid_from_points(data: Float[np.ndarray, " N ny nx"], xy: Float[np.ndarray, " N 2"], s: int,
                     integrated: bool, kernel: str, name: str, node_norm: bool = False,
                     extrapolate: bool = False) -> GriddedPSF:
    """GriddedPSF from a stack (N, ny, nx) and arbitrary-order node positions (N, 2).

    With ``node_norm`` each plane's sum relative to the convention is its node's ``norm``.
    """
    if data.ndim != 3 or data.shape[0] != len(xy):
        raise ValueError(f"{name}: {len(xy)} grid positions but data of shape {data.shape}")
    gx, gy = np.unique(xy[:, 0]), np.unique(xy[:, 1])
    if gx.size * gy.size != len(xy):
        raise ValueError(f"{name}: the {len(xy)} PSF positions do not form a rectangular grid")
    ix, iy = np.searchsorted(gx, xy[:, 0]), np.searchsorted(gy, xy[:, 1])
    arr = np.zeros((gy.size, gx.size) + data.shape[1:])
    arr[iy, ix] = data
    norm = arr.sum(axis=(2, 3)) / (s * s if integrated else 1.0) if node_norm else 1.0
    return GriddedPSF(
        arr, gx, gy, s, integrated=integrated, kernel=kernel, norm=norm, extrapolate=extrapolate
    )
