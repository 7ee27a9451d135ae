"""Loading a frozen KD teacher (docs/method.md §2.5): the small training network of the distilled set.

Two sources: the workdir of a run of this project (its config.json names the network; the
first seed's weights are used) or a reference-code PyTorch `.pth` ConvNet.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, NamedTuple

import jax
import numpy as np

from distill_jax.errors import UserError
from distill_jax.formats.distilled import file_sha256
from distill_jax.training import checkpoint as ckpt_lib
from distill_jax.training import saved_runs, workdir_io


class TeacherError(UserError, RuntimeError):
    """The teacher named by train.kd.teacher_path cannot be used."""


HOW_TO_TRAIN = ("train one with `python launch/main.py --config <teacher config> --workdir <dir>` "
                "and set train.kd.teacher_path to that dir")


def _reached_epoch(path: pathlib.Path, record: dict) -> str:
    """The epoch a stopped run reached, from its checkpoint's record (or its results)."""
    if "epoch" in record:
        return str(record["epoch"])
    try:
        history = json.loads((path / workdir_io.RESULTS_FILE).read_text()).get("history") or []
        return str(history[-1]["epoch"]) if history else "unknown"
    except (OSError, ValueError, KeyError):
        return "unknown"


def check_finished(path: pathlib.Path, record: dict) -> None:
    """A KD teacher must have trained all its epochs: a run that stopped early (preempted, or
    `train.stop_after_epochs`) would silently hand its students a weaker teacher. A published
    network imported by `saved_runs.import_reference` counts as finished; `record` is the meta saved
    with the run's latest checkpoint."""
    if record.get("imported_from"):
        return
    try:
        results = json.loads((path / workdir_io.RESULTS_FILE).read_text())
        config = json.loads((path / workdir_io.CONFIG_FILE).read_text())
    except (OSError, ValueError):
        results, config = {}, {}
    if results.get("finished") and results.get("config") == config:
        return
    planned = (config.get("train") or {}).get("epochs", "?")
    raise TeacherError(
        f"teacher {path} is not finished: it reached epoch {_reached_epoch(path, record)} of {planned}. "
        f"Finish it by rerunning the command that started it with --workdir {path} (its config is "
        f"{path / workdir_io.CONFIG_FILE}), or set train.kd.allow_unfinished_teacher=True to use it as it is")


class Teacher(NamedTuple):
    module: Any
    variables: dict  # one network's params (and batch_stats), no seed axis
    # What a student records of it (`workdir_io.run_inputs`): {"step", "sha256"} of a run, {"sha256"} of a .pth.
    record: dict


def load(path: str | pathlib.Path, *, allow_unfinished: bool = False) -> Teacher:
    """The teacher in inference form and its record; a run of this project must have finished
    unless `allow_unfinished`, and its checkpoint must pass its digests."""
    path = pathlib.Path(path)
    if saved_runs.is_reference_file(path) and path.is_file():
        module, variables, _ = saved_runs.load_reference(path)
        return Teacher(module, variables, {"sha256": file_sha256(path)})
    if not (path / workdir_io.MODEL_FILE).is_file():
        raise TeacherError(f"teacher {path}: no {workdir_io.MODEL_FILE} (not a run of this project, nor a .pth file); "
                           + HOW_TO_TRAIN)
    try:
        saved = saved_runs.load_run(path)
    except saved_runs.RunReadError as err:
        damaged = isinstance(err.__cause__, ckpt_lib.CheckpointError)
        raise TeacherError(f"teacher {path}: {err}" + ("" if damaged else "; " + HOW_TO_TRAIN)) from err
    if not allow_unfinished:
        check_finished(path, saved.meta)
    first_seed = lambda x: np.asarray(x)[0]  # noqa: E731
    variables = {"params": jax.tree.map(first_seed, saved.variables["params"])}
    if saved.variables.get("batch_stats"):
        variables["batch_stats"] = jax.tree.map(first_seed, saved.variables["batch_stats"])
    digests = saved.meta.get("digests") or ckpt_lib.array_digests(
        jax.device_get({"params": saved.variables["params"], "batch_stats": saved.variables["batch_stats"]}))
    return Teacher(saved.module, variables, {"step": int(saved.step), "sha256": ckpt_lib.weights_digest(digests)})


def load_teacher(path: str | pathlib.Path, *, allow_unfinished: bool = False):
    """Returns (module, variables) of the teacher in inference form (`load`)."""
    teacher = load(path, allow_unfinished=allow_unfinished)
    return teacher.module, teacher.variables
