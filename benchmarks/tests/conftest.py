"""Test setup for the benchmark scripts: the scripts beside this folder import as modules, JAX runs
on one CPU device (as the CPU benchmarks do), and compiled programs are cached on disk as in the
main suite, so repeated runs load them instead of compiling."""
import os
import pathlib
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("DISTILL_JAX_TEST_XLA_CACHE",
                                 os.path.join(tempfile.gettempdir(), "distill_jax_test_xla_cache")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
