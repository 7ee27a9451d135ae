"""Test accuracy of every seed's network: the one evaluation of the training loop and of mode `evaluate`.

The split is cut into batches of one size, a multiple of the mesh's `data` devices; the last batch is
padded and its padding masked out of the sums (`steps.make_eval_step`), so every batch runs the
same compiled program and the accuracy counts each image once. Batches are sharded over the
mesh and every seed's network runs on them at once (vmap over the leading seed axis).
"""
from __future__ import annotations

import math
from typing import Callable, Mapping

import jax
import numpy as np
from jax.sharding import Mesh

from distill_jax.training import sharding, steps


def make_accuracy(model, mesh: Mesh) -> Callable[..., np.ndarray]:
    """`accuracy(variables, images, labels, batch_size) -> (seeds,)` test accuracy in percent of
    every network in `variables` (`params` and `batch_stats`, each leaf with a leading seed axis,
    placed on `mesh` by seed: `sharding.shard_seeds`), in inference mode. `batch_size` is rounded
    up to a multiple of the mesh's `data` devices. The program is compiled once per accuracy function."""
    evaluate = jax.jit(jax.vmap(steps.make_eval_step(model), in_axes=(0, 0, None)),
                       out_shardings=sharding.replicated(mesh))

    def accuracy(variables: Mapping, images: np.ndarray, labels: np.ndarray, batch_size: int) -> np.ndarray:
        columns = mesh.shape[sharding.DATA_AXIS]
        batch_size = int(math.ceil(batch_size / columns) * columns)
        params, batch_stats = variables["params"], variables.get("batch_stats") or {}
        correct, count = 0.0, 0.0
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size]
            y = labels[start:start + batch_size]
            mask = np.ones(len(x), np.float32)
            pad = batch_size - len(x)
            if pad:
                x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
                y = np.concatenate([y, np.zeros((pad,) + y.shape[1:], y.dtype)])
                mask = np.concatenate([mask, np.zeros(pad, np.float32)])
            sums = evaluate(params, batch_stats, sharding.shard_batch({"image": x, "label": y, "mask": mask}, mesh))
            correct = correct + np.asarray(sums["correct"])
            count = count + np.asarray(sums["count"])
        return 100.0 * correct / count

    return accuracy
