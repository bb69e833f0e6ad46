"""Old import path, kept so existing code works: see :mod:`jaxphot.sim.cluster`, :mod:`jaxphot.sim.scoring`, :mod:`jaxphot.cli.demo`."""

from .cli.demo import *  # noqa: F403
from .sim.cluster import *  # noqa: F403
from .sim.scoring import *  # noqa: F403
