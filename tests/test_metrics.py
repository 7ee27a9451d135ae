"""metrics.jsonl and TensorBoard events: the same values, read back by TensorBoard's own reader."""
import json

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from distill_jax import config as config_lib
from distill_jax.training import loop, metrics, runlife, workdir_io
from helpers import synthetic_data, tiny_run_config

_config = tiny_run_config


def _scalars(directory, tag):
    events = EventAccumulator(str(directory))
    events.Reload()
    return {e.step: e.value for e in events.Scalars(tag)}


def test_a_run_writes_jsonl_and_tensorboard_with_equal_values(tmp_path):
    loop.train_and_evaluate(_config(), tmp_path, data=synthetic_data())
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if "loss" in r]
    evals = [r for r in lines if "test_accuracy" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6] and [r["step"] for r in evals] == [2, 4, 6]
    first = train[0]
    assert set(first) >= {"step", "epoch", "loss", "train_accuracy", "lr", "keep_rate", "images_per_s",
                          "loss_mean", "train_accuracy_mean"}
    assert first["images_per_s"] is None  # the compiling first step is left out of the speed
    assert train[1]["images_per_s"] > 0 and len(first["loss"]) == 2
    for seed_index, seed in enumerate((0, 1)):
        loss = _scalars(tmp_path / "tb" / f"seed_{seed}", "loss")
        test = _scalars(tmp_path / "tb" / f"seed_{seed}", "test_accuracy")
        assert sorted(loss) == [1, 2, 3, 4, 5, 6]
        for r in train:
            assert loss[r["step"]] == pytest.approx(r["loss"][seed_index], rel=1e-6)
        for r in evals:
            assert test[r["step"]] == pytest.approx(r["test_accuracy"][seed_index], rel=1e-6)
    lr = _scalars(tmp_path / "tb", "lr")
    assert all(lr[r["step"]] == pytest.approx(r["lr"], rel=1e-6) for r in train)
    results = json.loads((tmp_path / "results.json").read_text())
    assert evals[-1]["test_accuracy"] == results["final_accuracy"]["per_seed"]


def test_a_resumed_run_keeps_each_step_once(tmp_path):
    data = synthetic_data()
    loop.train_and_evaluate(_config(**{"train.stop_after_epochs": 2}), tmp_path, data=data)
    with open(tmp_path / "metrics.jsonl", "a") as f:  # as if killed after logging past the checkpoint
        f.write(json.dumps({"step": 5, "loss": [9.0, 9.0]}) + "\n" + '{"step": 6, "lo')
    loop.train_and_evaluate(_config(), tmp_path, data=data)
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 2, 3, 4, 4, 5, 6, 6]  # train lines, plus an eval line at each epoch end


def test_progress_leaves_compilation_out_of_the_rate_and_gives_an_eta(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: now[0])
    progress = metrics.Progress(total=10)
    now[0] = 10.0
    progress.started(1)  # compile + first step took 10 s
    assert progress.compile_seconds == 10.0 and progress.eta() is None
    now[0] = 14.0
    progress.update(5)  # 4 more steps in 4 s: 1 step/s, 5 steps left
    assert progress.rate() == pytest.approx(1.0) and progress.eta() == pytest.approx(5.0)
    assert progress.line() == "elapsed 0:00:14 eta 0:00:05"
    assert metrics.format_duration(3725) == "1:02:05" and metrics.format_duration(None) == "?"


def test_the_step_timer_times_the_first_step_apart_and_leaves_pauses_out(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(runlife.time, "perf_counter", lambda: now[0])
    timer = runlife.StepTimer(total=6, done=0)
    now[0] = 10.0
    assert timer.step(1, None) is True and timer.compile_seconds == 10.0  # the compiling step
    now[0] = 11.0
    assert timer.step(2, None) is False
    now[0] = 13.0
    timer.step(3, None)
    assert timer.lap() == (2, 3.0)  # steps 2 and 3, from the end of step 1
    with timer.paused():  # a checkpoint
        now[0] = 20.0
    now[0] = 21.0
    timer.step(4, None)
    assert timer.lap() == (1, 1.0) and timer.lap() == (0, 0.0)
    assert timer.seconds_per_step() == pytest.approx(4.0 / 3)
    assert timer.line() == "elapsed 0:00:21 eta 0:00:07"  # the ETA counts pauses: 3 steps in 11 s, 2 left


def test_due_every_n_and_at_the_end():
    assert [s for s in range(1, 11) if runlife.due(s, 3, 10)] == [3, 6, 9, 10]
    assert [s for s in range(1, 5) if runlife.due(s, 1, 4)] == [1, 2, 3, 4]


def test_a_distillation_writes_its_loss_and_image_grid_as_events(tmp_path):
    from distill_jax.distillation import distill_mode
    from test_distillation import _config as distill_config
    from test_distillation import _real

    distill_mode.run_distillation(distill_config(), tmp_path, real=_real("standardize"))
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4, 6]
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert {e.step: e.value for e in events.Scalars("loss")} == pytest.approx({r["step"]: r["loss"] for r in lines})
    assert [e.step for e in events.Images("distilled_images")] == [3, 6]  # one grid per checkpoint


def test_experiment_eta_from_the_cells_trained_so_far(monkeypatch):
    from distill_jax.experiments import registry, reproduce
    from distill_jax.report.results_record import Role

    def cell(epochs, seeds, role=Role.STUDENT):
        c = config_lib.default_config()
        c.train.epochs, c.num_seeds = epochs, seeds
        return registry.Cell("x", "x", c, role)

    eta = reproduce.ExperimentETA()
    assert eta.line([cell(10, 3)]).endswith("experiment eta ~?")  # nothing measured yet
    eta.done(cell(10, 3), seconds=60.0)  # 2 s per seed-epoch
    eta.done(cell(5, 2, role=Role.DISTILL), seconds=30.0)  # no seed-epochs: left out
    assert reproduce.seed_epochs(cell(5, 2, role=Role.DISTILL)) == 0
    assert eta.line([cell(20, 3), cell(5, 1)]).endswith("experiment eta ~0:02:10")  # (60 + 5) x 2 s


def test_a_run_saves_the_grid_of_its_training_set_once(tmp_path):
    from PIL import Image

    loop.train_and_evaluate(_config(**{"train.epochs": 1}), tmp_path, data=synthetic_data())
    grid = np.asarray(Image.open(tmp_path / workdir_io.TRAIN_SET_GRID))
    assert grid.shape == (4 * 33 - 1, 4 * 33 - 1)  # 4 classes x 4 images, 8 px enlarged to 32, 1 px gaps
