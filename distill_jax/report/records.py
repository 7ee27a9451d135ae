"""What every run record carries besides its numbers (software versions and the device), and
the numbers read back from a cell's runs.

A table without the library versions and the card that produced it cannot be compared
with another table later; these functions make that record cheap to write everywhere.
Reading a finished or running cell back (`run_dirs`, `last_train_accuracy`, `merge_seed_results`)
lives here too, so that `compare` and the results record read the same files the same way (each
run's metrics.jsonl through `metrics.read_metrics`, its one reader).
"""
from __future__ import annotations

import os
import pathlib
import platform
from typing import Optional, Sequence

import numpy as np

from distill_jax.training import metrics, workdir_io
from distill_jax.training.runlife import software_versions  # noqa: F401 - the software record, owned there


def device_description() -> dict:
    """The JAX backend and its devices (e.g. 'cpu' x 1, or 'NVIDIA H100 80GB HBM3' x 1), and the host."""
    import jax

    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    return {"backend": jax.default_backend(), "device_kinds": kinds, "device_count": len(devices),
            "host": platform.machine(), "processor": platform.processor() or "unknown"}


# /proc/cpuinfo flags that decide which kernels the numerical libraries run (vector units):
# the record keeps these, not the whole list.
CPU_FLAG_PREFIXES = ("sse", "ssse", "avx", "fma", "f16c", "amx")


def cpu_description(cpuinfo: str) -> dict:
    """The CPU as /proc/cpuinfo's text names it: model name, family and model numbers, and the
    vector-unit flags (`CPU_FLAG_PREFIXES`) of its first processor entry."""
    first = cpuinfo.split("\n\n", 1)[0]
    fields = {}
    for line in first.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    flags = sorted(f for f in fields.get("flags", "").split() if f.startswith(CPU_FLAG_PREFIXES))
    return {"model": fields.get("model name", "unknown"), "family": fields.get("cpu family", "unknown"),
            "model_number": fields.get("model", "unknown"), "flags": flags}


def hardware_description() -> dict:
    """What ran this process: the JAX backend and its device kinds (e.g. 'NVIDIA H200' x 1), and
    the host's CPU (`cpu_description` of /proc/cpuinfo where the system has one) and core count."""
    described = device_description()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = cpu_description(f.read())
    except OSError:
        cpu = {"model": platform.processor() or "unknown", "family": "unknown", "model_number": "unknown",
               "flags": []}
    return {"backend": described["backend"], "device_kinds": described["device_kinds"],
            "device_count": described["device_count"], "cpu": cpu, "cpu_count": os.cpu_count() or 0,
            "machine": described["host"]}


def best_over_training(history: list[dict]) -> dict | None:
    """Per-seed maximum test accuracy over all evaluations: model selection ON THE TEST SET,
    as the reference code reports it. Only for comparison with such numbers, labelled so."""
    if not history:
        return None
    curves = np.asarray([h["test_accuracy"] for h in history], dtype=np.float64)  # (evals, seeds)
    out = metrics.summarize(curves.max(axis=0))
    out["selection"] = "selected on the test set"
    return out


def merge_seed_results(results: list[dict]) -> dict:
    """One record from runs of one seed each (same config apart from the seed): the per-seed
    curves side by side, the final accuracy over all seeds (None unless every run finished)."""
    if not results:
        raise ValueError("records.merge_seed_results: no runs to merge")
    epochs = [[h["epoch"] for h in r["history"]] for r in results]
    common = sorted(set(epochs[0]).intersection(*map(set, epochs[1:])))
    by_epoch = [{h["epoch"]: h for h in r["history"]} for r in results]
    history = []
    for epoch in common:
        entries = [b[epoch] for b in by_epoch]
        merged = {k: v for k, v in entries[0].items() if k not in ("test_accuracy", "train_loss")}
        merged["train_loss"] = float(np.mean([e["train_loss"] for e in entries]))
        merged["test_accuracy"] = [a for e in entries for a in e["test_accuracy"]]
        history.append(merged)
    finished = all(r.get("finished") for r in results)
    finals = [a for r in results for a in (r["final_accuracy"]["per_seed"] if r.get("final_accuracy") else [])]
    diverged = [r["diverged"] for r in results if r.get("diverged")]
    return {"finished": finished, "seeds": [s for r in results for s in r["seeds"]], "history": history,
            "final_accuracy": metrics.summarize(finals) if finished else None,
            "diverged": {"epoch": min(d["epoch"] for d in diverged), "step": min(d["step"] for d in diverged),
                         "seeds": [s for d in diverged for s in d["seeds"]]} if diverged else None,
            "data": results[0].get("data"), "preprocessing": results[0].get("preprocessing")}


# ----------------------------------------------------------------------------- a cell's runs

def run_dirs(cell_dir: pathlib.Path) -> list[pathlib.Path]:
    """The runs of a cell: its `seed_<s>` dirs (split seeds; in seed order), else the cell dir itself."""
    return workdir_io.seed_dirs(cell_dir) or [pathlib.Path(cell_dir)]


def last_train_accuracy(runs: Sequence[pathlib.Path]) -> Optional[dict]:
    """The training accuracy (%) of the last step each run logged (metrics.jsonl: the accuracy on
    that step's augmented batch; results.json does not keep it), over `runs` in order:
    `per_seed` (the runs' values side by side), their `mean`, the `epoch` and `step` of that
    last step (the earliest over the runs), and `every_seed`: False when a run logged none or
    logged null for a seed (a diverged one), whose values are then left out. None when no run
    logged a value."""
    per_seed, epochs, steps = [], [], []
    every_seed = True
    for run in runs:
        logged = [e for e in metrics.read_metrics(run) if isinstance(e.get("train_accuracy"), list)]
        if not logged:
            every_seed = False
            continue
        last = logged[-1]
        values = [float(a) for a in last["train_accuracy"] if a is not None]
        every_seed = every_seed and len(values) == len(last["train_accuracy"])
        per_seed += values
        epochs.append(int(last.get("epoch", 0)))
        steps.append(int(last.get("step", 0)))
    if not per_seed:
        return None
    return {"per_seed": per_seed, "mean": float(sum(per_seed) / len(per_seed)), "epoch": min(epochs),
            "step": min(steps), "every_seed": every_seed}
