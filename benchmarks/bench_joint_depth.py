"""What N exposures buy: completeness and errors of joint photometry against N (issue 17 item 2).

N = 1, 4, 16, 64 registered-with-offsets exposures of one field (Gaussian PRF FWHM 3 px, sky
100 e-, Poisson, shifts up to +-0.5 px and rotations up to 0.1 deg with known transforms). The
stars' fluxes are drawn log-uniform in their *per-exposure* S/N, 1.5 to 60, where

    S/N = F / sqrt(F + 4 pi sigma^2 sky)

(the PSF-fit S/N of an isolated star on a flat sky; 4 pi sigma^2 is a Gaussian's noise area).
Two ways, in the same run:

* **single**: ``jaxphot.photometry`` on each exposure alone (its own detection), scored per
  exposure and averaged over at most 4 exposures;
* **joint**: ``jaxphot.joint_photometry(images, None, ...)``: detection on the inverse-variance
  stack of the N exposures, one residual pass on the stacked residuals, shared positions.

Both detect at the same matched-filter threshold (4.5 sigma). A true star counts as found when
a row lies within 1 px and its magnitude is within 0.75 mag (the AST rule). Reported per S/N
bin: completeness of each; for isolated stars of per-exposure S/N >= 10 (no true neighbour within
10 px) the position scatter and error against N (the 1/sqrt(N) law) and the position and flux
pulls (MAD-std; for the flux also the std of the pulls within ±5).

Run: ``python benchmarks/bench_joint_depth.py --quick`` (N = 1, 4, 16; one seed) or without
``--quick`` (N = 1, 4, 16, 64; three seeds). Human table, then one JSON line.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import emit_json, print_table
from astropy.table import Table
from scipy.spatial import cKDTree

import jaxphot
from jaxphot.image.render import render_image

SKY = 100.0
FWHM = 3.0
SNR_EDGES = np.array([1.5, 2.0, 3.0, 4.0, 5.0, 7.0, 10.0, 20.0, 60.0])
THRESHOLD = 4.5


def noise_area(fwhm: float = FWHM) -> float:
    """4 pi sigma^2 (px^2): the effective number of sky pixels of a Gaussian PSF fit."""
    return 4.0 * np.pi * (fwhm / 2.3548) ** 2


def flux_for_snr(snr):
    """Flux (e-) of a star with PSF-fit S/N ``snr`` on the sky: F^2 = snr^2 (F + A sky)."""
    s2 = np.asarray(snr, float) ** 2
    return 0.5 * (s2 + np.sqrt(s2**2 + 4.0 * s2 * noise_area() * SKY))


def simulate(side, n_stars, n_exp, seed):
    """The field's truth and N exposures with their (2, 3) affine transforms."""
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(8, side - 9, n_stars), rng.uniform(8, side - 9, n_stars)
    snr = np.exp(rng.uniform(np.log(SNR_EDGES[0]), np.log(SNR_EDGES[-1]), n_stars))
    flux = flux_for_snr(snr)
    psf = jaxphot.GaussianPRF(FWHM)
    images, transforms = [], []
    for t in range(n_exp):
        a = np.radians(rng.uniform(-0.1, 0.1)) if t else 0.0
        dx, dy = rng.uniform(-0.5, 0.5, 2) if t else (0.0, 0.0)
        m = np.array([[np.cos(a), -np.sin(a), dx], [np.sin(a), np.cos(a), dy]])
        xt, yt = m[:, :2] @ np.vstack([x, y]) + m[:, 2:]
        images.append(rng.poisson(SKY + render_image(psf, xt, yt, flux, (side, side))).astype(float))
        transforms.append(m)
    return Table({"x": x, "y": y, "flux": flux, "snr": snr}), images, transforms, psf


def found_mask(truth, x, y, flux, radius=1.0):
    """(n_true,) bool: a row within ``radius`` px whose magnitude is within 0.75 mag."""
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        return np.zeros(len(truth), bool), np.full(len(truth), -1)
    idx = np.nonzero(ok)[0]
    d, k = cKDTree(np.c_[x[ok], y[ok]]).query(np.c_[truth["x"], truth["y"]])
    row = np.where(d < radius, idx[np.minimum(k, len(idx) - 1)], -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        dmag = np.abs(2.5 * np.log10(np.where(row >= 0, flux[row], np.nan) / truth["flux"]))
    hit = (row >= 0) & (dmag < 0.75)
    return hit, np.where(hit, row, -1)


def mad_std(v) -> float:
    v = np.asarray(v, float)
    v = v[np.isfinite(v)]
    return float(1.4826 * np.median(np.abs(v - np.median(v)))) if len(v) else float("nan")


def _clipped_std(v, clip: float = 5.0) -> float:
    """Standard deviation of the finite values within ``clip`` of zero (a lost star's pull of
    hundreds would otherwise swamp it)."""
    v = np.asarray(v, float)
    v = v[np.isfinite(v) & (np.abs(v) < clip)]
    return float(np.std(v)) if len(v) else float("nan")


def score_single(truth, images, psf):
    """Per-bin completeness of photometry() on each of up to 4 exposures alone (summed counts)."""
    hits = np.zeros(len(SNR_EDGES) - 1)
    tot = np.zeros(len(SNR_EDGES) - 1)
    for img in images[:4]:  # exposure 0 is the reference frame; the others are within 0.5 px
        cat = jaxphot.photometry(img, psf, gain=1.0, threshold=THRESHOLD)
        hit, _ = found_mask(truth, np.asarray(cat["x_fit"], float), np.asarray(cat["y_fit"], float),
                            np.asarray(cat["flux_fit"], float), radius=1.5)
        b = np.digitize(truth["snr"], SNR_EDGES) - 1
        hits += np.bincount(b, hit, len(tot))[: len(tot)]
        tot += np.bincount(b, minlength=len(tot))[: len(tot)]
    return hits, tot


def score_joint(truth, images, transforms, psf):
    """Per-bin completeness; isolated bright stars' position scatter, errors and pulls."""
    res = jaxphot.joint_photometry(images, None, psf, wcs=transforms, gain=1.0, threshold=THRESHOLD,
                                   residual_passes=1)
    s = res.stars
    xr, yr = np.asarray(s["x_ref"], float), np.asarray(s["y_ref"], float)
    flux = np.asarray(s["flux_all"], float)
    hit, row = found_mask(truth, xr, yr, flux)
    b = np.digitize(truth["snr"], SNR_EDGES) - 1
    nb = len(SNR_EDGES) - 1
    txy = np.c_[truth["x"], truth["y"]]
    isolated = cKDTree(txy).query(txy, k=2)[0][:, 1] > 10.0  # no true neighbour within 3.3 FWHM
    bright = hit & (truth["snr"] >= 10) & isolated
    r = row[bright]
    dx = xr[r] - truth["x"][bright]
    out = {
        "hits": np.bincount(b, hit, nb)[:nb],
        "tot": np.bincount(b, minlength=nb)[:nb].astype(float),
        "dx": dx,
        "x_err": np.asarray(s["x_err"], float)[r],
        "x_pull": dx / np.asarray(s["x_err"], float)[r],
        "y_pull": (yr[r] - truth["y"][bright]) / np.asarray(s["y_err"], float)[r],
        "flux_pull": (flux[r] - truth["flux"][bright]) / np.asarray(s["flux_err_all"], float)[r],
        "spurious": int(len(s) - np.count_nonzero(hit)),
        "n_rows": len(s),
    }
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N = 1, 4, 16; one seed")
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument("--stars", type=int, default=250)
    ap.add_argument("--seeds", type=int, default=None, help="fields per N (default 3, quick 1)")
    ap.add_argument("--first-seed", type=int, default=0, help="seed of the first field")
    ap.add_argument("--exposures", type=int, nargs="+", default=None, metavar="N",
                    help="the N to run (default 1 4 16 64, quick 1 4 16); shrinks are against "
                    "the smallest")
    a = ap.parse_args(argv)
    ns = (1, 4, 16) if a.quick else (1, 4, 16, 64)
    if a.exposures:
        ns = tuple(sorted(set(a.exposures)))
        if ns[0] < 1:
            ap.error("--exposures must be positive")
    seeds = range(a.first_seed, a.first_seed + (a.seeds or (1 if a.quick else 3)))
    nb = len(SNR_EDGES) - 1
    single_h, single_t = np.zeros(nb), np.zeros(nb)
    joint = {n: {"hits": np.zeros(nb), "tot": np.zeros(nb), "dx": [], "x_err": [], "x_pull": [],
                 "y_pull": [], "flux_pull": [],
                 "spurious": 0, "n_rows": 0, "wall_s": 0.0} for n in ns}
    for seed in seeds:
        truth, images, transforms, psf = simulate(a.side, a.stars, max(ns), seed)
        h, t = score_single(truth, images, psf)
        single_h, single_t = single_h + h, single_t + t
        for n in ns:
            t0 = time.perf_counter()
            r = score_joint(truth, images[:n], transforms[:n], psf)
            j = joint[n]
            j["wall_s"] += time.perf_counter() - t0
            for k in ("hits", "tot", "spurious", "n_rows"):
                j[k] = j[k] + r[k]
            for k in ("dx", "x_err", "x_pull", "y_pull", "flux_pull"):
                j[k].append(r[k])
    rows = []
    for i in range(nb):
        row = {"snr_per_exposure": f"{SNR_EDGES[i]:g}-{SNR_EDGES[i + 1]:g}",
               "n_true": int(single_t[i] / min(4, max(ns))),
               "single": single_h[i] / max(single_t[i], 1)}
        for n in ns:
            row[f"joint N={n}"] = joint[n]["hits"][i] / max(joint[n]["tot"][i], 1)
        rows.append(row)
    print("Completeness against the per-exposure S/N (matched within 1 px, |dmag| < 0.75):")
    print_table(rows, list(rows[0]))
    err_rows = []
    ref = None
    for n in ns:
        j = joint[n]
        cat = {k: np.concatenate(j[k]) for k in ("dx", "x_err", "x_pull", "y_pull", "flux_pull")}
        scatter, err = mad_std(cat["dx"]), float(np.median(cat["x_err"]))
        ref = (scatter, err) if ref is None else ref
        err_rows.append({"N": n, "n_stars": len(cat["dx"]), "x_scatter_px": scatter,
                         "scatter_shrink": ref[0] / scatter, "x_err_median_px": err,
                         "err_shrink": ref[1] / err, "sqrt_N": float(np.sqrt(n)),
                         "x_pull": mad_std(cat["x_pull"]), "y_pull": mad_std(cat["y_pull"]),
                         "flux_pull": mad_std(cat["flux_pull"]),
                         # the std too: these pulls have a flat centre, which makes MAD-std unsteady
                         "flux_pull_std": _clipped_std(cat["flux_pull"]),
                         "spurious_rows": j["spurious"],
                         "rows": j["n_rows"], "wall_s": j["wall_s"]})
    print("Isolated stars, per-exposure S/N >= 10 (MAD-std scatter, median error, pulls), spurious rows:")
    print_table(err_rows, list(err_rows[0]))
    emit_json({"bench": "joint_depth", "side": a.side, "stars": a.stars, "seeds": len(seeds),
               "snr_edges": SNR_EDGES.tolist(), "completeness_single": [r["single"] for r in rows],
               "completeness_joint": {str(n): [r[f"joint N={n}"] for r in rows] for n in ns},
               "errors": err_rows})


if __name__ == "__main__":
    main()
