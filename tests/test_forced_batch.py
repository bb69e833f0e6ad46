"""forced_batch (the Dask batch path of forced photometry) and ``jaxphot forced --workers/--psf auto``.

The chunked runs must give exactly the table of one forced_photometry call over the whole list,
and that table must hold the simulated truth.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

import jaxphot
from jaxphot.cli import main
from jaxphot.image.render import render_image
from jaxphot.multi import BadImageWarning, ForcedFlag
from jaxphot.scale.forced import forced_batch

PSF = jaxphot.GaussianPRF(3.0)
H = W = 64
T = 5
SKY = 50.0


def _stars(rng, n=20, side=H, step=11.0, lo=3000.0, hi=20000.0):
    g = np.arange(8.0, side - 4, step)
    gx, gy = np.meshgrid(g, g)
    x = gx.ravel()[:n] + rng.uniform(-1, 1, n)
    y = gy.ravel()[:n] + rng.uniform(-1, 1, n)
    return x, y, rng.uniform(lo, hi, n)


def _expose(rng, x, y, f, shape=(H, W)):
    return rng.poisson(SKY + render_image(PSF, x, y, f, shape, stamp=21)).astype(float)


@pytest.fixture(scope="module")
def field():
    """20 stars (some in pairs) in 5 exposures, varying a few % from exposure to exposure."""
    rng = np.random.default_rng(1)
    x, y, f0 = _stars(rng)
    flux = f0[None] * (1 + 0.03 * rng.standard_normal((T, len(f0))))
    images = np.stack([_expose(rng, x, y, flux[t]) for t in range(T)])
    return x, y, flux, images


def _assert_same_table(got: Table, want: Table) -> None:
    assert got.colnames == want.colnames
    assert got.meta == want.meta
    for c in want.colnames:
        a, b = np.asarray(got[c]), np.asarray(want[c])
        assert a.dtype == b.dtype and a.shape == b.shape, c
        if a.dtype.kind == "f":
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=0, equal_nan=True, err_msg=c)
        else:
            np.testing.assert_array_equal(a, b, err_msg=c)
    assert got["x"].unit == want["x"].unit


def _pulls(tab: Table, flux: np.ndarray) -> np.ndarray:
    truth = flux[np.asarray(tab["image_id"]), np.asarray(tab["star_id"])]
    return (np.asarray(tab["flux"]) - truth) / np.asarray(tab["flux_err"])


@pytest.mark.parametrize("per_task", [1, 2])
def test_chunked_equals_one_call_and_the_truth(field, per_task):
    x, y, flux, images = field
    cat = Table({"x": x, "y": y})
    direct = jaxphot.forced_photometry(images, cat, PSF, gain=1.0)
    seen = []
    tab = forced_batch(images, cat, PSF, workers=0, images_per_task=per_task, gain=1.0,
                       progress=lambda msg, frac: seen.append(frac))
    _assert_same_table(tab, direct)
    assert len(seen) == -(-T // per_task) and seen[-1] == 1.0  # one report per task
    assert len(tab) == T * len(x) and tab.meta["images"] == [f"images[{i}]" for i in range(T)]
    assert np.all(tab["flags"] == 0) and tab["group_size"].max() >= 2  # pairs fitted together
    pull = _pulls(tab, flux)
    assert 0.7 < np.std(pull) < 1.3 and abs(np.mean(pull)) < 0.3, (np.std(pull), np.mean(pull))


def test_per_exposure_lists_are_sliced(field):
    x, y, flux, images = field
    cat = Table({"x": x, "y": y})
    mask = [np.zeros((H, W), bool) for _ in range(T)]
    mask[3][int(round(y[0])) - 1:int(round(y[0])) + 2, int(round(x[0])) - 1:int(round(x[0])) + 2] = True
    kw = dict(gain=[1.0, 1.0, 2.0, 1.0, 1.0], mask=mask, error=None)
    psfs = [PSF, PSF, jaxphot.GaussianPRF(3.2), PSF, PSF]
    direct = jaxphot.forced_photometry(images, cat, psfs, **kw)
    _assert_same_table(forced_batch(images, cat, psfs, workers=0, images_per_task=2, **kw), direct)
    masked = (direct["image_id"] == 3) & (direct["star_id"] == 0)
    assert np.all(direct["flags"][masked] & ForcedFlag.MASKED)


def test_pixel_catalogue_through_the_first_exposures_wcs(tmp_path, shifted_wcs):
    """x, y in pixels of the list's first exposure: a chunk's first exposure is another one."""
    rng = np.random.default_rng(5)
    x, y, f = _stars(rng, n=12, step=13.0)
    shifts = [(0.0, 0.0), (2.3, -1.4), (-3.1, 0.6), (1.7, 2.2)]
    paths = []
    for i, (dx, dy) in enumerate(shifts):
        hdr = shifted_wcs(dx, dy).to_header()
        hdr["MJD-OBS"] = 60000.0 + i
        p = tmp_path / f"w{i}.fits"
        fits.writeto(p, _expose(rng, x + dx, y + dy, f), hdr)
        paths.append(str(p))
    cat = Table({"x": x, "y": y})
    direct = jaxphot.forced_photometry(paths, cat, PSF, gain=1.0)
    tab = forced_batch(paths, cat, PSF, workers=0, images_per_task=1, gain=1.0)
    _assert_same_table(tab, direct)
    xs = np.asarray(tab["x"]).reshape(len(x), len(shifts))
    assert np.allclose(xs - x[:, None], [s[0] for s in shifts], atol=1e-6)  # the true positions
    assert np.allclose(np.unique(tab["mjd"]), 60000.0 + np.arange(4))
    pull = _pulls(tab, np.repeat(f[None], len(shifts), 0))
    assert np.all(np.abs(pull) < 5) and 0.7 < np.std(pull) < 1.3
    # the trap: the same catalogue with exposure 1 first lands 2.3 px off
    alone = jaxphot.forced_photometry(paths[1:], cat, PSF, gain=1.0)
    assert np.allclose(np.asarray(alone["x"]).reshape(len(x), 3)[:, 0] - x, 0.0, atol=1e-6)


def test_a_failed_task_gives_bad_image_rows(field):
    x, y, flux, images = field
    cat = Table({"x": x, "y": y})
    mask = [None] * T
    mask[2] = np.zeros((H + 1, W), bool)  # unusable: that task raises
    with pytest.warns(BadImageWarning, match=r"images\[2\]: its task failed \(ValueError"):
        tab = forced_batch(images, cat, PSF, workers=0, images_per_task=1, gain=1.0, mask=mask)
    bad = np.asarray(tab["image_id"]) == 2
    assert np.all(tab["flags"][bad] == ForcedFlag.BAD_IMAGE) and np.all(np.isnan(tab["flux"][bad]))
    direct = jaxphot.forced_photometry(images[[0, 1, 3, 4]], cat, PSF, gain=1.0)
    np.testing.assert_allclose(np.asarray(tab["flux"][~bad]), np.asarray(direct["flux"]), rtol=1e-10)
    # when every task fails, the error is raised as one call raises it
    with pytest.raises(ValueError):
        forced_batch(images[:2], cat, PSF, workers=0, mask=mask[1:3])


def test_bad_options_fail_before_any_work(field):
    x, y, flux, images = field
    cat = Table({"x": x, "y": y})
    with pytest.raises(ValueError, match="workers must be >= 0"):
        forced_batch(images, cat, PSF, workers=-1)
    with pytest.raises(ValueError, match="images_per_task"):
        forced_batch(images, cat, PSF, workers=0, images_per_task=0)
    with pytest.raises(TypeError, match="threshold"):
        forced_batch(images, cat, PSF, workers=0, threshold=3.0)
    with pytest.raises(ValueError, match="gain must be > 0"):
        forced_batch(images, cat, PSF, workers=0, gain=-1.0)
    with pytest.raises(ValueError, match="psf has 2 entries for 5 images"):
        forced_batch(images, cat, [PSF, PSF], workers=0)
    with pytest.raises(ValueError, match="wcs"):
        forced_batch(images, Table({"ra": [150.0], "dec": [2.0]}), PSF, workers=0)


def _write_exposures(d, images, mjd0=60000.0) -> list[str]:
    paths = []
    for i, im in enumerate(images):
        hdr = fits.Header()
        hdr["MJD-OBS"] = mjd0 + i
        p = d / f"ep{i}.fits"
        fits.writeto(p, im.astype(np.float32), hdr)
        paths.append(str(p))
    return paths


def _truncate(path) -> None:
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[: len(raw) - 2 * 2880])  # the header reads, the pixels do not


def test_corrupt_files_on_a_local_cluster(field, tmp_path):
    """One LocalCluster (2 workers): a garbage file (caught here) and a truncated one (caught on
    its worker) are BAD_IMAGE rows; the other exposures are measured, as in this process."""
    pytest.importorskip("distributed")
    x, y, flux, images = field
    paths = _write_exposures(tmp_path, images)
    open(paths[1], "wb").write(b"not a FITS file at all")
    _truncate(paths[3])
    cat = Table({"x": x, "y": y})
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always", BadImageWarning)
        tab = forced_batch(paths, cat, PSF, workers=2, images_per_task=2, gain=1.0, progress=False)
    said = " ".join(str(r.message) for r in rec if issubclass(r.category, BadImageWarning))
    assert "ep1.fits" in said and "ep3.fits" in said and "truncated" in said
    bad = np.isin(tab["image_id"], [1, 3])
    assert np.all(tab["flags"][bad] & ForcedFlag.BAD_IMAGE) and np.all(np.isnan(tab["flux"][bad]))
    assert np.all(tab["flags"][~bad] == 0)
    pull = _pulls(tab[~bad], flux)
    assert np.all(np.abs(pull) < 5) and 0.7 < np.std(pull) < 1.3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadImageWarning)
        _assert_same_table(tab, jaxphot.forced_photometry(paths, cat, PSF, gain=1.0))


def test_cli_forced_workers_0(field, tmp_path, capsys):
    x, y, flux, images = field
    paths = _write_exposures(tmp_path, images[:3])
    (tmp_path / "ep9.fits").write_text("corrupt")
    Table({"x": x, "y": y}).write(tmp_path / "master.ecsv")
    out = tmp_path / "lc.ecsv"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadImageWarning)
        rc = main(["forced", str(tmp_path / "ep*.fits"), "--catalog", str(tmp_path / "master.ecsv"),
                   "--psf", "gaussian:fwhm=3", "--gain", "1", "--workers", "0", "-o", str(out)])
        direct = jaxphot.forced_photometry(paths + [str(tmp_path / "ep9.fits")],
                                           Table({"x": x, "y": y}), PSF, gain=1.0)
    assert rc == 0
    err = capsys.readouterr().err
    assert "in this process" in err and "(1 unusable)" in err
    tab = Table.read(out)
    np.testing.assert_allclose(tab["flux"], direct["flux"], rtol=1e-10, equal_nan=True)
    ok = tab["image_id"] < 3
    assert np.all(np.abs(_pulls(tab[ok], flux)) < 5)
    assert np.all(tab["flags"][~ok] & ForcedFlag.BAD_IMAGE)


def test_cli_forced_bad_workers_is_one_line(tmp_path, capsys):
    Table({"x": [10.0], "y": [10.0]}).write(tmp_path / "m.ecsv")
    rc = main(["forced", "nothing.fits", "--catalog", str(tmp_path / "m.ecsv"), "--psf",
               "gaussian:fwhm=3", "--workers", "-2", "-o", str(tmp_path / "o.ecsv")])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip() == "jaxphot: error: --workers must be >= 0, got -2"


def test_cli_forced_psf_auto(tmp_path, capsys):
    """An ePSF built from each exposure (36 bright stars on 128x128: ~8 pass the ePSF's
    isolation cuts, 5 are needed): the fluxes hold the truth within their errors."""
    rng = np.random.default_rng(0)
    x, y, f = _stars(rng, n=36, side=128, step=20.0, lo=2e4, hi=6e4)
    x, y = x + 2.0, y + 2.0
    images = [_expose(rng, x, y, f, (128, 128)) for _ in range(2)]
    _write_exposures(tmp_path, images)
    (tmp_path / "ep2.fits").write_text("corrupt")
    Table({"x": x, "y": y}).write(tmp_path / "master.ecsv")
    out = tmp_path / "lc.ecsv"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # too few PSF stars for a varying ePSF; the corrupt file
        rc = main(["forced", str(tmp_path / "ep*.fits"), "--catalog", str(tmp_path / "master.ecsv"),
                   "--psf", "auto", "--gain", "1", "-o", str(out)])
    assert rc == 0
    assert "psf auto" in capsys.readouterr().err
    tab = Table.read(out)
    ok = tab["image_id"] < 2
    assert np.all(tab["flags"][~ok] & ForcedFlag.BAD_IMAGE)
    meas = np.asarray(tab["flux"][ok])
    truth = f[np.asarray(tab["star_id"][ok])]
    assert np.all(np.isfinite(meas)) and abs(np.median(meas / truth) - 1) < 0.01
    pull = (meas - truth) / np.asarray(tab["flux_err"][ok])  # measured: mean -0.11, std 1.10
    assert 0.7 < np.std(pull) < 1.3 and abs(np.mean(pull)) < 0.5, (np.std(pull), np.mean(pull))
