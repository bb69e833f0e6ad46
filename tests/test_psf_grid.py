"""Spatially varying PSFs: batched evaluation, interpolation, the fit_cutouts hook, FITS I/O."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxphot.core.fit import fit_cutouts
from jaxphot.image.render import render_image
from jaxphot.psf import (
    DiscretePSF,
    GriddedPSF,
    MoffatPSF,
    PolynomialPSF,
    PSFGridWarning,
    read_psf_fits,
    read_wfc3_uvis_grid,
    wfc3_uvis_grid_positions,
    write_psf_fits,
)
from jaxphot.sim.cutouts import simulate_cutouts


def _moffat_samples(fwhm, m=15, s=4, beta=4.0):
    """ePSF samples (PRF at pixel offsets) of a Moffat, (s*m+1)^2."""
    n = s * m + 1
    h = m // 2
    yy, xx = np.mgrid[0:n, 0:n] / s - m / 2
    v = MoffatPSF(fwhm, beta).evaluate(
        jnp.asarray(h - xx.ravel()), jnp.asarray(h - yy.ravel()), (m, m)
    )
    return np.asarray(v)[h, h].reshape(n, n)


def test_batched_psf_matches_discrete_and_normalises():
    a, b = _moffat_samples(2.0), _moffat_samples(3.0)
    grid = GriddedPSF(np.stack([a, b]), [0.0, 100.0], [0.0], oversampling=4)
    batch = grid.at(jnp.array([0.0, 100.0, 50.0]), jnp.array([0.0, 0.0, 0.0]))
    x, y = jnp.array([[7.2, 6.9, 7.0]]), jnp.array([[6.8, 7.1, 7.0]])
    out = np.asarray(batch.evaluate(x, y, (15, 15)))
    for col, arr in ((0, a), (1, b)):
        ref = np.asarray(
            DiscretePSF(arr, 4, integrated=True).evaluate(x[0, col], y[0, col], (15, 15))
        )
        np.testing.assert_allclose(out[:, :, 0, col], ref, atol=2e-6)
    # halfway: the renormalised average of the two nodes' samples
    mid = (a / a.sum() + b / b.sum()) / 2
    ref = np.asarray(DiscretePSF(mid, 4, integrated=True).evaluate(7.0, 7.0, (15, 15)))
    np.testing.assert_allclose(out[:, :, 0, 2], ref, atol=2e-6)
    # flux scale is preserved everywhere: the PRF sums to ~1 on a large grid
    assert abs(out[:, :, 0, 2].sum() - 1.0) < 2e-3


def test_polynomial_psf_in_fit_cutouts_recovers_truth():
    """Each cutout is fitted with the PSF at its own position; pulls are unit normal."""
    a, b = _moffat_samples(2.0), _moffat_samples(3.0)
    # linear in u: FWHM-ish interpolation between two shapes (samples normalised to equal sums)
    a, b = a / a.sum() * 16, b / b.sum() * 16
    poly = PolynomialPSF(
        np.stack([(a + b) / 2, (b - a) / 2, 0 * a]), 4, 1, (500.0, 500.0), (500.0, 500.0)
    )
    n = 400
    rng = np.random.default_rng(1)
    gx = rng.uniform(0, 1000, n)
    org = np.stack([gx - 7, np.full(n, 493.0)], 1)
    truth_batch = poly.at(jnp.asarray(gx), jnp.full(n, 500.0))
    xs, ys = 7 + rng.uniform(-0.5, 0.5, n), 7 + rng.uniform(-0.5, 0.5, n)
    flux = np.exp(rng.uniform(np.log(1e3), np.log(1e5), n))
    stamps = np.moveaxis(
        np.asarray(truth_batch.evaluate(jnp.asarray(xs)[None], jnp.asarray(ys)[None], (15, 15)))[
            :, :, 0
        ],
        -1,
        0,
    )
    expected = stamps * flux[:, None, None] + 100.0
    data = rng.poisson(expected).astype(float)
    r = fit_cutouts(
        data,
        poly,
        xs + 0.1,
        ys - 0.1,
        gain=1.0,
        read_noise=0.0,
        origin=org + np.stack([np.zeros(n), np.zeros(n)], 1),
    )
    pull_f = (r.flux_fit[:, 0] - flux) / r.flux_err[:, 0]
    pull_x = (r.x_fit[:, 0] - xs) / r.x_err[:, 0]
    assert abs(np.std(pull_f) - 1) < 0.1 and abs(np.std(pull_x) - 1) < 0.1
    assert abs(np.mean(pull_f)) < 0.2
    with pytest.raises(ValueError, match="origin"):
        fit_cutouts(data[:3], poly, xs[:3], ys[:3])


def test_fits_round_trip(tmp_path):
    a = _moffat_samples(2.0)
    d = DiscretePSF(a, 4, integrated=True)
    write_psf_fits(d, tmp_path / "d.fits")
    d2 = read_psf_fits(tmp_path / "d.fits")
    assert isinstance(d2, DiscretePSF) and d2.oversampling == 4 and d2.integrated
    np.testing.assert_allclose(d2.array, d.array, atol=1e-7)

    poly = PolynomialPSF(np.stack([a, 0.1 * a, -0.05 * a]), 4, 1, (10.0, 20.0), (30.0, 40.0))
    write_psf_fits(poly, tmp_path / "p.fits")
    p2 = read_psf_fits(tmp_path / "p.fits")
    assert isinstance(p2, PolynomialPSF) and p2.degree == 1 and p2.center == (10.0, 20.0)
    np.testing.assert_allclose(p2.arrays, poly.arrays, rtol=1e-5, atol=1e-8)

    # an aperture-corrected PSF (samples summing to norm * s^2) keeps its flux scale
    dn = DiscretePSF(a / a.sum() * 16 * 0.96, 4, integrated=True, normalize=False)
    write_psf_fits(dn, tmp_path / "dn.fits")
    assert abs(read_psf_fits(tmp_path / "dn.fits").array.sum() - 16 * 0.96) < 1e-5
    pn = poly.replace(norm=0.96)
    write_psf_fits(pn, tmp_path / "pn.fits")
    pn2 = read_psf_fits(tmp_path / "pn.fits")
    assert pn2.norm == 0.96
    assert abs(pn2.psf_at(10.0, 20.0).array.sum() - 16 * 0.96) < 1e-4
    assert abs(poly.psf_at(10.0, 20.0).array.sum() - 16) < 1e-4

    b = _moffat_samples(3.0)
    grid = GriddedPSF(np.stack([a, b, b, a]), [0.0, 50.0], [0.0, 80.0], 4)
    write_psf_fits(grid, tmp_path / "g.fits")
    g2 = read_psf_fits(tmp_path / "g.fits")
    assert isinstance(g2, GriddedPSF) and g2.grid_x == (0.0, 50.0) and g2.grid_y == (0.0, 80.0)
    np.testing.assert_allclose(g2.arrays, grid.arrays, rtol=1e-5, atol=1e-8)

    # per-node norms (an aperture-corrected gridded ePSF): interpolated bilinearly, kept by FITS
    norm = np.array([[0.96, 0.95], [0.94, 0.97]])
    gn = GriddedPSF(np.stack([a, b, b, a]), [0.0, 50.0], [0.0, 80.0], 4, norm=norm)
    assert gn.norm == ((0.96, 0.95), (0.94, 0.97))
    assert abs(gn.psf_at(0.0, 80.0).array.sum() - 16 * 0.94) < 1e-4
    assert abs(gn.psf_at(25.0, 40.0).array.sum() - 16 * norm.mean()) < 1e-4
    write_psf_fits(gn, tmp_path / "gn.fits")
    gn2 = read_psf_fits(tmp_path / "gn.fits")
    np.testing.assert_allclose(np.array(gn2.norm), norm, rtol=1e-6)
    np.testing.assert_allclose(gn2.arrays, gn.arrays, rtol=1e-5, atol=1e-8)
    assert GriddedPSF(np.stack([a, b]), [0.0, 50.0], [0.0], 4, norm=0.9).norm == 0.9
    # extrapolation continues the outermost cell linearly (held constant by default)
    ge = GriddedPSF(np.stack([a, b]), [0.0, 50.0], [0.0], 4, extrapolate=True)
    lin = 1.5 * a / a.sum() - 0.5 * b / b.sum()  # x = -25: weights 1.5, -0.5 of the nodes
    np.testing.assert_allclose(ge.psf_at(-25.0, 0.0).array, lin / lin.sum() * 16, atol=1e-6)
    np.testing.assert_allclose(ge.replace(extrapolate=False).psf_at(-25.0, 0.0).array,
                               a / a.sum() * 16, atol=1e-6)
    write_psf_fits(ge, tmp_path / "ge.fits")
    assert read_psf_fits(tmp_path / "ge.fits").extrapolate
    with pytest.raises(ValueError, match="norm must be positive"):
        GriddedPSF(np.stack([a, b]), [0.0, 50.0], [0.0], 4, norm=[1.0, -1.0])


def test_reads_photutils_gridded_psf(tmp_path):
    """A photutils GriddedPSFModel written in its FITS layout is read with the same positions."""
    photutils_psf = pytest.importorskip("photutils.psf")
    from astropy.io import fits

    a, b = _moffat_samples(2.0, m=9), _moffat_samples(3.0, m=9)
    hdr = fits.Header()
    hdr["OVERSAMP"] = 4
    pos = [(0.0, 0.0), (100.0, 0.0), (0.0, 60.0), (100.0, 60.0)]
    for i, (x, y) in enumerate(pos):
        hdr[f"DET_YX{i}"] = str((x, y))
    fits.PrimaryHDU(np.stack([a, b, b, a]), header=hdr).writeto(tmp_path / "w.fits")
    ours = read_psf_fits(tmp_path / "w.fits")
    theirs = photutils_psf.GriddedPSFModel.read(tmp_path / "w.fits", format="webbpsf")
    assert ours.grid_x == (0.0, 100.0) and ours.grid_y == (0.0, 60.0)
    np.testing.assert_allclose(np.asarray(theirs.grid_xypos), pos)
    np.testing.assert_allclose(ours.arrays[0, 1] / 16, b / b.sum(), rtol=1e-5, atol=1e-9)


def test_wfc3_grid(shared_data):
    """The real file: its 20 corrupt nodes (flat floor ~0.37 x peak) are found and dropped."""
    d = shared_data("hst_wfc3_psf")
    raw = np.load(d / "emp_psf_f814w_4x.npy")
    # the corrupt nodes: the two middle grid rows (chips' inner edges) and the last column
    floored = np.median(raw[:, :4, :], axis=(1, 2)) > 0.01 * raw.max(axis=(1, 2))
    bad_nodes = {6, 13, 20, 41, 48, 55} | set(range(21, 35))
    assert set(np.nonzero(floored)[0]) == bad_nodes
    with pytest.raises(ValueError, match="20 corrupt PSFs"):
        read_wfc3_uvis_grid(d / "emp_psf_f814w_4x.npy", corrupt="raise")
    with pytest.warns(PSFGridWarning, match="20 corrupt PSFs.*leaving 6 x 6 nodes"):
        grid = read_wfc3_uvis_grid(d / "emp_psf_f814w_4x.npy")
    gx, gy = wfc3_uvis_grid_positions()
    assert grid.grid_x == tuple(gx[:6]) and grid.grid_y == tuple(np.delete(gy, [3, 4]))
    arr = grid.arrays
    np.testing.assert_allclose(arr.sum(axis=(2, 3)), 16.0, rtol=1e-6)
    # renormalised PRFs: each node's centre sample is its peak, no pedestal (rim << peak), and
    # every kept node is one of the file's valid ones
    ctr = arr[:, :, 50, 50]
    assert np.all(ctr == arr.max(axis=(2, 3)))
    assert np.all(np.median(arr[:, :, :4, :], axis=(2, 3)) < 1e-3 * ctr)
    keep = np.delete(np.arange(56).reshape(8, 7), [3, 4], axis=0)[:, :6]
    ref = raw[keep.ravel()] / raw[keep.ravel()].sum(axis=(1, 2))[:, None, None] * 16
    np.testing.assert_allclose(arr.reshape(-1, 101, 101), ref, atol=2e-5)
    psf = grid.psf_at(1000.0, 1500.0)
    prf = np.asarray(psf.evaluate(12.0, 12.0, (25, 25)))
    assert abs(prf.sum() - 1.0) < 0.01
    with pytest.warns(PSFGridWarning, match="10 corrupt PSFs.*leaving 3 x 6 nodes"):
        one = read_wfc3_uvis_grid(d / "emp_psf_f814w_4x.npy", detector="uvis1")
    np.testing.assert_allclose(one.arrays, arr[3:], atol=1e-9)


def test_wfc3_grid_corrupt_nodes_synthetic(tmp_path):
    """A floored node in a synthetic cube: dropped with its grid row (or column), or raised."""
    a = _moffat_samples(2.0, m=9)
    cube = np.repeat(a[None], 56, axis=0)
    cube[9] = cube[9] + 0.1 * a.max()  # node (row 1, column 2): a flat floor
    np.save(tmp_path / "g.npy", cube)
    with pytest.warns(PSFGridWarning, match="1 corrupt PSFs"):
        g = read_wfc3_uvis_grid(tmp_path / "g.npy")
    gx, gy = wfc3_uvis_grid_positions()
    # a tie (one bad node in its row and its column): the row goes
    assert g.grid_x == tuple(gx) and g.grid_y == tuple(np.delete(gy, 1))
    with pytest.raises(ValueError, match="1 corrupt PSFs"):
        read_wfc3_uvis_grid(tmp_path / "g.npy", corrupt="raise")
    with pytest.raises(ValueError, match="corrupt must be"):
        read_wfc3_uvis_grid(tmp_path / "g.npy", corrupt="ignore")


def test_render_image_matches_simulate_cutouts():
    psf = MoffatPSF(2.5, 3.0)
    sim = simulate_cutouts(psf, 3, (15, 15), flux=np.array([1e3, 2e3, 3e3]), sky=0.0, seed=0)
    for k in range(3):
        img = render_image(psf, sim.x[k] + 20, sim.y[k] + 20, sim.flux[k], (60, 60), stamp=15)
        np.testing.assert_allclose(img[20:35, 20:35], sim.expected[k], rtol=1e-4, atol=1e-3)
