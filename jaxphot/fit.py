"""Old import path, kept so existing code works: see :mod:`jaxphot.core.fit`."""

from .core.fit import *  # noqa: F403
