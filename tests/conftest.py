"""Test setup: 8 fake CPU devices (for sharding tests), set before jax is imported anywhere."""

import os

# Tests check algorithms, not XLA's optimisation passes; at -O0 the many small programs compile ~25% faster.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8"
    + " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import pytest


@pytest.fixture
def key() -> jax.Array:
    return jax.random.PRNGKey(0)
