"""`distill-jax compare`: one experiment run at several scales, side by side.

Reads each experiment workdir of mode `reproduce` (the folder that holds the cell dirs) as it
stands, and writes nothing there (its reproduction.json, else the plan.json written when it
started, gives the experiment, its scale and the seeds each cell plans):
- a cell with a record.json is complete (or diverged, as the record says);
- an unfinished cell is read from its finished runs (`seed_*/results.json`, or the cell's own
  results.json), marked "partial (k of n seeds)";
- a cell without a finished run is "not finished" (with the last epoch its metrics.jsonl logged).

The report (`write_comparison`: compare.md, compare.png and compare.json in an output dir, each
written atomically) has
- a table: one row per cell (the teacher, then `recipes.VARIANTS`), per scale the final-epoch test
  accuracy (mean ± std over seeds, ddof 1, with the seed count and epochs) and the last logged
  training accuracy, and optionally the paper's published number (`PAPER`);
- the orderings the ablation is about (`ORDERINGS`), per scale: the difference of the means and
  whether the seeds separate (every seed of one above every seed of the other);
- test accuracy over training, one panel per cell, one line per scale against epoch / epochs.

Training accuracy: results.json's history keeps only the training loss; metrics.jsonl keeps the
per-seed accuracy of each logged step's batch (augmented, with DropPath where the recipe uses
it), so the table shows the last logged step's (`records.last_train_accuracy`, the one reader
the results record uses too), mean over seeds, or "not recorded".
"""
from __future__ import annotations

import pathlib
from typing import Optional, Sequence

import numpy as np

from distill_jax import atomic
from distill_jax.errors import UserError
from distill_jax.experiments import recipes, registry, reproduce
from distill_jax.report import paper as published
from distill_jax.report import plots, records, results_record, tables
from distill_jax.report.results_record import Role
from distill_jax.training import metrics as metrics_lib
from distill_jax.training import workdir_io


class CompareError(UserError, ValueError):
    """The workdirs, labels or paper key given to `compare` cannot be compared as asked."""


CELLS = ("teacher", *recipes.VARIANTS)
ROW_LABELS = {"teacher": "Teacher", **recipes.VARIANT_LABELS}
# Labels of cells read from their finished runs before the cell completed (scripts/partial_table.py).
PARTIAL_LABELS = {**recipes.VARIANT_LABELS, "teacher": "Teacher / ConvNet", "dp_kd": "DropPath + KD"}

# (key, what it asks, cell A, cell B): each ordering is read as A − B.
ORDERINGS = (
    ("lion_vs_adamw", "Lion vs AdamW (w/o DP & KD − Baseline)", "no_dp_kd", "baseline"),
    ("no_dp_vs_baseline", "w/o DP − Baseline", "no_dp", "baseline"),
    ("full_vs_no_kd", "KD on top of DropPath (Full − w/o KD)", "full", "no_kd"),
    ("full_vs_teacher", "Full − teacher", "full", "teacher"),
)

PAPER_HEADER = "paper (published, their selection)"
# The paper's published CIFAR-10 test accuracies (%) by the experiment name they belong to
# (`registry.experiment_names()`): cell -> (value, note or ""). `distill_jax.report.paper` owns
# them with their provenance (what the papers published, with their own protocols and
# selection: not final-epoch numbers, not this package's data).
PAPER = published.compare_view()

# Fields of a cell's config that do not change with the scale: two workdirs whose cells differ
# in one of them hold different experiments.
SIGNATURE_FIELDS = ("data.dataset", "data.source", "data.distilled_path", "data.per_class", "model.name",
                    "train.optimizer", "train.kd.enabled", "model.droppath")


# ----------------------------------------------------------------------------- reading a workdir

def _read_json(path: pathlib.Path) -> Optional[dict]:
    if not path.is_file():
        return None
    return atomic.read_json_object(path, CompareError)


def finished_runs(cell_dir: pathlib.Path) -> list[tuple[pathlib.Path, dict]]:
    """(run dir, results) of every finished run of a cell."""
    out = []
    for run in records.run_dirs(cell_dir):
        results = _read_json(run / workdir_io.RESULTS_FILE)
        if results and results.get("finished"):
            out.append((run, results))
    return out


def cell_record(cell_dir: pathlib.Path) -> Optional[dict]:
    """A cell's record: its record.json when the cell is complete, else one merged from its finished
    runs (label '<cell> (partial)'; the seeds say how many finished), None when none has."""
    record = _read_json(cell_dir / "record.json")
    if record is not None:
        return record
    runs = [r for _, r in finished_runs(cell_dir)]
    if not runs:
        return None
    merged = records.merge_seed_results(runs)
    config = runs[0]["config"]
    return {"cell": cell_dir.name, "label": PARTIAL_LABELS.get(cell_dir.name, cell_dir.name) + " (partial)",
            "network": reproduce.network_label(config["model"]["name"], config["model"].get("width"),
                                               config["model"].get("norm")),
            "epochs": config["train"]["epochs"], **merged}


def _merge_evaluations(histories: list[list[dict]]) -> list[dict]:
    """Per-seed test accuracies of several runs at the epochs all of them evaluated."""
    histories = [h for h in histories if h]
    if not histories:
        return []
    common = sorted(set.intersection(*({e["epoch"] for e in h} for h in histories)))
    by_epoch = [{e["epoch"]: e for e in h} for h in histories]
    return [{"epoch": epoch, "test_accuracy": [a for b in by_epoch for a in b[epoch]["test_accuracy"]]}
            for epoch in common]


def logged_evaluations(runs: Sequence[pathlib.Path]) -> list[dict]:
    """The test evaluations metrics.jsonl logged so far (a run still training), merged over runs."""
    return _merge_evaluations([[{"epoch": int(e["epoch"]), "test_accuracy": e["test_accuracy"]}
                                for e in metrics_lib.read_metrics(run) if isinstance(e.get("test_accuracy"), list)
                                and "epoch" in e and None not in e["test_accuracy"]] for run in runs])


def recorded_config(cell_dir: pathlib.Path) -> Optional[dict]:
    """The config a cell ran with: its record's, else its (first) run's config.json."""
    record = _read_json(cell_dir / "record.json")
    if record and record.get("config"):
        return record["config"]
    for run in records.run_dirs(cell_dir):
        config = _read_json(run / workdir_io.CONFIG_FILE)
        if config:
            return config
    return None


def _field(config: dict, dotted: str):
    value = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _planned_seeds(root: pathlib.Path, plan: Optional[dict], cell_names) -> Optional[int]:
    """Seeds per cell: the reproduction's config (reproduction.json, else plan.json), else the most
    any cell shows (a workdir from before plan.json: seed dirs not yet started are not counted)."""
    if plan and plan.get("config", {}).get("num_seeds"):
        return int(plan["config"]["num_seeds"])
    counts = []
    for name in cell_names:
        config = _read_json(root / name / workdir_io.CONFIG_FILE)  # a cell that trains its seeds together
        if config and config.get("num_seeds"):
            counts.append(int(config["num_seeds"]))
        record = _read_json(root / name / "record.json")
        if record and record.get("seeds"):
            counts.append(len(record["seeds"]))
        counts.append(len([p for p in records.run_dirs(root / name) if p.name.startswith(workdir_io.SEED_PREFIX)]))
    return max(counts) if counts and max(counts) > 0 else None


def read_cell(cell_dir: pathlib.Path, planned_seeds: Optional[int] = None) -> dict:
    """Where one cell stands: status ('complete', 'partial', 'diverged', 'not finished'), its final
    accuracy over the finished seeds, its evaluations (epoch, per-seed test accuracy), epochs,
    network, the last logged training accuracy, and the last logged epoch of a cell still running."""
    state = {"cell": cell_dir.name, "status": "not finished", "seeds_finished": 0, "seeds_planned": planned_seeds,
             "epochs": None, "network": None, "role": None, "final_accuracy": None, "diverged": None, "history": [],
             "history_source": None, "train_accuracy": None, "logged_epoch": None}
    if not cell_dir.is_dir():
        return state
    config = recorded_config(cell_dir)
    if config:
        state["epochs"] = _field(config, "train.epochs")
    record = cell_record(cell_dir)
    runs = records.run_dirs(cell_dir)
    if record is not None:
        state.update(network=record.get("network"), role=record.get("role"), diverged=record.get("diverged"),
                     epochs=record.get("epochs") or state["epochs"], history=record.get("history") or [],
                     history_source="finished runs")
        final = record.get("final_accuracy")
        if record.get("diverged"):
            state["status"] = "diverged"
        elif final:
            state["final_accuracy"] = final
            state["seeds_finished"] = len(final["per_seed"])
            complete = (cell_dir / "record.json").is_file() or (
                planned_seeds and state["seeds_finished"] >= planned_seeds
            )
            state["status"] = "complete" if complete else "partial"
            if not (cell_dir / "record.json").is_file():
                runs = [run for run, _ in finished_runs(cell_dir)]
        role = record.get("role")  # none in a partial cell's record, merged from runs that trained
        if role is not None and results_record.parse_role(role, cell_dir / "record.json").scored_only:  # scored once
            state.update(history_source="scored once", epochs=None)
    if state["status"] == "not finished":
        state["history"] = logged_evaluations(runs)
        state["history_source"] = "logged so far (still training)" if state["history"] else None
        epochs = [int(e["epoch"]) for run in runs for e in metrics_lib.read_metrics(run) if "epoch" in e]
        state["logged_epoch"] = max(epochs) if epochs else None
    state["train_accuracy"] = records.last_train_accuracy(runs)
    if state["seeds_planned"] is None and state["seeds_finished"]:
        state["seeds_planned"] = state["seeds_finished"]
    return state


def _is_cell_dir(path: pathlib.Path) -> bool:
    """A folder of runs (not `<cell>.<hash>`, a cell rerun afresh beside its old dir)."""
    if not path.is_dir() or "." in path.name:
        return False
    return (any((path / name).exists() for name in ("record.json", workdir_io.RESULTS_FILE, workdir_io.CONFIG_FILE))
            or bool(workdir_io.seed_dirs(path)))


def scale_label(scale: Optional[dict]) -> Optional[str]:
    """'epochs/5, lr ×5, width 16' from a `reproduce` section (or an inferred scale)."""
    if not scale:
        return None
    parts = [f"epochs/{scale['epoch_divisor']}" if scale.get("epoch_divisor") else None,
             f"lr ×{float(scale['lr_multiplier']):g}" if scale.get("lr_multiplier") else None]
    if "width" in scale:
        parts.append(f"width {scale['width'] or 'paper'}")
    return ", ".join(p for p in parts if p) or None


def infer_scale(experiment: str, root: pathlib.Path) -> Optional[dict]:
    """The scale of a workdir that has no reproduction.json yet, from a cell's recorded config
    against the same cell at the paper's scale (`registry`): a student cell if one has started
    (its epochs, lr and width), else the teacher (epochs and lr). None when neither can tell."""
    try:
        cells = registry.get_experiment(experiment, root)
    except UserError:
        return None
    for role in (Role.STUDENT, Role.TEACHER):
        for cell in cells:
            config = recorded_config(root / cell.name) if cell.role is role else None
            if not config:
                continue
            paper_epochs, epochs = int(cell.config.train.epochs), _field(config, "train.epochs")
            paper_lr, lr = float(cell.config.train.learning_rate), _field(config, "train.learning_rate")
            if not epochs or paper_epochs % int(epochs) or not lr or not paper_lr:
                continue
            scale = {"epoch_divisor": paper_epochs // int(epochs), "lr_multiplier": round(float(lr) / paper_lr, 6),
                     "inferred_from": cell.name}
            if role is Role.STUDENT:
                scale["width"] = _field(config, "model.width") or 0
            return scale
    return None


def read_workdir(path) -> dict:
    """One scale of the experiment: its workdir, experiment name and scale (reproduction.json,
    when the experiment finished), and where every cell stands (`read_cell`)."""
    root = pathlib.Path(path)
    if not root.is_dir():
        raise CompareError(f"workdir {root} does not exist" if not root.exists() else f"workdir {root} is not a folder")
    reproduction = _read_json(root / "reproduction.json")
    plan = reproduction or _read_json(root / reproduce.PLAN_FILE)  # plan.json: written when it started
    expected = (f"compare reads the experiment workdirs of `reproduce`: a folder holding {reproduce.PLAN_FILE} "
                "(or reproduction.json) and one folder per cell")
    if plan is None:  # from before plan.json, an experiment workdir is told by its cell dirs
        own = [name for name in (workdir_io.CONFIG_FILE, workdir_io.RESULTS_FILE) if (root / name).is_file()]
        if own:
            raise CompareError(f"workdir {root} is a single run ({' and '.join(own)} at its top), not an "
                               f"experiment: {expected}")
        if not any(_is_cell_dir(root / c) for c in CELLS):
            inside = sorted(p.name for p in root.iterdir() if (p / "teacher").is_dir()
                            or any((p / name).is_file() for name in ("reproduction.json", reproduce.PLAN_FILE)))
            hint = f"; experiment workdirs inside it: {', '.join(str(root / n) for n in inside)}" if inside else ""
            raise CompareError(f"workdir {root} holds no cell of an experiment (no {reproduce.PLAN_FILE}, no "
                               f"reproduction.json, no {'/'.join(CELLS)} dir): {expected}{hint}")
    extra = sorted(p.name for p in root.iterdir() if p.name not in CELLS and _is_cell_dir(p))
    names = [*CELLS, *extra]
    planned = _planned_seeds(root, plan, names)
    cells = {name: read_cell(root / name, planned) for name in names}
    scale = None
    if plan:
        r = plan.get("config", {}).get("reproduce", {})
        scale = {k: r[k] for k in ("epoch_divisor", "lr_multiplier", "width", "teacher_width") if k in r}
    return {"path": str(root), "experiment": (plan or {}).get("experiment"),
            "recorded_cells": ([c["cell"] for c in reproduction.get("cells", []) if c.get("cell")] if reproduction
                               else list((plan or {}).get("cells", []))),  # records in one, names in the other
            "finished": reproduction is not None, "scale": scale, "num_seeds": planned, "cells": cells,
            "signature": {name: {f: _signature_value(config, f) for f in SIGNATURE_FIELDS}
                          for name in names if (config := recorded_config(root / name))}}


def _signature_value(config: dict, field: str):
    value = _field(config, field)
    if field == "data.distilled_path" and value:
        return pathlib.PurePath(value).name  # the set, wherever the data root was
    return value


def check_same_experiment(workdirs: Sequence[dict]) -> Optional[str]:
    """The experiment all `workdirs` hold (None when none has finished to say so); stops, naming
    the workdirs and the field, when they hold different ones."""
    named = [(w["path"], w["experiment"]) for w in workdirs if w["experiment"]]
    if len({name for _, name in named}) > 1:
        raise CompareError("reproduction.json field 'experiment': the workdirs hold different experiments: "
                           + ", ".join(f"{path}: {name}" for path, name in named))
    first = workdirs[0]
    for other in workdirs[1:]:
        for cell in sorted(set(first["signature"]) & set(other["signature"])):
            for field in SIGNATURE_FIELDS:
                a, b = first["signature"][cell].get(field), other["signature"][cell].get(field)
                if a != b:
                    raise CompareError(
                        f"cell {cell!r} config field '{field}': the workdirs hold different experiments: "
                        f"{a!r} in {first['path']} but {b!r} in {other['path']}"
                    )
    return named[0][1] if named else None


# ----------------------------------------------------------------------------- the comparison

def paper_numbers(key: Optional[str]) -> Optional[dict]:
    """The published numbers of experiment `key` (`PAPER`), or None without a key."""
    if not key:
        return None
    if key not in PAPER:
        raise CompareError(f"--paper {key!r} is not an experiment with published numbers here; one of: "
                           f"{', '.join(sorted(PAPER))} (docs/method.md §7)")
    return PAPER[key]


def _seeds_text(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def test_text(state: dict) -> str:
    """A table cell: '47.55 ± 2.06 (3 seeds, 200 ep.)', with its status when not complete."""
    final = state["final_accuracy"]
    if state["status"] == "diverged":
        d = state["diverged"] or {}
        return f"diverged (epoch {d.get('epoch')}, seed(s) {', '.join(map(str, d.get('seeds', [])))})"
    if not final:
        if state["logged_epoch"]:
            return f"not finished (epoch {state['logged_epoch']} of {state['epochs'] or '?'} logged)"
        return "not finished"
    n = len(final["per_seed"])
    value = f"{final['mean']:.2f} ± {final['std']:.2f}" if n > 1 else f"{final['mean']:.2f}"
    epochs = f", {state['epochs']} ep." if state["epochs"] else ""
    text = f"{value} ({_seeds_text(n)}{epochs})"
    if state["status"] == "partial":
        text += f"; partial ({n} of {state['seeds_planned'] or '?'} seeds)"
    return text


def train_text(state: dict) -> str:
    train = state["train_accuracy"]
    if train is None:
        return "not recorded" if state["final_accuracy"] else "—"
    if state["epochs"] and train["epoch"] < state["epochs"]:
        return f"{train['mean']:.1f} (epoch {train['epoch']} of {state['epochs']})"
    return f"{train['mean']:.1f}"


def compare_seeds(a: Sequence[float], b: Sequence[float]) -> dict:
    """A − B: difference of the means, and how the seeds order (every A above every B, or the reverse)."""
    a, b = [float(x) for x in a], [float(x) for x in b]
    pairs = sum(x > y for x in a for y in b)
    return {"a_mean": float(np.mean(a)), "b_mean": float(np.mean(b)), "difference": float(np.mean(a) - np.mean(b)),
            "a_per_seed": a, "b_per_seed": b, "a_all_above_b": min(a) > max(b), "b_all_above_a": min(b) > max(a),
            "pairs_a_above": int(pairs), "pairs": len(a) * len(b)}


def orderings(scale: dict, paper: Optional[dict] = None) -> list[dict]:
    """Every `ORDERINGS` entry at one scale: A − B over the finished seeds (partial cells marked),
    with the paper's A − B where it published both."""
    out = []
    for key, question, a, b in ORDERINGS:
        sa, sb = scale["cells"].get(a), scale["cells"].get(b)
        entry = {"key": key, "question": question, "a": a, "b": b}
        missing = [(c, s["status"] if s else "not finished") for c, s in ((a, sa), (b, sb))
                   if not (s and s["final_accuracy"])]
        if missing:
            entry["missing"] = missing
        else:
            entry.update(compare_seeds(sa["final_accuracy"]["per_seed"], sb["final_accuracy"]["per_seed"]))
            entry["partial"] = [c for c, s in ((a, sa), (b, sb)) if s["status"] == "partial"]
        cells = (paper or {}).get("cells", {})
        if a in cells and b in cells:
            entry["paper_difference"] = round(cells[a][0] - cells[b][0], 6)
        out.append(entry)
    return out


def _seed_order_text(o: dict) -> str:
    if o["a_all_above_b"]:
        return f"every {ROW_LABELS.get(o['a'], o['a'])} seed above every {ROW_LABELS.get(o['b'], o['b'])} seed"
    if o["b_all_above_a"]:
        return f"every {ROW_LABELS.get(o['b'], o['b'])} seed above every {ROW_LABELS.get(o['a'], o['a'])} seed"
    return f"overlap (A above B in {o['pairs_a_above']} of {o['pairs']} seed pairs)"


def _mean_std(values: Sequence[float]) -> str:
    s = metrics_lib.summarize(values)
    return tables.format_mean_std(s) if len(values) > 1 else f"{s['mean']:.2f}"


def orderings_table(scales: Sequence[dict], paper: Optional[dict] = None) -> str:
    header = ["scale", "ordering", "A (mean ± std)", "B (mean ± std)", "A − B", "seeds"]
    if paper:
        header.append("paper A − B")
    rows = []
    for scale in scales:
        for o in scale["orderings"]:
            if "missing" in o:
                row = [scale["label"], o["question"], "", "", "—",
                       "; ".join(f"{ROW_LABELS.get(c, c)} {status}" for c, status in o["missing"])]
            else:
                note = f" (partial: {', '.join(ROW_LABELS.get(c, c) for c in o['partial'])})" if o["partial"] else ""
                row = [scale["label"], o["question"], _mean_std(o["a_per_seed"]), _mean_std(o["b_per_seed"]),
                       f"{o['difference']:+.2f}", _seed_order_text(o) + note]
            if paper:
                row.append(f"{o['paper_difference']:+.1f}{_paper_mark(paper, o['a'], o['b'])}"
                           if "paper_difference" in o else "—")
            rows.append(row)
    return tables.markdown_table(header, rows)


def expected_cells(experiment: Optional[str], scales: Sequence[dict]) -> Optional[list[str]]:
    """The cells of the experiment (`registry`, else a scale's reproduction.json or plan.json);
    None when nothing says (then every cell of a paper experiment is a row)."""
    if experiment:
        try:
            return [c.name for c in registry.get_experiment(experiment, scales[0]["path"])]
        except UserError:
            pass
    names = [c for s in scales for c in s.get("recorded_cells") or []]
    return list(dict.fromkeys(names)) or None


def cell_rows(scales: Sequence[dict], expected: Optional[Sequence[str]] = None) -> list[str]:
    """The table's rows: the teacher and the five columns in `recipes.VARIANTS` order (those of the
    experiment, when `expected` names its cells), then any other cell of the experiment or of a workdir."""
    names = [c for c in CELLS if expected is None or c in expected] + [c for c in expected or [] if c not in CELLS]
    for scale in scales:
        names += [c for c, st in scale["cells"].items() if c not in names and c not in CELLS
                  and (st["status"] != "not finished" or st["logged_epoch"])]
    return list(dict.fromkeys(names))


def _row_label(cell: str, scales: Sequence[dict]) -> str:
    networks = [s["cells"][cell]["network"] for s in scales if cell in s["cells"] and s["cells"][cell]["network"]]
    name = networks[0].split(" ")[0] if networks else ""
    return f"{ROW_LABELS.get(cell, cell)} ({name})" if name else ROW_LABELS.get(cell, cell)


NOTE_MARKS = ("†", "‡", "§", "¶")


def paper_notes(paper: Optional[dict]) -> dict:
    """note -> its mark (†, ‡, ...), in the order of the paper's cells."""
    notes = list(dict.fromkeys(note for _, note in (paper or {}).get("cells", {}).values() if note))
    return {note: NOTE_MARKS[i % len(NOTE_MARKS)] * (1 + i // len(NOTE_MARKS)) for i, note in enumerate(notes)}


def _paper_mark(paper: Optional[dict], *cells: str) -> str:
    marks = paper_notes(paper)
    found = [marks[paper["cells"][c][1]] for c in cells if paper and c in paper["cells"] and paper["cells"][c][1]]
    return " " + "".join(dict.fromkeys(found)) if found else ""


def comparison_table(scales: Sequence[dict], paper: Optional[dict] = None,
                     expected: Optional[Sequence[str]] = None) -> str:
    """One row per cell; per scale the final test accuracy and the last logged training accuracy;
    the paper's published number last (marked where a note qualifies it: `paper_notes`)."""
    header = ["cell"]
    for scale in scales:
        header += [f"test acc. % ({scale['label']})", f"train acc. % last step ({scale['label']})"]
    if paper:
        header.append(PAPER_HEADER)
    rows = []
    for cell in cell_rows(scales, expected):
        row = [_row_label(cell, scales)]
        for scale in scales:
            state = scale["cells"].get(cell) or read_cell(pathlib.Path(scale["path"]) / cell)
            row += [test_text(state), train_text(state)]
        if paper:
            value = paper["cells"].get(cell)
            row.append("—" if value is None else f"{value[0]:.1f}{_paper_mark(paper, cell)}")
        rows.append(row)
    return tables.markdown_table(header, rows)


def curve_panels(scales: Sequence[dict], expected: Optional[Sequence[str]] = None) -> dict:
    """plots.plot_scale_curves's panels: per cell, per scale (x = epoch / epochs, curves)."""
    panels = {}
    for cell in cell_rows(scales, expected):
        series = {}
        for scale in scales:
            state = scale["cells"].get(cell)
            if not state:
                continue
            label = scale["label"] + (" (partial)" if state["status"] == "partial" else
                                      " (in progress)" if state["status"] == "not finished" else "")
            if state["history"] and state["epochs"]:
                x = [h["epoch"] / state["epochs"] for h in state["history"]]
                series[label] = (x, [h["test_accuracy"] for h in state["history"]])
            elif state["final_accuracy"]:  # scored once (a published network)
                series[label] = (None, [state["final_accuracy"]["per_seed"]])
        panels[_row_label(cell, scales)] = series
    return panels


def build_comparison(workdirs: Sequence, labels: Optional[Sequence[str]] = None, paper: Optional[str] = None) -> dict:
    """Reads the workdirs (one scale each) and returns the comparison: per scale its cells and
    orderings, the Markdown (table, orderings, notes) and the figure's panels."""
    if not workdirs:
        raise CompareError("compare: give at least one experiment workdir")
    reference = paper_numbers(paper)
    if labels is not None:
        labels = [str(label).strip() for label in labels]
        if len(labels) != len(workdirs):
            raise CompareError(f"--labels gives {len(labels)} label(s) for {len(workdirs)} workdir(s): "
                               f"{', '.join(labels)}")
        if len(set(labels)) != len(labels) or not all(labels):
            raise CompareError(f"--labels must be distinct and non-empty: {', '.join(labels)}")
    scales = [read_workdir(w) for w in workdirs]
    experiment = check_same_experiment(scales)
    for i, scale in enumerate(scales):
        if scale["scale"] is None and experiment:
            scale["scale"] = infer_scale(experiment, pathlib.Path(scale["path"]))
        scale["label"] = labels[i] if labels else (scale_label(scale["scale"]) or pathlib.Path(scale["path"]).name)
        scale["orderings"] = orderings(scale, reference)
    if not labels and len({s["label"] for s in scales}) < len(scales):
        for scale in scales:
            scale["label"] = f"{scale['label']} ({pathlib.Path(scale['path']).name})"
    expected = expected_cells(experiment, scales)
    return {"experiment": experiment, "scales": scales, "paper_key": paper, "paper": reference, "cells": expected,
            "markdown": _markdown(experiment, scales, paper, reference, expected),
            "panels": curve_panels(scales, expected)}


def _markdown(experiment, scales, paper_key, paper, expected=None) -> str:
    lines = [f"### {experiment or 'experiment'}: {len(scales)} scale(s) side by side", "",
             "Final-epoch test accuracy (%), mean ± std (ddof=1) over the finished seeds, with their count and the "
             "cell's epochs; a cell still training counts its finished seeds only (\"partial (k of n seeds)\"). "
             "Training accuracy: the last logged step's, on its augmented batch (DropPath active where the recipe "
             "uses it), mean over the seeds (metrics.jsonl; results.json keeps only the training loss).", ""]
    for scale in scales:
        s = scale["scale"]
        how = ("" if not s else f" ({scale_label(s)}, inferred from cell {s['inferred_from']}'s config)"
               if s.get("inferred_from") else f" ({scale_label(s)}, teacher width {s.get('teacher_width') or 'paper'})")
        state = "finished" if scale["finished"] else "not finished (no reproduction.json yet)"
        lines.append(f"- **{scale['label']}**: `{scale['path']}`{how}, {state}.")
    lines += ["", comparison_table(scales, paper, expected)]
    if paper:
        lines += [f"Paper column (`--paper {paper_key}`): {paper['source']}. What the paper published, with its "
                  "selection; not final-epoch numbers of this package.", ""]
        lines += [f"- {mark} {note}." for note, mark in paper_notes(paper).items()]
        lines.append("")
    lines += ["#### Orderings (A − B; seeds: whether every seed of one is above every seed of the other)", "",
              orderings_table(scales, paper)]
    return "\n".join(lines) + "\n"


def summary_json(comparison: dict) -> dict:
    """What compare.json holds: per scale its cells (status, numbers, per seed) and orderings."""
    keep = ("cell", "status", "seeds_finished", "seeds_planned", "epochs", "network", "role", "final_accuracy",
            "diverged", "train_accuracy", "logged_epoch", "history", "history_source")
    return {
        "experiment": comparison["experiment"],
        "cells": comparison["cells"],
        "paper_key": comparison["paper_key"],
        "paper": comparison["paper"]
        and {
            "source": comparison["paper"]["source"],
            "header": PAPER_HEADER,
            "cells": {c: {"value": v, "note": n} for c, (v, n) in comparison["paper"]["cells"].items()},
        },
        "scales": [
            {
                "label": s["label"],
                "path": s["path"],
                "experiment": s["experiment"],
                "finished": s["finished"],
                "scale": s["scale"],
                "num_seeds": s["num_seeds"],
                "cells": {c: {k: st[k] for k in keep} for c, st in s["cells"].items()},
                "orderings": s["orderings"],
            }
            for s in comparison["scales"]
        ],
    }


def write_comparison(workdirs: Sequence, out, *, labels: Optional[Sequence[str]] = None,
                     paper: Optional[str] = None) -> dict:
    """Compares the workdirs and writes compare.md, compare.png and compare.json into `out`
    (created if needed; each file written through a temporary name). Returns the comparison
    with 'files' added."""
    comparison = build_comparison(workdirs, labels, paper)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"md": out / "compare.md", "png": out / "compare.png", "json": out / "compare.json"}
    reference = comparison["paper"]
    rows = {_row_label(c, comparison["scales"]): c for c in cell_rows(comparison["scales"], comparison["cells"])}
    references = {panel: (reference["cells"][c][0], PAPER_HEADER)
                  for panel, c in rows.items() if reference and c in reference["cells"]}
    plots.plot_scale_curves(comparison["panels"], files["png"], references=references,
                            title=f"{comparison['experiment'] or 'experiment'}: test accuracy, mean over seeds "
                                  "(shaded: lowest to highest seed)")
    workdir_io.write_text(files["md"], comparison["markdown"])
    workdir_io.write_json(files["json"], summary_json(comparison))
    return {**comparison, "files": {k: str(v) for k, v in files.items()}}

