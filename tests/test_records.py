"""The results record (distill_jax.report.results_record): written by `reproduce` and `transfer`
at the end, exported from a finished workdir by `distill-jax record`, read back validated.

One test runs a tiny reproduction for real (the path the README's pipeline takes); the other
workdirs are written by hand in the format the code writes (reproduce.run_cell: record.json;
loop: results.json, metrics.jsonl, train_set.png; transfer: transfer.json).
"""
import copy
import json
import os
import pathlib
import stat

import pytest

from distill_jax import cli
from distill_jax import config as config_lib
from distill_jax.experiments import reproduce
from distill_jax.report import records, render_docs, results_record
from distill_jax.report.results_record import Role
from distill_jax.training import metrics, workdir_io
from test_evaluation import _cache, _reproduce_config, _tiny_data, tiny_experiment  # noqa: F401 (fixture)
from test_pipeline_experiment import toy_pipeline  # noqa: F401 (fixture)

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 207
model name\t: Intel(R) Xeon(R) Platinum 8581C CPU @ 2.10GHz
flags\t\t: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 avx512f avx512bw amx_tile hypervisor

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8581C CPU @ 2.10GHz
"""


def test_cpu_description_reads_model_family_and_vector_flags():
    cpu = records.cpu_description(CPUINFO)
    assert cpu == {"model": "Intel(R) Xeon(R) Platinum 8581C CPU @ 2.10GHz", "family": "6", "model_number": "207",
                   "flags": ["amx_tile", "avx", "avx2", "avx512bw", "avx512f", "f16c", "fma", "sse", "sse2",
                             "sse4_1", "sse4_2", "ssse3"]}
    hw = records.hardware_description()
    assert hw["backend"] == "cpu" and hw["cpu"]["model"] and hw["cpu_count"] >= 1


def test_command_line_is_typed_from_the_repository_root(tmp_path):
    argv = ["/x/launch/main.py", "--config", "configs/pipeline.py", f"--workdir={tmp_path}/workdirs/p",
            "--config.reproduce.cells=teacher,full", str(tmp_path / "runs" / "a b")]
    assert results_record.command_line(argv, cwd=tmp_path) == (
        "python /x/launch/main.py --config configs/pipeline.py --workdir=workdirs/p "
        "--config.reproduce.cells=teacher,full 'runs/a b'")
    assert results_record.command_line(["/venv/bin/distill-jax", "transfer", "/elsewhere/set.npz"], cwd=tmp_path) \
        == "distill-jax transfer /elsewhere/set.npz"


def test_reproduce_writes_its_results_record_and_record_command_exports_the_same(tmp_path, tiny_experiment,  # noqa: F811 (fixture)
                                                                                  monkeypatch, capsys):
    data = _tiny_data()
    config = _reproduce_config(tiny_experiment)
    monkeypatch.setattr("sys.argv", ["launch/main.py", "--config", "configs/pipeline.py", "--workdir", "workdirs/p"])
    reproduce.run_reproduction(config, tmp_path, data_cache=_cache(config, tmp_path, data))
    auto = results_record.read_record(tmp_path / results_record.AUTO_FILE)
    assert auto["source"] == {"kind": "run"} and auto["kind"] == "reproduce" and auto["experiment"] == tiny_experiment
    assert auto["command"] == "python launch/main.py --config configs/pipeline.py --workdir workdirs/p"
    assert auto["config_digest"] == results_record.config_digest(config)
    assert auto["hardware"]["described"] == "at run time" and auto["hardware"]["cpu"]["model"]
    assert auto["software"]["jax"] and auto["software"]["flax"]
    for cell in auto["cells"]:
        run_record = json.loads((tmp_path / cell["cell"] / "record.json").read_text())
        assert cell["final_test_accuracy"] == run_record["final_accuracy"]["per_seed"]
        assert cell["seeds"] == [0, 1] and cell["epochs"] == 2 and cell["width"] == 4 and cell["norm"] == "batch"
        logged = [json.loads(line) for line in (tmp_path / cell["cell"] / "metrics.jsonl").read_text().splitlines()]
        assert cell["last_step_train_accuracy"]["per_seed"] == [e for e in logged if "train_accuracy" in e][-1][
            "train_accuracy"]
        assert cell["wall_seconds"] is not None and cell["origin"] == results_record.TRAINED_HERE
    by_name = {c["cell"]: c for c in auto["cells"]}
    assert by_name["teacher"]["kd_teacher"] is None and by_name["student"]["kd_teacher"] == results_record.TRAINED_HERE
    assert stat.S_IMODE(os.stat(tmp_path / results_record.AUTO_FILE).st_mode) == 0o644

    out = tmp_path / "results" / "tiny.json"
    assert cli.main(["record", str(tmp_path), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert results_record.read_record(out) == auto


# ----------------------------------------------------------------------------- hand-written workdirs

def _run(run: pathlib.Path, config: dict, seeds, finals, train_acc, *, finished=True):
    run.mkdir(parents=True, exist_ok=True)
    (run / "train_set.png").write_bytes(b"png")
    (run / "config.json").write_text(json.dumps(config))
    lines = [{"step": 1, "epoch": 1, "loss": [1.0] * len(seeds), "train_accuracy": [10.0] * len(seeds)},
             {"step": 2, "epoch": 2, "loss": [1.0] * len(seeds), "train_accuracy": list(train_acc)},
             {"step": 2, "epoch": 2, "test_accuracy": list(finals)}]
    (run / workdir_io.METRICS_FILE).write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"step": 3, "tr')
    results = {"finished": finished, "diverged": None, "config": config, "seeds": list(seeds),
               "history": [{"epoch": 2, "test_accuracy": list(finals)}],
               "final_accuracy": metrics.summarize(finals) if finished else None,
               "software": {"jax": "0.4", "python": "3.11"}, "devices": ["TFRT_CPU_0"]}
    (run / "results.json").write_text(json.dumps(results))
    return results


def _config(name="resnet18", width=8, norm="batch", optimizer="lion", kd_path=""):
    return {"mode": "student", "seed": 0, "num_seeds": 2, "data": {"dataset": "cifar10_jpeg"},
            "model": {"name": name, "width": width, "norm": norm},
            "train": {"epochs": 2, "optimizer": optimizer, "kd": {"enabled": bool(kd_path), "teacher_path": kd_path}},
            "reproduce": {"epoch_divisor": 20, "lr_multiplier": 20.0, "width": 8, "teacher_width": 32, "evals": 2,
                          "split_seeds": True}}


def _experiment_dir(root: pathlib.Path, *, published_teacher=False, summary="reproduction.json"):
    """A reproduce workdir: a teacher (imported .pth, or trained with split seeds) and a KD student."""
    root.mkdir(parents=True, exist_ok=True)
    cells = []
    if published_teacher:
        teacher = {**_config("convnet", 128, "instance"), "mode": "evaluate"}
        (root / "teacher").mkdir()
        cells.append({"cell": "teacher", "label": "Teacher (published)", "role": "import", "config": teacher,
                      "seeds": [0], "final_accuracy": metrics.summarize([45.97]), "history": []})
    else:
        teacher = _config("convnet_frepo", 32, "batch")
        merged = [_run(root / "teacher" / f"seed_{s}", teacher, [s], [40.0 + s], [70.0 + s]) for s in (0, 1)]
        cells.append({"cell": "teacher", "label": "Teacher", "role": "teacher", "config": teacher, "seeds": [0, 1],
                      "final_accuracy": metrics.summarize([m["final_accuracy"]["per_seed"][0] for m in merged])})
    student = _config(kd_path=str(root / "teacher" / ("seed_0" if not published_teacher else "")))
    _run(root / "full", student, [0, 1], [42.5, 41.25], [58.0, 62.0])
    cells.append({"cell": "full", "label": "resnet18 Full", "role": "student", "config": student, "seeds": [0, 1],
                  "final_accuracy": metrics.summarize([42.5, 41.25])})
    for cell in cells:
        (root / cell["cell"] / "record.json").write_text(json.dumps({**cell, "software": {"jax": "0.4.38"}}))
    (root / "plan.json").write_text(json.dumps({"experiment": "frepo_cifar10_jpeg_10_resnet18", "config": student,
                                                "cells": [c["cell"] for c in cells], "command": "python x.py"}))
    (root / summary).write_text(json.dumps({"experiment": "frepo_cifar10_jpeg_10_resnet18", "config": student,
                                            "cells": [{"cell": c["cell"]} for c in cells]}))
    return root


def test_export_of_a_split_seed_experiment(tmp_path):
    rec = results_record.from_workdir(_experiment_dir(tmp_path / "exp"))
    teacher, full = rec["cells"]
    assert teacher["final_test_accuracy"] == [40.0, 41.0]
    assert teacher["last_step_train_accuracy"] == {"per_seed": [70.0, 71.0], "mean": 70.5}
    assert (teacher["network"], teacher["width"], teacher["norm"], teacher["optimizer"]) == ("convnet_frepo", 32,
                                                                                            "batch", "lion")
    assert full["kd_teacher"] == results_record.TRAINED_HERE and full["last_step_train_accuracy"]["mean"] == 60.0
    assert rec["scale"]["epoch_divisor"] == 20 and rec["command"] == "python x.py" and rec["dataset"] == "cifar10_jpeg"
    assert rec["hardware"]["described"] == "at record time"  # the cells recorded no hardware
    assert rec["software"] == {"jax": "0.4.38"} and len(rec["config_digest"]) == 64


def test_export_names_a_published_teacher_and_its_students(tmp_path):
    rec = results_record.from_workdir(_experiment_dir(tmp_path / "exp", published_teacher=True))
    teacher, full = rec["cells"]
    assert teacher["origin"] == results_record.PUBLISHED and teacher["epochs"] is None
    assert teacher["last_step_train_accuracy"] is None and full["kd_teacher"] == results_record.PUBLISHED


def test_export_of_a_transfer_pool(tmp_path):
    root = _experiment_dir(tmp_path / "pool", summary="transfer.json")
    summary = json.loads((root / "transfer.json").read_text())
    summary["config"]["transfer"] = {"name": "frepo_cifar10_jpeg_10", "set_path": "x"}
    summary["command"] = "distill-jax transfer published:frepo_cifar10_jpeg_10 --workdir runs/t"
    (root / "transfer.json").write_text(json.dumps(summary))
    rec = results_record.from_workdir(root)
    assert rec["kind"] == "transfer" and rec["experiment"] == "transfer frepo_cifar10_jpeg_10"
    assert rec["command"].startswith("distill-jax transfer")


def test_last_train_accuracy_has_one_reader_and_the_record_takes_it_only_for_every_seed(tmp_path):
    """records.last_train_accuracy reads metrics.jsonl through its one reader, metrics.read_metrics
    (a cut last line left out); compare shows what it returns, the results record keeps it only
    when every run logged every seed."""
    config = _config()
    whole = tmp_path / "whole"
    _run(whole, config, [0, 1], [40.0, 41.0], [70.0, 71.0])  # epoch 2; its last line is cut
    silent = tmp_path / "silent"
    _run(silent, config, [2], [42.0], [80.0])
    (silent / workdir_io.METRICS_FILE).unlink()  # a run that logged nothing
    diverged = tmp_path / "diverged"
    diverged.mkdir()
    (diverged / workdir_io.METRICS_FILE).write_text(
        json.dumps({"step": 1, "epoch": 1, "train_accuracy": [None, 80.0]}) + "\n")
    assert metrics.read_metrics(silent) == [] and len(metrics.read_metrics(whole)) == 3
    assert records.last_train_accuracy([whole]) == {"per_seed": [70.0, 71.0], "mean": 70.5, "epoch": 2, "step": 2,
                                                    "every_seed": True}
    assert results_record.last_step_train_accuracy([whole]) == {"per_seed": [70.0, 71.0], "mean": 70.5}
    some = records.last_train_accuracy([whole, silent])
    assert some["per_seed"] == [70.0, 71.0] and not some["every_seed"]
    assert results_record.last_step_train_accuracy([whole, silent]) is None
    with_null = records.last_train_accuracy([whole, diverged])
    assert with_null["per_seed"] == [70.0, 71.0, 80.0] and with_null["epoch"] == 1 and not with_null["every_seed"]
    assert results_record.last_step_train_accuracy([whole, diverged]) is None
    assert records.last_train_accuracy([silent]) is None and results_record.last_step_train_accuracy([silent]) is None
    assert records.run_dirs(tmp_path / "exp") == [tmp_path / "exp"]  # no seed_<s> dirs: the cell is the run


def test_export_of_a_single_training_run_needs_its_command(tmp_path, capsys):
    run = tmp_path / "run"
    _run(run, {**_config("convnet", 32, "instance"), "mode": "train"}, [0, 1], [70.0, 71.5], [90.0, 91.0])
    out = tmp_path / "r.json"
    assert cli.main(["record", str(run), "--out", str(out)]) == 2
    assert "--command" in capsys.readouterr().err and not out.exists()
    assert cli.main(["record", str(run), "--out", str(out), "--command", "python launch/main.py --config c.py"]) == 0
    rec = results_record.read_record(out)
    assert rec["kind"] == "train" and rec["cells"][0]["role"] == "train" and rec["scale"] is None
    assert rec["cells"][0]["final_test_accuracy"] == [70.0, 71.5] and rec["software"]["jax"] == "0.4"


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "holds no reproduction.json"),
    (lambda p: (p / "plan.json").write_text("{}"), "has not finished every cell"),
    (lambda p: (p / "results.json").write_text(json.dumps({"finished": False, "config": {}})), "has not finished"),
    (lambda p: (p / "reproduction.json").write_text("[1"), "not JSON"),
])
def test_export_errors_name_the_file(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(results_record.RecordError, match=message):
        results_record.from_workdir(tmp_path)


def test_export_of_an_unfinished_cell_names_it(tmp_path):
    root = _experiment_dir(tmp_path / "exp")
    (root / "full" / "record.json").unlink()
    with pytest.raises(results_record.RecordError, match=r"full/record\.json.*cell full"):
        results_record.from_workdir(root)


def test_export_of_a_cell_whose_role_is_unknown_names_the_file_and_field(tmp_path):
    root = _experiment_dir(tmp_path / "exp")
    record = json.loads((root / "full" / "record.json").read_text())
    (root / "full" / "record.json").write_text(json.dumps({**record, "role": "pupil"}))
    with pytest.raises(
        results_record.RecordError,
        match=r"full/record\.json: field 'role': expected one of "
        r"\('teacher', 'student', 'train', 'import', 'score', 'distill'\) "
        r'\(got "pupil"\)',
    ):
        results_record.from_workdir(root)


def test_roles_say_which_cells_train_which_are_scored_once_and_which_teach():
    assert {role for role in Role if role.trains} == {Role.TEACHER, Role.STUDENT, Role.TRAIN}
    assert {role for role in Role if role.scored_only} == {Role.IMPORT, Role.SCORE}
    assert {role for role in Role if role.is_teacher} == {Role.TEACHER, Role.IMPORT, Role.SCORE}
    assert not Role.DISTILL.trains and not Role.DISTILL.scored_only and not Role.DISTILL.is_teacher
    # records store the plain strings, and read back compare equal to the roles
    assert json.dumps({"role": Role.IMPORT}) == '{"role": "import"}' and f"{Role.SCORE}" == "score"
    assert results_record.parse_role("distill", "x.json") is Role.DISTILL


def test_export_of_a_missing_folder(tmp_path):
    with pytest.raises(results_record.RecordError, match="not a folder"):
        results_record.from_workdir(tmp_path / "nowhere")


# ----------------------------------------------------------------------------- the format

def _transcribed() -> dict:
    return {"schema_version": 1, "kind": "reproduce", "experiment": "frepo_cifar10_jpeg_10_resnet18",
            "dataset": "cifar10_jpeg",
            "scale": {"epoch_divisor": 20, "lr_multiplier": 20.0, "width": 8, "teacher_width": 32, "evals": 2,
                      "split_seeds": True},
            "source": {"kind": "transcribed", "from": "docs/results.md at commit fed8e6e",
                       "reason": "the run's workdir was not kept"},
            "config_digest": None, "command": "python launch/main.py", "software": {},
            "hardware": {"described": "as stated with the table", "stated": "2-core CPU"},
            "wall_seconds": None, "date": "2026-11-28",
            "cells": [{"cell": "full", "label": "resnet18 Full", "role": "student", "network": "resnet18", "width": 8,
                       "norm": "batch", "epochs": 200, "optimizer": "lion", "origin": "trained here",
                       "kd_teacher": "trained here", "seeds": [0, 1, 2], "final_test_accuracy": [43.49, 40.83, 42.38],
                       "last_step_train_accuracy": {"per_seed": None, "mean": 59.7}, "wall_seconds": None}]}


def test_round_trip_and_atomic_mode(tmp_path):
    path = results_record.write_record(tmp_path / "sub" / "a.json", _transcribed())
    assert results_record.read_record(path) == _transcribed()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]  # no temporary file left


def _set(record, dotted, value):
    target = record
    parts = dotted.split(".")
    for part in parts[:-1]:
        target = target[int(part)] if part.isdigit() else target[part]
    if value is KeyError:
        del target[parts[-1]]
    else:
        target[parts[-1]] = value


@pytest.mark.parametrize("field, value, named", [
    ("schema_version", 2, "schema_version"),
    ("kind", "table", "kind"),
    ("experiment", KeyError, "experiment"),
    ("colour", "red", "colour"),
    ("command", " ", "command"),
    ("source.kind", "copied", "source.kind"),
    ("source.reason", "", "source.reason"),
    ("config_digest", "ab" * 32, "config_digest"),
    ("date", "28/11/2026", "date"),
    ("scale.epoch_divisor", 0, "scale.epoch_divisor"),
    ("scale.split_seeds", "yes", "scale.split_seeds"),
    ("hardware", {"described": "somewhere"}, "hardware.described"),
    ("wall_seconds", -1, "wall_seconds"),
    ("cells", [], "cells"),
    ("cells.0.final_test_accuracy", [43.49, 40.83], "cells[0].final_test_accuracy"),
    ("cells.0.final_test_accuracy", [43.49, 40.83, 142.0], "cells[0].final_test_accuracy"),
    ("cells.0.final_test_accuracy", None, "cells[0].final_test_accuracy"),
    ("cells.0.seeds", [0, 0, 1], "cells[0].seeds"),
    ("cells.0.role", "pupil", "cells[0].role"),
    ("cells.0.origin", "bought", "cells[0].origin"),
    ("cells.0.kd_teacher", "someone", "cells[0].kd_teacher"),
    ("cells.0.width", 0, "cells[0].width"),
    ("cells.0.norm", KeyError, "cells[0].norm"),
    ("cells.0.last_step_train_accuracy", {"mean": 50.0}, "cells[0].last_step_train_accuracy"),
    ("notes", ["", "x"], "notes"),
])
def test_validation_names_file_and_field(tmp_path, field, value, named):
    record = copy.deepcopy(_transcribed())
    _set(record, field, value)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(record))
    with pytest.raises(results_record.RecordError) as err:
        results_record.read_record(path)
    assert str(path) in str(err.value) and f"field '{named}'" in str(err.value)
    assert isinstance(err.value, results_record.InputFileError)


def test_a_run_record_needs_its_digest_per_seed_training_accuracy_and_software():
    record = _transcribed()
    record["source"] = {"kind": "run"}
    with pytest.raises(results_record.RecordError, match="config_digest"):
        results_record.validate(record)
    record["config_digest"] = "0" * 64
    with pytest.raises(results_record.RecordError, match=r"software"):
        results_record.validate(record)
    record["software"] = {"jax": "0.4"}
    with pytest.raises(results_record.RecordError, match=r"hardware\.backend"):
        results_record.validate(record)
    record["hardware"] = {"described": "at run time", **records.hardware_description()}
    with pytest.raises(results_record.RecordError, match=r"last_step_train_accuracy\.per_seed"):
        results_record.validate(record)


def test_write_refuses_an_invalid_record_and_leaves_nothing(tmp_path):
    record = _transcribed()
    record["cells"][0]["seeds"] = "0,1,2"
    with pytest.raises(results_record.RecordError, match=r"cells\[0\]\.seeds"):
        results_record.write_record(tmp_path / "a.json", record)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content, message", [(None, "cannot be read"), ("{", "not JSON"), ("[]", "JSON object")])
def test_unreadable_files(tmp_path, content, message):
    path = tmp_path / "r.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(results_record.RecordError, match=message):
        results_record.read_record(path)


def test_the_pipeline_of_the_readme_writes_its_record(tmp_path, toy_pipeline, monkeypatch):  # noqa: F811 (fixture)
    """The README's main job (`configs/pipeline.py`, mode reproduce with a distill cell), at toy size."""
    config = config_lib.default_config()
    config.mode, config.num_seeds = "reproduce", 2
    config.reproduce.experiment = toy_pipeline
    monkeypatch.setattr("sys.argv", ["launch/main.py", "--config", "configs/pipeline.py", "--workdir", "w"])
    reproduce.run_reproduction(config, tmp_path / "w")
    rec = results_record.read_record(tmp_path / "w" / results_record.AUTO_FILE)
    cells = {c["cell"]: c for c in rec["cells"]}
    assert list(cells) == ["distill", "teacher", "real_subset", "baseline", "full"]
    distill = cells["distill"]
    assert (distill["network"], distill["width"], distill["norm"]) == ("convnet", 4, "instance")
    assert (
        distill["final_test_accuracy"] is None and distill["extra"]["steps"] == 2 and distill["extra"]["method"] == "dm"
    )
    assert cells["full"]["kd_teacher"] == results_record.TRAINED_HERE and cells["full"]["epochs"] == 4
    assert all(len(cells[c]["final_test_accuracy"]) == 2 for c in ("teacher", "real_subset", "baseline", "full"))
    assert rec["dataset"] == "npz" and rec["scale"]["epoch_divisor"] == 1
    # the docs render a run record of it (a distill cell, the machine described at run time)
    table = render_docs.render_template("{{ table:pipeline }}", render_docs.Context({"pipeline": rec}))
    assert "The set: DM, 2 images per class, 2 steps of ConvNet (width 4, instance norm)" in table
    assert render_docs.TRANSCRIBED_LABEL not in table and rec["hardware"]["cpu"]["model"] in table
    assert "| full | ResNet-18" not in table and "resnet10" in table.lower()
