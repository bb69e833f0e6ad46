"""What the chapter-6 example scripts share: their command line and how they save a figure."""

from __future__ import annotations

import argparse
from pathlib import Path


def parse_args(doc: str) -> argparse.Namespace:
    """``--small`` (a quick, reduced run) and ``--outdir`` (where the figure goes, default ".")."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--small", action="store_true")
    p.add_argument("--outdir", default=".")
    return p.parse_args()


def save_figure(fig, outdir, name: str) -> Path:
    """Write ``fig`` as ``outdir/name`` (PNG, 100 dpi), close it and return the path."""
    import matplotlib.pyplot as plt

    path = Path(outdir) / name
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
