"""One cache root (distill_jax/paths.py) from which every cache folder derives, as its users see them."""
import ast
import pathlib

import pytest

from distill_jax import paths
from distill_jax.data import datasets
from distill_jax.models import onednn_conv

OVERRIDES = ("DISTILL_JAX_CACHE", "DISTILL_JAX_KERNEL_CACHE", "DISTILL_JAX_XLA_CACHE", "DISTILL_JAX_DATA")


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in OVERRIDES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    return monkeypatch


def derived_folders() -> dict:
    """Each kind of cached file, where the module that uses it looks."""
    return {"kernels": onednn_conv.cache_dir(), "kernel_library": onednn_conv.library_path().parent,
            "xla": paths.xla_cache(), "preprocessing": paths.preprocessing_cache(), "data": datasets.data_root()}


EXPECTED = {"kernels": "kernels", "kernel_library": "kernels", "xla": "xla", "preprocessing": "preprocessing",
            "data": "data"}


def test_default_root_is_under_home(clean_env, tmp_path):
    root = tmp_path / "home" / ".cache" / "distill_jax"
    assert paths.cache_root() == root
    assert derived_folders() == {k: root / v for k, v in EXPECTED.items()}


def test_xdg_cache_home_moves_every_derived_folder(clean_env, tmp_path):
    clean_env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = tmp_path / "xdg" / "distill_jax"
    assert paths.cache_root() == root
    assert derived_folders() == {k: root / v for k, v in EXPECTED.items()}


def test_distill_jax_cache_overrides_the_root_and_xdg(clean_env, tmp_path):
    clean_env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    clean_env.setenv("DISTILL_JAX_CACHE", str(tmp_path / "mine"))
    assert paths.cache_root() == tmp_path / "mine"
    assert derived_folders() == {k: tmp_path / "mine" / v for k, v in EXPECTED.items()}


def test_a_sub_folder_variable_moves_that_folder_alone(clean_env, tmp_path):
    clean_env.setenv("DISTILL_JAX_CACHE", str(tmp_path / "root"))
    moved = {"DISTILL_JAX_KERNEL_CACHE": ("kernels", "kernel_library"), "DISTILL_JAX_XLA_CACHE": ("xla",),
             "DISTILL_JAX_DATA": ("data",)}
    for env, keys in moved.items():
        clean_env.setenv(env, str(tmp_path / env))
        folders = derived_folders()
        for key, folder in folders.items():
            assert folder == (tmp_path / env if key in keys else tmp_path / "root" / EXPECTED[key]), (env, key)
        clean_env.delenv(env)


def test_unknown_sub_folder_is_an_error():
    with pytest.raises(ValueError, match=r"paths.py: unknown cache sub-folder 'models'; expected one of"):
        paths.cache_subfolder("models")


def test_paths_imports_nothing_of_the_package():
    """Every layer (models included) uses it, so it may not import any of them."""
    tree = ast.parse(pathlib.Path(paths.__file__).read_text())
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    imported += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert imported and not [name for name in imported if name.startswith("distill_jax")], imported
