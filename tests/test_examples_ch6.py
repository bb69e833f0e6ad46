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
    full = _load("ch6_7_xray_clusters").run(small=False)  # 400 clusters: crossmatch is cheap
    assert full["n_false"] == 0 and full["n_missed"] == 0 and full["n_true"] == 120


def test_ch6_2_jupiter_moon_fluxes_within_1_percent(tmp_path):
    import numpy as np

    r = _load("ch6_2_jupiter_moons").run(small=True, outdir=tmp_path)
    np.testing.assert_allclose(r["flux"], r["true_flux"], rtol=0.01)
    assert (np.abs(r["flux"] - r["true_flux"]) < 5 * r["flux_err"]).all()  # pulls
    assert r["png"].exists()


def test_ch6_6_galaxy_kron_fluxes_within_3_percent_and_shapes_within_5(tmp_path):
    import numpy as np

    r = _load("ch6_6_galaxies").run(small=True, outdir=tmp_path)
    assert set(r["n"]) == {1.0, 4.0} and len(set(r["label"])) == len(r["n"])  # one segment each
    # Kron flux vs the noiseless model's flux inside the same aperture
    np.testing.assert_allclose(r["kron_flux"], r["true_flux_in_aperture"], rtol=0.03)
    # exponentials: the sky estimate is unbiased there, so the reported errors hold (pulls)
    exp = r["n"] == 1
    pull = (r["kron_flux"] - r["true_flux_in_aperture"]) / r["kron_flux_err"]
    assert (np.abs(pull[exp]) < 5).all()
    # the 2.5 x Kron aperture holds ~97 % of an exponential and ~85-90 % of an n=4 profile
    assert (r["kron_fraction"][exp] > 0.95).all() and (r["kron_fraction"][~exp] > 0.8).all()
    # shapes vs the noiseless model's moments in the same segment, and the input b/a and angle
    np.testing.assert_allclose(r["a"], r["a_ref"], rtol=0.05)
    np.testing.assert_allclose(r["b"], r["b_ref"], rtol=0.05)
    np.testing.assert_allclose(r["b"] / r["a"], r["q_true"], rtol=0.05)
    for th in (r["theta_ref"], r["theta_true"]):
        dth = (r["theta"] - th + np.pi / 2) % np.pi - np.pi / 2
        assert (np.abs(dth) < 0.05).all()  # rad
    assert r["png"].exists()


def test_ch6_1_sunspot_count_and_areas_within_3_percent(tmp_path):
    import numpy as np

    r = _load("ch6_1_sunspots").run(small=True, outdir=tmp_path)
    assert r["n_found"] == r["n_true"]  # every spot, nothing at the limb
    assert len(set(np.round(r["area_true"], 6))) == r["n_true"]  # one segment per true spot
    np.testing.assert_allclose(r["area"], r["area_true"], rtol=0.03)  # foreshortened pi rho^2 mu
    np.testing.assert_allclose(r["depth"], r["depth_true"], rtol=0.02)
    assert (r["offset"] < 0.5).all()  # px
    assert r["png"].exists()


def test_ch6_3_globular_cluster_completeness_and_flux_pulls(tmp_path):
    r = _load("ch6_3_globular_cluster").run(small=True, outdir=tmp_path)
    assert r["n_true_bright"] > 20
    assert r["completeness_bright"] >= 0.9
    assert r["spurious_fraction"] < 0.1
    assert abs(r["pull_median"]) < 0.3
    # the robust pull widths are 1 within their sampling errors (n ~ 10-25 stars each here)
    for k in ("isolated", "blended"):
        assert abs(r[f"pull_std_{k}"] - 1) < 3 * r[f"pull_std_{k}_err"] + 0.15
    assert r["pos_rms_bright"] < 0.3  # px, FWHM 4.2 px
    assert r["png"].exists()


def test_ch6_4_tess_transit_depth_within_10_percent_and_mid_time_within_one_cadence(
    tmp_path, shared_data
):
    d = shared_data("tess")
    mod = _load("ch6_4_tess_transit")
    for seed in (0, 1):  # two noise draws and mid-times
        r = mod.run(small=True, outdir=tmp_path, seed=seed, data_dir=d)
        assert abs(r["depth"] / r["depth_true"] - 1) < 0.10
        assert abs(r["t_mid"] - r["t_mid_true"]) < 1.0  # cadences
    assert r["png"].exists()
