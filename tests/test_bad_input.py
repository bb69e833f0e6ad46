"""Bad input (issue 18): each case gives a clear error naming the argument, a per-star flag, or
a correct result checked against the simulated truth."""

import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

import jaxphot as jp
from jaxphot.cli import main
from jaxphot.core.flags import FitFlag
from jaxphot.psf import GaussianPRF
from jaxphot.sim import simulate_cluster

PSF = GaussianPRF(3.0)
SKY, F_TRUE = 20.0, 3000.0


def _cutouts(n=64, seed=0):
    """n 15x15 Poisson cutouts (gain 1) of one star each, with their true positions."""
    rng = np.random.default_rng(seed)
    x = 7.0 + rng.uniform(-0.5, 0.5, n)
    y = 7.0 + rng.uniform(-0.5, 0.5, n)
    prf = np.moveaxis(np.asarray(PSF.evaluate(x, y, (15, 15))), -1, 0)
    data = rng.poisson(SKY + F_TRUE * prf).astype(float)
    return data, x, y


@pytest.fixture(scope="module")
def cutouts():
    return _cutouts()


def test_nan_start_flags_only_that_row(cutouts):
    data, x, y = cutouts
    xs = x.copy()
    xs[3] = np.nan
    t = jp.fit_cutouts(data, PSF, xs, y, gain=1.0).to_table()
    assert len(t) == len(x)  # every input row comes back
    assert t["flags"][3] & FitFlag.NON_FINITE and np.isnan(t["flux_fit"][3])
    ok = np.arange(len(x)) != 3
    assert np.all(t["flags"][ok] == 0)
    pull = (t["flux_fit"][ok] - F_TRUE) / t["flux_err"][ok]
    assert abs(np.mean(pull)) < 4 / np.sqrt(ok.sum()) and 0.7 < np.std(pull) < 1.3


def test_duplicate_start_is_merged_not_split(cutouts):
    data, x, y = cutouts
    xx, yy = np.c_[x, x], np.c_[y, y]
    t = jp.fit_cutouts(data, PSF, xx, yy, gain=1.0).to_table()
    assert len(t) == 2 * len(x)
    first, second = t[t["star_id"] == 0], t[t["star_id"] == 1]
    assert np.all(second["flags"] & FitFlag.MERGED) and np.all(np.isnan(second["flux_fit"]))
    pull = (first["flux_fit"] - F_TRUE) / first["flux_err"]
    assert abs(np.mean(pull)) < 4 / np.sqrt(len(x))  # the whole flux goes to the kept star
    assert np.sqrt(np.mean((first["x_fit"] - x) ** 2)) < 0.1


def test_psf_spec_string_and_none(cutouts):
    data, x, y = cutouts
    a = jp.fit_cutouts(data[:8], "gaussian:fwhm=3", x[:8], y[:8], gain=1.0)
    b = jp.fit_cutouts(data[:8], PSF, x[:8], y[:8], gain=1.0)
    np.testing.assert_allclose(a.flux_fit, b.flux_fit, rtol=1e-6)
    with pytest.raises(ValueError, match="psf is required"):
        jp.fit_cutouts(data[:8], None, x[:8], y[:8])
    with pytest.raises(ValueError, match="psf"):
        jp.fit_cutouts(data[:8], "gaussian:sigma=3", x[:8], y[:8])
    with pytest.raises(ValueError, match="psf is required"):
        jp.photometry(np.ones((32, 32)), None)


def test_empty_stack_message():
    """Zero cutouts are an empty result (tests/test_hardening.py); empty cutouts are an error."""
    with pytest.raises(ValueError, match=r"data must be one \(H, W\) cutout"):
        jp.fit_cutouts(np.zeros((2, 0, 15)), PSF, np.zeros(2), np.zeros(2))


@pytest.mark.parametrize("gain", [-1.0, 0.0])
def test_epsf_gain_must_be_positive(gain):
    with pytest.raises(ValueError, match="gain must be > 0"):
        jp.build_epsf_from_image(np.ones((64, 64)), gain=gain)
    with pytest.raises(ValueError, match="gain must be > 0"):
        jp.build_epsf(np.ones((64, 64)), Table({"x": [32.0], "y": [32.0]}), gain=gain)


def test_crossmatch_pixel_catalogues_use_fitted_columns():
    rng = np.random.default_rng(1)
    a = Table({"x_fit": rng.uniform(0, 100, 30), "y_fit": rng.uniform(0, 100, 30)})
    b = Table({"x_fit": a["x_fit"] + 0.1, "y_fit": a["y_fit"] - 0.1})
    m = jp.crossmatch(a, b, 1.0)
    assert len(m) == 30 and np.all(m["idx2"] == m["idx1"])
    np.testing.assert_allclose(m["sep"], np.hypot(0.1, 0.1), rtol=1e-6)
    with pytest.raises(ValueError, match="cat2 has no column 'x'"):
        jp.crossmatch(a, Table({"u": [1.0]}), 1.0)


@pytest.fixture(scope="module")
def field():
    return simulate_cluster((96, 96), 25, PSF, seed=3, margin=8, sky=100.0, gain=1.0,
                            read_noise=5.0)


def test_photometry_spec_string_matches_truth(field):
    t = jp.photometry(field.image, "gaussian:fwhm=3", gain=1.0, read_noise=5.0)
    assert 0.5 < t.meta["median_reduced_chi2"] < 2.0
    assert 0.8 < t.meta["median_peak_ratio"] < 1.25
    bright = field.truth[field.truth["snr"] > 30]
    d = np.hypot(t["x_fit"][:, None] - bright["x"][None], t["y_fit"][:, None] - bright["y"][None])
    assert np.all(d.min(0) < 0.5)  # every bright true star found


@pytest.mark.parametrize("fwhm", [0.8, 9.0])
def test_wrong_psf_width_warns(field, fwhm):
    with pytest.warns(UserWarning, match="reduced chi2") as rec:
        t = jp.photometry(field.image, GaussianPRF(fwhm), gain=1.0, read_noise=5.0, maxiters=1)
    assert "wider" in str(rec[-1].message) if fwhm > 3 else t.meta["median_reduced_chi2"] > 3


# ---------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def image_file(tmp_path_factory, field):
    d = tmp_path_factory.mktemp("bad")
    path = d / "v.fits"
    fits.PrimaryHDU(field.image.astype(np.float32)).writeto(path)
    return d, path


def _run(args, capsys):
    rc = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err[-1] if err else ""


@pytest.mark.parametrize("opt", ["-o", "--residual", "--model"])
def test_cli_never_writes_over_its_input(image_file, capsys, opt):
    d, path = image_file
    before = path.read_bytes()
    args = ["photometry", str(path), "-o", str(d / "c.ecsv"), "--overwrite"]
    args = args[:2] + [opt, str(path)] + (args[2:] if opt != "-o" else args[4:])
    rc, line = _run(args, capsys)
    assert rc == 2 and "input" in line and str(path) in line
    assert path.read_bytes() == before


def test_cli_output_checks_before_work(image_file, capsys):
    d, path = image_file
    (d / "old.ecsv").write_text("keep")
    rc, line = _run(["photometry", str(path), "-o", str(d / "old.ecsv")], capsys)
    assert rc == 2 and "--overwrite" in line and (d / "old.ecsv").read_text() == "keep"
    rc, line = _run(["photometry", str(path), "-o", str(d / "nope" / "c.ecsv")], capsys)
    assert rc == 2 and "does not exist" in line
    rc, line = _run(["epsf", str(path), "-o", str(d / "x.txt")], capsys)
    assert rc == 2 and ".fits" in line and not (d / "x.txt").exists()


@pytest.mark.parametrize("cmd", ["photometry", "epsf"])
def test_cli_apcorr_radius_must_be_positive(image_file, capsys, cmd):
    d, path = image_file
    extra = ["--psf", "auto"] if cmd == "photometry" else []
    rc, line = _run([cmd, str(path), "-o", str(d / "p.fits"), "--apcorr-radius", "-3", *extra],
                    capsys)
    assert rc == 2 and "--apcorr-radius" in line and "positive" in line


def test_cli_batch_refuses_input_as_catalog(image_file, capsys):
    d, path = image_file
    before = path.read_bytes()
    for extra in ([], ["--overwrite"]):
        rc, line = _run(["batch", str(path), "--outdir", str(d), "--format", "fits"] + extra, capsys)
        assert rc == 2 and "would replace the input" in line
    assert path.read_bytes() == before
    rc, line = _run(["batch", str(path), "--outdir", str(path)], capsys)
    assert rc == 2 and "is a file" in line


def test_cli_unexpected_error_is_one_line(image_file, capsys, monkeypatch):
    d, path = image_file
    import jaxphot.image.pipeline as pl

    def boom(*a, **k):
        raise KeyError("geom")

    monkeypatch.setattr(pl, "photometry", boom)
    rc, line = _run(["photometry", str(path), "-o", str(d / "k.ecsv")], capsys)
    assert rc == 1 and "--debug" in line and "KeyError" in line
    with pytest.raises(KeyError):
        main(["photometry", str(path), "-o", str(d / "k.ecsv"), "--debug"])


def test_no_warning_for_right_psf(field):
    with warnings.catch_warnings():
        warnings.simplefilter("error", jp.image.pipeline.ModelMismatchWarning)
        jp.photometry(field.image, PSF, gain=1.0, read_noise=5.0, maxiters=1)


@pytest.mark.parametrize("kw", [dict(r=4.0), dict(r=[3.0, 4.0], r_in=6.0, r_out=9.0, gain=1.0)])
def test_aperture_photometry_of_no_positions_is_an_empty_table(kw):
    """Zero positions give zero rows with the columns of a non-empty call (was KeyError 'geom')."""
    img = np.random.default_rng(0).normal(100.0, 5.0, (40, 40))
    empty = jp.aperture_photometry(img, np.zeros((0, 2)), **kw)
    one = jp.aperture_photometry(img, [[20.0, 20.0]], **kw)
    assert len(empty) == 0 and empty.colnames == one.colnames
    ratio = np.asarray(one["aperture_sum"], float) / (100.0 * np.asarray(one["area"], float))
    assert np.all(np.abs(ratio - 1) < 0.05)  # the one source's sums: ~ sky level x area
