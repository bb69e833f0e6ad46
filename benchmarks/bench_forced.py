"""Forced photometry speed: N stars x T exposures, in star-epochs per second (issue 17).

Registered exposures of a random field (Gaussian PRF, FWHM 3 px, Poisson noise) are measured at
the true positions with :func:`jaxphot.forced_photometry` (two passes: groups, then neighbour
subtraction). The peer is photutils ``PSFPhotometry`` with ``x_0``/``y_0`` held fixed
(``psf_model.x_0.fixed = True``) on a subset of one exposure; the ratio compares rates.

Run: ``python benchmarks/bench_forced.py --quick`` (2,000 x 5) or ``--stars N --epochs T``
(the issue's full size is ``--stars 100000 --epochs 50``). Human table, then one JSON line.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from _common import emit_json, peak_rss_gb, print_table
from astropy.table import Table

import jaxphot
from jaxphot.image.render import render_image


def simulate(n, t, fwhm=3.0, density=0.004, seed=0):
    """``(images (T, S, S), x, y, flux (N,))``: N stars at ``density`` per pixel^2."""
    rng = np.random.default_rng(seed)
    side = int(math.ceil(math.sqrt(n / density)))
    x, y = rng.uniform(2, side - 3, n), rng.uniform(2, side - 3, n)
    flux = 10 ** rng.uniform(3, 4.5, n)
    psf = jaxphot.GaussianPRF(fwhm)
    model = 50.0 + render_image(psf, x, y, flux, (side, side), stamp=15)
    images = np.empty((t, side, side), np.float32)  # one epoch at a time: no int64 (T, S, S) copy
    for i in range(t):
        images[i] = rng.poisson(model)
    return images, x, y, flux, psf


def run_photutils(image, x, y, flux, fwhm, n_sub):
    try:
        from photutils.psf import CircularGaussianPRF, PSFPhotometry, SourceGrouper
    except ImportError:
        return None
    model = CircularGaussianPRF(fwhm=fwhm)
    model.x_0.fixed = True
    model.y_0.fixed = True
    model.fwhm.fixed = True
    init = Table({"x": x[:n_sub], "y": y[:n_sub], "flux": flux[:n_sub]})
    phot = PSFPhotometry(model, (11, 11), grouper=SourceGrouper(min_separation=2 * fwhm))
    t0 = time.perf_counter()
    res = phot(image.astype(float) - 50.0, init_params=init)
    dt = time.perf_counter() - t0
    return {"rate": n_sub / dt, "wall_s": dt, "n_out": len(res)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2,000 stars x 5 exposures")
    ap.add_argument("--stars", type=int, default=100_000)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--peer-stars", type=int, default=300)
    a = ap.parse_args()
    n, t = (2000, 5) if a.quick else (a.stars, a.epochs)
    images, x, y, flux, psf = simulate(n, t)
    cat = Table({"x": x, "y": y})
    t0 = time.perf_counter()
    warm = jaxphot.forced_photometry(images[:1], cat, psf, gain=1.0)  # compiles every bucket shape
    first = time.perf_counter() - t0
    del warm
    t0 = time.perf_counter()
    tab = jaxphot.forced_photometry(images, cat, psf, gain=1.0)
    wall = time.perf_counter() - t0
    f = np.asarray(tab["flux"]).reshape(n, t)
    e = np.asarray(tab["flux_err"]).reshape(n, t)
    pull = (f - flux[:, None]) / e
    ok = np.isfinite(pull)
    rate = n * t / wall
    pstd, pmean = float(np.std(pull[ok])), float(np.mean(pull[ok]))
    pmad = 1.4826 * float(np.median(np.abs(pull[ok] - np.median(pull[ok]))))
    far = float(np.mean(np.abs(pull[ok]) > 5))
    peer = run_photutils(images[0], x, y, flux, 3.0, min(a.peer_stars, n))
    rows = [{"code": "jaxphot.forced_photometry", "star_epochs": n * t, "wall_s": wall,
             "star_epochs_per_s": rate, "pull_std": pstd, "pull_mean": pmean}]
    if peer:
        rows.append({"code": "photutils PSFPhotometry (x_0, y_0 fixed)", "star_epochs": min(a.peer_stars, n),
                     "wall_s": peer["wall_s"], "star_epochs_per_s": peer["rate"]})
    print_table(rows, ["code", "star_epochs", "wall_s", "star_epochs_per_s", "pull_mean", "pull_std"])
    emit_json({"bench": "forced", "stars": n, "epochs": t, "image_side": images.shape[1],
               "star_epochs_per_s": rate, "wall_s": wall, "first_call_s": first,
               "pull_std": pstd, "pull_mean": pmean, "pull_mad_std": pmad, "pull_beyond_5": far,
               "finite_fraction": float(ok.mean()),
               "peer_star_epochs_per_s": peer["rate"] if peer else None,
               "speedup_vs_photutils": rate / peer["rate"] if peer else None,
               "peak_rss_gb": peak_rss_gb()})


if __name__ == "__main__":
    main()
