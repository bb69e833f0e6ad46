"""Artificial-star test cost: one AST run vs one photometry() run of the same field (issue 14).

A uniform simulated field (Gaussian PRF, FWHM 3 px, power-law LF from S/N = 2, Poisson and read
noise) is measured once with :func:`jaxphot.photometry` and once with
:func:`jaxphot.artificial_star_test` (fast mosaic path; the AST includes its own original
photometry). Both are timed warm (a first call of each compiles). Target: AST / photometry <= 3.

Run: ``python benchmarks/bench_ast.py --quick`` (512^2, 750 stars, 300 AST stars) or the
issue's size (default: 2048^2, 12,000 stars, 5,000 AST stars). Human table, then one JSON line.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import emit_json, peak_rss_gb, print_table

import jaxphot
from jaxphot.sim import simulate_cluster


def _first_and_warm(fn):
    """Seconds of a first (compiling) and a second (warm) call of ``fn``, and its result."""
    t0 = time.perf_counter()
    fn()
    t1 = time.perf_counter()
    out = fn()
    return t1 - t0, time.perf_counter() - t1, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="512^2, 750 stars, 300 AST stars")
    ap.add_argument("--side", type=int, default=2048)
    ap.add_argument("--stars", type=int, default=12_000)
    ap.add_argument("--ast", type=int, default=5_000)
    a = ap.parse_args()
    side, n, n_ast = (512, 750, 300) if a.quick else (a.side, a.stars, a.ast)
    f = simulate_cluster((side, side), n, sky=100.0, gain=1.0, read_noise=5.0, snr_min=2.0,
                         flux_ratio=1000.0, slope=1.5, cluster_fraction=0.0, margin=3, seed=0)
    fr = (float(f.truth["flux"].min()), float(f.truth["flux"].max()))

    def phot():
        return jaxphot.photometry(f.image, f.psf, gain=1.0)

    def ast():
        return jaxphot.artificial_star_test(f.image, f.psf, n_stars=n_ast, flux_range=fr,
                                            gain=1.0, seed=1)

    phot_first, phot_wall, cat = _first_and_warm(phot)
    ast_first, ast_wall, tab = _first_and_warm(ast)
    comp = jaxphot.completeness(tab, bins=0.25)
    ratio = ast_wall / phot_wall
    rows = [{"run": "photometry()", "stars": len(cat), "first_s": phot_first, "warm_s": phot_wall},
            {"run": f"artificial_star_test({n_ast})", "stars": int(tab["recovered"].sum()),
             "first_s": ast_first, "warm_s": ast_wall}]
    print_table(rows, ["run", "stars", "first_s", "warm_s"])
    print(f"AST / photometry (warm) = {ratio:.2f}x (target <= 3); mag50 {comp.meta['mag50']:.2f}, "
          f"mag90 {comp.meta['mag90']:.2f}, passes {tab.meta['n_passes']}")
    emit_json({"bench": "ast", "side": side, "stars": n, "ast_stars": n_ast,
               "photometry_warm_s": phot_wall, "ast_warm_s": ast_wall,
               "photometry_first_s": phot_first, "ast_first_s": ast_first, "ratio": ratio,
               "mag50": comp.meta["mag50"], "mag90": comp.meta["mag90"],
               "recovered_fraction": float(np.mean(tab["recovered"])),
               "peak_rss_gb": peak_rss_gb()})


if __name__ == "__main__":
    main()
