"""Gridded (spatially varying) ePSFs: per-region builds against simulated varying truths."""

import warnings

import numpy as np
import pytest
from test_epsf import (
    WFC3_BUILD,
    _core_rms,
    _field,
    _photometry,
    _pulls,
    _truth_samples,
)

from jaxphot.epsf import EPSFWarning, build_epsf_grid
from jaxphot.psf import GriddedPSF, MoffatPSF, read_wfc3_uvis_grid


def _moffat_truth(size, fwhm=(2.0, 3.0), m=15):
    """A 2 x 2 GriddedPSF truth: Moffat FWHM fwhm[0] at (0, 0) -> fwhm[1] at (size-1, size-1)."""
    g = np.array([0.0, size - 1.0])
    arrs = [
        [_truth_samples(MoffatPSF(fwhm[0] + (fwhm[1] - fwhm[0]) * (i + j) / 2, 4.0), m)[0]
         for i in range(2)]
        for j in range(2)
    ]
    return GriddedPSF(np.array(arrs), g, g, 4)


def test_gridded_epsf_follows_the_truth_per_region():
    """2 x 2 regions of 40 stars, Moffat FWHM 2.0 -> 2.4 px: each node matches the truth there."""
    truth = _moffat_truth(800, fwhm=(2.0, 2.4), m=21)
    img, pts, f = _field(truth, 160, shape=(800, 800), seed=3, sep=24)
    start = pts + np.random.default_rng(5).normal(0, 0.1, pts.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EPSFWarning)  # stars at the edge
        psf, st = build_epsf_grid(
            img, start, grid=(2, 2), min_region_stars=30, shape=15, gain=1.0, return_stars=True
        )
    assert isinstance(psf, GriddedPSF) and st.meta["grid"] == (2, 2)
    assert psf.norm == 1.0 and np.all(st.meta["nstars"] >= 30)
    # nodes at the regions' star-weighted centres, one region per quadrant
    assert 100 < psf.grid_x[0] < 300 and 500 < psf.grid_x[1] < 700
    assert 100 < psf.grid_y[0] < 300 and 500 < psf.grid_y[1] < 700
    assert set(np.asarray(st["region"])) == {0, 1, 2, 3}
    for x in psf.grid_x:
        for y in psf.grid_y:
            tv, r = _truth_samples(truth.psf_at(x, y), 15)
            # measured 0.43-0.95 %: a region's ePSF averages its stars' PSFs (FWHM +-0.05 px)
            assert _core_rms(psf.psf_at(x, y), tv, r, 3.0) < 0.012, (x, y)
    # a single constant ePSF would not do: the opposite node is off by 4.2 %
    tv, r = _truth_samples(truth.psf_at(psf.grid_x[1], psf.grid_y[1]), 15)
    assert _core_rms(psf.psf_at(psf.grid_x[0], psf.grid_y[0]), tv, r, 3.0) > 0.03


def test_grid_lowered_when_regions_lack_stars():
    truth = MoffatPSF(2.0, 4.0)
    img, pts, f = _field(truth, 30, shape=(400, 400), seed=6, sep=30)
    # all stars in the left half but one: a 1 x 2 grid would leave a region with 1 star
    left = pts[pts[:, 0] < 200]
    sel = np.vstack([left, pts[pts[:, 0] >= 200][:1]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EPSFWarning)
        with pytest.warns(EPSFWarning, match="grid lowered from 1x2 to 1x1"):
            psf, st = build_epsf_grid(
                img, sel, grid=(1, 2), min_region_stars=5, shape=11, maxiters=2, return_stars=True
            )
    assert st.meta["grid"] == (1, 1) and psf.coeffs.shape[:2] == (1, 1)
    with pytest.raises(ValueError, match="degree must be 0"):
        build_epsf_grid(img, pts, degree=2)
    with pytest.raises(ValueError, match="grid must be"):
        build_epsf_grid(img, pts, grid=(0, 2))


_WFC3_SIZE = 4096


def _wfc3_grid_build(shared_data, n, sep, grid, **kw):
    """The WFC3/UVIS library grid as the truth over 4096^2 px, n isolated stars, and the
    gridded ePSF built from them. ``sep`` keeps every star >= 18 px inside the image."""
    with pytest.warns(UserWarning, match="corrupt PSFs"):
        truth = read_wfc3_uvis_grid(shared_data("hst_wfc3_psf") / "emp_psf_f814w_4x.npy")
    S = _WFC3_SIZE
    img, pts, _ = _field(truth, n, shape=(S, S), seed=1, sep=sep)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EPSFWarning)
        start = pts + np.random.default_rng(5).normal(0, 0.1, pts.shape)
        psf, st = build_epsf_grid(img, start, grid=grid, **WFC3_BUILD, **kw)
    return truth, psf, st


def _wfc3_core_rms(truth, psf, x, y):
    """Core rms (of peak) of the ePSF at (x, y) against the rim-subtracted truth there."""
    tp, r = _truth_samples(truth.psf_at(x, y), 21, pedestal=True)
    e = psf.psf_at(x, y)
    return _core_rms(e, tp * e.array.sum() / 16, r, 3.0)


def _wfc3_pulls(truth, psf):
    """Pulls and dmag on an independent 2000-star field over the whole detector."""
    S = _WFC3_SIZE
    img2, pts2, f2 = _field(truth, 2000, shape=(S, S), flux=(1e3, 3e4), seed=101, sep=70)
    return _pulls(*_photometry(img2, pts2, psf, size=15), f2)


@pytest.mark.slow
def test_wfc3_varying_gridded_epsf(shared_data):
    """WFC3/UVIS F814W varying as the library grid (6 x 6 valid nodes) over 4096^2 px.

    3600 isolated stars, 6 x 6 regions of 100, each ePSF aperture-corrected from its own stars.
    Measured 2026-11-21 (seeds 1/2; 2000-star evaluation field, flux 1e3-3e4): core rms at the
    36 nodes <= 0.35 %, corners 100 px from the edges 0.25-0.86 %; dmag -0.001/-0.001; pulls
    flux 1.006/1.032, x 1.056/1.055, y 1.025/1.025 (true PSF 0.98-1.01); build 245/293 s.
    Issue 6's 1.00 +- 0.07 holds. The position pulls owe that to the ePSF's origin being its
    core-fit centre: with the first moment as origin they were 1.08-1.09 (x and y), because the
    library PSFs' first moments move by 17 mpx across the field. Coarser regions do worse: 4 x 4
    regions of 100 stars (1600 stars) give x 1.087/1.052, y 1.036/1.046; a degree-2 polynomial
    from 200 stars x 1.09-1.10, flux 1.06-1.07 (the library PSF changes too much across the
    detector for one quadratic).
    """
    truth, psf, st = _wfc3_grid_build(shared_data, 3600, sep=60, grid=(6, 6))
    assert st.meta["grid"] == (6, 6) and np.all(st.meta["nstars"] >= 90)
    assert np.all((1.035 < st.meta["apcor"]) & (st.meta["apcor"] < 1.055))
    assert max(_wfc3_core_rms(truth, psf, x, y) for x in psf.grid_x for y in psf.grid_y) < 0.005
    S = _WFC3_SIZE
    for x, y in [(100, 100), (S - 100, 100), (100, S - 100), (S - 100, S - 100)]:
        assert _wfc3_core_rms(truth, psf, x, y) < 0.012, (x, y)
    got = _wfc3_pulls(truth, psf)
    assert abs(got["dmag"]) < 0.005, got
    for k in ("flux", "x", "y"):
        assert abs(got[k] - 1.0) < 0.07, got


@pytest.mark.slow
def test_wfc3_varying_gridded_epsf_lowpass_prior(shared_data):
    """The same library field on a coarser 4 x 4 grid (1600 stars), with ``prior="lowpass"``.

    Measured 2026-11-21 (seeds 1/2): core rms <= 0.23/0.25 % at the nodes, 0.28-1.19 % at the
    corners; dmag -0.001/0.000; pulls flux 0.994/1.001, x 1.028/1.015, y 1.015/1.009; build
    16/14 s (the Moffat reference: x 1.087/1.052, 76-83 s). On 6 x 6 regions (3600 stars):
    flux 0.992/0.998, x 1.024/1.013, y 1.008/1.002, nodes <= 0.20 %, build 37/34 s.
    """
    truth, psf, st = _wfc3_grid_build(shared_data, 1600, sep=80, grid=(4, 4), prior="lowpass")
    assert st.meta["grid"] == (4, 4)
    assert max(_wfc3_core_rms(truth, psf, x, y) for x in psf.grid_x for y in psf.grid_y) < 0.003
    got = _wfc3_pulls(truth, psf)
    assert abs(got["dmag"]) < 0.005, got
    for k in ("flux", "x", "y"):
        assert abs(got[k] - 1.0) < 0.05, got
