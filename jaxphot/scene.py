"""Old import path, kept so existing code works: see :mod:`jaxphot.core.scene`, :mod:`jaxphot.core.params`."""

from .core.params import *  # noqa: F403
from .core.scene import *  # noqa: F403
