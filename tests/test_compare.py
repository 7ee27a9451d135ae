"""`distill-jax compare`: one experiment at several scales side by side (distill_jax.experiments.compare).

The workdirs are written by hand in the format the code writes (loop.py: results.json,
metrics.jsonl, config.json; reproduce.run_cell: record.json; reproduce.run_reproduction:
reproduction.json), with the configs of the real experiment's cells (`registry`), or by
test_records' `_experiment_dir`; one test runs a toy reproduction with the real code and reads it back.
"""
import importlib.util
import json
import pathlib

import numpy as np
import pytest

from distill_jax import cli
from distill_jax.experiments import compare, registry, reproduce
from distill_jax.report import plots, records, results_record
from distill_jax.report.results_record import Role
from distill_jax.training import metrics
from test_evaluation import _cache, _reproduce_config, _tiny_data, _tiny_experiment
from test_records import _experiment_dir

EXPERIMENT = "frepo_cifar10_jpeg_10_resnet18"
REPO = pathlib.Path(__file__).resolve().parents[1]


def _configs(workdir, divisor, width):
    scale = registry.Scale(epoch_divisor=divisor, lr_multiplier=float(divisor), width=width, teacher_width=32, evals=2)
    return {c.name: c for c in registry.get_experiment(EXPERIMENT, workdir, scale, split_seeds=True, num_seeds=3)}


def _write_run(run: pathlib.Path, config: dict, seeds, finals, *, finished=True, train_acc=None, evals=2):
    """One run as loop.train_and_evaluate leaves it: config.json, metrics.jsonl and results.json."""
    run.mkdir(parents=True, exist_ok=True)
    epochs = config["train"]["epochs"]
    eval_epochs = [epochs * (i + 1) // evals for i in range(evals)] if finished else [epochs // evals]
    history = [{"epoch": e, "step": e, "train_loss": 1.0, "keep_rate": 1.0,
                "test_accuracy": [float(f) - 5.0 * (len(eval_epochs) - 1 - i) for f in finals]}
               for i, e in enumerate(eval_epochs)]
    (run / "config.json").write_text(json.dumps(config))
    lines = []
    for h in history:
        if train_acc is not None:
            lines.append({"step": h["step"], "epoch": h["epoch"], "lr": 1e-3, "keep_rate": 1.0, "images_per_s": 50.0,
                          "loss_mean": 1.0, "train_accuracy_mean": float(np.mean(train_acc)),
                          "loss": [1.0] * len(seeds), "train_accuracy": list(train_acc)})
        lines.append({"step": h["step"], "epoch": h["epoch"], "test_accuracy_mean": float(np.mean(h["test_accuracy"])),
                      "test_accuracy": h["test_accuracy"]})
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    results = {"finished": finished, "diverged": None, "config": config, "data": "distilled set (pt_pair)",
               "preprocessing": "zca_mtt", "seeds": list(seeds), "history": history,
               "final_accuracy": metrics.summarize(finals) if finished else None,
               "software": {"jax": "0", "python": "3"}, "devices": ["cpu:0"]}
    (run / "results.json").write_text(json.dumps(results))
    return results


def _write_cell(workdir, cell, finals, *, split=True, finished_seeds=None, train_acc=None, record=True):
    """A cell of `reproduce` with 3 seeds: split into seed_<s> runs or one run of all seeds, and
    record.json as reproduce.run_cell writes it once every seed has finished."""
    config = cell.config.to_dict()
    cell_dir = workdir / cell.name
    finished_seeds = range(len(finals)) if finished_seeds is None else finished_seeds
    if split:
        runs = []
        for s, final in enumerate(finals):
            c = {**config, "seed": s, "num_seeds": 1}
            runs.append(_write_run(cell_dir / f"seed_{s}", c, [s], [final], finished=s in finished_seeds,
                                   train_acc=None if train_acc is None else [train_acc[s]]))
        merged = records.merge_seed_results(runs) if all(r["finished"] for r in runs) else None
    else:
        merged = _write_run(
            cell_dir, config, [0, 1, 2], finals, finished=bool(len(finished_seeds)), train_acc=train_acc
        )
    if record and merged and merged["finished"]:
        rec = {
            "cell": cell.name,
            "label": cell.label,
            "role": cell.role.value,
            "network": "resnet18 (width 8, batch norm)"
            if cell.role is Role.STUDENT
            else "convnet_frepo (width 32, batch norm)",
            "epochs": cell.config.train.epochs,
            "config": config,
            "split_seeds": split,
            "seeds": merged["seeds"],
            "history": merged["history"],
            "final_accuracy": merged["final_accuracy"],
            "diverged": None,
            "best_over_training": records.best_over_training(merged["history"]),
            "data": merged["data"],
            "preprocessing": merged["preprocessing"],
            "software": {},
            "device": {},
        }
        (cell_dir / "record.json").write_text(json.dumps(rec))
    return cell_dir


def _write_reproduction(workdir, divisor, width, experiment=EXPERIMENT):
    config = {"num_seeds": 3, "seed": 0, "reproduce": {"experiment": experiment, "epoch_divisor": divisor,
                                                       "lr_multiplier": float(divisor), "width": width,
                                                       "teacher_width": 32, "split_seeds": True}}
    (workdir / "reproduction.json").write_text(json.dumps({"experiment": experiment, "config": config, "cells": []}))


# hand-made final accuracies (per seed) of the complete scale
FINALS = {"teacher": [46.0, 48.0, 50.0], "baseline": [30.0, 32.0, 34.0], "no_dp_kd": [35.0, 36.0, 37.0],
          "no_dp": [31.0, 33.5, 36.0], "no_kd": [41.0, 43.0, 45.0], "full": [40.0, 42.0, 44.0]}
TRAIN = [50.0, 60.0, 70.0]


@pytest.fixture
def scales(tmp_path):
    """div20: complete, split seeds, every cell with metrics.jsonl. div5: still running, one run per
    cell: teacher and baseline complete, no_dp_kd with record.json but no training accuracy logged,
    no_dp partial (2 of 3 seeds, split), no_kd training (epoch logged), full absent."""
    div20, div5 = tmp_path / "div20", tmp_path / "div5"
    cells20 = _configs(div20, 20, 8)
    for name, finals in FINALS.items():
        _write_cell(div20, cells20[name], finals, train_acc=TRAIN)
    _write_reproduction(div20, 20, 8)
    cells5 = _configs(div5, 5, 16)
    _write_cell(div5, cells5["teacher"], [50.0, 52.0, 54.0], split=False, train_acc=[80.0, 82.0, 84.0])
    _write_cell(div5, cells5["baseline"], [45.0, 47.0, 52.0], split=False, train_acc=[97.0, 97.0, 97.0])
    no_dp_kd = _write_cell(div5, cells5["no_dp_kd"], [46.0, 47.0, 48.0], split=False)
    (no_dp_kd / "metrics.jsonl").unlink()  # an older run: no metrics file
    _write_cell(div5, cells5["no_dp"], [48.0, 50.0, 51.0], finished_seeds=(0, 1), train_acc=[88.0, 90.0, 92.0])
    running = _write_cell(div5, cells5["no_kd"], [40.0, 41.0, 42.0], split=False, finished_seeds=(),
                          train_acc=[70.0, 71.0, 72.0])
    with open(running / "metrics.jsonl", "a") as f:
        f.write('{"step": 150, "epoch": 15')  # cut by a kill
    return div20, div5


def test_table_reports_hand_computed_means_stds_and_training_accuracy(scales):
    div20, div5 = scales
    comparison = compare.build_comparison([div20, div5], ["epochs/20", "epochs/5"])
    table = compare.comparison_table(comparison["scales"])
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table.splitlines()[2:]]
    rows = {row[0]: row[1:] for row in cells}
    assert list(rows) == ["Teacher (convnet_frepo)", "Baseline (resnet18)", "w/o DP & KD (resnet18)",
                          "w/o DP (resnet18)", "w/o KD (resnet18)", "Full (resnet18)"]
    # mean ± std (ddof 1) by hand: [30, 32, 34] -> 32 ± 2; [31, 33.5, 36] -> 33.5 ± 2.5; [46, 48, 50] -> 48 ± 2
    assert rows["Baseline (resnet18)"][0] == "32.00 ± 2.00 (3 seeds, 50 ep.)"
    assert rows["w/o DP (resnet18)"][0] == "33.50 ± 2.50 (3 seeds, 50 ep.)"
    assert rows["Teacher (convnet_frepo)"][0] == "48.00 ± 2.00 (3 seeds, 50 ep.)"
    assert rows["Full (resnet18)"][0] == "42.00 ± 2.00 (3 seeds, 200 ep.)"
    assert rows["Baseline (resnet18)"][1] == "60.0"  # last logged step, mean of the seeds' 50, 60, 70
    # div5: [45, 47, 52] -> 48 ± sqrt(((-3)² + 1 + 4²) / 2) = sqrt(13)
    assert rows["Baseline (resnet18)"][2] == f"48.00 ± {np.sqrt(13):.2f} (3 seeds, 200 ep.)"
    assert rows["Baseline (resnet18)"][3] == "97.0"
    assert rows["Teacher (convnet_frepo)"][3] == "82.0"
    assert rows["w/o DP & KD (resnet18)"][3] == "not recorded"
    header = table.splitlines()[0]
    assert "test acc. % (epochs/20)" in header and "train acc. % last step (epochs/5)" in header


def test_partial_and_unfinished_cells_are_marked(scales):
    div20, div5 = scales
    workdir = compare.read_workdir(div5)
    assert workdir["experiment"] is None and workdir["num_seeds"] == 3  # no reproduction.json: from config.json
    cells = workdir["cells"]
    assert cells["no_dp"]["status"] == "partial" and cells["no_dp"]["final_accuracy"]["per_seed"] == [48.0, 50.0]
    assert compare.test_text(cells["no_dp"]) == "49.00 ± 1.41 (2 seeds, 200 ep.); partial (2 of 3 seeds)"
    assert compare.train_text(cells["no_dp"]) == "89.0"  # the finished seeds' only (88, 90)
    assert cells["no_kd"]["status"] == "not finished" and cells["no_kd"]["logged_epoch"] == 400
    assert compare.test_text(cells["no_kd"]) == "not finished (epoch 400 of 800 logged)"
    assert compare.train_text(cells["no_kd"]) == "71.0 (epoch 400 of 800)"
    assert cells["no_kd"]["history"][0]["test_accuracy"] == [40.0, 41.0, 42.0]  # the curve so far
    assert cells["full"]["status"] == "not finished" and compare.test_text(cells["full"]) == "not finished"
    assert compare.train_text(cells["full"]) == "—"
    assert all(cells[c]["status"] == "complete" for c in ("teacher", "baseline", "no_dp_kd"))
    # the scale of a workdir without reproduction.json, from a student cell's config
    comparison = compare.build_comparison([div20, div5])
    assert [s["label"] for s in comparison["scales"]] == ["epochs/20, lr ×20, width 8", "epochs/5, lr ×5, width 16"]
    assert comparison["experiment"] == EXPERIMENT
    assert (
        "inferred from cell" in comparison["markdown"]
        and "not finished (no reproduction.json yet)" in comparison["markdown"]
    )


def test_plan_json_gives_seeds_not_yet_started_and_the_scale(tmp_path):
    """A split-seed cell whose third seed has not started: its seed dirs alone would say 2 of 2,
    so the plan written at the start of the reproduction says how many seeds it plans."""
    running = tmp_path / "running"
    cells = _configs(running, 5, 16)
    for s in (0, 1):
        c = {**cells["no_dp"].config.to_dict(), "seed": s, "num_seeds": 1}
        _write_run(running / "no_dp" / f"seed_{s}", c, [s], [48.0 + 2 * s])
    config = {"num_seeds": 3, "seed": 0, "reproduce": {"experiment": EXPERIMENT, "epoch_divisor": 5,
                                                       "lr_multiplier": 5.0, "width": 16, "teacher_width": 0}}
    (running / reproduce.PLAN_FILE).write_text(json.dumps({"experiment": EXPERIMENT, "config": config,
                                                            "cells": ["no_dp"]}))
    workdir = compare.read_workdir(running)
    assert workdir["num_seeds"] == 3 and not workdir["finished"] and workdir["experiment"] == EXPERIMENT
    assert workdir["cells"]["no_dp"]["status"] == "partial"
    assert compare.test_text(workdir["cells"]["no_dp"]).endswith("partial (2 of 3 seeds)")
    comparison = compare.build_comparison([running], ["full length"])
    assert "epochs/5, lr ×5, width 16, teacher width paper" in comparison["markdown"]
    assert "inferred from cell" not in comparison["markdown"]


def test_orderings_differences_and_seed_separation(scales):
    div20, div5 = scales
    comparison = compare.build_comparison([div20, div5], ["a", "b"])
    by_key = {o["key"]: o for o in comparison["scales"][0]["orderings"]}
    lion = by_key["lion_vs_adamw"]  # [35, 36, 37] - [30, 32, 34]
    assert (lion["a"], lion["b"]) == ("no_dp_kd", "baseline")
    assert lion["difference"] == pytest.approx(4.0)
    assert lion["a_all_above_b"] and not lion["b_all_above_a"] and lion["pairs_a_above"] == 9
    kd = by_key["full_vs_no_kd"]  # [40, 42, 44] - [41, 43, 45]: 42 > 41, 44 > 41, 44 > 43
    assert kd["difference"] == pytest.approx(-1.0)
    assert not kd["a_all_above_b"] and not kd["b_all_above_a"] and (kd["pairs_a_above"], kd["pairs"]) == (3, 9)
    teacher = by_key["full_vs_teacher"]  # [40, 42, 44] - [46, 48, 50]
    assert teacher["difference"] == pytest.approx(-6.0) and teacher["b_all_above_a"]
    no_dp = by_key["no_dp_vs_baseline"]  # [31, 33.5, 36] - [30, 32, 34]: 31 > 30; 33.5 > 30, 32; 36 > all
    assert no_dp["difference"] == pytest.approx(1.5) and no_dp["pairs_a_above"] == 6
    at5 = {o["key"]: o for o in comparison["scales"][1]["orderings"]}
    assert at5["no_dp_vs_baseline"]["partial"] == ["no_dp"]  # over the finished seeds, and said so
    assert at5["full_vs_no_kd"]["missing"] == [("full", "not finished"), ("no_kd", "not finished")]
    table = compare.orderings_table(comparison["scales"])
    assert "| a | Lion vs AdamW (w/o DP & KD − Baseline) | 36.00 ± 1.00 | 32.00 ± 2.00 | +4.00 | every w/o DP & KD " \
           "seed above every Baseline seed |" in table
    assert "overlap (A above B in 3 of 9 seed pairs)" in table
    assert "(partial: w/o DP)" in table and "Full not finished; w/o KD not finished" in table


def test_paper_column_and_written_files(scales, tmp_path):
    div20, div5 = scales
    out = tmp_path / "report"
    done = compare.write_comparison([div20, div5], out, labels=["epochs/20", "epochs/5"],
                                    paper="frepo_cifar10_10_resnet18")
    assert {p.name for p in out.iterdir()} == {"compare.md", "compare.png", "compare.json"}
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "compare.md").read_text()
    assert md == done["markdown"]
    lines = md.splitlines()
    row = lambda prefix: next(line for line in lines if line.startswith(prefix))  # noqa: E731
    assert row("| cell |").endswith(f"| {compare.PAPER_HEADER} |")
    assert row("| w/o KD (resnet18) |").endswith("| 63.9 |") and row("| Full (resnet18) |").endswith("| 66.6 |")
    assert row("| Baseline (resnet18) |").endswith("| 61.9 ‡ |")  # docs/method.md §7 names no set for it
    assert row("| Teacher (convnet_frepo) |").endswith("| 65.5 † |")  # FRePo's own number
    assert "- ‡ docs/method.md §7 gives 'Lion instead of AdamW alone" in md
    assert "| +2.7 |" in md  # the paper's Full - w/o KD, 66.6 - 63.9, in the orderings
    saved = json.loads((out / "compare.json").read_text())
    assert saved["paper"]["cells"]["full"]["value"] == 66.6 and saved["paper"]["header"] == compare.PAPER_HEADER
    assert saved["scales"][1]["cells"]["no_dp"]["status"] == "partial"
    assert saved["scales"][0]["cells"]["baseline"]["final_accuracy"]["per_seed"] == [30.0, 32.0, 34.0]
    panels = done["panels"]
    assert set(panels["Full (resnet18)"]) == {"epochs/20"}  # div5's Full has no run yet
    x, curves = panels["Baseline (resnet18)"]["epochs/5"]
    assert x == [0.5, 1.0] and curves[-1] == [45.0, 47.0, 52.0]  # epoch / epochs, so scales overlay
    assert "epochs/5 (in progress)" in panels["w/o KD (resnet18)"]


def _cli(argv, capsys):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_writes_the_report(scales, tmp_path, capsys):
    div20, div5 = scales
    code, out, err = _cli(["compare", div20, div5, "--labels", "d20,d5", "--out", tmp_path / "o",
                           "--paper", "frepo_cifar10_10_resnet18"], capsys)
    assert code == 0, err
    assert "| Full (resnet18) |" in out and f"wrote {tmp_path / 'o' / 'compare.md'}" in out
    assert (tmp_path / "o" / "compare.png").is_file()


def test_cli_errors_name_the_workdir_or_field(scales, tmp_path, capsys):
    div20, div5 = scales
    out = tmp_path / "o"
    code, _, err = _cli(["compare", div20, tmp_path / "absent", "--out", out], capsys)
    assert code == 2 and f"workdir {tmp_path / 'absent'} does not exist" in err
    code, _, err = _cli(["compare", div20, div5, "--labels", "one", "--out", out], capsys)
    assert code == 2 and "--labels gives 1 label(s) for 2 workdir(s)" in err
    code, _, err = _cli(["compare", div20, "--paper", "frepo_cifar10_jpeg_10_resnet18", "--out", out], capsys)
    assert code == 2 and "--paper 'frepo_cifar10_jpeg_10_resnet18' is not" in err and "frepo_cifar10_10_resnet18" in err
    other = tmp_path / "other"  # another experiment's finished run
    _write_cell(other, _configs(other, 20, 8)["teacher"], [40.0, 41.0, 42.0])
    _write_reproduction(other, 20, 8, experiment="frepo_cifar10_jpeg_50_resnet18")
    code, _, err = _cli(["compare", div20, other, "--out", out], capsys)
    assert code == 2 and "different experiments" in err and "'experiment'" in err
    assert f"{other}: frepo_cifar10_jpeg_50_resnet18" in err
    running = tmp_path / "running"  # no reproduction.json yet: told apart by the cells' configs
    cell = _configs(running, 20, 8)["teacher"]
    cell.config.data.distilled_path = "/data/distilled/cifar10_50_frepo"
    _write_cell(running, cell, [40.0, 41.0, 42.0])
    code, _, err = _cli(["compare", div20, running, "--out", out], capsys)
    assert code == 2 and "cell 'teacher' config field 'data.distilled_path'" in err and str(running) in err
    code, _, err = _cli(["compare", tmp_path, "--out", out], capsys)  # the folder above the experiment workdirs
    assert code == 2 and "holds no cell of an experiment" in err and str(div20) in err
    assert not out.exists()  # nothing written by a refused comparison


def test_partial_table_reads_cells_through_the_library(scales):
    spec = importlib.util.spec_from_file_location("partial_table", REPO / "scripts" / "partial_table.py")
    partial_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(partial_table)
    assert partial_table.cell_record is compare.cell_record  # one owner
    _, div5 = scales
    record = compare.cell_record(div5 / "no_dp")
    assert record["label"] == "w/o DP (partial)" and record["seeds"] == [0, 1]
    assert compare.cell_record(div5 / "no_kd") is None


def test_a_complete_reproduction_workdir_parses_as_the_results_record_reads_it(tmp_path):
    """A finished reproduce workdir (plan.json, reproduction.json; a split-seed teacher and a
    student of one run, each with record.json, results.json and metrics.jsonl): every cell it ran is
    complete, and compare reads the same final and last-step training accuracies as its record."""
    root = _experiment_dir(tmp_path / "div20")
    workdir = compare.read_workdir(root)
    assert workdir["experiment"] == EXPERIMENT and workdir["scale"]["epoch_divisor"] == 20
    exported = {c["cell"]: c for c in results_record.from_workdir(root)["cells"]}
    assert set(exported) == {"teacher", "full"}
    for name, cell in exported.items():
        state = workdir["cells"][name]
        record = json.loads((root / name / "record.json").read_text())
        assert state["status"] == "complete" and state["final_accuracy"] == record["final_accuracy"]
        assert state["final_accuracy"]["per_seed"] == cell["final_test_accuracy"]
        assert state["train_accuracy"]["per_seed"] == cell["last_step_train_accuracy"]["per_seed"]
        assert state["train_accuracy"]["epoch"] == record["config"]["train"]["epochs"]
    assert workdir["cells"]["teacher"]["train_accuracy"]["per_seed"] == [70.0, 71.0]  # one per seed_<s> run
    assert workdir["cells"]["no_kd"]["status"] == "not finished"  # a cell it did not run


def test_scale_curves_plot_checks_its_input(tmp_path):
    out = plots.plot_scale_curves({"Full": {"d20": ([0.5, 1.0], [[40.0, 41.0], [42.0, 44.0]])}, "Teacher": {},
                                   "Imported": {"d5": (None, [[45.0, 46.0]])}}, tmp_path / "c.png",
                                  references={"Full": (66.6, "paper")})
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="2 x values for 1 evaluations"):
        plots.plot_scale_curves({"Full": {"d20": ([0.5, 1.0], [[40.0]])}}, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="no panels"):
        plots.plot_scale_curves({}, tmp_path / "none.png")


def test_a_real_toy_reproduction_reads_back(tmp_path):
    """The files as the code writes them: the teacher cell of a toy experiment (ConvNet, 2 epochs,
    2 seeds, one run each) through reproduce.run_reproduction, then read by compare."""
    registry.register_experiment("tiny_compare", _tiny_experiment)
    try:
        config = _reproduce_config("tiny_compare", split_seeds=True, cells="teacher")
        reproduce.run_reproduction(config, tmp_path / "w", data_cache=_cache(config, tmp_path / "w", _tiny_data()))
    finally:
        registry.unregister_experiment("tiny_compare")
    plan = json.loads((tmp_path / "w" / reproduce.PLAN_FILE).read_text())
    assert plan["cells"] == ["teacher"] and plan["config"]["num_seeds"] == 2
    workdir = compare.read_workdir(tmp_path / "w")
    assert workdir["experiment"] == "tiny_compare" and workdir["num_seeds"] == 2
    assert not workdir["finished"]  # one cell of two: its files are reproduction.teacher.json, table.teacher.md
    assert (tmp_path / "w" / "reproduction.teacher.json").is_file() and not (
        tmp_path / "w" / "reproduction.json"
    ).exists()
    teacher = workdir["cells"]["teacher"]
    record = json.loads((tmp_path / "w" / "teacher" / "record.json").read_text())
    assert teacher["status"] == "complete" and teacher["final_accuracy"] == record["final_accuracy"]
    assert teacher["epochs"] == 2 and [h["epoch"] for h in teacher["history"]] == [1, 2]
    last = [
        json.loads(line)
        for line in (tmp_path / "w" / "teacher" / "seed_1" / "metrics.jsonl").read_text().splitlines()
        if "train_accuracy" in line
    ][-1]
    assert (
        teacher["train_accuracy"]["epoch"] == 2
        and teacher["train_accuracy"]["per_seed"][1] == last["train_accuracy"][0]
    )
    comparison = compare.build_comparison([tmp_path / "w"])
    assert comparison["scales"][0]["label"] == "epochs/1, lr ×1, width paper"
    table = compare.comparison_table(comparison["scales"], expected=comparison["cells"])
    assert comparison["cells"] == ["teacher"]  # from plan.json: the experiment is not registered now
    assert [line.split(" |")[0] for line in table.splitlines()[2:]] == ["| Teacher (convnet)"]
    assert [o for o in comparison["scales"][0]["orderings"] if "missing" not in o] == []  # none of the five columns


def test_cli_refuses_a_single_training_run(tmp_path, capsys):
    """A workdir of mode train (config.json, results.json, metrics.jsonl, tb/seed_<s>/) is no
    experiment: refused, naming the path and what compare reads, with nothing written."""
    run = tmp_path / "run"
    _write_run(run, _configs(run, 20, 8)["teacher"].config.to_dict(), [0, 1], [40.0, 41.0])
    (run / "tb" / "seed_0").mkdir(parents=True)
    (run / "tb" / "seed_1").mkdir()
    out = tmp_path / "o"
    code, stdout, err = _cli(["compare", run, "--out", out], capsys)
    assert code == 2 and stdout == "", err
    assert err.strip().splitlines() == [
        f"distill-jax: error: workdir {run} is a single run (config.json and results.json at its top), not an "
        f"experiment: compare reads the experiment workdirs of `reproduce`: a folder holding plan.json (or "
        f"reproduction.json) and one folder per cell"]
    (run / "config.json").unlink()
    (run / "results.json").unlink()  # what is left (metrics.jsonl, tb/) holds no cell either
    code, _, err = _cli(["compare", run, "--out", out], capsys)
    assert code == 2 and f"workdir {run} holds no cell of an experiment (no plan.json" in err
    assert not out.exists()
