"""Fixtures shared by the test modules."""

import os

import pytest

from vib_jax import data


@pytest.fixture(scope="session")
def real_mnist():
    """Skips a test when real MNIST is not prepared, except under CI, where that is a failure."""
    if not data.is_prepared("mnist"):
        if os.environ.get("CI"):
            pytest.fail("MNIST is not prepared; CI must run `make data` before the tests.")
        pytest.skip("MNIST is not prepared: run `make data`.")
