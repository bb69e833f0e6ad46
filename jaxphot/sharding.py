"""Old import path, kept so existing code works: see :mod:`jaxphot.scale.sharding`."""

from .scale.sharding import *  # noqa: F403
