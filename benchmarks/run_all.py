"""One command for the whole benchmark: the JAX train step beside the PyTorch reference.

    python benchmarks/run_all.py                   # CPU preset (this machine, about 10-15 min)
    python benchmarks/run_all.py --preset gpu      # accelerator preset: MFU, 5 seeds vmapped vs 5 PyTorch runs
    python benchmarks/run_all.py --preset gpu_device  # the same for ResNet-18 b100 only, in ~2 min (device run)
    python benchmarks/run_all.py --preset gpu_campaign  # ResNet-18 b100, 1/5/16/32 seeds, fp32 and bf16 (campaign)
    python benchmarks/run_all.py --preset layers   # one layer's forward + backward, JAX beside PyTorch (5 min)
    python benchmarks/run_all.py --preset smoke    # a few tiny cells: checks the machinery
    python benchmarks/run_all.py --groups convnet_b100 --repeats 5 --out my.json

Prints three tables (every cell; JAX / PyTorch; seeds per program) and writes all raw
figures as JSON (--out). Every cell runs in its own worker process, so JAX and PyTorch
never share a process (neither's idle thread pool competes with the other's step, and the
peak memory of a process is that cell's). A group's workers are first all built and
compiled, then stepped in turn, one step per cell per round, the order rotating each round:
a change in the machine's load then hits every cell of a group alike, and ratios are the
median of per-round ratios. Each step records wall time and process CPU time (all threads).

"Sequential" seeds are N x the one-seed step of the same round (on CPU), or, where a
`seq` cell exists (GPU preset), N one-seed programs really run one after another.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
_WHERE = "benchmarks/run_all.py"


# ----------------------------------------------------------------------------------------- worker side

def _worker_main() -> None:
    """Serve one cell over stdin/stdout (JSON lines): setup, step, memory. Library output goes to stderr."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.path.insert(0, HERE)
    prepared = None
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if request["op"] == "setup":
                if request["lib"] == "jax":
                    import train_step as lib
                    prepared = lib.PreparedStep(lib.StepConfig(**request["config"]))
                elif request["lib"] == "jax_layer":
                    import train_step as lib
                    prepared = lib.PreparedLayer(**request["config"])
                elif request["lib"] == "torch_layer":
                    import torch_reference as lib
                    t0 = time.perf_counter()
                    prepared = lib.PreparedTorchLayer(**request["config"])
                    prepared.setup_s = time.perf_counter() - t0
                else:
                    import torch_reference as lib
                    t0 = time.perf_counter()
                    prepared = lib.PreparedTorchStep(lib.TorchConfig(**request["config"]))
                    prepared.setup_s = time.perf_counter() - t0
                reply = {"info": prepared.info() if request["lib"].startswith("jax") else
                         {**prepared.info(), "compile_s": prepared.setup_s}}
            elif request["op"] == "step":
                wall, cpu = prepared.run()
                reply = {"wall": wall, "cpu": cpu}
            elif request["op"] == "memory":
                reply = {"memory": prepared.memory()}
            else:
                raise ValueError(f"unknown op {request['op']!r}")
            reply["ok"] = True
        except Exception as error:  # reported to the coordinator, which skips the cell
            reply = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        protocol.write(json.dumps(reply) + "\n")


# Several workers share one accelerator: JAX must not grab 75% of its memory up front in each.
WORKER_ENV = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}


class Worker:
    """A child process serving one cell."""

    def __init__(self, log, env: dict | None = None):
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1,
                                     env={**WORKER_ENV, **os.environ, **(env or {})})

    def ask(self, request: dict) -> dict:
        self.send(request)
        return self.receive()

    def send(self, request: dict) -> None:
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        except OSError:  # the worker died: receive() reports it
            pass

    def receive(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            return {"ok": False, "error": f"worker exited (code {self.proc.poll()}); see the worker log"}
        return json.loads(line)

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        except Exception:
            self.proc.kill()


# ----------------------------------------------------------------------------------------- plan

@dataclasses.dataclass
class Cell:
    label: str
    lib: str  # 'jax' | 'torch' | 'jax_layer' | 'torch_layer'
    config: dict
    env: dict = dataclasses.field(default_factory=dict)  # extra environment of the worker process


@dataclasses.dataclass
class Group:
    """Cells timed together (interleaved). compare: (jax label, torch label) pairs;
    scaling: (one-seed jax label, [vmapped labels], one-seed torch label or None), or a list of them."""

    name: str
    cells: list
    repeats: int
    compare: list = dataclasses.field(default_factory=list)
    scaling: tuple | None = None
    skip: str = ""
    warmup: int = 1  # untimed rounds first (0 only where one step costs minutes)
    parallel_build: bool = False  # build (compile) every cell at once: less wall time, compile_s inflated


def _jax(label, model, batch, env=None, **kw):
    return Cell(label, "jax", {"model": model, "batch": batch, **kw}, env or {})


def _torch(label, model, batch, env=None, **kw):
    return Cell(label, "torch", {"model": model, "batch": batch, **kw}, env or {})


# OpenMP threads that sleep at once instead of spinning: on a machine shared with other work, torch's
# default spin-wait burns CPU whenever its partner thread is descheduled (see benchmarks/README.md).
PASSIVE = {"OMP_WAIT_POLICY": "PASSIVE"}


def cpu_plan(repeats: int | None = None) -> list[Group]:
    """This machine: ConvNet and ResNet-18 (and ResNet-50 once) against PyTorch; seeds scaling, norm, DSA and
    KD costs on ConvNet, where a round is cheap. Rounds are few: a ResNet-18 step costs 8-20 CPU-seconds here."""
    r = repeats
    return [
        Group(
            "convnet_b100",
            [
                _jax("jax", "convnet", 100),
                _torch("torch", "convnet", 100),
                _torch("torch_cl", "convnet", 100, channels_last=True),
                _torch("torch_passive", "convnet", 100, env=PASSIVE),
                _jax("jax_nonorm", "convnet", 100, norm="none"),
                _torch("torch_nonorm", "convnet", 100, norm="none"),
                _jax("jax_dsa2", "convnet", 100, augment_k=2),
                _jax("jax_kd_dsa2", "convnet", 100, kd=True, augment_k=2),
            ],
            r or 3,
            compare=[("jax", "torch"), ("jax", "torch_cl"), ("jax", "torch_passive"), ("jax_nonorm", "torch_nonorm")],
        ),
        Group(
            "convnet_seeds_b100",
            [
                _jax("jax", "convnet", 100),
                _torch("torch", "convnet", 100),
                _jax("jax_s4", "convnet", 100, seeds=4),
                _jax("jax_s8", "convnet", 100, seeds=8),
            ],
            r or 2,
            compare=[("jax", "torch")],
            scaling=("jax", ["jax_s4", "jax_s8"], "torch"),
        ),
        Group(
            "convnet_b256",
            [_jax("jax", "convnet", 256), _torch("torch", "convnet", 256)],
            r or 3,
            compare=[("jax", "torch")],
        ),
        Group(
            "resnet18_b100",
            [
                _jax("jax", "resnet18", 100, norm="batch"),
                _torch("torch", "resnet18", 100, norm="batch"),
                _torch("torch_cl_passive", "resnet18", 100, norm="batch", channels_last=True, env=PASSIVE),
            ],
            r or 2,
            compare=[("jax", "torch"), ("jax", "torch_cl_passive")],
        ),
        Group(
            "resnet18_b256",
            [_jax("jax", "resnet18", 256, norm="batch"), _torch("torch", "resnet18", 256, norm="batch")],
            r or 1,
            compare=[("jax", "torch")],
            warmup=0,
        ),
        Group(
            "resnet50_b100",
            [_jax("jax", "resnet50", 100, norm="batch"), _torch("torch", "resnet50", 100, norm="batch")],
            r or 1,
            compare=[("jax", "torch")],
            warmup=0,
        ),
        Group(
            "resnet50_b256",
            [],
            0,
            skip="not run on CPU: ResNet-50 at batch 256 would take minutes per step "
            "(and per compile) on this shared 2-core machine, beyond the benchmark's 15-minute budget",
        ),
    ]


def gpu_plan(repeats: int | None = None) -> list[Group]:
    """Accelerators: every network at batch 100 and 256; 1, 4, 5, 8 seeds vmapped; 5 seeds one after another
    (JAX and PyTorch); KD + DSA. Torch cells fail cleanly (and are skipped) if torch has no CUDA."""
    groups = []
    for model in ("convnet", "resnet18", "resnet50"):
        norm = {} if model == "convnet" else {"norm": "batch"}
        for batch in (100, 256):
            cells = [_jax("jax", model, batch, **norm), _torch("torch", model, batch, device="cuda", **norm)]
            cells += [_jax(f"jax_s{n}", model, batch, seeds=n, **norm) for n in (4, 5, 8)]
            cells += [_jax("jax_seq5", model, batch, seeds=5, sequential=True, **norm),
                      _torch("torch_seq5", model, batch, seeds=5, device="cuda", **norm),
                      _jax("jax_kd_dsa2", model, batch, kd=True, augment_k=2, **norm)]
            groups.append(Group(f"{model}_b{batch}", cells, repeats or 20,
                                compare=[("jax", "torch"), ("jax_s5", "torch_seq5")],
                                scaling=("jax", ["jax_s4", "jax_s5", "jax_s8"], "torch")))
    return groups


def gpu_device_plan(repeats: int | None = None, *, toy: bool = False) -> list[Group]:
    """The device run's benchmark (scripts/gpu_device_run.sh), sized to end within 15 minutes: ResNet-18 at
    the paper's batch (100) only, 1, 3 (the table's) and 5 seeds vmapped, 5 seeds one after another in
    JAX and in PyTorch, all cells compiled at once. `toy`: the same cells as a tiny ConvNet on the CPU
    (the dry run that tests the machinery)."""
    if toy:
        model, batch, extra, device = "convnet", 4, {"width": 4, "size": 8}, "cpu"
    else:
        model, batch, extra, device = "resnet18", 100, {"norm": "batch"}, "cuda"
    cells = [_jax("jax", model, batch, **extra), _torch("torch", model, batch, device=device, **extra)]
    cells += [_jax(f"jax_s{n}", model, batch, seeds=n, **extra) for n in (3, 5)]
    cells += [_jax("jax_seq5", model, batch, seeds=5, sequential=True, **extra),
              _torch("torch_seq5", model, batch, seeds=5, device=device, **extra)]
    # XLA's grouped convolution for per-seed kernels under vmap, against the GPU default (one
    # convolution per seed, 'xla_per_seed'): the comparison that made the default
    cells += [_jax(f"jax_s{n}_grouped", model, batch, seeds=n, env={"DISTILL_JAX_CONV": "xla"}, **extra)
              for n in (3, 5)]
    return [Group(f"{model}_b{batch}", cells, repeats or (2 if toy else 20), parallel_build=True,
                  compare=[("jax", "torch"), ("jax_s5", "torch_seq5"), ("jax_s5_grouped", "torch_seq5")],
                  scaling=("jax", ["jax_s3", "jax_s5", "jax_s3_grouped", "jax_s5_grouped"], "torch"))]


CAMPAIGN_SEEDS = (1, 5, 16, 32)
# Steps per call of the campaign's JAX cells: the loop's default runs up to the next log line (every 50 steps).
CAMPAIGN_STEPS_PER_CALL = 50


def bf16_available() -> bool:
    """Does this version's config take train.compute_dtype = 'bfloat16'? (read from the schema alone)"""
    sys.path.insert(0, os.path.dirname(HERE))
    from distill_jax import defaults  # imports nothing of the package
    return "compute_dtype" in defaults.default_config().train


def gpu_campaign_plan(repeats: int | None = None, *, toy: bool = False, bf16: bool | None = None) -> list[Group]:
    """The device campaign's measurement (scripts/gpu_campaign.sh), one group compiled at once: ResNet-18
    at the paper's batch (100) with 1, 5, 16, 32 seeds vmapped, CAMPAIGN_STEPS_PER_CALL steps per call
    (the loop's program, `multi_seed.make_chunk`; times per step), beside PyTorch's best setting for one
    network (channels_last); the same in bfloat16 (compute_dtype) beside PyTorch's bf16 autocast, where
    the config has train.compute_dtype. N PyTorch networks one after another are N x its one-network
    step. `toy`: a tiny ConvNet on the CPU, 1 and 2 seeds (1 in bfloat16): the dry run."""
    bf16 = bf16_available() if bf16 is None else bf16
    if toy:
        model, batch, extra, device, seeds = "convnet", 4, {"width": 4, "size": 8}, "cpu", {"float32": (1, 2),
                                                                                         "bfloat16": (1,)}
        per_call = 2
    else:
        model, batch, extra, device = "resnet18", 100, {"norm": "batch"}, "cuda"
        seeds = {"float32": CAMPAIGN_SEEDS, "bfloat16": CAMPAIGN_SEEDS}
        per_call = CAMPAIGN_STEPS_PER_CALL
    cells, compare, scaling = [], [], []
    for dtype in ("float32", "bfloat16") if bf16 else ("float32",):
        suffix = "_bf16" if dtype != "float32" else ""
        jax_extra = dict(extra, compute_dtype=dtype) if suffix else extra
        cells += [_jax(f"jax_s{n}{suffix}", model, batch, seeds=n, steps_per_call=per_call, **jax_extra)
                  for n in seeds[dtype]]
        cells.append(_torch(f"torch_cl{suffix}", model, batch, device=device, channels_last=True,
                            **(dict(extra, autocast=dtype) if suffix else extra)))
        compare.append((f"jax_s1{suffix}", f"torch_cl{suffix}"))
        scaling.append((f"jax_s1{suffix}", [f"jax_s{n}{suffix}" for n in seeds[dtype][1:]], f"torch_cl{suffix}"))
    return [Group(f"{model}_b{batch}", cells, repeats or (1 if toy else 10), parallel_build=True, compare=compare,
                  scaling=scaling)]


def smoke_plan(repeats: int | None = None) -> list[Group]:
    """Tiny cells (width 4, batch 4, 8 px) that exercise every path in seconds."""
    tiny = {"width": 4, "size": 8}
    return [Group("smoke", [_jax("jax", "convnet", 4, **tiny), _jax("jax_s2", "convnet", 4, seeds=2, **tiny),
                            _torch("torch", "convnet", 4, **tiny)], repeats or 1,
                  compare=[("jax", "torch")], scaling=("jax", ["jax_s2"], "torch"))]


def layers_plan(repeats: int | None = None) -> list[Group]:
    """One layer's forward + backward at the shapes of the CPU networks (batch 100), JAX beside PyTorch:
    which layers make up the train-step ratio. `jax_xla` is XLA's own convolution (DISTILL_JAX_CONV=xla)."""
    def pair(prefix, layer, shape, features=0):
        config = {"layer": layer, "shape": shape, "features": features}
        cells = [Cell(f"jax_{prefix}", "jax_layer", config), Cell(f"torch_{prefix}", "torch_layer", config)]
        compare = [(f"jax_{prefix}", f"torch_{prefix}")]
        if layer == "conv3x3":
            cells.append(Cell(f"jax_xla_{prefix}", "jax_layer", config, {"DISTILL_JAX_CONV": "xla"}))
            compare.append((f"jax_xla_{prefix}", f"torch_{prefix}"))
        return cells, compare

    groups = []
    for name, parts in (
        ("layers_convnet", [("conv_in3", "conv3x3", [100, 32, 32, 3], 128), ("conv", "conv3x3", [100, 16, 16, 128]),
                            ("in", "instancenorm", [100, 32, 32, 128])]),
        ("layers_resnet18", [("conv", "conv3x3", [100, 32, 32, 64]), ("bn", "batchnorm", [100, 32, 32, 64]),
                             ("in", "instancenorm", [100, 32, 32, 64])]),
    ):
        cells, compare = [], []
        for prefix, layer, shape, *features in parts:
            c, p = pair(prefix, layer, shape, *features)
            cells += c
            compare += p
        groups.append(Group(name, cells, repeats or 5, compare=compare))
    return groups


PLANS = {
    "cpu": cpu_plan,
    "gpu": gpu_plan,
    "smoke": smoke_plan,
    "layers": layers_plan,
    "gpu_device": gpu_device_plan,
    "gpu_device_toy": lambda repeats=None: gpu_device_plan(repeats, toy=True),
    "gpu_campaign": gpu_campaign_plan,
    "gpu_campaign_toy": lambda repeats=None: gpu_campaign_plan(repeats, toy=True),
}


# ----------------------------------------------------------------------------------------- running

def run_group(group: Group, log) -> dict:
    """Builds every cell in its own worker, then steps them round-robin: warm-up round, `repeats` timed rounds."""
    result = {"name": group.name, "repeats": group.repeats, "warmup": group.warmup, "cells": {},
              "load_before": list(os.getloadavg())}
    t0 = time.perf_counter()
    live = {}
    workers = [Worker(log, cell.env) for cell in group.cells] if group.parallel_build else []
    for worker, cell in zip(workers, group.cells, strict=False):  # no workers: nothing built ahead
        worker.send({"op": "setup", "lib": cell.lib, "config": cell.config})
    for i, cell in enumerate(group.cells):
        if workers:
            worker = workers[i]
            reply = worker.receive()
        else:
            worker = Worker(log, cell.env)
            reply = worker.ask({"op": "setup", "lib": cell.lib, "config": cell.config})
        entry = {"lib": cell.lib, "config": cell.config, "env": cell.env, "walls": [], "cpus": []}
        if reply["ok"]:
            entry["info"] = reply["info"]
            live[cell.label] = worker
        else:
            entry["error"] = reply["error"]
            worker.close()
        result["cells"][cell.label] = entry
        print(f"  built {group.name}/{cell.label}: " + (f"{reply['info']['compile_s']:.1f} s" if reply["ok"]
                                                        else reply["error"]), flush=True)
    labels = list(live)
    for round_index in range(1 - group.warmup, group.repeats + 1):  # rounds < 1 are warm-up
        shift = round_index % max(1, len(labels))
        for label in labels[shift:] + labels[:shift]:
            if label not in live:
                continue
            reply = live[label].ask({"op": "step"})
            entry = result["cells"][label]
            if not reply["ok"]:
                entry["error"] = reply["error"]
                live.pop(label).close()
            elif round_index > 0:
                entry["walls"].append(reply["wall"])
                entry["cpus"].append(reply["cpu"])
        result.setdefault("load_rounds", []).append(os.getloadavg()[0])
        print(f"  {group.name}: round {round_index}/{group.repeats} done, load {os.getloadavg()[0]:.1f}", flush=True)
    for label, worker in live.items():
        reply = worker.ask({"op": "memory"})
        result["cells"][label]["memory"] = reply.get("memory", {})
        worker.close()
    result["load_after"] = list(os.getloadavg())
    result["seconds"] = time.perf_counter() - t0
    return result


# ----------------------------------------------------------------------------------------- summary (pure)

def _median(values):
    return statistics.median(values) if values else None


def paired_ratio(a: list[float], b: list[float]) -> float | None:
    """Median over rounds of a[i] / b[i]: both cells of a round saw the same load."""
    pairs = [x / y for x, y in zip(a, b, strict=True) if y > 0]
    return _median(pairs)


def cell_row(group: str, label: str, entry: dict) -> dict:
    """One cell's figures: medians, images/s, MFU (wall and per CPU-second), compile, memory."""
    config, info = entry["config"], entry.get("info", {})
    seeds, batch = config.get("seeds", 1), config.get("batch") or config["shape"][0]
    wall, cpu = _median(entry["walls"]), _median(entry["cpus"])
    row = {"group": group, "cell": label, "lib": entry["lib"], "model": config.get("model") or config.get("layer"),
           "batch": batch,
           "seeds": seeds, "wall_s": wall, "cpu_s": cpu, "images_per_s": batch * seeds / wall if wall else None,
           "compile_s": info.get("compile_s"), "flops_per_step": info.get("flops_per_step"),
           "peak_rss_mb": entry.get("memory", {}).get("peak_rss_mb"),
           "peak_device_mb": entry.get("memory", {}).get("peak_device_mb"), "error": entry.get("error"),
           "mfu": None, "mfu_cpu": None}
    flops, peak = info.get("flops_per_step"), info.get("peak_flops")
    if flops and peak and wall:
        row["mfu"] = flops / wall / peak
        cores = info.get("cores") or 1
        if cpu:
            row["mfu_cpu"] = flops / cpu / (peak / cores)
    return row


def compare_rows(group: dict, pairs) -> list[dict]:
    rows = []
    for jax_label, torch_label in pairs:
        a, b = group["cells"].get(jax_label), group["cells"].get(torch_label)
        if not a or not b or not a["walls"] or not b["walls"]:
            rows.append({"group": group["name"], "jax": jax_label, "torch": torch_label, "wall_ratio": None,
                         "cpu_ratio": None, "note": "missing: " + "; ".join(
                             filter(None, [(a or {}).get("error"), (b or {}).get("error")])) or "not run"})
            continue
        rows.append(
            {
                "group": group["name"],
                "jax": jax_label,
                "torch": torch_label,
                "jax_wall_s": _median(a["walls"]),
                "torch_wall_s": _median(b["walls"]),
                "jax_cpu_s": _median(a["cpus"]),
                "torch_cpu_s": _median(b["cpus"]),
                "wall_ratio": paired_ratio(a["walls"], b["walls"]),
                "cpu_ratio": paired_ratio(a["cpus"], b["cpus"]),
            }
        )
    return rows


def scaling_rows(group: dict, scaling) -> list[dict]:
    """Seeds per program: N seeds vmapped vs the same N one after another (N x one-seed step, or a seq cell)."""
    if not scaling:
        return []
    base_label, vmapped_labels, torch_label = scaling
    cells = group["cells"]
    base, torch_base = cells.get(base_label), cells.get(torch_label) if torch_label else None
    rows = []
    for label in vmapped_labels:
        cell = cells.get(label)
        if not cell or not cell["walls"] or not base or not base["walls"]:
            continue
        n = cell["config"]["seeds"]
        seq = cells.get(f"jax_seq{n}")
        if seq and seq["walls"]:
            seq_walls, seq_cpus, how = seq["walls"], seq["cpus"], "measured"
        else:
            seq_walls, seq_cpus, how = (
                [n * w for w in base["walls"]],
                [n * c for c in base["cpus"]],
                f"{n} x 1-seed step",
            )
        row = {
            "group": group["name"],
            "cell": label,
            "seeds": n,
            "vmapped_wall_s": _median(cell["walls"]),
            "vmapped_cpu_s": _median(cell["cpus"]),
            "sequential_wall_s": _median(seq_walls),
            "sequential_cpu_s": _median(seq_cpus),
            "sequential_is": how,
            "speedup_wall": paired_ratio(seq_walls, cell["walls"]),
            "speedup_cpu": paired_ratio(seq_cpus, cell["cpus"]),
            "vs_torch_sequential_wall": None,
            "vs_torch_sequential_cpu": None,
        }
        if torch_base and torch_base["walls"]:
            tseq = cells.get(f"torch_seq{n}")
            t_walls = tseq["walls"] if tseq and tseq["walls"] else [n * w for w in torch_base["walls"]]
            t_cpus = tseq["cpus"] if tseq and tseq["walls"] else [n * c for c in torch_base["cpus"]]
            row["vs_torch_sequential_wall"] = paired_ratio(t_walls, cell["walls"])  # > 1: JAX vmapped faster
            row["vs_torch_sequential_cpu"] = paired_ratio(t_cpus, cell["cpus"])
        rows.append(row)
    return rows


def _f(value, spec="7.3f"):
    return format(value, spec) if value is not None else "-"


def format_tables(cells: list[dict], compares: list[dict], scalings: list[dict]) -> str:
    lines = ["", "All cells (median of the timed rounds; CPU = process CPU seconds, all threads)",
             f"{'group':14s} {'cell':13s} {'seeds':>5s} {'wall s':>8s} {'CPU s':>8s} {'img/s':>8s} {'compile s':>9s} "
             f"{'GFLOP':>8s} {'MFU %':>6s} {'MFU/CPU %':>9s} {'peak MB':>8s}"]
    for r in cells:
        if r["error"] and r["wall_s"] is None:
            lines.append(f"{r['group']:14s} {r['cell']:13s} {r['seeds']:5d}  failed: {r['error'][:80]}")
            continue
        lines.append(
            f"{r['group']:14s} {r['cell']:13s} {r['seeds']:5d} {_f(r['wall_s'], '8.3f')} {_f(r['cpu_s'], '8.3f')} "
            f"{_f(r['images_per_s'], '8.1f')} {_f(r['compile_s'], '9.1f')} "
            f"{_f(r['flops_per_step'] and r['flops_per_step'] / 1e9, '8.1f')} "
            f"{_f(r['mfu'] and 100 * r['mfu'], '6.2f')} "
            f"{_f(r['mfu_cpu'] and 100 * r['mfu_cpu'], '9.2f')} {_f(r['peak_device_mb'] or r['peak_rss_mb'], '8.0f')}"
        )
    lines += ["", "JAX / PyTorch (median of per-round ratios; > 1 means JAX is slower)",
              f"{'group':14s} {'jax':13s} {'torch':13s} {'JAX wall':>8s} {'PT wall':>8s} {'ratio':>6s} "
              f"{'JAX CPU':>8s} {'PT CPU':>8s} {'ratio':>6s}"]
    for r in compares:
        if r["wall_ratio"] is None:
            lines.append(f"{r['group']:14s} {r['jax']:13s} {r['torch']:13s}  {r['note'][:80]}")
            continue
        lines.append(f"{r['group']:14s} {r['jax']:13s} {r['torch']:13s} {_f(r['jax_wall_s'], '8.3f')} "
                     f"{_f(r['torch_wall_s'], '8.3f')} {_f(r['wall_ratio'], '6.2f')} {_f(r['jax_cpu_s'], '8.3f')} "
                     f"{_f(r['torch_cpu_s'], '8.3f')} {_f(r['cpu_ratio'], '6.2f')}")
    if scalings:
        lines += [
            "",
            "Seeds per program: N vmapped in one program vs N one after another (speed-up > 1: vmap wins)",
            f"{'group':14s} {'cell':16s} {'N':>3s} {'vmap wall':>9s} {'seq wall':>9s} {'speedup':>7s} {'vmap CPU':>9s} "
            f"{'seq CPU':>9s} {'speedup':>7s} {'vs PT seq (wall/CPU)':>21s}  sequential is",
        ]
        for r in scalings:
            lines.append(f"{r['group']:14s} {r['cell']:16s} {r['seeds']:3d} {_f(r['vmapped_wall_s'], '9.3f')} "
                         f"{_f(r['sequential_wall_s'], '9.3f')} {_f(r['speedup_wall'], '7.2f')} "
                         f"{_f(r['vmapped_cpu_s'], '9.3f')} {_f(r['sequential_cpu_s'], '9.3f')} "
                         f"{_f(r['speedup_cpu'], '7.2f')} {_f(r['vs_torch_sequential_wall'], '10.2f')} "
                         f"{_f(r['vs_torch_sequential_cpu'], '10.2f')}  {r['sequential_is']}")
    return "\n".join(lines)


def _borrow_flops(cells: dict) -> None:
    """PyTorch cells have no cost analysis: they take the FLOPs per seed and the device peak of the plain
    JAX cell of the same network, batch and norm in their group (same model, same arithmetic)."""
    def key(config):  # a torch cell under bf16 autocast matches the JAX cell computing in bfloat16
        dtype = config.get("compute_dtype") or config.get("autocast") or "float32"
        return config["model"], config["batch"], config.get("norm"), config.get("size", 32), config.get("width"), dtype

    plain = {}
    for entry in cells.values():
        c, info = entry["config"], entry.get("info", {})
        if entry["lib"] == "jax" and info.get("flops_per_step") and not c.get("kd") and not c.get("augment_k"):
            plain[key(c)] = {"flops_per_seed": info["flops_per_step"] / c.get("seeds", 1),
                             "peak_flops": info.get("peak_flops"), "cores": info.get("cores")}
    for entry in cells.values():
        found = plain.get(key(entry["config"])) if entry["lib"] == "torch" else None
        if found and "info" in entry:
            entry["info"].setdefault("flops_per_step", found["flops_per_seed"] * entry["config"].get("seeds", 1))
            entry["info"].setdefault("peak_flops", found["peak_flops"])
            entry["info"].setdefault("cores", found["cores"])


def summarise(groups: list[dict], plan: list[Group]) -> dict:
    by_name = {g.name: g for g in plan}
    cells, compares, scalings = [], [], []
    for group in groups:
        if group.get("skipped"):
            continue
        spec = by_name[group["name"]]
        _borrow_flops(group["cells"])
        cells += [cell_row(group["name"], label, entry) for label, entry in group["cells"].items()]
        compares += compare_rows(group, spec.compare)
        for scaling in spec.scaling if isinstance(spec.scaling, list) else [spec.scaling]:
            scalings += scaling_rows(group, scaling)
    return {"cells": cells, "compare": compares, "scaling": scalings}


def _write_json(path: str, record: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, path)


def _children_cpu_s() -> float:
    """CPU seconds (user + system) of the finished worker processes: the benchmark's own machine time."""
    import resource
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _versions() -> dict:
    """Library versions, read by the workers' own imports would cost seconds; importlib.metadata is enough."""
    from importlib import metadata
    out = {"python": sys.version.split()[0]}
    for name in ("jax", "jaxlib", "flax", "optax", "torch", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _machine() -> dict:
    sys.path.insert(0, HERE)
    from train_step import read_cpu_info, usable_cores  # light: imports jax but starts no backend
    info = read_cpu_info()
    return {"cpu_model": info["model"], "cpu_ghz": info["ghz"], "cores": usable_cores(), "os_cpu_count": os.cpu_count(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "distill_jax_conv": os.environ.get("DISTILL_JAX_CONV", "")}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu", choices=sorted(PLANS))
    p.add_argument("--groups", default="", help="comma list of group names to run (default: all of the preset)")
    p.add_argument("--repeats", type=int, default=0, help="timed rounds per group (0 = the preset's)")
    p.add_argument("--budget-cpu-min", type=float, default=15.0,
                   help="skip the groups left once the workers have used this many CPU minutes (load-independent)")
    p.add_argument("--budget-wall-min", type=float, default=60.0, help="... or once this many wall minutes have passed")
    p.add_argument("--out", default="", help="JSON path (default benchmarks/results_<preset>.json)")
    p.add_argument("--log", default="", help="workers' stderr (default: a temporary file, named at the end)")
    args = p.parse_args(argv)
    if args.repeats < 0:
        raise SystemExit(f"{_WHERE}: --repeats must be >= 0, got {args.repeats}")
    plan = PLANS[args.preset](args.repeats or None)
    wanted = [g for g in args.groups.split(",") if g]
    unknown = sorted(set(wanted) - {g.name for g in plan})
    if unknown:
        raise SystemExit(f"{_WHERE}: --groups: unknown group(s) {unknown}; preset {args.preset!r} has "
                         f"{[g.name for g in plan]}")
    plan = [g for g in plan if not wanted or g.name in wanted]
    out = args.out or os.path.join(HERE, f"results_{args.preset}.json")
    log_path = args.log or tempfile.mkstemp(prefix="bench_workers_", suffix=".log")[1]
    start = time.perf_counter()
    groups = []
    with open(log_path, "a") as log:
        for group in plan:
            elapsed_min, cpu_min = (time.perf_counter() - start) / 60, _children_cpu_s() / 60
            reason = group.skip
            if not reason and (cpu_min > args.budget_cpu_min or elapsed_min > args.budget_wall_min):
                reason = (f"time budget: {cpu_min:.1f} of {args.budget_cpu_min} CPU min, "
                          f"{elapsed_min:.1f} of {args.budget_wall_min} wall min used")
            if reason:
                print(f"skip {group.name}: {reason}", flush=True)
                groups.append({"name": group.name, "skipped": reason})
                continue
            print(f"group {group.name} ({len(group.cells)} cells, {group.repeats} timed rounds)", flush=True)
            groups.append(run_group(group, log))
            partial = summarise(groups[-1:], plan)
            print(format_tables(partial["cells"], partial["compare"], partial["scaling"]), flush=True)
            _write_json(out, {"preset": args.preset, "partial": True, "groups": groups})  # survives a later crash
    summary = summarise(groups, plan)
    record = {"preset": args.preset, "versions": _versions(), "machine": _machine(), "groups": groups, **summary,
              "total_seconds": time.perf_counter() - start, "workers_cpu_seconds": _children_cpu_s()}
    _write_json(out, record)
    print("\n=== all groups ===" + format_tables(summary["cells"], summary["compare"], summary["scaling"]))
    for g in groups:
        if g.get("skipped"):
            print(f"skipped {g['name']}: {g['skipped']}")
    print(f"\nJSON: {out}   worker log: {log_path}   total {record['total_seconds'] / 60:.1f} wall min, "
          f"{record['workers_cpu_seconds'] / 60:.1f} CPU min")
    return record


if __name__ == "__main__":
    if "--worker" in sys.argv[1:]:
        _worker_main()
    else:
        main()
