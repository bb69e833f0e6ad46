"""Old import path, kept so existing code works; the code lives in
``jaxphot.core.scene``, ``jaxphot.core.params``.
"""

from .core.params import *  # noqa: F403
from .core.scene import *  # noqa: F403
