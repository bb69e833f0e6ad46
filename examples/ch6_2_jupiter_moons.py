"""Chapter 6.7.2: photometry of the Galilean moons beside a saturated Jupiter.

Simulates Jupiter as a bright disc clipped at a saturation level, four Gaussian
moons of known flux at known positions, a flat sky and Gaussian read noise. The
saturated disc (and a margin around it) is masked and each moon is measured with
:func:`jaxphot.aperture_photometry` in a circular aperture with a local annulus sky.
No files, no network. ``run()`` returns the measured and true moon fluxes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import jaxphot

sys.path.insert(0, str(Path(__file__).parent))
from _common import parse_args, save_figure  # noqa: E402


def run(seed: int = 0, small: bool = False, outdir=None) -> dict:
    """Simulate, mask, measure; return ``flux``, ``flux_err``, ``true_flux`` (4,), ``png``."""
    rng = np.random.default_rng(seed)
    n = 128 if small else 256
    yy, xx = np.mgrid[:n, :n].astype(float)
    c = n / 2 - 0.5
    r_disc, sat, sky, noise, sigma = n / 10, 6.0e4, 100.0, 5.0, 1.5
    jupiter = np.where(np.hypot(xx - c, yy - c) < r_disc, 1e6, 0.0)
    offsets = np.array([-0.38, -0.22, 0.2, 0.4]) * n  # along x, like the moons in the chapter image
    pos = np.c_[c + offsets, c + rng.uniform(-3, 3, 4)]
    true_flux = np.array([4.0e4, 3.2e4, 6.0e4, 5.0e4])
    moons = sum(f / (2 * np.pi * sigma**2) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
                for f, (x, y) in zip(true_flux, pos, strict=True))
    image = np.minimum(jupiter + moons + sky, sat) + rng.normal(0, noise, (n, n))
    mask = np.hypot(xx - c, yy - c) < r_disc + 4  # saturated disc plus a margin for its wings
    r_ap = 4 * sigma
    t = jaxphot.aperture_photometry(image, pos, r_ap, r_in=r_ap + 3, r_out=r_ap + 8, mask=mask,
                                  error=np.full_like(image, noise))
    out = {"flux": np.asarray(t["flux"], float), "flux_err": np.asarray(t["flux_err"], float),
           "true_flux": true_flux, "positions": pos, "png": None}
    if outdir is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4))
        stretched = np.log10(image - image.min() + 1)
        jaxphot.plot_apertures(ax, pos, r=r_ap, r_in=r_ap + 3, r_out=r_ap + 8, image=stretched)
        out["png"] = save_figure(fig, outdir, "ch6_2_jupiter_moons.png")
    return out


def main() -> None:
    args = parse_args(__doc__)
    r = run(small=args.small, outdir=args.outdir)
    for f, e, t in zip(r["flux"], r["flux_err"], r["true_flux"], strict=True):
        print(f"flux {f:10.1f} +- {e:6.1f}   true {t:10.1f}   ratio {f / t:.4f}")
    print(r["png"])


if __name__ == "__main__":
    main()
