"""The ``jaxphot`` command line: a thin shell over the library.

``app``
    :func:`main`, the parser and the ``photometry`` and ``epsf`` commands.
``demo``
    ``jaxphot demo``: the pipeline on a simulated cluster, with its picture.
``batch``
    ``jaxphot batch``: many images with Dask (:func:`jaxphot.scale.images.batch`).
"""

from __future__ import annotations

from .app import CLIError, main

__all__ = ["main", "CLIError"]
