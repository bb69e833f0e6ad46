"""Chapter 6.7.3: PSF photometry in a crowded globular cluster, scored against the truth.

Simulates a crowded cluster as the chapter does (Gaussian PRF of sigma 1.8 px, a centrally
concentrated population with more faint stars than bright, a sky of 80 and read noise) with
:func:`jaxphot.simulate_cluster`, runs the iterative find-group-fit-subtract photometry
(:func:`jaxphot.photometry`, the equivalent of ``IterativelySubtractedPSFPhotometry``) and scores
the catalogue as ``jaxphot demo`` does (:func:`jaxphot.sim.score`): completeness above S/N 10,
false detections and the flux pulls ``(flux_fit - flux_true) / flux_err`` of isolated and blended
stars. No files, no network. ``run()`` returns the scores.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import jaxphot
from jaxphot.sim import score

sys.path.insert(0, str(Path(__file__).parent))
from _common import parse_args, save_figure  # noqa: E402

SIGMA_PSF = 1.8  # px, as in the chapter


def run(small: bool = False, outdir=None, seed: int = 0) -> dict:
    """Simulate, fit and score; returns the :func:`jaxphot.sim.score` dict plus ``png``."""
    psf = jaxphot.GaussianPRF(2.3548 * SIGMA_PSF)
    shape, n_stars = ((128, 128), 60) if small else ((256, 256), 300)
    field = jaxphot.simulate_cluster(shape, n_stars, psf, sky=80.0, read_noise=4.0,
                                     seed=seed)  # fmt: skip
    res = jaxphot.photometry(field.image, psf, gain=field.gain, read_noise=field.read_noise,
                             background_box=32, return_images=True)  # fmt: skip
    out = dict(score(res.table, field.truth, radius=1.5))
    out["png"] = None
    if outdir is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        noise = np.sqrt(field.sky / field.gain + (field.read_noise / field.gain) ** 2)
        fig, ax = plt.subplots(1, 2, figsize=(9, 4.5), sharex=True, sharey=True)
        ax[0].imshow(field.image, origin="lower", cmap="gray_r", vmin=field.sky - 3 * noise,
                     vmax=field.sky + 30 * noise)  # fmt: skip
        ax[0].plot(res.table["x_fit"], res.table["y_fit"], "r+", ms=4)
        ax[0].set_title(f"{out['n_good']} stars fitted")
        ax[1].imshow(res.residual, origin="lower", cmap="RdBu_r", vmin=-5 * noise, vmax=5 * noise)
        ax[1].set_title("residual (±5σ)")
        out["png"] = save_figure(fig, outdir, "ch6_3_globular_cluster.png")
    return out


def main() -> None:
    args = parse_args(__doc__)
    s = run(small=args.small, outdir=args.outdir)
    print(f"completeness above S/N 10: {s['n_found_bright']}/{s['n_true_bright']} "
          f"= {100 * s['completeness_bright']:.1f} %; false detections {s['n_spurious']} "
          f"of {s['n_good']}")
    print(f"flux pulls (S/N > 10): robust std {s['pull_std_isolated']:.2f} isolated "
          f"(n={s['n_isolated']}), {s['pull_std_blended']:.2f} blended (n={s['n_blended']}), "
          f"median {s['pull_median']:+.2f}; position rms {s['pos_rms_bright']:.3f} px")
    print(s["png"])


if __name__ == "__main__":
    main()
