"""Old import path, kept so existing code works: see :mod:`jaxphot.core.flags`."""

from .core.flags import *  # noqa: F403
