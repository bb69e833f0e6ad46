"""Chapter 6.7.7: match optical galaxy clusters to X-ray clusters on the sky.

Simulates an optical cluster catalogue and an X-ray catalogue that share a known
set of true pairs (X-ray positions scattered by ~10 arcsec, as for survey
positional errors) plus unrelated sources in each, then keeps mutual best matches
within 1 arcmin with :func:`jaxphot.crossmatch` (``mode="best"``). No files, no
network. ``run()`` returns the matched pairs and the true pairs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.table import Table

import jaxphot

sys.path.insert(0, str(Path(__file__).parent))
from _common import parse_args, save_figure  # noqa: E402


def _sky(rng, n, ra0=150.0, dec0=2.0, half=1.0):
    """Uniform positions (deg) in a ``2*half``-degree box around (ra0, dec0)."""
    dec = dec0 + rng.uniform(-half, half, n)
    ra = ra0 + rng.uniform(-half, half, n) / np.cos(np.radians(dec0))
    return ra, dec


def run(seed: int = 0, small: bool = False, outdir=None) -> dict:
    """Simulate both catalogues, cross-match them and compare with the true pairs.

    Returns
    -------
    dict with ``true_pairs`` and ``found_pairs`` (sets of (optical row, X-ray row)),
    ``n_true``, ``n_found``, ``n_false``, ``n_missed``, ``sep_arcsec`` (found pairs),
    and ``png`` (path or None).
    """
    rng = np.random.default_rng(seed)
    n_pair, n_opt_only, n_x_only = (15, 20, 10) if small else (120, 200, 80)
    # 0.8 optical clusters per square degree (redMaPPer-like surveys find ~2 deg^-2); chance
    # pairs within 1 arcmin number n_opt * n_xray * pi (1 arcmin)^2 / area, ~0.04 here, and at
    # the 80 deg^-2 of a 2-degree box ~3.5 of them would be expected
    area = (n_pair + n_opt_only) / 0.8  # deg^2
    half = 0.5 * np.sqrt(area)
    ra_p, dec_p = _sky(rng, n_pair, half=half)
    scatter = 10.0 / 3600.0  # deg, per axis
    ra_oo, dec_oo = _sky(rng, n_opt_only, half=half)
    ra_o, dec_o = np.r_[ra_p, ra_oo], np.r_[dec_p, dec_oo]
    dra = rng.normal(0, scatter, n_pair) / np.cos(np.radians(dec_p))
    ra_x_extra, dec_x_extra = _sky(rng, n_x_only, half=half)
    ra_x = np.r_[ra_p + dra, ra_x_extra]
    dec_x = np.r_[dec_p + rng.normal(0, scatter, n_pair), dec_x_extra]
    # shuffle the X-ray rows so row order carries no information
    perm = rng.permutation(len(ra_x))
    opt = Table({"ra": ra_o, "dec": dec_o})
    xray = Table({"ra": ra_x[perm], "dec": dec_x[perm]})
    inv = np.argsort(perm)
    true_pairs = {(i, int(inv[i])) for i in range(n_pair)}

    m = jaxphot.crossmatch(opt, xray, 1 * u.arcmin, mode="best")
    found = {(int(a), int(b)) for a, b in zip(m["idx1"], m["idx2"], strict=True)}
    out = {"true_pairs": true_pairs, "found_pairs": found, "n_true": len(true_pairs), "n_found": len(found),
           "n_false": len(found - true_pairs), "n_missed": len(true_pairs - found),
           "sep_arcsec": np.asarray(m["sep"], dtype=float), "png": None,
           "n_chance_expected": len(opt) * len(xray) * np.pi * (1 / 60) ** 2 / area}
    if outdir is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 5))
        ax.plot(opt["ra"], opt["dec"], "o", mfc="none", label="optical")
        ax.plot(xray["ra"], xray["dec"], "x", label="X-ray")
        for a, b in found:
            ax.plot([opt["ra"][a], xray["ra"][b]], [opt["dec"][a], xray["dec"][b]], "k-", lw=1)
        ax.set(xlabel="RA [deg]", ylabel="Dec [deg]", title="mutual best matches < 1 arcmin")
        ax.legend()
        out["png"] = save_figure(fig, outdir, "ch6_7_xray_clusters.png")
    return out


def main() -> None:
    args = parse_args(__doc__)
    r = run(small=args.small, outdir=args.outdir)
    print(f"true pairs {r['n_true']}, found {r['n_found']}, false {r['n_false']}, missed {r['n_missed']}, "
          f"median sep {np.median(r['sep_arcsec']):.1f} arcsec (chance pairs expected "
          f"{r['n_chance_expected']:.2f}) -> {r['png']}")


if __name__ == "__main__":
    main()
