"""Forced photometry (issue 17) against simulated truth: pulls, the CRLB, variables, bad input."""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from astropy.table import Table

import jaxphot
from jaxphot.core.fisher import fisher_crlb
from jaxphot.multi import BadImageWarning, ForcedFlag

PSF = jaxphot.GaussianPRF(3.0)
H = W = 64
T = 60
SKY = 50.0


def _field():
    """14 stars on a 64x64 field: isolated ones, two blended pairs; a sinusoid and a transit."""
    rng = np.random.default_rng(7)
    gx, gy = np.meshgrid(np.arange(10, 60, 13.0), np.arange(10, 60, 13.0))
    x = gx.ravel()[:12] + rng.uniform(-1, 1, 12)
    y = gy.ravel()[:12] + rng.uniform(-1, 1, 12)
    x = np.r_[x, x[5] + 3.5, x[10] - 2.8]  # two blends (about 1 FWHM apart)
    y = np.r_[y, y[5] + 1.0, y[10] + 2.0]
    f0 = rng.uniform(3000, 20000, len(x))
    flux = np.repeat(f0[None], T, 0)
    t = np.arange(T)
    flux[:, 0] = f0[0] * (1 + 0.05 * np.sin(2 * np.pi * t / 17.0))  # sinusoid, 5 %
    flux[20:30, 1] = f0[1] * 0.97  # transit, 3 % deep
    prf = np.asarray(PSF.evaluate(jnp.asarray(x), jnp.asarray(y), (H, W)), np.float64)  # (H, W, N)
    images = rng.poisson(SKY + np.einsum("hwn,tn->thw", prf, flux)).astype(float)
    return x, y, flux, images


@pytest.fixture(scope="module")
def field():
    x, y, flux, images = _field()
    tab = jaxphot.forced_photometry(images, Table({"x": x, "y": y}), PSF, gain=1.0)
    return x, y, flux, images, tab


def _grid(tab, name):
    return jaxphot.pivot_light_curves(tab, columns=(name,))[name]  # (N, T)


def test_flux_pulls_per_exposure(field):
    x, y, flux, images, tab = field
    f, e = _grid(tab, "flux"), _grid(tab, "flux_err")
    pull = (f - flux.T) / e
    assert np.all(np.isfinite(pull))
    assert np.all(_grid(tab, "flags") == 0)
    # per exposure std over stars, averaged; and all star-epochs together
    assert abs(np.std(pull) - 1.0) < 0.05, np.std(pull)
    assert abs(np.mean(pull)) < 0.1, np.mean(pull)
    # per exposure (14 stars each: the std of one exposure scatters by ~0.19)
    assert abs(np.mean(np.std(pull, axis=0, ddof=1)) - 1.0) < 0.1


def test_flux_err_is_the_crlb_with_positions_fixed(field):
    x, y, flux, images, tab = field
    err = _grid(tab, "flux_err")
    iso = np.nonzero(_grid(tab, "group_size")[:, 0] == 1)[0]
    assert len(iso) >= 5
    half = 5  # default fit box: max(3, ceil(1.5 FWHM)) = 5, 11x11, centred on the rounded position
    s = 2 * half + 1
    ox, oy = np.rint(x[iso]) - half, np.rint(y[iso]) - half
    k = len(iso)
    p = jaxphot.core.params.pack(np.full(k, SKY), 0.0, 0.0, flux[0, iso][:, None],
                                 (x[iso] - ox)[:, None], (y[iso] - oy)[:, None])
    free = np.ones(p.shape[1], bool)
    free[-2:] = False  # x, y fixed
    crlb = fisher_crlb(PSF, p, (s, s), free=free, gain=1.0)[:, 3]
    ratio = np.median(err[iso], axis=1) / crlb
    assert np.all(np.abs(ratio - 1) < 0.05), ratio


def test_sinusoid_and_transit_recovered(field):
    x, y, flux, images, tab = field
    f, e = _grid(tab, "flux"), _grid(tab, "flux_err")
    t = np.arange(T)
    # sinusoid: weighted linear fit of c + a sin + b cos at the known period
    a_mat = np.c_[np.ones(T), np.sin(2 * np.pi * t / 17.0), np.cos(2 * np.pi * t / 17.0)] / e[0][:, None]
    coef, *_ = np.linalg.lstsq(a_mat, f[0] / e[0], rcond=None)
    cov = np.linalg.inv(a_mat.T @ a_mat)
    true_amp = 0.05 * flux[0, 0]
    assert abs(coef[1] - true_amp) < 3 * np.sqrt(cov[1, 1]), (coef[1], true_amp, np.sqrt(cov[1, 1]))
    # transit: in-transit minus out-of-transit weighted means
    w = 1 / e[1] ** 2
    inn = np.zeros(T, bool)
    inn[20:30] = True
    m_in = np.sum(w[inn] * f[1, inn]) / w[inn].sum()
    m_out = np.sum(w[~inn] * f[1, ~inn]) / w[~inn].sum()
    depth, err = m_out - m_in, np.sqrt(1 / w[inn].sum() + 1 / w[~inn].sum())
    true_depth = 0.03 * flux[0, 1]
    assert abs(depth - true_depth) < 3 * err, (depth, true_depth, err)
    assert depth > 5 * err


def test_off_image_and_masked_stars_are_nan_and_flagged():
    x, y, flux, images = _field()
    cat = Table({"x": np.r_[x[:3], -20.0, np.nan], "y": np.r_[y[:3], 30.0, 5.0]})
    mask = np.zeros((H, W), bool)
    iy, ix = int(round(y[2])), int(round(x[2]))
    mask[iy - 1:iy + 2, ix - 1:ix + 2] = True
    tab = jaxphot.forced_photometry(images[:3], cat, PSF, gain=1.0, mask=mask)
    assert len(tab) == 5 * 3  # never a dropped row
    lc = jaxphot.pivot_light_curves(tab)
    assert np.all(lc["flags"][2] & ForcedFlag.MASKED) and np.all(np.isnan(lc["flux"][2]))
    assert np.all(lc["flags"][3] & ForcedFlag.OFF_IMAGE) and np.all(np.isnan(lc["flux"][3]))
    assert np.all(lc["flags"][4] & ForcedFlag.NO_POSITION) and np.all(np.isnan(lc["flux"][4]))
    assert np.all(np.abs(lc["flux"][:2] - flux[:3, :2].T) < 5 * lc["flux_err"][:2])


def test_bad_input_messages():
    x, y, flux, images = _field()
    cat = Table({"x": x, "y": y})
    with pytest.raises(ValueError, match="wcs"):
        jaxphot.forced_photometry(images[:2], Table({"ra": [10.0], "dec": [20.0]}), PSF)
    with pytest.raises(ValueError, match="no usable rows"):
        jaxphot.forced_photometry(images[:2], Table({"x": [np.nan], "y": [np.nan]}), PSF)
    with pytest.raises(ValueError, match="ra, dec"):
        jaxphot.forced_photometry(images[:2], Table({"a": [1.0]}), PSF)
    with pytest.raises(ValueError, match="psf has 3 entries for 2 images"):
        jaxphot.forced_photometry(images[:2], cat, [PSF] * 3)
    with pytest.raises(ValueError, match="mask has 1 entries"):
        jaxphot.forced_photometry(images[:2], cat, PSF, mask=[np.zeros((H, W), bool)])
    with pytest.raises(ValueError, match="background"):
        jaxphot.forced_photometry(images[:2], cat, PSF, background="mesh")


def test_one_corrupt_file_among_many(tmp_path):
    from astropy.io import fits

    x, y, flux, images = _field()
    paths = []
    for i in range(4):
        p = tmp_path / f"e{i}.fits"
        hdr = fits.Header()
        hdr["MJD-OBS"] = 60000.0 + i
        fits.writeto(p, images[i], hdr)
        paths.append(str(p))
    (tmp_path / "e2.fits").write_bytes(b"not a fits file at all")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        tab = jaxphot.forced_photometry(paths, Table({"x": x, "y": y}), PSF, gain=1.0)
    assert any(issubclass(r.category, BadImageWarning) and "e2.fits" in str(r.message) for r in rec)
    bad = tab["image_id"] == 2
    assert np.all(tab["flags"][bad] & ForcedFlag.BAD_IMAGE) and np.all(np.isnan(tab["flux"][bad]))
    good = ~bad
    truth = flux[tab["image_id"][good], tab["star_id"][good]]
    assert np.all(np.abs(tab["flux"][good] - truth) < 5 * tab["flux_err"][good])
    assert np.allclose(np.unique(tab["mjd"][good]), 60000.0 + np.array([0, 1, 3]))


def test_cli_forced(tmp_path):
    from astropy.io import fits

    from jaxphot.cli.app import main

    x, y, flux, images = _field()
    for i in range(3):
        fits.writeto(tmp_path / f"ep{i}.fits", images[i])
    (tmp_path / "ep9.fits").write_text("corrupt")
    Table({"x": x, "y": y}).write(tmp_path / "master.ecsv")
    out = tmp_path / "lc.ecsv"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadImageWarning)
        rc = main(["forced", str(tmp_path / "ep*.fits"), "--catalog", str(tmp_path / "master.ecsv"),
                   "--psf", "gaussian:fwhm=3", "--gain", "1", "-o", str(out),
                   "--wide", str(tmp_path / "wide.ecsv")])
    assert rc == 0
    tab = Table.read(out)
    assert len(tab) == 4 * len(x)
    ok = tab["image_id"] < 3
    truth = flux[tab["image_id"][ok], tab["star_id"][ok]]
    assert np.all(np.abs(tab["flux"][ok] - truth) < 5 * tab["flux_err"][ok])
    assert np.all(tab["flags"][~ok] & ForcedFlag.BAD_IMAGE)
    assert Table.read(tmp_path / "wide.ecsv")["flux"].shape == (len(x), 4)


def test_tess_forced_scatter_not_above_sap():
    """Forced at the pipeline's per-cadence pointing: 1228 ppm against SAP's 1260 ppm (held at the
    stamp centre, 3097 ppm). The file has 4 good cadences, so this is a check of the method, not
    a measurement of the scatter to better than ~50 %."""
    import importlib.util
    from pathlib import Path

    from jaxphot.datasets import find_data_dir

    try:
        d = find_data_dir("tess")
    except Exception:
        pytest.skip("TESS data not available")
    if not (Path(d) / "tess25155310-s01-first-cadences.fits.gz").exists():
        pytest.skip("TESS target-pixel file not available")
    spec = importlib.util.spec_from_file_location(
        "tess_forced", Path(__file__).parents[1] / "examples" / "tess_forced.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ours, ours_err, sap = mod.tess_forced(Path(d))
    assert np.all(np.isfinite(ours)) and np.all(ours_err > 0)
    assert mod.p2p(ours) / np.median(ours) <= mod.p2p(sap) / np.median(sap)


def test_varying_psf_each_star_at_its_own_position():
    from jaxphot.image.render import render_image

    g = np.arange(31) - 15.0

    def gauss(fwhm):  # sampled at 2x
        s = 2 * fwhm / 2.3548
        a = np.exp(-0.5 * (g[:, None] ** 2 + g[None, :] ** 2) / s**2)
        return a / a.sum()

    a, b = gauss(2.5), gauss(4.0)
    poly = jaxphot.PolynomialPSF(np.stack([0.5 * (a + b), 0.5 * (b - a), 0 * a]), 2, 1,
                                 (32.0, 32.0), (32.0, 32.0))
    rng = np.random.default_rng(3)
    x = np.array([8.0, 56.2, 20.4, 44.7, 32.3])
    y = np.array([30.1, 33.3, 12.6, 50.2, 31.8])
    f = np.full(5, 8000.0)
    model = SKY + render_image(poly, x, y, f, (H, W), stamp=21)
    images = rng.poisson(model, size=(40, H, W)).astype(float)
    tab = jaxphot.forced_photometry(images, Table({"x": x, "y": y}), poly, gain=1.0)
    pull = (np.asarray(tab["flux"]) - 8000.0) / np.asarray(tab["flux_err"])
    assert np.all(np.isfinite(pull))
    assert abs(np.mean(pull)) < 0.2 and abs(np.std(pull) - 1) < 0.1, (np.mean(pull), np.std(pull))
    # the field-centre PSF for all stars is wrong at the edges (x = 8 and 56): biased there
    centre = poly.psf_at(32.0, 32.0)
    tab0 = jaxphot.forced_photometry(images, Table({"x": x, "y": y}), centre, gain=1.0)
    p0 = (np.asarray(tab0["flux"]) - 8000.0) / np.asarray(tab0["flux_err"])
    assert np.max(np.abs(p0.reshape(5, -1).mean(1)[:2])) > 3


def test_sky_catalogue_through_per_image_wcs_and_affine(shifted_wcs):
    rng = np.random.default_rng(11)
    x0 = np.array([15.3, 40.2, 30.7, 50.1])
    y0 = np.array([20.4, 18.9, 45.5, 40.2])
    f = np.array([6000.0, 9000.0, 12000.0, 4000.0])
    shifts = [(0.0, 0.0), (2.3, -1.4), (-3.1, 0.6)]

    wcss = [shifted_wcs(*s) for s in shifts]
    images = []
    for dx, dy in shifts:
        prf = np.asarray(PSF.evaluate(jnp.asarray(x0 + dx), jnp.asarray(y0 + dy), (H, W)), np.float64)
        images.append(rng.poisson(SKY + prf @ f).astype(float))
    sky = wcss[0].pixel_to_world(x0, y0)
    cat = Table({"ra": sky.ra.deg, "dec": sky.dec.deg})
    tab = jaxphot.forced_photometry(images, cat, PSF, wcs=wcss, gain=1.0)
    lc = jaxphot.pivot_light_curves(tab, columns=("flux", "flux_err"))
    xs = np.asarray(tab["x"]).reshape(4, 3)
    assert np.allclose(xs - x0[:, None], [s[0] for s in shifts], atol=1e-6)
    assert np.all(np.abs(lc["flux"] - f[:, None]) < 5 * lc["flux_err"])
    # the same through (2, 3) affine pixel transforms from the first image
    aff = [np.array([[1, 0, dx], [0, 1, dy]], float) for dx, dy in shifts]
    tab2 = jaxphot.forced_photometry(images, Table({"x": x0, "y": y0}), PSF, wcs=aff, gain=1.0)
    # (a position at exactly .5 px may round to the other cutout: the same within 0.1 sigma)
    assert np.all(np.abs(tab2["flux"] - tab["flux"]) < 0.1 * tab["flux_err"])


def test_split_group_rows_are_flagged_not_silently_wrong():
    # The geometry of bench_forced.py's 10^5-star field (seed 0) around (4545, 3597): a 0.69 px
    # pair fitted together in a group of 3, cut out of a 13-star chain too wide for any bucket
    # (re-grouped at 0.7 crit_sep), so strongly coupled neighbours sit outside its group and one
    # neighbour pass does not converge (neighbours=3 does: pulls -0.25 to -0.76). Unfixed, one
    # star came out at -2.2e4 for a true 1.7e4 (pull -545) with flag 0.
    rng = np.random.default_rng(0)
    n, side = 100_000, 5000
    x, y = rng.uniform(2, side - 3, n), rng.uniform(2, side - 3, n)
    flux = 10 ** rng.uniform(3, 4.5, n)
    x0, y0, h = 4545, 3597, 150
    near = (np.abs(x - x0) < h + 10) & (np.abs(y - y0) < h + 10)
    from jaxphot.image.render import render_image

    psf = jaxphot.GaussianPRF(3.0)
    xs, ys = x[near] - (x0 - h), y[near] - (y0 - h)
    model = 50.0 + render_image(psf, xs, ys, flux[near], (2 * h, 2 * h), stamp=15)
    img = np.random.default_rng(1).poisson(model).astype(np.float32)
    inside = (xs > -0.5) & (xs < 2 * h - 0.5) & (ys > -0.5) & (ys < 2 * h - 0.5)
    t = jaxphot.forced_photometry(img[None], Table({"x": xs[inside], "y": ys[inside]}), psf, gain=1.0)
    pull = (np.asarray(t["flux"]) - flux[near][inside]) / np.asarray(t["flux_err"])
    poor = (np.asarray(t["flags"]) & ForcedFlag.POOR_FIT) > 0
    assert np.all(np.abs(pull[~poor]) < 6)  # what is not flagged is right
    assert poor.sum() <= 0.05 * len(t)  # and rare, even here (a window on the worst chain)
    assert np.abs(pull).max() < 100  # the re-solves do not run away
