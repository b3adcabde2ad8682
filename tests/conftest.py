"""Fixtures shared by the test modules, and the suite's compilation cache."""

import os

# XLA's compiler takes most of the suite's time on 2 cores, and many tests compile the same
# programs under new closures, which jit's in-process cache cannot see. JAX's persistent cache,
# keyed by the compiled program, is shared by the pytest-xdist workers and the tests' subprocesses
# (they inherit the environment); set before JAX is imported. On the 2-core AMD EPYC, from an
# empty cache (2026-11-23): tests/test_train.py with tests/test_sweep_beta.py 4 min 56 s -> 3 min
# 25 s; the fresh clone's suite 14 min 21 s -> 12 min 12 s.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".jax_cache")),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

import pytest  # noqa: E402

from vib_jax import data  # noqa: E402


@pytest.fixture(scope="session")
def real_mnist():
    """Skips a test when real MNIST is not prepared, except under CI, where that is a failure."""
    if not data.is_prepared("mnist"):
        if os.environ.get("CI"):
            pytest.fail("MNIST is not prepared; CI must run `make data` before the tests.")
        pytest.skip("MNIST is not prepared: run `make data`.")
