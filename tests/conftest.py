"""Test set-up: 8 simulated CPU devices (for sharding tests) and a float64 fixture."""

import os

# Must be set before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
from reformer_jax.runtime import configure_xla  # noqa: E402

configure_xla()  # the flags the entry points use, so tests run what users run

import pathlib  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

# Many tests compile the same small programs (the tiny training step, eval steps): share them
# through JAX's persistent compilation cache, across tests and pytest-xdist workers.
_CACHE = pathlib.Path(tempfile.gettempdir()) / "reformer_jax_test_compilation_cache"
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture
def x64():
    """Runs the test with float64 enabled (exact gradient and equivalence checks)."""
    with jax.enable_x64(True):
        yield
