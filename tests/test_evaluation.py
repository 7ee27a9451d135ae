"""Modes 'evaluate' and 'reproduce', run records, tables and plots, at toy sizes."""
import json

import chex
import jax
import numpy as np
import pytest

from distill_jax import config as config_lib
from distill_jax.data import pipeline, preprocess
from distill_jax.evaluate import EvaluationError, run_evaluation
from distill_jax.experiments import recipes, registry, reproduce
from distill_jax.report import plots, records, tables
from distill_jax.report.results_record import Role
from distill_jax.training import loop, metrics, saved_runs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tiny_data(classes=4, per_class=5, size=8, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    images = rng.normal(size=(len(labels), size, size, 1)).astype(np.float32) + labels[:, None, None, None] * 0.5
    test_labels = np.repeat(np.arange(classes), 6)
    test_images = (
        rng.normal(size=(len(test_labels), size, size, 1)).astype(np.float32) + test_labels[:, None, None, None] * 0.5
    )
    prep = preprocess.fit("none", np.zeros((2, 8, 8, images.shape[-1]), np.float32))
    return pipeline.TrainingData(images, labels, test_images, test_labels, classes, prep, "synthetic 8x8")


def _tiny_config(mode="teacher", num_seeds=2):
    c = config_lib.default_config()
    c.mode = mode
    c.num_seeds = num_seeds
    c.model.width, c.model.depth, c.model.norm = 4, 2, "batch"
    c.train.epochs, c.train.batch_size, c.train.learning_rate = 2, 10, 1e-3
    c.train.augment.k = 0  # augmentation has its own tests; compiling it here would only cost time
    c.eval_every_epochs, c.checkpoint_every_epochs = 1, 2
    return c


def _tiny_experiment(workdir, scale, *, split_seeds, num_seeds, seed):
    """A ConvNet teacher and a ConvNet student distilling from it: the mechanics of a paper experiment."""
    teacher = _tiny_config("teacher", num_seeds)
    student = _tiny_config("student", num_seeds)
    student.train.kd.enabled = True
    student.train.kd.teacher_path = registry.teacher_dir(workdir, split_seeds, seed)
    return [registry.Cell("teacher", "Teacher", teacher, Role.TEACHER),
            registry.Cell("student", "Student + KD", student, Role.STUDENT)]


@pytest.fixture
def tiny_experiment():
    registry.register_experiment("tiny_test", _tiny_experiment)
    yield "tiny_test"
    registry.unregister_experiment("tiny_test")


def _reproduce_config(name, **reproduce):
    c = config_lib.default_config()
    c.mode = "reproduce"
    c.num_seeds = 2
    c.reproduce.experiment = name
    for key, value in reproduce.items():
        c.reproduce[key] = value
    return c


def _cache(config, workdir, data):
    cells = registry.get_experiment(config.reproduce.experiment, workdir, split_seeds=config.reproduce.split_seeds,
                                       num_seeds=config.num_seeds)
    return {reproduce.data_key(c.config.data): data for c in cells}


def test_reproduce_runs_every_cell_writes_records_table_and_plots_then_resumes(tmp_path, tiny_experiment):
    data = _tiny_data()
    config = _reproduce_config(tiny_experiment)
    out = reproduce.run_reproduction(config, tmp_path, data_cache=_cache(config, tmp_path, data))
    table = (tmp_path / "table.md").read_text()
    assert tables.BEST_HEADER not in table and "final test acc. (%)" in table
    for name in ("teacher", "student"):
        record = json.loads((tmp_path / name / "record.json").read_text())
        run = json.loads((tmp_path / name / "results.json").read_text())
        assert record["final_accuracy"] == run["final_accuracy"]
        assert record["seeds"] == [0, 1] and len(record["history"]) == 2
        assert record["software"]["jax"] and record["software"]["flax"] and record["device"]["backend"] == "cpu"
        assert tables.format_mean_std(record["final_accuracy"]) in table
        assert (tmp_path / name / "accuracy.png").read_bytes()[:8] == PNG_MAGIC
        assert (tmp_path / name / "schedules.png").read_bytes()[:8] == PNG_MAGIC
    student = json.loads((tmp_path / "student" / "results.json").read_text())
    assert student["config"]["train"]["kd"]["teacher_path"] == str(tmp_path / "teacher")
    assert out["summary"].endswith(out["table"])
    assert (tmp_path / "accuracy_by_cell.png").read_bytes()[:8] == PNG_MAGIC

    # Resume: finished cells are not trained again; the table can add the labelled best column.
    runs_before = {p: p.read_bytes() for name in ("teacher", "student") for p in sorted((tmp_path / name).rglob("*"))
                   if p.is_file() and (p.name in ("results.json", "metrics.jsonl") or "checkpoints" in p.parts)}
    again = reproduce.run_reproduction(_reproduce_config(tiny_experiment, show_best=True), tmp_path,
                                       data_cache=_cache(config, tmp_path, data))
    assert tables.BEST_HEADER in again["table"]
    assert [c["final_accuracy"] for c in again["cells"]] == [c["final_accuracy"] for c in out["cells"]]
    assert {p: p.read_bytes() for p in runs_before} == runs_before  # the runs themselves untouched


def test_split_seeds_runs_one_program_per_seed_and_merges_them(tmp_path, tiny_experiment):
    data = _tiny_data()
    config = _reproduce_config(tiny_experiment, split_seeds=True, cells="teacher")
    out = reproduce.run_reproduction(config, tmp_path, data_cache=_cache(config, tmp_path, data))
    per_run = [json.loads((tmp_path / "teacher" / f"seed_{s}" / "results.json").read_text()) for s in (0, 1)]
    assert [r["seeds"] for r in per_run] == [[0], [1]]
    merged = out["cells"][0]
    assert merged["seeds"] == [0, 1]
    assert merged["final_accuracy"]["per_seed"] == [r["final_accuracy"]["per_seed"][0] for r in per_run]
    np.testing.assert_allclose(merged["final_accuracy"]["std"], np.std(merged["final_accuracy"]["per_seed"], ddof=1))
    assert not (tmp_path / "student").exists()  # only the cells asked for


def test_evaluate_mode_scores_every_seed_of_a_saved_run_like_the_loop(tmp_path):
    data = _tiny_data()
    trained = loop.train_and_evaluate(_tiny_config(), tmp_path / "run", data=data)
    c = config_lib.default_config()
    c.mode = "evaluate"
    c.evaluate.path = str(tmp_path / "run")
    out = run_evaluation(c, tmp_path / "eval", data=data)
    np.testing.assert_allclose(out["accuracy"]["per_seed"], trained["final_accuracy"]["per_seed"], atol=1e-4)
    on_disk = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert on_disk["seeds"] == [0, 1] and on_disk["checkpoint_step"] == 4 and on_disk["software"]["numpy"]
    assert "accuracy" in out["summary"]


def test_evaluate_needs_a_path(tmp_path):
    with pytest.raises(EvaluationError, match=r"evaluate\.path' is empty"):
        run_evaluation(config_lib.default_config(), tmp_path)


def test_evaluate_of_a_folder_that_is_not_a_run(tmp_path):
    c = config_lib.default_config()
    c.evaluate.path = str(tmp_path)
    with pytest.raises(EvaluationError, match=r"no model\.json"):
        run_evaluation(c, tmp_path / "eval")


def test_evaluate_of_a_missing_pth(tmp_path):
    c = config_lib.default_config()
    c.evaluate.path = str(tmp_path / "teacher.pth")
    with pytest.raises(EvaluationError, match=r"teacher\.pth does not exist"):
        run_evaluation(c, tmp_path / "eval")


def test_reproduce_needs_an_experiment_name(tmp_path):
    with pytest.raises(reproduce.ReproductionError, match=r"reproduce\.experiment' is empty"):
        reproduce.run_reproduction(_reproduce_config(""), tmp_path)


def test_reproduce_rejects_unknown_cells(tmp_path, tiny_experiment):
    with pytest.raises(reproduce.ReproductionError, match=r"\['fifth'\].*\['teacher', 'student'\]"):
        reproduce.run_reproduction(_reproduce_config(tiny_experiment, cells="teacher,fifth"), tmp_path)


def test_summary_mean_and_sample_std():
    s = metrics.summarize([60.0, 62.0, 67.0])
    assert s["mean"] == pytest.approx(63.0)
    assert s["std"] == pytest.approx(np.sqrt(((3.0 ** 2) + 1.0 + 16.0) / 2))  # ddof=1 by hand
    assert metrics.summarize([50.0])["std"] == 0.0
    with pytest.raises(ValueError, match="no accuracies"):
        metrics.summarize([])


def test_best_over_training_is_per_seed_max_and_labelled():
    history = [{"epoch": 1, "test_accuracy": [10.0, 40.0]}, {"epoch": 2, "test_accuracy": [30.0, 20.0]}]
    best = records.best_over_training(history)
    assert best["per_seed"] == [30.0, 40.0] and best["selection"] == "selected on the test set"
    assert records.best_over_training([]) is None


def test_merge_keeps_common_epochs_and_requires_every_seed_finished():
    a = {
        "finished": True,
        "seeds": [0],
        "final_accuracy": metrics.summarize([50.0]),
        "history": [
            {"epoch": 1, "train_loss": 1.0, "test_accuracy": [40.0]},
            {"epoch": 2, "train_loss": 0.5, "test_accuracy": [50.0]},
        ],
    }
    b = {"finished": False, "seeds": [1], "final_accuracy": None,
         "history": [{"epoch": 1, "train_loss": 3.0, "test_accuracy": [30.0]}]}
    merged = records.merge_seed_results([a, b])
    assert merged["history"] == [{"epoch": 1, "train_loss": 2.0, "test_accuracy": [40.0, 30.0]}]
    assert merged["final_accuracy"] is None and merged["seeds"] == [0, 1]


def test_mean_std_formatting_and_markdown_table():
    assert tables.format_mean_std({"mean": 63.456, "std": 0.8}) == "63.46 ± 0.80"
    assert tables.format_mean_std(None) == "—"
    text = tables.markdown_table(["a", "b"], [["1", "x|y"]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1 | x\\|y |"]
    with pytest.raises(ValueError, match="row 0 has 1 cells, the header 2"):
        tables.markdown_table(["a", "b"], [["1"]])


def test_schedule_curves_of_the_full_configuration():
    c = recipes.scale_config(recipes.paper_config("resnet18", "frepo", "cifar10", 10, "full"), epoch_divisor=100)
    epochs, lrs, keeps = plots.schedule_curves(c, steps_per_epoch=2)
    assert len(epochs) == 80  # 40 epochs x 2 steps
    np.testing.assert_allclose(keeps[::10], [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.8, 0.8], rtol=1e-6)
    # the lr restarts from 0 at every keep-rate change (periodic schedule)
    np.testing.assert_allclose(lrs[::10][:7], 0.0, atol=1e-12)
    # warm-up of 1 epoch (2 steps): half the peak after one step
    np.testing.assert_allclose(lrs[1], 0.5 * 5e-5, rtol=1e-5)


def test_plots_write_png_files(tmp_path):
    c = recipes.paper_config("resnet18", "frepo", "cifar10", 10, "baseline")
    assert plots.plot_schedules(c, tmp_path / "s.png").read_bytes()[:8] == PNG_MAGIC
    run = {
        "seeds": [0, 1],
        "history": [{"epoch": 1, "test_accuracy": [10.0, 20.0]}, {"epoch": 2, "test_accuracy": [30.0, 35.0]}],
    }
    assert plots.plot_accuracy(run, tmp_path / "a.png").read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="no evaluations"):
        plots.plot_accuracy({"history": []}, tmp_path / "b.png")
    with pytest.raises(ValueError, match="no cell has evaluations"):
        plots.plot_experiment([{"label": "x", "history": [], "final_accuracy": None}], tmp_path / "c.png")
    with pytest.raises(ValueError, match="steps_per_epoch must be >= 1"):
        plots.schedule_curves(c, steps_per_epoch=0)


# ---- the published (reference-code) ConvNet teacher, against an independent numpy forward pass ----


def _reference_convnet_logits(state_dict, images_nhwc):
    """Logits of the reference code's ConvNet, written from its PyTorch definition in numpy (float64).

    features = 3 x [Conv2d(3x3, padding 1, bias) -> InstanceNorm (GroupNorm(C, C, affine)) -> ReLU ->
    AvgPool2d(2)] at indices (0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11); then flatten in PyTorch's
    (C, H, W) order and classifier = Linear(C*H*W, classes). NCHW throughout, as PyTorch is.
    """
    sd = {k: np.asarray(v, np.float64) for k, v in state_dict.items()}
    x = np.transpose(np.asarray(images_nhwc, np.float64), (0, 3, 1, 2))  # NHWC -> NCHW
    for conv, norm in ((0, 1), (4, 5), (8, 9)):
        weight, bias = sd[f"features.{conv}.weight"], sd[f"features.{conv}.bias"]  # (O, I, 3, 3), (O,)
        n, _, h, w = x.shape
        padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        # cross-correlation: out[n, o, y, x] = b[o] + sum_{i, dy, dx} W[o, i, dy, dx] * padded[n, i, y + dy, x + dx]
        # (3, 3, N, I, H, W)
        patches = np.stack([[padded[:, :, dy:dy + h, dx:dx + w] for dx in range(3)] for dy in range(3)])
        x = np.einsum("abnihw,oiab->nohw", patches, weight, optimize=True) + bias[None, :, None, None]
        # instance norm: per sample and channel over (H, W), biased variance, eps 1e-5, per-channel affine
        mean, var = x.mean(axis=(2, 3), keepdims=True), x.var(axis=(2, 3), keepdims=True)
        x = (x - mean) / np.sqrt(var + 1e-5)
        x = x * sd[f"features.{norm}.weight"][None, :, None, None] + sd[f"features.{norm}.bias"][None, :, None, None]
        x = np.maximum(x, 0.0)
        x = x.reshape(n, x.shape[1], h // 2, 2, w // 2, 2).mean(axis=(3, 5))  # avgpool 2x2, stride 2
    flat = x.reshape(x.shape[0], -1)  # PyTorch's x.view(N, -1): (C, H, W) order
    return flat @ sd["classifier.weight"].T + sd["classifier.bias"]


def _published_layout_state_dict(seed=0):
    """A state dict with the published CIFAR-10 MTT teacher's keys and shapes (width 128, depth 3,
    instance norm, 32x32 inputs -> classifier (10, 128 * 4 * 4)), random weights of torch's init scale."""
    rng = np.random.default_rng(seed)
    sd, channels = {}, 3
    for conv in (0, 4, 8):
        bound = 1 / np.sqrt(channels * 9)
        sd[f"features.{conv}.weight"] = rng.uniform(-bound, bound, (128, channels, 3, 3)).astype(np.float32)
        sd[f"features.{conv}.bias"] = rng.uniform(-bound, bound, 128).astype(np.float32)
        sd[f"features.{conv + 1}.weight"] = rng.uniform(0.5, 1.5, 128).astype(np.float32)
        sd[f"features.{conv + 1}.bias"] = rng.normal(0, 0.2, 128).astype(np.float32)
        channels = 128
    sd["classifier.weight"] = rng.normal(0, 2048 ** -0.5, (10, 2048)).astype(np.float32)
    sd["classifier.bias"] = rng.normal(0, 0.1, 10).astype(np.float32)
    return sd


@pytest.fixture(params=["synthetic", "published"])
def teacher_pth(request, tmp_path):
    """(path, raw state dict) of a reference-code teacher .pth: one written here with the published
    teacher's layout (runs anywhere), and the published one itself (only beside ../shared/data)."""
    if request.param == "synthetic":
        from test_torch_pickle import tensor, write_torch_file

        sd = _published_layout_state_dict()
        path = write_torch_file(tmp_path / "checkpoint_best.pth", {"state_dict": {k: tensor(v) for k, v in sd.items()},
                                                                   "epoch": 200})
        return path, sd
    from distill_jax.formats.torch_pickle import load_torch_file

    path = request.getfixturevalue("shared_data") / "teachers" / "cifar10_1_mtt_convnet" / "checkpoint_best.pth"
    return path, load_torch_file(path)["state_dict"]


def test_published_teacher_logits_match_numpy_on_both_routes(tmp_path, teacher_pth):
    """The .pth read directly as a KD teacher and the .pth imported as a run (one converter) both give the
    reference network's logits; mode 'evaluate' scores either with exactly the accuracy those logits imply."""
    from distill_jax.training import teacher as teacher_lib

    pth, state_dict = teacher_pth
    images = np.random.default_rng(0).normal(size=(12, 32, 32, 3)).astype(np.float32)
    expected = _reference_convnet_logits(state_dict, images)
    assert np.ptp(expected) > 0.1  # logits that vary: a dropped or transposed weight shows

    c = recipes.teacher_config("mtt", "cifar10_jpeg", 1)
    saved_runs.import_reference(pth, tmp_path / "teacher", c)
    saved_runs.import_reference(pth, tmp_path / "teacher", c)  # again, as a resumed reproduction does: no error
    assert json.loads((tmp_path / "teacher" / "model.json").read_text())["name"] == "convnet"
    for route in (pth, tmp_path / "teacher"):  # the .pth as a KD teacher; the imported run as a KD teacher
        module, variables = teacher_lib.load_teacher(route)
        assert (module.width, module.depth, module.norm) == (128, 3, "instance")
        logits = jax.jit(lambda v, x, module=module: module.apply(v, x, train=False))(variables, images)
        chex.assert_shape(logits, (12, 10))
        np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4, err_msg=str(route))

    # Labels: the reference's prediction for 8 images, another class for 4, so accuracy must be 8/12.
    predicted = expected.argmax(-1)
    top2 = np.sort(expected, axis=-1)[:, -2:]
    assert np.all(top2[:, 1] - top2[:, 0] > 1e-3)  # no near-tie that float32 rounding could flip
    labels = np.where(np.arange(12) < 8, predicted, (predicted + 1) % 10)
    data = pipeline.TrainingData(images, labels, images, labels, 10,
                                 preprocess.fit("none", np.zeros((2, 32, 32, 3), np.float32)), "random 32x32")
    c.evaluate.path = str(pth)
    direct = run_evaluation(c, tmp_path / "direct", data=data)
    c.evaluate.path = str(tmp_path / "teacher")
    imported = run_evaluation(c, tmp_path / "imported", data=data)
    assert direct["accuracy"]["per_seed"] == imported["accuracy"]["per_seed"] == [pytest.approx(100 * 8 / 12)]
    assert imported["seeds"] == [0]
