"""Helpers shared by the benchmark scripts: device description, memory, JSON output."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys

import jax
import numpy as np


def device_info() -> dict:
    """The device JAX runs on, in words, with the host's CPU count."""
    d = jax.devices()[0]
    return {
        "backend": jax.default_backend(),
        "device": getattr(d, "device_kind", str(d)),
        "n_devices": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "jax": jax.__version__,
    }


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).rjust(w) for c, w in zip(columns, widths, strict=True)))


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def emit_json(obj: dict) -> None:
    """The last line of every benchmark: one JSON object."""
    sys.stdout.flush()
    print(json.dumps(obj, default=float))


def print_regional(title: str, tab) -> None:
    """Print a :func:`jaxphot.sim.varying.regional_table` with readable number formats."""
    for c, f in (("bias_mmag", ".1f"), ("pull_mad_std", ".3f"), ("pull_mad_std_err", ".3f"),
                 ("completeness", ".4f")):
        if c in tab.colnames:
            tab[c].format = f
    print(f"\n{title}")
    print(tab)


def regional_summary(tab, seconds: float | None = None) -> dict:
    """The JSON summary of a regional table: worst bias, pull range, lowest completeness."""
    reg = tab[tab["row"] >= 0]
    out = {"max_abs_bias_mmag": float(np.nanmax(np.abs(reg["bias_mmag"]))),
           "pull_mad_std_range": [float(np.nanmin(reg["pull_mad_std"])),
                                  float(np.nanmax(reg["pull_mad_std"]))],
           "min_completeness": float(np.nanmin(reg["completeness"])),
           "regions": [dict(zip(tab.colnames, map(float, r), strict=True)) for r in tab]}
    if seconds is not None:
        out["seconds"] = round(seconds, 1)
    return out
