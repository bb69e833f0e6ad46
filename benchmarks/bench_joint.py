"""Joint (ALLFRAME-style) photometry of T exposures against T single-image runs (issue 17 item 4).

T exposures of one random field (Gaussian PRF, FWHM 3 px, sub-pixel offsets between them,
Poisson noise) are measured two ways in the same run, warm:

* ``jaxphot.photometry`` on each exposure alone (detection, grouping, iterative fits);
* ``jaxphot.joint_photometry`` on all of them, from the first exposure's catalogue (shared
  positions, one flux per exposure).

The target is joint <= 2x the sum of the single runs. The peer is photutils ``PSFPhotometry``
(positions free) on a subset of the first exposure, scaled to the whole list of star-epochs.
Accuracy: the joint position and flux pulls (MAD-std, matched to truth within 1 px; the start
list holds the first exposure's blends and spurious rows, which the std would be all about)
and the shrink of the position scatter against one exposure.

Run: ``python benchmarks/bench_joint.py --quick`` (512^2, 750 stars, 4 exposures) or the
issue's size (default: 1024^2, 3000 stars, 16 exposures). Human table, then one JSON line.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import emit_json, peak_rss_gb, print_table
from astropy.table import Table

import jaxphot
from jaxphot.image.render import render_image
from jaxphot.sim.scoring import match_to_truth

SKY = 50.0


def simulate(side, n, t, fwhm=3.0, seed=0):
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(4, side - 5, n), rng.uniform(4, side - 5, n)
    flux = 10 ** rng.uniform(2.8, 4.5, n)
    psf = jaxphot.GaussianPRF(fwhm)
    shifts = np.r_[[[0.0, 0.0]], rng.uniform(-0.5, 0.5, (t - 1, 2))]
    images = np.stack([rng.poisson(SKY + render_image(psf, x + dx, y + dy, flux, (side, side)))
                       for dx, dy in shifts]).astype(np.float64)
    transforms = [np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]]) for dx, dy in shifts]
    return images, transforms, x, y, flux, psf


def mad_std(v) -> float:
    v = np.asarray(v, float)
    v = v[np.isfinite(v)]
    return float(1.4826 * np.median(np.abs(v - np.median(v))))


def run_photutils(image, x, y, flux, fwhm, n_sub):
    try:
        from photutils.psf import CircularGaussianPRF, PSFPhotometry, SourceGrouper
    except ImportError:
        return None
    model = CircularGaussianPRF(fwhm=fwhm)
    model.fwhm.fixed = True
    init = Table({"x": x[:n_sub], "y": y[:n_sub], "flux": flux[:n_sub]})
    phot = PSFPhotometry(model, (11, 11), grouper=SourceGrouper(min_separation=2 * fwhm))
    t0 = time.perf_counter()
    phot(image - SKY, init_params=init)
    return (time.perf_counter() - t0) / n_sub  # seconds per star


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="512^2, 750 stars, 4 exposures")
    ap.add_argument("--side", type=int, default=1024)
    ap.add_argument("--stars", type=int, default=3000)
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--peer-stars", type=int, default=200)
    a = ap.parse_args()
    side, n, t = (512, 750, 4) if a.quick else (a.side, a.stars, a.epochs)
    images, transforms, x, y, flux, psf = simulate(side, n, t)
    jaxphot.photometry(images[0], psf, gain=1.0)  # warm: compile every shape once
    t0 = time.perf_counter()
    cats = [jaxphot.photometry(img, psf, gain=1.0) for img in images]
    single = time.perf_counter() - t0
    cat0 = cats[0]
    good = np.asarray(cat0["flags"]) == 0
    start = Table({"x": np.asarray(cat0["x_fit"])[good], "y": np.asarray(cat0["y_fit"])[good]})
    jaxphot.joint_photometry(images[:2], start, psf, wcs=transforms[:2], gain=1.0, max_iter=1)
    t0 = time.perf_counter()
    res = jaxphot.joint_photometry(images, start, psf, wcs=transforms, gain=1.0)
    joint = time.perf_counter() - t0
    s = res.stars
    truth = Table({"x": x, "y": y, "flux": flux})
    one = Table({"x_fit": start["x"], "y_fit": start["y"]})
    ci, ti = match_to_truth(Table({"x_fit": s["x_ref"], "y_fit": s["y_ref"]}), truth, 1.0)
    px = (np.asarray(s["x_ref"])[ci] - x[ti]) / np.asarray(s["x_err"])[ci]
    pf = (np.asarray(s["flux_all"])[ci] - flux[ti]) / np.asarray(s["flux_err_all"])[ci]
    c1, t1 = match_to_truth(one, truth, 1.0)
    scatter1 = float(np.std(np.asarray(start["x"])[c1] - x[t1]))
    scatter_j = float(np.std(np.asarray(s["x_ref"])[ci] - x[ti]))
    per_star = run_photutils(images[0], x, y, flux, 3.0, min(a.peer_stars, n))
    peer = per_star * len(start) * t if per_star else None
    rows = [{"code": f"jaxphot.photometry x {t}", "wall_s": single, "x_scatter_px": scatter1},
            {"code": "jaxphot.joint_photometry", "wall_s": joint, "x_scatter_px": scatter_j,
             "x_pull_std": mad_std(px), "flux_pull_std": mad_std(pf)}]
    if peer:
        rows.append({"code": f"photutils PSFPhotometry (scaled, {len(start)} x {t})", "wall_s": peer})
    print_table(rows, ["code", "wall_s", "x_scatter_px", "x_pull_std", "flux_pull_std"])
    print(f"joint / sum of single runs = {joint / single:.2f} (target <= 2); position scatter "
          f"shrinks {scatter1 / scatter_j:.2f}x (sqrt T = {np.sqrt(t):.2f}); "
          f"{len(res.history)} iterations")
    emit_json({"bench": "joint", "side": side, "stars": n, "epochs": t, "n_joint": len(start),
               "single_sum_s": single, "joint_s": joint, "joint_over_single": joint / single,
               "x_pull_mad_std": mad_std(px), "flux_pull_mad_std": mad_std(pf),
               "scatter_shrink": scatter1 / scatter_j, "iterations": len(res.history),
               "peer_scaled_s": peer, "speedup_vs_photutils": peer / joint if peer else None,
               "peak_rss_gb": peak_rss_gb()})


if __name__ == "__main__":
    main()
