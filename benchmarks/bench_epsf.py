"""Time to build an ePSF from 200 stars (jaxphot.build_epsf), and photutils' EPSFBuilder on the same
stars in the same run when photutils is installed.

Usage: ``python benchmarks/bench_epsf.py [--quick]``. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax.numpy as jnp
import numpy as np

from jaxphot.epsf import build_epsf
from jaxphot.image.render import render_image
from jaxphot.psf import MoffatPSF
from jaxphot.sim.cutouts import add_noise


def make_field(n, fwhm, seed=0):
    rng = np.random.default_rng(seed)
    k = int(np.ceil(np.sqrt(n)))
    side = 30 + 24 * k
    g = np.stack(np.meshgrid(np.arange(k) * 24 + 30.0, np.arange(k) * 24 + 30.0), -1).reshape(-1, 2)
    pts = g[:n] + rng.uniform(-3, 3, (n, 2))
    f = np.exp(rng.uniform(np.log(2e4), np.log(5e5), n))
    truth = MoffatPSF(fwhm, 4.0)
    img = add_noise(
        render_image(truth, pts[:, 0], pts[:, 1], f, (side, side), stamp=41) + 100.0, 5.0, 1.0, rng
    )
    return img, pts, truth


def core_rms(psf_array, truth, m, s=4):
    n, h = s * m + 1, m // 2
    yy, xx = np.mgrid[0:n, 0:n] / s - m / 2
    v = np.asarray(truth.evaluate(jnp.asarray(h - xx.ravel()), jnp.asarray(h - yy.ravel()), (m, m)))
    v = v[h, h].reshape(n, n)
    v = v / v.sum() * psf_array.sum()
    core = np.hypot(xx, yy) <= 3
    return float(np.sqrt(np.mean((psf_array - v)[core] ** 2)) / v.max())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="50 stars, no photutils")
    args = ap.parse_args()
    n = 50 if args.quick else 200
    m, fwhm = 15, 2.0
    img, pts, truth = make_field(n, fwhm)
    start = pts + np.random.default_rng(1).normal(0, 0.1, pts.shape)
    # warm-up on a small subset so that the timing excludes one-off XLA compilation
    t0 = time.perf_counter()
    build_epsf(img, start[:n], shape=m, gain=1.0, maxiters=1)
    t_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    psf, stars = build_epsf(img, start, shape=m, gain=1.0, return_stars=True)
    t_ours = time.perf_counter() - t0
    rms_ours = core_rms(psf.array, truth, m)
    rows = [("jaxphot.build_epsf", t_ours, rms_ours, int(stars.meta["iterations"]))]
    t_pu = rms_pu = None
    if not args.quick:
        try:
            from astropy.nddata import NDData
            from astropy.table import Table
            from photutils.psf import EPSFBuilder, extract_stars

            sub = img - 100.0  # photutils expects background-subtracted stars
            tab = Table({"x": start[:, 0], "y": start[:, 1]})
            cut = extract_stars(NDData(sub), tab, size=m)
            t0 = time.perf_counter()
            epsf, _ = EPSFBuilder(oversampling=4, maxiters=10, progress_bar=False)(cut)
            t_pu = time.perf_counter() - t0
            a = np.asarray(epsf.data, float)
            if a.shape == psf.array.shape:
                rms_pu = core_rms(a / a.sum() * 16, truth, m)
            rows.append(("photutils EPSFBuilder", t_pu, rms_pu, 10))
        except ImportError:
            pass
    print(f"{'builder':24s} {'time_s':>8s} {'core_rms/peak':>14s} {'iters':>6s}")
    for name, t, r, it in rows:
        rs = "n/a" if r is None else f"{r:.4f}"
        print(f"{name:24s} {t:8.2f} {rs:>14s} {it:6d}")
    out = {
        "benchmark": "epsf_build",
        "n_stars": n,
        "shape": m,
        "oversampling": 4,
        "fwhm": fwhm,
        "seconds": round(t_ours, 3),
        "compile_seconds": round(t_compile, 3),
        "core_rms_over_peak": round(rms_ours, 5),
        "cpu_count": os.cpu_count(),
        "photutils_seconds": None if t_pu is None else round(t_pu, 3),
        "photutils_core_rms_over_peak": None if rms_pu is None else round(rms_pu, 5),
        "speedup_vs_photutils": None if t_pu is None else round(t_pu / t_ours, 2),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
