"""The jaxphot command: photometry on a simulated FITS image, and one-line bad-input errors."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from jaxphot.cli import main
from jaxphot.psf import GaussianPRF
from jaxphot.sim import score, simulate_cluster


@pytest.fixture(scope="module")
def field_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    field = simulate_cluster((128, 128), 40, GaussianPRF(3.0), seed=4, margin=5)
    hdr = fits.Header()
    hdr["GAIN"] = 1.0
    hdr["RDNOISE"] = 5.0
    hdr["BUNIT"] = "ADU"
    hdr["CTYPE1"], hdr["CTYPE2"] = "RA---TAN", "DEC--TAN"
    hdr["CRVAL1"], hdr["CRVAL2"] = 150.0, 2.0
    hdr["CRPIX1"], hdr["CRPIX2"] = 64.0, 64.0
    hdr["CDELT1"], hdr["CDELT2"] = -1e-4, 1e-4
    path = d / "field.fits"
    fits.PrimaryHDU(field.image.astype(np.float32), header=hdr).writeto(path)
    return d, path, field


def test_photometry_command(field_file, capsys):
    d, path, field = field_file
    out, resid = d / "cat.ecsv", d / "resid.fits"
    rc = main(
        [
            "photometry",
            str(path),
            "--psf",
            "gaussian:fwhm=3",
            "-o",
            str(out),
            "--residual",
            str(resid),
        ]
    )
    assert rc == 0
    err = capsys.readouterr().err
    assert "gain 1 e-/unit" in err and "read noise 5 e-" in err and "BUNIT ADU" in err
    t = Table.read(out)
    assert {"ra", "dec", "flux_fit", "flags", "mag"} <= set(t.colnames)
    s = score(t, field.truth, radius=1.5)
    assert s["completeness_bright"] > 0.9
    r = fits.getdata(resid)
    assert r.shape == (128, 128)
    assert np.nanstd(r) < 1.3 * np.sqrt(100 + 25)
    # FITS catalog too.
    assert main(["photometry", str(path), "-o", str(d / "cat.fits"), "--no-progress"]) == 0
    assert len(Table.read(d / "cat.fits")) == len(t)


def _err_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no message"
    assert "Traceback" not in "\n".join(err)
    return err[-1]


@pytest.mark.parametrize(
    "case", ["unreadable", "missing_hdu", "all_nan", "tiny", "nan_psf", "bad_spec", "missing_file"]
)
def test_bad_input_messages(tmp_path, field_file, capsys, case):
    _, good, _ = field_file
    out = str(tmp_path / "c.ecsv")
    args = ["photometry", str(good), "-o", out]
    if case == "unreadable":
        junk = tmp_path / "junk.fits"
        junk.write_bytes(b"this is not a FITS file at all" * 10)
        args[1], expect = str(junk), "as FITS"
    elif case == "missing_hdu":
        args += ["--hdu", "3"]
        expect = "no HDU 3"
    elif case == "all_nan":
        p = tmp_path / "nan.fits"
        fits.PrimaryHDU(np.full((64, 64), np.nan, np.float32)).writeto(p)
        args[1], expect = str(p), "no finite"
    elif case == "tiny":
        p = tmp_path / "tiny.fits"
        fits.PrimaryHDU(np.ones((6, 6), np.float32)).writeto(p)
        args[1], expect = str(p), "smaller than the PSF"
    elif case == "nan_psf":
        p = tmp_path / "psf.fits"
        a = np.ones((17, 17), np.float32)
        a[3, 3] = np.nan
        fits.PrimaryHDU(a).writeto(p)
        args += ["--psf", str(p), "--oversampling", "2"]
        expect = "non-finite"
    elif case == "bad_spec":
        args += ["--psf", "gaussian:width=3"]
        expect = "unknown parameter"
    else:
        args[1], expect = str(tmp_path / "nope.fits"), "does not exist"
    rc = main(args)
    assert rc != 0
    line = _err_line(capsys)
    assert line.startswith("jaxphot: error:") and expect in line, line


def test_demo_command_small(tmp_path, capsys):
    rc = main(["demo", "-o", str(tmp_path), "--size", "128", "--nstars", "30", "--no-png"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "completeness above S/N 10" in out
    assert (tmp_path / "demo_catalog.ecsv").exists()


def test_no_command_and_usage_errors(capsys):
    assert main([]) == 2
    assert main(["photometry"]) == 2  # argparse: missing IMAGE and -o
    assert "usage" in capsys.readouterr().err
