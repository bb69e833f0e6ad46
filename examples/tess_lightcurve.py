"""TESS light curve from a target-pixel file with jaxphot, checked against the pipeline's SAP_FLUX.

The pipeline's simple aperture photometry (SAP) sums the background-subtracted calibrated ``FLUX`` of the
pixels that have bit 2 (value 2) set in the APERTURE extension. We express that aperture as a pixel mask
and run one batched call over the (T, H, W) cube: ``aperture_light_curves`` with a circle that covers
the whole stamp and ``mask`` = pixels outside the pipeline aperture, so the weighted sum is exactly the
pipeline's sum. A second, circular aperture shows the ordinary use on the same cube.

Run: ``python examples/tess_lightcurve.py`` (finds ../shared/data/tess or $JAXPHOT_DATA).
"""

from __future__ import annotations

import numpy as np
from astropy.io import fits

from jaxphot.aperture import aperture_light_curves
from jaxphot.datasets import find_data_dir


def load(d):
    """Return (time, cadenceno, flux cube (T, H, W), pipeline aperture mask, lc table)."""
    with fits.open(d / "tess25155310-s01-first-cadences.fits.gz") as tpf:
        pix = tpf["PIXELS"].data
        ap = tpf["APERTURE"].data
        cube = np.asarray(pix["FLUX"], dtype=float)
        cad = np.asarray(pix["CADENCENO"])
        time = np.asarray(pix["TIME"])
    with fits.open(d / "tess_lc.fits") as lc:
        lcd = lc["LIGHTCURVE"].data
        lct = {k: np.asarray(lcd[k]) for k in ("CADENCENO", "SAP_FLUX", "SAP_BKG", "TIME")}
    in_ap = (ap & 2) != 0  # bit 2 = pixel used in the optimal (SAP) aperture
    return time, cad, cube, in_ap, lct


def pipeline_aperture_flux(cube, in_ap):
    """SAP-equivalent light curve (T,) from the cube using a jaxphot aperture call."""
    T, H, W = cube.shape
    centre = [[(W - 1) / 2.0, (H - 1) / 2.0]]
    # a circle that covers every pixel of the stamp fully; the mask restricts it to the pipeline pixels
    r = float(np.hypot(W, H))
    res = aperture_light_curves(cube, centre, r, method="center", mask=~in_ap)
    return res["flux"][:, 0]


def main():
    d = find_data_dir("tess")
    time, cad, cube, in_ap, lc = load(d)
    sap = pipeline_aperture_flux(cube, in_ap)
    idx = np.searchsorted(lc["CADENCENO"], cad)
    ref = lc["SAP_FLUX"][idx]
    print(f"{in_ap.sum()} aperture pixels, {cube.shape[0]} cadences")
    print(" cadence      time        jaxphot        SAP_FLUX      rel.diff")
    for c, t, a, b in zip(cad, time, sap, ref, strict=True):
        print(f"{c:8d} {t:12.5f} {a:14.4f} {b:14.4f} {abs(a - b) / abs(b):10.2e}")
    print("max relative difference:", np.max(np.abs(sap - ref) / np.abs(ref)))
    # the ordinary use: a 2.5 px circular aperture with a local annulus sky on the same cube
    yy, xx = np.nonzero(in_ap)
    circ = aperture_light_curves(cube, [[xx.mean(), yy.mean()]], 2.5, r_in=3.5, r_out=5.0)
    print("circular r=2.5 px flux (T,):", np.round(circ["flux"][:, 0], 2))


if __name__ == "__main__":
    main()
