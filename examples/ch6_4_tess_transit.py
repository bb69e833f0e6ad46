"""Chapter 6.7.4: a transit injected into the shared TESS target-pixel file, recovered by aperture photometry.

The stored file has five 2-minute cadences. A longer series is made from its good frames: each
synthetic cadence is one of them (cycled) plus fresh Gaussian noise of the file's ``FLUX_ERR``. The
transit is injected into the target only: the star's image (the median frame less its median sky)
is scaled by ``-depth x`` (the fraction of the cadence spent in a box-shaped transit). The light
curve is one batched :func:`jaxphot.aperture_light_curves` call (r = 2.5 px, annulus 4-6 px, as in
the chapter); depth and mid-time come from a least-squares box fit on a grid of mid-times.
Needs the shared data ($JAXPHOT_DATA or ../shared/data); no network. ``run()`` returns the fit
and the truth.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from astropy.io import fits

import jaxphot
from jaxphot.datasets import find_data_dir

sys.path.insert(0, str(Path(__file__).parent))
from _common import parse_args, save_figure  # noqa: E402

TPF = "tess25155310-s01-first-cadences.fits.gz"


def in_transit_fraction(t, t_mid, duration):
    """Fraction (T,) of each cadence ``[t - 1/2, t + 1/2]`` inside the box ``t_mid ± duration/2``.

    Times in cadences; the fraction is what an integrated exposure sees of a box transit.
    """
    lo = np.maximum(t - 0.5, t_mid - duration / 2)
    hi = np.minimum(t + 0.5, t_mid + duration / 2)
    return np.clip(hi - lo, 0.0, 1.0)


def load_frames(d):
    """Good frames (N, H, W), their FLUX_ERR and the cadence length (days)."""
    with fits.open(Path(d) / TPF) as tpf:
        pix = tpf["PIXELS"].data
        good = np.asarray(pix["QUALITY"]) == 0
        cube = np.asarray(pix["FLUX"], float)[good]
        err = np.asarray(pix["FLUX_ERR"], float)[good]
        dt = float(np.median(np.diff(np.asarray(pix["TIME"]))))
    return cube, err, dt


def inject(cube, err, n_cad, depth, t_mid, duration, rng):
    """Synthetic (n_cad, H, W) series with the transit in the target's light; and its truth frac."""
    med = np.nanmedian(cube, axis=0)
    star = np.clip(np.nan_to_num(med - np.nanmedian(med)), 0, None)  # target light, sky removed
    k = np.arange(n_cad) % len(cube)
    t = np.arange(n_cad, dtype=float)
    frac = in_transit_fraction(t, t_mid, duration)
    series = cube[k] + rng.normal(0.0, 1.0, (n_cad,) + cube.shape[1:]) * err[k]
    series -= (depth * frac)[:, None, None] * star
    return series, star


def fit_box(flux, duration, step: float = 0.02):
    """Least-squares box transit: ``flux = F0 (1 - depth frac(t_mid))`` on a grid of ``t_mid``.

    For each trial mid-time the model is linear in ``F0`` and ``F0 depth``; the best grid point
    gives ``(depth, t_mid, F0)``.
    """
    t = np.arange(flux.size, dtype=float)
    grid = np.arange(duration / 2, flux.size - duration / 2, step)
    frac = in_transit_fraction(t[None, :], grid[:, None], duration)  # (G, T)
    # normal equations of [1, -frac] for every grid point at once
    s1, sf, sff = flux.size, frac.sum(1), (frac**2).sum(1)
    y1, yf = flux.sum(), frac @ flux
    det = s1 * sff - sf**2
    f0 = (sff * y1 - sf * yf) / det
    f0d = (sf * y1 - s1 * yf) / det
    chi2 = ((flux[None, :] - f0[:, None] + f0d[:, None] * frac) ** 2).sum(1)
    i = int(np.argmin(chi2))
    return float(f0d[i] / f0[i]), float(grid[i]), float(f0[i])


def run(small: bool = False, outdir=None, seed: int = 0, data_dir=None) -> dict:
    """Inject, measure and fit; ``depth``/``t_mid`` (cadences) with their truths and ``png``."""
    rng = np.random.default_rng(seed)
    cube, err, dt = load_frames(data_dir or find_data_dir("tess"))
    n_cad = 240 if small else 720
    true = {"depth": 0.01, "t_mid": n_cad / 2 + rng.uniform(-10, 10), "duration": 40.0}
    series, star = inject(cube, err, n_cad, true["depth"], true["t_mid"], true["duration"], rng)
    h, w = star.shape
    yy, xx = np.indices(star.shape)
    centre = [[float((xx * star).sum() / star.sum()), float((yy * star).sum() / star.sum())]]
    lc = jaxphot.aperture_light_curves(series, centre, 2.5, r_in=4.0, r_out=6.0)
    flux = np.asarray(lc["flux"], float)[:, 0]
    depth, t_mid, f0 = fit_box(flux, true["duration"])
    # the injected depth is of the star's total light; the aperture holds a fraction of it and
    # also sky-subtracted neighbours' light, so the truth in this aperture is scaled by
    # (star light in the aperture) / (aperture flux out of transit)
    star_in_ap = float(jaxphot.aperture_light_curves(star[None], centre, 2.5)["flux"][0, 0])
    out = {"depth": depth, "t_mid": t_mid, "depth_true": true["depth"] * star_in_ap / f0,
           "t_mid_true": true["t_mid"], "cadence_days": dt, "flux": flux, "png": None}  # fmt: skip
    if outdir is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 3.5))
        jaxphot.plot_light_curve(ax, np.arange(n_cad), flux / f0)
        t = np.arange(n_cad, dtype=float)
        ax.plot(t, 1 - depth * in_transit_fraction(t, t_mid, true["duration"]), "r-")
        ax.set(xlabel="cadence", ylabel="relative flux",
               title=f"depth {depth:.4f} (true {out['depth_true']:.4f})")  # fmt: skip
        out["png"] = save_figure(fig, outdir, "ch6_4_tess_transit.png")
    return out


def main() -> None:
    args = parse_args(__doc__)
    try:
        d = find_data_dir("tess")
    except FileNotFoundError as exc:  # jaxphot.datasets.DataNotFoundError
        print(f"no TESS data ({exc}); set JAXPHOT_DATA")
        return
    r = run(small=args.small, outdir=args.outdir, data_dir=d)
    print(f"depth {r['depth']:.5f} (true {r['depth_true']:.5f}, ratio {r['depth'] / r['depth_true']:.3f})")
    print(f"mid-time {r['t_mid']:.2f} cadences (true {r['t_mid_true']:.2f}); "
          f"{abs(r['t_mid'] - r['t_mid_true']) * r['cadence_days'] * 1440:.1f} min off")
    print(r["png"])


if __name__ == "__main__":
    main()
