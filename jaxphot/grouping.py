"""Old import path, kept so existing code works: see :mod:`jaxphot.image.grouping`."""

from .image.grouping import *  # noqa: F403
