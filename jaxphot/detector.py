"""Old import path, kept so existing code works: see :mod:`jaxphot.psf.detector`."""

from .psf.detector import *  # noqa: F403
