"""The whole pipeline as one 'reproduce' experiment: distil, teacher, real yardstick, students.

The cells are the ones `configs/pipeline.py` runs (built by `registry.pipeline_experiment`),
shrunk to toy sizes and pointed at a tiny on-disk dataset so that every mode loads its data
the way it does in real use.
"""
import json
import pathlib
import sys

import pytest

from distill_jax import config as config_lib
from distill_jax.experiments import recipes, registry, reproduce
from distill_jax.formats import distilled as distilled_lib
from distill_jax.report.results_record import Role
from helpers import write_toy_npz_dataset

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import distill as distill_configs  # noqa: E402
from configs import pipeline as pipeline_configs  # noqa: E402

CLASSES, SIZE = 4, 8


def _shrink(cells, data_dir):
    """Toy sizes for every cell; the wiring between cells (set path, teacher path) is kept."""
    for cell in cells:
        c = cell.config
        c.data.dataset, c.data.data_dir = "npz", str(data_dir)
        if cell.role is Role.DISTILL:
            d = c.distill
            d.ipc, d.steps, d.checkpoint_every_steps, d.width, d.depth = 2, 2, 2, 4, 2
            d.augment_ops, d.dm.real_per_class = "flip", 4
            c.log_every_steps = 1
            continue
        if c.data.source == "real":
            c.data.per_class = 2
        if c.model.name == "convnet":
            c.model.width, c.model.depth = 4, 2
        else:
            c.model.name, c.model.width = "resnet10", 2
        c.train.epochs, c.train.batch_size, c.train.augment.k = 2, 8, 0
        c.train.cycle_epochs, c.train.warmup_epochs, c.train.keep_rate.period_epochs = 2, 1, 1
        c.eval_every_epochs, c.checkpoint_every_epochs, c.data.eval_batch_size = 1, 2, 64
        if c.train.keep_rate.enabled:  # the three phases at toy length: 1 epoch, 2 drops of 0.25, the rest
            c.train.epochs, c.train.keep_rate.step = 4, 0.25
    return cells


@pytest.fixture
def toy_pipeline(tmp_path):
    data_dir = write_toy_npz_dataset(tmp_path / "data", CLASSES, SIZE)

    def builder(workdir, scale, *, split_seeds, num_seeds, seed):
        cells = registry.pipeline_experiment("dm", "fashion_mnist", 10, "resnet18", workdir, scale,
                                                split_seeds=split_seeds, num_seeds=num_seeds, seed=seed)
        return _shrink(cells, data_dir)

    registry.register_experiment("toy_pipeline", builder)
    yield "toy_pipeline"
    registry.unregister_experiment("toy_pipeline")


def test_pipeline_distils_then_trains_every_cell_on_that_set_and_resumes(tmp_path, toy_pipeline):
    config = config_lib.default_config()
    config.mode, config.num_seeds = "reproduce", 2
    config.reproduce.experiment = toy_pipeline
    work = tmp_path / "run"
    out = reproduce.run_reproduction(config, work)

    cells = {c["cell"]: c for c in out["cells"]}
    assert list(cells) == ["distill", "teacher", "real_subset", "baseline", "full"]
    assert cells["distill"]["role"] == "distill" and cells["distill"]["final_accuracy"] is None
    for name in ("teacher", "real_subset", "baseline", "full"):
        acc = cells[name]["final_accuracy"]
        assert len(acc["per_seed"]) == 2 and all(0 <= a <= 100 for a in acc["per_seed"])

    set_path = work / "distill" / "distilled.npz"
    dset = distilled_lib.load_distilled(set_path)
    assert dset.images.shape == (CLASSES * 2, SIZE, SIZE, 1) and dset.preprocessing == "standardize"
    # the trained cells read that set (real_subset reads real images), and Full distils from the teacher cell
    for name in ("teacher", "baseline", "full"):
        saved = json.loads((work / name / "record.json").read_text())["config"]
        assert saved["data"]["source"] == "distilled" and saved["data"]["distilled_path"] == str(set_path)
    full = json.loads((work / "full" / "record.json").read_text())["config"]
    assert full["train"]["kd"]["enabled"] and full["train"]["kd"]["teacher_path"] == str(work / "teacher")
    assert full["model"]["droppath"] and full["train"]["keep_rate"]["enabled"]
    assert json.loads((work / "real_subset" / "record.json").read_text())["config"]["data"]["source"] == "real"

    table = (work / "table.md").read_text()
    assert (
        "Distilled set: DM, 2 image(s) per class, 2 steps of convnet (width 4, instance norm)" in table
        and str(set_path) in table
    )
    assert table.count("\n| ") == 5  # header + the four trained cells; the distill cell is not a row
    assert out["summary"].endswith(out["table"])

    # Rerunning finds every cell finished: nothing retrains, the set is not re-distilled.
    mtime = set_path.stat().st_mtime_ns
    again = reproduce.run_reproduction(config, work)
    assert set_path.stat().st_mtime_ns == mtime
    assert [c["final_accuracy"] for c in again["cells"]] == [c["final_accuracy"] for c in out["cells"]]


def test_unfinished_distillation_stops_the_pipeline_with_how_to_continue(tmp_path, toy_pipeline):
    config = config_lib.default_config()
    config.mode, config.num_seeds = "reproduce", 1
    config.reproduce.experiment = toy_pipeline
    cells = registry.get_experiment(toy_pipeline, tmp_path)
    cells[0].config.distill.stop_after_steps = 1
    with pytest.raises(reproduce.ReproductionError, match=r"stopped at step 1 of 2.*rerun the same command"):
        reproduce.run_cell(cells[0], tmp_path / "distill", None, split_seeds=False)


def test_pipeline_config_names_the_experiment_and_scale():
    c = config_lib.validate(pipeline_configs.get_config())
    assert c.mode == "reproduce" and c.reproduce.experiment == "pipeline_dm_fashion_mnist_10_resnet18"
    assert (c.reproduce.epoch_divisor, c.reproduce.width, c.num_seeds) == (20, 16, 3)
    assert pipeline_configs.get_config("frepo").reproduce.experiment == "pipeline_frepo_fashion_mnist_10_resnet18"
    with pytest.raises(ValueError, match=r"configs/pipeline.py: argument must be one of \('dm', 'frepo'\), got 'kip'"):
        pipeline_configs.get_config("kip")


@pytest.mark.parametrize("distiller,model_name,student_norm,recipe", [
    ("dm", "convnet", "instance", "standardize"), ("frepo", "convnet_frepo", "batch", "zca_frepo")])
def test_pipeline_cells_follow_the_distiller(tmp_path, distiller, model_name, student_norm, recipe):
    scale = registry.Scale(epoch_divisor=20, lr_multiplier=20.0, width=16, teacher_width=32)
    cells = registry.get_experiment(f"pipeline_{distiller}_fashion_mnist_10_resnet18", tmp_path, scale)
    by_name = {c.name: c for c in cells}
    assert by_name["distill"].config.distill.method == distiller and by_name["distill"].config.distill.steps == 300
    assert by_name["teacher"].config.model.name == model_name and by_name["teacher"].config.model.width == 32
    assert (
        by_name["real_subset"].config.data.preprocessing == recipe
        and by_name["real_subset"].config.data.per_class == 10
    )
    assert by_name["baseline"].config.model.get("norm") == student_norm
    # The teacher and the yardstick too.
    assert {c.config.model.get("norm") for c in cells if c.role is not Role.DISTILL} == {student_norm}
    assert (by_name["baseline"].config.train.epochs, by_name["full"].config.train.epochs) == (50, 200)
    assert by_name["full"].config.train.kd.teacher_path == str(tmp_path / "teacher")
    for cell in cells:
        config_lib.validate(cell.config)


def test_distill_config_file_and_library_builder_agree():
    assert (
        distill_configs.get_config("cifar10_jpeg,50").to_dict() == recipes.distill_config("cifar10_jpeg", 50).to_dict()
    )
    with pytest.raises(recipes.ExperimentError, match=r"distillation method 'kip' is not known"):
        recipes.distill_config("fashion_mnist", 10, "kip")
    with pytest.raises(recipes.ExperimentError, match=r"dataset 'svhn' is not known"):
        registry.get_experiment("pipeline_dm_svhn_10_resnet18", "/tmp/unused")


def test_distill_cell_alone_writes_the_set_and_an_empty_table(tmp_path, toy_pipeline):
    config = config_lib.default_config()
    config.mode, config.num_seeds = "reproduce", 1
    config.reproduce.experiment, config.reproduce.cells = toy_pipeline, "distill"
    out = reproduce.run_reproduction(config, tmp_path)
    assert [c["cell"] for c in out["cells"]] == ["distill"]
    assert (tmp_path / "distill" / "distilled.npz").is_file() and not (tmp_path / "accuracy_by_cell.png").exists()
    assert out["table"].count("\n") == 2  # header and rule only
