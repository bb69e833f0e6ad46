"""Multi-device fits (jaxphot.sharding): sharded results equal fit_cutouts' to float rounding.

The two-device case runs in a subprocess, because the number of CPU host devices
(``--xla_force_host_platform_device_count``) must be set before JAX starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

from jaxphot.scale.sharding import adaptive_chunk_size, is_out_of_memory

_CHILD = textwrap.dedent(
    """
    import json
    import numpy as np
    import jax
    import jaxphot.scale.sharding as S
    from jaxphot import GaussianPRF, fit_cutouts
    from jaxphot.sim.cutouts import simulate_cutouts

    assert len(jax.devices()) == 2, jax.devices()
    psf = GaussianPRF(2.5)
    sim = simulate_cutouts(psf, 100, (11, 11), seed=3)
    x0, y0 = sim.x + 0.3, sim.y - 0.2
    kw = dict(gain=1.0, read_noise=5.0, chunk_size=128)
    ref = fit_cutouts(sim.data, psf, x0, y0, **kw)
    two = S.fit_sharded(sim.data, psf, x0, y0, **kw)

    # An out-of-memory error on the first call halves the chunk (128 -> 64 per device, the
    # same compiled shape here) and retries instead of crashing.
    real, calls = S._compiled, []
    def flaky(*a):
        fn, specs = real(*a)
        def run(*args):
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 1.0GiB")
            return fn(*args)
        return run, specs
    S._compiled = flaky
    with S.use_devices(chunk_size=128) as runner:
        oom = fit_cutouts(sim.data, psf, x0, y0, **kw)
    S._compiled = real

    def diff(a, b):
        out = {}
        for k in ("x_fit", "y_fit", "flux_fit", "flux_err", "x_err", "bkg", "chi2"):
            u, v = np.asarray(getattr(a, k), float), np.asarray(getattr(b, k), float)
            out[k] = float(np.nanmax(np.abs(u - v) / np.maximum(np.abs(u), 1e-6)))
            out[k + "_nan_same"] = bool(np.array_equal(np.isnan(u), np.isnan(v)))
        out["flags_same"] = bool(np.array_equal(a.flags, b.flags))
        return out

    print(json.dumps(dict(two=diff(ref, two), oom=diff(ref, oom), n_oom=runner.n_oom,
                          chunk_after=runner.chunk, n_ok=int((ref.flags == 0).sum()),
                          truth_x=float(np.median(np.abs(two.x_fit[:, 0] - sim.x[:, 0]))))))
    """
)


def test_two_devices_equal_one(tmp_path):
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    env["JAX_PLATFORMS"] = "cpu"
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    for case in ("two", "oom"):
        d = res[case]
        assert d["flags_same"], case
        for k in ("x_fit", "y_fit", "flux_fit", "flux_err", "x_err", "bkg", "chi2"):
            assert d[k + "_nan_same"], (case, k)
            # Same solver, same float32 arithmetic; only the grouping into calls differs.
            assert d[k] < 1e-4, (case, k, d[k])
    assert res["n_oom"] == 1 and res["chunk_after"] == 64
    assert res["n_ok"] >= 95  # the fits themselves are good, not just equal
    assert res["truth_x"] < 0.1


def test_out_of_memory_detection():
    assert is_out_of_memory(RuntimeError("RESOURCE_EXHAUSTED: Out of memory while allocating"))
    assert not is_out_of_memory(ValueError("x must be finite"))


def test_adaptive_chunk_size_on_cpu_is_default():
    from jaxphot.core.fit import default_chunk_size

    # CPUs report no memory statistics: cache-sized chunks, as fit_cutouts uses.
    assert adaptive_chunk_size((15, 15), 6) == default_chunk_size((15, 15), 6)


def test_adaptive_chunk_size_follows_free_memory():
    class FakeGPU:
        platform = "gpu"

        def __init__(self, free):
            self.free = free

        def memory_stats(self):
            return {"bytes_limit": self.free + 1000, "bytes_in_use": 1000}

    small = adaptive_chunk_size((15, 15), 6, device=FakeGPU(200 * 2**20))
    big = adaptive_chunk_size((15, 15), 6, device=FakeGPU(60 * 2**30))
    huge_cutouts = adaptive_chunk_size((41, 41), 51, device=FakeGPU(60 * 2**30), oversampling=4)
    for n in (small, big, huge_cutouts):
        assert n >= 64 and n & (n - 1) == 0  # powers of two: few compiled shapes
    assert small < big  # less free memory, smaller chunks
    assert huge_cutouts < big  # bigger problems, fewer per chunk
    assert big <= 1 << 17
    assert np.log2(big / small) >= 5
