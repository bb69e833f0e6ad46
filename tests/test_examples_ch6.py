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
