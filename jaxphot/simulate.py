"""Old import path, kept so existing code works: see :mod:`jaxphot.sim.cutouts`."""

from .sim.cutouts import *  # noqa: F403
