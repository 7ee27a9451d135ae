"""What every run record carries besides its numbers: software versions and the device.

A table without the library versions and the card that produced it cannot be compared
with another table later; these helpers make that record cheap to write everywhere.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform

import numpy as np

from distill_jax.training import metrics

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex", "numpy", "ml-collections")


def software_versions() -> dict:
    """Python and the numerical packages' installed versions ('absent' when not installed)."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


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
