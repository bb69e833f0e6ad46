"""The chapter-6 examples recover their simulated truth at small sizes."""

import importlib.util
from pathlib import Path

EX = Path(__file__).resolve().parent.parent / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EX / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ch6_7_xray_clusters_mutual_best_match_is_exact(tmp_path):
    r = _load("ch6_7_xray_clusters").run(small=True, outdir=tmp_path)
    assert r["found_pairs"] == r["true_pairs"]  # every true pair, no false one
    assert r["n_false"] == 0 and r["n_missed"] == 0
    assert (r["sep_arcsec"] < 60).all()
    assert r["png"].exists()


def test_ch6_2_jupiter_moon_fluxes_within_1_percent(tmp_path):
    import numpy as np

    r = _load("ch6_2_jupiter_moons").run(small=True, outdir=tmp_path)
    np.testing.assert_allclose(r["flux"], r["true_flux"], rtol=0.01)
    assert (np.abs(r["flux"] - r["true_flux"]) < 5 * r["flux_err"]).all()  # pulls
    assert r["png"].exists()
