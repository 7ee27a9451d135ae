"""The results record: one small JSON file per experiment and scale, behind every published number.

A record holds what a table needs and nothing more (no checkpoints, no curves): per cell its
network, width, norm, compute dtype, epochs, optimiser and where its KD teacher came from, and
per seed the final-epoch test accuracy and the last logged step's training accuracy; for the whole
experiment the config digest, the software versions, the hardware, the wall time, the date
and the command that produced it. `docs/results.md` and the README's result table are
rendered from the records in `results/` (`distill_jax.report.render_docs`).

This module owns the format: `SCHEMA_VERSION`, `validate` (every field checked, unknown
fields refused), `read_record` (raises `RecordError`, an `InputFileError`, naming the file and
the field), `write_record` (validated, then written through a temporary name and a rename,
mode 0644) and `from_workdir` (a record from a finished workdir of mode `reproduce`, mode
`transfer`, or a single training run).

Field meanings:
- `source`: `{"kind": "run"}` for a record exported from a workdir; `{"kind": "transcribed",
  "from": ..., "reason": ...}` for one whose per-seed values were copied from a table printed
  when the workdir was not kept (its `config_digest` is null: the config is not known exactly).
- `config_digest`: sha256 of the launched config's identity (`workdir_io.identity`: the whole
  resolved config except the fields a rerun may change, such as where the data lives).
- `compute_dtype` (per cell): the dtype its networks' convolutions and matmuls computed in
  (`train.compute_dtype`, one of `models.COMPUTE_DTYPES`); records written before the field
  existed lack it, and their cells trained in float32 (`compute_dtype(cell)` reads it so); cells
  that train nothing here (imports, scores, distillations) lack it too: they compute in float32.
- `wall_seconds` (per cell and in all): from each run's first output (`train_set.png`) to its
  `results.json`, summed over a cell's runs; pauses between resumes count. A distillation
  counts its steps times its seconds per step plus its compile time.
- `hardware.described`: "at run time" when the runs recorded their machine, "at record time"
  when the workdir recorded none and the machine that wrote the record is described instead.
"""
from __future__ import annotations

import datetime
import enum
import hashlib
import json
import math
import os
import pathlib
import re
import shlex
import sys
from typing import Optional, Sequence

from distill_jax import atomic, models
from distill_jax.errors import InputFileError
from distill_jax.report import records
from distill_jax.training import workdir_io

SCHEMA_VERSION = 1
AUTO_FILE = "results_record.json"  # what `reproduce` and `transfer` write into their workdir

KINDS = ("reproduce", "transfer", "train", "collection")  # collection: cells of several separate runs
SOURCE_KINDS = ("run", "transcribed")
TRAINED_HERE = "trained here"
PUBLISHED = "published, selected on the test set"
ORIGINS = (TRAINED_HERE, PUBLISHED)
DESCRIBED = ("at run time", "at record time", "as stated with the table")

DATASET_LABELS = {"cifar10_jpeg": "CIFAR-10 (JPEG)", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100",
                  "fashion_mnist": "Fashion-MNIST", "mnist": "MNIST", "tiny_imagenet": "Tiny ImageNet"}

_TOP_FIELDS = {"schema_version", "kind", "experiment", "dataset", "scale", "source", "config_digest", "command",
               "software", "hardware", "wall_seconds", "date", "cells", "notes"}
_OPTIONAL_TOP = {"notes"}
_CELL_FIELDS = {"cell", "label", "role", "network", "width", "norm", "epochs", "optimizer", "origin", "kd_teacher",
                "seeds", "final_test_accuracy", "last_step_train_accuracy", "wall_seconds"}
_OPTIONAL_CELL = {"dataset", "diverged", "extra", "software", "hardware", "compute_dtype"}
_SCALE_FIELDS = {"epoch_divisor", "lr_multiplier", "width", "teacher_width", "evals", "split_seeds"}


class RecordError(InputFileError):
    """A results record that cannot be used: the message names the file and the field."""


class Role(str, enum.Enum):
    """What a cell is: a cell of an experiment (`experiments.registry.Cell.role`) and a record's
    cell. The value is what records store (`"role": "teacher"`), so a role is written to JSON
    and compared with a record's field as its plain string."""
    TEACHER = "teacher"  # trained here; the students distil from it
    STUDENT = "student"  # a test network trained here, with some of the method's parts
    TRAIN = "train"  # the record of a single training run, outside any experiment
    IMPORT = "import"  # a published .pth, imported as a run of this package and scored
    SCORE = "score"  # a finished run of this package, scored where it is
    DISTILL = "distill"  # a distilled set made here

    def __str__(self) -> str:
        return self.value

    @property
    def trains(self) -> bool:
        """Trained here: it has epochs, an optimiser and seeds trained over epochs."""
        return self in (Role.TEACHER, Role.STUDENT, Role.TRAIN)

    @property
    def scored_only(self) -> bool:
        """A network scored once, not trained here: no epochs, no curve."""
        return self in (Role.IMPORT, Role.SCORE)

    @property
    def is_teacher(self) -> bool:
        """The network the students distil from, however it came: trained here, imported or scored."""
        return self in (Role.TEACHER, Role.IMPORT, Role.SCORE)


# A single run's record: a run of mode teacher or student keeps that role, any other is 'train'.
MODE_ROLES = {"teacher": Role.TEACHER, "student": Role.STUDENT}


def parse_role(value, where, field: str = "role") -> Role:
    """A record's `role` field as a `Role`; a `RecordError` naming `where` and `field` when it is none."""
    try:
        return Role(value)
    except ValueError:
        raise _fail(where, field, f"one of {tuple(r.value for r in Role)}", value) from None


def compute_dtype(cell: dict) -> str:
    """The dtype a record cell's networks computed in: its `compute_dtype`, float32 when absent
    (records older than the field)."""
    return cell.get("compute_dtype", "float32")


def dataset_label(name: str) -> str:
    """'CIFAR-10 (JPEG)' for cifar10_jpeg: how tables name a dataset variant."""
    return DATASET_LABELS.get(name, name)


def config_digest(config) -> str:
    """sha256 (hex) of a config's identity (`workdir_io.identity`), from a ConfigDict or its dict."""
    return hashlib.sha256(json.dumps(workdir_io.identity(config), sort_keys=True).encode()).hexdigest()


def command_line(argv: Optional[Sequence[str]] = None, cwd=None) -> str:
    """The command that started this process, as a user would type it from `cwd`: `python
    launch/main.py ...` or `distill-jax ...`, absolute paths under `cwd` made relative."""
    argv = list(sys.argv if argv is None else argv)
    cwd = pathlib.Path(cwd or os.getcwd()).resolve()

    def relative(text: str) -> str:
        flag, eq, value = text.partition("=") if text.startswith("-") else ("", "", text)
        path = pathlib.Path(value)
        if path.is_absolute():
            try:
                value = str(path.resolve().relative_to(cwd))
            except ValueError:
                pass
        return f"{flag}{eq}{value}"

    prog = pathlib.Path(argv[0]) if argv else pathlib.Path("python")
    if prog.name in ("distill-jax", "distill_jax"):
        head = ["distill-jax"]
    elif prog.name == "__main__.py" and prog.parent.name == "distill_jax":
        head = ["python", "-m", "distill_jax"]
    else:
        head = ["python", relative(str(prog))]
    return " ".join(shlex.quote(part) for part in head + [relative(a) for a in argv[1:]])


# ----------------------------------------------------------------------------- validation

def _fail(where: str, field: str, expected: str, value=None) -> RecordError:
    shown = "" if value is None else f" (got {json.dumps(value)[:80]})"
    return RecordError(f"{where}: field '{field}': expected {expected}{shown}")


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_accuracies(values, where: str, field: str, n: Optional[int]) -> None:
    if not isinstance(values, list) or not all(_is_number(v) and 0 <= v <= 100 for v in values):
        raise _fail(where, field, "a list of accuracies in percent (0 to 100)", values)
    if n is not None and len(values) != n:
        raise _fail(where, field, f"{n} value(s), one per seed", values)


def _check_optional_str(value, where: str, field: str) -> None:
    if value is not None and not (isinstance(value, str) and value):
        raise _fail(where, field, "a non-empty string or null", value)


def _check_fields(obj, where: str, prefix: str, required: set, optional: set) -> None:
    if not isinstance(obj, dict):
        raise _fail(where, prefix or "(record)", "a JSON object", obj)
    missing = sorted(required - set(obj))
    if missing:
        raise _fail(where, f"{prefix}{missing[0]}", "to be present")
    unknown = sorted(set(obj) - required - optional)
    if unknown:
        raise _fail(
            where, f"{prefix}{unknown[0]}", f"no such field (allowed: {', '.join(sorted(required | optional))})"
        )


def _check_hardware(hw, where: str, field: str, transcribed: bool) -> None:
    if not isinstance(hw, dict) or hw.get("described") not in DESCRIBED:
        raise _fail(
            where, f"{field}.described", f"one of {DESCRIBED}", hw.get("described") if isinstance(hw, dict) else hw
        )
    if hw["described"] == "as stated with the table" and not transcribed:
        raise _fail(where, f"{field}.backend", "the machine the run recorded (records.hardware_description()); "
                    "only a transcribed record states its hardware as text")
    if hw["described"] == "as stated with the table":
        if not (isinstance(hw.get("stated"), str) and hw["stated"]):
            raise _fail(where, f"{field}.stated", "the hardware as the table stated it (a non-empty string)")
    elif not (isinstance(hw.get("backend"), str) and isinstance(hw.get("cpu"), dict)):
        raise _fail(where, f"{field}.backend", "the backend and the cpu (records.hardware_description())")


def _check_software(sw, where: str, field: str, transcribed: bool) -> None:
    if not isinstance(sw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in sw.items()):
        raise _fail(where, field, "an object of package name -> version string", sw)
    if not sw and not transcribed:
        raise _fail(where, field, "the versions the run recorded (empty only in a transcribed record)", sw)


def _check_cell(cell, i: int, where: str, transcribed: bool) -> None:
    p = f"cells[{i}]."
    _check_fields(cell, where, p, _CELL_FIELDS, _OPTIONAL_CELL)
    for key in ("cell", "label", "network", "norm"):
        if not (isinstance(cell[key], str) and cell[key]):
            raise _fail(where, p + key, "a non-empty string", cell[key])
    role = parse_role(cell["role"], where, p + "role")
    for key in ("width", "epochs"):
        if cell[key] is not None and not (
            isinstance(cell[key], int) and not isinstance(cell[key], bool) and cell[key] > 0
        ):
            raise _fail(where, p + key, "a positive integer or null", cell[key])
    _check_optional_str(cell["optimizer"], where, p + "optimizer")
    if cell["origin"] not in ORIGINS:
        raise _fail(where, p + "origin", f"one of {ORIGINS}", cell["origin"])
    if cell["kd_teacher"] is not None and cell["kd_teacher"] not in ORIGINS:
        raise _fail(where, p + "kd_teacher", f"null or one of {ORIGINS}", cell["kd_teacher"])
    seeds = cell["seeds"]
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise _fail(where, p + "seeds", "a list of distinct integer seeds", seeds)
    final = cell["final_test_accuracy"]
    if final is None:
        if role is not Role.DISTILL and not cell.get("diverged"):
            raise _fail(where, p + "final_test_accuracy", "one accuracy per seed (null only for a distillation "
                        "or a diverged cell)")
    else:
        if not seeds:
            raise _fail(where, p + "seeds", "at least one seed for a cell with accuracies", seeds)
        _check_accuracies(final, where, p + "final_test_accuracy", len(seeds))
    train = cell["last_step_train_accuracy"]
    if train is not None:
        if not isinstance(train, dict) or set(train) != {"per_seed", "mean"}:
            raise _fail(where, p + "last_step_train_accuracy", "null or {\"per_seed\": [...], \"mean\": number}", train)
        if train["per_seed"] is None:
            if not transcribed:
                raise _fail(where, p + "last_step_train_accuracy.per_seed", "one value per seed (only a transcribed "
                            "record may hold the mean alone)")
        else:
            _check_accuracies(train["per_seed"], where, p + "last_step_train_accuracy.per_seed", len(seeds))
        if not (_is_number(train["mean"]) and 0 <= train["mean"] <= 100):
            raise _fail(where, p + "last_step_train_accuracy.mean", "an accuracy in percent", train["mean"])
    if cell["wall_seconds"] is not None and not (_is_number(cell["wall_seconds"]) and cell["wall_seconds"] >= 0):
        raise _fail(where, p + "wall_seconds", "a number of seconds >= 0 or null", cell["wall_seconds"])
    if "compute_dtype" in cell and cell["compute_dtype"] not in models.COMPUTE_DTYPES:
        raise _fail(where, p + "compute_dtype", f"one of {models.COMPUTE_DTYPES}", cell["compute_dtype"])
    if "dataset" in cell and not (isinstance(cell["dataset"], str) and cell["dataset"]):
        raise _fail(where, p + "dataset", "a dataset name", cell["dataset"])
    if "extra" in cell and not isinstance(cell["extra"], dict):
        raise _fail(where, p + "extra", "a JSON object", cell["extra"])
    if "software" in cell:
        _check_software(cell["software"], where, p + "software", transcribed)
    if "hardware" in cell:
        _check_hardware(cell["hardware"], where, p + "hardware", transcribed)


def validate(record, where: str = "results record") -> dict:
    """Checks every field of a record (see the module docstring); returns it, or raises
    `RecordError` naming `where` and the first field that is wrong."""
    _check_fields(record, where, "", _TOP_FIELDS - _OPTIONAL_TOP, _OPTIONAL_TOP)
    if record["schema_version"] != SCHEMA_VERSION:
        raise _fail(
            where, "schema_version", f"{SCHEMA_VERSION} (this package's record format)", record["schema_version"]
        )
    if record["kind"] not in KINDS:
        raise _fail(where, "kind", f"one of {KINDS}", record["kind"])
    for key in ("experiment", "dataset", "command"):
        if not (isinstance(record[key], str) and record[key].strip()):
            raise _fail(where, key, "a non-empty string", record[key])
    source = record["source"]
    if not isinstance(source, dict) or source.get("kind") not in SOURCE_KINDS:
        raise _fail(
            where, "source.kind", f"one of {SOURCE_KINDS}", source.get("kind") if isinstance(source, dict) else source
        )
    transcribed = source["kind"] == "transcribed"
    if transcribed:
        _check_fields(source, where, "source.", {"kind", "from", "reason"}, set())
        for key in ("from", "reason"):
            if not (isinstance(source[key], str) and source[key]):
                raise _fail(where, f"source.{key}", "a non-empty string", source[key])
    elif set(source) != {"kind"}:
        raise _fail(where, "source", "{\"kind\": \"run\"} alone for a record exported from a workdir", source)
    digest = record["config_digest"]
    if transcribed:
        if digest is not None:
            raise _fail(
                where, "config_digest", "null in a transcribed record (its config is not known exactly)", digest
            )
    elif not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
        raise _fail(where, "config_digest", "the sha256 (64 hex digits) of the run's config", digest)
    scale = record["scale"]
    if scale is not None:
        _check_fields(scale, where, "scale.", _SCALE_FIELDS, set())
        for key in ("epoch_divisor", "width", "teacher_width", "evals"):
            if not (isinstance(scale[key], int) and not isinstance(scale[key], bool) and scale[key] >= 0):
                raise _fail(where, f"scale.{key}", "an integer >= 0", scale[key])
        if scale["epoch_divisor"] < 1:
            raise _fail(where, "scale.epoch_divisor", "an integer >= 1", scale["epoch_divisor"])
        if not (_is_number(scale["lr_multiplier"]) and scale["lr_multiplier"] > 0):
            raise _fail(where, "scale.lr_multiplier", "a positive number", scale["lr_multiplier"])
        if not isinstance(scale["split_seeds"], bool):
            raise _fail(where, "scale.split_seeds", "true or false", scale["split_seeds"])
    _check_software(record["software"], where, "software", transcribed)
    _check_hardware(record["hardware"], where, "hardware", transcribed)
    if record["wall_seconds"] is not None and not (_is_number(record["wall_seconds"]) and record["wall_seconds"] >= 0):
        raise _fail(where, "wall_seconds", "a number of seconds >= 0 or null", record["wall_seconds"])
    date = record["date"]
    try:
        datetime.date.fromisoformat(date)
    except (TypeError, ValueError):
        raise _fail(where, "date", "an ISO date, YYYY-MM-DD", date) from None
    if not (isinstance(record["cells"], list) and record["cells"]):
        raise _fail(where, "cells", "a non-empty list of cells", record["cells"])
    names = set()
    for i, cell in enumerate(record["cells"]):
        _check_cell(cell, i, where, transcribed)
        if cell["cell"] in names:
            raise _fail(where, f"cells[{i}].cell", "a name no other cell of the record has", cell["cell"])
        names.add(cell["cell"])
    notes = record.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) and n for n in notes):
        raise _fail(where, "notes", "a list of non-empty strings", notes)
    return record


def read_record(path) -> dict:
    """A validated record from `path`; `RecordError` (naming the file and field) for anything else."""
    return validate(atomic.read_json_object(path, RecordError), str(path))


def write_record(path, record: dict) -> pathlib.Path:
    """Validates `record` and writes it to `path` (folders created; temporary name + rename, mode 0644)."""
    path = pathlib.Path(path)
    validate(record, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    workdir_io.write_json(path, record)
    return path


# ----------------------------------------------------------------------------- from a workdir

def _get(obj: dict, dotted: str, path: pathlib.Path, default=KeyError):
    value = obj
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            if default is KeyError:
                raise RecordError(f"{path}: field '{dotted}' is missing")
            return default
        value = value[part]
    return value


def last_step_train_accuracy(runs: Sequence[pathlib.Path]) -> Optional[dict]:
    """A record's `last_step_train_accuracy`: per seed, the training accuracy (%) of the last
    logged step (`records.last_train_accuracy`), over `runs` in order; None unless every run
    logged a value for every seed (a mean over some of the seeds is not the cell's)."""
    train = records.last_train_accuracy(runs)
    if train is None or not train["every_seed"]:
        return None
    return {"per_seed": train["per_seed"], "mean": train["mean"]}


def _span(run: pathlib.Path) -> Optional[float]:
    start, end = run / workdir_io.TRAIN_SET_GRID, run / workdir_io.RESULTS_FILE
    if not (start.is_file() and end.is_file()):
        return None
    return max(0.0, end.stat().st_mtime - start.stat().st_mtime)


def _norm(model: dict) -> str:
    name = model["name"]
    if model.get("norm"):
        return model["norm"]
    options = models.model_options(name)
    return models.default_option(name, "norm") if "norm" in options else "layer"


def _width(model: dict) -> Optional[int]:
    name = model["name"]
    if model.get("width"):
        return int(model["width"])
    if "width" in models.model_options(name):
        value = models.default_option(name, "width")
        return int(value) if isinstance(value, int) else None
    return None


def _teacher_origin(teacher_path: str, published_cells: set) -> str:
    path = pathlib.Path(teacher_path)
    if path.suffix == ".pth" or published_cells.intersection(path.parts[-2:]):
        return PUBLISHED
    return TRAINED_HERE


def _cell(rec: dict, cell_dir: pathlib.Path, published_cells: set, where: pathlib.Path) -> dict:
    """One record cell from a cell's record.json (as `reproduce.run_cell` writes it) and its runs."""
    config = _get(rec, "config", where)
    model = _get(config, "model", where)
    role = parse_role(rec.get("role") or Role.TRAIN, where)
    if role is Role.DISTILL and isinstance(rec.get("model"), dict):  # the distiller's network, as the run saved it
        model = {**rec["model"].get("options", {}), "name": rec["model"]["name"]}
    trains = role.trains
    kd = config.get("train", {}).get("kd", {})
    cell = {"cell": str(rec.get("cell") or cell_dir.name), "label": str(rec.get("label") or cell_dir.name),
            "role": role.value, "network": model["name"], "width": _width(model), "norm": _norm(model),
            "epochs": int(config["train"]["epochs"]) if trains else None,
            "optimizer": config["train"]["optimizer"] if trains else None,
            "origin": PUBLISHED if role is Role.IMPORT else TRAINED_HERE,
            "kd_teacher": (_teacher_origin(kd.get("teacher_path", ""), published_cells)
                           if trains and kd.get("enabled") else None),
            "seeds": [int(s) for s in rec.get("seeds") or []], "final_test_accuracy": None,
            "last_step_train_accuracy": None, "wall_seconds": None,
            "dataset": _get(config, "data.dataset", where)}
    if trains:  # evaluations and distillations compute in float32
        cell["compute_dtype"] = config["train"].get("compute_dtype", "float32")
    if role is Role.DISTILL:
        cell["extra"] = {k: rec.get(k) for k in ("method", "ipc", "steps", "seconds_per_step", "compile_seconds",
                                                  "loss_first", "loss_last", "preprocessing")}
        if rec.get("seconds_per_step") and rec.get("steps"):
            cell["wall_seconds"] = float(rec["seconds_per_step"]) * int(rec["steps"]) + float(
                rec.get("compile_seconds") or 0
            )
        return cell
    final = rec.get("final_accuracy")
    if rec.get("diverged"):
        cell["diverged"] = rec["diverged"]
    elif not final:
        raise RecordError(f"{where}: field 'final_accuracy' is empty: the cell has not finished; rerun the "
                          "experiment's command to finish it")
    else:
        cell["final_test_accuracy"] = [float(a) for a in final["per_seed"]]
    if trains:
        runs = records.run_dirs(cell_dir)
        cell["last_step_train_accuracy"] = last_step_train_accuracy(runs)
        spans = [_span(run) for run in runs]
        cell["wall_seconds"] = None if None in spans else float(sum(spans))
    return cell


def _machine(cell_records: list, key: str, here) -> tuple:
    """The software (or hardware) of the record: the value most cells recorded at run time, else
    `here()` (this machine, described 'at record time'); cells that recorded another value keep theirs."""
    seen = [r.get(key) for r in cell_records if r.get(key)]
    if not seen:
        value = here()
        return (dict(value, described="at record time") if key == "hardware" else value), {}
    texts = [json.dumps(v, sort_keys=True) for v in seen]
    common = max(set(texts), key=texts.count)
    value = json.loads(common)
    if key == "hardware":
        value["described"] = "at run time"
    others = {i: (dict(r[key], described="at run time") if key == "hardware" else r[key])
              for i, r in enumerate(cell_records) if r.get(key) and json.dumps(r[key], sort_keys=True) != common}
    return value, others


def _date(paths: Sequence[pathlib.Path]) -> str:
    times = [p.stat().st_mtime for p in paths if p.is_file()]
    when = datetime.datetime.fromtimestamp(max(times), datetime.timezone.utc) if times else \
        datetime.datetime.now(datetime.timezone.utc)
    return when.date().isoformat()


def _scale(config: dict) -> dict:
    r = config.get("reproduce", {})
    return {"epoch_divisor": int(r.get("epoch_divisor", 1)), "lr_multiplier": float(r.get("lr_multiplier", 1.0)),
            "width": int(r.get("width", 0)), "teacher_width": int(r.get("teacher_width", 0)),
            "evals": int(r.get("evals", 0)), "split_seeds": bool(r.get("split_seeds", False))}


def _assemble(kind: str, experiment: str, config: dict, cell_pairs: list, command: Optional[str],
              where: pathlib.Path, scale: Optional[dict]) -> dict:
    """The record from (record.json contents, cell dir) pairs."""
    if not command:
        raise RecordError(f"{where}: no command is stored with this workdir; give the command that produced it "
                          "(distill-jax record WORKDIR --out FILE --command '...')")
    published = {rec.get("cell") for rec, _ in cell_pairs if rec.get("role") == Role.IMPORT}
    cells = [_cell(rec, cell_dir, published, cell_dir / "record.json") for rec, cell_dir in cell_pairs]
    recs = [rec for rec, _ in cell_pairs]
    software, other_sw = _machine(recs, "software", records.software_versions)
    hardware, other_hw = _machine(recs, "hardware", records.hardware_description)
    for i, value in other_sw.items():
        cells[i]["software"] = value
    for i, value in other_hw.items():
        cells[i]["hardware"] = value
    datasets = [c.pop("dataset") for c in cells]
    dataset = datasets[0]
    for cell, name in zip(cells, datasets, strict=True):
        if name != dataset:
            cell["dataset"] = name
    walls = [c["wall_seconds"] for c in cells if c["wall_seconds"] is not None]
    results = [run / workdir_io.RESULTS_FILE for _, cell_dir in cell_pairs for run in records.run_dirs(cell_dir)]
    record = {"schema_version": SCHEMA_VERSION, "kind": kind, "experiment": experiment, "dataset": dataset,
              "scale": scale, "source": {"kind": "run"}, "config_digest": config_digest(config),
              "command": command, "software": software, "hardware": hardware,
              "wall_seconds": float(sum(walls)) if walls else None, "date": _date(results), "cells": cells}
    return validate(workdir_io.finite(record), str(where))


def _experiment_record(root: pathlib.Path, summary_file: Optional[str], command: Optional[str]) -> dict:
    """A `reproduce` or `transfer` workdir: its summary (reproduction[.<cells>].json or transfer.json)
    names the cells; each cell's record.json and runs give the rest."""
    if (root / "transfer.json").is_file() and summary_file is None:
        summary_path, kind = root / "transfer.json", "transfer"
    else:
        kind = "reproduce"
        if summary_file is None:
            found = sorted(root.glob("reproduction*.json"))
            if (root / "reproduction.json").is_file():
                found = [root / "reproduction.json"]
            if len(found) != 1:
                raise RecordError(f"{root}: " + ("no reproduction.json: the experiment has not finished every cell "
                                                 "(rerun its command)" if not found else
                                                 f"several runs of some cells ({', '.join(p.name for p in found)}) "
                                                 "and no reproduction.json: finish the experiment first"))
            summary_path = found[0]
        else:
            summary_path = root / summary_file
            kind = "transfer" if summary_file == "transfer.json" else "reproduce"
    summary = atomic.read_json_object(summary_path, RecordError, "the experiment's summary")
    config = _get(summary, "config", summary_path)
    plan = atomic.read_json_object(root / "plan.json", RecordError) if (root / "plan.json").is_file() else {}
    command = command or summary.get("command") or plan.get("command")
    names = [_get(c, "cell", summary_path) for c in _get(summary, "cells", summary_path)]
    pairs = []
    for name in names:
        cell_dir = root / name
        pairs.append((atomic.read_json_object(cell_dir / "record.json", RecordError,
                                             f"the record of cell {name} (has it finished?)"), cell_dir))
    if kind == "transfer":
        t = config.get("transfer", {})
        experiment = f"transfer {t.get('name') or pathlib.Path(t.get('set_path', 'set')).name}"
    else:
        experiment = _get(summary, "experiment", summary_path)
    return _assemble(kind, experiment, config, pairs, command, summary_path, _scale(config))


def _single_run_record(root: pathlib.Path, command: Optional[str]) -> dict:
    results_path = root / workdir_io.RESULTS_FILE
    results = atomic.read_json_object(results_path, RecordError, "a training run's results")
    config = _get(results, "config", results_path)
    if not results.get("finished") and not results.get("diverged"):
        raise RecordError(f"{results_path}: field 'finished' is false: the run has not finished; rerun its command")
    rec = {"cell": "run", "label": f"{config['model']['name']} ({config.get('mode', 'train')})",
           "role": MODE_ROLES.get(config.get("mode"), Role.TRAIN).value,
           "config": config, "seeds": results.get("seeds"), "final_accuracy": results.get("final_accuracy"),
           "diverged": results.get("diverged"), "software": results.get("software")}
    return _assemble("train", "train", config, [(rec, root)], command or results.get("command"), results_path, None)


def from_workdir(workdir, *, command: Optional[str] = None, summary_file: Optional[str] = None) -> dict:
    """The record of a finished workdir: a `reproduce` experiment (its reproduction.json, or the one
    `reproduction.<cells>.json` of a run of some cells), a `transfer` pool (transfer.json), or a single
    training run (results.json). `command` overrides (or supplies) the command stored with it."""
    root = pathlib.Path(workdir)
    if not root.is_dir():
        raise RecordError(f"{root}: not a folder; give the workdir of a finished reproduce, transfer or training run")
    if summary_file or (root / "transfer.json").is_file() or any(root.glob("reproduction*.json")) \
            or (root / "plan.json").is_file():
        return _experiment_record(root, summary_file, command)
    if (root / workdir_io.RESULTS_FILE).is_file():
        return _single_run_record(root, command)
    raise RecordError(f"{root}: holds no reproduction.json, transfer.json or results.json: not a finished workdir "
                      "of this package")
