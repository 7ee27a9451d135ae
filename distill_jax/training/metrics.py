"""Metrics as files that tools read, and progress a person can plan with.

`MetricsWriter` writes every log/eval record twice: one JSON line in `metrics.jsonl` and
TensorBoard scalars under `tb/`, with per-seed values in `tb/seed_<s>/` so that TensorBoard
overlays the seeds. Both are flushed to disk at every record, so a killed run loses nothing it
logged; on resume the event files are rewritten from `metrics.jsonl` (which a kill leaves
whole up to its last line), so the curves of a preempted run are complete and hold each step
once. `Progress` turns step counts into elapsed time, a rate that leaves out compilation, and
an ETA.
"""
from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
from tensorboardX import summary as tb_summary
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto import event_pb2

from distill_jax import atomic
from distill_jax.training import workdir_io

EVENT_FILE_PREFIX = "events.out.tfevents."
NOT_SCALARS = ("step", "epoch", "wall_time")  # record fields that are no curve


def _records(path: pathlib.Path) -> list[tuple[str, dict]]:
    """(line, record) of every whole record of a metrics.jsonl; a line a kill cut, or one that is no
    JSON object, is left out."""
    if not path.is_file():
        return []
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        if isinstance(record, dict):
            kept.append((line, record))
    return kept


def read_metrics(run) -> list[dict]:
    """The records of a run's metrics.jsonl in order ([] when it has none): the one reader of the
    file, for the writer's resume and for the reports."""
    return [record for _, record in _records(pathlib.Path(run) / workdir_io.METRICS_FILE)]


class _EventFile:
    """One TensorBoard event file in `directory`, written synchronously (no queue, no thread:
    what `flush` returns from is on disk)."""

    def __init__(self, directory: pathlib.Path):
        directory.mkdir(parents=True, exist_ok=True)
        self._writer = EventsWriter(str(directory / "events"))

    def add(self, summary, step: int, wall_time: float) -> None:
        self._writer.write_event(event_pb2.Event(summary=summary, step=int(step), wall_time=float(wall_time)))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class MetricsWriter:
    """`write(step, scalars, per_seed)`: scalars shared by all seeds (lr, keep rate, images/s,
    means over seeds named '<x>_mean') and per-seed lists (loss, accuracy), as one JSON line
    (with its `wall_time`) and as TensorBoard scalars (`tb/` for the scalars, `tb/seed_<s>/` for
    each seed's value).

    On resume, `start_step` drops the lines a killed run wrote after its last checkpoint, so
    the file holds each step once; at the first record the event files are rebuilt from the
    lines kept (and from `images`, a function giving `(tag, step, image, wall_time)` of the
    pictures logged before, which `metrics.jsonl` does not hold). A writer that records nothing
    (a finished run rerun) leaves `tb/` as it was. Only the writer process writes
    (`workdir_io.is_writer`, the default of `enabled`); on the others every method does nothing.
    """

    def __init__(self, workdir, seeds: Sequence[int], *, start_step: int = 0, enabled: Optional[bool] = None,
                 images: Optional[Callable[[], Iterable[tuple]]] = None):
        self.enabled = workdir_io.is_writer() if enabled is None else enabled
        self.seeds = list(seeds)
        if not self.enabled:
            return
        self.workdir = pathlib.Path(workdir)
        self.path = self.workdir / workdir_io.METRICS_FILE
        self._images = images
        self._file = None
        existing = self.path.read_text() if self.path.is_file() else ""
        kept = [(line, record) for line, record in _records(self.path)
                if isinstance(record.get("step"), (int, float)) and record["step"] <= start_step]
        self._kept = [record for _, record in kept]
        text = "".join(line + "\n" for line, _ in kept)
        if text != existing:
            workdir_io.write_text(self.path, text)

    def _open(self) -> None:
        """Opens metrics.jsonl for appending and rebuilds tb/ from what it holds (once)."""
        if self._file is not None:
            return
        tb = self.workdir / workdir_io.TB_DIR
        if tb.is_dir():  # a killed run's events: whatever of them reached the disk
            for old in tb.rglob(EVENT_FILE_PREFIX + "*"):
                old.unlink()
        self._tb = _EventFile(tb)
        self._tb_seeds = {s: _EventFile(workdir_io.seed_dir(tb, s)) for s in self.seeds}
        for record in self._kept:
            self._add_events(record)
        for tag, step, image, wall_time in (self._images() if self._images is not None else ()):
            self._add_image(tag, image, step, wall_time)
        self._kept = []
        self._flush_events()
        self._file = open(self.path, "a")

    def _add_events(self, record: dict) -> None:
        """A metrics.jsonl record as TensorBoard scalars: numbers to tb/, lists (one value per
        seed) to tb/seed_<s>/; nulls (a speed not measured, a non-finite value) are left out."""
        step, wall_time = int(record["step"]), record.get("wall_time") or time.time()
        for name, value in record.items():
            if name in NOT_SCALARS or value is None or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)):
                self._tb.add(tb_summary.scalar(name, float(value)), step, wall_time)
            elif isinstance(value, list):
                for seed, v in zip(self.seeds, value, strict=True):
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        self._tb_seeds[seed].add(tb_summary.scalar(name, float(v)), step, wall_time)

    def _add_image(self, tag: str, image: np.ndarray, step: int, wall_time: float) -> None:
        image = np.asarray(image)
        self._tb.add(tb_summary.image(tag, image, dataformats="HW" if image.ndim == 2 else "HWC"), step, wall_time)

    def _flush_events(self) -> None:
        for events in (self._tb, *self._tb_seeds.values()):
            events.flush()

    def write(self, step: int, scalars: Mapping[str, float], per_seed: Optional[Mapping[str, Sequence[float]]] = None):
        if not self.enabled:
            return
        self._open()
        per_seed = {k: [workdir_io.finite(float(x)) for x in v] for k, v in (per_seed or {}).items()}
        record = {"step": int(step), **{k: workdir_io.finite(v) for k, v in scalars.items()}, **per_seed,
                  "wall_time": round(time.time(), 3)}
        try:
            self._file.write(json.dumps(record, allow_nan=False) + "\n")
            self._file.flush()
        except OSError as err:
            renamed = atomic.named(err, self.path)
            if renamed is err:
                raise
            raise renamed from err
        try:
            self._add_events(record)
            self._flush_events()
        except OSError as err:
            renamed = atomic.named(err, self.workdir / workdir_io.TB_DIR)
            if renamed is err:
                raise
            raise renamed from err

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """An HWC or HW (grayscale) uint8 image, e.g. the grid of a distilled set."""
        if self.enabled:
            self._open()
            self._add_image(tag, image, step, time.time())
            self._tb.flush()

    def close(self) -> None:
        if not self.enabled or self._file is None:
            return
        self._file.close()
        for events in (self._tb, *self._tb_seeds.values()):
            events.close()
        self._file = None


def format_duration(seconds: Optional[float]) -> str:
    """'1:02:03' (or '?' when unknown)."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Elapsed time and ETA for `total` units (steps) of which `done` are done. The first unit
    (compilation) is timed apart and left out of the rate: `started(done)` after it finishes."""

    def __init__(self, total: int, done: int = 0):
        self.total, self.start_time = total, time.perf_counter()
        self.timed_from, self.timed_since = None, None
        self.compile_seconds = None
        self.done = done

    def started(self, done: int) -> None:
        """Called once the first (compiling) unit has finished: the rate counts from here."""
        now = time.perf_counter()
        self.compile_seconds = now - self.start_time
        self.timed_from, self.timed_since, self.done = done, now, done

    def update(self, done: int) -> None:
        self.done = done

    def elapsed(self) -> float:
        return time.perf_counter() - self.start_time

    def rate(self) -> Optional[float]:
        """Units per second since compilation, or None before any timed unit."""
        if self.timed_since is None or self.done <= self.timed_from:
            return None
        return (self.done - self.timed_from) / max(time.perf_counter() - self.timed_since, 1e-9)

    def eta(self) -> Optional[float]:
        rate = self.rate()
        return None if rate is None else (self.total - self.done) / rate

    def line(self) -> str:
        return f"elapsed {format_duration(self.elapsed())} eta {format_duration(self.eta())}"


def summarize(per_seed) -> dict:
    """Mean and sample standard deviation (ddof=1; 0 for one value) of accuracies in percent."""
    values = [float(a) for a in per_seed]
    if not values:
        raise ValueError("metrics.summarize: no accuracies to summarise")
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return {"mean": float(np.mean(values)), "std": std, "std_ddof": 1, "per_seed": values}
