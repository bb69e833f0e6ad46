"""Old import path, kept so existing code works; the code lives in
``jaxphot.scale.images``, ``jaxphot.cli.batch``.
"""

from .cli.batch import add_batch_subcommand, run_batch_cli
from .scale.accelerator import configure_accelerator_memory
from .scale.files import catalog_path
from .scale.images import SUMMARY_NAME, batch
from .scale.tiling import photometry_tiled

__all__ = [
    "batch",
    "photometry_tiled",
    "catalog_path",
    "configure_accelerator_memory",
    "add_batch_subcommand",
    "run_batch_cli",
    "SUMMARY_NAME",
]
