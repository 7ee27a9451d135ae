"""Orbax checkpoints of the training state, with a fingerprint of what was trained.

A checkpoint holds the state pytree and a JSON record (the fields that decide the
state's shape and meaning). Restoring into a run whose fingerprint differs, or from a
directory that cannot be read, raises `CheckpointError` instead of starting afresh:
silently discarding hours of training, or mixing two experiments, is worse than stopping.
"""
from __future__ import annotations

import json
import logging
import pathlib
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be used for this run."""


class Checkpointer:
    """Periodic save, keep-N, restore-latest over `workdir/checkpoints`."""

    def __init__(self, directory: str | pathlib.Path, *, max_to_keep: int = 2):
        self.directory = pathlib.Path(directory).resolve()
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Writes the state and its fingerprint; Orbax commits atomically (temp dir, then rename)."""
        # Host copies: Orbax's per-shard transfer of replicated device arrays is slow (seconds
        # per save on many devices), and the state of these small networks fits in memory.
        state = jax.device_get(state)
        self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         meta=ocp.args.JsonSave(meta)), force=True)
        self._manager.wait_until_finished()

    def restore_latest(self, abstract_state: Any, meta: dict) -> Optional[tuple[int, Any, dict]]:
        """Returns (step, state, saved meta) of the newest checkpoint, or None when there is none.

        `abstract_state` gives the expected structure, shapes, dtypes and shardings;
        `meta` is the fingerprint the checkpoint must carry.
        """
        step = self.latest_step()
        if step is None:
            return None
        where = self.directory / str(step)
        try:
            saved_meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as err:  # orbax raises many types for unreadable files
            raise CheckpointError(f"checkpoint {where} cannot be read (meta): {err}") from err
        mismatched = {k: (saved_meta.get(k), v) for k, v in meta.items() if saved_meta.get(k) != v}
        if mismatched:
            detail = "; ".join(f"{k}: checkpoint has {a!r}, this run has {b!r}" for k, (a, b) in mismatched.items())
            raise CheckpointError(f"checkpoint {where} belongs to a different run ({detail}); "
                                  "use another workdir or delete the checkpoints to start afresh")
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
        except Exception as err:
            raise CheckpointError(f"checkpoint {where} does not match this run's state or is corrupt: {err}") from err
        state = restored["state"]
        _check_same_structure(abstract_state, state, where)
        logging.info("restored checkpoint %s", where)
        return step, state, saved_meta

    def close(self) -> None:
        self._manager.close()


def _check_same_structure(expected, got, where):
    exp_leaves, exp_tree = jax.tree.flatten(expected)
    got_leaves, got_tree = jax.tree.flatten(got)
    if exp_tree != got_tree:
        raise CheckpointError(f"checkpoint {where} holds a different state structure than this run expects")
    for e, g in zip(exp_leaves, got_leaves):
        if tuple(e.shape) != tuple(g.shape):
            raise CheckpointError(f"checkpoint {where}: array of shape {tuple(g.shape)} where {tuple(e.shape)} is expected")


def fingerprint(config) -> dict:
    """The config fields that make a checkpoint usable by a run: same network, data, seeds, schedule."""
    return json.loads(json.dumps({
        "model": config.model.to_dict(),
        "data": {k: config.data[k] for k in ("source", "dataset", "per_class", "subset_seed", "distilled_path")},
        "seed": config.seed,
        "num_seeds": config.num_seeds,
        "train": {k: config.train[k] for k in ("epochs", "batch_size", "optimizer", "lr_schedule")},
    }))
