"""`jaxphot ast`: completeness of a simulated FITS field, outputs checked first, one-line errors."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from jaxphot.cli import main
from jaxphot.psf import GaussianPRF
from jaxphot.sim import simulate_cluster


@pytest.fixture(scope="module")
def field_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_ast")
    field = simulate_cluster((128, 128), 80, GaussianPRF(3.0), snr_min=2.0, flux_ratio=200.0,
                             cluster_fraction=0.0, seed=7, margin=4)
    hdr = fits.Header()
    hdr["GAIN"], hdr["RDNOISE"] = 1.0, 5.0
    path = d / "field.fits"
    fits.PrimaryHDU(field.image.astype(np.float32), header=hdr).writeto(path)
    return d, path, field


def test_ast_command(field_file, capsys):
    pytest.importorskip("matplotlib")
    d, path, field = field_file
    out, png = d / "ast.ecsv", d / "ast.png"
    fr = [str(float(field.truth["flux"].min())), str(float(field.truth["flux"].max()))]
    rc = main(["ast", str(path), "-n", "150", "--flux-range", *fr, "-o", str(out),
               "--plot", str(png), "--bins", "0.5", "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    t = Table.read(out)
    assert len(t) == 150 and {"mag_in", "recovered", "mag", "flux_err"} <= set(t.colnames)
    # Bright injected stars come back at their magnitude; the faintest (S/N ~ 2) mostly do not.
    bright = t["mag_in"] < np.percentile(t["mag_in"], 30)
    faint = t["mag_in"] > np.percentile(t["mag_in"], 85)
    assert np.mean(t["recovered"][bright]) > 0.9 and np.mean(t["recovered"][faint]) < 0.5
    dm = (t["mag"] - t["mag_in"])[bright & t["recovered"]]
    assert np.abs(np.median(dm)) < 0.02
    assert "mag50" in cap.out and "completeness" in cap.out
    m50 = float(cap.out.split("mag50")[1].split()[0])
    assert t["mag_in"].min() < m50 < t["mag_in"].max()
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    # Outputs exist: refused before any work, unless --overwrite.
    rc = main(["ast", str(path), "-n", "5", "-o", str(out), "--no-progress"])
    assert rc == 2 and "overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("args, word", [
    (["-n", "0"], "n-stars"),
    (["--flux-range", "10", "1"], "flux_range"),
    (["--bins", "-1"], "bins"),
    (["--psf", "nonsense"], "psf"),
])
def test_ast_bad_input_one_line(field_file, capsys, args, word):
    d, path, _ = field_file
    rc = main(["ast", str(path), "-o", str(d / "bad.ecsv"), "--no-progress", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("jaxphot: error:") and word in err[-1], err
    assert not (d / "bad.ecsv").exists()
