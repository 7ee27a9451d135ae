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
jax.config.update(
    "jax_compilation_cache_dir",
    os.environ.get("DISTILL_JAX_TEST_XLA_CACHE", os.path.join(tempfile.gettempdir(), "distill_jax_test_xla_cache")),
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

@pytest.fixture
def shared_data():
    """The real data folder (CIFAR-10 (JPEG), published sets and teachers) named by
    $DISTILL_JAX_DATA, the package's data root; skips (with the reason) when it is not set.
    `.ci/run` sets it to ../shared/data where that folder exists."""
    root = os.environ.get("DISTILL_JAX_DATA", "")
    if not root or not (pathlib.Path(root) / "cifar10_jpeg_test.npz").is_file():
        pytest.skip(f"real data folder not available: set DISTILL_JAX_DATA to the folder holding "
                    f"cifar10_jpeg_*.npz, distilled/ and teachers/ (now {root!r})")
    return pathlib.Path(root)
