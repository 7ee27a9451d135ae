"""Mode 'transfer': a pool of networks on one set, Baseline vs Full, and its report."""
import json
import pathlib

import numpy as np
import pytest

from distill_jax import cli, launcher
from distill_jax import config as config_lib
from distill_jax.experiments import recipes, registry, transfer
from distill_jax.formats import distilled as distilled_lib
from distill_jax.report import plots
from distill_jax.report.results_record import Role
from helpers import write_toy_npz_dataset

CLASSES, SIZE = 4, 8
# Shortest schedules that keep every phase whole: 1000 -> 10 epochs, 4000 -> 40, keep-rate period 5.
TOY_SCALE = registry.Scale(epoch_divisor=100, lr_multiplier=10.0, width=2, teacher_width=4, evals=2)


def _write_toy_set(path: pathlib.Path, source: str = "dm") -> pathlib.Path:
    """Two images per class in the 'none' pixel space, recorded as made by `source`."""
    labels = np.repeat(np.arange(CLASSES), 2)
    images = (0.15 * labels[:, None, None, None] + np.zeros((len(labels), SIZE, SIZE, 1))).astype(np.float32)
    images[np.arange(len(labels)), :, 2 * labels + 1, 0] += 0.3
    dset = distilled_lib.DistilledSet(images, labels, CLASSES, "none", {"format": "distill_jax", "source": source})
    return pathlib.Path(distilled_lib.save_distilled(dset, path))


@pytest.fixture
def toy(tmp_path):
    data_dir = write_toy_npz_dataset(tmp_path / "data", CLASSES, SIZE)
    set_path = _write_toy_set(tmp_path / "set.npz")
    config = transfer.transfer_config(set_path, "npz", networks="convnet,resnet10", num_seeds=2,
                                      widths="convnet:4", scale=TOY_SCALE, name="toy")
    config.data.data_dir = str(data_dir)
    config.data.eval_batch_size = 64
    return config


def test_pool_runs_end_to_end_and_resumes(toy, tmp_path, caplog):
    workdir = tmp_path / "transfer"
    result = transfer.run_transfer(config_lib.validate(toy), workdir)
    table = (workdir / "transfer.md").read_text()
    assert "Cross-architecture transfer: toy" in table
    assert "convnet (width 4, instance norm); Full without DropPath" in table  # a DM set: instance norm
    assert "resnet10 (width 2, instance norm)" in table
    assert (workdir / "transfer.png").stat().st_size > 0
    by_cell = {c["cell"]: c for c in result["cells"]}
    assert list(by_cell) == ["teacher", "convnet_baseline", "convnet_full", "resnet10_baseline", "resnet10_full"]
    for name, cell in by_cell.items():
        assert len(cell["final_accuracy"]["per_seed"]) == 2, name
    # The wiring: KD from the teacher cell; DropPath only where the network has blocks.
    full = json.loads((workdir / "resnet10_full" / "config.json").read_text())
    assert full["train"]["kd"]["teacher_path"] == str(workdir / "teacher")
    assert full["model"]["droppath"] and full["train"]["keep_rate"]["enabled"] and full["train"]["epochs"] == 40
    conv_full = json.loads((workdir / "convnet_full" / "config.json").read_text())
    assert conv_full["model"]["droppath"] is None and conv_full["train"]["kd"]["enabled"]
    assert conv_full["train"]["epochs"] == 10
    # The gain column is the difference of the means.
    b = by_cell["resnet10_baseline"]["final_accuracy"]["mean"]
    f = by_cell["resnet10_full"]["final_accuracy"]["mean"]
    assert f"{f - b:+.2f}" in table
    # A rerun trains nothing.
    mtimes = {p: p.stat().st_mtime_ns for p in workdir.glob("*/results.json")}
    caplog.set_level("INFO")
    transfer.run_transfer(config_lib.validate(toy), workdir)
    assert {p: p.stat().st_mtime_ns for p in workdir.glob("*/results.json")} == mtimes
    assert caplog.text.count("already finished (results.json); nothing to do") == 5


def test_table_by_hand():
    def rec(cell, label, per_seed, network="n"):
        acc = {"mean": float(np.mean(per_seed)), "std": float(np.std(per_seed, ddof=1)), "per_seed": per_seed}
        return {"cell": cell, "label": label, "network": network, "final_accuracy": acc, "role": "student"}

    records = [rec("teacher", "Training network", [50.0, 52.0], "convnet_frepo (batch norm)"),
               rec("vgg11_baseline", "vgg11 Baseline", [40.0, 42.0], "vgg11 (width 16, batch norm)"),
               rec("vgg11_full.ab12cd34", "vgg11 Full", [47.0, 49.0], "vgg11 (width 16, batch norm)")]
    table = transfer.transfer_table(records, ("vgg11", "vit"))
    row = next(line for line in table.splitlines() if line.startswith("| vgg11"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:6] == ["41.00 ± 1.41", "48.00 ± 1.41", "+7.00", "-10.00", "-3.00"]
    assert cells[6:] == ["40.00, 42.00", "47.00, 49.00"]
    vit_row = next(line for line in table.splitlines() if line.startswith("| vit"))
    assert "extension beyond the paper" in vit_row and "not finished" in vit_row
    assert table.startswith("Training network: Training network, convnet_frepo (batch norm): 51.00 ± 1.41")


def test_grouped_bars_draws_and_checks_lengths(tmp_path):
    out = plots.plot_grouped_bars(["a", "b"], {"Baseline": [(40, 1), (50, 2)], "Full": [(45, 1), (np.nan, 0)]},
                                  tmp_path / "bars.png", reference=(48.0, "teacher"))
    assert out.stat().st_size > 0
    with pytest.raises(ValueError, match="series 'Full' has 1 values for 2 groups"):
        plots.plot_grouped_bars(["a", "b"], {"Full": [(45, 1)]}, tmp_path / "bad.png")


def test_published_set_config_uses_its_pixel_space_and_teacher(monkeypatch, tmp_path):
    monkeypatch.setenv("DISTILL_JAX_DATA", str(tmp_path))
    published = tmp_path / "teachers" / "cifar10_10_mtt_convnet" / "checkpoint_best.pth"
    published.parent.mkdir(parents=True)
    published.write_bytes(b"")  # only its presence decides; it is read when the run starts
    mtt = transfer.published_transfer_config("mtt_cifar10_10", num_seeds=1)
    assert mtt.transfer.preprocessing == "zca_mtt" and mtt.transfer.set_source == "mtt"
    assert mtt.transfer.teacher == str(published)
    frepo = transfer.published_transfer_config("frepo_cifar10_jpeg_10")
    assert frepo.transfer.teacher == "" and frepo.data.dataset == "cifar10_jpeg"
    config_lib.validate(frepo)


@pytest.mark.parametrize("name, message", [
    ("frepo_cifar10", "not of the form"),
    ("kip_cifar10_10", "distillation method"),
    ("frepo_mnist_10", "dataset"),
    ("frepo_cifar10_7", "images per class"),
])
def test_published_set_name_errors(name, message):
    with pytest.raises(recipes.ExperimentError, match=message):
        transfer.published_transfer_config(name)


def _spec_error(toy, **fields):
    for key, value in fields.items():
        toy.transfer[key] = value
    with pytest.raises(recipes.ExperimentError) as err:  # TransferError or a name check of the recipes
        transfer.transfer_cells(toy, "/tmp/unused")
    return str(err.value)


def test_empty_set_path(toy):
    assert "transfer.set_path' is empty" in _spec_error(toy, set_path="")


def test_unknown_network(toy):
    assert "network" in _spec_error(toy, networks="convnet,resnet99") and "resnet99" in _spec_error(
        toy, networks="resnet99")


def test_network_named_twice(toy):
    assert "names a network twice" in _spec_error(toy, networks="convnet,convnet")


def test_bad_width(toy):
    assert "is not <network>:<width>" in _spec_error(toy, widths="resnet10:0")


def test_width_for_a_network_not_in_the_pool(toy):
    assert "which 'transfer.networks' does not name" in _spec_error(toy, widths="vgg11:8")


def test_teacher_folder_that_is_no_run(toy, tmp_path):
    message = _spec_error(toy, teacher=str(tmp_path))
    assert "neither a .pth file nor the workdir of a run" in message and "model.json" in message


def test_teacher_run_is_used_where_it_is(toy, tmp_path):
    run = tmp_path / "my_teacher"
    run.mkdir()
    (run / "model.json").write_text(json.dumps({"name": "convnet", "num_classes": 4,
                                                "options": {"width": 4, "norm": "instance"}}))
    toy.transfer.teacher = str(run)
    _, cells = transfer.transfer_cells(toy, tmp_path / "w")
    assert cells[0].role is Role.SCORE and cells[0].config.evaluate.path == str(run)
    assert cells[0].config.model.width == 4
    assert all(c.config.train.kd.teacher_path == str(run) for c in cells if c.config.train.kd.enabled)


def test_students_of_a_teacher_trained_with_split_seeds_read_its_first_seed(toy, tmp_path):
    toy.reproduce.split_seeds, toy.seed = True, 7
    _, cells = transfer.transfer_cells(toy, tmp_path / "w")
    assert cells[0].role is Role.TEACHER
    readers = {c.config.train.kd.teacher_path for c in cells if c.config.train.kd.enabled}
    assert readers == {str(tmp_path / "w" / "teacher" / "seed_7")}


def test_cli_builds_the_config_and_launches(monkeypatch, tmp_path):
    seen = {}

    def fake_launch(get_config, workdir, *, verbose=False, distributed=False, config_source=""):
        seen["config"], seen["workdir"] = config_lib.validate(get_config()), workdir
        seen["source"] = config_source
        return 0

    monkeypatch.setattr(launcher, "launch", fake_launch)
    code = cli.main(["transfer", str(tmp_path / "set.npz"), "--dataset", "fashion_mnist", "--workdir",
                     str(tmp_path / "w"), "--networks", "resnet18,vit", "--seeds", "2", "--widths", "vit:64",
                     "--width", "16", "--epoch-divisor", "5", "--lr-multiplier", "5", "--split-seeds"])
    assert code == 0
    c = seen["config"]
    assert c.mode == "transfer" and c.transfer.networks == "resnet18,vit" and c.num_seeds == 2
    assert c.transfer.widths == "vit:64" and c.reproduce.width == 16 and c.reproduce.epoch_divisor == 5
    assert c.reproduce.split_seeds and seen["workdir"] == str(tmp_path / "w")
    assert seen["source"] == "the config built from the transfer arguments"


def test_cli_names_the_transfer_arguments_when_the_config_cannot_be_built(tmp_path, capsys):
    code = cli.main(["transfer", "published:frepo_cifar10_7", "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert code == 2 and "cannot load the config built from the transfer arguments" in err and "images per class" in err
    assert "--config" not in err and not (tmp_path / "w").exists()


def test_cli_needs_a_dataset_for_a_set_file(tmp_path, capsys):
    assert cli.main(["transfer", str(tmp_path / "set.npz"), "--workdir", str(tmp_path / "w")]) == 2
    assert "--dataset is required" in capsys.readouterr().err
