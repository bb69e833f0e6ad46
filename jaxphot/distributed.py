"""Old import path, kept so existing code works: see :mod:`jaxphot.scale.images`."""

from .scale.images import *  # noqa: F403
