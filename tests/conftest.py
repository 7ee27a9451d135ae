"""Test setup: eight fake CPU devices so multi-device paths run on any machine.

The flag must be set before JAX initialises its backends, hence at import time here.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

# Many tests build the same small programs; a persistent compilation cache turns every
# repeated XLA compile (seconds to tens of seconds for a ResNet on CPU) into a file read.
jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("DISTILL_JAX_TEST_XLA_CACHE", os.path.join(tempfile.gettempdir(), "distill_jax_test_xla_cache")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data():
    """Path to ../shared/data; skips (with the reason) when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it is only beside the developers' checkout)")
    return SHARED_DATA
