"""Old import path, kept so existing code works: see :mod:`jaxphot.image.background`."""

from .image.background import *  # noqa: F403
