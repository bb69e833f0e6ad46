"""Forced PSF photometry of the TESS target-pixel file's target, against the pipeline's SAP_FLUX.

The PRF is the cube's own median frame (an empirical, pixel-integrated PRF at the target's place,
normalised to unit sum). Each cadence is measured at the stamp centre moved by that cadence's
pointing offset from the pipeline (``POS_CORR1/2`` minus their median, passed as per-exposure
affine transforms), with the target's flux and a constant sky free, weighted by the calibrated
FLUX_ERR. Holding the position at the centre instead gives 2.5 times the scatter: the first good cadence
is 0.03 px off (it follows a pointing excursion), and an undersampled PRF loses flux quickly
off-centre, where an aperture sum does not. The point-to-point scatter of a light curve is
``MAD(first differences) / sqrt(2)`` (robust to slow trends), printed in counts and in ppm of
the median flux (PSF photometry collects more of the star's light than the pipeline aperture).

Run: ``python examples/tess_forced.py`` (finds ../shared/data/tess or $JAXPHOT_DATA).
"""

from __future__ import annotations

import numpy as np
from astropy.io import fits
from astropy.table import Table

import jaxphot
from jaxphot.datasets import find_data_dir


def p2p(f) -> float:
    """Point-to-point scatter: 1.4826 MAD of the first differences / sqrt(2)."""
    d = np.diff(np.asarray(f, float))
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2))


def tess_forced(d):
    """``(ours (T,), ours_err (T,), sap (T,))`` for the good (QUALITY 0) cadences of the file."""
    with fits.open(d / "tess25155310-s01-first-cadences.fits.gz") as tpf:
        pix = tpf["PIXELS"].data
        cube = np.asarray(pix["FLUX"], float)
        err = np.asarray(pix["FLUX_ERR"], float)
        cad = np.asarray(pix["CADENCENO"])
        good = np.asarray(pix["QUALITY"]) == 0  # e.g. the first cadence: bit 8, a pointing excursion
        shift = np.c_[pix["POS_CORR1"], pix["POS_CORR2"]][good]  # (T, 2) pointing, pixels
    cube, err, cad = cube[good], err[good], cad[good]
    shift = shift - np.median(shift, axis=0)
    with fits.open(d / "tess_lc.fits") as lc:
        lcd = lc["LIGHTCURVE"].data
        sap = np.asarray(lcd["SAP_FLUX"])[np.searchsorted(np.asarray(lcd["CADENCENO"]), cad)]
    med = np.nanmedian(cube, axis=0)
    prf = np.clip(np.nan_to_num(med - np.nanmedian(med)), 0, None)
    psf = jaxphot.DiscretePSF(prf / prf.sum(), oversampling=1, integrated=True)
    h, w = med.shape
    cat = Table({"x": [(w - 1) / 2.0], "y": [(h - 1) / 2.0]})
    moves = [np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]]) for dx, dy in shift]
    tab = jaxphot.forced_photometry(cube, cat, psf, error=err, background="constant",
                                    fit_half=max(h, w), wcs=moves)
    return np.asarray(tab["flux"]), np.asarray(tab["flux_err"]), sap


def main():
    ours, ours_err, sap = tess_forced(find_data_dir("tess"))
    print(f"{len(ours)} cadences")
    print(f"forced PSF: median flux {np.median(ours):.1f}, p2p scatter {p2p(ours):.2f} "
          f"({p2p(ours) / np.median(ours) * 1e6:.0f} ppm), median flux_err {np.median(ours_err):.2f}")
    print(f"SAP_FLUX:   median flux {np.median(sap):.1f}, p2p scatter {p2p(sap):.2f} "
          f"({p2p(sap) / np.median(sap) * 1e6:.0f} ppm)")


if __name__ == "__main__":
    main()
