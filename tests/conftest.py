"""Shared pytest fixtures."""

import jax
import pytest

from jaxphot.datasets import DataNotFoundError, find_data_dir


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_code():
    """Drop each test module's compiled XLA executables when it ends. The fast suite compiles
    thousands of shapes in one process; kept all together they once crashed XLA's CPU compiler
    (a segfault in compilation near the end of the suite). Re-compiles hit the persistent
    compilation cache."""
    yield
    jax.clear_caches()


@pytest.fixture
def shared_data():
    """Return a function ``get(name) -> Path`` that skips the test when the data set is absent."""

    def get(name):
        try:
            return find_data_dir(name)
        except DataNotFoundError as exc:
            pytest.skip(str(exc))

    return get


# Hypothesis profiles of the fuzz suite (tests/test_fuzz.py): fixed seed, no deadline (the
# first call of a shape compiles), no example database (every run replays the same cases).
try:
    from hypothesis import HealthCheck, settings

    _fuzz = dict(deadline=None, database=None, print_blob=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                        HealthCheck.filter_too_much,
                                        HealthCheck.function_scoped_fixture])
    settings.register_profile("jaxphot-fuzz-fast", max_examples=50, **_fuzz)
    settings.register_profile("jaxphot-fuzz-slow", max_examples=2000, **_fuzz)
except ImportError:  # hypothesis is in the test extra; without it test_fuzz.py is skipped
    pass


@pytest.fixture
def shifted_wcs():
    """``make(dx, dy)``: a TAN WCS at (150, +2) deg, 0.2"/px, on which the sky sits (dx, dy) px
    further along the detector than at (0, 0): the exposures of a dithered field."""
    from astropy.wcs import WCS

    def make(dx: float, dy: float) -> WCS:
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crval = [150.0, 2.0]
        w.wcs.crpix = [32.0 + dx, 32.0 + dy]
        w.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
        return w

    return make
