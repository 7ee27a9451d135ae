"""Orbax checkpoints of the training state, with the run's identity and the arrays' digests.

A checkpoint holds the state pytree and a JSON record: the identity of the run that wrote it
(`workdir_io.identity`, the whole config but the fields safe to change), what it trained on
(`workdir_io.run_inputs`: the data's and the teacher's digests) and a sha256 of every array.
Restoring into a run of another config or other inputs raises an error; a checkpoint whose
arrays fail their digests is skipped for the previous kept one, with a warning. Nothing
starts afresh silently: discarding hours of training, or mixing two experiments, is worse
than stopping. Every restore, a resumed run's and a finished run's read back as a KD teacher
or for evaluation (`read_latest`), checks the digests.

A disk that fills (or turns read-only, or reaches its quota) during a save ends the run with
one line (`CheckpointSaveError`), the half-written checkpoint removed and the previous ones kept.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import pathlib
import re
import shutil
import sys
import threading
import time
import traceback
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from distill_jax.errors import DISK_ERRORS, UserError
from distill_jax.training import sharding, workdir_io


class CheckpointError(UserError, RuntimeError):
    """A checkpoint exists but cannot be used for this run."""


class CheckpointSaveError(CheckpointError):
    """A checkpoint could not be written (a full, read-only or over-quota disk)."""


def array_digests(state: Any) -> list[str]:
    """sha256 of every array of a (host) state, in leaf order: stored with each checkpoint and
    checked on restore, so flipped bytes never train on silently."""
    return [hashlib.sha256(np.ascontiguousarray(leaf).tobytes()).hexdigest() for leaf in jax.tree.leaves(state)]


def weights_digest(digests: list[str]) -> str:
    """One sha256 for a whole checkpoint, from its arrays' digests (`array_digests`): what a run
    that uses another run's network (a KD teacher) records of it."""
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def _closed_loop_callback(unraisable) -> bool:
    """Whether an unraisable exception is asyncio's 'Event loop is closed' from a tensorstore
    callback: when one read or write of a checkpoint fails, Orbax closes its event loop while
    tensorstore still completes the others, and each of their callbacks raises this. Its error
    is the one the failed restore or save reports; these add nothing."""
    if unraisable.exc_type is not RuntimeError or str(unraisable.exc_value) != "Event loop is closed":
        return False
    return any(frame.name == "call_soon_threadsafe" for frame in traceback.extract_tb(unraisable.exc_traceback))


def _drop_abandoned_callbacks() -> None:
    """Keeps the abandoned callbacks of a failed restore or save (`_closed_loop_callback`) off
    stderr (a damaged checkpoint printed dozens of tracebacks before its one warning); every
    other unraisable exception goes to the hook in place before. Installed once per process,
    before the first restore or save, since the callbacks can run after Orbax has returned."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_abandoned_checkpoint_callbacks", False):
        return

    def hook(unraisable):
        if not _closed_loop_callback(unraisable):
            previous(unraisable)

    hook.drops_abandoned_checkpoint_callbacks = True
    sys.unraisablehook = hook


class _RedundantThreadErrors(logging.Filter):
    """Drops Orbax's log of an exception in one of its background threads: the thread keeps the
    exception and the save or restore waiting on it raises it, which is where this package
    reports it (a full disk as one line); the log only printed it again, traceback and all."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not ("orbax" in record.pathname and "_SignalingThread.run() raised an exception" in str(record.msg))


def _quiet_background_errors() -> None:
    """`_drop_abandoned_callbacks` and `_RedundantThreadErrors` (on the absl logger Orbax logs
    through), once per process."""
    _drop_abandoned_callbacks()
    absl_logger = logging.getLogger("absl")
    if not any(isinstance(f, _RedundantThreadErrors) for f in absl_logger.filters):
        absl_logger.addFilter(_RedundantThreadErrors())


def _wait_for_abandoned_writes(timeout: float = 60.0) -> None:
    """After a failed save, lets Orbax's background threads (the other items' writes, which the
    failure does not stop) end, so that the half-written checkpoint can be removed for good."""
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and type(thread).__module__.startswith("orbax."):
            try:  # Orbax's threads raise their own error again on join
                thread.join(max(0.0, deadline - time.monotonic()))
            except Exception:  # noqa: BLE001 - the full disk again
                pass


def _disk_errno(err: BaseException, directory: pathlib.Path, needed: int) -> Optional[int]:
    """The errno of `errors.DISK_ERRORS` (full, read-only, over quota) a failed save ran into:
    an OSError anywhere in the chain of errors, tensorstore's `os_error_code` in its message, or
    (ENOSPC) less space left than the state needs. None for any other failure."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in DISK_ERRORS:
            return err.errno
        code = re.search(r"os_error_code='(\d+)'", str(err))
        if code and int(code.group(1)) in DISK_ERRORS:
            return int(code.group(1))
        err = err.__cause__ or err.__context__
    try:
        return errno.ENOSPC if shutil.disk_usage(directory).free < needed else None
    except OSError:
        return None


def _first_line(err: BaseException, limit: int = 300) -> str:
    """A library's error as one short line (Orbax and tensorstore messages run to pages)."""
    text = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
    return text if len(text) <= limit else text[:limit] + "..."


class Checkpointer:
    """Periodic save, keep-N, restore-latest (verified) over `workdir/checkpoints`.

    In a multi-process run every process saves and restores (Orbax meets them and lets the
    primary process, 0, write the host arrays and the record); only the writer renames.
    `read_only` opens another run's checkpoints to read them (`read_latest`) without creating,
    renaming or deleting anything there.
    """

    def __init__(self, directory: str | pathlib.Path, *, max_to_keep: int = 2, read_only: bool = False):
        self.directory = pathlib.Path(directory).resolve()
        if read_only:
            options = ocp.CheckpointManagerOptions(read_only=True, create=False, max_to_keep=None,
                                                   enable_async_checkpointing=False)
        else:
            options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                   enable_async_checkpointing=False)
        self._failed = False
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Writes the state, its digests and `meta`; Orbax commits atomically (temp dir, then rename).
        A full, read-only or over-quota disk raises `CheckpointSaveError` (one line) with the
        half-written checkpoint removed."""
        # Host copies: Orbax's per-shard transfer of replicated device arrays is slow (seconds
        # per save on many devices), and the state of these small networks fits in memory. With
        # several processes each holds only its seed rows: the copy gathers them all.
        state = sharding.to_host(state)
        meta = {**meta, "digests": array_digests(state)}
        _quiet_background_errors()
        try:
            self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                             meta=ocp.args.JsonSave(meta)), force=True)
            self._manager.wait_until_finished()
        except Exception as err:
            needed = sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(state))
            code = _disk_errno(err, self.directory, needed)
            if code is None:
                raise
            self._failed = True
            _wait_for_abandoned_writes()
            self._remove_partial(step)
            kept = self._committed_steps()
            resume = (f"rerunning the same command resumes from checkpoint {kept[-1]}" if kept
                      else "rerunning the same command starts the run afresh")
            what, fix = DISK_ERRORS[code]
            raise CheckpointSaveError(f"{what} while saving checkpoint {self.directory / str(step)} "
                                      f"({_first_line(err)}): {fix}; {resume}") from err

    def _committed_steps(self) -> list[int]:
        return (
            sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit()) if self.directory.is_dir() else []
        )

    def _remove_partial(self, step: int) -> None:
        """Removes what a failed save of `step` left (Orbax's temporary directory), on the writer."""
        if not workdir_io.is_writer():
            return
        for _ in range(10):  # a write still in flight in tensorstore may recreate a folder: until none comes back
            partial = [p for p in self.directory.iterdir() if p.name.startswith(f"{step}.orbax-checkpoint-tmp")]
            if not partial:
                return
            for path in partial:
                shutil.rmtree(path, ignore_errors=True)
            time.sleep(0.2)

    def _restore_step(self, step: int, abstract_state: Any, identity: Optional[dict], defaults,
                      inputs: Optional[dict]) -> tuple[Any, dict]:
        where = self.directory / str(step)
        try:
            saved_meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as err:  # orbax raises many types for unreadable files
            raise _Damaged(f"checkpoint {where} cannot be read (meta): {_first_line(err)}") from err
        saved_meta = saved_meta or {}
        if (
            identity is not None and "identity" in saved_meta
        ):  # checkpoints written before whole-config identity carry none
            diff = workdir_io.config_differences(saved_meta["identity"], identity, defaults)
            if diff:
                raise CheckpointError(f"checkpoint {where} belongs to a different run:\n  " + "\n  ".join(diff)
                                      + "\nUse another workdir, or delete the checkpoints to start afresh")
        if inputs is not None:
            workdir_io.check_inputs(saved_meta.get("inputs"), inputs, f"checkpoint {where}")
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
            )
        except Exception as err:
            raise _Damaged(
                f"checkpoint {where} does not match this run's state or is corrupt: {_first_line(err)}"
            ) from err
        state = restored["state"]
        if abstract_state is not None:
            _check_same_structure(abstract_state, state, where)
        digests = saved_meta.get("digests")
        if digests is not None and digests != array_digests(sharding.to_host(state)):
            raise _Damaged(f"checkpoint {where} is damaged: its arrays do not match the digests saved with them")
        return state, saved_meta

    def restore_latest(self, abstract_state: Any, identity: dict, defaults=None,
                       inputs: Optional[dict] = None) -> Optional[tuple[int, Any, dict]]:
        """Returns (step, state, saved meta) of the newest usable checkpoint, or None when there is none.

        `abstract_state` gives the expected structure, shapes, dtypes and shardings; `identity`
        (`workdir_io.identity(config)`) what the checkpoint's run must have been, `inputs`
        (`workdir_io.run_inputs`) what it must have trained on. A damaged newest checkpoint falls
        back to the previous kept one with a warning naming both; a checkpoint of another run,
        or no readable one at all, is an error.
        """
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            return None
        _quiet_background_errors()
        damaged = []
        for step in steps:
            try:
                state, saved_meta = self._restore_step(step, abstract_state, identity, defaults, inputs)
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
        raise CheckpointError(f"{self.directory}: no usable checkpoint: " + "; ".join(e for _, e in damaged)
                              + ". Delete the checkpoints to start afresh")

    def read_latest(self) -> tuple[int, Any, dict]:
        """(step, state as saved, meta) of the newest checkpoint of a run read back (a KD teacher,
        a network to evaluate), its arrays checked against their digests. A damaged newest
        checkpoint is an error, never a fallback: an older checkpoint is another network."""
        step = self._manager.latest_step()
        if step is None:
            raise CheckpointError(f"no checkpoint under {self.directory}")
        _quiet_background_errors()
        try:
            state, meta = self._restore_step(step, None, None, None, None)
        except _Damaged as err:
            raise CheckpointError(
                f"{err}; this network cannot be used. Retrain it, or repair the run in place: delete "
                f"{self.directory / str(step)} and {self.directory.parent / workdir_io.RESULTS_FILE}, then rerun the "
                "command that trained it (it resumes from its previous checkpoint)") from err
        return int(step), state, meta

    def _set_aside(self, steps: list[int]) -> None:
        """Renames damaged checkpoints to damaged_<step> (kept for inspection, never restored), so
        the resumed run can save those steps again."""
        if workdir_io.is_writer():
            for step in steps:
                self.directory.joinpath(str(step)).rename(self.directory / f"damaged_{step}")
        workdir_io.wait_for_writer("checkpoints set aside")
        self._manager.reload()

    def close(self) -> None:
        """Releases Orbax's threads and files; after a failed save, quietly (that error is the one to report)."""
        try:
            self._manager.close()
        except Exception:
            if not self._failed:
                raise


class _Damaged(CheckpointError):
    """A checkpoint that cannot be read or fails its digests (a candidate for falling back)."""


def _check_same_structure(expected, got, where):
    exp_leaves, exp_tree = jax.tree.flatten(expected)
    got_leaves, got_tree = jax.tree.flatten(got)
    if exp_tree != got_tree:
        raise CheckpointError(f"checkpoint {where} holds a different state structure than this run expects")
    for e, g in zip(exp_leaves, got_leaves, strict=True):
        if tuple(e.shape) != tuple(g.shape):
            raise CheckpointError(
                f"checkpoint {where}: array of shape {tuple(g.shape)} where {tuple(e.shape)} is expected"
            )
