"""Benchmark: 10^5 circular apertures with sky annuli, jaxphot vs photutils (same run, same data).

Cases (2048x2048 float64 image, r = 5, annulus 10-15 px, method "exact"):

* ``sums``: aperture + annulus sums (jaxphot ``sky="mean"`` = exact-weighted annulus mean) vs
  photutils ``aperture_photometry(data, [CircularAperture, CircularAnnulus], method="exact")``.
* ``median``: jaxphot ``sky="median"`` vs photutils ``aperture_photometry`` + ``ApertureStats`` median.

Timings are best-of-``--repeat`` after one warm-up call (compilation excluded, and reported separately);
the JSON also has the process CPU time of those calls (jaxphot runs chunks on all cores, photutils on
one) and the load average, since other processes sharing the cores change the wall times.
Prints a table, then as the LAST line one JSON object. ``--quick`` uses 10^4 apertures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import numpy as np

from jaxphot.aperture import aperture_photometry


def best(fn, repeat):
    """Best wall time of ``repeat`` calls, and the process CPU time of that call (all threads)."""
    ts = []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        ts.append((time.perf_counter() - t0, time.process_time() - c0))
    return min(ts)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="10^4 apertures instead of 10^5")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    n = args.n or (10_000 if args.quick else 100_000)
    rng = np.random.default_rng(0)
    data = rng.normal(100.0, 5.0, (2048, 2048))
    pos = rng.uniform(20, 2028, (n, 2))
    r, rin, rout = 5.0, 10.0, 15.0
    res = {"n_apertures": n, "image": [2048, 2048], "r": r, "r_in": rin, "r_out": rout}

    rows = []
    for case, sky in (("sums", "mean"), ("median", "median")):

        def ours(sky=sky):
            return aperture_photometry(data, pos, r, r_in=rin, r_out=rout, sky=sky, error=5.0)

        t0 = time.perf_counter()
        tab = ours()
        first = time.perf_counter() - t0
        t_ours, cpu_ours = best(ours, args.repeat)
        res[f"jaxphot_{case}_s"] = t_ours
        res[f"jaxphot_{case}_cpu_s"] = cpu_ours
        res[f"jaxphot_{case}_first_call_s"] = first
        t_pu = None
        try:
            from photutils.aperture import ApertureStats, CircularAnnulus, CircularAperture
            from photutils.aperture import aperture_photometry as pu_phot

            ca, cn = CircularAperture(pos, r), CircularAnnulus(pos, rin, rout)
            if case == "sums":

                def pu(ca=ca, cn=cn):
                    return pu_phot(data, [ca, cn], method="exact")
            else:

                def pu(ca=ca, cn=cn):
                    pu_phot(data, ca, method="exact")
                    return ApertureStats(data, cn).median

            t_pu, cpu_pu = best(pu, 1)
            res[f"photutils_{case}_cpu_s"] = cpu_pu
            out = pu()
            if case == "sums":
                ref = np.asarray(out["aperture_sum_0"])
                res["max_rel_diff_aperture_sum"] = float(
                    np.max(np.abs(tab["aperture_sum"] / ref - 1))
                )
            res[f"photutils_{case}_s"] = t_pu
            res[f"speedup_{case}"] = t_pu / t_ours
        except ImportError:
            pass
        rows.append((case, t_ours, first, t_pu))

    print(f"{n} circular apertures r={r} with annulus {rin}-{rout}, 2048x2048, method=exact")
    print(
        f"{'case':8s} {'jaxphot [s]':>12s} {'1st call [s]':>13s} {'photutils [s]':>14s} {'speedup':>8s}"
    )
    for case, t, f, p in rows:
        ps = f"{p:14.3f}" if p else f"{'n/a':>14s}"
        sp = f"{p / t:8.2f}" if p else f"{'n/a':>8s}"
        print(f"{case:8s} {t:12.3f} {f:13.3f} {ps} {sp}")
    res["device"] = (
        f"{jax.default_backend()} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    )
    res["jax"] = jax.__version__
    res["load_average_1min_at_end"] = os.getloadavg()[0]  # other processes share the cores
    print(json.dumps(res))


if __name__ == "__main__":
    main()
