"""Chapter 6.7.1: sunspots on a limb-darkened solar disc, counted and their areas measured.

Simulates a continuum intensitygram: a disc with linear limb darkening ``I(mu) = I0 (1 - u (1 - mu))``,
dark spots foreshortened by ``mu`` (ellipses, rendered with sub-pixel coverage) and Gaussian noise.
Unlike the chapter, the limb darkening is removed first: ``I(mu)`` is fitted to the disc (linear in
``mu``, sigma-clipped so the spots do not pull it), the image is divided by it, and the spots are
segmented as regions darker than 3σ below unity (:func:`jaxphot.segment` on the inverted image).
A spot's area is the sum of its pixels' darkness over its umbral depth (``(1 - I) / depth``), which
counts partly covered edge pixels by their covered fraction. No files, no network.
``run()`` returns the measured and true areas.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

import jaxphot

sys.path.insert(0, str(Path(__file__).parent))
from _common import parse_args, save_figure  # noqa: E402

I0, U_LIMB, NOISE = 3.0e4, 0.6, 100.0


def _disc_mu(shape, xc, yc, radius):
    """``mu = cos(heliocentric angle)`` per pixel (NaN off the disc), shape ``shape``."""
    yy, xx = np.indices(shape, dtype=float)
    rho2 = ((xx - xc) ** 2 + (yy - yc) ** 2) / radius**2
    return np.sqrt(np.where(rho2 < 1, 1 - rho2, np.nan))


def simulate(seed: int = 0, small: bool = False):
    """Image (n, n) and the true spots: centre (x, y), radius ``rho`` (px), contrast, ``area`` (px²)."""
    rng = np.random.default_rng(seed)
    n = 160 if small else 400
    xc = yc = (n - 1) / 2
    radius = 0.45 * n
    n_spot = 4 if small else 9
    # spot centres on the disc, inside 0.75 R so that mu > 0.66 and the spot stays on the disc
    r = radius * 0.75 * np.sqrt(rng.uniform(0.05, 1, n_spot))
    phi = np.linspace(0, 2 * np.pi, n_spot, endpoint=False) + rng.uniform(0, 0.5, n_spot)
    sx, sy = xc + r * np.cos(phi), yc + r * np.sin(phi)
    rho = rng.uniform(0.03, 0.06, n_spot) * n  # spot radius on the sphere, in pixels at disc centre
    contrast = rng.uniform(0.35, 0.7, n_spot)  # umbra intensity / local photosphere
    mu_s = np.sqrt(1 - (r / radius) ** 2)
    # coverage on a 5x5 sub-pixel grid: each spot is an ellipse, axes rho (along the limb) and
    # rho * mu (radially), which is how a circular spot on the sphere projects
    k = 5
    sub = (np.arange(k) + 0.5) / k - 0.5
    yy, xx = np.indices((n * k, n * k), dtype=float) / k
    yy, xx = yy + sub[0], xx + sub[0]
    darkness = np.zeros((n * k, n * k))
    for x0, y0, p, rs, c, m in zip(sx, sy, phi, rho, contrast, mu_s, strict=True):  # few spots
        dr = (xx - x0) * np.cos(p) + (yy - y0) * np.sin(p)
        dt = -(xx - x0) * np.sin(p) + (yy - y0) * np.cos(p)
        darkness = np.maximum(darkness, (1 - c) * ((dr / (rs * m)) ** 2 + (dt / rs) ** 2 < 1))
    darkness = darkness.reshape(n, k, n, k).mean(axis=(1, 3))
    mu = _disc_mu((n, n), xc, yc, radius)
    phot = np.nan_to_num(I0 * (1 - U_LIMB * (1 - mu)))
    img = phot * (1 - darkness) + rng.normal(0, NOISE, (n, n))
    truth = {"x": sx, "y": sy, "rho": rho, "contrast": contrast, "area": np.pi * rho**2 * mu_s}
    return img, truth


def remove_limb_darkening(img, n_iter: int = 5):
    """Divide by a fitted ``A + B mu`` law; returns (normalised image (NaN off the disc), disc params).

    The disc's centre and radius come from its pixels (above 10 % of the maximum): the centroid
    and ``sqrt(N / pi)``.
    """
    on = img > 0.1 * np.nanmax(img)
    yy, xx = np.nonzero(on)
    xc, yc, radius = xx.mean(), yy.mean(), np.sqrt(on.sum() / np.pi)
    mu = _disc_mu(img.shape, xc, yc, radius)
    fit = np.isfinite(mu) & (mu > 0.2)  # the extreme limb is the least certain part of the law
    design = np.c_[np.ones(fit.sum()), mu[fit]]
    v = img[fit]
    keep = np.ones(v.size, bool)
    for _ in range(n_iter):  # sigma-clip the spots out of the fit
        coef = np.linalg.lstsq(design[keep], v[keep], rcond=None)[0]
        resid = v - design @ coef
        keep = np.abs(resid) < 3 * 1.4826 * np.median(np.abs(resid[keep]))
    return img / (coef[0] + coef[1] * mu), (xc, yc, radius, coef)


def measure(img, nsigma: float = 3.0, npixels: int = 10):
    """Segments of the dark spots and their areas (px²) on the limb-corrected image."""
    norm, disc = remove_limb_darkening(img)
    dark = np.nan_to_num(1 - norm)  # > 0 where darker than the photosphere; 0 off the disc
    ondisc = np.isfinite(norm)
    rms_rel = 1.4826 * np.median(np.abs(dark[ondisc] - np.median(dark[ondisc])))
    labels = jaxphot.segment(dark, nsigma * rms_rel, npixels=npixels, mask=~ondisc)
    ids = np.arange(1, labels.max() + 1)
    # umbral depth: the median darkness of the spot's pixels darker than 90 % of its darkest one
    peak = ndimage.maximum(dark, labels, ids)
    core = labels * (dark > 0.9 * peak[np.maximum(labels, 1) - 1])
    depth = ndimage.median(dark, core, ids)
    # grow each segment by 2 px so that faint edge pixels below the threshold are counted too
    grown = ndimage.grey_dilation(labels, size=5) * (labels == 0) + labels
    area = ndimage.sum(dark, grown, ids) / depth
    yy, xx = np.indices(img.shape, dtype=float)
    w = np.clip(dark, 0, None)
    x = ndimage.sum(w * xx, labels, ids) / ndimage.sum(w, labels, ids)
    y = ndimage.sum(w * yy, labels, ids) / ndimage.sum(w, labels, ids)
    return {"labels": labels, "norm": norm, "disc": disc, "x": x, "y": y, "area": area,
            "depth": depth, "rms_rel": rms_rel}  # fmt: skip


def run(small: bool = False, outdir=None, seed: int = 0) -> dict:
    """Simulate, measure, match each spot to the nearest true one."""
    img, truth = simulate(seed, small)
    m = measure(img)
    d = np.hypot(m["x"][:, None] - truth["x"], m["y"][:, None] - truth["y"])
    nearest = d.argmin(axis=1) if len(m["x"]) else np.zeros(0, int)
    out = {"n_true": len(truth["x"]), "n_found": len(m["x"]), "area": m["area"],
           "area_true": truth["area"][nearest], "offset": d[np.arange(len(nearest)), nearest],
           "depth": m["depth"], "depth_true": 1 - truth["contrast"][nearest], "png": None}  # fmt: skip
    if outdir is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 5))
        ax.imshow(img, origin="lower", cmap="afmhot")
        ax.contour(m["labels"] > 0, levels=[0.5], colors="cyan", linewidths=0.8)
        ax.set(title=f"{out['n_found']} sunspots (limb darkening removed)")
        out["png"] = save_figure(fig, outdir, "ch6_1_sunspots.png")
    return out


def main() -> None:
    args = parse_args(__doc__)
    r = run(small=args.small, outdir=args.outdir)
    print(f"true spots {r['n_true']}, found {r['n_found']}")
    for a, t in zip(r["area"], r["area_true"], strict=True):
        print(f"area {a:8.1f} px^2   true {t:8.1f}   ratio {a / t:.4f}")
    print(r["png"])


if __name__ == "__main__":
    main()
