"""A run's directory: its identity (the whole resolved config), its lock, and atomic writes.

A workdir belongs to one config. Resuming it with another learning rate, augmentation,
schedule or teacher would silently mix two experiments in one set of checkpoints and
results, so every field counts except the short list in `SAFE_TO_CHANGE`, and the check runs
before anything is written. Only one run may use a workdir at a time (`WorkdirLock`).
Files are written through a temporary name and a rename, readable by others (0644), and as
strict JSON (NaN and infinities become null).

A run of several processes (`jax.distributed`) has one writer, process 0 (`is_writer`): the
others compute the same results, and their files would only repeat or race with its own.
`write_text`, `write_json` and `WorkdirLock` do nothing on the other processes.
"""
from __future__ import annotations

import json
import logging
import math
import os
import pathlib
import tempfile

import jax
import numpy as np
from jax.experimental import multihost_utils

from distill_jax.errors import UserError

# Fields a rerun may change without becoming another run: when to stop, how often to log,
# evaluate and checkpoint, how many checkpoints to keep, the evaluation batch, where the data
# lives; for distillations also the step budget (more steps of the same process).
SAFE_TO_CHANGE = (
    "train.stop_after_epochs", "log_every_steps", "eval_every_epochs", "checkpoint_every_epochs",
    "keep_checkpoints", "data.eval_batch_size", "data.data_dir",
    "distill.steps", "distill.stop_after_steps", "distill.checkpoint_every_steps",
)
CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"


class RunConfigError(UserError):
    """The workdir holds a run whose config differs from this one."""


class WorkdirInUseError(UserError):
    """Another live process holds the workdir."""


def is_writer() -> bool:
    """Whether this process writes the run's files and logs its results: process 0 of a
    multi-process run, the only process of any other. (A run without `jax.distributed` is
    answered without starting JAX's backends.)"""
    return not jax.distributed.is_initialized() or jax.process_index() == 0


def wait_for_writer(name: str) -> None:
    """All processes meet here, so that what the writer has just changed on disk is there for
    the others to read; returns at once in a one-process run."""
    if jax.distributed.is_initialized() and jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def flatten(tree: dict, prefix: str = "") -> dict:
    """{'train': {'epochs': 5}} -> {'train.epochs': 5}."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _plain(config) -> dict:
    """A ConfigDict or dict as JSON would store it (tuples become lists)."""
    tree = config.to_dict() if hasattr(config, "to_dict") else config
    return json.loads(json.dumps(tree, default=_json_default))


def identity(config) -> dict:
    """The fields that make a run this run: every field but `SAFE_TO_CHANGE`, flattened."""
    return {k: v for k, v in flatten(_plain(config)).items() if k not in SAFE_TO_CHANGE}


def config_differences(recorded, config, defaults=None) -> list[str]:
    """Lines 'field: recorded value -> this run's value' for every identity field that differs.

    A field the recorded config lacks was added to the package after that run started; it is
    no difference when this run leaves it at its default (`defaults`, the current default
    config), which is what the older code did. A field only the recorded config has was
    removed from the package and can no longer be set: no difference either.
    """
    old, new = identity(recorded), identity(config)
    default = identity(defaults) if defaults is not None else {}
    lines = []
    for key in sorted(set(old) | set(new)):
        if key not in new:
            continue
        if key not in old:
            if key in default and default[key] == new[key]:
                continue
            lines.append(f"{key}: (not recorded) -> {new[key]!r}")
        elif old[key] != new[key]:
            lines.append(f"{key}: {old[key]!r} -> {new[key]!r}")
    return lines


def recorded_config(workdir) -> dict | None:
    """The config a workdir's run recorded (config.json), or None for a new workdir."""
    path = pathlib.Path(workdir) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise RunConfigError(f"{path}: cannot be read ({err}); it records which run this workdir holds. "
                             "Use another workdir, or remove this one to start afresh") from err


def check_identity(workdir, config, defaults=None) -> None:
    """Stops (before anything is written) when `workdir` holds a run with another config."""
    recorded = recorded_config(workdir)
    if recorded is None:
        return
    diff = config_differences(recorded, config, defaults)
    if diff:
        safe = ", ".join(SAFE_TO_CHANGE)
        raise RunConfigError(
            f"workdir {workdir} holds a run with a different config ({len(diff)} field(s)):\n  " + "\n  ".join(diff)
            + f"\nA rerun may change only: {safe}. Use another workdir for another config.")


def _json_default(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, tuple):
        return list(x)
    raise TypeError(f"not JSON serialisable: {type(x)}")


def finite(obj):
    """NaN and infinities as None, numpy scalars as Python numbers: results and metrics files
    are strict JSON that any tool reads."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, np.floating):
        return finite(float(obj))
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return finite(obj.tolist())
    return obj


def write_text(path, text: str) -> None:
    """Writes a file through a temporary name and a rename (never half-written), mode 0644;
    on processes other than the writer (`is_writer`), nothing."""
    if not is_writer():
        return
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path, obj) -> None:
    """Strict JSON (NaN -> null), written atomically with mode 0644 (by the writer process only)."""
    write_text(path, json.dumps(finite(json.loads(json.dumps(obj, default=_json_default))), indent=1,
                                allow_nan=False))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


class WorkdirLock:
    """`with WorkdirLock(workdir):` one run per workdir. A lock whose PID is dead (a killed
    run) is taken over; a live one stops this run at once, naming the holder. In a
    multi-process run the writer holds it for all (the others' PIDs would find it taken)."""

    def __init__(self, workdir):
        self.path = pathlib.Path(workdir) / LOCK_FILE
        self.held = False

    def __enter__(self):
        if not is_writer():
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and pid != os.getpid() and _alive(pid):
                    raise WorkdirInUseError(f"workdir {self.path.parent} in use by PID {pid} "
                                            f"(lock file {self.path}); wait for it or stop it") from None
                logging.warning("taking over the stale lock %s (PID %s is not running)", self.path, pid or "?")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            self.held = True
            return self
        raise WorkdirInUseError(f"workdir {self.path.parent}: could not take the lock {self.path}")

    def __exit__(self, *exc):
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
        return False
