"""The real HST WFC3/UVIS F814W PSF grid through the whole pipeline (issue 13, item 2).

Simulates a star field on the UVIS2 chip with the STScI empirical PSF library as a varying
PSF (:func:`jaxphot.psf.instruments.read_wfc3_uvis_grid`, bicubic between nodes), then
measures it three ways and prints a 3 x 3 regional table for each (S/N > 30 median magnitude
bias and flux-pull MAD-std; completeness at S/N > 10):

1. ``photometry(image, library_grid)``: the library grid itself as the PSF;
2. ``jaxphot photometry image.fits --psf auto --variation grid:3x3 --apcorr-radius R``: an ePSF
   grid built from the simulated stars, each node scaled to the light within R px of its PSF
   stars (default R = 18 px: the library PSF is a 25 px square, whose corners lie 17.8 px out);
3. ``jaxphot photometry image.fits --psf auto --apcorr-radius R``: the automatic variation choice;
4. ``jaxphot photometry image.fits --psf auto``: the same without the aperture correction, whose
   fluxes are the light the 13 px ePSF box holds (about 12 % short of the total).

The last line is one JSON object. Needs ``$JAXPHOT_DATA`` or ``../shared/data``.

    python benchmarks/bench_hst_grid.py            # 2051 x 4096 (the whole chip), 8000 stars
    python benchmarks/bench_hst_grid.py --quick    # 1024 x 1024 at the chip's corner, 1500 stars
    python benchmarks/bench_hst_grid.py --quick --seeds 4 --runs auto   # 4 fields pooled
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from _common import print_regional, regional_summary
from astropy.io import fits
from astropy.table import Table

import jaxphot
from jaxphot.cli.app import main as jaxphot_main
from jaxphot.datasets import DataNotFoundError, find_data_dir
from jaxphot.psf.instruments import read_wfc3_uvis_grid
from jaxphot.sim.varying import regional_table


def _cli(image: Path, out: Path, *extra: str) -> tuple[Table, float]:
    t0 = time.perf_counter()
    rc = jaxphot_main(["photometry", str(image), "--psf", "auto", "-o", str(out), "--no-progress",
                       *extra])
    if rc != 0:
        raise SystemExit(f"jaxphot photometry failed (exit {rc})")
    return Table.read(out), time.perf_counter() - t0


# the CLI options of each ePSF run ("APCORR": --apcorr-radius R)
_RUNS = {
    "epsf_grid_3x3": ("--variation", "grid:3x3", "APCORR"),
    "auto": ("APCORR",),
    "auto_no_apcorr": (),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1024 x 1024, 1500 stars")
    ap.add_argument("--seed", type=int, default=0, help="first seed")
    ap.add_argument("--seeds", type=int, default=1,
                    help="fields simulated (seeds seed, seed+1, ...); their regions are pooled")
    ap.add_argument("--runs", nargs="+", default=list(_RUNS), choices=list(_RUNS),
                    help="ePSF runs besides the library grid (default: all)")
    ap.add_argument("--apcorr-radius", type=float, default=18.0,
                    help="aperture (px) of the ePSFs' aperture correction (default 18)")
    args = ap.parse_args(argv)
    try:
        path = find_data_dir("hst_wfc3_psf") / "emp_psf_f814w_4x.npy"
    except DataNotFoundError as exc:
        raise SystemExit(str(exc)) from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the file's corrupt rows are dropped, with a warning
        psf = read_wfc3_uvis_grid(path, "uvis2")
    shape, n = ((1024, 1024), 1500) if args.quick else ((2051, 4096), 8000)
    gain, rn = 1.5, 3.0
    seeds = list(range(args.seed, args.seed + args.seeds))
    result = {"shape": list(shape), "n_stars": n, "seeds": seeds}
    apc = ("--apcorr-radius", f"{args.apcorr_radius:g}")
    extras = {k: [x for a in _RUNS[k] for x in (apc if a == "APCORR" else (a,))]
              for k in args.runs}
    labels = {"library": "library grid as the PSF"} | {
        k: " ".join(["--psf auto", *extras[k]]) for k in args.runs}
    cats = {k: [] for k in labels}
    secs = {k: 0.0 for k in labels}
    variation = {}
    truths = []
    hdr = fits.Header()
    hdr["GAIN"] = (gain, "e-/ADU")
    hdr["RDNOISE"] = (rn, "e-")
    for seed in seeds:
        fld = jaxphot.simulate_cluster(shape, n, psf, sky=60.0, gain=gain, read_noise=rn,
                                       snr_min=5.0, flux_ratio=10 ** (8 / 2.5),
                                       cluster_fraction=0.0, seed=seed)
        truths.append(fld.truth)
        t0 = time.perf_counter()
        cats["library"].append(jaxphot.photometry(fld.image, psf, gain=gain, read_noise=rn))
        secs["library"] += time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            img = Path(tmp) / "wfc3.fits"
            fits.PrimaryHDU(fld.image.astype(np.float32), header=hdr).writeto(img)
            for key in args.runs:
                cat, sec = _cli(img, Path(tmp) / f"{key}.ecsv", *extras[key])
                cats[key].append(cat)
                secs[key] += sec
                variation.setdefault(key, []).append(str(cat.meta.get("psf_variation", "")))
        for key in labels:
            print_regional(f"seed {seed}: {labels[key]}", regional_table(cats[key][-1],
                                                                          fld.truth, shape))
    for key, label in labels.items():
        tab = regional_table(cats[key], truths, shape)
        if len(seeds) > 1:
            print_regional(f"{label}: {len(seeds)} fields pooled ({secs[key]:.0f} s)", tab)
        result[key] = regional_summary(tab, secs[key])
        if key in variation:
            result[key]["variation"] = variation[key]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
