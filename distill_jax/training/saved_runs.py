"""Reading a run of this project back, and turning a reference-code `.pth` into one.

A run's workdir holds what it trained (model.json: network name, classes, options), how
(config.json) and its Orbax checkpoints, each with a leading seed axis. Evaluation and KD
teachers read runs through here, so there is one way to rebuild a saved network.
"""
from __future__ import annotations

import pathlib
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

from distill_jax import atomic, models
from distill_jax.errors import UserError
from distill_jax.formats import torch_import
from distill_jax.training import checkpoint as ckpt_lib
from distill_jax.training import workdir_io

REFERENCE_SUFFIXES = (".pth", ".pt")


class RunReadError(UserError, ValueError):
    """A workdir is not a readable run of this project (or a `.pth` file is missing)."""


def is_reference_file(path) -> bool:
    return pathlib.Path(path).suffix in REFERENCE_SUFFIXES


def _read_json(path: pathlib.Path, what: str) -> dict:
    if not path.is_file():
        raise RunReadError(f"{path.parent} has no {path.name} ({what}); give the workdir of a run of this "
                           "project or a reference-code .pth file")
    return atomic.read_json_object(path, RunReadError, what)


def build_saved_model(spec: dict):
    """The network a model.json (or a converted .pth's meta) describes."""
    return models.build_model(spec["name"], num_classes=spec["num_classes"], **spec["options"])


def latest_state(path) -> tuple[int, dict, dict]:
    """(step, state, meta) of the newest checkpoint of the run in `path`, its arrays checked
    against the digests saved with them (`Checkpointer.read_latest`); nothing is written there."""
    path = pathlib.Path(path)
    if not (path / workdir_io.CHECKPOINT_DIR).is_dir():
        raise RunReadError(f"{path}: no checkpoint under {path / workdir_io.CHECKPOINT_DIR}")
    checkpointer = ckpt_lib.Checkpointer(path / workdir_io.CHECKPOINT_DIR, read_only=True)
    try:  # closed on every path: a manager holds threads and file handles
        step, state, meta = checkpointer.read_latest()
    except ckpt_lib.CheckpointError as err:
        raise RunReadError(str(err)) from err
    finally:
        checkpointer.close()
    return step, state, meta


class SavedRun(NamedTuple):
    module: Any
    variables: dict  # params and batch_stats, each leaf with a leading seed axis
    config: ml_collections.ConfigDict  # the config it ran with
    step: int  # of its latest checkpoint
    meta: dict  # saved with that checkpoint (epoch, identity, 'imported_from' for an import)


def load_run(path) -> SavedRun:
    """A run's network, config and latest checkpoint."""
    path = pathlib.Path(path)
    spec = _read_json(path / workdir_io.MODEL_FILE, "the network it trained")
    recorded = ml_collections.ConfigDict(_read_json(path / workdir_io.CONFIG_FILE, "the config it ran with"))
    step, state, meta = latest_state(path)
    variables = {"params": state["params"], "batch_stats": state.get("batch_stats") or {}}
    return SavedRun(build_saved_model(spec), variables, recorded, step, meta)


def load_reference(pth_path):
    """(module, variables without a seed axis, meta) of a reference-code `.pth` ConvNet."""
    pth_path = pathlib.Path(pth_path)
    if not pth_path.is_file():
        raise RunReadError(f"{pth_path} does not exist")
    variables, meta = torch_import.load_reference_convnet(pth_path)
    spec = {"name": meta.get("model_name", "convnet"), "num_classes": meta["num_classes"],
            "options": meta["model_options"]}
    return build_saved_model(spec), variables, {**meta, "spec": spec}


def with_seed_axis(variables: dict) -> dict:
    """One network's variables as a run holds them: a leading seed axis of 1."""
    return jax.tree.map(lambda x: np.asarray(x)[None], variables)


def import_reference(pth_path, workdir, config) -> pathlib.Path:
    """Saves a reference-code `.pth` ConvNet as a run of this project in `workdir` (model.json,
    config.json and an Orbax checkpoint holding one seed), so that KD (`train.kd.teacher_path`)
    and mode 'evaluate' read it like a network trained here; `config.data` records its pixel space.
    An existing import (of a resumed reproduction) is kept."""
    _, variables, meta = load_reference(pth_path)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    state = {"params": with_seed_axis(variables["params"])}
    if variables.get("batch_stats"):
        state["batch_stats"] = with_seed_axis(variables["batch_stats"])
    checkpointer = ckpt_lib.Checkpointer(workdir / workdir_io.CHECKPOINT_DIR, max_to_keep=1)
    if checkpointer.latest_step() is None:
        checkpointer.save(
            0, state, {"imported_from": str(pathlib.Path(pth_path).resolve()), "epoch": meta.get("epoch")}
        )
    checkpointer.close()
    recorded = config.to_dict()
    recorded["num_seeds"], recorded["seed"] = 1, 0
    workdir_io.write_json(workdir / workdir_io.CONFIG_FILE, recorded)
    workdir_io.write_json(workdir / workdir_io.MODEL_FILE, meta["spec"])
    return workdir
