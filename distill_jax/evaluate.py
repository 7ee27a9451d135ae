"""Mode "evaluate": test accuracy of a saved network, in the pixel space it was trained in.

A run's workdir records its data config (config.json) and network (model.json) beside its
checkpoints; the test split is put through the preprocessing that config implies (fitted on
the real training split, docs/method.md §4), so a network is never scored in the wrong pixel space.
A reference-code `.pth` ConvNet carries no such record: the evaluate config's `data` fields
name its pixel space instead.
"""
from __future__ import annotations

import logging
import pathlib
from typing import Optional

from distill_jax.data import pipeline
from distill_jax.errors import UserError
from distill_jax.report import records
from distill_jax.training import accuracy, metrics, runlife, saved_runs, sharding, workdir_io


class EvaluationError(UserError, ValueError):
    """The network to evaluate cannot be found or read."""


def run_evaluation(config, workdir, *, data: Optional[pipeline.TrainingData] = None) -> dict:
    """Scores the network(s) at `config.evaluate.path` on `config.data.test_split`; writes evaluation.json."""
    path = config.evaluate.path
    if not path:
        raise EvaluationError("config field 'evaluate.path' is empty; give a run's workdir or a reference-code .pth")
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        if saved_runs.is_reference_file(path):
            module, single, _ = saved_runs.load_reference(path)
            variables = saved_runs.with_seed_axis(single)
            data_cfg, step, seeds = config.data, None, [None]
        else:
            saved = saved_runs.load_run(path)
            module, variables, step = saved.module, saved.variables, saved.step
            data_cfg = saved.config.data
            data_cfg.test_split = config.data.test_split
            seeds = [saved.config.seed + i for i in range(saved.config.num_seeds)]
    except saved_runs.RunReadError as err:
        raise EvaluationError(f"config field 'evaluate.path': {err}") from err
    data = data if data is not None else pipeline.load_training_data(data_cfg)
    mesh = sharding.make_mesh()
    acc = accuracy.make_accuracy(module, mesh)(sharding.replicate(variables, mesh), data.test_images,
                                               data.test_labels, config.data.eval_batch_size)
    result = {
        "path": str(path),
        "checkpoint_step": step,
        "split": config.data.test_split,
        "data": data.description,
        "preprocessing": data.preprocessing.recipe
        if hasattr(data.preprocessing, "recipe")
        else str(data.preprocessing),
        "seeds": seeds,
        "accuracy": metrics.summarize(acc),
        "software": runlife.software_versions(),
        "device": records.device_description(),
    }
    workdir_io.write_json(workdir / "evaluation.json", result)
    a = result["accuracy"]
    result["summary"] = (f"{path}: {config.data.test_split} accuracy {a['mean']:.2f} ± {a['std']:.2f} % "
                         f"over {len(a['per_seed'])} network(s) ({result['preprocessing']} preprocessing)")
    logging.info(result["summary"])
    return result


__all__ = ["EvaluationError", "run_evaluation"]
