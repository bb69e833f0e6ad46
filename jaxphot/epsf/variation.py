"""Choosing the spatial variation of an ePSF from the data: k-fold cross-validation.

:func:`choose_variation` builds every candidate (constant, linear, quadratic polynomial) from the
same PSF stars and cutouts, fold by fold, and scores each on the stars held out of that fold's
build: every held-out star is fitted (position, flux, constant sky) with the candidate PSF at its
own position, and its chi^2 is recorded. A higher order replaces a lower one only when the paired
held-out chi^2 improvement is both significant and material:

* significant: ``mean(d) > z * SE(d)`` with ``d_i = chi2_i(lower) - chi2_i(higher)`` over the
  held-out stars and ``z = 2``. On a constant field a higher order can only fit noise, which
  makes it *worse* on stars it has not seen (``E[d] <= 0``), so the one-sided false-selection
  rate per step is at most ~2.3 % (Gaussian tail at 2 SE);
* material: ``mean(d) > 0.5 %`` of the lower order's mean held-out chi^2, so that a very bright
  star list does not promote a variation too small to matter for photometry.

The choice and the evidence (mean held-out chi^2 per candidate, the folds, the threshold) are
returned as a :class:`VariationChoice` and recorded by the caller on the PSF
(``psf.variation``) and in its FITS header (:func:`jaxphot.psf.write_psf_fits`).
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings

import numpy as np

from ..core.fit import fit_cutouts
from ..image.cutouts import extract_cutouts
from ..psf import poly_terms
from .builder import EPSFWarning, build_epsf, odd_shape

__all__ = ["VariationChoice", "parse_variation", "choose_variation", "MIN_STARS_PER_TERM"]

#: PSF stars per polynomial term a degree needs (as :func:`build_epsf`'s own step-down)
MIN_STARS_PER_TERM = 8
#: significance (standard errors of the paired held-out chi^2 gain) for a higher order
Z_THRESHOLD = 2.0
#: materiality: the gain as a fraction of the lower order's mean held-out chi^2
REL_THRESHOLD = 0.005


@dataclasses.dataclass(frozen=True)
class VariationChoice:
    """The variation chosen by cross-validation and its evidence.

    Attributes
    ----------
    degree : int
        The chosen polynomial degree (0, 1 or 2).
    requested : str
        What was asked (``"auto"``, ``"0"``, ...).
    cv_chi2 : dict of int to float
        Mean held-out chi^2 per star for each candidate degree (dimensionless).
    folds : int
        Number of cross-validation folds.
    n_stars : int
        PSF stars in the cross-validation.
    reason : str
        One line on how the choice was made.
    """

    degree: int
    requested: str
    cv_chi2: dict
    folds: int
    n_stars: int
    reason: str

    def header_cards(self) -> list[tuple[str, object, str]]:
        """FITS cards (keyword, value, comment) recording the choice and its evidence."""
        cards = [("VARIATN", self.requested, "requested PSF variation"),
                 ("VARDEG", int(self.degree), "chosen polynomial degree"),
                 ("CVFOLDS", int(self.folds), "cross-validation folds"),
                 ("CVNSTAR", int(self.n_stars), "PSF stars cross-validated")]
        for d, v in sorted(self.cv_chi2.items()):
            cards.append((f"CVCHI2_{d}", float(v), f"mean held-out chi2, degree {d}"))
        return cards

    def summary(self) -> str:
        """One human line: the chosen degree and the held-out chi^2 per candidate."""
        cv = ", ".join(f"{d}: {v:.2f}" for d, v in sorted(self.cv_chi2.items()))
        return (f"PSF variation {self.requested} -> degree {self.degree} "
                f"({self.folds}-fold CV mean held-out chi2 per star {cv}; {self.reason})")


def parse_variation(variation) -> str | int | tuple[int, int]:
    """``"auto"``, a degree 0/1/2, or ``(ny, nx)`` for ``"grid:NYxNX"``; ValueError otherwise."""
    if isinstance(variation, (int, np.integer)) and not isinstance(variation, bool):
        if int(variation) in (0, 1, 2):
            return int(variation)
    elif isinstance(variation, str):
        v = variation.strip().lower()
        if v == "auto":
            return "auto"
        if v in ("0", "1", "2"):
            return int(v)
        m = re.fullmatch(r"grid:(\d+)x(\d+)", v)
        if m and int(m.group(1)) >= 1 and int(m.group(2)) >= 1:
            return int(m.group(1)), int(m.group(2))
    elif isinstance(variation, tuple) and len(variation) == 2:  # an already parsed grid
        if all(isinstance(n, (int, np.integer)) and n >= 1 for n in variation):
            return int(variation[0]), int(variation[1])
    raise ValueError(
        f"variation must be 'auto', 0, 1, 2 or 'grid:NYxNX' (e.g. grid:3x3), got {variation!r}"
    )


def max_degree(n_stars: int) -> int:
    """Highest polynomial degree ``n_stars`` PSF stars support (MIN_STARS_PER_TERM per term)."""
    for d in (2, 1):
        if n_stars >= MIN_STARS_PER_TERM * len(poly_terms(d)):
            return d
    return 0


def _heldout_chi2(image, psf, pos, shape, gain, mask) -> np.ndarray:
    """chi^2 (M,) of each star at ``pos`` (M, 2) fitted with ``psf`` at its own position.

    Noise: the cutout rim's robust scatter (sky) plus the star's Poisson term when ``gain``
    (e-/unit) is known; the same weights for every candidate, so their chi^2 compare.
    """
    h, w = shape
    ox = np.rint(pos[:, 0]).astype(int) - w // 2
    oy = np.rint(pos[:, 1]).astype(int) - h // 2
    cut = extract_cutouts(image, ox, oy, (h, w), mode="nearest")[0].astype(np.float64)
    bad = ~np.isfinite(cut)
    if mask is not None:
        bad |= extract_cutouts(np.asarray(mask, bool), ox, oy, (h, w), mode="nearest")[0]
    rim = np.ones((h, w), bool)
    rim[2:-2, 2:-2] = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        r = np.where(bad, np.nan, cut)[:, rim]
        sky = np.nanmedian(r, axis=1)
        sd = 1.4826 * np.nanmedian(np.abs(r - sky[:, None]), axis=1)
    sd = np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)
    var = sd[:, None, None] ** 2 + np.zeros_like(cut)
    if gain:
        var = var + np.clip(np.nan_to_num(cut - sky[:, None, None]), 0, None) / float(gain)
    res = fit_cutouts(
        np.where(bad, 0.0, cut), psf, pos[:, 0] - ox, pos[:, 1] - oy,
        error=np.sqrt(var), mask=bad, background="constant", max_iter=30,
        origin=np.stack([ox, oy], 1).astype(np.float64) if callable(getattr(psf, "at", None)) else None,
    )
    return np.asarray(res.chi2, np.float64)


def choose_variation(image, pos, *, candidates=(0, 1, 2), folds: int = 5, shape=15,
                     gain=None, mask=None, seed: int = 0, **build_kwargs) -> VariationChoice:
    """Pick the ePSF's polynomial degree by k-fold cross-validation on held-out PSF stars.

    Parameters
    ----------
    image : (H, W) array
        The image the PSF stars are in (neighbours subtracted if wanted).
    pos : (M, 2) array
        PSF star positions (pixels), selected once over the full frame.
    candidates : tuple of int
        Degrees to compare; those the star count cannot support (fewer than
        ``MIN_STARS_PER_TERM`` per term in a fold's build) are dropped with an EPSFWarning.
    folds : int
        Cross-validation folds (>= 2).
    shape : int or (int, int)
        ePSF box (pixels); also the held-out fit box.
    gain, mask, **build_kwargs
        As for :func:`build_epsf`.

    Returns
    -------
    VariationChoice
    """
    pos = np.asarray(pos, np.float64)
    m = len(pos)
    folds = int(folds)
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    n_train = m - int(math.ceil(m / folds))
    top = max_degree(n_train)
    cands = sorted(int(c) for c in candidates)
    if max(cands) > top:
        warnings.warn(
            f"only {m} PSF stars ({n_train} per {folds}-fold build): variation degrees "
            f"> {top} not tried (degree d needs >= {MIN_STARS_PER_TERM} stars per term)",
            EPSFWarning, stacklevel=3,
        )
        cands = [c for c in cands if c <= top] or [0]
    if len(cands) == 1:
        return VariationChoice(cands[0], "auto", {}, 0, m, "too few stars to compare")
    hw = odd_shape(shape)
    fold_of = np.random.default_rng(seed).permutation(m) % folds
    chi2 = {d: np.full(m, np.nan) for d in cands}
    for k in range(folds):
        test = fold_of == k
        for d in cands:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", EPSFWarning)
                psf = build_epsf(image, pos[~test], degree=d, shape=hw, gain=gain, mask=mask,
                                 **build_kwargs)
            chi2[d][test] = _heldout_chi2(image, psf, pos[test], hw, gain, mask)
    ok = np.all([np.isfinite(chi2[d]) for d in cands], axis=0)
    # a held-out star a PSF cannot fit at all (a blend, a cosmic ray) says nothing of the PSF
    med = np.median(chi2[cands[0]][ok]) if ok.any() else np.inf
    ok &= chi2[cands[0]] < 20.0 * med
    cv = {d: float(np.mean(chi2[d][ok])) if ok.any() else float("nan") for d in cands}
    best, reason = cands[0], "lowest order kept"
    for d in cands[1:]:
        diff = chi2[best][ok] - chi2[d][ok]
        if diff.size < 3:
            break
        gain_mean = float(diff.mean())
        se = float(diff.std(ddof=1) / math.sqrt(diff.size))
        if gain_mean > Z_THRESHOLD * se and gain_mean > REL_THRESHOLD * cv[best]:
            reason = (f"degree {d} improves held-out chi2 by {gain_mean:.2f} "
                      f"({gain_mean / max(se, 1e-300):.1f} SE)")
            best = d
    return VariationChoice(best, "auto", cv, folds, int(ok.sum()), reason)
