"""Property-based fuzzing of the public API and the CLI (issue 18).

Random shapes, dtypes (float32/64, int16, uint16, big-endian), NaN/inf patterns, masks,
positions (NaN, off-image, duplicated, none), PSF parameters and gain/read-noise values go
through ``fit_cutouts``, ``photometry``, ``find_stars``, ``estimate_background``,
``aperture_photometry``, ``build_epsf`` and ``jaxphot.cli.main``. The properties:

* no exception other than ValueError/TypeError, and its message names an argument;
* every input row comes back (one row per star given);
* every NaN result carries a non-zero flag;
* no output file equals an input, and an input file is never changed.

Cutouts are 11x11 and images 40x40 so that each fit compiles once. The fast suite runs a few
hundred cases (hypothesis profile ``jaxphot-fuzz-fast``, tests/conftest.py); the slow suite
(``JAXPHOT_FUZZ=slow pytest tests/test_fuzz.py -m slow``) runs >= 10^4 with the same fixed
seed (:data:`SEED`).
"""

from __future__ import annotations

import hashlib
import os
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from hypothesis import given, seed, settings
from hypothesis import strategies as st

import jaxphot as jp
from jaxphot.cli import main
from jaxphot.psf import GaussianPRF

SEED = 18  # the fixed seed of every fuzz run (fast and slow)
SLOW = os.environ.get("JAXPHOT_FUZZ", "") == "slow"
CUT = 11  # cutout side: one compiled shape for every fit
IMG = 40  # image side

# Cases per test: (fast, slow). The fast suite totals a few hundred, the slow one >= 10^4.
CASES = {
    "fit": (60, 2600),
    "photometry": (15, 300),
    "find_stars": (60, 2500),
    "background": (60, 2500),
    "aperture": (60, 2000),
    "epsf": (10, 150),
    "cli": (25, 600),
}


def _run(prop, strategies: dict, key: str, slow: bool) -> None:
    """Run ``prop`` under hypothesis with the profile's settings and CASES[key] examples."""
    profile = settings.get_profile("jaxphot-fuzz-slow" if slow else "jaxphot-fuzz-fast")
    n = CASES[key][1 if slow else 0]
    seed(SEED)(settings(profile, max_examples=n)(given(**strategies)(prop)))()


MODES = [pytest.param(False, id="fast"),
         pytest.param(True, id="slow", marks=[
             pytest.mark.slow,
             pytest.mark.skipif(not SLOW, reason="slow fuzz suite: set JAXPHOT_FUZZ=slow")])]


# ---------------------------------------------------------------------------- helpers
class Rejected(Exception):
    """The call raised a clean, named error: the case is finished."""


def _call(fn, names, *args, **kwargs):
    """``fn(*args, **kwargs)``, or Rejected when it raises a ValueError/TypeError whose message
    names one of ``names``; any other exception fails the property."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(*args, **kwargs)
    except (ValueError, TypeError) as exc:
        msg = str(exc).lower()
        assert any(n.lower() in msg for n in names), f"message names no argument: {exc!r}"
        raise Rejected from None


def _nan_rows_flagged(t: Table, cols) -> None:
    """Every row with a NaN in one of ``cols`` has non-zero flags."""
    nan = np.zeros(len(t), bool)
    for c in cols:
        if c in t.colnames:
            v = np.asarray(t[c], float)
            nan |= np.isnan(v) if v.ndim == 1 else np.isnan(v).any(axis=tuple(range(1, v.ndim)))
    flags = np.asarray(t["flags"])
    flags = flags if flags.ndim == 1 else np.bitwise_or.reduce(flags, axis=tuple(range(1, flags.ndim)))
    bad = nan & (flags == 0)
    assert not bad.any(), f"rows {np.nonzero(bad)[0][:10]} have NaN values and flags 0"


DTYPES = [np.float64, np.float32, np.int16, np.uint16, ">f8", ">f4", ">i2"]
NONFINITE = st.sampled_from([np.nan, np.inf, -np.inf])


@st.composite
def images(draw, shape, sky_max=200.0):
    """An image or stack: a sky, a few Gaussian stars, noise, then a NaN/inf pattern, cast
    to a random dtype (integers are rounded and clipped to the type's range)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["stars", "stars", "stars", "constant", "zeros", "noise", "huge"]))
    sky = draw(st.floats(0.0, sky_max))
    h, w = shape[-2:]
    yy, xx = np.mgrid[:h, :w]
    a = np.full(shape, sky)
    if kind == "stars":
        for _ in range(draw(st.integers(0, 4))):
            x0, y0 = rng.uniform(-2, w + 1), rng.uniform(-2, h + 1)
            s = rng.uniform(0.6, 3.0)
            a = a + rng.uniform(10, 5e3) * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * s * s))
        a = a + rng.normal(0, max(1.0, np.sqrt(sky)), shape)
    elif kind == "zeros":
        a = np.zeros(shape)
    elif kind == "noise":
        a = rng.normal(0, draw(st.sampled_from([1e-6, 1.0, 1e4])), shape)
    elif kind == "huge":
        a = a + rng.normal(0, 1, shape) * 1e30
    pattern = draw(st.sampled_from(["none", "none", "pixels", "row", "column", "all", "corner"]))
    if min(h, w) == 0:
        pattern = "none"
    bad = draw(NONFINITE)
    if pattern == "pixels":
        a[rng.random(shape) < draw(st.floats(0.0, 0.5))] = bad
    elif pattern == "row":
        a[..., rng.integers(h), :] = bad
    elif pattern == "column":
        a[..., rng.integers(w)] = bad
    elif pattern == "all":
        a[...] = bad
    elif pattern == "corner":
        a[..., : h // 2, : w // 2] = bad
    dt = np.dtype(draw(st.sampled_from(DTYPES)))
    if dt.kind in "iu":
        info = np.iinfo(dt)
        a = np.clip(np.nan_to_num(np.rint(a), nan=0, posinf=info.max, neginf=info.min),
                    info.min, info.max)
    with np.errstate(over="ignore", invalid="ignore"):
        return a.astype(dt)


@st.composite
def masks(draw, shape):
    kind = draw(mostly(st.sampled_from(["none", "random", "int"]), "all", "wrong_shape"))
    if kind == "none":
        return None
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "random":
        return rng.random(shape) < draw(st.floats(0.0, 0.9))
    if kind == "all":
        return np.ones(shape, bool)
    if kind == "int":
        return (rng.random(shape) < 0.2).astype(np.int16)
    return np.zeros((shape[-2] + 1, shape[-1]), bool)


def mostly(good, *bad):
    """``good`` (a strategy or a constant) four times in five, else one of ``bad``."""
    g = good if isinstance(good, st.SearchStrategy) else st.just(good)
    if not bad:
        return g
    # An explicit choice: hypothesis' one_of favours its first branches.
    return st.tuples(st.integers(0, 9), g, st.sampled_from(bad)).map(
        lambda t: t[2] if t[0] in (4, 5) else t[1])


def coordinate(lo, hi):
    """One coordinate: inside [lo, hi], off the image, or not finite."""
    return st.one_of(st.floats(lo, hi), st.floats(lo, hi), st.floats(lo, hi), NONFINITE,
                     st.sampled_from([-50.0, hi + 30.0, -0.6, hi + 0.6, 1e12]))


GAINS = mostly(st.one_of(st.none(), st.floats(0.1, 10.0)), 0.0, -2.0, np.nan, np.inf, "abc", "2.5")
READ_NOISE = mostly(st.one_of(st.none(), st.floats(0.0, 20.0)), -5.0, np.nan, np.inf, "abc", "3")


def psfs():
    """A PSF: a GaussianPRF of random FWHM (bad ones too), a spec string, None or junk."""
    fwhm = st.one_of(st.floats(0.5, 6.0), st.sampled_from([0.0, -1.0, np.nan, np.inf, 0.05, 50.0]))
    return st.one_of(
        fwhm.map(lambda f: ("object", f)), fwhm.map(lambda f: ("object", f)),
        st.sampled_from([("spec", "gaussian:fwhm=2.5"), ("spec", "gaussian:fwhm=-1"),
                         ("spec", "gaussian:sigma=2"), ("spec", "moffat:fwhm=3,beta=2.5"),
                         ("spec", "nonsense"), ("none", None), ("junk", 3.0)]),
    )


def _make_psf(spec):
    kind, v = spec
    if kind == "object":
        return _call(GaussianPRF, ["fwhm"], v)
    return v


# ---------------------------------------------------------------------------- fit_cutouts
FIT_NAMES = ["data", "psf", "x", "y", "flux", "error", "mask", "gain", "read_noise", "fwhm",
             "active", "max_iter", "origin", "bkg"]


@st.composite
def fit_cases(draw):
    n = draw(st.sampled_from([0, 1, 2, 3, 5]))
    k = draw(st.sampled_from([1, 1, 2]))
    data = draw(images((n, CUT, CUT)))
    xs = np.array(draw(st.lists(coordinate(0.0, CUT - 1.0), min_size=n * k, max_size=n * k)),
                  float).reshape(n, k)
    ys = np.array(draw(st.lists(coordinate(0.0, CUT - 1.0), min_size=n * k, max_size=n * k)),
                  float).reshape(n, k)
    if k == 2 and n and draw(st.booleans()):  # duplicated positions
        xs[:, 1], ys[:, 1] = xs[:, 0], ys[:, 0]
    shape_err = draw(st.sampled_from(["ok", "ok", "ok", "ok", "short_y", "flat"]))
    if shape_err == "short_y" and n:
        ys = ys[:-1]
    elif shape_err == "flat":
        xs = xs.ravel()
        ys = ys.ravel()
    err_kind = draw(st.sampled_from(["none", "none", "none", "scalar", "map", "zeros", "negative"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    error = {"none": None, "scalar": draw(st.sampled_from([1.0, 0.0, -1.0, np.nan])),
             "map": rng.uniform(0.5, 3.0, (n, CUT, CUT)), "zeros": np.zeros((n, CUT, CUT)),
             "negative": -np.ones((CUT, CUT))}[err_kind]
    if err_kind == "map" and draw(st.booleans()):
        error[..., 3] = np.nan
    return dict(data=data, x=xs, y=ys, psf=draw(psfs()), error=error,
                mask=draw(masks((n, CUT, CUT))), gain=draw(GAINS), read_noise=draw(READ_NOISE),
                background=draw(st.sampled_from(["plane", "constant", None])))


def _prop_fit(case):
    try:
        psf = _make_psf(case.pop("psf"))
        res = _call(jp.fit_cutouts, FIT_NAMES, case.pop("data"), psf, case["x"], case["y"],
                    error=case["error"], mask=case["mask"], gain=case["gain"],
                    read_noise=case["read_noise"], background=case["background"], max_iter=8)
    except Rejected:
        return
    t = res.to_table()
    assert len(t) == np.size(case["x"])  # every input star comes back
    _nan_rows_flagged(t, ["x_fit", "y_fit", "flux_fit", "x_err", "y_err", "flux_err"])


@pytest.mark.parametrize("slow", MODES)
def test_fuzz_fit_cutouts(slow):
    _run(_prop_fit, {"case": fit_cases()}, "fit", slow)


# ---------------------------------------------------------------------------- photometry
PHOT_NAMES = ["image", "psf", "mask", "error", "gain", "read_noise", "init_params", "fwhm",
              "background", "background_box", "saturation", "threshold"]


@st.composite
def phot_cases(draw):
    img = draw(images((IMG, IMG), sky_max=100.0))
    init = draw(st.sampled_from(["detect", "detect", "table", "empty"]))
    init_params = None
    if init == "table":
        m = draw(st.integers(1, 5))
        x = draw(st.lists(coordinate(0.0, IMG - 1.0), min_size=m, max_size=m))
        y = draw(st.lists(coordinate(0.0, IMG - 1.0), min_size=m, max_size=m))
        if m > 1 and draw(st.booleans()):
            x[-1], y[-1] = x[0], y[0]
        init_params = Table({"x": x, "y": y})
    elif init == "empty":
        init_params = Table({"x": np.zeros(0), "y": np.zeros(0)})
    return dict(image=img, psf=draw(st.sampled_from([("object", 2.5), ("object", 2.5),
                                                    ("spec", "gaussian:fwhm=2.5"),
                                                    ("object", 0.05), ("none", None)])),
                mask=draw(masks((IMG, IMG))), gain=draw(GAINS), read_noise=draw(READ_NOISE),
                init_params=init_params,
                background_box=draw(mostly(st.sampled_from([16, 200]), 0, -3)))


def _prop_photometry(case):
    init = case["init_params"]
    try:
        t = _call(jp.photometry, PHOT_NAMES, case["image"], _make_psf(case["psf"]),
                  mask=case["mask"], gain=case["gain"], read_noise=case["read_noise"],
                  init_params=init, background_box=case["background_box"], maxiters=2,
                  max_iter=10, fit_half=4)
    except Rejected:
        return
    if init is not None:
        assert len(t) >= len(init)  # every given row comes back, in order
        np.testing.assert_array_equal(np.asarray(t["x_init"][: len(init)]), np.asarray(init["x"]))
    for c in ("x_fit", "y_fit", "flux_fit", "flags"):
        assert c in t.colnames
    _nan_rows_flagged(t, ["x_fit", "y_fit", "flux_fit", "flux_err"])


@pytest.mark.parametrize("slow", MODES)
def test_fuzz_photometry(slow):
    _run(_prop_photometry, {"case": phot_cases()}, "photometry", slow)


# ---------------------------------------------------------------------------- find_stars
@st.composite
def find_cases(draw):
    shape = draw(mostly(st.sampled_from([(IMG, IMG), (IMG, 24)]), (5, 5), (1, 30), (0, 10), (2, 3, 4)))
    return dict(data=draw(images(shape)) if len(shape) != 3 else np.zeros(shape),
                fwhm=draw(mostly(st.floats(0.5, 4.0), 0.0, -1.0, np.nan, 100.0)),
                threshold=draw(mostly(st.sampled_from([5.0, 3.0, 1e9]), 0.0, -1.0, np.nan)),
                mask=draw(masks(shape[-2:])) if len(shape) == 2 else None,
                method=draw(mostly(st.sampled_from(["daofind", "peak", "iraf"]), "bogus")),
                gain=draw(GAINS), rms=draw(mostly(st.sampled_from([None, 1.0]), 0.0, -1.0, np.nan)))


def _prop_find(case):
    try:
        t = _call(jp.find_stars, ["data", "fwhm", "threshold", "mask", "method", "gain", "rms",
                                  "image"], case.pop("data"), case.pop("fwhm"), **case)
    except Rejected:
        return
    assert isinstance(t, Table)
    for c in ("x_centroid", "y_centroid", "flux"):
        assert c in t.colnames, f"no {c} column in {t.colnames}"
    x, y = np.asarray(t["x_centroid"], float), np.asarray(t["y_centroid"], float)
    assert np.all(np.isfinite(x) & np.isfinite(y))  # a detection has a position


@pytest.mark.parametrize("slow", MODES)
def test_fuzz_find_stars(slow):
    _run(_prop_find, {"case": find_cases()}, "find_stars", slow)


# ---------------------------------------------------------------------------- estimate_background
@st.composite
def bkg_cases(draw):
    shape = draw(mostly(st.sampled_from([(IMG, IMG), (IMG, 24)]), (7, 9), (1, 40), (0, 5)))
    return dict(data=draw(images(shape)),
                box_size=draw(mostly(st.sampled_from([8, 16, (8, 16), 1000]), 0, -4, 2.5, (0, 8))),
                filter_size=draw(mostly(st.sampled_from([3, 1, 5, (3, 1)]), 0, -1)),
                mask=draw(masks(shape)),
                sigma=draw(mostly(3.0, 0.0, -1.0, np.nan)))


def _prop_background(case):
    shape = case["data"].shape
    try:
        b = _call(jp.estimate_background, ["data", "box_size", "filter_size", "mask", "sigma",
                                           "image"], case.pop("data"), **case)
    except Rejected:
        return
    level, rms = np.asarray(b.level), np.asarray(b.rms)
    assert level.shape == rms.shape == shape
    assert np.all(np.isfinite(level)) and np.all(np.isfinite(rms) & (rms >= 0))


@pytest.mark.parametrize("slow", MODES)
def test_fuzz_estimate_background(slow):
    _run(_prop_background, {"case": bkg_cases()}, "background", slow)


# ---------------------------------------------------------------------------- aperture_photometry
@st.composite
def ap_cases(draw):
    n = draw(st.sampled_from([0, 1, 3, 6]))
    pos = np.c_[draw(st.lists(coordinate(0.0, IMG - 1.0), min_size=n, max_size=n)),
                draw(st.lists(coordinate(0.0, IMG - 1.0), min_size=n, max_size=n))]
    pos = pos.reshape(n, 2)
    if n > 1 and draw(st.booleans()):
        pos[-1] = pos[0]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ann = draw(mostly(st.sampled_from([(None, None), (6.0, 10.0)]), (10.0, 6.0), (6.0, None)))
    return dict(data=draw(images((IMG, IMG))), positions=pos,
                r=draw(mostly(st.sampled_from([3.0, [2.0, 4.0], 100.0]), 0.0, -1.0, np.nan)),
                r_in=ann[0], r_out=ann[1], mask=draw(masks((IMG, IMG))),
                error=draw(mostly(st.sampled_from([None, 1.0, "map"]), -1.0, 0.0, np.nan)),
                gain=draw(GAINS), read_noise=draw(READ_NOISE), rng=rng)


def _prop_aperture(case):
    rng = case.pop("rng")
    if isinstance(case["error"], str):
        case["error"] = rng.uniform(0.5, 2.0, (IMG, IMG))
    n = len(case["positions"])
    try:
        t = _call(jp.aperture_photometry, ["data", "positions", "r", "r_in", "r_out", "mask",
                                           "error", "gain", "read_noise"],
                  case.pop("data"), case.pop("positions"), case.pop("r"), **case)
    except Rejected:
        return
    assert len(t) == n
    # Without error or gain there is no noise model: flux_err is NaN by design, on every row.
    noise = case["error"] is not None or case["gain"] is not None
    _nan_rows_flagged(t, ["flux", "flux_err"] if noise else ["flux"])


@pytest.mark.parametrize("slow", MODES)
def test_fuzz_aperture_photometry(slow):
    _run(_prop_aperture, {"case": ap_cases()}, "aperture", slow)


# ---------------------------------------------------------------------------- build_epsf
@st.composite
def epsf_cases(draw):
    n = draw(st.sampled_from([0, 1, 6]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.uniform(5, IMG - 6, n)
    y = rng.uniform(5, IMG - 6, n)
    if n and draw(st.booleans()):
        x[0] = draw(NONFINITE)
    img = np.full((IMG, IMG), 10.0)
    yy, xx = np.mgrid[:IMG, :IMG]
    for xi, yi in zip(x, y, strict=True):
        if np.isfinite(xi):
            img += 1e3 * np.exp(-((xx - xi) ** 2 + (yy - yi) ** 2) / (2 * 1.2**2))
    img = img + rng.normal(0, 1, img.shape)
    kind = draw(st.sampled_from(["ok", "ok", "nan", "int16"]))
    if kind == "nan":
        img[rng.random(img.shape) < 0.3] = np.nan
    elif kind == "int16":
        img = np.rint(img).astype(">i2")
    positions = draw(st.sampled_from(["table", "table", "array", "nocols"]))
    pos = {"table": Table({"x": x, "y": y}), "array": np.c_[x, y],
           "nocols": Table({"u": x, "v": y})}[positions]
    return dict(image=img, positions=pos, oversampling=draw(mostly(2, 0, -1, 2.5)),
                shape=draw(mostly(9, 0, 4, 8)), gain=draw(GAINS))


def _prop_epsf(case):
    try:
        psf = _call(jp.build_epsf, ["image", "positions", "oversampling", "shape", "gain",
                                    "stars", "x", "y", "min_stars"],
                    case.pop("image"), case.pop("positions"), min_stars=3, maxiters=3, **case)
    except Rejected:
        return
    a = np.asarray(psf.array if hasattr(psf, "array") else psf.evaluate(4.0, 4.0, (9, 9)))
    assert np.all(np.isfinite(a)) and a.sum() > 0


@pytest.mark.parametrize("slow", MODES)
def test_fuzz_build_epsf(slow):
    _run(_prop_epsf, {"case": epsf_cases()}, "epsf", slow)


# ---------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    """A 40x40 image with three stars (float32, big-endian on disk), a truncated copy, a
    text file and an error map."""
    d = tmp_path_factory.mktemp("fuzzcli")
    rng = np.random.default_rng(SEED)
    yy, xx = np.mgrid[:IMG, :IMG]
    img = 50 + rng.normal(0, 3, (IMG, IMG))
    for x0, y0 in ((10, 12), (25, 28), (30, 8)):
        img += 2e3 * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 1.1**2))
    fits.PrimaryHDU(img.astype(">f4")).writeto(d / "img.fits")
    fits.PrimaryHDU(np.full((IMG, IMG), 3.0)).writeto(d / "err.fits")
    fits.PrimaryHDU(np.zeros((IMG, IMG))).writeto(d / "zeroerr.fits")
    raw = (d / "img.fits").read_bytes()
    (d / "trunc.fits").write_bytes(raw[: len(raw) - 3000])
    (d / "text.fits").write_text("not a FITS file\n")
    return d


CLI_INPUTS = ("img.fits", "err.fits", "zeroerr.fits", "trunc.fits", "text.fits")


def _digest(folder):
    """SHA-1 of each input file of :func:`cli_files` (outputs written next to them, such as a
    batch summary, are not inputs)."""
    return {n: hashlib.sha1((folder / n).read_bytes()).hexdigest() for n in CLI_INPUTS}


OPTIONS = {  # option -> values to draw (strings as typed on a command line)
    "--gain": ["2", "0", "-2", "nan", "inf", "abc", "1e-30"],
    "--read-noise": ["3", "0", "-5", "nan", "x"],
    "--background-box": ["16", "0", "-1", "3.5", "1000"],
    "--threshold": ["5", "0", "-1", "nan"],
    "--maxiters": ["1", "0", "-2"],
    "--psf": ["gaussian:fwhm=2.6", "gaussian:fwhm=0", "moffat:fwhm=3", "bogus", "{d}/img.fits",
              "{d}/missing.fits"],
    "--oversampling": ["2", "0", "-1"],
    "--saturation": ["1e5", "0", "-1", "nan"],
    "--error": ["{d}/err.fits", "{d}/zeroerr.fits", "{d}/text.fits"],
    "--hdu": ["0", "1", "SCI", "-1"],
}


@st.composite
def cli_cases(draw):
    cmd = draw(st.sampled_from(["photometry", "photometry", "photometry", "epsf", "batch", "bogus"]))
    image = draw(st.sampled_from(["{d}/img.fits", "{d}/img.fits", "{d}/trunc.fits",
                                  "{d}/text.fits", "{d}/missing.fits", "{d}"]))
    out = draw(st.sampled_from(["{d}/out/cat.ecsv", "{d}/out/cat.fits", "{d}/img.fits",
                                "{d}/out/cat.txt", "{d}/nofolder/cat.ecsv", "{d}/err.fits",
                                "{d}/out"]))
    opts = draw(st.lists(st.sampled_from(sorted(OPTIONS)), max_size=3, unique=True))
    argv = [cmd, image]
    if cmd == "batch":
        argv += ["--outdir", draw(st.sampled_from(["{d}/out", "{d}", "{d}/img.fits"]))]
    else:
        argv += ["-o", out]
    for o in opts:
        argv += [o, draw(st.sampled_from(OPTIONS[o]))]
    if cmd == "photometry":
        argv += ["--maxiters", "1", "--no-progress"] if "--maxiters" not in opts else ["--no-progress"]
        if draw(st.booleans()):
            argv += [draw(st.sampled_from(["--residual", "--model"])),
                     draw(st.sampled_from(["{d}/out/res.fits", "{d}/img.fits", "{d}/out/cat.ecsv"]))]
    if draw(st.booleans()):
        argv.append("--overwrite")
    return argv


def _prop_cli(files, capsys, argv):
    out = files / "out"
    out.mkdir(exist_ok=True)
    for p in list(out.iterdir()) + [p for p in files.iterdir() if p.name not in CLI_INPUTS]:
        if p.is_file():  # every case starts from the inputs alone
            p.unlink()
    argv = [a.replace("{d}", str(files)) for a in argv]
    before = _digest(files)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rc = main(argv)
    except SystemExit as exc:  # argparse's own usage errors exit 2
        rc = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    after = _digest(files)
    named_in = {argv[1]} | {argv[i + 1] for i, a in enumerate(argv[:-1])
                            if a in ("--error", "--mask", "--psf")}
    for n in CLI_INPUTS:
        if after[n] != before[n]:  # only an output, and only with --overwrite, may change
            assert str(files / n) not in named_in, f"an input changed: {argv}"
            assert "--overwrite" in argv, f"{n} replaced without --overwrite: {argv}"
    if rc == 1 and argv[0] == "batch":  # documented: some image failed, the others went on
        assert any(line.startswith("jaxphot: failed: ") for line in err), err
        return
    assert rc in (0, 2), f"exit {rc} for {argv}: {err[-1:] if err else ''}"
    if rc == 2 and argv[0] in ("photometry", "epsf", "batch"):
        assert err and ("error" in err[-1]), f"no one-line error for {argv}: {err}"
    if rc == 0 and argv[0] != "batch":
        written = list(out.iterdir()) + [files / n for n in CLI_INPUTS if after[n] != before[n]]
        assert written, f"exit 0 but nothing written for {argv}"
        assert not {str(p) for p in written} & named_in


@pytest.mark.parametrize("slow", MODES)
def test_fuzz_cli(slow, cli_files, capsys):
    def prop(argv):
        _prop_cli(cli_files, capsys, argv)

    _run(prop, {"argv": cli_cases()}, "cli", slow)
