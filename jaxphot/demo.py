"""Simulated crowded star clusters with known truth, and the ``jaxphot demo`` run.

:func:`simulate_cluster` makes a field of stars (a Plummer-profile cluster on a uniform field
population) with a power-law luminosity function down to a chosen S/N, on a flat sky with
Poisson and read noise. :func:`match_to_truth` and :func:`score` compare a catalog with the
truth (completeness, false detections, flux pulls) for tests, benchmarks and the demo.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
from astropy.stats import biweight_scale, mad_std
from astropy.table import Table

from .psf import GaussianPRF
from .simulate import add_noise

__all__ = [
    "SimulatedField",
    "simulate_cluster",
    "match_to_truth",
    "score",
    "run_demo",
    "prf_sharpness",
]


@dataclasses.dataclass
class SimulatedField:
    """A simulated image and its truth.

    Attributes
    ----------
    image : (H, W) ndarray
        Noisy image in ADU.
    expected : (H, W) ndarray
        Noiseless image (sky + stars) in ADU.
    truth : Table
        ``x, y`` (0-based pixels), ``flux`` (ADU, total), ``snr`` (expected S/N of an isolated
        PSF fit), ``mag`` (-2.5 log10 flux).
    sky, gain, read_noise : float
        Sky (ADU per pixel), gain (e-/ADU), read noise (e-).
    psf : PSF model
    """

    image: np.ndarray
    expected: np.ndarray
    truth: Table
    sky: float
    gain: float
    read_noise: float
    psf: object


def prf_sharpness(psf, n: int = 41) -> float:
    """Sharpness sum(PRF^2) of a star centred on a pixel (DESIGN: beta = 1/sharpness)."""
    c = (n - 1) / 2.0
    p = np.asarray(psf.evaluate(c, c, (n, n)), float)
    return float(np.sum(p * p))


def _snr(flux_e, beta, sky_e, rn):
    """Expected S/N of an isolated PSF fit: F / sqrt(F + beta (B + RON^2)), electrons."""
    return flux_e / np.sqrt(flux_e + beta * (sky_e + rn * rn))


def simulate_cluster(
    shape=(512, 512),
    n_stars: int = 400,
    psf=None,
    *,
    sky: float = 100.0,
    gain: float = 1.0,
    read_noise: float = 5.0,
    snr_min: float = 3.0,
    flux_ratio: float = 3000.0,
    slope: float = 1.6,
    cluster_fraction: float = 0.6,
    core_radius: float | None = None,
    margin: float = 0.0,
    seed: int | None = 0,
) -> SimulatedField:
    """Simulate a crowded star cluster.

    Parameters
    ----------
    shape : (H, W)
        Image shape in pixels.
    n_stars : int
        Number of stars.
    psf : PSF model, optional
        Default ``GaussianPRF(3.0)``.
    sky : float
        Sky level in electrons per pixel.
    gain, read_noise : float
        e-/ADU and e- (the image is in ADU).
    snr_min : float
        The faintest star has this expected S/N (isolated PSF fit).
    flux_ratio : float
        Brightest/faintest flux ratio of the luminosity function.
    slope : float
        Power-law index of the luminosity function, dN/dF ∝ F^-slope (> 1: faint stars
        dominate).
    cluster_fraction : float
        Fraction of stars in the Plummer cluster; the rest are uniform.
    core_radius : float, optional
        Plummer radius in pixels; default ``min(shape) / 6``.
    margin : float
        Keep star centres this many pixels inside the edges.
    seed : int
        Random seed.

    Returns
    -------
    SimulatedField
    """
    rng = np.random.default_rng(seed)
    psf = GaussianPRF(3.0) if psf is None else psf
    h, w = shape
    beta = 1.0 / prf_sharpness(psf)
    b = beta * (sky + read_noise**2)
    s2 = snr_min**2
    f_min = 0.5 * (s2 + math.sqrt(s2 * s2 + 4 * s2 * b))  # electrons at S/N = snr_min
    # Power law between f_min and f_min * flux_ratio (inverse-CDF sampling).
    u = rng.uniform(size=n_stars)
    a = 1.0 - slope
    lo, hi = f_min**a, (f_min * flux_ratio) ** a
    flux_e = (lo + u * (hi - lo)) ** (1.0 / a)
    n_cl = int(round(cluster_fraction * n_stars))
    rc = min(shape) / 6.0 if core_radius is None else float(core_radius)
    xs, ys = [], []
    need_cl, need_f = n_cl, n_stars - n_cl
    while need_cl > 0:  # Plummer radii, rejected outside the image
        q = rng.uniform(size=2 * need_cl + 10)
        r = rc / np.sqrt(q ** (-2.0 / 3.0) - 1.0)
        t = rng.uniform(0, 2 * np.pi, r.size)
        x = (w - 1) / 2 + r * np.cos(t)
        y = (h - 1) / 2 + r * np.sin(t)
        ok = (
            (x >= margin - 0.5)
            & (x <= w - 0.5 - margin)
            & (y >= margin - 0.5)
            & (y <= h - 0.5 - margin)
        )
        xs.append(x[ok][:need_cl])
        ys.append(y[ok][:need_cl])
        need_cl -= len(xs[-1])
    xs.append(rng.uniform(margin - 0.5, w - 0.5 - margin, need_f))
    ys.append(rng.uniform(margin - 0.5, h - 0.5 - margin, need_f))
    x, y = np.concatenate(xs), np.concatenate(ys)
    from .photometry import _scatter_stamps, _stamps, _support_half, psf_fwhm

    half = _support_half(psf, psf_fwhm(psf))
    st, x0, y0 = _stamps(psf, x, y, flux_e / gain, half)
    stars = _scatter_stamps(shape, st, x0, y0)
    expected = stars + sky / gain
    image = add_noise(expected, read_noise, gain, rng)
    t = Table()
    t["x"], t["y"] = x, y
    t["flux"] = flux_e / gain
    t["snr"] = _snr(flux_e, beta, sky, read_noise)
    t["mag"] = -2.5 * np.log10(t["flux"])
    return SimulatedField(image, expected, t, sky / gain, gain, read_noise, psf)


def match_to_truth(catalog: Table, truth: Table, radius: float = 1.0, *, use=None):
    """One-to-one match of catalog rows to true stars within ``radius`` pixels.

    Greedy by distance: closest pairs first. ``use`` (bool per catalog row) restricts the
    catalog rows considered. Returns ``(cat_index, truth_index)`` arrays of the matches.
    """
    from scipy.spatial import cKDTree

    cx = np.asarray(catalog["x_fit"], float)
    cy = np.asarray(catalog["y_fit"], float)
    ok = np.isfinite(cx) & np.isfinite(cy)
    if use is not None:
        ok &= np.asarray(use, bool)
    ci = np.nonzero(ok)[0]
    if len(ci) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    tree = cKDTree(np.c_[truth["x"], truth["y"]])
    pairs = tree.query_ball_point(np.c_[cx[ci], cy[ci]], radius)
    a = np.repeat(ci, [len(p) for p in pairs])
    b = np.concatenate([np.asarray(p, int) for p in pairs]) if len(a) else np.zeros(0, int)
    if len(a) == 0:
        return a, b
    d = np.hypot(cx[a] - truth["x"][b], cy[a] - truth["y"][b])
    order = np.argsort(d, kind="stable")
    a, b = a[order], b[order]
    # Greedy one-to-one: keep the first occurrence of each catalog row and each true star.
    used_a = np.zeros(len(catalog), bool)
    used_b = np.zeros(len(truth), bool)
    keep = np.zeros(len(a), bool)
    # A vectorised pass resolves most pairs; the loop only runs over conflicts.
    _, first_a = np.unique(a, return_index=True)
    cand = np.zeros(len(a), bool)
    cand[first_a] = True
    _, first_b = np.unique(b[cand], return_index=True)
    simple = np.nonzero(cand)[0][first_b]
    for i in simple:
        keep[i] = True
        used_a[a[i]] = used_b[b[i]] = True
    for i in np.nonzero(~keep)[0]:
        if not used_a[a[i]] and not used_b[b[i]]:
            keep[i] = True
            used_a[a[i]] = used_b[b[i]] = True
    return a[keep], b[keep]


def _robust_std(v, estimator: str = "mad"):
    """Robust standard deviation of the finite values: 1.4826 MAD, or the biweight midvariance
    (``"biweight"``: 87 % efficient for normal data against 37 %, a 1.5x smaller sampling error)."""
    v = np.asarray(v, float)
    v = v[np.isfinite(v)]
    if not len(v):
        return float("nan")
    return float(mad_std(v) if estimator == "mad" else biweight_scale(v))


def score(
    catalog: Table,
    truth: Table,
    *,
    radius: float = 1.0,
    snr_cut: float = 10.0,
    isolation: float | None = None,
    bad_flags: int | None = None,
) -> dict:
    """Completeness, false detections and flux pulls of a catalog against the truth.

    Parameters
    ----------
    catalog : Table
        Needs ``x_fit, y_fit, flux_fit, flux_err, flags``.
    truth : Table
        ``x, y, flux, snr``.
    radius : float
        Match radius in pixels.
    snr_cut : float
        Completeness and pulls are computed for true stars with ``snr >= snr_cut``.
    isolation : float, optional
        Distance (pixels) to the nearest true star above which a star counts as isolated
        (default 2.5 x the catalog's FWHM from ``meta``, else 7.5).
    bad_flags : int, optional
        Rows with any of these flag bits are not counted as detections (default: MERGED,
        FADED and failed fits).

    Returns
    -------
    dict
        ``n_true_bright, n_found_bright, completeness_bright, n_rows, n_good, n_spurious,
        spurious_fraction, pull_std_isolated, pull_std_blended`` (robust, 1.4826 MAD) with
        their sampling errors ``pull_std_isolated_err, pull_std_blended_err``, the same
        from the biweight midvariance ``pull_biweight_isolated, pull_biweight_blended``,
        ``pull_median, n_isolated, n_blended, pos_rms``.
    """
    from scipy.spatial import cKDTree

    from .photometry import EXCLUDED_FROM_MODEL

    bad = EXCLUDED_FROM_MODEL if bad_flags is None else int(bad_flags)
    good = (np.asarray(catalog["flags"], np.int64) & bad) == 0
    ci, ti = match_to_truth(catalog, truth, radius, use=good)
    bright = np.asarray(truth["snr"]) >= snr_cut
    found = np.zeros(len(truth), bool)
    found[ti] = True
    fwhm = float(catalog.meta.get("fwhm", 3.0))
    iso = 2.5 * fwhm if isolation is None else float(isolation)
    tree = cKDTree(np.c_[truth["x"], truth["y"]])
    dnn = tree.query(np.c_[truth["x"], truth["y"]], k=2)[0][:, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        pull = (np.asarray(catalog["flux_fit"])[ci] - np.asarray(truth["flux"])[ti]) / np.asarray(
            catalog["flux_err"]
        )[ci]
    sel = bright[ti]
    isolated = dnn[ti] > iso
    n_good = int(good.sum())
    n_spur = n_good - len(ci)
    dx = np.asarray(catalog["x_fit"])[ci] - np.asarray(truth["x"])[ti]
    dy = np.asarray(catalog["y_fit"])[ci] - np.asarray(truth["y"])[ti]
    p_iso, p_bl = pull[sel & isolated], pull[sel & ~isolated]
    s_iso, s_bl = _robust_std(p_iso), _robust_std(p_bl)
    return {
        "n_true_bright": int(bright.sum()),
        "n_found_bright": int((found & bright).sum()),
        "completeness_bright": float((found & bright).sum() / max(bright.sum(), 1)),
        "n_true": len(truth),
        "n_found": int(found.sum()),
        "n_rows": len(catalog),
        "n_good": n_good,
        "n_spurious": int(n_spur),
        "spurious_fraction": float(n_spur / max(n_good, 1)),
        "pull_median": float(np.nanmedian(pull[sel])) if sel.any() else float("nan"),
        "pull_std_isolated": s_iso,
        "pull_std_blended": s_bl,
        # Sampling error of a MAD-based sigma from n normal values: 1.166 sigma / sqrt(n).
        "pull_std_isolated_err": 1.166 * s_iso / np.sqrt(max(len(p_iso), 1)),
        "pull_std_blended_err": 1.166 * s_bl / np.sqrt(max(len(p_bl), 1)),
        "pull_biweight_isolated": _robust_std(p_iso, "biweight"),
        "pull_biweight_blended": _robust_std(p_bl, "biweight"),
        "n_isolated": len(p_iso),
        "n_blended": len(p_bl),
        "pos_rms_bright": float(np.sqrt(np.nanmean(dx[sel] ** 2 + dy[sel] ** 2) / 2))
        if sel.any()
        else float("nan"),
    }


def completeness_by_mag(
    catalog: Table, truth: Table, bins, *, radius: float = 1.0, use=None
) -> Table:
    """Completeness and false detections per magnitude bin (true mag; catalog mag for false)."""
    ci, ti = match_to_truth(catalog, truth, radius, use=use)
    found = np.zeros(len(truth), bool)
    found[ti] = True
    use = np.ones(len(catalog), bool) if use is None else np.asarray(use, bool)
    matched = np.zeros(len(catalog), bool)
    matched[ci] = True
    spur = use & ~matched
    cmag = (
        np.asarray(catalog["mag"], float)
        if "mag" in catalog.colnames
        else -2.5 * np.log10(np.asarray(catalog["flux_fit"], float))
    )
    t = Table()
    t["mag_lo"] = bins[:-1]
    t["mag_hi"] = bins[1:]
    tm = np.asarray(truth["mag"])
    idx = np.digitize(tm, bins) - 1
    sidx = np.digitize(cmag, bins) - 1
    nb = len(bins) - 1
    t["n_true"] = np.bincount(idx[(idx >= 0) & (idx < nb)], minlength=nb)
    t["n_found"] = np.bincount(idx[found & (idx >= 0) & (idx < nb)], minlength=nb)
    with np.errstate(invalid="ignore", divide="ignore"):
        t["completeness"] = t["n_found"] / t["n_true"]
    t["n_false"] = np.bincount(sidx[spur & (sidx >= 0) & (sidx < nb)], minlength=nb)
    return t


def run_demo(
    outdir=None,
    *,
    shape=(512, 512),
    n_stars: int = 400,
    seed: int = 0,
    png: bool = True,
    quiet: bool = False,
) -> dict:
    """The whole pipeline on a simulated crowded cluster: no files needed, no network.

    Simulates the field, runs :func:`jaxphot.photometry`, prints completeness and accuracy
    against the truth, writes the catalog (ECSV) and a diagnostic PNG (image, model,
    residual; skipped with a note when matplotlib is missing) to ``outdir`` (default:
    ``./jaxphot_demo``). Returns the scores and the paths.
    """
    from .io import write_catalog
    from .photometry import photometry

    say = (lambda *a: None) if quiet else print
    outdir = Path(outdir or "jaxphot_demo")
    outdir.mkdir(parents=True, exist_ok=True)
    psf = GaussianPRF(3.0)
    t0 = time.perf_counter()
    field = simulate_cluster(shape, n_stars, psf, seed=seed)
    say(
        f"simulated a {shape[0]}x{shape[1]} cluster field: {n_stars} stars, Gaussian PSF "
        f"FWHM 3 px, sky {field.sky:g} e-/px, read noise {field.read_noise:g} e-, faintest "
        f"S/N 3"
    )
    t1 = time.perf_counter()
    res = photometry(
        field.image, psf, gain=field.gain, read_noise=field.read_noise, return_images=True
    )
    t2 = time.perf_counter()
    cat = res.table
    s = score(cat, field.truth)
    say(
        f"photometry: {len(cat)} rows ({s['n_good']} kept, {len(cat) - s['n_good']} "
        f"flagged merged/faded/failed) in {t2 - t1:.1f} s, "
        f"{cat.meta['n_iterations']} iterations"
    )
    say(
        f"completeness above S/N 10: {s['n_found_bright']}/{s['n_true_bright']} "
        f"= {100 * s['completeness_bright']:.1f} %;  all stars: {s['n_found']}/{s['n_true']}"
    )
    say(
        f"false detections: {s['n_spurious']} of {s['n_good']} kept rows "
        f"({100 * s['spurious_fraction']:.2f} %)"
    )
    say(
        f"flux pulls (S/N>10): robust std {s['pull_std_isolated']:.2f} isolated "
        f"(n={s['n_isolated']}), {s['pull_std_blended']:.2f} blended (n={s['n_blended']}); "
        f"median {s['pull_median']:+.2f};  position rms {s['pos_rms_bright']:.3f} px"
    )
    cat_path = write_catalog(cat, outdir / "demo_catalog.ecsv")
    say(f"catalog: {cat_path}")
    png_path = None
    if png:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            say("matplotlib is not installed: no diagnostic PNG (pip install matplotlib)")
        else:
            png_path = outdir / "demo_diagnostic.png"
            fig, ax = plt.subplots(1, 3, figsize=(15, 5.2), sharex=True, sharey=True)
            sky, noise = (
                field.sky,
                math.sqrt(field.sky / field.gain + (field.read_noise / field.gain) ** 2),
            )
            lo, hi = sky - 3 * noise, sky + 30 * noise
            ax[0].imshow(field.image, origin="lower", cmap="gray_r", vmin=lo, vmax=hi)
            ax[0].set_title("image")
            ax[1].imshow(
                res.model + res.background, origin="lower", cmap="gray_r", vmin=lo, vmax=hi
            )
            ax[1].set_title("model (stars + sky)")
            ax[2].imshow(
                res.residual, origin="lower", cmap="RdBu_r", vmin=-5 * noise, vmax=5 * noise
            )
            ax[2].set_title("residual (±5σ)")
            fig.tight_layout()
            fig.savefig(png_path, dpi=90)
            plt.close(fig)
            say(f"diagnostic PNG: {png_path}")
    say(f"total {time.perf_counter() - t0:.1f} s")
    return {
        "score": s,
        "catalog": str(cat_path),
        "png": str(png_path) if png_path else None,
        "seconds": t2 - t1,
    }
