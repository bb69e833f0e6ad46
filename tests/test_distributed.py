"""jaxphot.scale and ``jaxphot batch``: Dask batch photometry (identical to a sequential loop,
resumable, failure-isolated), atomic catalogs, tiling with seam de-duplication, and the CLI glue.

One 2-worker LocalCluster is shared by the module (starting one costs seconds).
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

distributed = pytest.importorskip("distributed")

from jaxphot import photometry  # noqa: E402
from jaxphot.cli.batch import add_batch_subcommand, run_batch_cli  # noqa: E402
from jaxphot.psf import GaussianPRF  # noqa: E402
from jaxphot.scale.files import ERRORS_NAME, SUMMARY_NAME, atomic_write_table, catalog_path  # noqa: E402
from jaxphot.scale.images import batch  # noqa: E402
from jaxphot.scale.tiling import drop_seam_duplicates, photometry_tiled  # noqa: E402
from jaxphot.sim import simulate_cluster  # noqa: E402

N_GOOD = 3
OPTS = dict(maxiters=2, threshold=5.0)


def _write(path, image):
    hdr = fits.Header()
    hdr["GAIN"], hdr["RDNOISE"] = 1.0, 5.0
    fits.PrimaryHDU(image.astype(np.float32), header=hdr).writeto(path)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    for i in range(N_GOOD):
        _write(d / f"field_{i}.fits", simulate_cluster((64, 64), 8, seed=10 + i, margin=4).image)
    (d / "broken.fits").write_bytes(b"SIMPLE  =                    T / not really FITS\n" * 3)
    return d


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


@pytest.fixture(scope="module")
def runs(images, client, tmp_path_factory):
    """The same images sequentially in this process and through the 2-worker cluster."""
    seq_dir = tmp_path_factory.mktemp("seq")
    dask_dir = tmp_path_factory.mktemp("dask")
    # Sequential first: it compiles in this process and fills the persistent cache, which the
    # workers then read instead of compiling again.
    seq = batch(str(images / "*.fits"), "gaussian:fwhm=3", seq_dir, workers=0, **OPTS)
    par = batch(str(images / "*.fits"), "gaussian:fwhm=3", dask_dir, scheduler=client, **OPTS)
    return seq, seq_dir, par, dask_dir


def _same_catalogs(a: Table, b: Table) -> bool:
    if a.colnames != b.colnames or len(a) != len(b):
        return False
    for c in a.colnames:
        u, v = np.asarray(a[c]), np.asarray(b[c])
        if not np.array_equal(u, v, equal_nan=u.dtype.kind == "f"):
            return False
    return True


def test_cluster_matches_sequential_and_isolates_failure(runs, images):
    seq, seq_dir, par, dask_dir = runs
    for summary, outdir in ((seq, seq_dir), (par, dask_dir)):
        status = dict(zip(summary["image"], summary["status"], strict=True))
        assert status[str(images / "broken.fits")] == "failed"
        assert [status[str(images / f"field_{i}.fits")] for i in range(N_GOOD)] == ["ok"] * N_GOOD
        bad = summary[summary["status"] == "failed"][0]
        assert "FITS" in bad["error"] and bad["n_stars"] == -1
        assert summary.meta["n_ok"] == N_GOOD and summary.meta["n_failed"] == 1
        # The summary and the tracebacks are on disk; no temporary files are left behind.
        on_disk = Table.read(outdir / SUMMARY_NAME)
        assert list(on_disk["status"]) == list(summary["status"])
        assert "broken.fits" in (outdir / ERRORS_NAME).read_text()
        assert not [p for p in os.listdir(outdir) if ".tmp-" in p]
        assert not catalog_path(images / "broken.fits", outdir).exists()
    # The work was spread over both worker processes.
    ok = par[par["status"] == "ok"]
    assert len(set(ok["worker"])) == 2
    for i in range(N_GOOD):
        a = Table.read(catalog_path(images / f"field_{i}.fits", seq_dir))
        b = Table.read(catalog_path(images / f"field_{i}.fits", dask_dir))
        assert len(a) >= 2  # real catalogs with stars in them
        assert np.all(np.isfinite(a["flux_fit"][a["flags"] == 0]))
        assert _same_catalogs(a, b), f"field_{i}: cluster catalog differs from sequential"
        assert a.meta["image"] == str(images / f"field_{i}.fits")


def test_second_run_skips_finished_images(runs, images, client):
    _, _, _, dask_dir = runs
    cats = [catalog_path(images / f"field_{i}.fits", dask_dir) for i in range(N_GOOD)]
    before = [c.stat().st_mtime_ns for c in cats]
    again = batch(str(images / "*.fits"), "gaussian:fwhm=3", dask_dir, scheduler=client, **OPTS)
    status = dict(zip(again["image"], again["status"], strict=True))
    assert [status[str(images / f"field_{i}.fits")] for i in range(N_GOOD)] == ["skipped"] * 3
    assert status[str(images / "broken.fits")] == "failed"  # retried, fails again
    assert [c.stat().st_mtime_ns for c in cats] == before  # untouched
    # An interrupted run: one catalog missing and a stale temporary file.
    kept = Table.read(cats[1])
    cats[1].unlink()
    (dask_dir / f".{cats[1].stem}.tmp-1-deadbeef.ecsv").write_text("partial")
    third = batch(str(images / "*.fits"), "gaussian:fwhm=3", dask_dir, scheduler=client, **OPTS)
    status = dict(zip(third["image"], third["status"], strict=True))
    assert [status[str(images / f"field_{i}.fits")] for i in range(N_GOOD)] == [
        "skipped",
        "ok",
        "skipped",
    ]
    assert _same_catalogs(kept, Table.read(cats[1]))
    assert not [p for p in os.listdir(dask_dir) if ".tmp-" in p]


def test_cli_batch_in_process(runs, images, capsys):
    _, seq_dir, _, _ = runs
    ap = argparse.ArgumentParser(prog="jaxphot")
    add_batch_subcommand(ap.add_subparsers(dest="command"))
    good = [str(images / f"field_{i}.fits") for i in range(N_GOOD)]
    a = ap.parse_args(["batch", *good, "--outdir", str(seq_dir), "--workers", "0"])
    assert run_batch_cli(a) == 0  # all finished already: skipped, exit 0
    assert "3 skipped, 0 failed" in capsys.readouterr().err
    a = ap.parse_args(["batch", str(images / "*.fits"), "--outdir", str(seq_dir), "--workers", "0"])
    assert run_batch_cli(a) == 1  # the broken image fails: exit 1, named on stderr
    assert "broken.fits" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no images match"):
        batch(str(images / "*.nothing"), "gaussian:fwhm=3", seq_dir, workers=0)
    with pytest.raises(ValueError, match="psf"):
        batch(good, "gaussian:sigma=3", seq_dir, workers=0)


def test_atomic_write_leaves_no_partial_catalog(tmp_path, monkeypatch):
    import jaxphot.io as io

    t = Table({"x": [1.0, 2.0]})
    target = tmp_path / "cat.ecsv"

    def broken(table, path, overwrite=True):
        open(path, "w").write("# %ECSV 1.0\n# trunc")  # a crash half-way through writing
        raise OSError("disk full")

    monkeypatch.setattr(io, "write_catalog", broken)
    with pytest.raises(OSError):
        atomic_write_table(t, target)
    assert os.listdir(tmp_path) == []  # neither the catalog nor the temporary file
    monkeypatch.undo()
    atomic_write_table(t, target)
    assert list(Table.read(target)["x"]) == [1.0, 2.0]


def test_seam_duplicates_keep_the_deeper_copy():
    # Tiles 0: x in [0, 80), 1: x in [40, 120) (extended boxes y0, y1, x0, x1); a star at the
    # seam x = 59.5 was fitted by both, at 59.45 (tile 0) and 59.55 (tile 1).
    boxes = [(0, 100, 0, 80), (0, 100, 40, 120)]
    t = Table(
        {
            "x_fit": [59.45, 59.55, 10.0, 100.0],
            "y_fit": [50.0, 50.0, 50.0, 50.0],
            "x_init": [59.0, 60.0, 10.0, 100.0],
            "y_init": [50.0] * 4,
            "tile": [0, 1, 0, 1],
        }
    )
    out, n = drop_seam_duplicates(t, boxes, radius=1.5)
    assert n == 1 and len(out) == 3
    # 59.45 is 19.55 px from tile 0's edge at 79; 59.55 is 19.55 from tile 1's edge at 40:
    # a tie keeps the first. Move the copy of tile 1 deeper and it wins.
    t["x_fit"][1] = 59.9
    out, n = drop_seam_duplicates(t, boxes, radius=1.5)
    assert n == 1 and 59.9 in list(out["x_fit"]) and 59.45 not in list(out["x_fit"])
    # Two stars of the same tile are never merged here (that is photometry's MERGED logic).
    t["tile"] = [0, 0, 0, 1]
    assert drop_seam_duplicates(t, boxes, radius=1.5)[1] == 0


def test_tiled_photometry_matches_whole_image():
    field = simulate_cluster((96, 96), 16, seed=5, margin=4)
    psf = GaussianPRF(3.0)
    kw = dict(background=field.sky, gain=field.gain, read_noise=field.read_noise, **OPTS)
    whole = photometry(field.image, psf, **kw)
    tiled = photometry_tiled(field.image, psf, tile_size=48, **kw)
    assert tiled.meta["n_tiles"] == 4
    assert len(set(tiled["tile"])) >= 3  # stars came from several tiles
    assert list(tiled["id"]) == list(range(1, len(tiled) + 1))
    good = whole[whole["flags"] == 0]
    xt, yt = np.asarray(tiled["x_fit"]), np.asarray(tiled["y_fit"])
    for r in good:
        d = np.hypot(xt - r["x_fit"], yt - r["y_fit"])
        j = int(np.nanargmin(d))
        assert d[j] < 0.05, (r["x_fit"], r["y_fit"], d[j])
        assert abs(tiled["flux_fit"][j] / r["flux_fit"] - 1) < 0.01
    # No star twice: nothing closer than the merge separation.
    xy = np.c_[xt, yt][np.isfinite(xt)]
    dmin = np.min(np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1)) + 1e9 * np.eye(len(xy)))
    assert dmin > 0.5 * 3.0
    assert abs(len(tiled) - len(whole)) <= 1
