"""Old import path, kept so existing code works; the code lives in
``jaxphot.psf.varying``, ``jaxphot.psf.fits``, ``jaxphot.psf.instruments``, ``jaxphot.image.render``.
"""

from .image.render import *  # noqa: F403
from .psf.fits import *  # noqa: F403
from .psf.instruments import *  # noqa: F403
from .psf.varying import *  # noqa: F403
