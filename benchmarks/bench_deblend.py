"""Deblending speed: jaxphot.deblend against photutils' deblend_sources, same input, same run.

A mosaic of Gaussian pairs (1.5–5 FWHM, flux ratios 1–10) and single sources, smoothed and
segmented at 3σ, is deblended by both with the same npixels, nlevels, contrast and mode. Prints a
table (time per call, best of ``--repeat``, and the ratio) and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from _common import print_table  # noqa: E402
from test_deblend import NOISE, SIG, mosaic  # noqa: E402

from jaxphot import deblend, segment  # noqa: E402


def best_time(fn, repeat):
    t = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return min(t)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one mosaic, one repeat")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    from photutils.segmentation import SegmentationImage, deblend_sources

    tiles = 1 if args.quick else 3
    repeat = 1 if args.quick else args.repeat
    img = np.block([[mosaic(seed=i * tiles + j)[0] for j in range(tiles)] for i in range(tiles)])
    sm = ndimage.gaussian_filter(img, SIG)
    rms = NOISE / (2 * np.sqrt(np.pi) * SIG)
    rows = []
    for npixels, contrast in ((5, 0.001), (10, 0.005)):
        lab = segment(sm, 3 * rms, npixels)
        segm = SegmentationImage(lab)
        ours = deblend(sm, lab, npixels=npixels, contrast=contrast)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = deblend_sources(sm, segm, npixels, contrast=contrast, progress_bar=False).data

            def run_ref(npixels=npixels, contrast=contrast, segm=segm):
                deblend_sources(sm, segm, npixels, contrast=contrast, progress_bar=False)

            t_ref = best_time(run_ref, repeat)
        t_j = best_time(lambda npixels=npixels, contrast=contrast, lab=lab: deblend(
            sm, lab, npixels=npixels, contrast=contrast), repeat)
        rows.append({"image": f"{img.shape[0]}x{img.shape[1]}", "npixels": npixels, "contrast": contrast,
                     "segments": int(lab.max()), "out_jaxphot": int(ours.max()),
                     "out_photutils": int(ref.max()), "same_map": bool(np.array_equal(ours, ref)),
                     "t_jaxphot_s": round(t_j, 3), "t_photutils_s": round(t_ref, 3),
                     "speedup": round(t_ref / t_j, 2)})  # fmt: skip
    print_table(rows, list(rows[0]))
    print(json.dumps({"bench": "deblend", "quick": args.quick, "rows": rows}))


if __name__ == "__main__":
    main()
