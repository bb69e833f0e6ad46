"""Shared pytest fixtures."""

import pytest

from jaxphot.datasets import DataNotFoundError, find_data_dir


@pytest.fixture
def shared_data():
    """Return a function ``get(name) -> Path`` that skips the test when the data set is absent."""

    def get(name):
        try:
            return find_data_dir(name)
        except DataNotFoundError as exc:
            pytest.skip(str(exc))

    return get
