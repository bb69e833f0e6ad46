"""Old import path, kept so existing code works; the code lives in
``jaxphot.sim.cluster``, ``jaxphot.sim.scoring``, ``jaxphot.cli.demo``.
"""

from .cli.demo import *  # noqa: F403
from .sim.cluster import *  # noqa: F403
from .sim.scoring import *  # noqa: F403
