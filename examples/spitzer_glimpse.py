"""PSF photometry of a Spitzer/IRAC 4.5 um GLIMPSE mosaic, compared with the GLIMPSE catalog.

Reads ``spitzer_example_image.fits`` (MJy/sr, 1.2"/px, GLON-CAR WCS) and the IRAC ch2 PSF
(``irac_ch2_flight.fits``, 4x oversampled, 0.305"/px, so the image is undersampled), runs
:func:`jaxphot.photometry`, converts the fluxes to mJy
(``mJy = sum(MJy/sr) * (1.2/206264.8)**2 * 1e9``), matches the catalogued point sources by
position (WCS -> ra/dec) and prints the median flux ratio and its robust scatter.

Skips cleanly (exit 0 with a message) when the data set is absent.

    python examples/spitzer_glimpse.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxphot.datasets import DataNotFoundError, find_data_dir  # noqa: E402

PIXEL_SR = (1.2 / 206264.8) ** 2  # solid angle of a 1.2" pixel
MJYSR_PIX_TO_MJY = PIXEL_SR * 1e9  # (MJy/sr) x pixels -> mJy


def run(data_dir: Path, *, verbose: bool = True) -> dict:
    """Photometry of the GLIMPSE image and the comparison with the catalog's f4_5."""
    from astropy.coordinates import SkyCoord
    from astropy.table import Table

    from jaxphot.io import read_image
    from jaxphot.photometry import EXCLUDED_FROM_MODEL, photometry
    from jaxphot.psf import DiscretePSF

    img = read_image(data_dir / "spitzer_example_image.fits")
    # The flight PSF file samples the PSF at 4x (unit sum): a MATPHOT-style (non-integrated)
    # matrix, summed over 4x4 blocks into detector pixels.
    psf = DiscretePSF.from_fits(data_dir / "irac_ch2_flight.fits", oversampling=4)
    t0 = time.perf_counter()
    cat = photometry(img.data, psf, gain=img.gain, wcs=img.wcs, threshold=5.0, background_box=32)
    dt = time.perf_counter() - t0
    ref = Table.read(data_dir / "spitzer_example_catalog.xml")
    good = ((cat["flags"] & EXCLUDED_FROM_MODEL) == 0) & np.isfinite(cat["ra"])
    c = cat[good]
    sc = SkyCoord(c["ra"], c["dec"], unit="deg")
    rc = SkyCoord(l=ref["l"], b=ref["b"], unit="deg", frame="galactic")
    idx, sep, _ = rc.match_to_catalog_sky(sc)
    m = sep.arcsec < 1.0  # well under the 1.7" FWHM
    flux_mjy = np.asarray(c["flux_fit"])[idx[m]] * MJYSR_PIX_TO_MJY
    ratio = flux_mjy / np.asarray(ref["f4_5"])[m]
    med = float(np.median(ratio))
    robust = float(1.482602218505602 * np.median(np.abs(ratio / med - 1.0)))
    out = {
        "n_rows": len(cat),
        "n_good": int(good.sum()),
        "n_catalog": len(ref),
        "n_matched": int(m.sum()),
        "median_ratio": med,
        "robust_scatter": robust,
        "seconds": round(dt, 1),
        "gain_e_per_mjysr": img.gain,
    }
    if verbose:
        print(
            f"image {img.data.shape[1]}x{img.data.shape[0]} {img.bunit}, effective gain "
            f"{img.gain:.1f} e-/(MJy/sr); {np.isnan(img.data).sum()} NaN pixels"
        )
        print(f"photometry: {len(cat)} rows ({good.sum()} unflagged) in {dt:.1f} s")
        print(f'matched {m.sum()} of {len(ref)} GLIMPSE point sources within 1"')
        print(
            f"flux ratio jaxphot / GLIMPSE f4_5: median {med:.3f}, robust scatter "
            f"{100 * robust:.1f} %"
        )
    return out


def main() -> int:
    try:
        d = find_data_dir("spitzer_glimpse")
    except DataNotFoundError as exc:
        print(f"skipping: {exc}")
        return 0
    run(d)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
