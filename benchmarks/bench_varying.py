"""A strongly varying PSF field: ``jaxphot photometry --psf auto`` against a constant ePSF.

Simulates :func:`jaxphot.sim.varying.simulate_varying_field` (FWHM 3 px at the centre growing
60 % to the corners, elliptical q = 0.7 along +-45 deg in the corners; GAIN/RDNOISE in the FITS
header), runs ``jaxphot photometry image.fits --psf auto`` with no other options, and the same
with ``--variation 0`` (a constant ePSF), then prints a 3 x 3 regional table for each (S/N > 30
median magnitude bias and flux-pull MAD-std; completeness at S/N > 10) and a last line of JSON.

    python benchmarks/bench_varying.py            # 1024 x 1024, 3000 stars over 8 mag
    python benchmarks/bench_varying.py --quick    # 512 x 512, 1000 stars
    python benchmarks/bench_varying.py --size 2048 --seeds 4 --true-psf   # issue 13 item 1

With ``--seeds N`` the regions of N fields are pooled: ~100 stars of S/N > 30 a region give a
pull MAD-std a standard error of ~0.12, as wide as the 0.9-1.15 window it is judged against.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import print_regional, regional_summary
from astropy.io import fits
from astropy.table import Table

import jaxphot
from jaxphot.cli.app import main as jaxphot_main
from jaxphot.sim.varying import regional_table, simulate_varying_field


def _run(image: Path, out: Path, variation: str) -> tuple[Table, float]:
    t0 = time.perf_counter()
    argv = [ "photometry", str(image), "--psf", "auto", "-o", str(out), "--no-progress"]
    if variation != "auto":
        argv += ["--variation", variation]
    rc = jaxphot_main(argv)
    if rc != 0:
        raise SystemExit(f"jaxphot photometry failed (exit {rc})")
    return Table.read(out), time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="512 x 512, 1000 stars")
    ap.add_argument("--seed", type=int, default=0, help="first seed")
    ap.add_argument("--seeds", type=int, default=1,
                    help="fields simulated (seeds seed, seed+1, ...); their regions are pooled")
    ap.add_argument("--size", type=int, default=None, help="image side (pixels); default 1024")
    ap.add_argument("--nstars", type=int, default=None, help="number of stars; default 3000")
    ap.add_argument("--cluster-fraction", type=float, default=0.0,
                    help="fraction of stars in a central cluster (0: uniform; crowding is not the "
                         "subject here)")
    ap.add_argument("--true-psf", action="store_true",
                    help="also fit with the true PSF: the floor that no ePSF can beat")
    args = ap.parse_args(argv)
    shape, n = ((512, 512), 1000) if args.quick else ((1024, 1024), 3000)
    if args.size is not None:
        shape = (args.size, args.size)
    n = args.nstars or n
    seeds = list(range(args.seed, args.seed + args.seeds))
    result = {"shape": list(shape), "n_stars": n, "seeds": seeds,
              "cluster_fraction": args.cluster_fraction}
    runs = {"auto": "auto", "constant": "0"} | ({"true_psf": None} if args.true_psf else {})
    cats = {k: [] for k in runs}
    secs = {k: 0.0 for k in runs}
    truths = []
    for seed in seeds:
        fld, hdr = simulate_varying_field(shape, n, "strong", seed=seed,
                                          cluster_fraction=args.cluster_fraction)
        truths.append(fld.truth)
        with tempfile.TemporaryDirectory() as tmp:
            img = Path(tmp) / "varying.fits"
            fits.PrimaryHDU(fld.image.astype(np.float32), header=hdr).writeto(img)
            for label, var in runs.items():
                if var is None:
                    t0 = time.perf_counter()
                    cat = jaxphot.photometry(fld.image, fld.psf, gain=float(hdr["GAIN"]),
                                             read_noise=float(hdr["RDNOISE"]))
                    sec = time.perf_counter() - t0
                else:
                    cat, sec = _run(img, Path(tmp) / f"{label}.ecsv", var)
                cats[label].append(cat)
                secs[label] += sec
                tab = regional_table(cat, fld.truth, shape)
                print_regional(f"seed {seed}: {label} ({sec:.0f} s)", tab)
    titles = {"auto": "--psf auto", "constant": "--psf auto --variation 0", "true_psf": "true PSF"}
    for label in runs:
        tab = regional_table(cats[label], truths, shape)
        if len(seeds) > 1:
            print_regional(f"{titles[label]}: {len(seeds)} fields pooled ({secs[label]:.0f} s)", tab)
        result[label] = regional_summary(tab, secs[label])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
