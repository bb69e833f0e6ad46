"""Joint photometry of many exposures, ALLFRAME style: one position per star, a flux per image.

Each star has one position ``(x_ref, y_ref)`` in the reference frame (the first image's
pixels) and, in every exposure ``t``, a flux ``F_t`` and a local sky plane. The exposures
are tied by their transforms ``T_t`` (WCS or pixel transforms) from the reference frame. The
fit alternates two exact steps until the positions stop moving:

1. **fluxes and skies** at the current positions, in every exposure, with close stars fitted
   together: :func:`~jaxphot.forced_photometry` (a linear problem, solved exactly);
2. **positions**, all exposures at once: in each exposure the Gauss-Newton normal equations
   of a star's ``(x_t, y_t, F_t, sky plane)`` are formed on its box, with every other star's
   model subtracted; the per-exposure nuisances (flux, sky) are eliminated exactly (Schur
   complement), leaving that exposure's 2x2 position information ``S_t`` and gradient
   ``h_t``; these are carried to the reference frame with the transform's Jacobian
   ``A_t = dT_t / d(x_ref, y_ref)`` and summed: ``(sum A^T S A) d = sum A^T h``.

Because the nuisances of different exposures are independent, the summed 2x2 matrix is the
exact Fisher information of the joint model for the shared position: its inverse gives
``x_err, y_err``, which shrink as 1/sqrt(N) with N exposures. Band fluxes, when ``bands``
groups the exposures, are the inverse-variance means of their exposures' fluxes (the
maximum-likelihood flux of a star constant within the band, to first order).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from astropy.table import Table
from scipy import ndimage
from scipy.spatial import cKDTree

from ..constants import POGSON
from ..image.cutouts import extract_cutouts
from ..image.detection import find_stars
from ..image.render import render_image
from ..progress import Progress
from ..psf.measure import is_varying, psf_fwhm, support_half
from ..validate import check_positive
from .forced import ForcedFlag, forced_photometry
from .inputs import catalog_positions, image_positions, load_exposures, per_image_inputs

__all__ = ["JointResult", "joint_photometry"]

_EPS = 0.02  # px: central differences of the PRF
_MAX_STEP = 0.5  # px per iteration in the reference frame
_CHUNK = 8192  # stars per batched position step (bounds memory: chunk x box^2 x 6)


@dataclasses.dataclass
class JointResult:
    """Output of :func:`joint_photometry`.

    ``stars``: one row per catalogue star (shared position, per-band fluxes);
    ``epochs``: the long per-star, per-exposure table of :func:`~jaxphot.forced_photometry`
    at the final positions; ``history``: the largest position step (px) of each iteration.
    """

    stars: Table
    epochs: Table
    history: list


def _jacobians(setup, x, y, h=0.5):
    """Per exposure, positions (N,) x2 and the 2x2 Jacobian (N, 2, 2) of ref -> image, or why not."""
    p0, px1, px0 = _place(setup, x, y), _place(setup, x + h, y), _place(setup, x - h, y)
    py1, py0 = _place(setup, x, y + h), _place(setup, x, y - h)
    out = []
    for t in range(len(setup.exps)):
        if isinstance(p0[t], str):
            out.append(p0[t])
            continue
        jac = np.empty((len(x), 2, 2))
        for c in range(2):
            jac[:, c, 0] = (px1[t][c] - px0[t][c]) / (2 * h)
            jac[:, c, 1] = (py1[t][c] - py0[t][c]) / (2 * h)
        out.append((np.asarray(p0[t][0], float), np.asarray(p0[t][1], float), jac))
    return out


def _prf_and_gradient(psf, lx, ly, size, cx, cy):
    """(N, S, S) unit PRFs at local (lx, ly) and their x, y derivatives (varying: at cx, cy)."""
    p = psf.at(cx, cy) if is_varying(psf) else psf
    xs = np.stack([lx, lx + _EPS, lx - _EPS, lx, lx])
    ys = np.stack([ly, ly, ly, ly + _EPS, ly - _EPS])
    if is_varying(psf):
        ev = np.stack([np.asarray(p.evaluate(xs[k], ys[k], (size, size))) for k in range(5)], -2)
    else:
        ev = np.asarray(p.evaluate(xs, ys, (size, size)))  # (S, S, 5, N)
    ev = np.moveaxis(ev.astype(np.float64), (-1, -2), (0, 1))  # (N, 5, S, S)
    return ev[:, 0], (ev[:, 1] - ev[:, 2]) / (2 * _EPS), (ev[:, 3] - ev[:, 4]) / (2 * _EPS)


def _position_normal_equations(data, resid_img, var_img, valid, psf, x, y, flux, half):
    """One exposure's reduced 2x2 position information and gradient for stars at (x, y).

    ``resid_img`` is data minus the model of every star and sky; ``var_img`` the pixel
    variance. Returns ``S`` (N, 2, 2) and ``h`` (N, 2), in this exposure's pixels.
    """
    size = 2 * half + 1
    ox = np.rint(x).astype(np.int64) - half
    oy = np.rint(y).astype(np.int64) - half
    r = extract_cutouts(resid_img, ox, oy, size, 0.0)[0]
    v = extract_cutouts(var_img, ox, oy, size, 1.0)[0]
    ok = extract_cutouts(valid, ox, oy, size, False)[0]
    prf, dx, dy = _prf_and_gradient(psf, x - ox, y - oy, size, x, y)
    g = np.arange(size, dtype=np.float64) - half
    ones = np.ones_like(prf)
    cols = np.stack([flux[:, None, None] * dx, flux[:, None, None] * dy, prf, ones,
                     ones * g[None, None, :], ones * g[None, :, None]], 1)  # (N, 6, S, S)
    w = np.where(ok, 1.0 / np.maximum(v, 1e-30), 0.0)
    n_mat = np.einsum("npyx,nqyx,nyx->npq", cols, cols, w)
    grad = np.einsum("npyx,nyx->np", cols, w * r)
    a, b, c = n_mat[:, :2, :2], n_mat[:, :2, 2:], n_mat[:, 2:, 2:]
    c = c + 1e-12 * np.eye(4)  # a star on masked pixels: keep the solve finite
    sol_b = np.linalg.solve(c, np.swapaxes(b, 1, 2))  # (N, 4, 2)
    sol_g = np.linalg.solve(c, grad[:, 2:, None])[..., 0]
    s = a - b @ sol_b
    h = grad[:, :2] - np.einsum("npq,nq->np", b, sol_g)
    return s, h


def _noise_var(model_sky, err, gain, read_noise):
    if err is not None:
        return np.broadcast_to(np.asarray(err, np.float64) ** 2, model_sky.shape)
    rn = 0.0 if read_noise is None else float(read_noise)
    return np.maximum(model_sky, 0.0) / gain + (rn / gain) ** 2


def _check_noise(errors, gains):
    for i, (e, g) in enumerate(zip(errors, gains, strict=True)):
        if e is None and g is None:
            raise ValueError(f"joint_photometry needs error= or gain= for image {i}: position "
                             f"errors are only honest with a noise model")
        if g is not None:
            check_positive(f"gain[{i}]" if len(gains) > 1 else "gain", g, "e-/count")


def joint_photometry(
    images,
    catalog,
    psf,
    *,
    wcs=None,
    bands=None,
    error=None,
    gain=None,
    read_noise=None,
    max_iter: int = 8,
    tol: float = 1e-3,
    fit_half: int | None = None,
    threshold: float = 5.0,
    residual_passes: int = 0,
    progress=False,
) -> JointResult:
    """Fit one position per star and one flux per exposure (and per band) to many exposures.

    Parameters
    ----------
    images : (T, H, W) array, or list of (H, W) arrays and/or FITS paths
        The exposures (counts).
    catalog : astropy Table or None
        Starting list: ``x, y`` in the reference frame (the first image's pixels), or
        ``ra, dec`` (degrees, placed with the first image's WCS). None: the stars are found
        on the inverse-variance stack of all exposures resampled to the reference frame
        (:func:`~jaxphot.find_stars` at ``threshold``), so faint stars that no single
        exposure shows are found.
    psf : PSF model or spec string, or a list of T of them
        PSF of each exposure; a spatially varying PSF is taken at each star.
    wcs : WCS, pixel transform, or list of T of them, optional
        From the reference frame to each exposure, as in :func:`~jaxphot.forced_photometry`
        (refine header WCSs first with :func:`~jaxphot.refine_alignment`).
    bands : sequence of T str, optional
        Band of each exposure; fluxes are combined per band (default: one band, "all").
    error, gain, read_noise : optional
        Noise model, per exposure lists accepted: ``error`` (1-sigma, counts) or ``gain``
        (e-/count, with ``read_noise`` in e-). One of ``error`` or ``gain`` is required.
    max_iter : int
        Most flux/position alternations.
    tol : float
        Stop when no star moves by more than this (pixels of the reference frame).
    fit_half : int, optional
        Half size of the box of the position step (default ``max(3, ceil(1.5 FWHM))``).
    threshold : float
        Detection threshold (sigma of the matched filter) on the stack and on the stacked
        residuals.
    residual_passes : int
        Passes of detection on the stack of the residuals (data minus the model of every
        fitted star), each followed by a refit with the new stars (default 0: none).
    progress : bool or callable
        Progress report.

    Returns
    -------
    JointResult
        ``stars``: ``star_id, x_ref, y_ref, x_err, y_err`` (reference pixels; errors from the
        joint Fisher matrix), ``ra, dec`` (when the first image has a WCS), ``n_images``
        (exposures that measured the star), ``flags`` (OR of its exposures'
        :class:`~jaxphot.ForcedFlag` bits), and per band ``flux_<band>, flux_err_<band>,
        mag_<band>, mag_err_<band>``; ``epochs``: the long table of the last flux step.

    Raises
    ------
    ValueError
        For an unusable catalogue, mismatched per-image lists or ``bands``, no noise model,
        or ``max_iter < 1``.
    """
    if int(max_iter) < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter!r}")
    exps = load_exposures(images)
    n_img = len(exps)
    opts = per_image_inputs(n_img, psf=psf, wcs=wcs, error=error, gain=gain,
                            read_noise=read_noise)
    psfs, transforms, errors, gains, noises = (opts.psfs, opts.transforms, opts.errors,
                                               opts.gains, opts.noises)
    _check_noise(errors, gains)
    band = np.array(["all"] * n_img if bands is None else [str(b) for b in bands])
    if len(band) != n_img:
        raise ValueError(f"bands has {len(band)} entries for {n_img} images")
    halves = [int(fit_half) if fit_half is not None else max(3, int(np.ceil(1.5 * psf_fwhm(p))))
              for p in psfs]
    setup = _Setup(exps, psfs, transforms, errors, gains, noises, halves)
    fwhm = psf_fwhm(psfs[0])
    if catalog is None:  # detect on the stack of all exposures
        x, y = _detect_on_stack(setup, None, None, threshold, fwhm)
        if len(x) == 0:
            raise ValueError("catalog=None: no star found on the stack of the exposures at "
                             f"threshold={threshold}")
        star_id = np.arange(1, len(x) + 1)
    else:
        cat = catalog_positions(catalog)
        x, y = _reference_xy(cat, transforms, exps)
        star_id = np.asarray(cat["star_id"])
    prog = Progress(progress, desc="joint")
    x, y, epochs, info, history = _fit_positions(setup, x, y, star_id, max_iter, tol, prog)
    for _ in range(int(residual_passes)):
        nx, ny = _detect_on_stack(setup, (x, y), epochs, threshold, fwhm)
        if len(nx) == 0:
            break
        x, y = np.r_[x, nx], np.r_[y, ny]
        start = int(np.max(star_id, initial=0)) + 1 if np.issubdtype(star_id.dtype, np.integer) else 0
        star_id = np.r_[star_id, np.arange(start, start + len(nx))]
        x, y, epochs, info, more = _fit_positions(setup, x, y, star_id, max_iter, tol, prog)
        history += more
    prog.close()
    stars = _star_table(star_id, x, y, info, epochs, band, n_img, transforms, exps)
    stars.meta["history"] = history
    return JointResult(stars, epochs, history)


@dataclasses.dataclass(frozen=True)
class _Setup:
    """The checked per-exposure inputs of one :func:`joint_photometry` call."""

    exps: list
    psfs: list
    transforms: list
    errors: list
    gains: list
    noises: list
    halves: list


def _fit_positions(setup: _Setup, x, y, star_id, max_iter: int, tol: float, prog):
    """Alternate the flux and position steps from (x, y); returns the final x, y, the long
    table of the last flux step, the 2x2 information (N, 2, 2) and the step history."""
    ok_ref = np.isfinite(x) & np.isfinite(y)
    # Close pairs see each other only through the other's last model (block Jacobi): a star
    # whose step reverses has it halved, which turns such two-cycles into convergence.
    damp, prev = np.ones(len(x)), np.zeros((len(x), 2))
    history = []
    for it in range(int(max_iter)):
        epochs = _fluxes(setup, x, y, star_id)
        info, grad = _position_step(setup, x, y, epochs)
        step = _solve_steps(info, grad, ok_ref)
        damp = np.where(np.sum(step * prev, 1) < 0, 0.5 * damp, np.minimum(1.0, 1.5 * damp))
        step = step * damp[:, None]
        prev = step
        x, y = x + step[:, 0], y + step[:, 1]
        moved = float(np.nanmax(np.abs(step))) if np.isfinite(step).any() else 0.0
        history.append(moved)
        prog(f"{len(x)} stars, iteration {it + 1}: largest step {moved:.4f} px",
             (it + 1) / max_iter)
        if moved < tol:
            break
    epochs = _fluxes(setup, x, y, star_id)
    info, _ = _position_step(setup, x, y, epochs)
    return x, y, epochs, info, history


def _place(setup: _Setup, x, y) -> list:
    """Per exposure, the pixel positions (x_t, y_t) of reference positions, or why not."""
    cat = {"ra": None, "dec": None, "flux": None, "star_id": None, "x": x, "y": y}
    return image_positions(cat, setup.transforms, setup.exps)


def _detect_on_stack(setup: _Setup, known, epochs, threshold: float, fwhm: float):
    """Stars found on the inverse-variance stack of the exposures resampled to the reference
    frame (bilinear), less the model of the ``known`` stars when given; new ones only."""
    ref = setup.exps[0].data
    h, w = ref.shape
    gy, gx = (v.ravel().astype(np.float64) for v in np.mgrid[0:h, 0:w])
    places = _place(setup, gx, gy)
    num, den = np.zeros(h * w), np.zeros(h * w)
    if known is not None:
        n = len(known[0])
        flux_all = np.asarray(epochs["flux"], float).reshape(n, len(setup.exps))
        star_places = _place(setup, *known)
    for t, (e, pl) in enumerate(zip(setup.exps, places, strict=True)):
        if e.data is None or isinstance(pl, str):
            continue
        img = np.asarray(e.data, np.float64)
        if known is not None and not isinstance(star_places[t], str):
            xt, yt = star_places[t]
            ok = np.isfinite(xt) & np.isfinite(yt) & np.isfinite(flux_all[:, t])
            img = img - render_image(setup.psfs[t], xt[ok], yt[ok], flux_all[ok, t], img.shape)
        sky = np.nanmedian(img)
        rms = 1.4826 * np.nanmedian(np.abs(img - sky))
        v = ndimage.map_coordinates(img - sky, [pl[1], pl[0]], order=1, cval=np.nan)
        good = np.isfinite(v)
        num[good] += v[good] / rms**2
        den[good] += 1.0 / rms**2
    with np.errstate(invalid="ignore", divide="ignore"):
        stack = np.where(den > 0, num / den, np.nan).reshape(h, w)
        rms = np.where(den > 0, 1.0 / np.sqrt(den), np.nan).reshape(h, w)
    # The stack's noise is given, not measured: resampling correlates the noise, which lowers
    # its pixel rms but not that of the matched filter (measured, 7 false stars for 36 true).
    found = find_stars(stack, fwhm, threshold, rms=rms, mask=~np.isfinite(stack))
    nx, ny = np.asarray(found["x_centroid"], float), np.asarray(found["y_centroid"], float)
    if known is not None and len(nx) and len(known[0]):
        kx, ky = known
        ok = np.isfinite(kx) & np.isfinite(ky)
        d, _ = cKDTree(np.c_[kx[ok], ky[ok]]).query(np.c_[nx, ny])
        keep = d > fwhm  # a residual next to a known star is its misfit, not a new star
        nx, ny = nx[keep], ny[keep]
    return nx, ny


def _reference_xy(cat, transforms, exps):
    """Reference-frame (first image) pixel positions of the catalogue."""
    if cat["x"] is not None and cat["y"] is not None:
        x, y = cat["x"].copy(), cat["y"].copy()
        if cat["ra"] is None:
            return x, y
    first = image_positions(cat, transforms[:1], exps[:1])[0]
    if isinstance(first, str):
        raise ValueError(f"the first image defines the reference frame but cannot place the "
                         f"catalogue: {first}")
    return np.asarray(first[0], float).copy(), np.asarray(first[1], float).copy()


def _reference_radec(transforms, exps, x, y):
    """(ra, dec) in degrees of reference-frame pixels through the first image's WCS, or None."""
    wcs0 = transforms[0] if transforms[0] is not None else exps[0].wcs
    if wcs0 is None or not hasattr(wcs0, "pixel_to_world"):
        return None
    sky = wcs0.pixel_to_world(np.nan_to_num(x), np.nan_to_num(y))
    ok = np.isfinite(x) & np.isfinite(y)
    return np.where(ok, sky.icrs.ra.deg, np.nan), np.where(ok, sky.icrs.dec.deg, np.nan)


def _fluxes(setup: _Setup, x, y, star_id):
    """Step 1: forced photometry of every exposure at the current reference positions."""
    exps, psfs, transforms = setup.exps, setup.psfs, setup.transforms
    errors, gains, noises = setup.errors, setup.gains, setup.noises
    cat = Table({"x": x, "y": y, "star_id": star_id})
    radec = _reference_radec(transforms, exps, x, y)
    if radec is not None:
        cat["ra"], cat["dec"] = radec
    data = [e.data if e.data is not None else e.name for e in exps]
    return forced_photometry(data, cat, psfs, wcs=list(transforms), error=list(errors),
                             gain=list(gains), read_noise=list(noises), neighbours=1)


def _position_step(setup: _Setup, x, y, epochs):
    """Step 2: the summed reference-frame 2x2 information (N, 2, 2) and gradient (N, 2)."""
    exps, psfs = setup.exps, setup.psfs
    errors, gains, noises, halves = setup.errors, setup.gains, setup.noises, setup.halves
    n, t_img = len(x), len(exps)
    info = np.zeros((n, 2, 2))
    grad = np.zeros((n, 2))
    flux_all = np.asarray(epochs["flux"], float).reshape(n, t_img)
    bkg_all = np.asarray(epochs["bkg"], float).reshape(n, t_img)
    flags_all = np.asarray(epochs["flags"], np.int64).reshape(n, t_img)
    placed = _jacobians(setup, x, y)
    for t, pl in enumerate(placed):
        if isinstance(pl, str) or exps[t].data is None:
            continue
        xt, yt, jac = pl
        data = np.asarray(exps[t].data, np.float64)
        f, b = flux_all[:, t], bkg_all[:, t]
        use = (np.isfinite(xt) & np.isfinite(yt) & np.isfinite(f) & (f > 0)
               & ((flags_all[:, t] & ~int(ForcedFlag.BAD_PIXELS | ForcedFlag.POOR_FIT)) == 0))
        if not use.any():
            continue
        psf, half = psfs[t], halves[t]
        stamp = 2 * support_half(psf, psf_fwhm(psf)) + 1
        model = render_image(psf, xt[use], yt[use], f[use], data.shape, stamp=stamp)
        sky = _sky_image(data.shape, xt[use], yt[use], b[use], half)
        valid = np.isfinite(data)
        var = _noise_var(model + sky, errors[t], gains[t], noises[t])
        resid = np.where(valid, data - model - sky, 0.0)
        idx = np.nonzero(use)[0]
        for lo in range(0, len(idx), _CHUNK):
            k = idx[lo:lo + _CHUNK]
            s, h = _position_normal_equations(data, resid, var, valid, psf, xt[k], yt[k], f[k], half)
            a = jac[k]
            info[k] += np.einsum("nci,ncd,ndj->nij", a, s, a)
            grad[k] += np.einsum("nci,nc->ni", a, h)
    return info, grad


def _sky_image(shape, x, y, b, half):
    """Each star's fitted sky level over its box, averaged where boxes overlap: the residual of
    step 2 is then sky-free to first order (the fitted plane terms absorb the rest)."""
    size = 2 * half + 1
    ox = np.rint(x).astype(np.int64) - half
    oy = np.rint(y).astype(np.int64) - half
    yy = np.broadcast_to(oy[:, None, None] + np.arange(size)[None, :, None], (len(x), size, size))
    xx = np.broadcast_to(ox[:, None, None] + np.arange(size)[None, None, :], (len(x), size, size))
    on = (yy >= 0) & (yy < shape[0]) & (xx >= 0) & (xx < shape[1])
    level = np.broadcast_to(np.nan_to_num(b)[:, None, None], yy.shape)
    total, count = np.zeros(shape), np.zeros(shape)
    np.add.at(total, (yy[on], xx[on]), level[on])
    np.add.at(count, (yy[on], xx[on]), 1.0)
    return np.where(count > 0, total / np.maximum(count, 1.0), 0.0)


def _solve_steps(info, grad, ok):
    """Position steps (N, 2): ``info^-1 grad`` where the 2x2 is invertible, capped."""
    det = info[:, 0, 0] * info[:, 1, 1] - info[:, 0, 1] * info[:, 1, 0]
    good = ok & (det > 0) & np.isfinite(det)
    step = np.zeros_like(grad)
    if good.any():
        step[good] = np.linalg.solve(info[good], grad[good][..., None])[..., 0]
    length = np.hypot(step[:, 0], step[:, 1])
    scale = np.where(length > _MAX_STEP, _MAX_STEP / np.maximum(length, 1e-30), 1.0)
    return step * scale[:, None]


def _star_table(star_id, x, y, info, epochs, band, n_img, transforms, exps):
    n = len(x)
    tab = Table()
    tab["star_id"] = star_id
    tab["x_ref"], tab["y_ref"] = x, y
    det = info[:, 0, 0] * info[:, 1, 1] - info[:, 0, 1] ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        tab["x_err"] = np.where(det > 0, np.sqrt(info[:, 1, 1] / det), np.nan)
        tab["y_err"] = np.where(det > 0, np.sqrt(info[:, 0, 0] / det), np.nan)
    radec = _reference_radec(transforms, exps, x, y)
    if radec is not None:
        tab["ra"], tab["dec"] = radec
    f = np.asarray(epochs["flux"], float).reshape(n, n_img)
    e = np.asarray(epochs["flux_err"], float).reshape(n, n_img)
    fl = np.asarray(epochs["flags"], np.int64).reshape(n, n_img)
    # BAD_PIXELS stars are still measured; every other bit leaves NaN.
    good = np.isfinite(f) & np.isfinite(e) & (e > 0) & ((fl & ~int(ForcedFlag.BAD_PIXELS)) == 0)
    tab["n_images"] = good.sum(1)
    tab["flags"] = np.bitwise_or.reduce(fl, axis=1)
    for bname in dict.fromkeys(band):
        sel = good & (band == bname)[None, :]
        w = np.where(sel, 1.0 / np.where(sel, e, 1.0) ** 2, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            fb = np.sum(w * np.where(sel, f, 0.0), 1) / np.sum(w, 1)
            eb = 1.0 / np.sqrt(np.sum(w, 1))
            tab[f"flux_{bname}"] = fb
            tab[f"flux_err_{bname}"] = eb
            tab[f"mag_{bname}"] = np.where(fb > 0, -2.5 * np.log10(np.where(fb > 0, fb, 1.0)), np.nan)
            tab[f"mag_err_{bname}"] = np.where(fb > 0, POGSON * eb / fb, np.nan)
    for c in ("x_ref", "y_ref", "x_err", "y_err"):
        tab[c].unit = "pix"
    return tab
