"""Build an ePSF from the Spitzer GLIMPSE IRAC 4.5 um image and compare it with IRAC's ch2 PSF.

The image is undersampled (FWHM ~1.4 px), so the ePSF is 4x oversampled. The comparison is the
encircled-energy curve of a star at a pixel centre, normalised at 7 px (the ePSF box is 15 px),
against
the in-flight ch2 PSF (81x81, 4x oversampled, a PSF: integrated over pixels by DiscretePSF).

Run: ``python examples/spitzer_epsf.py [DATA_DIR] [-o epsf.fits]``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from astropy.io import fits

from jaxphot.datasets import DataNotFoundError, find_data_dir
from jaxphot.epsf import build_epsf_from_image
from jaxphot.psf import DiscretePSF, write_psf_fits


def encircled(psf, radii, size=41, norm_radius=7.0):
    c = size // 2
    img = np.asarray(psf.evaluate(float(c), float(c), (size, size)))
    yy, xx = np.mgrid[0:size, 0:size]
    r = np.hypot(xx - c, yy - c)
    tot = img[r <= norm_radius].sum()
    return np.array([img[r <= k].sum() / tot for k in radii])


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir", nargs="?")
    ap.add_argument("-o", "--output")
    args = ap.parse_args(argv)
    try:
        d = find_data_dir("spitzer_glimpse") if args.data_dir is None else args.data_dir
    except DataNotFoundError as exc:
        print(exc)
        return 0
    from pathlib import Path

    d = Path(d)
    img = fits.getdata(d / "spitzer_example_image.fits").astype(float)
    psf, stars = build_epsf_from_image(
        img, fwhm_guess=1.4, oversampling=4, shape=15, return_stars=True
    )
    print(
        f"stars used: {(stars['status'] == 'used').sum()} of {len(stars)}; "
        f"iterations {stars.meta['iterations']}; ePSF FWHM {stars.meta['fwhm']:.2f} px"
    )
    ref = DiscretePSF(fits.getdata(d / "irac_ch2_flight.fits").astype(float), 4, integrated=False)
    radii = np.arange(1, 8)
    ours, theirs = encircled(psf, radii), encircled(ref, radii)
    print(" r/px   EE(ePSF)  EE(IRAC ch2)  ratio-1")
    for r, a, b in zip(radii, ours, theirs, strict=True):
        print(f"{r:5d} {a:9.4f} {b:12.4f} {a / b - 1:+8.4f}")
    if args.output:
        write_psf_fits(psf, args.output, overwrite=True)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
