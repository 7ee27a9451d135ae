"""Loading a frozen KD teacher (docs/method.md §2.5): the small training network of the distilled set.

Two sources: the workdir of a run of this project (its config.json names the network; the
first seed's weights are used) or a reference-code PyTorch `.pth` ConvNet.
"""
from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp

from distill_jax import models
from distill_jax.errors import UserError


class TeacherError(UserError, RuntimeError):
    """The teacher named by train.kd.teacher_path cannot be used."""


HOW_TO_TRAIN = ("train one with `python launch/main.py --config <teacher config> --workdir <dir>` "
                "and set train.kd.teacher_path to that dir")


def _checkpoint_record(manager, step: int) -> dict:
    try:
        return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"] or {}
    except Exception:  # noqa: BLE001 - the state restore reports unreadable checkpoints
        return {}


def _reached_epoch(path: pathlib.Path, record: dict) -> str:
    """The epoch a stopped run reached, from its checkpoint's record (or its results)."""
    if "epoch" in record:
        return str(record["epoch"])
    try:
        history = json.loads((path / "results.json").read_text()).get("history") or []
        return str(history[-1]["epoch"]) if history else "unknown"
    except (OSError, ValueError, KeyError):
        return "unknown"


def check_finished(path: pathlib.Path, manager, step: int) -> None:
    """A KD teacher must have trained all its epochs: a run that stopped early (preempted, or
    `train.stop_after_epochs`) would silently hand its students a weaker teacher. A published
    network imported by `evaluation.import_teacher` counts as finished."""
    record = _checkpoint_record(manager, step)
    if record.get("imported_from"):
        return
    try:
        results = json.loads((path / "results.json").read_text())
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        results, config = {}, {}
    if results.get("finished") and results.get("config") == config:
        return
    planned = (config.get("train") or {}).get("epochs", "?")
    raise TeacherError(
        f"teacher {path} is not finished: it reached epoch {_reached_epoch(path, record)} of {planned}. "
        f"Finish it by rerunning the command that started it with --workdir {path} (its config is "
        f"{path / 'config.json'}), or set train.kd.allow_unfinished_teacher=True to use it as it is")


def load_teacher(path: str | pathlib.Path, *, allow_unfinished: bool = False):
    """Returns (module, variables) of the teacher in inference form; a run of this project must
    have finished unless `allow_unfinished`."""
    path = pathlib.Path(path)
    if path.suffix in (".pth", ".pt") and path.is_file():
        from distill_jax.models import torch_import

        variables, meta = torch_import.load_reference_convnet(path)
        module = models.build_model(meta["model_name"], num_classes=meta["num_classes"], **meta["model_options"])
        return module, variables
    model_file = path / "model.json"
    if not model_file.is_file():
        raise TeacherError(f"teacher {path}: no model.json (not a run of this project, nor a .pth file); "
                           + HOW_TO_TRAIN)
    spec = json.loads(model_file.read_text())
    manager = ocp.CheckpointManager(path.resolve() / "checkpoints", item_names=("state", "meta"))
    step = manager.latest_step()
    if step is None:
        raise TeacherError(f"teacher {path}: no checkpoint under {path / 'checkpoints'}; " + HOW_TO_TRAIN)
    if not allow_unfinished:
        check_finished(path, manager, step)
    try:
        state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    except Exception as err:
        raise TeacherError(f"teacher {path}: checkpoint at step {step} cannot be read: {err}") from err
    first_seed = lambda x: np.asarray(x)[0]  # noqa: E731
    variables = {"params": jax.tree.map(first_seed, state["params"])}
    if state.get("batch_stats"):
        variables["batch_stats"] = jax.tree.map(first_seed, state["batch_stats"])
    module = models.build_model(spec["name"], num_classes=spec["num_classes"], **spec["options"])
    return module, variables
