"""Detector keywords read with their units (jaxphot.io.read_header_value) and the CLI's use of them."""

import warnings

import numpy as np
import pytest
from astropy.io import fits

from jaxphot.cli import main
from jaxphot.io import header_gain, header_read_noise, header_saturation, read_header_value
from jaxphot.psf import GaussianPRF
from jaxphot.sim import simulate_cluster


def _hdr(**cards):
    h = fits.Header()
    for k, v in cards.items():
        h[k] = v
    return h


@pytest.mark.parametrize(
    "comment, expected",
    [
        ("[e-/ADU] detector gain", 2.0),
        ("electrons per ADU", 2.0),
        ("e/DN", 2.0),
        ("gain in ADU/e-", 0.5),  # inverted
        ("DN per electron", 0.5),
        ("", 2.0),  # no unit: the documented default, e-/ADU
        ("CCD gain", 2.0),
    ],
)
def test_gain_units_from_comment(comment, expected):
    h = _hdr(GAIN=(2.0, comment))
    hv = read_header_value(h, "gain", path="f.fits")
    assert hv.value == pytest.approx(expected)
    assert hv.unit == "e-/ADU" and hv.keyword == "GAIN"
    assert header_gain(h) == pytest.approx(expected)


@pytest.mark.parametrize(
    "cards, expected",
    [
        # ADU read noise times the gain in e-/ADU: 1.8 ADU x 2 = 3.6 e-
        ({"RDNOISE": (1.8, "read noise [ADU]"), "GAIN": (2.0, "e-/ADU")}, 3.6),
        # ... and with the gain given as ADU/e- (0.5 ADU/e- = 2 e-/ADU)
        ({"RDNOISE": (1.8, "readout noise in counts"), "GAIN": (0.5, "ADU/e-")}, 3.6),
        ({"RDNOISE": (4.5, "read noise (e-)"), "GAIN": 2.0}, 4.5),
        ({"READNOIS": (4.5, "electrons"), "GAIN": 2.0}, 4.5),
        ({"READNOIS": 4.5}, 4.5),  # no comment: e-
    ],
)
def test_read_noise_units(cards, expected):
    h = _hdr(**cards)
    hv = read_header_value(h, "read_noise")
    assert hv.value == pytest.approx(expected)
    assert hv.unit == "e-"
    assert header_read_noise(h) == pytest.approx(expected)


def test_header_with_neither():
    h = _hdr(OBJECT="M67", EXPTIME=30.0)
    for q in ("gain", "read_noise", "saturation"):
        hv = read_header_value(h, q)
        assert hv.value is None and hv.source == "none"
    assert header_gain(h) is None and header_read_noise(h) is None
    assert read_header_value(h, "exptime").value == 30.0
    assert read_header_value(None, "gain").value is None


def test_saturation_units():
    assert header_saturation(_hdr(SATURATE=60000.0)) == 60000.0  # image units
    assert header_saturation(_hdr(SATLEVEL=(50000.0, "ADU"))) == 50000.0
    # in electrons: divided by the gain (e-/ADU)
    h = _hdr(SATURATE=(120000.0, "saturation level [e-]"), GAIN=(2.0, "e-/ADU"))
    assert header_saturation(h) == pytest.approx(60000.0)
    assert header_saturation(_hdr(MAXLIN=(45000.0, "max linear"))) == 45000.0


@pytest.mark.parametrize(
    "cards, key, quantity",
    [({"GAIN": -2}, "GAIN", "gain"), ({"RDNOISE": "abc"}, "RDNOISE", "read_noise"),
     ({"SATURATE": 0.0}, "SATURATE", "saturation"), ({"GAIN": "nan"}, "GAIN", "gain"),
     ({"RDNOISE": -1.0}, "RDNOISE", "read_noise")],
)
def test_bad_values_warn_and_fall_back(cards, key, quantity):
    h = _hdr(**cards)
    with pytest.warns(UserWarning, match=rf"'img\.fits'.*{key}.*ignored"):
        hv = read_header_value(h, quantity, path="img.fits")
    assert hv.value is None and hv.source == "none"


def test_bad_value_falls_through_to_next_keyword():
    h = _hdr(GAIN=-2.0, CCDGAIN=(1.5, "e-/ADU"))
    with pytest.warns(UserWarning, match="GAIN"):
        hv = read_header_value(h, "gain", path="x.fits")
    assert hv.value == 1.5 and hv.keyword == "CCDGAIN"


def test_adu_read_noise_without_gain_warns():
    with pytest.warns(UserWarning, match="RDNOISE.*no usable gain"):
        assert header_read_noise(_hdr(RDNOISE=(2.0, "ADU")), path="x.fits") is None


# ---------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def small_field(tmp_path_factory):
    d = tmp_path_factory.mktemp("hdr")
    field = simulate_cluster((64, 64), 8, GaussianPRF(3.0), seed=2, margin=6)
    return d, field


def _write(d, name, data, **cards):
    path = d / name
    fits.PrimaryHDU(data.astype(np.float32), header=_hdr(**cards)).writeto(path, overwrite=True)
    return path


def test_cli_negative_read_noise_is_an_error(small_field, capsys):
    d, field = small_field
    path = _write(d, "a.fits", field.image)
    rc = main(["photometry", str(path), "--read-noise", "-5", "-o", str(d / "a.ecsv")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "error" in err and "--read-noise" in err and not (d / "a.ecsv").exists()


def test_cli_reports_units_and_sources(small_field, capsys):
    d, field = small_field
    path = _write(d, "b.fits", field.image, GAIN=(1.0, "e-/ADU"), RDNOISE=(2.5, "ADU"),
                  SATURATE=(1e6, "ADU"))
    assert main(["photometry", str(path), "-o", str(d / "b.ecsv"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "gain 1 e-/unit (header GAIN)" in err
    assert "read noise 2.5 e- (header RDNOISE (2.5 ADU x gain 1))" in err
    assert "saturation 1e+06 image units (header SATURATE)" in err
    # Options win, and say so.
    assert main(["photometry", str(path), "-o", str(d / "b.ecsv"), "--gain", "2",
                 "--read-noise", "4", "--saturation", "5e5", "--no-progress", "--overwrite"]) == 0
    err = capsys.readouterr().err
    assert "gain 2 e-/unit (option --gain)" in err and "read noise 4 e- (option --read-noise)" in err
    assert "saturation 500000 image units (option --saturation)" in err


def test_cli_read_noise_without_gain_says_unused(small_field, capsys):
    d, field = small_field
    path = _write(d, "c.fits", field.image)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about: the header is clean
        rc = main(["photometry", str(path), "--read-noise", "5", "-o", str(d / "c.ecsv"),
                   "--no-progress"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "read noise 5 e- (option --read-noise) not used: no gain" in err


def test_cli_bad_header_gain_warns(small_field, capsys):
    d, field = small_field
    path = _write(d, "e.fits", field.image, GAIN=-2.0, RDNOISE="abc")
    with pytest.warns(UserWarning) as rec:
        assert main(["photometry", str(path), "-o", str(d / "e.ecsv"), "--no-progress"]) == 0
    msgs = " | ".join(str(w.message) for w in rec)
    assert "GAIN = -2.0" in msgs and "RDNOISE = 'abc'" in msgs and "e.fits" in msgs
    assert "gain none" in capsys.readouterr().err


def test_cli_epsf_rejects_bad_saturation(small_field, capsys):
    d, field = small_field
    path = _write(d, "f.fits", field.image)
    assert main(["epsf", str(path), "--saturation", "-1", "-o", str(d / "p.fits")]) == 2
    assert "--saturation" in capsys.readouterr().err and not (d / "p.fits").exists()
