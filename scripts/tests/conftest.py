"""Fixtures of the accelerator scripts' tests: the environment the scripts run in, and the bundle
scripts/gpu_bundle.sh builds from the real data root (built once per test session; skipped, with the
reason, without the data root or without a package index for its wheels)."""
import os
import pathlib
import subprocess
import sys
import tempfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def _script_env(**extra) -> dict:
    """The scripts' environment: this interpreter, one CPU device (not the suite's 8 fake ones), and the
    suite's persistent XLA cache, so repeated dry runs load their programs instead of compiling them."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update({"PYTHON": sys.executable, "JAX_PLATFORMS": "cpu",
                "JAX_COMPILATION_CACHE_DIR": os.environ.get(
                    "DISTILL_JAX_TEST_XLA_CACHE", os.path.join(tempfile.gettempdir(), "distill_jax_test_xla_cache")),
                "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"})
    env.update(extra)
    return env


@pytest.fixture
def script_env():
    """`script_env(**extra)`: the environment to run a script with (extra variables added)."""
    return _script_env


@pytest.fixture(scope="session")
def bundle(tmp_path_factory):
    """scripts/gpu_bundle.sh run into a temporary folder from the real data root."""
    root = os.environ.get("DISTILL_JAX_DATA", "")
    needed = ("cifar10_jpeg_test.npz", "cifar10_jpeg_train.npz", "distilled/cifar10_10_frepo/images_best.pt",
              "distilled/cifar10_1_frepo/images_best.pt", "distilled/cifar10_1_mtt/images_best.pt",
              "teachers/cifar10_1_mtt_convnet/checkpoint_best.pth")
    if not root or not all((pathlib.Path(root) / f).is_file() for f in needed):
        pytest.skip(f"real data folder not available: set DISTILL_JAX_DATA to the folder holding "
                    f"{', '.join(needed)} (now {root!r})")
    folder = tmp_path_factory.mktemp("device") / "gpu_bundle"
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu_bundle.sh"), str(folder)], env=_script_env(),
                          capture_output=True, text=True, timeout=900)
    if done.returncode == 3:
        pytest.skip(f"no package index to download the wheels from: {done.stderr.strip()[-300:]}")
    assert done.returncode == 0, done.stdout + done.stderr
    return folder
