"""variation="auto": the ePSF's spatial order chosen by cross-validation on held-out PSF stars."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from jaxphot.epsf import EPSFWarning
from jaxphot.epsf.variation import choose_variation, parse_variation
from jaxphot.sim.varying import simulate_varying_field

TRUE_DEGREE = {"constant": 0, "linear": 1, "quadratic": 2}


def _bright_field(kind: str, seed: int, shape=(384, 384), n=150):
    """A field of bright, mostly isolated stars whose PSF varies with a known order."""
    fld, _ = simulate_varying_field(shape, n, kind, snr_min=100.0, flux_ratio=20.0,
                                    cluster_fraction=0.0, margin=10.0, seed=seed)
    return fld, np.c_[fld.truth["x"], fld.truth["y"]]


def test_parse_variation():
    assert parse_variation("auto") == "auto"
    assert parse_variation(2) == 2 and parse_variation("1") == 1
    assert parse_variation("grid:3x4") == (3, 4) == parse_variation((3, 4))
    for bad in ("3", 3, "grid:0x2", "quadratic", True, None):
        with pytest.raises(ValueError, match="variation"):
            parse_variation(bad)


def test_auto_finds_quadratic_and_records_evidence():
    fld, pos = _bright_field("quadratic", seed=3)
    ch = choose_variation(fld.image, pos, shape=15, gain=fld.gain, oversampling=2, folds=4)
    assert ch.degree == 2, ch.summary()
    # the evidence: held-out chi2 of the true order clearly below the constant's
    assert ch.cv_chi2[2] < 0.9 * ch.cv_chi2[0]
    cards = dict((k, v) for k, v, _ in ch.header_cards())
    assert cards["VARDEG"] == 2 and cards["CVFOLDS"] == 4 and "CVCHI2_2" in cards


def test_too_few_stars_steps_down_with_warning():
    fld, pos = _bright_field("quadratic", seed=4, n=40)
    with pytest.warns(EPSFWarning, match="not tried"):
        ch = choose_variation(fld.image, pos[:30], shape=15, gain=fld.gain, oversampling=2,
                              folds=4)
    assert ch.degree <= 1  # 22 training stars cannot support 6 terms x 8 stars


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["constant", "linear", "quadratic"])
def test_auto_picks_true_order_nine_of_ten_seeds(kind):
    hits = []
    for seed in range(10):
        fld, pos = _bright_field(kind, seed=100 + seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EPSFWarning)
            ch = choose_variation(fld.image, pos, shape=15, gain=fld.gain, oversampling=2,
                                  folds=4)
        hits.append(ch.degree == TRUE_DEGREE[kind])
    assert sum(hits) >= 9, hits


def test_choice_and_evidence_written_to_fits_header(tmp_path):
    from astropy.io import fits

    from jaxphot.epsf.variation import VariationChoice
    from jaxphot.psf import read_psf_fits, write_psf_fits
    from jaxphot.sim.varying import varying_psf

    psf = varying_psf((128, 128), "linear", fwhm=2.5)
    ch = VariationChoice(1, "auto", {0: 30.5, 1: 12.25, 2: 12.5}, 5, 120, "test")
    object.__setattr__(psf, "variation", ch)
    write_psf_fits(psf, tmp_path / "p.fits")
    hdr = fits.getheader(tmp_path / "p.fits")
    assert hdr["VARIATN"] == "auto" and hdr["VARDEG"] == 1 and hdr["CVFOLDS"] == 5
    assert hdr["CVCHI2_0"] == 30.5 and hdr["CVCHI2_1"] == 12.25
    back = read_psf_fits(tmp_path / "p.fits")
    assert type(back).__name__ == "PolynomialPSF" and back.degree == 1


def test_cli_epsf_grid_variation(tmp_path):
    """``jaxphot epsf --variation grid:2x2`` writes a gridded ePSF (the CLI passes the parsed grid)."""
    from astropy.io import fits

    from jaxphot.cli import main
    from jaxphot.psf import read_psf_fits

    fld, _ = _bright_field("linear", seed=5, shape=(256, 256), n=120)
    hdr = fits.Header([("GAIN", fld.gain, "e-/ADU"), ("RDNOISE", fld.read_noise, "e-")])
    fits.PrimaryHDU(fld.image.astype(np.float32), header=hdr).writeto(tmp_path / "f.fits")
    with pytest.warns(EPSFWarning, match="grid lowered from 2x2"):  # too few stars per region
        rc = main(["epsf", str(tmp_path / "f.fits"), "--variation", "grid:2x2",
                   "-o", str(tmp_path / "p.fits")])
    assert rc == 0
    assert type(read_psf_fits(tmp_path / "p.fits")).__name__ == "GriddedPSF"
