"""Plot helpers draw exactly the geometry they are given (Agg backend)."""

import subprocess
import sys

import numpy as np
import pytest

mpl = pytest.importorskip("matplotlib")
mpl.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import jaxphot  # noqa: E402

POS = np.array([[10.0, 12.0], [30.5, 7.25], [44.0, 40.0]])


@pytest.fixture
def ax():
    fig, ax = plt.subplots()
    yield ax
    plt.close(fig)


def test_circles_and_annuli_match_inputs(ax):
    r = np.array([2.0, 3.5, 5.0])
    arts = jaxphot.plot_apertures(ax, POS, r=r, r_in=6.0, r_out=9.0)
    assert len(arts) == 9 and len(ax.patches) == 9
    np.testing.assert_allclose([p.center for p in arts[:3]], POS)
    np.testing.assert_allclose([p.radius for p in arts], np.r_[r, [6.0] * 3, [9.0] * 3])


def test_ellipses_match_inputs(ax):
    a, b, th = np.array([4.0, 5, 6]), np.array([2.0, 1, 3]), np.array([0.0, 0.5, -1.0])
    arts = jaxphot.plot_apertures(ax, POS, shape="ellipse", a=a, b=b, theta=th, a_out=12.0, b_out=6.0)
    assert len(arts) == 6
    np.testing.assert_allclose([p.width for p in arts[:3]], 2 * a)
    np.testing.assert_allclose([p.height for p in arts[:3]], 2 * b)
    np.testing.assert_allclose([p.angle for p in arts[:3]], np.degrees(th))
    np.testing.assert_allclose([(p.width, p.height) for p in arts[3:]], [(24.0, 12.0)] * 3)


def test_rectangle_is_centred_and_rotated(ax):
    (p,) = jaxphot.plot_apertures(ax, POS[:1], shape="rectangle", w=6.0, h=2.0, theta=np.pi / 2)
    corners = p.get_patch_transform().transform([(0, 0), (1, 0), (1, 1), (0, 1)])
    np.testing.assert_allclose(corners.mean(axis=0), POS[0], atol=1e-9)  # centre stays put
    # rotated by 90 deg: the 6-pixel side now runs along y
    np.testing.assert_allclose(np.ptp(corners, axis=0), [2.0, 6.0], atol=1e-9)


def test_image_and_bad_input(ax):
    arts = jaxphot.plot_apertures(ax, POS, r=2.0, image=np.random.default_rng(0).normal(size=(50, 50)))
    assert len(arts) == 4 and len(ax.images) == 1
    with pytest.raises(ValueError, match="r"):
        jaxphot.plot_apertures(ax, POS, r=[1.0, 2.0])
    with pytest.raises(ValueError, match="shape"):
        jaxphot.plot_apertures(ax, POS, shape="hexagon", r=1.0)


def test_segments_one_outline_per_label(ax):
    lab = np.zeros((20, 20), int)
    lab[2:6, 3:9] = 1
    lab[10:15, 10:12] = 4
    arts = jaxphot.plot_segments(ax, lab)
    assert len(arts) == 2
    # the outline of segment 1 spans its pixel box (edges half a pixel out from the centres)
    verts = np.vstack([p.vertices for p in arts[0].get_paths()])
    np.testing.assert_allclose([verts[:, 0].min(), verts[:, 0].max()], [2.5, 8.5], atol=1e-9)
    np.testing.assert_allclose([verts[:, 1].min(), verts[:, 1].max()], [1.5, 5.5], atol=1e-9)


def test_light_curve_points(ax):
    t = np.linspace(0, 1, 25)
    f = 1 - 0.01 * (np.abs(t - 0.5) < 0.1)
    (line,) = jaxphot.plot_light_curve(ax, t, f)
    np.testing.assert_allclose(line.get_xydata(), np.c_[t, f])
    (cont,) = jaxphot.plot_light_curve(ax, t, f, flux_err=np.full(25, 0.002))
    np.testing.assert_allclose(cont.lines[0].get_ydata(), f)
    with pytest.raises(ValueError, match="flux_err"):
        jaxphot.plot_light_curve(ax, t, f, flux_err=np.ones(3))


def test_package_import_does_not_import_matplotlib():
    code = "import sys, jaxphot; jaxphot.plot_apertures; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _fake_ast(n=4000, seed=0):
    """AST-like table: 50 % completeness at mag 20, recovery only in the left half of the image."""
    from astropy.table import Table
    rng = np.random.default_rng(seed)
    t = Table()
    t["x_in"], t["y_in"] = rng.uniform(0, 99, n), rng.uniform(0, 99, n)
    t["mag_in"] = rng.uniform(17, 23, n)
    p = 1 / (1 + np.exp((t["mag_in"] - 20) / 0.3))
    t["recovered"] = t["matched"] = rng.uniform(size=n) < p
    t["flux_in"] = 10 ** (-0.4 * t["mag_in"])
    err = 0.02 * t["flux_in"]
    t["flux_fit"] = np.where(t["recovered"], t["flux_in"] + rng.normal(0, 1, n) * err, np.nan)
    t["flux_err"] = err
    t["mag"] = -2.5 * np.log10(t["flux_fit"])
    t.meta["shape"] = [100, 100]
    return t


def test_plot_ast_panels_show_the_table():
    t = _fake_ast()
    fig = plt.figure()
    out = jaxphot.plot_ast(fig, t, bins=0.5, grid=(2, 2))
    assert len(fig.axes) >= 4
    c = out["completeness"]
    np.testing.assert_allclose(out["comp_line"].get_ydata(), c["n_recovered"] / c["n"])
    np.testing.assert_allclose(out["dmag_line"].get_ydata(), c["dmag_median"])
    assert abs(c.meta["mag50"] - 20.0) < 0.1  # the logistic's midpoint
    # Pulls are unit normal by construction: the plotted width is ~1.
    ok = np.asarray(c["n_recovered"]) >= 30
    assert np.all(np.abs(out["pull_line"].get_ydata()[ok] - 1) < 0.35)
    # Map cell (iy, ix) is the recovered fraction of the stars in that quarter.
    iy, ix = (np.asarray(t["y_in"]) >= 49.5).astype(int), (np.asarray(t["x_in"]) >= 49.5).astype(int)
    want = [[np.asarray(t["recovered"])[(iy == a) & (ix == b)].mean() for b in (0, 1)] for a in (0, 1)]
    np.testing.assert_allclose(out["map"], want)
    np.testing.assert_allclose(out["map_image"].get_array(), want)
    with pytest.raises(ValueError, match="fig_or_axes"):
        jaxphot.plot_ast(fig.axes[:2], t)
    plt.close(fig)
