"""The package works from a (non-editable) install, with a config file outside the repository."""
import json
import os
import pathlib
import subprocess
import sys

from distill_jax.models import onednn_conv

ROOT = pathlib.Path(__file__).resolve().parents[1]

USER_CONFIG = '''
from distill_jax.config import default_config


def get_config():
    c = default_config()
    c.num_seeds = 1
    c.model.width = 4
    c.train.epochs = 1
    c.eval_every_epochs = 1
    return c
'''


def test_a_built_wheel_trains_from_a_config_file_anywhere(tmp_path):
    dist, site, elsewhere = tmp_path / "dist", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next(dist.glob("distill_jax-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    (elsewhere / "my_config.py").write_text(USER_CONFIG)
    env = {**os.environ, "PYTHONPATH": str(site), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    where = subprocess.run([sys.executable, "-c", "import distill_jax; print(distill_jax.__file__)"], cwd=elsewhere,
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(site)), where  # the installed copy, not the checkout
    if onednn_conv.unavailable_reason() is None:  # the wheel ships the kernels' C++ source
        env_cache = {**env, onednn_conv.CACHE_ENV: str(tmp_path / "kernels")}
        impl = subprocess.run(
            [sys.executable, "-c", "from distill_jax import models; print(models.resolve_conv('auto'))"],
            cwd=elsewhere,
            env=env_cache,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert impl == "onednn" and list((tmp_path / "kernels").glob("onednn_conv-*.so")), impl
    result = subprocess.run([sys.executable, "-m", "distill_jax.cli", "run", "--config=my_config.py",
                             "--workdir=run"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((elsewhere / "run" / "results.json").read_text())
    assert results["finished"] and len(results["final_accuracy"]["per_seed"]) == 1
