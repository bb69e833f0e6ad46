"""PSF specifications as text, for the command line and configuration files.

``gaussian:fwhm=3``, ``moffat:fwhm=3,beta=2.5``, or the path of a PSF FITS file (read by
:func:`jaxphot.psf.read_psf_fits`, the same reader Python uses). ``auto`` (an ePSF built from
the image) is left to the caller, which has the image.
"""

from __future__ import annotations

from pathlib import Path

from ..core.scene import PSFModel
from ..validate import register_psf_parser
from .analytic import GaussianPRF, MoffatPSF
from .fits import read_psf_fits

__all__ = ["parse_psf_spec", "PSFSpecError"]

_PARAMS = {"gaussian": {"fwhm"}, "moffat": {"fwhm", "beta"}}


class PSFSpecError(ValueError):
    """A PSF specification that cannot be turned into a PSF; the message names the spec."""


def _analytic(spec: str) -> GaussianPRF | MoffatPSF:
    """The analytic PSF of a ``kind:key=value,...`` specification."""
    kind, _, rest = spec.partition(":")
    kind = kind.lower()
    kw = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        k, eq, v = item.partition("=")
        if not eq:
            raise PSFSpecError(f"--psf {spec!r}: expected key=value, got {item!r}")
        try:
            kw[k.strip().lower()] = float(v)
        except ValueError:
            raise PSFSpecError(f"--psf {spec!r}: {k.strip()} must be a number, got {v!r}") from None
    extra = set(kw) - _PARAMS[kind]
    if extra:
        raise PSFSpecError(
            f"--psf {spec!r}: unknown parameter(s) {sorted(extra)}; {kind} takes {sorted(_PARAMS[kind])}"
        )
    if "fwhm" not in kw:
        raise PSFSpecError(f"--psf {spec!r}: fwhm is required, e.g. {kind}:fwhm=3")
    try:
        return GaussianPRF(kw["fwhm"]) if kind == "gaussian" else MoffatPSF(kw["fwhm"], kw.get("beta", 2.5))
    except ValueError as exc:
        raise PSFSpecError(f"--psf {spec!r}: {exc}") from None


def parse_psf_spec(spec: str, oversampling: int | None = None) -> PSFModel:
    """Build a PSF from a text specification.

    Parameters
    ----------
    spec : str
        ``gaussian:fwhm=F`` (F in pixels), ``moffat:fwhm=F,beta=B``, or a PSF FITS file.
    oversampling : int, optional
        Overrides a FITS file's ``OVERSAMP`` card (samples per detector pixel).

    Returns
    -------
    PSF model
        GaussianPRF, MoffatPSF, or what :func:`~jaxphot.psf.read_psf_fits` reads (a
        DiscretePSF, or a spatially varying PolynomialPSF / GriddedPSF).

    Raises
    ------
    PSFSpecError
        For an unknown form, bad parameters, or an unreadable file.
    """
    s = spec.strip()
    if s.lower().startswith(tuple(_PARAMS)):
        return _analytic(s)
    path = Path(s)
    if not path.exists():
        raise PSFSpecError(
            f"--psf {spec!r}: not gaussian:fwhm=..., moffat:fwhm=...,beta=..., "
            "auto, or an existing FITS file"
        )
    try:
        return read_psf_fits(path, oversampling=oversampling)
    except ValueError as exc:
        raise PSFSpecError(f"PSF {str(path)!r}: {exc}") from None


def _parse_for_api(spec: str) -> PSFModel:
    """:func:`parse_psf_spec` for Python callers: the message without the CLI's ``--psf``."""
    try:
        return parse_psf_spec(spec)
    except PSFSpecError as exc:
        raise ValueError(str(exc).replace("--psf ", "", 1)) from None


register_psf_parser(_parse_for_api)
