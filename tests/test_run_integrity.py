"""Run integrity: a workdir holds one config, one process, verified checkpoints, strict results.

Each probe here is one that corrupted results before: a changed hyper-parameter resuming
silently, a refused run overwriting the finished run's files, flipped checkpoint bytes
restored without complaint, two processes in one workdir, NaN reported as a final accuracy.
"""
import json
import os
import stat
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from distill_jax import config as config_lib
from distill_jax.training import checkpoint as ckpt_lib
from distill_jax.training import loop, rundir
from helpers import synthetic_data, tiny_run_config


def _data():
    return synthetic_data(per_class=4, test_per_class=2)


_config = tiny_run_config


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    path = tmp_path_factory.mktemp("finished")
    loop.train_and_evaluate(_config(), path, data=_data())
    return path


def _snapshot(path):
    return {name: (path / name).read_bytes() for name in ("config.json", "model.json", "results.json")}


# one field per group that once resumed silently: lr, weight decay, augmentation, KD, keep rate,
# warm-up / cycle, preprocessing, label temperature, network
@pytest.mark.parametrize("field, value", [
    ("train.learning_rate", 0.5), ("train.weight_decay", 0.1), ("train.augment.k", 2), ("train.augment.ops", "flip"),
    ("train.kd.alpha", 0.8), ("train.kd.temperature", 4.0), ("train.keep_rate.min", 0.3),
    ("train.keep_rate.period_epochs", 7), ("train.warmup_fraction", 0.3), ("train.cycle_epochs", 9),
    ("data.preprocessing", "zca_mtt"), ("data.label_temperature", 1.0), ("model.width", 8), ("seed", 4),
    ("train.optimizer", "adamw"), ("train.epochs", 4)])
def test_a_rerun_with_another_config_stops_before_writing_anything(finished, field, value):
    before = _snapshot(finished)
    with pytest.raises(rundir.RunConfigError, match=rf"{field}: .* -> {value!r}") as err:
        loop.train_and_evaluate(_config(**{field: value}), finished, data=_data())
    assert "A rerun may change only: train.stop_after_epochs" in str(err.value)
    assert _snapshot(finished) == before  # the finished run is untouched: still evaluable, still a teacher


@pytest.mark.parametrize("field, value", [("log_every_steps", 5), ("eval_every_epochs", 3),
                                          ("checkpoint_every_epochs", 2), ("keep_checkpoints", 4),
                                          ("data.eval_batch_size", 7), ("train.stop_after_epochs", 9)])
def test_fields_safe_to_change_do_not_change_the_run(finished, field, value):
    assert rundir.config_differences(json.loads((finished / "config.json").read_text()),
                                     _config(**{field: value}), config_lib.default_config()) == []


def test_a_field_added_to_the_package_later_is_no_difference_at_its_default(finished):
    recorded = json.loads((finished / "config.json").read_text())
    del recorded["train"]["kd"]["allow_unfinished_teacher"]  # as if written before the field existed
    defaults = config_lib.default_config()
    assert rundir.config_differences(recorded, _config(), defaults) == []
    assert rundir.config_differences(recorded, _config(**{"train.kd.allow_unfinished_teacher": True}), defaults) == [
        "train.kd.allow_unfinished_teacher: (not recorded) -> True"]


def test_files_are_strict_json_and_readable_by_others(finished, tmp_path):
    for name in ("config.json", "model.json", "results.json"):
        assert stat.S_IMODE(os.stat(finished / name).st_mode) == 0o644
    rundir.write_json(tmp_path / "x.json", {"a": float("nan"), "b": [1.0, float("inf")], "c": np.float32(2.5)})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": None, "b": [1.0, None], "c": 2.5}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temporary file left behind


# ---------------------------------------------------------------- checkpoints verify themselves

def _tamper_latest(workdir):
    """Rewrites the newest checkpoint with changed weights but the digests of the original."""
    directory = (workdir / "checkpoints").resolve()
    manager = ocp.CheckpointManager(directory, item_names=("state", "meta"))
    step = manager.latest_step()
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                             meta=ocp.args.JsonRestore()))
    tampered = jax.tree.map(lambda x: np.asarray(x) + 1.0, restored["state"])
    manager.delete(step)
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tampered),
                                               meta=ocp.args.JsonSave(restored["meta"])), force=True)
    manager.wait_until_finished()
    manager.close()
    return step


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    data = _data()
    loop.train_and_evaluate(_config(**{"train.stop_after_epochs": 2}), tmp_path, data=data)
    bad = _tamper_latest(tmp_path)
    checkpointer = ckpt_lib.Checkpointer(tmp_path / "checkpoints")
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                            jax.eval_shape(lambda: jax.device_get(_restorable(tmp_path))))
    with caplog.at_level("WARNING"):
        step, _, _ = checkpointer.restore_latest(abstract, rundir.identity(_config(**{"train.stop_after_epochs": 2})),
                                                 config_lib.default_config())
    checkpointer.close()
    assert step < bad
    assert f"checkpoints/{bad} is damaged" in caplog.text and f"checkpoints/{step} instead" in caplog.text
    # and the run itself resumes from there to the end
    assert loop.train_and_evaluate(_config(), tmp_path, data=data)["finished"]


def _restorable(workdir):
    manager = ocp.CheckpointManager((workdir / "checkpoints").resolve(), item_names=("state", "meta"))
    state = manager.restore(manager.all_steps()[0], args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    manager.close()
    return state


def test_a_damaged_only_checkpoint_stops_the_run(tmp_path):
    data = _data()
    loop.train_and_evaluate(_config(**{"train.stop_after_epochs": 1}), tmp_path, data=data)
    bad = _tamper_latest(tmp_path)
    with pytest.raises(ckpt_lib.CheckpointError, match=rf"no usable checkpoint: checkpoint .*/{bad} is damaged"):
        loop.train_and_evaluate(_config(), tmp_path, data=data)


# ---------------------------------------------------------------- one run per workdir

def test_a_live_lock_stops_a_second_run_at_once(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from distill_jax.training import rundir; "
                               f"rundir.WorkdirLock({str(tmp_path)!r}).__enter__(); print('held', flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(rundir.WorkdirInUseError, match=f"in use by PID {holder.pid} on "):
            loop.train_and_evaluate(_config(), tmp_path, data=_data())
        assert not (tmp_path / "config.json").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over_and_released(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / rundir.LOCK_FILE).write_text(str(dead.pid))
    assert loop.train_and_evaluate(_config(**{"train.epochs": 1}), tmp_path, data=_data())["finished"]
    assert not (tmp_path / rundir.LOCK_FILE).exists()


# ---------------------------------------------------------------- divergence

def test_a_diverging_run_is_marked_diverged_not_finished(tmp_path):
    config = _config(**{"train.optimizer": "sgd", "train.learning_rate": 1e38, "train.augment.k": 0})
    results = loop.train_and_evaluate(config, tmp_path, data=_data())
    assert results["finished"] is False and results["final_accuracy"] is None
    assert results["diverged"]["step"] >= 1 and results["diverged"]["seeds"]
    text = (tmp_path / "results.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["diverged"] == results["diverged"]


# ---------------------------------------------------------------- reproduce

def _tiny_cells(workdir, lr):
    from distill_jax.experiments import registry

    teacher = _config(**{"train.learning_rate": lr, "num_seeds": 1})
    teacher.mode = "teacher"
    student = _config(**{"train.kd.enabled": True, "num_seeds": 1})
    student.train.kd.teacher_path = str(workdir / "teacher")
    return [registry.Cell("teacher", "Teacher", teacher, "teacher"),
            registry.Cell("student", "Student", student, "student")]


def test_reproduce_stops_on_a_changed_cell_or_runs_it_afresh_beside_the_old_one(tmp_path):
    from distill_jax.experiments import reproduce

    loop.train_and_evaluate(_tiny_cells(tmp_path, 1e-3)[0].config, tmp_path / "teacher", data=_data())
    changed = _tiny_cells(tmp_path, 2e-3)
    assert reproduce.cell_conflicts(changed[0], tmp_path / "teacher", False) == [
        "teacher: train.learning_rate: 0.001 -> 0.002"]
    with pytest.raises(rundir.RunConfigError, match="cell teacher .* another config"):
        reproduce._place_cells(changed, tmp_path, False, fresh=False)
    placed = reproduce._place_cells(changed, tmp_path, False, fresh=True)
    new_name = reproduce.fresh_cell_dir(tmp_path / "teacher", changed[0].config).name
    assert placed[0].name == new_name and new_name.startswith("teacher.")
    assert placed[1].name == "student"  # unchanged itself, but it now reads the fresh teacher
    assert placed[1].config.train.kd.teacher_path == str(tmp_path / new_name)


def test_a_diverged_cell_is_shown_as_diverged():
    from distill_jax.report import tables

    table = tables.experiment_table([{"label": "Full", "network": "resnet18", "seeds": [0, 1], "epochs": 4,
                                      "final_accuracy": None, "diverged": {"epoch": 3, "step": 6, "seeds": [1]}}])
    assert "| Full | resnet18 | 2 | 4 | diverged | diverged at epoch 3 (seed(s) 1) |" in table


def test_fuzzed_checkpoint_bytes_restore_exactly_or_are_refused(tmp_path):
    """Seeded byte flips and truncations of the newest checkpoint's files: each restore either
    returns exactly the saved arrays (the digests say so) or raises CheckpointError."""
    loop.train_and_evaluate(_config(**{"train.epochs": 1, "num_seeds": 1}), tmp_path / "run", data=_data())
    original = _restorable(tmp_path / "run")
    abstract = jax.eval_shape(lambda: original)
    identity = rundir.identity(_config(**{"train.epochs": 1, "num_seeds": 1}))
    step_dir = next(p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit())
    files = sorted(p for p in step_dir.rglob("*") if p.is_file() and p.stat().st_size > 0)
    rng = np.random.default_rng(0)
    outcomes = {"restored": 0, "refused": 0}
    for case in range(40):
        target = files[rng.integers(len(files))]
        saved = target.read_bytes()
        damaged = bytearray(saved)
        if case % 4 == 3:
            damaged = damaged[:rng.integers(len(damaged))]
        else:
            for at in rng.integers(len(damaged), size=rng.integers(1, 8)):
                damaged[at] ^= 1 << int(rng.integers(8))
        target.write_bytes(bytes(damaged))
        checkpointer = ckpt_lib.Checkpointer(tmp_path / "run" / "checkpoints")
        try:
            _, state, _ = checkpointer.restore_latest(abstract, identity, config_lib.default_config())
            jax.tree.map(np.testing.assert_array_equal, jax.device_get(state), original)
            outcomes["restored"] += 1
        except ckpt_lib.CheckpointError:
            outcomes["refused"] += 1
        finally:
            checkpointer.close()
            target.write_bytes(saved)
    print("checkpoint fuzz:", outcomes)
    assert sum(outcomes.values()) == 40 and outcomes["refused"] > 0, outcomes


def test_an_imported_teacher_cell_never_conflicts(tmp_path):
    from distill_jax.experiments import registry, reproduce

    config = _config()
    config.seed = 3
    (tmp_path / "teacher").mkdir()
    rundir.write_json(tmp_path / "teacher" / "config.json", {**config.to_dict(), "seed": 0})  # as import_teacher writes it
    cell = registry.Cell("teacher", "Teacher (published)", config, "import")
    assert reproduce.cell_conflicts(cell, tmp_path / "teacher", False) == []
    trained = registry.Cell("teacher", "Teacher", config, "teacher")
    assert reproduce.cell_conflicts(trained, tmp_path / "teacher", False) == ["teacher: seed: 0 -> 3"]
