"""Orbax checkpoints of the training state, with the run's identity and the arrays' digests.

A checkpoint holds the state pytree and a JSON record: the identity of the run that wrote it
(`rundir.identity`, the whole config but the fields safe to change) and a sha256 of every
array. Restoring into a run of another config raises `CheckpointError`; a checkpoint whose
arrays fail their digests is skipped for the previous kept one, with a warning. Nothing
starts afresh silently: discarding hours of training, or mixing two experiments, is worse
than stopping.
"""
from __future__ import annotations

import hashlib
import logging
import pathlib
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from distill_jax.errors import UserError
from distill_jax.training import rundir


class CheckpointError(UserError, RuntimeError):
    """A checkpoint exists but cannot be used for this run."""


def array_digests(state: Any) -> list[str]:
    """sha256 of every array of a (host) state, in leaf order: stored with each checkpoint and
    checked on restore, so flipped bytes never train on silently."""
    return [hashlib.sha256(np.ascontiguousarray(leaf).tobytes()).hexdigest() for leaf in jax.tree.leaves(state)]


class Checkpointer:
    """Periodic save, keep-N, restore-latest (verified) over `workdir/checkpoints`.

    In a multi-process run every process saves and restores (Orbax meets them and lets the
    primary process, 0, write the host arrays and the record); only the writer renames.
    """

    def __init__(self, directory: str | pathlib.Path, *, max_to_keep: int = 2):
        self.directory = pathlib.Path(directory).resolve()
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Writes the state, its digests and `meta`; Orbax commits atomically (temp dir, then rename)."""
        # Host copies: Orbax's per-shard transfer of replicated device arrays is slow (seconds
        # per save on many devices), and the state of these small networks fits in memory.
        state = jax.device_get(state)
        meta = {**meta, "digests": array_digests(state)}
        self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         meta=ocp.args.JsonSave(meta)), force=True)
        self._manager.wait_until_finished()

    def _restore_step(self, step: int, abstract_state: Any, identity: dict, defaults) -> tuple[Any, dict]:
        where = self.directory / str(step)
        try:
            saved_meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as err:  # orbax raises many types for unreadable files
            raise _Damaged(f"checkpoint {where} cannot be read (meta): {err}") from err
        if "identity" in saved_meta:  # checkpoints written before whole-config identity carry none
            diff = rundir.config_differences(saved_meta["identity"], identity, defaults)
            if diff:
                raise CheckpointError(f"checkpoint {where} belongs to a different run:\n  " + "\n  ".join(diff)
                                      + "\nUse another workdir, or delete the checkpoints to start afresh")
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
        except Exception as err:
            raise _Damaged(f"checkpoint {where} does not match this run's state or is corrupt: {err}") from err
        state = restored["state"]
        _check_same_structure(abstract_state, state, where)
        digests = saved_meta.get("digests")
        if digests is not None and digests != array_digests(jax.device_get(state)):
            raise _Damaged(f"checkpoint {where} is damaged: its arrays do not match the digests saved with them")
        return state, saved_meta

    def restore_latest(self, abstract_state: Any, identity: dict, defaults=None) -> Optional[tuple[int, Any, dict]]:
        """Returns (step, state, saved meta) of the newest usable checkpoint, or None when there is none.

        `abstract_state` gives the expected structure, shapes, dtypes and shardings; `identity`
        (`rundir.identity(config)`) what the checkpoint's run must have been. A damaged newest
        checkpoint falls back to the previous kept one with a warning naming both; a checkpoint
        of another run, or no readable one at all, is an error.
        """
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            return None
        damaged = []
        for step in steps:
            try:
                state, saved_meta = self._restore_step(step, abstract_state, identity, defaults)
            except _Damaged as err:
                damaged.append((step, str(err)))
                continue
            where = self.directory / str(step)
            if damaged:
                logging.warning("%s; resuming from the previous kept checkpoint %s instead", damaged[0][1], where)
                self._set_aside([s for s, _ in damaged])
            else:
                logging.info("restored checkpoint %s", where)
            return step, state, saved_meta
        raise CheckpointError("no usable checkpoint: " + "; ".join(e for _, e in damaged)
                              + ". Delete the checkpoints to start afresh")

    def _set_aside(self, steps: list[int]) -> None:
        """Renames damaged checkpoints to damaged_<step> (kept for inspection, never restored), so
        the resumed run can save those steps again."""
        if rundir.is_writer():
            for step in steps:
                self.directory.joinpath(str(step)).rename(self.directory / f"damaged_{step}")
        rundir.wait_for_writer("checkpoints set aside")
        self._manager.reload()

    def close(self) -> None:
        self._manager.close()


class _Damaged(CheckpointError):
    """A checkpoint that cannot be read or fails its digests (a candidate for falling back)."""


def _check_same_structure(expected, got, where):
    exp_leaves, exp_tree = jax.tree.flatten(expected)
    got_leaves, got_tree = jax.tree.flatten(got)
    if exp_tree != got_tree:
        raise CheckpointError(f"checkpoint {where} holds a different state structure than this run expects")
    for e, g in zip(exp_leaves, got_leaves):
        if tuple(e.shape) != tuple(g.shape):
            raise CheckpointError(f"checkpoint {where}: array of shape {tuple(g.shape)} where {tuple(e.shape)} is expected")
