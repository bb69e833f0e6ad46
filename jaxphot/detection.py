"""Old import path, kept so existing code works: see :mod:`jaxphot.image.detection`."""

from .image.detection import *  # noqa: F403
