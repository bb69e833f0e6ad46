"""The golden field: one fixed simulated field through the four main entry points.

``tests/test_golden.py`` checks that the package still gives these catalogues row for row;
``python tests/golden.py`` rewrites ``tests/data/golden_*.ecsv`` (only after a deliberate change
of results). Only top-level public names are used, so the recipe survives refactors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import jaxphot

DATA = Path(__file__).parent / "data"
NAMES = ("fit_cutouts", "photometry", "aperture", "epsf")
# Columns compared to 1e-6 relative (positions and fluxes) and exactly (flags, ids).
FLOAT_COLUMNS = {
    "fit_cutouts": ("x_fit", "y_fit", "flux_fit", "x_err", "y_err", "flux_err"),
    "photometry": ("x_fit", "y_fit", "flux_fit", "x_err", "y_err", "flux_err"),
    "aperture": ("aperture_sum", "sky", "flux", "flux_err"),
    "epsf": ("psf",),
}
EXACT_COLUMNS = {
    "fit_cutouts": ("flags",),
    "photometry": ("id", "group_id", "iter_detected", "flags"),
    "aperture": ("flags",),
    "epsf": (),
}


def field():
    """A 160x160 px crowded field, 220 Gaussian stars of FWHM 2.5 px, seed 3."""
    return jaxphot.simulate_cluster((160, 160), 220, jaxphot.GaussianPRF(2.5), sky=50.0,
                                    gain=2.0, read_noise=4.0, seed=3)


def catalogues() -> dict:
    """The four golden tables, computed by the installed package."""
    from astropy.table import Table

    out = {}
    psf = jaxphot.GaussianPRF(2.5)
    sim = jaxphot.simulate_cutouts(psf, 300, (11, 11), flux=(200, 2e4), sky=20.0,
                                   read_noise=3.0, seed=7)
    res = jaxphot.fit_cutouts(sim.data, psf, sim.x, sim.y, gain=1.0, read_noise=3.0)
    out["fit_cutouts"] = res.to_table()

    f = field()
    out["photometry"] = jaxphot.photometry(f.image, psf, gain=f.gain, read_noise=f.read_noise)

    pos = np.c_[f.truth["x"], f.truth["y"]][:80]
    out["aperture"] = jaxphot.aperture_photometry(f.image, pos, 3.0, r_in=6.0, r_out=9.0,
                                                  gain=f.gain, read_noise=f.read_noise)

    bright = np.argsort(-np.asarray(f.truth["flux"]))[:40]
    epsf = jaxphot.build_epsf(f.image - f.sky, np.c_[f.truth["x"], f.truth["y"]][bright],
                              oversampling=2, shape=9, maxiters=5)
    out["epsf"] = Table({"psf": np.asarray(epsf.coeffs, float).ravel()})
    return out


def write() -> None:
    import jax

    for name, table in catalogues().items():
        keep = [c for c in FLOAT_COLUMNS[name] + EXACT_COLUMNS[name] if c in table.colnames]
        t = table[keep]
        t.meta = {"jax": jax.__version__, "numpy": np.__version__}
        t.write(DATA / f"golden_{name}.ecsv", overwrite=True)


if __name__ == "__main__":
    write()
