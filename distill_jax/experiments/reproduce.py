"""Mode "reproduce": run every cell of a named experiment, then write its table.

Each cell trains in its own sub-workdir (`<workdir>/<cell>`, or `<cell>/seed_<s>` with
`reproduce.split_seeds`), so an interrupted reproduction resumes where it stopped: finished
cells are skipped, a half-trained one restarts from its last checkpoint. Cells that share a
data config share one loaded (and ZCA-fitted) copy of the data.

Outputs in `<workdir>`: `plan.json` at the start (the config and the cells it will run, so that
a reader of an unfinished workdir knows how many seeds each cell plans), then `table.md`
(final-epoch mean ± std; best-over-training only with `reproduce.show_best`, labelled as
test-set selection), `reproduction.json` when every cell has finished (a run of some cells,
`reproduce.cells`, writes `table.<cells>.md` and `reproduction.<cells>.json`), and per cell
`record.json` (config, per-seed curves, final numbers, software versions, device),
`accuracy.png` and `schedules.png`; `accuracy_by_cell.png` draws every cell's mean curve;
`results_record.json` (`results_record.<cells>.json` for a run of some cells) is the results
record of the whole experiment (`distill_jax.report.results_record`), what `results/` keeps.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import pathlib
import time
from typing import Optional

from distill_jax import config as config_lib
from distill_jax import evaluate, models
from distill_jax.data import pipeline
from distill_jax.distillation import distill_mode
from distill_jax.errors import UserError
from distill_jax.experiments import recipes, registry
from distill_jax.report import plots, records, results_record, tables
from distill_jax.report.results_record import Role
from distill_jax.training import loop, saved_runs, workdir_io
from distill_jax.training import metrics as metrics_lib


class ReproductionError(UserError, ValueError):
    """The reproduce config does not name a runnable experiment."""


PLAN_FILE = "plan.json"


def data_key(data_cfg) -> str:
    """The key of a cell's data in `data_cache`: cells with equal `data` sections share one load
    (a caller, a notebook or a test, may pre-fill the cache with arrays it already holds)."""
    return json.dumps(data_cfg.to_dict(), sort_keys=True)


def _finished_results(run_dir: pathlib.Path, config) -> Optional[dict]:
    """The run's results if it already finished as this run (same identity: `workdir_io`), so it can
    be skipped. A run of another config is not skipped: training it refuses the workdir."""
    path = run_dir / workdir_io.RESULTS_FILE
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if results.get("finished") and not workdir_io.config_differences(results.get("config") or {}, config,
                                                                config_lib.default_config()):
        return results
    return None


def _run_dirs(cell: registry.Cell, cell_dir: pathlib.Path, split_seeds: bool):
    return [(cell_dir if seed is None else workdir_io.seed_dir(cell_dir, seed), c)
            for seed, c in _seed_configs(cell.config, split_seeds and cell.role.trains)]


def cell_conflicts(cell: registry.Cell, cell_dir: pathlib.Path, split_seeds: bool) -> list[str]:
    """How the runs already in `cell_dir` differ from this cell's config ([] when they do not,
    or when there are none). An imported published network is no run of a config: it is
    re-imported, never trained, so it has nothing to conflict with."""
    if cell.role.scored_only:
        return []
    defaults = config_lib.default_config()
    lines = []
    for run_dir, config in _run_dirs(cell, cell_dir, split_seeds):
        recorded = workdir_io.recorded_config(run_dir)
        if recorded is not None:
            lines += [f"{run_dir.name}: {d}" for d in workdir_io.config_differences(recorded, config, defaults)]
    return lines


def fresh_cell_dir(cell_dir: pathlib.Path, config) -> pathlib.Path:
    """`<cell>.<hash>`: where a cell whose config changed runs afresh, beside (never over) the old one."""
    digest = hashlib.sha256(json.dumps(workdir_io.identity(config), sort_keys=True).encode()).hexdigest()[:8]
    return cell_dir.with_name(f"{cell_dir.name}.{digest}")


def _train(config, run_dir: pathlib.Path, data) -> dict:
    """Trains the run, or returns its results when it already finished as this run: the loop decides,
    since it compares the data and the KD teacher a finished run used (a teacher retrained in place
    makes its students' results stale), not only the config."""
    return loop.train_and_evaluate(config, run_dir, data=data)


def _seed_configs(config, split: bool):
    if not split:
        return [(None, config)]
    out = []
    for i in range(config.num_seeds):
        c = copy.deepcopy(config)
        c.seed = config.seed + i
        c.num_seeds = 1
        out.append((c.seed, c))
    return out


def network_label(name: str, width, norm) -> str:
    """'resnet18 (width 16, batch norm)': every table row names its network's norm."""
    if not norm:
        norm = models.default_option(name, "norm") if "norm" in models.model_options(name) else "layer"
    return f"{name} ({f'width {width}, ' if width else ''}{norm} norm)"


def _distill(cell: registry.Cell, cell_dir: pathlib.Path) -> dict:
    """A 'distill' cell: produce the set (skipped when it already finished with this config) and
    record what it cost; its accuracy is what the cells trained on it measure."""
    results = _finished_results(cell_dir, cell.config) or distill_mode.run_distillation(cell.config, cell_dir)
    if not results.get("finished"):
        raise ReproductionError(f"reproduce: the distillation in {cell_dir} stopped at step {results.get('steps')} "
                                f"of {results.get('steps_planned')}; rerun the same command to continue it")
    history = results.get("history") or []
    record = {
        "cell": cell.name, "label": cell.label, "role": cell.role.value,
        "network": network_label(results["model"]["name"], results["model"]["options"].get("width"),
                                  results["model"]["options"].get("norm")),
        "epochs": "", "method": results["method"], "ipc": results["ipc"], "steps": results["steps"],
        "seconds_per_step": results.get("seconds_per_step"),
        "compile_seconds": results.get("compile_seconds"),
        "loss_first": history[0]["loss"] if history else None, "loss_last": results.get("final_loss"),
        "distilled_path": results.get("distilled_path"), "preprocessing": results.get("preprocessing"),
        "model": results["model"], "config": cell.config.to_dict(), "seeds": [], "history": [], "final_accuracy": None,
        "best_over_training": None, "software": records.software_versions(), "device": records.device_description(),
        "hardware": records.hardware_description(),
    }
    workdir_io.write_json(cell_dir / "record.json", record)
    return record


def describe_distill_record(record: dict) -> str:
    """One line on a distilled set: method, size, steps, speed, loss, where it is."""
    speed = f"{record['seconds_per_step']:.3f} s/step" if record.get("seconds_per_step") else "speed not measured"
    loss = (f", loss {record['loss_first']:.4g} -> {record['loss_last']:.4g}"
            if record.get("loss_first") is not None and record.get("loss_last") is not None else "")
    return (f"Distilled set: {recipes.DISTILLER_LABELS.get(record['method'], record['method'])}, "
            f"{record['ipc']} image(s) per class, "
            f"{record['steps']} steps of {record['network']} ({speed}{loss}), pixel space "
            f"{record.get('preprocessing')}: `{record.get('distilled_path')}`.")


def run_cell(cell: registry.Cell, cell_dir: pathlib.Path, data, *, split_seeds: bool) -> dict:
    """Runs one cell (all its seeds) and returns its record (also written to record.json). The
    cell's config must be valid (`run_cells` validates every cell before the first runs)."""
    if cell.role is Role.DISTILL:
        return _distill(cell, cell_dir)
    if cell.role.scored_only:  # a .pth is imported as a run here; a run elsewhere is scored where it is
        scored = copy.deepcopy(cell.config)
        if cell.role is Role.IMPORT:
            saved_runs.import_reference(cell.config.evaluate.path, cell_dir, cell.config)
            scored.evaluate.path = str(cell_dir)
        ev = evaluate.run_evaluation(scored, cell_dir, data=data)
        merged = {"finished": True, "seeds": ev["seeds"], "history": [], "final_accuracy": ev["accuracy"],
                  "data": ev["data"], "preprocessing": ev["preprocessing"]}
    else:
        per_run = [_train(c, run_dir, data) for run_dir, c in _run_dirs(cell, cell_dir, split_seeds)]
        merged = per_run[0] if len(per_run) == 1 else records.merge_seed_results(per_run)
    record = {
        "cell": cell.name, "label": cell.label, "role": cell.role.value,
        "network": network_label(cell.config.model.name, cell.config.model.get("width"), cell.config.model.get("norm")),
        "epochs": "" if cell.role.scored_only else cell.config.train.epochs,
        "config": cell.config.to_dict(), "split_seeds": bool(split_seeds),
        "seeds": merged["seeds"], "history": merged["history"],
        "final_accuracy": merged["final_accuracy"], "diverged": merged.get("diverged"),
        "best_over_training": records.best_over_training(merged["history"]) if merged["history"] else None,
        "data": merged.get("data"), "preprocessing": merged.get("preprocessing"),
        "software": records.software_versions(), "device": records.device_description(),
        "hardware": records.hardware_description(),
    }
    workdir_io.write_json(cell_dir / "record.json", record)
    if not cell.role.scored_only:
        plots.plot_schedules(
            cell.config, cell_dir / "schedules.png", steps_per_epoch=_steps_per_epoch(cell.config, data)
        )
        if record["history"]:
            plots.plot_accuracy(record, cell_dir / "accuracy.png", title=cell.label)
    return record


def _steps_per_epoch(config, data) -> int:
    n = len(data.train_images)
    return max(1, n // min(config.train.batch_size, n))


def _place_cells(cells: list, workdir: pathlib.Path, split_seeds: bool, fresh: bool) -> list:
    """Cells whose directory holds runs of another config stop the reproduction (naming the
    fields), or with `fresh` move to `fresh_cell_dir`; cells that read a moved teacher follow it."""
    moved, placed = {}, []
    for cell in cells:
        config = copy.deepcopy(cell.config)
        kd = config.train.kd
        if kd.get("teacher_path"):
            for old, new in moved.items():
                if kd.teacher_path == old or kd.teacher_path.startswith(old + "/"):
                    kd.teacher_path = new + kd.teacher_path[len(old):]
        cell = dataclasses.replace(cell, config=config)
        conflicts = cell_conflicts(cell, workdir / cell.name, split_seeds)
        if conflicts and not fresh:
            raise workdir_io.RunConfigError(
                f"reproduce: cell {cell.name} in {workdir / cell.name} was run with another config:\n  "
                + "\n  ".join(conflicts) + "\nUse another workdir, or --config.reproduce.fresh_on_change=True "
                "to run the changed cells afresh beside the old ones")
        if conflicts:
            new_dir = fresh_cell_dir(workdir / cell.name, cell.config)
            logging.warning("reproduce: cell %s changed config; running it afresh in %s", cell.name, new_dir)
            moved[str(workdir / cell.name)] = str(new_dir)
            cell = dataclasses.replace(cell, name=new_dir.name)
        placed.append(cell)
    return placed


def seed_epochs(cell: registry.Cell) -> int:
    """A cell's training work in seed-epochs (0 for cells that do not train)."""
    if not cell.role.trains:
        return 0
    return int(cell.config.train.epochs) * int(cell.config.num_seeds)


class ExperimentETA:
    """Elapsed time of a reproduction and a rough ETA of its remaining cells, from the seconds
    per seed-epoch of the cells trained so far (`done` is called only for cells that trained:
    one found finished takes no time). A rough guide: networks and widths differ between cells."""

    def __init__(self):
        self.progress = metrics_lib.Progress(total=0)
        self.seconds, self.units = 0.0, 0

    def done(self, cell: registry.Cell, seconds: float) -> None:
        if seed_epochs(cell):
            self.seconds, self.units = self.seconds + seconds, self.units + seed_epochs(cell)

    def line(self, remaining: list) -> str:
        left = sum(seed_epochs(c) for c in remaining)
        eta = self.seconds / self.units * left if self.units else None
        return (f"elapsed {metrics_lib.format_duration(self.progress.elapsed())}, "
                f"experiment eta ~{metrics_lib.format_duration(eta)}")


def teacher_note(cell_records) -> str:
    """The line a table needs when its teacher was imported: the published teachers were kept at
    their best test accuracy, and students that learn from one inherit that selection."""
    if not any(rec["role"] == Role.IMPORT for rec in cell_records):
        return ""
    return ("\nThe published teacher (`checkpoint_best.pth`) was kept by the reference code at its best test "
            "accuracy: its row, and the students that learn from it by KD, carry that test-set selection. "
            "`--config.reproduce.teacher=trained` trains the teacher here instead (final epoch).\n")


# Fields of the launched config that every cell takes: where the data lives and how big a test
# batch is (both safe to change: they are not part of a run's identity), and the dtype the
# networks compute in (part of it: a bfloat16 cell is another run than a float32 one).
INHERITED_FIELDS = ("data.data_dir", "data.eval_batch_size", "train.compute_dtype")


def inherit_fields(cells: list, config) -> list:
    """Gives every cell the launched config's `INHERITED_FIELDS` where it sets them."""
    defaults = config_lib.default_config()
    for field in INHERITED_FIELDS:
        section, name = field.split(".")
        value = config[section][name]
        if value != defaults[section][name]:
            for cell in cells:
                cell.config[section][name] = value
    return cells


def select_cells(cells: list, settings, experiment: str) -> list:
    """The cells `reproduce.cells` names (all when empty), in the experiment's order."""
    wanted = [n for n in settings.cells.split(",") if n]
    unknown = set(wanted) - {c.name for c in cells}
    if unknown:
        raise ReproductionError(f"config field 'reproduce.cells' names {sorted(unknown)}; cells of "
                                f"{experiment}: {[c.name for c in cells]}")
    return [c for c in cells if c.name in wanted] if wanted else cells


def run_cells(
    cells: list, workdir: pathlib.Path, settings, experiment: str, data_cache: Optional[dict] = None
) -> list[dict]:
    """Runs `cells` in order (teachers first) in `workdir/<cell>`, skipping finished runs, and
    returns their records; `settings` is the config's `reproduce` section (`split_seeds`, `fresh_on_change`)."""
    data_cache = {} if data_cache is None else data_cache
    for cell in cells:  # the cells' configs are built here, not launched: checked before any cell runs
        config_lib.validate(cell.config)
    cells = _place_cells(cells, workdir, bool(settings.split_seeds), bool(settings.fresh_on_change))
    logging.info("%s: %d cells in %s: %s", experiment, len(cells), workdir, "; ".join(
        f"{c.name} ({c.label}, " + (f"{c.config.distill.steps} steps)" if c.role is Role.DISTILL else
                                     f"{c.config.num_seeds} seed(s) x {c.config.train.epochs} epochs)")
        for c in cells))
    cell_records, eta = [], ExperimentETA()
    for i, cell in enumerate(cells, 1):
        logging.info("%s: cell %d/%d %s (%s); %s", experiment, i, len(cells), cell.name, cell.label,
                     eta.line(cells[i - 1:]))
        started = time.perf_counter()
        trains = cell.role.trains and any(
            _finished_results(run_dir, c) is None
            for run_dir, c in _run_dirs(cell, workdir / cell.name, bool(settings.split_seeds))
        )
        data = None
        if cell.role is not Role.DISTILL:  # a distill cell loads its own real data; later cells may read its output
            key = data_key(cell.config.data)
            if key not in data_cache:
                data_cache[key] = pipeline.load_training_data(cell.config.data)
            data = data_cache[key]
        cell_records.append(run_cell(cell, workdir / cell.name, data, split_seeds=bool(settings.split_seeds)))
        if trains:
            eta.done(cell, time.perf_counter() - started)
        if cell_records[-1].get("diverged"):
            logging.error("%s: cell %s diverged (%s)", experiment, cell.name, cell_records[-1]["diverged"])
    return cell_records


def scale_line(settings) -> str:
    """The table's scale line, from `settings`, the config's `reproduce` section."""
    return (f"Scale: epochs / {settings.epoch_divisor}, lr x {settings.lr_multiplier}, test-network width "
            f"{settings.width or 'paper'}, teacher width {settings.teacher_width or 'paper'}.")


def cell_summaries(cell_records) -> list[dict]:
    return [{k: rec[k] for k in ("cell", "label", "role", "network", "epochs", "seeds", "final_accuracy",
                                 "best_over_training")} for rec in cell_records]


def subset_suffix(settings, cells: list) -> str:
    """'' for a run of the whole experiment; '.teacher+full' for one of some cells
    (`reproduce.cells`), whose table and reproduction file must not pass for the whole
    experiment's (reproduction.json is what says an experiment has finished)."""
    return "." + "+".join(c.name for c in cells) if settings.cells else ""


def run_reproduction(config, workdir, *, data_cache: Optional[dict] = None) -> dict:
    """Runs the cells of `config.reproduce.experiment` in order (teachers first) and writes the table."""
    settings = config.reproduce
    if not settings.experiment:
        raise ReproductionError("config field 'reproduce.experiment' is empty; name one of "
                                "distill_jax.experiments.registry.experiment_names(), e.g. frepo_cifar10_10_resnet18")
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cells = registry.get_experiment(
        settings.experiment,
        workdir,
        registry.Scale.from_config(config),
        split_seeds=bool(settings.split_seeds),
        num_seeds=config.num_seeds,
        seed=config.seed,
        teacher=settings.teacher,
    )
    cells = select_cells(inherit_fields(cells, config), settings, settings.experiment)
    workdir_io.write_json(workdir / PLAN_FILE, {"experiment": settings.experiment, "config": config.to_dict(),
                                            "cells": [c.name for c in cells], "command": results_record.command_line()})
    cell_records = run_cells(cells, workdir, settings, f"reproduce {settings.experiment}", data_cache)
    trained = [rec for rec in cell_records if rec["role"] != Role.DISTILL]
    table = tables.experiment_table(trained, show_best=bool(settings.show_best)) + teacher_note(trained)
    sets = "".join(describe_distill_record(rec) + "\n\n" for rec in cell_records if rec["role"] == Role.DISTILL)
    heading = (f"### {settings.experiment}\n\n{sets}Final-epoch test accuracy, mean ± std (ddof=1) over seeds. "
               f"{scale_line(settings)}\n\n")
    suffix = subset_suffix(settings, cells)
    if any(rec.get("history") or rec.get("final_accuracy") for rec in trained):  # not for a distill-only run
        plots.plot_experiment(trained, workdir / f"accuracy_by_cell{suffix}.png", title=settings.experiment)
    workdir_io.write_text(workdir / f"table{suffix}.md", heading + table)
    summary = {"experiment": settings.experiment, "config": config.to_dict(), "cells": cell_summaries(cell_records),
               "software": records.software_versions(), "device": records.device_description()}
    workdir_io.write_json(workdir / f"reproduction{suffix}.json", summary)
    if workdir_io.is_writer():  # the record reads back the files only process 0 wrote
        results_record.write_record(workdir / f"results_record{suffix}.json",
                                    results_record.from_workdir(workdir, summary_file=f"reproduction{suffix}.json"))
    return {**summary, "table": table, "summary": heading + table}
