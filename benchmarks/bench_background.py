"""Speed and agreement of the mesh background against sep (SExtractor's algorithm) on 4096².

Usage: python benchmarks/bench_background.py [--quick]   (table, then one JSON line)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import device_info, emit_json, print_table

from jaxphot import estimate_background


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1024² instead of 4096²")
    args = ap.parse_args(argv)
    n = 1024 if args.quick else 4096
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:n, 0:n] / n
    img = (100.0 + 20.0 * np.sin(3 * xx) * np.cos(2 * yy) + rng.normal(0, 5, (n, n)))
    img = img.astype(np.float32)
    estimate_background(img[:256, :256], 64, 3)  # warm up (imports, small compile)
    t = time.perf_counter()
    bk = estimate_background(img, 64, 3)
    ours = time.perf_counter() - t
    row = dict(image=f"{n}x{n}", jaxphot_s=ours)
    try:
        import sep

        t = time.perf_counter()
        sb = sep.Background(img, bw=64, bh=64, fw=3, fh=3)
        level, rms = sb.back(), sb.rms()
        row["sep_s"] = time.perf_counter() - t
        row["ratio_sep_over_jaxphot"] = row["sep_s"] / ours
        row["level_rms_diff_over_sky_sigma"] = float(np.std(bk.level - level) / 5.0)
        row["rms_map_rel_diff"] = float(np.median(np.abs(bk.rms / rms - 1)))
    except ImportError:
        pass
    print_table([row], list(row))
    emit_json({"benchmark": "background", **device_info(), **row})


if __name__ == "__main__":
    main()
