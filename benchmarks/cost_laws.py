"""Cost laws of training on this CPU: how the train step and a test-set evaluation scale, and what
the paper's table would take at full length here.

    python benchmarks/cost_laws.py                      # every axis (tens of minutes on 2 cores)
    python benchmarks/cost_laws.py --axes ipc,network --repeats 2
    python benchmarks/cost_laws.py --toy                # tiny cells: checks the machinery in seconds

Why: a full-length run of the paper's table is far beyond a 2-core CPU, and how far is a
question of a few measured numbers. This script measures them and says which law each
estimate rests on.

Axes, one at a time around a base cell (ResNet-18 at its default width, batch 100, one seed,
batch norm, the Full recipe's step: Lion, DropPath, improved shortcut, KD from a ConvNet
teacher, 2 DSA ops): images per class (1, 10, 50 on CIFAR-10: batch min(100, 10 x ipc), and the
epoch of ipc x 10 images), seeds vmapped in one program (1, 2, 4, 8), width (8-64) and network.
The step is train_step.PreparedStep (the project's jitted, seed-vmapped train step); each cell
also times the project's eval step (distill_jax.training.steps.make_eval_step, vmapped over
seeds as training runs it) on one batch of data.eval_batch_size images, scaled to the
10,000 CIFAR-10 test images.

What bounds a cell is a *roofline estimate*: peak FLOP/s from cores x clock x FLOPs/cycle
(train_step.cpu_peak_flops), memory bandwidth measured once here (a large jitted elementwise
add), FLOPs and bytes from XLA's cost analysis of the step (train_step.model_cost; its bytes are
those of the unfused program, an upper bound). A cell keeping fewer than 1.3 cores busy is
"one thread", whatever its arithmetic intensity.

The full-length table is an extrapolation from measured steps, never a measurement: steps x
the predicted step time (the network's batch law, the base cell's seed law, the KD cost
measured once; a ConvNet teacher's own step loses only its KD teacher's forward, taken from that
network's evaluation time) + evaluations x the measured evaluation time. `--report` redoes the
laws and the table from a saved JSON.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import train_step as ts  # noqa: E402  (puts the repository on sys.path)
from distill_jax import config as config_lib  # noqa: E402
from distill_jax import models  # noqa: E402
from distill_jax.experiments import recipes  # noqa: E402
from distill_jax.training import steps  # noqa: E402

_WHERE = "benchmarks/cost_laws.py"
AXES = ("ipc", "seeds", "width", "network")
DATASET = "cifar10"
NUM_CLASSES = recipes.DATASETS[DATASET]["num_classes"]
TEST_IMAGES = 10_000  # CIFAR-10's test split: what one evaluation of a training run reads
ONE_THREAD_BELOW = 1.3  # cores busy under this: the cell runs mostly on one thread
TEACHER_NETWORKS = {"frepo": "convnet_frepo", "mtt": "convnet"}  # recipes.teacher_model, at depth 3
NETWORKS = ("convnet", "convnet_frepo", "resnet18", "resnet50", "vgg11", "alexnet")
VECTOR_EXTENSIONS = (("AVX", "avx"), ("AVX2", "avx2"), ("FMA", "fma"), ("AVX-512F", "avx512f"),
                     ("AVX-512 VNNI", "avx512_vnni"), ("AVX-512 BF16", "avx512_bf16"), ("AMX-TILE", "amx_tile"),
                     ("AMX-BF16", "amx_bf16"), ("AMX-INT8", "amx_int8"))


# ----------------------------------------------------------------------------------------- plan

@dataclasses.dataclass(frozen=True)
class Plan:
    """What to measure. `ipc_networks`: networks whose batch law is measured (the ipc axis); the others
    borrow the base network's law, scaled to their own step at the base batch."""

    base: ts.StepConfig
    axes: tuple
    ipcs: tuple
    seeds: tuple
    widths: tuple
    networks: tuple
    ipc_networks: tuple
    repeats: int
    eval_repeats: int
    eval_batch: int
    bandwidth_mb: int
    toy: bool


def base_config(toy: bool) -> ts.StepConfig:
    """The base cell: the Full recipe's step on ResNet-18 (batch norm, as FRePo sets train).

    The toy cell is a width-8 ConvNet on 16 px images without DSA: the DSA ops' switch alone
    costs about 10 s of XLA compile per program on this machine, the whole toy's budget."""
    defaults = config_lib.default_config()
    if toy:
        return ts.StepConfig("convnet", batch=20, seeds=1, size=16, width=8, norm="batch", optimizer="lion",
                             droppath=True, improved_shortcut=True, kd=True, augment_k=0)
    return ts.StepConfig("resnet18", batch=defaults.train.batch_size, seeds=1, size=32, width=None, norm="batch",
                         optimizer="lion", droppath=True, improved_shortcut=True, kd=True, augment_k=2)


def make_plan(axes, *, toy: bool = False, repeats: int = 0, eval_repeats: int = 0, networks=None,
              ipc_networks=None, seeds=None, widths=None) -> Plan:
    axes = tuple(axes)
    unknown = sorted(set(axes) - set(AXES))
    if unknown or not axes:
        raise ValueError(f"{_WHERE}: --axes must be a comma list of {AXES}, got {','.join(axes)!r}")
    networks = tuple(networks or (("convnet", "alexnet") if toy else NETWORKS))
    bad = sorted(set(networks) - set(models.MODEL_NAMES))
    if bad:
        raise ValueError(f"{_WHERE}: --networks: unknown network(s) {bad}; expected some of {models.MODEL_NAMES}")
    base = base_config(toy)
    if ipc_networks is None:  # the batch law of every measured network, unless tiny
        ipc_networks = (base.model,) if toy or "network" not in axes else tuple(dict.fromkeys((base.model,) + networks))
    bad = sorted(set(ipc_networks) - set(models.MODEL_NAMES))
    if bad:
        raise ValueError(f"{_WHERE}: --ipc-networks: unknown network(s) {bad}")
    defaults = config_lib.default_config()
    for name, value in (("--repeats", repeats), ("--eval-repeats", eval_repeats)):
        if not (isinstance(value, int) and value >= 0):
            raise ValueError(f"{_WHERE}: {name} must be an int >= 0 (0 = the default), got {value!r}")
    return Plan(base=base, axes=axes, ipcs=recipes.IPCS, seeds=tuple(seeds or ((1, 2) if toy else (1, 2, 4, 8))),
                widths=tuple(widths or ((4, 8) if toy else (8, 16, 32, 64))), networks=networks,
                ipc_networks=tuple(ipc_networks),
                repeats=repeats or (1 if toy else 3), eval_repeats=eval_repeats or 1,
                eval_batch=100 if toy else defaults.data.eval_batch_size, bandwidth_mb=32 if toy else 512, toy=toy)


def ipc_batch(ipc: int, train_batch: int) -> tuple[int, int]:
    """(batch, steps per epoch) of a set of ipc x 10 images, as training.loop does: the batch is
    min(train.batch_size, images) and an epoch drops the remainder."""
    images = ipc * NUM_CLASSES
    batch = min(train_batch, images)
    return batch, images // batch


def plan_cells(plan: Plan) -> list[dict]:
    """Every cell of the requested axes, with its StepConfig; the base cell's KD-off twin comes last
    (the KD cost the extrapolation subtracts). Cells with equal configs share one measurement."""
    b = plan.base
    cells = []

    def add(axis, value, config, **extra):
        cells.append({"axis": axis, "value": value, "config": config, **extra})

    if "ipc" in plan.axes:
        for network in plan.ipc_networks:
            for ipc in plan.ipcs:
                batch, per_epoch = ipc_batch(ipc, b.batch)
                add("ipc", ipc, dataclasses.replace(b, model=network, batch=batch), ipc=ipc, steps_per_epoch=per_epoch)
    if "seeds" in plan.axes:
        for seeds in plan.seeds:
            add("seeds", seeds, dataclasses.replace(b, seeds=seeds))
    if "width" in plan.axes:
        for width in plan.widths:  # the teacher's width follows (train_step.build_program)
            add("width", width, dataclasses.replace(b, width=width))
    if "network" in plan.axes:
        for network in plan.networks:
            add("network", network, dataclasses.replace(b, model=network))
    add("kd", "off", dataclasses.replace(b, kd=False))
    return cells


# ----------------------------------------------------------------------------------------- machine

def cpu_description(path: str = "/proc/cpuinfo") -> dict:
    """Model name, family/model/stepping and vector extensions: what a CPU figure depends on."""
    info = ts.read_cpu_info(path)
    ids = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("cpu family", "model", "stepping", "vendor_id") and key not in ids:
                    ids[key] = value.strip()
    except OSError:
        pass
    cores = ts.usable_cores()
    peak = ts.cpu_peak_flops(cores, info["ghz"], info["flags"]) if info["ghz"] else None
    return {"model_name": info["model"], "vendor": ids.get("vendor_id"), "family": ids.get("cpu family"),
            "model": ids.get("model"), "stepping": ids.get("stepping"), "ghz": info["ghz"], "cores": cores,
            "vector_extensions": [name for name, flag in VECTOR_EXTENSIONS if flag in info["flags"]],
            "flops_per_cycle": ts.flops_per_cycle(info["flags"]), "peak_flops": peak}


def measure_bandwidth(megabytes: int, repeats: int = 3) -> dict:
    """Memory bandwidth of this machine: a jitted x + 1 on float32 arrays, reading and writing
    `megabytes` in all; bytes moved / median wall. Shared cores make it a lower bound."""
    n = megabytes * 2**20 // 8  # read n floats, write n floats
    add = jax.jit(lambda v: v + 1.0, donate_argnums=0)  # in place: no fresh pages to fault in
    x = jax.block_until_ready(add(jnp.ones((n,), jnp.float32)))
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        x = jax.block_until_ready(add(x))
        walls.append(time.perf_counter() - t0)
    del x
    wall = statistics.median(walls)
    return {"bytes": 8 * n, "wall_s": wall, "walls": walls, "bytes_per_s": 8 * n / wall}


def classify_bound(cores_busy, flops, bytes_accessed, peak_flops, bandwidth) -> dict:
    """Roofline estimate of what limits a step: 'one thread' (< 1.3 cores busy), else 'memory' if moving
    its bytes at the measured bandwidth takes longer than its FLOPs at peak, else 'compute'."""
    out = {"compute_s": flops / peak_flops if flops and peak_flops else None,
           "memory_s": bytes_accessed / bandwidth if bytes_accessed and bandwidth else None,
           "intensity": flops / bytes_accessed if flops and bytes_accessed else None,
           "balance": peak_flops / bandwidth if peak_flops and bandwidth else None}
    if cores_busy is not None and cores_busy < ONE_THREAD_BELOW:
        out["bound"] = "one thread"
    elif out["compute_s"] is None or out["memory_s"] is None:
        out["bound"] = "unknown"
    else:
        out["bound"] = "memory" if out["memory_s"] > out["compute_s"] else "compute"
    return out


# ----------------------------------------------------------------------------------------- measuring

class PreparedEval:
    """The project's eval step (steps.make_eval_step), vmapped over seeds as training.loop runs it,
    compiled for one batch of `batch` random images; `run()` times one call."""

    def __init__(self, config: ts.StepConfig, state: dict, batch: int):
        model = ts.build_network(config)
        rng = np.random.default_rng(1)
        self.batch = {"image": jnp.asarray(rng.normal(size=(batch, config.size, config.size, config.channels)),
                                           jnp.float32),
                      "label": jnp.asarray(rng.integers(0, 10, batch), jnp.int32), "mask": jnp.ones(batch, jnp.float32)}
        self.params, self.batch_stats = state["params"], state["batch_stats"]
        t0 = time.perf_counter()
        self.compiled = jax.jit(jax.vmap(steps.make_eval_step(model), in_axes=(0, 0, None))).lower(
            self.params, self.batch_stats, self.batch).compile()
        self.compile_s = time.perf_counter() - t0

    def run(self) -> tuple[float, float]:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(self.compiled(self.params, self.batch_stats, self.batch))
        return time.perf_counter() - wall0, time.process_time() - cpu0


def resolved_width(config: ts.StepConfig) -> int:
    return config.width or models.default_option(config.model, "width")


def eval_key(config: ts.StepConfig) -> tuple:
    """Evaluation does not depend on the batch, KD, DSA or optimiser: cells that differ only there share it."""
    return (config.model, resolved_width(config), config.norm, config.droppath, config.improved_shortcut,
            config.seeds, config.size, config.channels)


def measure_program(config: ts.StepConfig, plan: Plan, evals: dict, machine: dict) -> dict:
    """Compile, one warm-up step, `repeats` timed steps; then the test-set evaluation (once per eval_key)."""
    prepared = ts.PreparedStep(config)
    prepared.run()
    walls, cpus = zip(*(prepared.run() for _ in range(plan.repeats)), strict=True)
    out = {"compile_s": prepared.compile_s, "flops": prepared.flops, "bytes_accessed": prepared.bytes_accessed,
           "num_parameters": prepared.num_parameters,
           **ts.summarise_times(config, prepared.flops, machine["peak_flops"], machine["cores"], list(walls),
                                list(cpus))}
    out["cores_busy"] = out["cpu_s"] / out["step_s"] if out["step_s"] > 0 else None
    out["roofline"] = classify_bound(out["cores_busy"], out["flops"], out["bytes_accessed"], machine["peak_flops"],
                                     machine["bandwidth"])
    key = eval_key(config)
    if key not in evals:
        evaluation = PreparedEval(config, prepared.states[0], plan.eval_batch)
        evaluation.run()
        e_walls, e_cpus = zip(*(evaluation.run() for _ in range(plan.eval_repeats)), strict=True)
        wall, cpu = statistics.median(e_walls), statistics.median(e_cpus)
        evals[key] = {"eval_compile_s": evaluation.compile_s, "eval_batch": plan.eval_batch, "eval_s": wall,
                      "eval_cpu_s": cpu, "eval_s_all": list(e_walls),
                      "eval_test_s": wall * TEST_IMAGES / plan.eval_batch, "eval_test_images": TEST_IMAGES}
        del evaluation
    out.update(evals[key])
    out["peak_rss_mb"] = prepared.memory()["peak_rss_mb"]
    del prepared
    gc.collect()
    return out


def cell_label(cell: dict) -> str:
    c = cell["config"]
    return f"{cell['axis']}={cell['value']} {c.model} w{resolved_width(c)} b{c.batch} s{c.seeds}"


def _progress(text: str) -> None:
    print(f"[cost_laws] {text}", file=sys.stderr, flush=True)


def _jsonable_cell(cell: dict) -> dict:
    return {**{k: v for k, v in cell.items() if k != "config"}, "config": dataclasses.asdict(cell["config"]),
            "network": cell["config"].model, "width": resolved_width(cell["config"]), "batch": cell["config"].batch,
            "seeds": cell["config"].seeds}


def measure_cells(plan: Plan, machine: dict, checkpoint=None) -> list[dict]:
    """Measures each distinct program once, in plan order; a failing program is recorded and skipped."""
    done, evals, out = {}, {}, []
    for cell in plan_cells(plan):
        config = cell["config"]
        if config not in done:
            try:
                done[config] = measure_program(config, plan, evals, machine)
            except Exception as error:  # e.g. out of memory: the other cells still count
                done[config] = {"error": f"{type(error).__name__}: {error}"}
        result = {**cell, **done[config]}
        if "steps_per_epoch" in cell and "step_s" in result:
            result["epoch_s"] = cell["steps_per_epoch"] * result["step_s"]
        out.append(result)
        if "error" in result:
            _progress(f"{cell_label(cell)}: FAILED {result['error']}")
        else:
            _progress(f"{cell_label(cell)}: compile {result['compile_s']:.1f} s, step wall {result['step_s']:.3f} s, "
                      f"CPU {result['cpu_s']:.3f} s, cores {result['cores_busy']:.2f}, "
                      f"bound {result['roofline']['bound']} "
                      f"(roofline estimate), intensity {_f(result['roofline']['intensity'], '.1f')} FLOP/B, "
                      f"eval {TEST_IMAGES // 1000}k {result['eval_test_s']:.1f} s")
        if checkpoint:
            checkpoint([_jsonable_cell(c) for c in out])
    return [_jsonable_cell(c) for c in out]


# ----------------------------------------------------------------------------------------- laws

def fit_linear(xs, ys) -> dict:
    """Least-squares y = a + b x through the measured points (two distinct x at least)."""
    x, y = np.asarray(xs, float), np.asarray(ys, float)
    if x.shape != y.shape or len(set(x.tolist())) < 2:
        raise ValueError(f"{_WHERE}: a linear law needs points at two different x at least, got x={list(xs)}")
    b, a = np.polyfit(x, y, 1)
    residual = y - (a + b * x)
    return {"a": float(a), "b": float(b), "points": [[float(u), float(v)] for u, v in zip(x, y, strict=True)],
            "max_rel_residual": float(np.max(np.abs(residual) / np.maximum(np.abs(y), 1e-12)))}


def law_at(law: dict, x: float) -> float:
    return law["a"] + law["b"] * x


def fit_laws(cells: list[dict], base: ts.StepConfig) -> dict:
    """Step time against batch per network (ipc axis), step and evaluation time against seeds (seeds
    axis), each network's step and evaluation at the base batch, and the KD cost per image and seed."""
    ok = [c for c in cells if "step_s" in c]
    laws = {"batch": {}, "seeds_step": None, "seeds_eval": None, "network_step": {}, "network_eval": {},
            "kd": None, "base_network": base.model, "base_batch": base.batch}
    for network in dict.fromkeys(c["network"] for c in ok if c["axis"] == "ipc"):
        points = [(c["batch"], c["step_s"]) for c in ok if c["axis"] == "ipc" and c["network"] == network]
        if len({p[0] for p in points}) >= 2:
            laws["batch"][network] = fit_linear(*zip(*points, strict=True))
    seeds = [c for c in ok if c["axis"] == "seeds"]
    if len({c["seeds"] for c in seeds}) >= 2:
        laws["seeds_step"] = fit_linear([c["seeds"] for c in seeds], [c["step_s"] for c in seeds])
        laws["seeds_eval"] = fit_linear([c["seeds"] for c in seeds], [c["eval_test_s"] for c in seeds])
    for c in ok:  # a network at the base batch, one seed and its default (or the base) width
        if (c["batch"] == base.batch and c["seeds"] == 1 and c["config"]["width"] == base.width
                and c["config"]["kd"] and c["axis"] in ("network", "ipc", "seeds")):
            laws["network_step"].setdefault(c["network"], c["step_s"])
            laws["network_eval"].setdefault(c["network"], c["eval_test_s"])
    kd_off = [c for c in ok if c["axis"] == "kd"]
    if kd_off and base.model in laws["network_step"]:
        delta = laws["network_step"][base.model] - kd_off[0]["step_s"]
        laws["kd"] = {"on_s": laws["network_step"][base.model], "off_s": kd_off[0]["step_s"], "delta_s": delta,
                      "per_image_seed_s": max(delta, 0.0) / (base.batch * base.seeds)}
    return laws


def predict_step(laws: dict, network: str, batch: int, seeds: int, kd: bool, teacher: str = "convnet"):
    """Predicted wall seconds of one step, and the notes saying which laws it used; (None, reason) if the
    network was not measured. Measured steps include a ConvNet teacher's forward: taken out without KD,
    scaled by the teachers' evaluation times for another teacher (ConvNet-FRePo)."""
    notes = []
    base_law = laws["batch"].get(laws["base_network"])
    if network in laws["batch"]:
        one = law_at(laws["batch"][network], batch)
        notes.append(f"batch law of {network}")
    elif network in laws["network_step"] and base_law:
        one = laws["network_step"][network] * law_at(base_law, batch) / law_at(base_law, laws["base_batch"])
        notes.append(f"{network} at batch {laws['base_batch']} x {laws['base_network']}'s batch law")
    elif network in laws["network_step"] and batch == laws["base_batch"]:
        one = laws["network_step"][network]
        notes.append(f"{network} measured at batch {batch}")
    else:
        return None, f"{network} not measured"
    factor = _ratio(law_at(laws["seeds_step"], seeds), law_at(laws["seeds_step"], 1)) if laws["seeds_step"] else None
    if factor is not None and factor > 0:
        notes.append(f"seed law x{factor:.2f}")
    else:  # no seeds axis, or a law bent below zero by noise
        factor = float(seeds)
        notes.append(f"seeds taken as linear x{seeds}")
    step = one * factor
    kd_cost = laws["kd"]["per_image_seed_s"] * batch * seeds if laws["kd"] else None
    convnet_eval = laws["network_eval"].get("convnet")
    if not kd and network in TEACHER_NETWORKS.values() and convnet_eval:
        # A ConvNet's own step is smaller than the KD on/off difference measured on ResNet-18 (which
        # also moves that program's scheduling): take out only the teacher's forward, from its evaluation.
        forward = convnet_eval / TEST_IMAGES * batch * seeds
        step -= forward
        notes.append(f"- ConvNet teacher's forward {forward:.3g} s (its evaluation time per image)")
    elif kd_cost is None:
        notes.append("KD cost not measured")
    elif not kd:
        step -= kd_cost
        notes.append(f"- KD {kd_cost:.3g} s")
    elif teacher != "convnet":
        ratio = _ratio(laws["network_eval"].get(teacher), laws["network_eval"].get("convnet"))
        if ratio is None:
            notes.append(f"{teacher} teacher's forward taken as the ConvNet's")
        else:
            step += kd_cost * (ratio - 1)
            notes.append(f"{teacher} teacher x{ratio:.2f} the ConvNet's forward")
    return max(step, 0.0), "; ".join(notes)


def predict_eval(laws: dict, network: str, seeds: int):
    """Wall seconds of one test-set evaluation of `seeds` vmapped networks; None if not measured."""
    one = laws["network_eval"].get(network)
    if one is None:
        return None
    factor = _ratio(law_at(laws["seeds_eval"], seeds), law_at(laws["seeds_eval"], 1)) if laws["seeds_eval"] else None
    return one * (factor if factor is not None and factor > 0 else seeds)


def _ratio(a, b):
    return a / b if a and b else None


# ----------------------------------------------------------------------------------------- extrapolation

def evaluations(epochs: int, every: int) -> int:
    """Test-set evaluations of a run: every `every` epochs and at the last (training.loop)."""
    return epochs // every + (1 if epochs % every else 0)


def full_length_seconds(epochs: int, steps_per_epoch: int, step_s: float, evals: int, eval_s: float) -> float:
    return epochs * steps_per_epoch * step_s + evals * eval_s


def _paper_config(model: str, method: str, ipc: int, variant: str):
    """recipes.paper_config; should it refuse (no data root), the same recipe on a bare base config."""
    try:
        return recipes.paper_config(model, method, DATASET, ipc, variant)
    except Exception:
        c = recipes.base_config(DATASET, 3)
        c.model.name = model
        c.model.norm = models.norm_for_set(method)
        return recipes.apply_variant(c, variant, model, "")


def table_rows() -> list[dict]:
    """The paper's table: per set (FRePo, MTT x IPC 1, 10, 50), the ConvNet teacher and the four
    networks x five variants, with what their configs say."""
    rows = []
    for method in recipes.METHODS:
        for ipc in recipes.IPCS:
            configs = [("teacher", TEACHER_NETWORKS[method], recipes.teacher_config(method, DATASET, ipc))]
            configs += [(variant, model, _paper_config(model, method, ipc, variant))
                        for model in recipes.TEST_NETWORKS for variant in recipes.VARIANTS]
            for variant, network, c in configs:
                if c.model.name != network:
                    raise ValueError(f"{_WHERE}: config field 'model.name' is {c.model.name!r}, expected {network!r}")
                rows.append({"method": method, "ipc": ipc, "set": recipes.set_name(method, DATASET, ipc),
                             "network": network, "variant": variant, "images": ipc * NUM_CLASSES,
                             "epochs": int(c.train.epochs), "batch_size": int(c.train.batch_size),
                             "seeds": int(c.num_seeds), "eval_every_epochs": int(c.eval_every_epochs),
                             "kd": bool(c.train.kd.enabled), "width": c.model.width, "norm": c.model.norm,
                             "droppath": bool(c.model.droppath)})
    return rows


def extrapolate(laws: dict, rows: list[dict]) -> dict:
    """Hours of every row at full length: steps x predicted step + evaluations x evaluation time."""
    out, total, missing = [], 0.0, 0
    for row in rows:
        batch = min(row["batch_size"], row["images"])
        per_epoch = row["images"] // batch
        step_s, notes = predict_step(laws, row["network"], batch, row["seeds"], row["kd"],
                                     TEACHER_NETWORKS[row["method"]])
        eval_s = predict_eval(laws, row["network"], row["seeds"])
        evals = evaluations(row["epochs"], row["eval_every_epochs"])
        r = {**row, "batch": batch, "steps_per_epoch": per_epoch, "steps": row["epochs"] * per_epoch,
             "evaluations": evals, "step_s": step_s, "eval_s": eval_s, "notes": notes, "hours": None}
        if step_s is not None and eval_s is not None:
            seconds = full_length_seconds(row["epochs"], per_epoch, step_s, evals, eval_s)
            r.update(train_hours=r["steps"] * step_s / 3600, eval_hours=evals * eval_s / 3600, hours=seconds / 3600)
            total += seconds / 3600
        else:
            missing += 1
        out.append(r)
    return {"rows": out, "total_hours": total, "rows_not_measured": missing,
            "note": "extrapolations from measured steps, not measurements"}


# ----------------------------------------------------------------------------------------- output

def describe(config: dict) -> str:
    """'resnet18 width=default batch=100 ...': a StepConfig's fields, None shown as the network's default."""
    return " ".join([config["model"]] + [f"{k}={'default' if v is None else v}" for k, v in config.items()
                                         if k not in ("model", "sequential", "channels")])


def _f(value, spec: str, missing: str = "-") -> str:
    return format(value, spec) if value is not None else missing


def cells_markdown(cells: list[dict], eval_batch: int) -> list[str]:
    lines = ["| axis | value | network | width | batch | seeds | compile s | step wall s | step CPU s | cores busy "
             f"| epoch s | GFLOP | GB accessed | FLOP/B | bound (roofline estimate) | eval {eval_batch} s "
             f"| eval {TEST_IMAGES // 1000}k s |",
             "|" + "---|" * 17]
    for c in cells:
        if "error" in c:
            lines.append(f"| {c['axis']} | {c['value']} | {c['network']} | {c['width']} | {c['batch']} | {c['seeds']} "
                         f"| failed: {c['error'][:80]} |" + " |" * 10)
            continue
        lines.append(
            f"| {c['axis']} | {c['value']} | {c['network']} | {c['width']} | {c['batch']} | {c['seeds']} "
            f"| {c['compile_s']:.1f} | {c['step_s']:.3f} | {c['cpu_s']:.3f} | {c['cores_busy']:.2f} "
            f"| {_f(c.get('epoch_s'), '.3f')} | {_f(c['flops'] and c['flops'] / 1e9, '.1f')} "
            f"| {_f(c['bytes_accessed'] and c['bytes_accessed'] / 1e9, '.2f')} "
            f"| {_f(c['roofline']['intensity'], '.1f')} "
            f"| {c['roofline']['bound']} | {c['eval_s']:.3f} | {c['eval_test_s']:.1f} |")
    return lines


def laws_lines(laws: dict) -> list[str]:
    lines = []
    for network, law in laws["batch"].items():
        lines.append(f"- step wall s = {law['a']:.4g} + {law['b']:.4g} x batch  ({network}; points "
                     f"{', '.join(f'b{int(x)}: {y:.3f}' for x, y in law['points'])}; largest residual "
                     f"{100 * law['max_rel_residual']:.1f} %)")
    for key, what in (("seeds_step", "step wall s"), ("seeds_eval", "test-set evaluation wall s")):
        law = laws[key]
        if law:
            lines.append(f"- {what} = {law['a']:.4g} + {law['b']:.4g} x seeds  ({laws['base_network']}; largest "
                         f"residual {100 * law['max_rel_residual']:.1f} %)")
    if laws["kd"]:
        k = laws["kd"]
        lines.append(f"- KD (ConvNet teacher's forward) at the base cell: {k['on_s']:.3f} s on, "
                     f"{k['off_s']:.3f} s off, "
                     f"{k['delta_s']:+.3f} s = {1e3 * k['per_image_seed_s']:.3f} ms per image and seed")
    return lines or ["- none (too few axes measured)"]


def extrapolation_markdown(table: dict) -> list[str]:
    labels = [recipes.VARIANT_LABELS[v] for v in recipes.VARIANTS]
    lines = ["| set | network | seeds | " + " | ".join(labels) + " | sum |", "|" + "---|" * (len(labels) + 4)]
    by_key = {}
    for r in table["rows"]:
        by_key.setdefault((r["set"], r["network"], r["variant"] == "teacher"), []).append(r)
    for (name, network, is_teacher), rows in by_key.items():
        hours = [r["hours"] for r in rows]
        total = _f(sum(hours), ".2f") if None not in hours else "-"
        if is_teacher:
            cells = [""] * len(labels)
            network = f"teacher: {network}"
        else:
            by_variant = {r["variant"]: r["hours"] for r in rows}
            cells = [_f(by_variant.get(v), ".2f", "not measured") for v in recipes.VARIANTS]
        lines.append(f"| {name} | {network} | {rows[0]['seeds']} | " + " | ".join(cells) + f" | {total} |")
    return lines


def markdown(record: dict) -> str:
    cpu, env, bw = record["cpu"], record["environment"], record["bandwidth"]
    peak = cpu["peak_flops"]
    toy = " (toy run: machinery check, not the figures)" if record["toy"] else ""
    lines = [
        "# Cost laws of training on this CPU" + toy,
        "",
        f"Command: `{record['command']}`; {record['repeats']} timed steps per cell after one warm-up, "
        f"{record['eval_repeats']} timed evaluation(s) after one warm-up.",
        "",
        f"**CPU**: {cpu['model_name']} ({cpu['vendor'] or '?'} family {cpu['family'] or '?'} "
        f"model {cpu['model'] or '?'} stepping {cpu['stepping'] or '?'}), {cpu['cores']} usable cores at "
        f"{_f(cpu['ghz'], '.2f', '?')} GHz; vector extensions: {', '.join(cpu['vector_extensions']) or 'none found'}. "
        f"Peak estimate {_f(peak and peak / 1e9, '.0f', '?')} GFLOP/s ({cpu['cores']} cores x "
        f"{_f(cpu['ghz'], '.2f', '?')} GHz x {cpu['flops_per_cycle']} fp32 FLOPs/cycle). Memory bandwidth measured: "
        f"{bw['bytes_per_s'] / 1e9:.1f} GB/s ({bw['bytes'] / 2**20:.0f} MB moved by a jitted x + 1, median of "
        f"{len(bw['walls'])}); machine balance {_f(peak and peak / bw['bytes_per_s'], '.1f', '?')} FLOP/B.",
        f"**Software**: jax {env['jax']}, jaxlib {env['jaxlib']}, flax {env['flax']}, optax {env['optax']}, "
        f"Python {env['python']}; XLA_FLAGS `{env['xla_flags']}`.",
        f"**Load average** (1, 5, 15 min): before {', '.join(f'{v:.2f}' for v in record['load_before'])}; after "
        f"{', '.join(f'{v:.2f}' for v in record['load_after'])}. Wall {record['total_s'] / 60:.1f} min.",
        "",
        f"Base cell: `{describe(record['base'])}`. Step: train_step.PreparedStep (seed-vmapped, state donated). "
        "Evaluation: "
        f"the project's eval step on {record['eval_batch']} images x {TEST_IMAGES // record['eval_batch']} = the "
        f"{TEST_IMAGES} test images. Bound: a roofline estimate (FLOPs at the estimated peak vs XLA's bytes of "
        f"the unfused program at the measured bandwidth), 'one thread' under {ONE_THREAD_BELOW} cores busy. "
        "The width axis scales the KD teacher with the student (train_step.build_program); ipc 10 and 50 "
        "train at the same batch, one program measured once.",
        "",
        "## Cells",
        "",
        *cells_markdown(record["cells"], record["eval_batch"]),
        "",
        "## Cost laws (least squares through the measured points)",
        "",
        *laws_lines(record["laws"]),
        "",
        "## Full-length wall time of the paper's table on this CPU, hours: **extrapolations from measured steps**",
        "",
        "Steps = epochs x (images // min(batch, images)); time = steps x predicted step + evaluations x "
        "evaluation time. Students without KD: minus the KD on/off difference measured at the base cell; "
        "the ConvNet teachers (measured with a ConvNet KD teacher inside their step): minus that teacher's "
        "forward, from its evaluation time per image. Not modelled: the Baseline's AdamW and 1 DSA op "
        "(measured: Lion, 2 ops), DropPath "
        "off in Baseline / w/o DP & KD / w/o DP (measured: on for the networks that have it), instance norm "
        "of the MTT sets (measured: batch norm).",
        "",
        *extrapolation_markdown(record["extrapolation"]),
        "",
        f"Total: **{record['extrapolation']['total_hours']:.1f} hours** "
        f"({record['extrapolation']['total_hours'] / 24:.1f} days) over the measured rows; "
        f"{record['extrapolation']['rows_not_measured']} rows not measured.",
    ]
    return "\n".join(lines) + "\n"


def _value_ticks(ax, values) -> None:
    """Ticks at the measured values, written plainly (log axes would print 2 x 10^0)."""
    import matplotlib.ticker
    if values:
        ax.set_xticks(values, [str(v) for v in values])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def plot(record: dict, path: str) -> None:
    """Four panels: step wall (and epoch, evaluation) against ipc, seeds, width, and per network."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [c for c in record["cells"] if "step_s" in c]
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    ax = axes[0][0]
    for network in dict.fromkeys(c["network"] for c in cells if c["axis"] == "ipc"):
        pts = sorted((c["value"], c["step_s"], c["epoch_s"], c["eval_test_s"]) for c in cells
                     if c["axis"] == "ipc" and c["network"] == network)
        x = [p[0] for p in pts]
        line, = ax.plot(x, [p[1] for p in pts], "o-", label=f"{network} step")
        ax.plot(x, [p[2] for p in pts], "s--", color=line.get_color(), alpha=0.6, label=f"{network} epoch")
        ax.axhline(pts[0][3], color=line.get_color(), ls=":", alpha=0.6)
    ax.set(xscale="log", yscale="log", xlabel=f"images per class (batch min({record['base']['batch']}, 10 ipc))",
           ylabel="wall s", title="step and epoch vs ipc (dotted: one test-set evaluation)")
    _value_ticks(ax, sorted({c["value"] for c in cells if c["axis"] == "ipc"}))
    for ax, axis, xlabel in ((axes[0][1], "seeds", "seeds vmapped"), (axes[1][0], "width", "width")):
        pts = sorted((c["value"], c["step_s"], c["eval_test_s"]) for c in cells if c["axis"] == axis)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label="train step")
            ax.plot([p[0] for p in pts], [p[2] for p in pts], "s--", label="test-set evaluation")
        law = record["laws"]["seeds_step"] if axis == "seeds" else None
        if law and pts:
            xs = np.linspace(pts[0][0], pts[-1][0], 50)
            ax.plot(xs, law["a"] + law["b"] * xs, ":", color="gray", label="fitted law")
        ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="wall s", title=f"step and evaluation vs {axis}")
        _value_ticks(ax, [p[0] for p in pts])
    ax = axes[1][1]
    pts = [(c["network"], c["step_s"], c["eval_test_s"]) for c in cells if c["axis"] == "network"]
    if pts:
        x = np.arange(len(pts))
        ax.bar(x - 0.2, [p[1] for p in pts], 0.4, label="train step")
        ax.bar(x + 0.2, [p[2] for p in pts], 0.4, label="test-set evaluation")
        ax.set_xticks(x, [p[0] for p in pts], rotation=20)
    ax.set(yscale="log", ylabel="wall s", title="per network (base batch, one seed)")
    for ax in axes.flat:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(f"Cost laws on {record['cpu']['model_name']} ({record['cpu']['cores']} cores)"
                 + (" - toy" if record["toy"] else ""))
    fig.tight_layout()
    tmp = path + ".tmp"
    fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


def print_summary(record: dict) -> None:
    print("cost laws (least squares):")
    print("\n".join(laws_lines(record["laws"])))
    print("\nfull-length wall time on this CPU, hours (extrapolations from measured steps):")
    print("\n".join(extrapolation_markdown(record["extrapolation"])))
    print(f"total {record['extrapolation']['total_hours']:.1f} h over the measured rows "
          f"({record['extrapolation']['rows_not_measured']} rows not measured)")


def rerender(path: str, md_path: str = "", png_path: str = "") -> dict:
    """Laws, extrapolation, Markdown and plot again from the cells of a finished run's JSON: the
    model of the extrapolation can change without measuring again."""
    with open(path) as f:
        record = json.load(f)
    if record.get("partial") or "cells" not in record:
        raise SystemExit(f"{path}: not a finished cost-laws run (field 'partial' is true or 'cells' is missing)")
    base = ts.StepConfig(**record["base"])
    record["laws"] = fit_laws(record["cells"], base)
    record["extrapolation"] = extrapolate(record["laws"], table_rows())
    stem = path[:-5] if path.endswith(".json") else path
    md_path, png_path = md_path or stem + ".md", png_path or stem + ".png"
    ts.write_json(path, record)
    ts.write_text(md_path, markdown(record))
    plot(record, png_path)
    print(f"JSON: {path}  Markdown: {md_path}  plot: {png_path}  (re-rendered, nothing measured)")
    return record


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--axes", default=",".join(AXES), help=f"comma list of {AXES}")
    p.add_argument("--repeats", type=int, default=0, help="timed steps per cell (0: 3, toy 1)")
    p.add_argument("--eval-repeats", type=int, default=0, help="timed evaluations per network (0: 1)")
    p.add_argument("--networks", default="", help=f"network axis (default {','.join(NETWORKS)})")
    p.add_argument("--ipc-networks", default="", help="networks whose batch law is measured (default: the base "
                   "network and the network axis; toy: the base network)")
    p.add_argument("--seeds", default="", help="seeds axis (default 1,2,4,8; toy 1,2)")
    p.add_argument("--widths", default="", help="width axis (default 8,16,32,64; toy 4,8)")
    p.add_argument("--report", default="", help="re-fit the laws and rewrite the Markdown and plot of a saved JSON "
                   "(nothing measured)")
    p.add_argument("--toy", action="store_true", help="tiny cells (width 8, batch <= 20, 16 px, 1 repeat, no DSA)")
    p.add_argument("--out", default="", help="JSON (default benchmarks/results_cost_laws[_toy].json)")
    p.add_argument("--markdown", default="", help="Markdown table (default: --out with .md)")
    p.add_argument("--plot", default="", help="PNG plot (default: --out with .png)")
    args = p.parse_args(argv)
    if args.report:
        return rerender(args.report, args.markdown, args.plot)
    try:
        plan = make_plan([a for a in args.axes.split(",") if a], toy=args.toy, repeats=args.repeats,
                         eval_repeats=args.eval_repeats, networks=[n for n in args.networks.split(",") if n] or None,
                         ipc_networks=[n for n in args.ipc_networks.split(",") if n] or None,
                         seeds=args.seeds and ts.parse_positive_ints(args.seeds, "--seeds"),
                         widths=args.widths and ts.parse_positive_ints(args.widths, "--widths"))
    except ValueError as error:
        raise SystemExit(str(error)) from None
    out = args.out or os.path.join(HERE, "results_cost_laws_toy.json" if args.toy else "results_cost_laws.json")
    stem = out[:-5] if out.endswith(".json") else out
    md_path, png_path = args.markdown or stem + ".md", args.plot or stem + ".png"

    for path in (out, md_path, png_path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    start, load_before = time.perf_counter(), list(os.getloadavg())
    environment = ts.environment()
    cpu = cpu_description()
    bandwidth = measure_bandwidth(plan.bandwidth_mb)
    _progress(f"memory bandwidth {bandwidth['bytes_per_s'] / 1e9:.1f} GB/s; peak estimate "
              f"{_f(cpu['peak_flops'] and cpu['peak_flops'] / 1e9, '.0f', '?')} GFLOP/s on {cpu['cores']} cores")
    machine = {"peak_flops": cpu["peak_flops"], "cores": cpu["cores"], "bandwidth": bandwidth["bytes_per_s"]}
    head = {"command": "python benchmarks/cost_laws.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "toy": plan.toy, "axes": list(plan.axes), "repeats": plan.repeats, "eval_repeats": plan.eval_repeats,
            "eval_batch": plan.eval_batch, "base": dataclasses.asdict(plan.base), "cpu": cpu, "bandwidth": bandwidth,
            "environment": environment, "load_before": load_before}
    cells = measure_cells(plan, machine, checkpoint=lambda partial: ts.write_json(out, {**head, "partial": True,
                                                                                        "cells": partial}))
    laws = fit_laws(cells, plan.base)
    record = {**head, "partial": False, "cells": cells, "laws": laws, "extrapolation": extrapolate(laws, table_rows()),
              "load_after": list(os.getloadavg()), "total_s": time.perf_counter() - start}
    ts.write_json(out, record)
    ts.write_text(md_path, markdown(record))
    plot(record, png_path)
    print_summary(record)
    print(f"\nJSON: {out}  Markdown: {md_path}  plot: {png_path}  ({record['total_s'] / 60:.1f} wall min)")
    return record


if __name__ == "__main__":
    main()
