"""Loading a frozen KD teacher (SPEC 2.5): the small training network of the distilled set.

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


class TeacherError(RuntimeError):
    """The teacher named by train.kd.teacher_path cannot be used."""


HOW_TO_TRAIN = ("train one with `python launch/main.py --config <teacher config> --workdir <dir>` "
                "and set train.kd.teacher_path to that dir")


def load_teacher(path: str | pathlib.Path):
    """Returns (module, variables) of the teacher in inference form."""
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
