"""A run's life in its workdir: the one skeleton of the training loop and the distill mode.

Both go through the same stages, owned here; what they train, log and record is theirs:

- open (`Run`, a context manager): paths in the config made absolute, the workdir's recorded
  config checked against this one before anything is written, the workdir lock held until the end;
- a finished run (`Run.finished_results`): results.json of a run that finished, for the caller to
  decide whether it stands;
- resume (`Run.resume`): the checkpointer and the newest verified checkpoint of this run (its
  identity and inputs checked), with the history it saved up to that step;
- accept (`Run.accept`): only now does the run write into its workdir (config.json first);
- metrics (`Run.metrics`) from the resumed step, and a `StepTimer` that times the first step
  (compilation) apart from the rest;
- `due(step, every, end)`: every periodic action (log, evaluate, checkpoint) happens every
  `every` steps and at the end;
- save (`Run.save`): checkpoints that carry the run's identity and inputs;
- close: checkpoints and metrics closed (quietly after an error, whose own message is the one to
  report), and `Run.finish` writes results.json with the `software` record (`software_versions`).
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import pathlib
import platform
import time
from typing import Any, Callable, Iterable, Optional, Sequence

import jax

from distill_jax.defaults import default_config
from distill_jax.training import checkpoint as ckpt_lib
from distill_jax.training import metrics as metrics_lib
from distill_jax.training import workdir_io

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex", "numpy", "ml-collections")


def software_versions() -> dict:
    """Python and the numerical packages' installed versions ('absent' when not installed): the
    `software` record of every results file and run record."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def due(step: int, every: int, end: int) -> bool:
    """Whether a periodic action falls on `step`: every `every` steps (or epochs), and at `end`."""
    return step % every == 0 or step == end


def report(message: str, *args) -> None:
    """Logs a line of a run's progress or results on the writer process only (`workdir_io.is_writer`):
    the other processes compute the same numbers, and their lines would only repeat its own."""
    if workdir_io.is_writer():
        logging.info(message, *args, stacklevel=2)


class StepTimer:
    """Wall time of a run's steps from `done` to `total`, the first one apart: it compiles the step
    (`compile_seconds`). After it, `lap()` gives the steps and seconds since the previous lap (the
    speed of a log line) and adds them to the run's totals (`seconds_per_step`); `paused()` leaves
    work between steps out (a checkpoint); `line()` is the elapsed time and ETA (`Progress`)."""

    def __init__(self, total: int, done: int):
        self.progress = metrics_lib.Progress(total, done)
        self._since, self._steps, self._done = None, 0, done
        self.timed_steps, self.timed_seconds = 0, 0.0

    @property
    def compile_seconds(self) -> Optional[float]:
        return self.progress.compile_seconds

    def step(self, done: int, state) -> bool:
        """Called after the steps up to `done` (one or several since the previous call) with the
        state they returned. The first call waits for the state (compilation and the first steps
        end there), starts the timing and returns True."""
        first = self._since is None
        if first:
            jax.block_until_ready(state)
            self.progress.started(done)
            self._since = time.perf_counter()
        else:
            self._steps += done - self._done
        self._done = done
        self.progress.update(done)
        return first

    def lap(self) -> tuple[int, float]:
        """(steps, seconds) timed since the previous lap (or the first step); the next lap starts now."""
        now = time.perf_counter()
        steps, seconds = self._steps, now - self._since
        if steps:
            self.timed_steps, self.timed_seconds = self.timed_steps + steps, self.timed_seconds + seconds
        self._since, self._steps = now, 0
        return steps, seconds

    @contextlib.contextmanager
    def paused(self):
        """What runs inside is no step time."""
        start = time.perf_counter()
        try:
            yield
        finally:
            if self._since is not None:
                self._since += time.perf_counter() - start

    def seconds_per_step(self) -> Optional[float]:
        """Mean seconds per step over all laps, the first (compiling) step left out; None before any."""
        return self.timed_seconds / self.timed_steps if self.timed_steps else None

    def line(self) -> str:
        return self.progress.line()


class Run:
    """`with Run(config, workdir) as run:` one run of `config` in `workdir`, from its identity
    check to results.json (the stages are in the module's docstring).

    `run.config` is `config` with absolute paths (what the run records); `run.defaults` the
    package's default config, against which a config recorded before a field existed is compared.
    A workdir that holds a run of another config stops it before the lock is taken or anything
    written (`workdir_io.check_identity`); a live run in the workdir stops it too (`workdir_io.WorkdirLock`).
    An error anywhere closes what the run holds open, quietly, and releases the lock.
    """

    def __init__(self, config, workdir, *, defaults=None):
        self.config = workdir_io.with_absolute_paths(config)
        self.workdir = pathlib.Path(workdir)
        self.defaults = default_config() if defaults is None else defaults
        self.identity = workdir_io.identity(self.config)
        self.inputs: Optional[dict] = None
        self.checkpointer: Optional[ckpt_lib.Checkpointer] = None
        self.writer: Optional[metrics_lib.MetricsWriter] = None
        self._lock = workdir_io.WorkdirLock(self.workdir)

    def __enter__(self) -> "Run":
        workdir_io.check_identity(self.workdir, self.config, self.defaults)
        self._lock.__enter__()
        return self

    def __exit__(self, exc_type, exc, traceback) -> bool:
        try:
            if exc_type is None:
                self.close()
            else:
                workdir_io.close_after_error(self.checkpointer, self.writer)
        finally:
            self._lock.__exit__(exc_type, exc, traceback)
        return False

    def finished_results(self) -> Optional[dict]:
        """The results.json of a run in the workdir that says it finished, else None (also when
        there is none or it cannot be read)."""
        try:
            results = json.loads((self.workdir / workdir_io.RESULTS_FILE).read_text())
        except (OSError, ValueError):
            return None
        return results if isinstance(results, dict) and results.get("finished") else None

    def resume(self, abstract_state: Any, *, inputs: Optional[dict] = None) -> Optional[tuple[int, Any, list]]:
        """Opens the run's checkpoints and restores the newest usable one: (step, state, the
        history saved with it up to that step), or None for a fresh run. `abstract_state` gives the
        state's structure, shapes, dtypes and shardings; `inputs` (`workdir_io.run_inputs`), when
        given, what the run trains on: a checkpoint of other inputs is refused, and every
        checkpoint saved (`save`) records them."""
        self.inputs = inputs
        self.checkpointer = ckpt_lib.Checkpointer(self.workdir / workdir_io.CHECKPOINT_DIR,
                                                  max_to_keep=self.config.keep_checkpoints)
        restored = self.checkpointer.restore_latest(abstract_state, self.identity, self.defaults, inputs)
        if restored is None:
            return None
        step, state, meta = restored
        return step, state, [h for h in meta.get("history", []) if h["step"] <= step]

    def accept(self, files: Optional[dict] = None) -> None:
        """The run is accepted: only now does it write into its workdir. Writes config.json and
        `files` ({name: JSON content}), on the writer process."""
        workdir_io.write_json(self.workdir / workdir_io.CONFIG_FILE, self.config.to_dict())
        for name, content in (files or {}).items():
            workdir_io.write_json(self.workdir / name, content)

    def metrics(self, seeds: Sequence[int], start_step: int, *,
                images: Optional[Callable[[], Iterable[tuple]]] = None) -> metrics_lib.MetricsWriter:
        """The run's metrics writer from `start_step` on (`metrics.MetricsWriter`), closed with the run."""
        self.writer = metrics_lib.MetricsWriter(self.workdir, seeds, start_step=start_step, images=images)
        return self.writer

    def save(self, step: int, state, meta: dict) -> None:
        """A checkpoint of `state` at `step`, with `meta`, the run's identity and its inputs."""
        record = {"identity": self.identity, **({"inputs": self.inputs} if self.inputs is not None else {}), **meta}
        self.checkpointer.save(step, state, record)

    def close(self) -> None:
        """Closes the checkpoints and the metrics files (a failure, such as a full disk, is raised)."""
        for resource in (self.checkpointer, self.writer):
            if resource is not None:
                resource.close()
        self.checkpointer = self.writer = None

    def finish(self, results: dict) -> dict:
        """Closes the run and writes `results` with its `software` record as results.json (on the
        writer process); returns them."""
        self.close()
        results["software"] = software_versions()
        workdir_io.write_json(self.workdir / workdir_io.RESULTS_FILE, results)
        return results
