"""Run integrity: a workdir holds one config, one process, verified checkpoints, strict results.

Each probe here is one that corrupted results before: a changed hyper-parameter resuming
silently, a refused run overwriting the finished run's files, flipped checkpoint bytes
restored without complaint, two processes in one workdir, NaN reported as a final accuracy,
a set or teacher replaced under a resumed run, a damaged teacher scored without a warning,
TensorBoard curves lost to kills, a rerun of a finished run retraining it or adding files,
a full disk ending in a traceback, a damaged checkpoint burying its warning in tracebacks.
"""
import errno
import json
import os
import pathlib
import shutil
import stat
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from distill_jax import config as config_lib
from distill_jax import errors, evaluate, launcher
from distill_jax.formats import distilled
from distill_jax.report.results_record import Role
from distill_jax.training import checkpoint as ckpt_lib
from distill_jax.training import loop, workdir_io
from distill_jax.training import metrics as metrics_lib
from distill_jax.training import teacher as teacher_lib
from helpers import synthetic_data, tiny_run_config, write_toy_npz_dataset


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
    with pytest.raises(workdir_io.RunConfigError, match=rf"{field}: .* -> {value!r}") as err:
        loop.train_and_evaluate(_config(**{field: value}), finished, data=_data())
    assert "A rerun may change only: train.stop_after_epochs" in str(err.value)
    assert _snapshot(finished) == before  # the finished run is untouched: still evaluable, still a teacher


@pytest.mark.parametrize("field, value", [("log_every_steps", 5), ("eval_every_epochs", 3),
                                          ("checkpoint_every_epochs", 2), ("keep_checkpoints", 4),
                                          ("data.eval_batch_size", 7), ("train.stop_after_epochs", 9)])
def test_fields_safe_to_change_do_not_change_the_run(finished, field, value):
    assert workdir_io.config_differences(json.loads((finished / "config.json").read_text()),
                                     _config(**{field: value}), config_lib.default_config()) == []


def test_a_field_added_to_the_package_later_is_no_difference_at_its_default(finished):
    recorded = json.loads((finished / "config.json").read_text())
    del recorded["train"]["kd"]["allow_unfinished_teacher"]  # as if written before the field existed
    defaults = config_lib.default_config()
    assert workdir_io.config_differences(recorded, _config(), defaults) == []
    assert workdir_io.config_differences(
        recorded, _config(**{"train.kd.allow_unfinished_teacher": True}), defaults
    ) == ["train.kd.allow_unfinished_teacher: (not recorded) -> True"]


def test_files_are_strict_json_and_readable_by_others(finished, tmp_path):
    for name in ("config.json", "model.json", "results.json"):
        assert stat.S_IMODE(os.stat(finished / name).st_mode) == 0o644
    workdir_io.write_json(tmp_path / "x.json", {"a": float("nan"), "b": [1.0, float("inf")], "c": np.float32(2.5)})
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
        step, _, _ = checkpointer.restore_latest(
            abstract, workdir_io.identity(_config(**{"train.stop_after_epochs": 2})), config_lib.default_config()
        )
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
    with pytest.raises(
        ckpt_lib.CheckpointError, match=rf"checkpoints: no usable checkpoint: checkpoint .*/{bad} is damaged"
    ):
        loop.train_and_evaluate(_config(), tmp_path, data=data)


# ---------------------------------------------------------------- one run per workdir

def test_a_live_lock_stops_a_second_run_at_once(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from distill_jax.training import workdir_io; "
                               f"workdir_io.WorkdirLock({str(tmp_path)!r}).__enter__(); print('held', flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(workdir_io.WorkdirInUseError, match=f"in use by PID {holder.pid} on "):
            loop.train_and_evaluate(_config(), tmp_path, data=_data())
        assert not (tmp_path / "config.json").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over_and_released(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / workdir_io.LOCK_FILE).write_text(str(dead.pid))
    assert loop.train_and_evaluate(_config(**{"train.epochs": 1}), tmp_path, data=_data())["finished"]
    assert not (tmp_path / workdir_io.LOCK_FILE).exists()


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
    return [registry.Cell("teacher", "Teacher", teacher, Role.TEACHER),
            registry.Cell("student", "Student", student, Role.STUDENT)]


def test_reproduce_stops_on_a_changed_cell_or_runs_it_afresh_beside_the_old_one(tmp_path):
    from distill_jax.experiments import reproduce

    data = _data()
    loop.train_and_evaluate(_tiny_cells(tmp_path, 1e-3)[0].config, tmp_path / "teacher", data=data)
    old_teacher = _snapshot(tmp_path / "teacher")
    changed = _tiny_cells(tmp_path, 2e-3)
    assert reproduce.cell_conflicts(changed[0], tmp_path / "teacher", False) == [
        "teacher: train.learning_rate: 0.001 -> 0.002"]
    settings = config_lib.default_config().reproduce
    cache = {reproduce.data_key(changed[0].config.data): data}
    with pytest.raises(workdir_io.RunConfigError, match="cell teacher .* another config"):
        reproduce.run_cells(changed, tmp_path, settings, "test", cache)
    assert not (tmp_path / "student").exists()  # stopped before any cell ran
    settings.fresh_on_change = True
    cell_records = reproduce.run_cells(changed, tmp_path, settings, "test", cache)
    new_name = reproduce.fresh_cell_dir(tmp_path / "teacher", changed[0].config).name
    assert new_name.startswith("teacher.") and [r["cell"] for r in cell_records] == [new_name, "student"]
    assert workdir_io.recorded_config(tmp_path / new_name)["train"]["learning_rate"] == 2e-3
    # the student is unchanged itself, but it learnt from the fresh teacher; the old one is left as it was
    assert workdir_io.recorded_config(tmp_path / "student")["train"]["kd"]["teacher_path"] == str(tmp_path / new_name)
    assert _snapshot(tmp_path / "teacher") == old_teacher


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
    identity = workdir_io.identity(_config(**{"train.epochs": 1, "num_seeds": 1}))
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
    # As import_teacher writes it.
    workdir_io.write_json(tmp_path / "teacher" / "config.json", {**config.to_dict(), "seed": 0})
    cell = registry.Cell("teacher", "Teacher (published)", config, Role.IMPORT)
    assert reproduce.cell_conflicts(cell, tmp_path / "teacher", False) == []
    trained = registry.Cell("teacher", "Teacher", config, Role.TEACHER)
    assert reproduce.cell_conflicts(trained, tmp_path / "teacher", False) == ["teacher: seed: 0 -> 3"]


# ---------------------------------------------------------------- a run is its data and its teacher, by content

def _listing(path):
    """Every file under `path` (relative name -> bytes): a rerun that writes nothing leaves it equal."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _write_set(path, seed):
    """A 16-image distilled set of the toy npz dataset (8x8 grey, 4 classes) in the project's format."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), 4)
    images = (rng.uniform(size=(16, 8, 8, 1)) + 0.3 * labels[:, None, None, None]).astype(np.float32)
    distilled.save_distilled(distilled.DistilledSet(images, labels, 4, "none", {"source": "dc"}), path)
    return path


@pytest.fixture
def on_disk(tmp_path, monkeypatch):
    """A toy dataset on disk and a config that trains on a distilled set named by a relative path."""
    monkeypatch.setenv("DISTILL_JAX_CACHE", str(tmp_path / "cache"))
    root = write_toy_npz_dataset(tmp_path / "dataset")
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    _write_set(tmp_path / "a" / "set.npz", seed=0)
    config = _config(**{"data.dataset": "npz", "data.data_dir": str(root), "data.source": "distilled",
                        "data.distilled_path": "set.npz", "train.stop_after_epochs": 1})
    return tmp_path, config


def _launch(config, workdir, monkeypatch):
    """`launcher.launch` as the command line runs it; JAX's compilation cache stays the tests' own."""
    monkeypatch.setenv("DISTILL_JAX_XLA_CACHE", jax.config.jax_compilation_cache_dir)
    min_seconds = jax.config.jax_persistent_cache_min_compile_time_secs
    try:
        return launcher.launch(lambda: config, workdir)
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", min_seconds)


def test_a_distilled_set_replaced_at_the_same_path_is_refused_naming_its_digest(on_disk, monkeypatch, capsys):
    tmp_path, config = on_disk
    workdir = tmp_path / "run"
    results = loop.train_and_evaluate(config, workdir)
    digest = distilled.file_sha256(tmp_path / "a" / "set.npz")
    assert results["inputs"]["data"]["files_sha256"] == {"set.npz": digest}
    recorded = json.loads((workdir / "results.json").read_text())
    assert recorded["inputs"] == results["inputs"]
    assert recorded["config"]["data"]["distilled_path"] == str(tmp_path / "a" / "set.npz")  # absolute
    _write_set(tmp_path / "a" / "set.npz", seed=1)  # other images, same path, same shape
    before = _listing(workdir)
    capsys.readouterr()
    assert _launch(config, workdir, monkeypatch) == 2
    err = capsys.readouterr().err.strip().splitlines()
    new = distilled.file_sha256(tmp_path / "a" / "set.npz")
    assert len(err) == 1 and f"sha256 of the distilled set's set.npz: {digest[:16]}... -> {new[:16]}..." in err[0]
    assert _listing(workdir) == before  # nothing written


def test_a_relative_set_path_resumed_from_another_directory_is_refused(on_disk, monkeypatch):
    tmp_path, config = on_disk
    loop.train_and_evaluate(config, tmp_path / "run")
    (tmp_path / "b").mkdir()
    _write_set(tmp_path / "b" / "set.npz", seed=1)
    monkeypatch.chdir(tmp_path / "b")  # the same command, typed elsewhere: 'set.npz' is another file
    before = _listing(tmp_path / "run")
    with pytest.raises(workdir_io.RunConfigError,
                       match=f"data.distilled_path: '{tmp_path}/a/set.npz' -> '{tmp_path}/b/set.npz'"):
        loop.train_and_evaluate(config, tmp_path / "run")
    assert _listing(tmp_path / "run") == before


def test_a_teacher_retrained_in_place_is_refused_naming_its_digest(tmp_path):
    data = _data()
    teacher_config = _config(**{"num_seeds": 1, "train.epochs": 1})
    loop.train_and_evaluate(teacher_config, tmp_path / "teacher", data=data)
    student = _config(**{"num_seeds": 1, "train.epochs": 2, "train.stop_after_epochs": 1, "train.kd.enabled": True,
                         "train.kd.teacher_path": str(tmp_path / "teacher")})
    first = loop.train_and_evaluate(student, tmp_path / "student", data=data)
    record = first["inputs"]["teacher"]
    assert record["step"] == 2 and len(record["sha256"]) == 64
    shutil.rmtree(tmp_path / "teacher")  # retrained in place: same path, other weights
    loop.train_and_evaluate(_config(**{"num_seeds": 1, "train.epochs": 1, "seed": 7}), tmp_path / "teacher", data=data)
    before = _listing(tmp_path / "student")
    with pytest.raises(workdir_io.RunConfigError,
                       match=rf"checkpoint .*student/checkpoints/2 was trained on other inputs than this run: "
                             rf"sha256 of the teacher's weights: {record['sha256'][:16]}\.\.\. -> "):
        loop.train_and_evaluate(student, tmp_path / "student", data=data)
    assert _listing(tmp_path / "student") == before


# ---------------------------------------------------------------- every restore is verified

def test_evaluate_and_a_kd_teacher_refuse_a_damaged_checkpoint(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    step = _tamper_latest(run)
    before = _listing(run)
    config = config_lib.default_config()
    config.mode, config.evaluate.path = "evaluate", str(run)
    with pytest.raises(evaluate.EvaluationError, match=rf"checkpoints/{step} is damaged: its arrays do not match"):
        evaluate.run_evaluation(config, tmp_path / "eval", data=_data())
    with pytest.raises(
        teacher_lib.TeacherError, match=rf"checkpoints/{step} is damaged: .*this network cannot be used"
    ):
        teacher_lib.load_teacher(run)
    assert _listing(run) == before  # read only: nothing set aside or created in the run read


# ---------------------------------------------------------------- TensorBoard curves survive kills

def _events(directory, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)] if tag in events.Tags()["scalars"] else []


def test_every_logged_point_is_on_disk_before_the_writer_closes(tmp_path):
    writer = metrics_lib.MetricsWriter(tmp_path, [0, 1], enabled=True)
    for step in (1, 2, 3):
        writer.write(step, {"lr": 0.1 * step}, {"loss": [float(step), 2.0 * step]})
    # no close: a kill now keeps every point
    assert _events(tmp_path / "tb", "lr") == [(1, pytest.approx(0.1)), (2, pytest.approx(0.2)), (3, pytest.approx(0.3))]
    assert _events(tmp_path / "tb" / "seed_1", "loss") == [(1, 2.0), (2, 4.0), (3, 6.0)]
    writer.close()


def test_a_resumed_run_rewrites_complete_curves_from_metrics_jsonl(tmp_path):
    data = _data()
    loop.train_and_evaluate(_config(**{"train.stop_after_epochs": 2}), tmp_path, data=data)
    for events in (tmp_path / "tb").rglob("events.out.tfevents.*"):
        events.write_bytes(b"")  # what a kill left before the event writer flushed
    loop.train_and_evaluate(_config(), tmp_path, data=data)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for index, seed in enumerate((0, 1)):
        expected = [(r["step"], pytest.approx(r["loss"][index])) for r in lines if "loss" in r]
        assert _events(tmp_path / "tb" / f"seed_{seed}", "loss") == expected
        assert [s for s, _ in expected] == [1, 2, 3, 4, 5, 6]
        tests = [(r["step"], pytest.approx(r["test_accuracy"][index])) for r in lines if "test_accuracy" in r]
        assert _events(tmp_path / "tb" / f"seed_{seed}", "test_accuracy") == tests and len(tests) == 3
    assert [s for s, _ in _events(tmp_path / "tb", "lr")] == [1, 2, 3, 4, 5, 6]
    assert len(list((tmp_path / "tb").rglob("events.out.tfevents.*"))) == 3  # one file per writer, no leftovers


# ---------------------------------------------------------------- reruns, full disks, damaged checkpoints

def test_an_identical_rerun_of_a_finished_run_changes_nothing(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = _listing(run)
    assert loop.train_and_evaluate(_config(), run, data=_data()) == json.loads((run / "results.json").read_text())
    assert _listing(run) == before


def test_a_finished_run_whose_checkpoints_were_deleted_is_not_retrained(finished, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    shutil.rmtree(run / "checkpoints")
    before = _listing(run)
    with caplog.at_level("INFO"):
        results = loop.train_and_evaluate(_config(), run, data=_data())
    assert results["finished"] and results == json.loads((run / "results.json").read_text())
    assert "already finished" in caplog.text
    assert _listing(run) == before and not (run / "checkpoints").exists()  # metrics.jsonl untouched


def test_a_resumed_distillation_keeps_its_image_events_and_a_finished_one_is_left_as_it_is(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from distill_jax.distillation import distill_mode
    from test_distillation import _config as distill_config
    from test_distillation import _real

    real = _real("standardize")
    distill_mode.run_distillation(distill_config(**{"distill.stop_after_steps": 3}), tmp_path, real=real)
    for events in (tmp_path / "tb").rglob("events.out.tfevents.*"):
        events.write_bytes(b"")  # killed before the events reached the disk
    distill_mode.run_distillation(distill_config(), tmp_path, real=real)
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert [e.step for e in events.Images("distilled_images")] == [3, 6]  # the grid of step 3 logged again
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [e.step for e in events.Scalars("loss")] == [r["step"] for r in lines] == [2, 3, 4, 6]
    before = _listing(tmp_path)
    assert distill_mode.run_distillation(distill_config(), tmp_path, real=real) == json.loads(before["results.json"])
    assert _listing(tmp_path) == before  # the set (whose digest its students record) is not rewritten


@pytest.mark.parametrize("failure", [
    OSError(errno.ENOSPC, "No space left on device"),
    ValueError("RESOURCE_EXHAUSTED: Error writing \"params.conv_0.kernel/0.0\" in OCDBT database: Failed to write "
               "7222 bytes to file 25: No space left on device [os_error_code='28']"),  # tensorstore's words
])
def test_a_full_disk_during_a_checkpoint_save_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch,
                                                                                            failure):
    from orbax.checkpoint._src.handlers import json_checkpoint_handler

    data = _data()
    real_save = json_checkpoint_handler.JsonCheckpointHandler._save_fn
    calls = []

    async def save_until_the_disk_is_full(self, x, directory):
        calls.append(directory)
        if len(calls) > 1:
            raise failure
        return await real_save(self, x, directory)

    monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", save_until_the_disk_is_full)
    with pytest.raises(Exception) as err:
        loop.train_and_evaluate(_config(), tmp_path, data=data)
    message = errors.user_error_message(err.value)  # what the launcher prints (exit code 2); None: a traceback
    assert message is not None and "\n" not in message
    assert message.startswith(f"disk full while saving checkpoint {tmp_path}/checkpoints/4 ")
    assert message.endswith("free space or use another workdir; rerunning the same command resumes from checkpoint 2")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2"]  # the half-written one removed
    monkeypatch.undo()
    assert loop.train_and_evaluate(_config(), tmp_path, data=data)["finished"]


DAMAGED_RESUME = """
import asyncio, logging, sys
sys.path.insert(0, {tests!r})
import jax
jax.config.update("jax_compilation_cache_dir", {cache!r})
logging.basicConfig(level=logging.WARNING)
from distill_jax.training import loop
from helpers import synthetic_data, tiny_run_config
data = synthetic_data(per_class=4, test_per_class=2)
print(loop.train_and_evaluate(tiny_run_config(), {workdir!r}, data=data)["finished"])

# How many reads the failed restore abandoned depends on timing; one more, made here the way
# tensorstore makes them (a callback into a closed event loop, its error unraisable), must not
# show either, while any other unraisable error still does.
closed = asyncio.new_event_loop()
closed.close()
class AbandonedRead:
    def __del__(self):
        closed.call_soon_threadsafe(print)
class OtherError:
    def __del__(self):
        raise ValueError("an unrelated error still shows")
AbandonedRead()
OtherError()
"""


def test_a_damaged_checkpoint_gives_its_warning_without_event_loop_tracebacks(tmp_path):
    loop.train_and_evaluate(_config(**{"train.stop_after_epochs": 2}), tmp_path, data=_data())
    for data_file in (tmp_path / "checkpoints" / "4" / "state" / "ocdbt.process_0" / "d").iterdir():
        damaged = bytearray(data_file.read_bytes())
        damaged[::97] = bytes(b ^ 0x5A for b in damaged[::97])
        data_file.write_bytes(bytes(damaged))  # every array fails to decompress: reads are abandoned
    script = DAMAGED_RESUME.format(tests=str(pathlib.Path(__file__).parent), workdir=str(tmp_path),
                                   cache=jax.config.jax_compilation_cache_dir)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr[-3000:]
    warnings = [line for line in done.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "checkpoints/4 does not match this run's state or is corrupt" in warnings[0]
    assert warnings[0].endswith(f"resuming from the previous kept checkpoint {tmp_path}/checkpoints/2 instead")
    assert "Event loop is closed" not in done.stderr, done.stderr[-3000:]
    assert "ValueError: an unrelated error still shows" in done.stderr
