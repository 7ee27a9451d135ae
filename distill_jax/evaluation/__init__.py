"""Mode "evaluate": test accuracy of a saved network, in the pixel space it was trained in.

A run's workdir records its data config (config.json) and network (model.json) beside its
checkpoints; the test split is put through the preprocessing that config implies (fitted on
the real training split, docs/method.md §4), so a network is never scored in the wrong pixel space.
A reference-code `.pth` ConvNet carries no such record: the evaluate config's `data` fields
name its pixel space instead.
"""
from __future__ import annotations

import json
import logging
import math
import pathlib
from typing import Optional

import jax
import ml_collections
import numpy as np

from distill_jax import config as config_lib
from distill_jax import models
from distill_jax.data import pipeline
from distill_jax.evaluation import records
from distill_jax.errors import UserError


class EvaluationError(UserError, ValueError):
    """The network to evaluate cannot be found or read."""


def _read_json(path: pathlib.Path, what: str) -> dict:
    if not path.is_file():
        raise EvaluationError(f"evaluate.path: {path.parent} has no {path.name} ({what}); "
                              "give the workdir of a finished run or a reference-code .pth file")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise EvaluationError(f"{path}: not valid JSON ({err})") from err


def load_run(path: str | pathlib.Path):
    """(module, variables with a leading seed axis, recorded config) of a run's latest checkpoint."""
    import orbax.checkpoint as ocp

    path = pathlib.Path(path)
    spec = _read_json(path / "model.json", "the network it trained")
    recorded = ml_collections.ConfigDict(_read_json(path / "config.json", "the config it ran with"))
    manager = ocp.CheckpointManager(path.resolve() / "checkpoints", item_names=("state", "meta"))
    step = manager.latest_step()
    if step is None:
        raise EvaluationError(f"evaluate.path: {path} has no checkpoint under {path / 'checkpoints'}")
    try:
        state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    except Exception as err:  # orbax raises many types for unreadable files
        raise EvaluationError(f"evaluate.path: checkpoint {path / 'checkpoints' / str(step)} cannot be read: {err}") from err
    variables = {"params": state["params"], "batch_stats": state.get("batch_stats") or {}}
    module = models.build_model(spec["name"], num_classes=spec["num_classes"], **spec["options"])
    return module, variables, recorded, int(step)


def accuracy_per_network(module, variables, images: np.ndarray, labels: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Test accuracy (%) of each network in `variables` (leading axis = network), in inference mode."""
    def logits_of(params, batch_stats, x):
        v = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
        return module.apply(v, x, train=False)

    predict = jax.jit(jax.vmap(logits_of, in_axes=(0, 0, None)))
    batch_stats = variables.get("batch_stats") or {}
    correct = None
    for start in range(0, len(images), batch_size):
        logits = np.asarray(predict(variables["params"], batch_stats, images[start:start + batch_size]))
        hits = (logits.argmax(-1) == labels[start:start + batch_size][None]).sum(axis=1)
        correct = hits if correct is None else correct + hits
    return 100.0 * correct / len(images)


def import_teacher(pth_path: str | pathlib.Path, workdir: str | pathlib.Path, config) -> pathlib.Path:
    """Saves a reference-code `.pth` ConvNet as a run of this project in `workdir` (model.json,
    config.json and an Orbax checkpoint holding one seed), so that KD (`train.kd.teacher_path`)
    and mode 'evaluate' read it like a teacher trained here; `config.data` records its pixel space."""
    from distill_jax.models import torch_import
    from distill_jax.training import checkpoint as ckpt_lib
    from distill_jax.training.rundir import write_json

    pth_path = pathlib.Path(pth_path)
    if not pth_path.is_file():
        raise EvaluationError(f"evaluate.path: {pth_path} does not exist")
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    variables, meta = torch_import.load_reference_convnet(pth_path)
    with_seed_axis = lambda x: np.asarray(x)[None]  # noqa: E731  (a run holds a leading seed axis)
    state = {"params": jax.tree.map(with_seed_axis, variables["params"])}
    if variables.get("batch_stats"):
        state["batch_stats"] = jax.tree.map(with_seed_axis, variables["batch_stats"])
    checkpointer = ckpt_lib.Checkpointer(workdir / "checkpoints", max_to_keep=1)
    if checkpointer.latest_step() is None:  # an earlier import (of a resumed reproduction) is kept
        checkpointer.save(0, state, {"imported_from": str(pth_path.resolve()), "epoch": meta.get("epoch")})
    checkpointer.close()
    recorded = config.to_dict()
    recorded["num_seeds"], recorded["seed"] = 1, 0
    write_json(workdir / "config.json", recorded)
    write_json(workdir / "model.json", {"name": meta.get("model_name", "convnet"), "num_classes": meta["num_classes"],
                                        "options": meta["model_options"]})
    return workdir


def run_evaluation(config, workdir, *, data: Optional[pipeline.TrainingData] = None) -> dict:
    """Scores the network(s) at `config.evaluate.path` on `config.data.test_split`; writes evaluation.json."""
    path = config.evaluate.path
    if not path:
        raise EvaluationError("config field 'evaluate.path' is empty; give a run's workdir or a reference-code .pth")
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    source = pathlib.Path(path)
    if source.suffix in (".pth", ".pt"):
        from distill_jax.models import torch_import

        if not source.is_file():
            raise EvaluationError(f"evaluate.path: {source} does not exist")
        single, meta = torch_import.load_reference_convnet(source)
        module = models.build_model(meta.get("model_name", "convnet"), num_classes=meta["num_classes"],
                                    **meta["model_options"])
        variables = jax.tree.map(lambda x: np.asarray(x)[None], single)
        data_cfg, step, seeds = config.data, None, [None]
    else:
        module, variables, recorded, step = load_run(source)
        data_cfg = recorded.data
        data_cfg.test_split = config.data.test_split
        seeds = [recorded.seed + i for i in range(recorded.num_seeds)]
    data = data if data is not None else pipeline.load_training_data(data_cfg)
    batch = int(math.ceil(config.data.eval_batch_size))
    acc = accuracy_per_network(module, variables, data.test_images, data.test_labels, batch)
    result = {
        "path": str(path), "checkpoint_step": step, "split": config.data.test_split,
        "data": data.description,
        "preprocessing": data.preprocessing.recipe if hasattr(data.preprocessing, "recipe") else str(data.preprocessing),
        "seeds": seeds, "accuracy": records.summarize(acc),
        "software": records.software_versions(), "device": records.device_description(),
    }
    from distill_jax.training.rundir import write_json

    write_json(workdir / "evaluation.json", result)
    a = result["accuracy"]
    result["summary"] = (f"{path}: {config.data.test_split} accuracy {a['mean']:.2f} ± {a['std']:.2f} % "
                         f"over {len(a['per_seed'])} network(s) ({result['preprocessing']} preprocessing)")
    logging.info(result["summary"])
    return result


__all__ = ["EvaluationError", "accuracy_per_network", "import_teacher", "load_run", "run_evaluation"]
