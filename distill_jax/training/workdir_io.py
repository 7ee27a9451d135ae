"""A run's directory: its identity (the whole resolved config), its lock, and atomic writes.

A workdir belongs to one config. Resuming it with another learning rate, augmentation,
schedule or teacher would silently mix two experiments in one set of checkpoints and
results, so every field counts except the short list in `SAFE_TO_CHANGE`, and the check runs
before anything is written. Only one run may use a workdir at a time (`WorkdirLock`).
Files are written whole (`distill_jax.atomic`: a temporary name and a rename, readable by others),
JSON as strict JSON (NaN and infinities become null).

A run of several processes (`jax.distributed`) has one writer, process 0 (`is_writer`): the
others compute the same results, and their files would only repeat or race with its own.
`write_text`, `write_json` and `WorkdirLock` do nothing on the other processes.
"""
from __future__ import annotations

import copy
import fcntl
import json
import logging
import math
import os
import pathlib
import socket
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from distill_jax import atomic
from distill_jax.errors import UserError

# Fields a rerun may change without becoming another run: when to stop, how often to log,
# evaluate and checkpoint, how many checkpoints to keep, the evaluation batch, where the data
# lives; for distillations also the step budget (more steps of the same process).
SAFE_TO_CHANGE = (
    "train.stop_after_epochs", "log_every_steps", "eval_every_epochs", "checkpoint_every_epochs",
    "keep_checkpoints", "data.eval_batch_size", "data.data_dir",
    "distill.steps", "distill.stop_after_steps", "distill.checkpoint_every_steps",
)
# The files of a run's workdir, named here only: every reader and writer imports these names.
CONFIG_FILE = "config.json"  # the resolved config: the run's identity
MODEL_FILE = "model.json"  # the network: name, classes, options
RESULTS_FILE = "results.json"  # final (or stopped, or diverged) results
METRICS_FILE = "metrics.jsonl"  # one JSON record per log step and per evaluation
CHECKPOINT_DIR = "checkpoints"  # Orbax checkpoints, one folder per step
TB_DIR = "tb"  # TensorBoard events; per-seed values in seed folders under it
TRAIN_SET_GRID = "train_set.png"  # the training set as a picture
LOCK_FILE = ".lock"  # `WorkdirLock`
SEED_PREFIX = "seed_"  # `seed_dir`: a run of one seed of a cell, or a seed's TensorBoard folder
# Config fields that name files: recorded as absolute paths, and compared as such (a relative
# path is read from the current directory), so a rerun from another directory that names
# other files is another run.
PATH_FIELDS = ("data.data_dir", "data.distilled_path", "data.preprocessing_path", "train.kd.teacher_path")


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


def seed_dir(folder, seed: int) -> pathlib.Path:
    """`folder/seed_<seed>`: the run of one seed of a cell whose seeds train apart, or a seed's
    folder of TensorBoard events."""
    return pathlib.Path(folder) / f"{SEED_PREFIX}{seed}"


def seed_dirs(folder) -> list[pathlib.Path]:
    """The `seed_dir`s in `folder`, in seed order ([] when there are none)."""
    found = [(int(p.name[len(SEED_PREFIX):]), p) for p in pathlib.Path(folder).glob(SEED_PREFIX + "*")
             if p.is_dir() and p.name[len(SEED_PREFIX):].isdigit()]
    return [p for _, p in sorted(found)]


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


def _absolute(value):
    return os.path.abspath(value) if isinstance(value, str) and value else value


def with_absolute_paths(config):
    """A copy of `config` whose `PATH_FIELDS` are absolute paths (relative ones are read from the
    current directory): what a run records, so that a rerun from elsewhere compares files, not strings."""
    config = copy.deepcopy(config)
    for name in PATH_FIELDS:
        *parents, leaf = name.split(".")
        node = config
        for part in parents:
            node = node.get(part) if node is not None else None
        if node is not None and leaf in node:
            node[leaf] = _absolute(node[leaf])
    return config


def _compared(ident: dict) -> dict:
    return {k: (_absolute(v) if k in PATH_FIELDS else v) for k, v in ident.items()}


def config_differences(recorded, config, defaults=None) -> list[str]:
    """Lines 'field: recorded value -> this run's value' for every identity field that differs.

    A field the recorded config lacks was added to the package after that run started; it is
    no difference when this run leaves it at its default (`defaults`, the current default
    config), which is what the older code did. A field only the recorded config has was
    removed from the package and can no longer be set: no difference either. Paths
    (`PATH_FIELDS`) are compared as absolute paths.
    """
    old, new = _compared(identity(recorded)), _compared(identity(config))
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


def run_inputs(data, teacher: dict | None = None) -> dict:
    """What a run trains on beyond its config, by content: the sha256 of a distilled set's files
    (`data.sha256`) and of the real training split its preprocessing was fitted on
    (`data.preprocessing.fitted_on`), where `data` is the run's `pipeline.TrainingData`; and the
    KD teacher's `{"step", "sha256"}` (`teacher.load`). Saved with every checkpoint and in
    results.json; a rerun must find the same (`check_inputs`)."""
    recorded = {}
    files = dict(sorted((getattr(data, "sha256", None) or {}).items()))
    fitted = getattr(data.preprocessing, "fitted_on", None) or {}
    if files or fitted.get("images_sha256"):
        recorded["data"] = {}
        if files:
            recorded["data"]["files_sha256"] = files
        if fitted.get("images_sha256"):
            recorded["data"]["train_split_sha256"] = fitted["images_sha256"]
    if teacher:
        recorded["teacher"] = dict(teacher)
    return recorded


def _input_items(inputs: dict) -> dict:
    data, teacher = inputs.get("data") or {}, inputs.get("teacher") or {}
    items = {
        f"sha256 of the distilled set's {name}": digest for name, digest in (data.get("files_sha256") or {}).items()
    }
    if "train_split_sha256" in data:
        items["sha256 of the real training split"] = data["train_split_sha256"]
    if "sha256" in teacher:
        items["sha256 of the teacher's weights"] = teacher["sha256"]
    if "step" in teacher:
        items["teacher's checkpoint step"] = teacher["step"]
    return items


def _short(value) -> str:
    return f"{value[:16]}..." if isinstance(value, str) and len(value) == 64 else repr(value)


def input_differences(recorded: dict | None, inputs: dict) -> list[str]:
    """'what: recorded -> now' for every recorded input (`run_inputs`) that differs. A run
    recorded without inputs (older code), or an input it did not record, is no difference."""
    if not recorded:
        return []
    old, new = _input_items(recorded), _input_items(inputs)
    return [f"{key}: {_short(old[key])} -> {_short(new[key]) if key in new else '(none)'}"
            for key in old if old[key] != new.get(key)]


def check_inputs(recorded: dict | None, inputs: dict, where: str) -> None:
    """Stops (before anything is written) when `where` (a workdir or a checkpoint of it) was
    trained on other data or another teacher than `inputs` (`run_inputs`), naming what changed."""
    diff = input_differences(recorded, inputs)
    if diff:
        raise RunConfigError(f"{where} was trained on other inputs than this run: " + "; ".join(diff)
                             + ". Put back the data and teacher it was trained on, or use another workdir")


def close_after_error(*resources) -> None:
    """Closes what a failing run holds open (checkpoints, metrics files; None is skipped). Their
    own errors (a full disk again) are logged at debug level: they would only hide the error
    being raised."""
    for resource in resources:
        if resource is None:
            continue
        try:
            resource.close()
        except Exception:  # noqa: BLE001 - the run's own error is the one to report
            logging.debug("closing %r after an error failed", resource, exc_info=True)


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
    """Writes a file whole (`atomic.write_text`: a temporary name and a rename, mode 0644 under the
    usual umask); on processes other than the writer (`is_writer`), nothing."""
    if is_writer():
        atomic.write_text(path, text)


def write_json(path, obj) -> None:
    """Strict JSON (NaN -> null), written whole (`write_text`, by the writer process only)."""
    write_text(path, json.dumps(finite(json.loads(json.dumps(obj, default=_json_default))), indent=1,
                                allow_nan=False))


class UnusableWorkdirError(UserError):
    """The workdir cannot hold a run: a file, a name too long, or a folder this process cannot write."""


def check_workdir(workdir) -> pathlib.Path:
    """Stops, before anything is written, when `workdir` cannot hold a run: a name longer than
    the file system allows, a path that is (or runs through) a file, or a folder (for a new
    workdir: the folder it would be made in) that this process cannot write, read-only file
    systems included. Returns the path."""
    path = pathlib.Path(workdir)
    absolute = path.absolute()
    existing = next((p for p in (absolute, *absolute.parents) if os.path.lexists(p)), pathlib.Path("/"))
    name_max = _pathconf(existing, "PC_NAME_MAX", 255)
    parent = existing
    for part in absolute.relative_to(existing).parts:
        size = len(os.fsencode(part))
        if size > name_max:
            raise UnusableWorkdirError(f"workdir name '{part[:24]}...' ({size} bytes, in {parent}) is too long: a name "
                                       f"on this file system has at most {name_max} bytes")
        parent = parent / part
    path_max = _pathconf(existing, "PC_PATH_MAX", 4096)
    if len(os.fsencode(str(absolute / LOCK_FILE))) >= path_max:
        raise UnusableWorkdirError(f"workdir {path}: the path is longer than the {path_max} bytes a path may have")
    if not existing.is_dir():
        where = "is a file," if existing == absolute else f"runs through {existing}, which is a file,"
        raise UnusableWorkdirError(f"workdir {path} {where} not a folder; give a folder for the run's files "
                                   "(made if missing)")
    if not os.access(existing, os.W_OK | os.X_OK):
        read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
        why = "is on a read-only file system" if read_only else "is not writable by this user"
        folder = "workdir " + str(path) if existing == absolute else f"workdir {path}: the folder {existing} it goes in"
        raise UnusableWorkdirError(f"{folder} {why}; give a workdir that can be written")
    return path


def _pathconf(path, name: str, default: int) -> int:
    try:
        return os.pathconf(path, name)
    except (OSError, ValueError):
        return default


def _lock_holder(fd: int) -> tuple[str, str] | None:
    """(PID, host) that the lock file names, or None when it names none (yet: a holder writes
    them just after it took the lock, so an empty file is read again for up to a second)."""
    for _ in range(20):
        words = os.pread(fd, 512, 0).decode("utf-8", "replace").split()
        if words:
            return words[0], (words[1] if len(words) > 1 else "an unknown host")
        time.sleep(0.05)
    return None


class WorkdirLock:
    """`with WorkdirLock(workdir):` one run per workdir, held for the run's whole life.

    The lock is an OS lock (`fcntl.flock`, exclusive) on `<workdir>/.lock`, whose file stays open
    while the run lasts. The kernel gives it to one open file at a time and releases it when its
    holder ends, however it ends (an exception, SIGKILL, a crash): a killed run's workdir is free
    again at once, and a second run started while one holds it stops at once with "workdir ...
    in use by PID N on HOST" (the holder writes its PID and host into the file; they are only
    for that message and the log: the lock itself does not depend on them). On release the file
    is removed; a contender that opened it just before locks a file no longer at the path, sees
    so, and tries again.

    What is guaranteed: at most one holder among all processes of one machine that see the same
    file system, whatever PID namespace or container they run in. On NFS, Linux clients turn
    flock into a whole-file POSIX lock arbitrated by the server, so runs on different hosts also
    exclude each other, provided the file system is mounted with locking (not `nolock` or
    `local_lock=flock`/`all`, under which the lock is local to each host); a host that dies holds
    its lock until the server notices and frees it (about 90 s by default on NFSv4). On other
    network file systems the guarantee is what their flock gives (some lock per host only).

    In a multi-process run (`jax.distributed`) only the writer (process 0, `is_writer`) takes
    it, for all of them; a process forked while it is held shares it.
    """

    def __init__(self, workdir):
        self.path = pathlib.Path(workdir) / LOCK_FILE
        self.held = False
        self._fd = None

    def __enter__(self):
        if not is_writer():
            return self
        check_workdir(self.path.parent)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_holder(fd)
                os.close(fd)
                who = f"PID {holder[0]} on {holder[1]}" if holder else "another process"
                raise WorkdirInUseError(f"workdir {self.path.parent} in use by {who} (lock file {self.path}); "
                                        "wait for it or stop it") from None
            except BaseException:
                os.close(fd)
                raise
            try:
                here = os.stat(self.path)
                mine = os.fstat(fd)
                current = (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)  # released and removed by its holder between our open and our lock
        left = _lock_holder_now(fd)
        if left:
            logging.warning("workdir %s: taking over the lock of %s, which ended without releasing it",
                            self.path.parent, left)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        self.held = True
        return self

    def __exit__(self, *exc):
        if self.held:
            self.path.unlink(missing_ok=True)  # while still locked: see the class docstring
            os.close(self._fd)
            self._fd = None
            self.held = False
        return False


def _lock_holder_now(fd: int) -> str:
    """What a lock file just taken names (left by a run that was killed), as 'PID N on HOST', or ''."""
    words = os.pread(fd, 512, 0).decode("utf-8", "replace").split()
    if not words:
        return ""
    return f"PID {words[0]}" + (f" on {words[1]}" if len(words) > 1 else "")
