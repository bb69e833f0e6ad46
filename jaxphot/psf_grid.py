"""Old import path, kept so existing code works: see :mod:`jaxphot.psf.varying`, :mod:`jaxphot.psf.fits`, :mod:`jaxphot.psf.instruments`, :mod:`jaxphot.image.render`."""

from .image.render import *  # noqa: F403
from .psf.fits import *  # noqa: F403
from .psf.instruments import *  # noqa: F403
from .psf.varying import *  # noqa: F403
