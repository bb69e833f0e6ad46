"""ePSF building: truth recovery, photometry with the ePSF, bad input, star selection, real data."""

import warnings

import numpy as np
import pytest

from jaxphot.core.fit import fit_cutouts
from jaxphot.epsf import (
    ApertureCorrection,
    EPSFWarning,
    aperture_correction,
    build_epsf,
    build_epsf_from_image,
    select_stars,
)
from jaxphot.image.render import render_image
from jaxphot.psf import DiscretePSF, MoffatPSF, read_wfc3_uvis_grid
from jaxphot.psf.kernels import bspline_prefilter
from jaxphot.sim.cutouts import add_noise

# build_epsf settings for the WFC3/UVIS library PSF (25 px wide): a 21 px box, and the aperture
# correction measured within 12.5 sqrt(2) = 17.7 px, which holds all of the PSF's light.
WFC3_BUILD = dict(
    shape=21,
    gain=1.0,
    normalize="aperture",
    aperture_radius=17.7,
    aperture_annulus=(19.0, 26.0),
    return_stars=True,
)


def _field(psf, n, shape=(1024, 1024), flux=(2e4, 5e5), sky=100.0, rn=5.0, seed=0, sep=20.0):
    """Stars on a jittered grid (isolated by >= sep px), Poisson + read noise, gain 1."""
    rng = np.random.default_rng(seed)
    h, w = shape
    k = int(np.ceil(np.sqrt(n)))
    gx, gy = np.meshgrid(np.linspace(30, w - 31, k), np.linspace(30, h - 31, k))
    step = min((w - 61) / max(k - 1, 1), (h - 61) / max(k - 1, 1))
    jit = max(0.0, (step - sep) / 2)
    pts = np.stack([gx.ravel(), gy.ravel()], 1)[rng.permutation(k * k)[:n]]
    pts = pts + rng.uniform(-jit, jit, pts.shape) + rng.uniform(0, 1, pts.shape)
    f = np.exp(rng.uniform(np.log(flux[0]), np.log(flux[1]), n))
    expected = render_image(psf, pts[:, 0], pts[:, 1], f, shape, stamp=41) + sky
    return add_noise(expected, rn, 1.0, rng), pts, f


def _truth_samples(psf, m, s=4, pedestal=False):
    """The truth's PRF at the ePSF sample offsets, normalised like an ePSF (sum s^2).

    With ``pedestal=True`` the level of the box's 2-pixel rim is subtracted first: what
    ``build_epsf`` defines as the ePSF (the stars' sky is their rim median), which matters for
    PSFs with extended wings (WFC3: 2.4 % of the flux in the 21 px box lies under the rim level).
    """
    n, h = s * m + 1, m // 2
    yy, xx = np.mgrid[0:n, 0:n] / s - m / 2
    # sample j = s q + r sits at offset q - h - (0.5 - r/s): pixel q of a star at h + 0.5 - r/s,
    # so one (m+1)^2 image per sub-pixel phase pair gives all the samples of that phase
    v = np.zeros((n, n))
    for ry in range(s):
        for rx in range(s):
            img = np.asarray(psf.evaluate(h + 0.5 - rx / s, h + 0.5 - ry / s, (m + 1, m + 1)))
            v[ry::s, rx::s] = img[: len(range(ry, n, s)), : len(range(rx, n, s))]
    if pedestal:
        v = v - np.median(v[np.maximum(np.abs(xx), np.abs(yy)) >= m / 2 - 2])
    return v / v.sum() * s * s, np.hypot(xx, yy)


def _core_rms(epsf, truth, r, radius):
    a = epsf.array
    return np.sqrt(np.mean((a - truth)[r <= radius] ** 2)) / truth.max()


def _photometry(img, pts, psf, size=11, seed=7):
    c = size // 2
    ox, oy = np.rint(pts[:, 0]).astype(int) - c, np.rint(pts[:, 1]).astype(int) - c
    cut = img[
        oy[:, None, None] + np.arange(size)[None, :, None],
        ox[:, None, None] + np.arange(size)[None, None, :],
    ]
    xl, yl = pts[:, 0] - ox, pts[:, 1] - oy
    rng = np.random.default_rng(seed)
    # a spatially varying PSF is evaluated at each cutout's own position
    kw = {"origin": np.stack([ox, oy], 1).astype(float)} if hasattr(psf, "at") else {}
    r = fit_cutouts(
        cut,
        psf,
        xl + rng.normal(0, 0.05, len(xl)),
        yl + rng.normal(0, 0.05, len(xl)),
        gain=1.0,
        read_noise=5.0,
        **kw,
    )
    return r, xl, yl


def _pulls(r, xl, yl, f):
    """Pull standard deviations and the median magnitude offset against the true fluxes."""
    fx, fe = r.flux_fit[:, 0], r.flux_err[:, 0]
    dx, dy = r.x_fit[:, 0] - xl, r.y_fit[:, 0] - yl
    return dict(
        dmag=float(np.median(-2.5 * np.log10(fx / f))),
        flux=float(np.std((fx - f) / fe)),
        x=float(np.std((dx - np.median(dx)) / r.x_err[:, 0])),
        y=float(np.std((dy - np.median(dy)) / r.y_err[:, 0])),
    )


def _eval_field(truth, shape=(1024, 1024)):
    """2000 stars (flux 1e3-3e4) for photometry pulls: their std has a sampling error ~0.016."""
    return _field(truth, 2000, shape=shape, flux=(1e3, 3e4), seed=2, sep=16)


def _assert_like_truth(got, tol=0.07):
    """Requirement 1: pull std 1.00 +- 0.07 and |dmag| <= 0.005 (with the true PSF, the same
    fields give flux/x/y pull std 0.99-1.03; measured values are quoted at each test)."""
    assert abs(got["dmag"]) < 0.005, got
    for k in ("flux", "x", "y"):
        assert abs(got[k] - 1.0) < tol, got


def test_undersampled_epsf_from_50_stars_matches_truth():
    """FWHM 1.5 px, 4x oversampled ePSF from 50 stars at random phases (requirement 2).

    Measured 2026-11-21: core rms 0.11 %, dmag +0.0009, pulls flux/x/y 1.010/1.008/1.023."""
    truth = MoffatPSF(1.5, 4.0)
    img, pts, f = _field(truth, 50, shape=(512, 512), seed=1)
    start = pts + np.random.default_rng(5).normal(0, 0.1, pts.shape)
    psf, stars = build_epsf(img, start, oversampling=4, shape=15, gain=1.0, return_stars=True)
    assert isinstance(psf, DiscretePSF) and psf.integrated and psf.oversampling == 4
    assert abs(psf.array.sum() - 16.0) < 1e-3
    tv, r = _truth_samples(truth, 15)
    assert _core_rms(psf, tv, r, 3.0) < 0.005  # measured 0.12 %
    assert np.sum(stars["status"] == "used") >= 45
    # fitted star positions agree with the truth (constant offset = centring convention)
    used = stars["status"] == "used"
    d = np.asarray(stars["x_fit"] - pts[:, 0])[used]
    assert np.std(d) < 0.02

    # photometry of an independent field as good as with the true PSF (requirement 1). The
    # Moffat prior removes the phase-dependent (S-curve) position bias that a plain curvature
    # penalty put in (4-6 mpx, pulls 1.05-1.37 before); measured pulls flux/x/y ~1.01/1.05/1.02,
    # true PSF 0.99/1.02/1.00 on a 2048^2 version of this field.
    img2, pts2, f2 = _eval_field(truth)
    _assert_like_truth(_pulls(*_photometry(img2, pts2, psf), f2))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [2, 3])
def test_undersampled_epsf_100_stars_seeds(seed):
    """Requirement 2 on other realisations (100 stars; measured x/y pulls 1.03/1.01)."""
    truth = MoffatPSF(1.5, 4.0)
    img, pts, f = _field(truth, 100, shape=(740, 740), seed=seed)
    start = pts + np.random.default_rng(5).normal(0, 0.1, pts.shape)
    psf = build_epsf(img, start, shape=15, gain=1.0)
    tv, r = _truth_samples(truth, 15)
    assert _core_rms(psf, tv, r, 3.0) < 0.005
    img2, pts2, f2 = _eval_field(truth)
    _assert_like_truth(_pulls(*_photometry(img2, pts2, psf), f2))


@pytest.mark.slow
def test_well_sampled_moffat_200_stars():
    """FWHM 3 px, aperture-corrected from the stars. Measured 2026-11-21 (1400^2 evaluation
    field): core rms 0.24 %, dmag -0.0016, pulls flux/x/y 0.986/1.031/1.025."""
    truth = MoffatPSF(3.0, 4.0)
    img, pts, f = _field(truth, 200, seed=3, sep=26)
    psf, stars = build_epsf(
        img,
        pts + np.random.default_rng(5).normal(0, 0.1, pts.shape),
        shape=21,
        gain=1.0,
        normalize="aperture",
        aperture_radius=15.0,
        return_stars=True,
    )
    tv, r = _truth_samples(truth, 21)
    assert _core_rms(psf, tv * psf.array.sum() / 16, r, 3.0) < 0.01
    # the Moffat's wings under the rim level (~0.3 % of its flux) are measured by the aperture
    # correction from the PSF stars (15 px holds 99.99 % of this Moffat's light)
    assert 1.0 < stars.meta["apcor"] < 1.006 and stars.meta["apcor_err"] < 5e-4
    img2, pts2, f2 = _eval_field(truth, (1400, 1400))
    _assert_like_truth(_pulls(*_photometry(img2, pts2, psf, size=15), f2))


@pytest.mark.slow
def test_wfc3_psf_constant(shared_data):
    """WFC3/UVIS F814W (FWHM 1.9 px, sharp core, extended wings), 200 stars.

    The ePSF is the PRF above the 21 px box's rim level, ~96 % of the WFC3 PSF's flux (2.4 %
    under the rim level, 0.8 % outside the box). That aperture correction is measured from the
    PSF stars themselves (large-aperture / ePSF-fitted flux, no knowledge of the truth) and
    folded into the ePSF (``normalize="aperture"``): the library PSF is 25 px wide, so a radius
    of 12.5 sqrt(2) = 17.7 px holds all its light. Measured 2026-11-21 (1400^2 evaluation field,
    build seeds 4/5): dmag -0.001/-0.001, pulls flux 0.999/1.011, x 1.047/1.063, y 1.010/1.005
    (true PSF 1.005/1.013/0.993); core rms 0.18/0.20 % vs the rim-subtracted truth. The x pulls
    carry a pixel-phase S-curve of ~4 mpx (see ``build_epsf``'s ``smoothness``). It does not
    shrink with 800 stars (x 1.046) and grows with a weaker prior (smoothness 3e-4: x 1.14-1.20).
    """
    with pytest.warns(UserWarning, match="corrupt PSFs"):
        grid = read_wfc3_uvis_grid(shared_data("hst_wfc3_psf") / "emp_psf_f814w_4x.npy")
    truth = grid.psf_at(2048.0, 1000.0)
    img, pts, f = _field(truth, 200, seed=4, sep=26)
    psf, stars = build_epsf(img, pts + np.random.default_rng(5).normal(0, 0.1, pts.shape), **WFC3_BUILD)
    apcor = stars.meta["apcor"]
    assert 1.03 < apcor < 1.05 and stars.meta["apcor_err"] < 1e-3
    assert abs(psf.array.sum() - 16.0 / apcor) < 1e-3
    tp, r = _truth_samples(truth, 21, pedestal=True)
    assert _core_rms(psf, tp / apcor, r, 3.0) < 0.005
    img2, pts2, f2 = _eval_field(truth, (1400, 1400))
    _assert_like_truth(_pulls(*_photometry(img2, pts2, psf, size=15), f2))


@pytest.mark.slow
def test_wfc3_psf_constant_lowpass_prior(shared_data):
    """As above with ``prior="lowpass"``, which leaves the diffraction-limited WFC3 PRF alone and
    damps only the S-curve band. Measured 2026-11-21: core rms 0.15 %, dmag -0.0005, pulls
    0.990 / 1.019 / 0.999 (true PSF 1.005 / 1.013 / 0.993; Moffat prior 0.999 / 1.047 / 1.010),
    7 iterations."""
    with pytest.warns(UserWarning, match="corrupt PSFs"):
        grid = read_wfc3_uvis_grid(shared_data("hst_wfc3_psf") / "emp_psf_f814w_4x.npy")
    truth = grid.psf_at(2048.0, 1000.0)
    img, pts, f = _field(truth, 200, seed=4, sep=26)
    start = pts + np.random.default_rng(5).normal(0, 0.1, pts.shape)
    psf, stars = build_epsf(img, start, prior="lowpass", **WFC3_BUILD)
    assert stars.meta["iterations"] <= 12
    tp, r = _truth_samples(truth, 21, pedestal=True)
    assert _core_rms(psf, tp / stars.meta["apcor"], r, 3.0) < 0.0025
    img2, pts2, f2 = _eval_field(truth, (1400, 1400))
    _assert_like_truth(_pulls(*_photometry(img2, pts2, psf, size=15), f2), tol=0.04)


@pytest.mark.slow
def test_spatially_varying_moffat_degree_2():
    """Moffat FWHM 2.6 -> 3.4 px across a 2048^2 field (5 x 5 grid of truths), 200 stars.

    Measured (seeds 1/2, 2048^2 evaluation field): core rms 0.11/0.10 % (centre), 0.17-0.30 %
    (corners); apcor 1.0048/1.0044; dmag -0.0013/-0.0011; pulls flux 0.99/0.99, x 0.97/0.97,
    y 1.02/1.02 (true PSF 0.99/0.97/1.02); build 12-13 s. Seed 1 again 2026-11-21, with the
    core-fit origin: core rms 0.18 % (centre), 0.22-0.47 % (corners), dmag -0.0013, pulls
    0.994/0.974/1.023 (default smoothness 1e-2 for
    degree > 0; with 1e-3 the y pulls were 1.08-1.11).
    """
    from jaxphot.psf import GriddedPSF, PolynomialPSF

    g = np.linspace(0, 2047, 5)
    arrs = np.array(
        [[_truth_samples(MoffatPSF(2.6 + 0.8 * (x + y) / 4094, 4.0), 31)[0] for x in g] for y in g]
    )
    truth = GriddedPSF(arrs, g, g, 4)
    img, pts, f = _field(truth, 200, shape=(2048, 2048), seed=1, sep=26)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EPSFWarning)  # stars at the edge
        psf = build_epsf(
            img,
            pts + np.random.default_rng(5).normal(0, 0.1, pts.shape),
            shape=21,
            gain=1.0,
            degree=2,
            normalize="aperture",
            aperture_radius=15.0,
        )
    assert isinstance(psf, PolynomialPSF) and psf.degree == 2
    for x, y in ((1024, 1024), (100, 100), (1948, 100), (100, 1948), (1948, 1948)):
        tv, r = _truth_samples(truth.psf_at(x, y), 21)
        e = psf.psf_at(x, y)
        assert _core_rms(e, tv * e.array.sum() / 16, r, 3.0) < 0.01, (x, y)
    img2, pts2, f2 = _eval_field(truth, (2048, 2048))
    _assert_like_truth(_pulls(*_photometry(img2, pts2, psf, size=15), f2))


def test_aperture_correction_recovers_flux_scale():
    """Fluxes known to be 0.9 x the truth: the correction is 1/0.9 within its error."""
    truth = MoffatPSF(2.0, 4.0)
    img, pts, f = _field(truth, 60, shape=(600, 600), seed=9, sep=40)
    ac = aperture_correction(img, pts[:, 0], pts[:, 1], 0.9 * f, 10.0, gain=1.0)
    assert isinstance(ac, ApertureCorrection) and ac.annulus == (12.0, 17.0)
    assert ac.used.sum() >= 55 and 0 < ac.error < 1e-3
    # r = 10 px holds 99.96 % of this Moffat's light
    assert abs(ac.value - 0.9996 / 0.9) < 4 * ac.error
    # one star with a wrong flux is clipped; a star off the image is unusable (NaN ratio)
    ff = 0.9 * f
    ff[0] *= 2.0
    xs = pts[:, 0].copy()
    xs[1] = -50.0
    ac2 = aperture_correction(img, xs, pts[:, 1], ff, 10.0, gain=1.0)
    assert not ac2.used[0] and np.isnan(ac2.ratio[1]) and abs(ac2.value - ac.value) < 1e-3
    with pytest.raises(ValueError, match="radius must be > 0"):
        aperture_correction(img, pts[:, 0], pts[:, 1], f, 0.0)
    with pytest.raises(ValueError, match="annulus"):
        aperture_correction(img, pts[:, 0], pts[:, 1], f, 10.0, annulus=(8.0, 12.0))
    with pytest.raises(ValueError, match="no star usable"):
        aperture_correction(img, pts[:, 0] + 1e4, pts[:, 1], f, 10.0)


def test_bad_input_reported():
    truth = MoffatPSF(2.0, 4.0)
    img, pts, f = _field(truth, 12, shape=(200, 200), seed=6, sep=30)
    edge = np.array([[3.0, 100.0], [197.0, 50.0]])
    img_nan = img.copy()
    ix, iy = np.rint(pts[0]).astype(int)
    img_nan[iy, ix] = np.nan
    with pytest.warns(EPSFWarning, match="2 too close to the image edge"):
        build_epsf(img, np.vstack([pts, edge]), shape=11, maxiters=2)
    with pytest.warns(EPSFWarning, match="1 with NaN, masked or zero-error pixels in its core"):
        psf, st = build_epsf(img_nan, pts, shape=11, maxiters=2, return_stars=True)
    assert st["status"][0] == "bad core"
    with pytest.warns(EPSFWarning, match="saturated"):
        build_epsf(img, pts, shape=11, maxiters=2, saturation=np.sort(img.ravel())[-3])
    with pytest.raises(ValueError, match="too few usable PSF stars: 2 of 4.*2 too close to the image edge"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EPSFWarning)
            build_epsf(img, np.vstack([pts[:2], edge]), shape=11)
    with pytest.warns(EPSFWarning, match="degree lowered from 2 to 1"):
        build_epsf(img, pts, shape=11, degree=2, maxiters=1, min_stars=5)
    with pytest.raises(ValueError, match="shape must be odd"):
        build_epsf(img, pts, shape=10)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        build_epsf(img, pts[:, 0])
    with pytest.raises(ValueError, match="normalize must be"):
        build_epsf(img, pts, shape=11, normalize="peak")
    # an aperture no star's fits on the image: a warning and the box's own flux scale
    with pytest.warns(EPSFWarning, match="no aperture correction"):
        psf, st = build_epsf(img, pts, shape=11, maxiters=2, normalize="aperture",
                             aperture_radius=150.0, return_stars=True)
    assert st.meta["normalize"] == "sum" and "apcor" not in st.meta
    assert abs(psf.array.sum() - 16.0) < 1e-3


def test_select_stars_isolated_bright_spread():
    from astropy.table import Table

    rng = np.random.default_rng(0)
    x, y = rng.uniform(20, 480, 300), rng.uniform(20, 480, 300)
    f = np.exp(rng.uniform(0, 8, 300))
    # a bright pair: neither is isolated
    x[:2], y[:2], f[:2] = [100.0, 104.0], [100.0, 100.0], [1e6, 5e5]
    cat = Table({"x_centroid": x, "y_centroid": y, "flux": f, "snr": np.sqrt(f) * 10})
    sel = select_stars(np.zeros((500, 500)), cat, shape=11, n_max=40, min_snr=20)
    assert 0 < len(sel) <= 40
    assert not np.any(np.isin(np.asarray(sel["x_centroid"]), x[:2]))
    sx, sy = np.asarray(sel["x_centroid"]), np.asarray(sel["y_centroid"])
    d = np.hypot(sx[:, None] - x[None], sy[:, None] - y[None])
    close = (
        (d < 11 / 2 * np.sqrt(2)) & (d > 0) & (f[None] > 0.01 * np.asarray(sel["flux"])[:, None])
    )
    assert not close.any()
    # spread: every quadrant is represented
    assert len({(int(a > 250), int(b > 250)) for a, b in zip(sx, sy, strict=True)}) == 4


def test_build_epsf_from_image_end_to_end():
    truth = MoffatPSF(2.0, 4.0)
    img, pts, f = _field(truth, 80, shape=(600, 600), seed=8, sep=24)
    psf, stars = build_epsf_from_image(
        img, oversampling=4, gain=1.0, normalize="aperture", return_stars=True
    )
    m = int(round((psf.array.shape[0] - 1) / 4))
    tv, r = _truth_samples(truth, m)
    assert (stars["status"] == "used").sum() >= 40
    # aperture-corrected: the samples sum to s^2 / apcor, the light above the rim level of an
    # 11 px box, most of a Moffat(beta=4)'s (the default aperture, r = 11 px, holds 99.96 %)
    apcor = stars.meta["apcor"]
    assert 1.0 < apcor < 1.02 and abs(psf.array.sum() - 16.0 / apcor) < 1e-3
    assert _core_rms(psf, tv / apcor, r, 3.0) < 0.01


def test_aperture_normalised_epsf_gives_total_fluxes():
    """A PSF with wings beyond the ePSF's box: fluxes fitted with the default ("sum") ePSF fall
    short of the truth by the light under the box's rim level; aperture-corrected, they are the
    total within a few per mille."""
    from astropy.table import Table

    from jaxphot import photometry

    truth = MoffatPSF(2.0, 2.5)  # 2.9 % of the light beyond 5.5 px, 0.4 % beyond 11 px
    img, pts, f = _field(truth, 80, shape=(600, 600), seed=3, sep=24)
    init = Table({"x": pts[:, 0], "y": pts[:, 1], "flux": f})
    ratio = {}
    for norm in ("sum", "aperture"):
        psf = build_epsf_from_image(img, oversampling=4, gain=1.0, shape=11, normalize=norm)
        cat = photometry(img, psf, gain=1.0, read_noise=5.0, init_params=init, detection=False,
                         progress=False)
        ratio[norm] = float(np.median(np.asarray(cat["flux_fit"]) / f))
    assert ratio["sum"] < 0.95, ratio  # measured 0.909
    assert 0.99 < ratio["aperture"] < 1.005, ratio  # 0.995: the 0.4 % beyond 11 px is not restored


@pytest.mark.slow
def test_spitzer_encircled_energy(shared_data):
    """Real data: the ePSF's encircled energy matches IRAC ch2's PSF within 3 % at 2-6 px."""
    from astropy.io import fits

    d = shared_data("spitzer_glimpse")
    img = fits.getdata(d / "spitzer_example_image.fits").astype(float)
    psf = build_epsf_from_image(img, fwhm_guess=1.4, oversampling=4, shape=15)
    ref = DiscretePSF(fits.getdata(d / "irac_ch2_flight.fits").astype(float), 4, integrated=False)
    ee_ours, ee_ref = _encircled(psf), _encircled(ref)
    for rad in (2, 3, 4, 5, 6):
        assert abs(ee_ours[rad] / ee_ref[rad] - 1) < 0.03, (rad, ee_ours[rad], ee_ref[rad])


def _encircled(psf, size=41):
    """EE(r) (r = 2..6 px) of a PSF for a star at a pixel centre, normalised at r = 7 px."""
    c = size // 2
    img = np.asarray(psf.evaluate(float(c), float(c), (size, size)))
    yy, xx = np.mgrid[0:size, 0:size]
    r = np.hypot(xx - c, yy - c)
    tot = img[r <= 7].sum()
    return {k: img[r <= k].sum() / tot for k in range(2, 7)}


def test_fwhm_estimate_moffat():
    # adaptive moments about a local sky: measured 2.21 px for FWHM 2 (plain 9 x 9 moments: 2.59)
    from jaxphot.epsf.selection import _estimate_fwhm
    from jaxphot.image.background import estimate_background

    img, _, _ = _field(MoffatPSF(2.0, 4.0), 80, shape=(600, 600), seed=8, sep=24)
    bad = ~np.isfinite(img)
    bkg = estimate_background(img, box_size=64)
    got = _estimate_fwhm(img - np.asarray(bkg.level), np.asarray(bkg.rms), bad)
    assert 1.9 < got < 2.35, got


@pytest.mark.slow
def test_spitzer_fwhm_estimate(shared_data):
    # crowded, nebulous field: measured 1.88 px (ePSF FWHM 1.7-1.9); plain moments gave 2.70
    from astropy.io import fits

    from jaxphot.epsf.selection import _estimate_fwhm
    from jaxphot.image.background import estimate_background

    d = shared_data("spitzer_glimpse")
    img = fits.getdata(d / "spitzer_example_image.fits").astype(float)
    bad = ~np.isfinite(img)
    bkg = estimate_background(np.where(bad, np.nan, img), box_size=64)
    got = _estimate_fwhm(img - np.asarray(bkg.level), np.asarray(bkg.rms), bad)
    assert 1.6 < got < 2.1, got


def test_subtract_neighbours_removes_neighbours_not_psf_stars():
    from jaxphot.epsf.selection import _subtract_neighbours

    truth = MoffatPSF(2.0, 4.0)
    psf_xy = np.array([[30.3, 30.6], [70.8, 40.2]])
    nb_xy = np.array([[35.1, 27.9], [66.4, 43.5]])
    xy = np.concatenate([psf_xy, nb_xy])
    f = np.array([1e5, 8e4, 2e4, 1e4])
    img = render_image(truth, xy[:, 0], xy[:, 1], f, (64, 100), stamp=41)
    ref = DiscretePSF(_truth_samples(truth, 15)[0], 4, integrated=True)
    out = _subtract_neighbours(img, np.zeros(img.shape, bool), ref, psf_xy, xy, (15, 15), 3.0)
    alone = render_image(truth, psf_xy[:, 0], psf_xy[:, 1], f[:2], (64, 100), stamp=41)
    # what is left is the PSF stars alone, to ~1e-3 of the neighbours' flux
    assert np.abs(out - alone).sum() < 2e-3 * f[2:].sum()


def test_pin_fixes_the_core_centre_and_centre_free_variation_terms():
    """Pinning puts the core-fit centre at the origin and takes the centre shift out of the
    variation terms (to first order), whatever the wings do.

    A Gaussian core (FWHM 2 px) 0.1 px off the origin with a faint wing blob 4 px to one side:
    after ``_pin`` the core-fit centre is at the origin (the first moment is not: the blob pulls
    it by ~40 mpx), and a variation term that only moves the core by 20 mpx has no centre shift
    left.
    """
    from jaxphot.epsf._pin import _centroid, _core_centre, pin_psf
    from jaxphot.psf.kernels import spline_samples as _samples

    s, m = 4, 15
    n = s * m + 1
    u = (np.arange(n) - (n - 1) / 2) / s
    uu, vv = np.meshgrid(u, u)
    sig = 2.0 / 2.3548

    def gauss(x0, y0):
        return np.exp(-0.5 * ((uu - x0) ** 2 + (vv - y0) ** 2) / sig**2)

    core = gauss(0.1, -0.05)
    blob = 0.02 * core.sum() / (np.pi * 2 * 1.5**2) * np.exp(-0.5 * ((uu - 4) ** 2 + vv**2) / 1.5**2)
    term1 = gauss(0.1, -0.03) - core  # the core moving by +20 mpx in y per unit field coordinate
    start = np.stack([bspline_prefilter(core + blob).ravel(), bspline_prefilter(term1).ravel()])
    c, fwhm = pin_psf(start, s, n, centre=True)
    s0 = _samples(c[0].reshape(n, n), "bspline3")
    radius = max(1.2 * fwhm * s, 1.5 * s)  # as _pin chose it
    got = _core_centre(s0, s, radius)
    assert max(abs(got.x), abs(got.y)) / s < 1e-5
    assert abs(_centroid(s0, radius)[0] / s) > 0.02  # the wing pulls the first moment
    # the pinned ePSF is the input moved by the core's offset (0.1, -0.05) px
    moved = gauss(0, 0) + 0.02 * core.sum() / (np.pi * 2 * 1.5**2) * np.exp(
        -0.5 * ((uu - 3.9 - got.x / s) ** 2 + (vv + 0.05) ** 2) / 1.5**2
    )
    ref = moved / moved.sum() * s0.sum()
    assert np.max(np.abs(s0 - ref)) / ref.max() < 0.02
    s1 = _samples(c[1].reshape(n, n), "bspline3")
    assert np.max(np.abs(got.gain @ s1[got.core])) / s < 0.02 * 0.02  # < 2 % of its 20 mpx


def test_wfc3_library_centres_agree_with_the_epsf_convention(shared_data):
    """The 36 WFC3/UVIS F814W library PSFs are centred on their cores: their core-fit centres
    lie within 6 mpx of the origin (measured: max 5.3 mpx, std 1.1 / 1.5 mpx), while their first moments
    (radius 1.2 FWHM) drift by 17 mpx across the detector (std 4.1 / 4.5 mpx)."""
    from jaxphot.epsf._pin import _centroid, _core_centre
    from jaxphot.epsf._reference import fwhm_samples
    from jaxphot.psf.kernels import spline_samples as _samples

    with pytest.warns(UserWarning, match="corrupt PSFs"):
        grid = read_wfc3_uvis_grid(shared_data("hst_wfc3_psf") / "emp_psf_f814w_4x.npy")
    core, moment = [], []
    for row in np.asarray(grid.coeffs):
        for c in row:
            smp = _samples(c, "bspline3")
            radius = 1.2 * fwhm_samples(smp)
            got = _core_centre(smp, 4, radius)
            core.append((got.x / 4, got.y / 4))
            moment.append(np.array(_centroid(smp, radius)) / 4)
    core, moment = np.array(core), np.array(moment)
    assert np.max(np.abs(core)) < 0.006, np.max(np.abs(core))
    assert np.all(np.ptp(moment, axis=0) > 0.012)


def test_lowpass_reference_keeps_the_band_and_drops_the_ripple():
    """The "lowpass" prior's reference removes a 1 cycle/pixel ripple (the S-curve band) and
    keeps a smooth core. A Gaussian is not band-limited: ~1 % of its peak lies above the band
    edge (1.2 / FWHM cycles/px) and is left to the penalty."""
    from jaxphot.epsf._reference import lowpass_reference_terms

    s, m = 4, 15
    n = s * m + 1
    u = (np.arange(n) - (n - 1) / 2) / s
    uu, vv = np.meshgrid(u, u)
    smooth = np.exp(-0.5 * (uu**2 + vv**2) / 1.3**2)  # FWHM 3 px
    ripple = 0.01 * np.cos(2 * np.pi * uu) * np.exp(-0.5 * (uu**2 + vv**2) / 2.0**2)

    terms = [bspline_prefilter(a).ravel() for a in (smooth + ripple, ripple, smooth)]
    got = lowpass_reference_terms(np.stack(terms), n, s)  # the cut-off comes from term 0
    assert np.max(np.abs(got[1])) < 1e-3 * np.max(np.abs(terms[1]))
    assert np.max(np.abs(got[2] - terms[2])) < 0.015 * terms[2].max()
