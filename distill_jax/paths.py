"""Where the package keeps files between runs: one cache root, one sub-folder per kind of file.

The root is $DISTILL_JAX_CACHE, else $XDG_CACHE_HOME/distill_jax, else ~/.cache/distill_jax.
Under it:

- `kernels/`: the compiled oneDNN convolution library (`models/onednn_conv.py`);
  $DISTILL_JAX_KERNEL_CACHE overrides this folder alone.
- `xla/`: XLA's compiled programs (JAX's persistent compilation cache, set by the launcher);
  $DISTILL_JAX_XLA_CACHE overrides this folder alone.
- `preprocessing/`: transforms fitted on a training split (ZCA, standardisation).
- `data/`: the data root (dataset files, published distilled sets and teachers);
  $DISTILL_JAX_DATA overrides this folder alone.

The variables are read each time a path is asked for. This module imports nothing of the
package, so every layer can use it.
"""
import os
import pathlib

CACHE_ENV = "DISTILL_JAX_CACHE"
# sub-folder -> the environment variable that overrides it alone (None: none does)
SUBFOLDER_ENVS = {
    "kernels": "DISTILL_JAX_KERNEL_CACHE",
    "xla": "DISTILL_JAX_XLA_CACHE",
    "preprocessing": None,
    "data": "DISTILL_JAX_DATA",
}


def cache_root() -> pathlib.Path:
    """$DISTILL_JAX_CACHE, else $XDG_CACHE_HOME/distill_jax, else ~/.cache/distill_jax."""
    if os.environ.get(CACHE_ENV):
        return pathlib.Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base).expanduser() / "distill_jax"


def cache_subfolder(name: str) -> pathlib.Path:
    """The folder for one kind of file (a key of SUBFOLDER_ENVS): its own variable where set,
    else `cache_root() / name`."""
    if name not in SUBFOLDER_ENVS:
        raise ValueError(f"paths.py: unknown cache sub-folder {name!r}; expected one of {tuple(SUBFOLDER_ENVS)}")
    env = SUBFOLDER_ENVS[name]
    if env and os.environ.get(env):
        return pathlib.Path(os.environ[env]).expanduser()
    return cache_root() / name


def kernel_cache() -> pathlib.Path:
    """Compiled convolution kernels: $DISTILL_JAX_KERNEL_CACHE, else <cache root>/kernels."""
    return cache_subfolder("kernels")


def xla_cache() -> pathlib.Path:
    """XLA's persistent compilation cache: $DISTILL_JAX_XLA_CACHE, else <cache root>/xla."""
    return cache_subfolder("xla")


def preprocessing_cache() -> pathlib.Path:
    """Fitted preprocessing transforms: <cache root>/preprocessing."""
    return cache_subfolder("preprocessing")


def data_root() -> pathlib.Path:
    """The data root: $DISTILL_JAX_DATA, else <cache root>/data."""
    return cache_subfolder("data")
