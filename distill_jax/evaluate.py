"""Mode "evaluate": test accuracy of a saved network, in the pixel space it was trained in.

A run's workdir records its data config (config.json) and network (model.json) beside its
checkpoints; the test split is put through the preprocessing that config implies (fitted on
the real training split, docs/method.md §4), so a network is never scored in the wrong pixel space.
A reference-code `.pth` ConvNet carries no such record: the evaluate config's `data` fields
name its pixel space instead.
"""
from __future__ import annotations

import logging
import math
import pathlib
from typing import Optional

import jax
import numpy as np

from distill_jax.data import pipeline
from distill_jax.report import records
from distill_jax.errors import UserError
from distill_jax.training import metrics, rundir, runs


class EvaluationError(UserError, ValueError):
    """The network to evaluate cannot be found or read."""


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


def run_evaluation(config, workdir, *, data: Optional[pipeline.TrainingData] = None) -> dict:
    """Scores the network(s) at `config.evaluate.path` on `config.data.test_split`; writes evaluation.json."""
    path = config.evaluate.path
    if not path:
        raise EvaluationError("config field 'evaluate.path' is empty; give a run's workdir or a reference-code .pth")
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        if runs.is_reference_file(path):
            module, single, _ = runs.load_reference(path)
            variables = runs.with_seed_axis(single)
            data_cfg, step, seeds = config.data, None, [None]
        else:
            saved = runs.load_run(path)
            module, variables, step = saved.module, saved.variables, saved.step
            data_cfg = saved.config.data
            data_cfg.test_split = config.data.test_split
            seeds = [saved.config.seed + i for i in range(saved.config.num_seeds)]
    except runs.RunReadError as err:
        raise EvaluationError(f"evaluate.path: {err}") from err
    data = data if data is not None else pipeline.load_training_data(data_cfg)
    batch = int(math.ceil(config.data.eval_batch_size))
    acc = accuracy_per_network(module, variables, data.test_images, data.test_labels, batch)
    result = {
        "path": str(path), "checkpoint_step": step, "split": config.data.test_split,
        "data": data.description,
        "preprocessing": data.preprocessing.recipe if hasattr(data.preprocessing, "recipe") else str(data.preprocessing),
        "seeds": seeds, "accuracy": metrics.summarize(acc),
        "software": records.software_versions(), "device": records.device_description(),
    }
    rundir.write_json(workdir / "evaluation.json", result)
    a = result["accuracy"]
    result["summary"] = (f"{path}: {config.data.test_split} accuracy {a['mean']:.2f} ± {a['std']:.2f} % "
                         f"over {len(a['per_seed'])} network(s) ({result['preprocessing']} preprocessing)")
    logging.info(result["summary"])
    return result


__all__ = ["EvaluationError", "accuracy_per_network", "run_evaluation"]
