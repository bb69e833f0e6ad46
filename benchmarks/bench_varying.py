"""A strongly varying PSF field: ``jaxphot photometry --psf auto`` against a constant ePSF.

Simulates :func:`jaxphot.sim.varying.simulate_varying_field` (FWHM 3 px at the centre growing
60 % to the corners, elliptical q = 0.7 along +-45 deg in the corners; GAIN/RDNOISE in the FITS
header), runs ``jaxphot photometry image.fits --psf auto`` with no other options, and the same
with ``--variation 0`` (a constant ePSF), then prints a 3 x 3 regional table for each (S/N > 30
median magnitude bias and flux-pull MAD-std; completeness at S/N > 10) and a last line of JSON.

    python benchmarks/bench_varying.py            # 1024 x 1024, 3000 stars over 8 mag
    python benchmarks/bench_varying.py --quick    # 512 x 512, 1000 stars
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
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
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cluster-fraction", type=float, default=0.0,
                    help="fraction of stars in a central cluster (0: uniform; crowding is not the "
                         "subject here)")
    ap.add_argument("--true-psf", action="store_true",
                    help="also fit with the true PSF: the floor that no ePSF can beat")
    args = ap.parse_args(argv)
    shape, n = ((512, 512), 1000) if args.quick else ((1024, 1024), 3000)
    fld, hdr = simulate_varying_field(shape, n, "strong", seed=args.seed,
                                      cluster_fraction=args.cluster_fraction)
    result = {"shape": list(shape), "n_stars": n, "seed": args.seed,
              "cluster_fraction": args.cluster_fraction}
    with tempfile.TemporaryDirectory() as tmp:
        img = Path(tmp) / "varying.fits"
        fits.PrimaryHDU(fld.image.astype(np.float32), header=hdr).writeto(img)
        for label, var in (("auto", "auto"), ("constant", "0")):
            cat, sec = _run(img, Path(tmp) / f"{label}.ecsv", var)
            tab = regional_table(cat, fld.truth, shape)
            for c, f in (("bias_mmag", ".1f"), ("pull_mad_std", ".3f"), ("completeness", ".4f")):
                tab[c].format = f
            print(f"\n--psf auto {'' if var == 'auto' else '--variation 0 '}({sec:.0f} s)")
            print(tab)
            reg = tab[tab["row"] >= 0]
            result[label] = {
                "seconds": round(sec, 1),
                "max_abs_bias_mmag": float(np.nanmax(np.abs(reg["bias_mmag"]))),
                "pull_mad_std_range": [float(np.nanmin(reg["pull_mad_std"])),
                                       float(np.nanmax(reg["pull_mad_std"]))],
                "min_completeness": float(np.nanmin(reg["completeness"])),
                "regions": [dict(zip(tab.colnames, map(float, r), strict=True)) for r in tab],
            }
    if args.true_psf:
        t0 = time.perf_counter()
        cat = jaxphot.photometry(fld.image, fld.psf, gain=float(hdr["GAIN"]),
                                 read_noise=float(hdr["RDNOISE"]))
        tab = regional_table(cat, fld.truth, shape)
        print(f"\ntrue PSF ({time.perf_counter() - t0:.0f} s)")
        print(tab)
        reg = tab[tab["row"] >= 0]
        result["true_psf"] = {"pull_mad_std_range": [float(np.nanmin(reg["pull_mad_std"])),
                                                     float(np.nanmax(reg["pull_mad_std"]))],
                              "min_completeness": float(np.nanmin(reg["completeness"]))}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
