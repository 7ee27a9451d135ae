"""Mistakes in what a run or `distill-jax show` / `inspect` is asked to read end in one line on
stderr and exit code 2, naming the field and the value expected: a distilled set of another
dataset than `data.dataset`, `data.per_class` over what a class holds, an unknown dataset name,
a set whose stored dataset does not match its own shape."""
import json

import numpy as np
import pytest

from distill_jax import cli, errors
from distill_jax import config as config_lib
from distill_jax.data import datasets, pipeline
from distill_jax.formats import distilled
from distill_jax.report import show
from test_launcher_errors import error_lines, launch


@pytest.fixture
def gray_npz(tmp_path, monkeypatch):
    """A 28x28x1 dataset of 3 classes (10 training images each), the shape of Fashion-MNIST."""
    monkeypatch.setenv("DISTILL_JAX_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("test", 9)):
        np.savez(tmp_path / f"{split}.npz", image=rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
                 label=np.repeat(np.arange(3), n // 3))
    return tmp_path


def _cifar_shaped_set(path, num_classes=3, provenance=None):
    rng = np.random.default_rng(1)
    dset = distilled.DistilledSet(rng.uniform(size=(6, 32, 32, 3)), np.arange(6) % num_classes, num_classes,
                                  "none", provenance or {"source": "mtt"})
    return distilled.save_distilled(dset, path)


def _data_cfg(root, **over):
    cfg = config_lib.default_config().data
    cfg.dataset, cfg.data_dir, cfg.per_class = "npz", str(root), 4
    for key, value in over.items():
        cfg[key] = value
    return cfg


def _one_line(err) -> str:
    message = errors.user_error_message(err)
    assert message is not None and "\n" not in message, f"not a user error: {type(err).__name__}: {err}"
    return message


def test_a_cifar_set_with_the_default_dataset_is_one_line_exit_2(gray_npz, tmp_path):
    # The most common mistake: a CIFAR set, data.dataset left at the default (a 28x28x1 dataset).
    path = _cifar_shaped_set(tmp_path / "set.npz")
    result = launch("--config=configs/fashion_mnist_ipc10.py", "--config.data.dataset=npz",
                    f"--config.data.data_dir={gray_npz}", "--config.data.source=distilled",
                    f"--config.data.distilled_path={path}", workdir=tmp_path / "run")
    assert result.returncode == errors.USER_ERROR_EXIT, result.stderr[-2000:]
    lines = error_lines(result)
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert ("config field 'data.dataset' = 'npz' has images of shape (28, 28, 1) and 3 classes, but the distilled "
            f"set data.distilled_path = '{path}' has images of shape (32, 32, 3) and 3 classes") in lines[0]


def test_a_set_with_another_class_count_names_the_datasets_it_fits(gray_npz, tmp_path):
    path = _cifar_shaped_set(tmp_path / "set.npz", num_classes=10)
    with pytest.raises(pipeline.DataConfigError) as err:
        pipeline.load_training_data(_data_cfg(gray_npz, source="distilled", distilled_path=str(path)))
    assert _one_line(err.value).endswith("has images of shape (32, 32, 3) and 10 classes; expected config field "
                                         "'data.dataset' to be one it fits: cifar10, cifar10_jpeg")


def test_per_class_over_what_a_class_holds_names_the_field_and_the_most_allowed(gray_npz):
    with pytest.raises(pipeline.DataConfigError) as err:
        pipeline.load_training_data(_data_cfg(gray_npz, per_class=11))
    message = _one_line(err.value)
    assert message.startswith("config field 'data.per_class' = 11 with data.dataset 'npz': ")
    assert message.endswith("has 10 images, cannot take 11 (expected per_class <= 10)")


def test_an_unknown_dataset_names_the_field_and_the_known_ones(gray_npz):
    with pytest.raises(datasets.DatasetNameError) as err:
        pipeline.load_training_data(_data_cfg(gray_npz, dataset="cifar11"))
    assert _one_line(err.value).startswith("config field 'data.dataset': unknown dataset 'cifar11'; expected one of "
                                           "cifar10, cifar100, cifar10_jpeg, fashion_mnist")


def test_show_with_an_unknown_dataset_is_one_line_exit_2(tmp_path, capsys):
    path = _cifar_shaped_set(tmp_path / "set.npz")
    assert cli.main(["show", str(path), "--out", str(tmp_path / "g.png"), "--dataset", "cifar11"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "distill-jax: error: --dataset: unknown dataset 'cifar11'; expected one of"
    )


def test_show_with_a_dataset_of_another_shape_is_one_line_exit_2(gray_npz, capsys):
    path = _cifar_shaped_set(gray_npz / "set.npz")
    code = cli.main(["show", str(path), "--out", str(gray_npz / "g.png"), "--dataset", "npz",
                     "--data-dir", str(gray_npz / "train.npz")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("distill-jax: error: --dataset = 'npz' has images of shape (28, 28, 1) and 3 classes, "
                             f"but the distilled set {path} has images of shape (32, 32, 3)")


def test_show_preprocessing_override_draws(tmp_path, capsys):
    # --preprocessing is show's own argument (the pixel space to undo), not passed twice.
    path = _cifar_shaped_set(tmp_path / "set.npz")
    out = tmp_path / "g.png"
    assert cli.main(["show", str(path), "--out", str(out), "--preprocessing", "none"]) == 0
    assert out.is_file() and "un-doing none" in capsys.readouterr().out


def test_a_set_whose_stored_dataset_does_not_match_it_is_refused(tmp_path, capsys):
    # Sets written by `distill` record the dataset they were made from; its shape and class count must hold.
    path = _cifar_shaped_set(tmp_path / "set.npz", num_classes=3, provenance={"source": "dm", "dataset": "cifar100"})
    assert cli.main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0] == (
        f"distill-jax: error: {path}: field 'metadata.provenance.dataset': the set says it was distilled from "
        "'cifar100', which has images (32, 32, 3) and 100 classes, but it holds images (32, 32, 3) and 3 classes; "
        "the file is corrupt or mislabelled")
    with pytest.raises(distilled.DistilledFormatError, match="metadata.provenance.dataset"):
        show.show_set(path, tmp_path / "g.png", preprocessing="none")
    fine = _cifar_shaped_set(tmp_path / "fine.npz", num_classes=10, provenance={"source": "dm", "dataset": "cifar10"})
    assert cli.main(["inspect", str(fine), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_classes"] == 10
