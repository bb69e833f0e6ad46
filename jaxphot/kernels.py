"""Old import path, kept so existing code works: see :mod:`jaxphot.psf.kernels`."""

from .psf.kernels import *  # noqa: F403
