"""Metrics as files that tools read, and progress a person can plan with.

`MetricsWriter` writes every log/eval record twice: one JSON line in `metrics.jsonl` and
TensorBoard scalars (tensorboardX, no TensorFlow) under `tb/`, with per-seed values in
`tb/seed_<s>/` so that TensorBoard overlays the seeds. `Progress` turns step counts into
elapsed time, a rate that leaves out compilation, and an ETA.
"""
from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Mapping, Optional, Sequence

import numpy as np
from tensorboardX import SummaryWriter

from distill_jax.training import rundir

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tb"


class MetricsWriter:
    """`write(step, scalars, per_seed)`: scalars shared by all seeds (lr, keep rate, images/s,
    means over seeds named '<x>_mean') and per-seed lists (loss, accuracy), as one JSON line
    and as TensorBoard scalars (`tb/` for the scalars, `tb/seed_<s>/` for each seed's value).

    On resume, `start_step` drops the lines a killed run wrote after its last checkpoint, so
    the file holds each step once. Only the writer process writes (`rundir.is_writer`, the
    default of `enabled`); on the others every method does nothing.
    """

    def __init__(self, workdir, seeds: Sequence[int], *, start_step: int = 0, enabled: Optional[bool] = None):
        self.enabled = rundir.is_writer() if enabled is None else enabled
        self.seeds = list(seeds)
        if not self.enabled:
            return
        workdir = pathlib.Path(workdir)
        self.path = workdir / METRICS_FILE
        kept = []
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    if json.loads(line)["step"] <= start_step:
                        kept.append(line)
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut by a kill
        self.path.write_text("".join(line + "\n" for line in kept))
        self._file = open(self.path, "a")
        self._tb = SummaryWriter(str(workdir / TB_DIR))
        self._tb_seeds = {s: SummaryWriter(str(workdir / TB_DIR / f"seed_{s}")) for s in self.seeds}

    def write(self, step: int, scalars: Mapping[str, float], per_seed: Optional[Mapping[str, Sequence[float]]] = None):
        if not self.enabled:
            return
        per_seed = {k: [rundir.finite(float(x)) for x in v] for k, v in (per_seed or {}).items()}
        record = {"step": int(step), **{k: rundir.finite(v) for k, v in scalars.items()}, **per_seed}
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        for name, value in scalars.items():
            if isinstance(value, (int, float, np.floating, np.integer)) and name != "epoch":
                self._tb.add_scalar(name, float(value), int(step))
        for name, values in per_seed.items():
            for seed, value in zip(self.seeds, values):
                if value is not None:
                    self._tb_seeds[seed].add_scalar(name, value, int(step))

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """An HWC or HW (grayscale) uint8 image, e.g. the grid of a distilled set."""
        if self.enabled:
            image = np.asarray(image)
            self._tb.add_image(tag, image, int(step), dataformats="HW" if image.ndim == 2 else "HWC")

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        for writer in (self._tb, *self._tb_seeds.values()):
            writer.close()


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
