"""Old import path, kept so existing code works: see :mod:`jaxphot.core.solve`."""

from .core.solve import *  # noqa: F403
