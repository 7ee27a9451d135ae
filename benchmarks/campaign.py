"""The device campaign: the paper's cells not yet run at full scale, in priority order, and the
run of as many of them as one accelerator call has time for.

    python benchmarks/campaign.py check                  # the queue: validated, with what results/ already holds
    python benchmarks/campaign.py plan --budget-s 420    # what a call with 420 s left would start
    python benchmarks/campaign.py queue                  # rebuild campaign_queue.json (XLA cost analysis, CPU)
    python benchmarks/campaign.py run --bundle B --workdir W --out O --deadline T [--toy]   (scripts/gpu_campaign.sh)
    python benchmarks/campaign.py summary --out O [--toy]

The queue (`campaign_queue.json` beside this file, validated by `read_queue`) lists cells of the
paper's experiments (`distill_jax.experiments.registry`) at the paper's scale (widths, epochs, 3
seeds vmapped per cell): FRePo IPC 10 with ResNet-50, VGG-11 and AlexNet, then the FRePo and MTT IPC 1
rows with ResNet-18, each experiment's teacher first. Per cell: the training steps, the evaluations,
the FLOPs of one step of all seeds from XLA's cost analysis of the step the loop builds
(`steps.make_train_step` on `loop.build_model` with XLA's convolution, KD teacher and DSA included),
and an estimate in seconds (`CostModel`).

Done marker: a cell is done when a results record in `results/` (`distill_jax.report.results_record`)
holds it, for its experiment, at the paper's scale (epochs / 1, lr x 1, paper widths), with a
final test accuracy per seed. A done cell is never started again; `queue` leaves done cells out,
and `run` re-reads `results/` too, so a record committed after the queue was written counts.

Planning (`plan`): the pending cells in queue order; a cell starts only when its estimate fits the
seconds left (a cell that does not fit is not started, and the next smaller ones may still be);
a cell with KD needs its experiment's teacher in the call's workdir (a fresh machine has none), so
its cost includes the teacher's when the teacher is not already there, and a pending teacher
starts with its experiment's first KD cell rather than alone.

Every finished cell's experiment record comes back at once, in the results/ format
(`results_record.read_record` / `write_record`), named `<experiment>.<cells>.json`: the newest
one of an experiment holds every cell this workdir finished for it. `campaign.json` says what
ran (estimate against wall time), what was not started and why.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import os
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import gpu_run  # noqa: E402  (the bundle's transform, the toy data root, the device's cell tweaks)
from distill_jax import atomic  # noqa: E402
from distill_jax.experiments import recipes, registry  # noqa: E402
from distill_jax.report import results_record  # noqa: E402

_WHERE = "benchmarks/campaign.py"
QUEUE_FILE = HERE / "campaign_queue.json"
RESULTS_DIR = REPO / "results"
QUEUE_SCHEMA = 1
# The experiments of the campaign, in priority order (the FRePo IPC 10 ResNet-18 row has run).
EXPERIMENTS = ("frepo_cifar10_jpeg_10_resnet50", "frepo_cifar10_jpeg_10_vgg11", "frepo_cifar10_jpeg_10_alexnet",
               "frepo_cifar10_jpeg_1_resnet18", "mtt_cifar10_jpeg_1_resnet18")
# Within an experiment: its teacher, then the table's main comparison, then the ablations.
CELL_ORDER = ("teacher", "baseline", "full", "no_dp", "no_dp_kd", "no_kd")
SEEDS = 3
TEST_IMAGES = 10_000
# Toy: the dry run's scale (gpu_run.TOY); a cell's estimate is the queue's divided by the epoch divisor.
TOY = gpu_run.TOY
CAMPAIGN_FILE = "campaign.json"


class CampaignError(gpu_run.GpuRunError):
    """A queue that cannot be used: the message names the file and the field."""


# ----------------------------------------------------------------------------------------- cost model

@dataclasses.dataclass(frozen=True)
class CostModel:
    """Seconds of a cell on the device: `overhead_s` (compile, data, checkpoints) + each step at
    `rate_flops`, but no faster than `min_step_s` (small steps are bound by kernel launches) +
    each evaluation at `rate_flops`.

    Calibrated on the H200 cells of results/h200_frepo10_paper_width.json (ResNet-18, 3 seeds,
    batch 100): w/o DP 56 s for 1.19 PFLOP and Full 216 s for 4.76 PFLOP give ~22 TFLOP/s and a few
    seconds fixed; the teacher (0.33 PFLOP) took 26 s. 20 TFLOP/s (4 % of the TF32 peak) and 40 s
    of fixed cost per cell err on the long side; 10 ms a step is the measured 3-seed ResNet-18 step."""

    rate_flops: float = 20e12
    min_step_s: float = 0.010
    overhead_s: float = 40.0

    def seconds(self, flops_per_step: float, steps: int, eval_flops: float, evals: int) -> float:
        step_s = max(flops_per_step / self.rate_flops, self.min_step_s)
        return self.overhead_s + steps * step_s + evals * eval_flops / self.rate_flops


# ----------------------------------------------------------------------------------------- the queue

_QUEUE_FIELDS = {"schema", "about", "seeds", "cost_model", "cells"}
_CELL_FIELDS = {"experiment", "cell", "role", "needs", "network", "width", "epochs", "steps", "evals",
                "flops_per_step", "eval_flops", "flops", "estimate_s"}


def _fail(where: str, field: str, expected: str, value=None) -> CampaignError:
    shown = "" if value is None else f" (got {json.dumps(value)[:80]})"
    return CampaignError(f"{where}: field '{field}': expected {expected}{shown}")


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def experiment_cells(experiment: str) -> tuple:
    """The cell names of a paper experiment: its teacher, then recipes.VARIANTS."""
    return ("teacher",) + tuple(recipes.VARIANTS)


def validate_queue(queue, where: str) -> dict:
    """The queue, checked field by field; CampaignError names the file and the field."""
    if not isinstance(queue, dict):
        raise _fail(where, "(queue)", "a JSON object", queue)
    missing, unknown = sorted(_QUEUE_FIELDS - set(queue)), sorted(set(queue) - _QUEUE_FIELDS)
    if missing or unknown:
        raise _fail(where, (missing or unknown)[0], "to be present" if missing else
                    f"no such field (allowed: {', '.join(sorted(_QUEUE_FIELDS))})")
    if queue["schema"] != QUEUE_SCHEMA:
        raise _fail(where, "schema", str(QUEUE_SCHEMA), queue["schema"])
    if not (isinstance(queue["seeds"], int) and queue["seeds"] > 0):
        raise _fail(where, "seeds", "a positive integer", queue["seeds"])
    cm = queue["cost_model"]
    if not (isinstance(cm, dict) and set(cm) == {f.name for f in dataclasses.fields(CostModel)}
            and all(_positive(v) for v in cm.values())):
        raise _fail(where, "cost_model", "{rate_flops, min_step_s, overhead_s}, each a positive number", cm)
    if not isinstance(queue["cells"], list):
        raise _fail(where, "cells", "a list of cells", queue["cells"])
    names = set(registry.experiment_names())
    seen = set()
    for i, cell in enumerate(queue["cells"]):
        p = f"cells[{i}]."
        if not isinstance(cell, dict):
            raise _fail(where, f"cells[{i}]", "a JSON object", cell)
        missing, unknown = sorted(_CELL_FIELDS - set(cell)), sorted(set(cell) - _CELL_FIELDS)
        if missing or unknown:
            raise _fail(where, p + (missing or unknown)[0], "to be present" if missing else
                        f"no such field (allowed: {', '.join(sorted(_CELL_FIELDS))})")
        if cell["experiment"] not in names:
            raise _fail(where, p + "experiment", "a name of registry.experiment_names()", cell["experiment"])
        if cell["cell"] not in experiment_cells(cell["experiment"]):
            raise _fail(where, p + "cell", f"one of {experiment_cells(cell['experiment'])}", cell["cell"])
        key = (cell["experiment"], cell["cell"])
        if key in seen:
            raise _fail(where, p + "cell", "a cell named once per experiment", cell["cell"])
        if cell["role"] not in ("teacher", "import", "student"):
            raise _fail(where, p + "role", "'teacher', 'import' or 'student'", cell["role"])
        if cell["needs"] is not None and (cell["needs"] != "teacher" or (cell["experiment"], "teacher") not in seen):
            raise _fail(where, p + "needs", "null or 'teacher' (its experiment's teacher, listed before it)",
                        cell["needs"])
        for field in ("steps", "evals", "epochs"):
            if not (isinstance(cell[field], int) and not isinstance(cell[field], bool) and cell[field] >= 0):
                raise _fail(where, p + field, "an integer >= 0", cell[field])
        for field in ("flops_per_step", "eval_flops", "flops", "estimate_s"):
            if not _positive(cell[field]):
                raise _fail(where, p + field, "a positive number", cell[field])
        seen.add(key)
    return queue


def read_queue(path=QUEUE_FILE) -> dict:
    return validate_queue(atomic.read_json_object(path, CampaignError), str(path))


def write_queue(path, queue: dict) -> None:
    validate_queue(queue, str(path))
    gpu_run._write(pathlib.Path(path), json.dumps(queue, indent=1) + "\n")


# ----------------------------------------------------------------------------------------- done markers

PAPER_SCALE = {"epoch_divisor": 1, "lr_multiplier": 1.0, "width": 0, "teacher_width": 0}


def is_paper_scale(scale) -> bool:
    return isinstance(scale, dict) and all(scale.get(k) == v for k, v in PAPER_SCALE.items())


def done_cells(results_dir=RESULTS_DIR, *, paper_scale: bool = True) -> dict:
    """{(experiment, cell): record file name} of every cell a record in `results_dir` holds with a
    final accuracy per seed, at the paper's scale (or any scale with paper_scale=False: the dry run's)."""
    done = {}
    for path in sorted(pathlib.Path(results_dir).glob("*.json")):
        record = results_record.read_record(path)
        if paper_scale and not is_paper_scale(record["scale"]):
            continue
        for cell in record["cells"]:
            if cell["final_test_accuracy"] and len(cell["final_test_accuracy"]) == len(cell["seeds"]):
                done.setdefault((record["experiment"], cell["cell"]), path.name)
    return done


def pending(queue: dict, done) -> list[dict]:
    """The queue's cells that are not done, in queue order."""
    return [c for c in queue["cells"] if (c["experiment"], c["cell"]) not in done]


# ----------------------------------------------------------------------------------------- planning

def cell_estimate(cell: dict, toy: bool = False) -> float:
    return cell["estimate_s"] / (TOY["epoch_divisor"] if toy else 1)


def plan(queue: dict, done, left_s: float, finished_here=(), *, toy: bool = False,
         next_s: float = 0.0) -> tuple[list, list]:
    """(units to start, cells not started): each unit a list of cells run together (a KD cell
    preceded by its teacher when the workdir has none), taken in queue order while the estimates
    fit `left_s`; every pending cell that does not fit is listed with the reason. A pending teacher
    whose experiment has pending KD cells is not started alone: it starts with the first of them that
    fits (a fresh machine would train it again for them).

    `next_s`: seconds a following call on the same machine will have (its workdir kept): one unit
    may then start that ends only in that call (cut off here, resumed there from its checkpoint)."""
    teachers = {c["experiment"]: c for c in queue["cells"] if c["cell"] == "teacher"}
    have = set(finished_here)
    todo = pending(queue, done)
    with_kd = {c["experiment"] for c in todo if c["needs"] == "teacher"}
    units, skipped, left, spill = [], [], left_s, next_s
    for cell in todo:
        key = (cell["experiment"], cell["cell"])
        if key in have:
            continue
        if cell["cell"] == "teacher" and cell["experiment"] in with_kd:  # trained once, with its first KD cell
            skipped.append({"experiment": cell["experiment"], "cell": "teacher", "estimate_s": cell_estimate(cell, toy),
                            "left_s": round(left, 1), "reason": "deferred: starts with its experiment's first KD cell"})
            continue
        unit = [cell]
        if cell["needs"] == "teacher" and (cell["experiment"], "teacher") not in have:
            unit = [teachers[cell["experiment"]], cell]
        cost = sum(cell_estimate(c, toy) for c in unit)
        if left < cost <= left + spill and left > 0:  # ends in the next call
            units.append(unit)
            have.update((c["experiment"], c["cell"]) for c in unit)
            left, spill = 0.0, 0.0
            continue
        if cost > left:
            how = " (with its teacher, which this workdir lacks)" if len(unit) == 2 else ""
            skipped.append({"experiment": cell["experiment"], "cell": cell["cell"], "estimate_s": round(cost, 1),
                            "left_s": round(left, 1), "reason": f"estimate {cost:.0f} s{how} > {left:.0f} s left"
                            + (f" (+ {spill:.0f} s of a next call)" if spill else "")})
            continue
        units.append(unit)
        have.update((c["experiment"], c["cell"]) for c in unit)
        left -= cost
    return units, skipped


# ----------------------------------------------------------------------------------------- cost analysis

def _network_width(model) -> int | None:
    """The width a cell's network trains at: its config's, else the network's default (the paper's)."""
    from distill_jax import models
    if model.width:
        return int(model.width)
    value = models.default_option(model.name, "width") if "width" in models.model_options(model.name) else None
    return int(value) if isinstance(value, int) else None


def _cell_configs(experiment: str) -> dict:
    cells = registry.get_experiment(experiment, "unused_workdir", num_seeds=SEEDS)
    return {c.name: c for c in cells}


def step_cost(config, teacher_config, num_train: int) -> dict:
    """FLOPs of one step of all seeds (XLA's cost analysis of the loop's step, built with XLA's
    convolution) and of one test-set evaluation (a third of a step's FLOPs per image, forward only)."""
    import jax
    import jax.numpy as jnp

    import train_step as bench
    from distill_jax.optim import make_optimizer
    from distill_jax.training import loop, steps

    def xla(c):
        c = copy.deepcopy(c)
        c.model.conv = "xla"
        return c

    t = config.train
    model = loop.build_model(xla(config), 10)
    opt = make_optimizer(t.optimizer, 1e-3, t.weight_decay)
    kd = None
    if t.kd.enabled:
        kd = steps.KDSettings(loop.build_model(xla(teacher_config), 10), alpha=t.kd.alpha, temperature=t.kd.temperature)
    step = steps.make_train_step(model, opt, augment_fn=loop.build_augment(config), kd=kd)
    seeds, batch = config.num_seeds, min(t.batch_size, num_train)
    sample = jnp.zeros((1, 32, 32, 3), jnp.float32)
    state = jax.eval_shape(jax.vmap(lambda k: steps.init_state(model, opt, k, sample)),
                           jax.ShapeDtypeStruct((seeds,), jax.random.key(0).dtype))
    teacher_vars = (jax.eval_shape(lambda: kd.teacher.init(jax.random.key(0), sample, train=False))
                    if kd is not None else None)
    key_data = jax.eval_shape(lambda: jax.random.key_data(jax.random.split(jax.random.key(0), seeds)))
    args = (state, {"image": jax.ShapeDtypeStruct((seeds, batch, 32, 32, 3), jnp.float32),
                    "label": jax.ShapeDtypeStruct((seeds, batch), jnp.int32)},
            key_data, jax.ShapeDtypeStruct((), jnp.float32), teacher_vars)
    flops = bench.model_flops(step, args)
    if not flops:
        raise CampaignError(f"{_WHERE}: XLA's cost analysis gave no FLOPs for {config.model.name}")
    return {"flops_per_step": flops, "eval_flops": flops / 3 / batch * TEST_IMAGES, "batch": batch}


def build_queue(results_dir=RESULTS_DIR, cost: CostModel = CostModel(), experiments=EXPERIMENTS) -> dict:
    """The queue of the campaign's pending cells with their costs (minutes of CPU for the analysis)."""
    done = done_cells(results_dir)
    cells, cache = [], {}
    for experiment in experiments:
        configs = _cell_configs(experiment)
        teacher = configs["teacher"]
        teacher_config = teacher.config
        if teacher.role == "import":  # the published ConvNet: its architecture, as a trained teacher's
            method, dataset, ipc = experiment.split("_")[0], "cifar10_jpeg", int(experiment.split("_")[-2])
            teacher_config = recipes.teacher_config(method, dataset, ipc, num_seeds=SEEDS)
        ipc = int(experiment.split("_")[-2])
        wanted = [n for n in CELL_ORDER if (experiment, n) not in done]
        if wanted and any(configs[n].config.train.kd.enabled for n in wanted) and "teacher" not in wanted:
            wanted.insert(0, "teacher")  # a KD cell needs its teacher on the same machine
        for name in wanted:
            c = configs[name]
            config = teacher_config if name == "teacher" else c.config
            t = config.train
            signature = json.dumps({"model": config.model.to_dict(), "kd": t.kd.enabled, "augment": t.augment.to_dict(),
                                    "optimizer": t.optimizer}, sort_keys=True, default=str)
            if signature not in cache:
                logging.info("cost analysis: %s %s (%s)", experiment, name, config.model.name)
                cache[signature] = step_cost(config, teacher_config, 10 * ipc)
            found = cache[signature]
            steps_per_epoch = max(1, (10 * ipc) // found["batch"])
            every = config.eval_every_epochs
            evals = len([e for e in range(1, t.epochs + 1) if e % every == 0 or e == t.epochs])
            is_import = name == "teacher" and c.role == "import"
            steps = 0 if is_import else t.epochs * steps_per_epoch
            evals = 1 if is_import else evals
            flops = steps * found["flops_per_step"] + evals * found["eval_flops"]
            estimate = cost.seconds(found["flops_per_step"], steps, found["eval_flops"], evals)
            cells.append({"experiment": experiment, "cell": name, "role": c.role,
                          "needs": "teacher" if name != "teacher" and config.train.kd.enabled else None,
                          "network": config.model.name, "width": _network_width(config.model),
                          "epochs": 0 if is_import else int(t.epochs), "steps": steps, "evals": evals,
                          "flops_per_step": found["flops_per_step"], "eval_flops": found["eval_flops"],
                          "flops": flops, "estimate_s": round(estimate, 1)})
    return {"schema": QUEUE_SCHEMA,
            "about": ("The paper's cells not yet in results/ at full scale, in priority order, for "
                      "scripts/gpu_campaign.sh; built by `python benchmarks/campaign.py queue`. flops_per_step: "
                      "all seeds, XLA's cost analysis of the loop's step; eval_flops: one test-set pass of all seeds; "
                      "estimate_s: cost_model (benchmarks/campaign.py CostModel)."),
            "seeds": SEEDS, "cost_model": dataclasses.asdict(cost), "cells": cells}


# ----------------------------------------------------------------------------------------- running

def paper_cells(experiment: str):
    """The builder of a paper experiment's cells, called directly (not through the registry): the
    campaign registers its device form under the experiment's own name, so that the records name it."""
    method, *rest = experiment.split("_")
    model, ipc, dataset = rest[-1], int(rest[-2]), "_".join(rest[:-2])

    def cells(workdir, scale, *, split_seeds, num_seeds, seed):
        return registry.paper_experiment(model, method, dataset, ipc, workdir, scale, split_seeds=split_seeds,
                                         num_seeds=num_seeds, seed=seed)

    return cells


def cell_finished(workdir: pathlib.Path, cell: str) -> bool:
    """Has this cell of an experiment's workdir finished (its record.json holds its accuracies)?"""
    path = workdir / cell / "record.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return bool(record.get("final_accuracy"))


def experiment_config(experiment: str, cells, toy: bool):
    """A `reproduce` config of some cells of `experiment`, at the paper's scale (or the toy's)."""
    c = gpu_run.table_config(toy)
    c.reproduce.experiment = experiment
    c.reproduce.cells = ",".join(cells)
    c.num_seeds = TOY["seeds"] if toy else SEEDS
    return c


def _record_name(experiment: str, cells) -> str:
    return f"{experiment}.{'+'.join(cells)}.json"


def export_record(workdir: pathlib.Path, out: pathlib.Path, experiment: str, command: str) -> pathlib.Path | None:
    """The newest results record of an experiment's workdir (it holds every cell finished there), read
    and written again with the campaign's command, as out/<experiment>.<cells>.json; older exports of
    the same experiment are removed (the newest holds them)."""
    found = sorted((workdir / experiment).glob("results_record*.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        return None
    record = results_record.read_record(found[-1])
    record["command"] = command
    path = out / _record_name(experiment, [c["cell"] for c in record["cells"]])
    for old in out.glob(f"{experiment}.*.json"):
        if old != path:
            old.unlink()
    return results_record.write_record(path, record)


def exported(out: pathlib.Path, experiments) -> list[str]:
    """The record files in `out` (export_record's names)."""
    return sorted(p.name for e in experiments for p in out.glob(f"{e}.*.json"))


class Log:
    """out/campaign.json, rewritten after every change (a run cut off still leaves what it did)."""

    def __init__(self, out: pathlib.Path, **head):
        self.path, self.data = out / CAMPAIGN_FILE, {**head, "ran": [], "not_started": [], "records": []}
        self.write()

    def write(self) -> None:
        gpu_run._write(self.path, json.dumps(self.data, indent=1, default=str))


def run_campaign(
    bundle: pathlib.Path,
    workdir: pathlib.Path,
    out: pathlib.Path,
    deadline: float,
    *,
    toy: bool,
    queue_path=QUEUE_FILE,
    results_dir=RESULTS_DIR,
    command: str = "bash scripts/gpu_campaign.sh gpu_bundle",
    reserve_s: float = 20.0,
    next_s: float = 0.0,
) -> dict:
    """Runs the queue's next cells that fit before `deadline` (time.time() seconds, less `reserve_s` for
    what follows), experiment by experiment, exporting each experiment's record after each cell."""
    from distill_jax.experiments import reproduce
    queue = read_queue(queue_path)
    done = done_cells(results_dir, paper_scale=not toy)
    workdir.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    data_root = bundle / "data"
    if toy:
        os.environ["DISTILL_JAX_CONV"] = TOY["conv"]
        data_root = gpu_run._toy_data_root(data_root, workdir / "toy_data", TOY["test_per_class"])
    os.environ["DISTILL_JAX_DATA"] = str(data_root.resolve())
    transform = workdir / gpu_run.TRANSFORM_NAME
    if not transform.is_file():
        gpu_run.unpack_transform(bundle / "zca_mtt.packed.npz").save(transform)
    experiments = list(dict.fromkeys(c["experiment"] for c in queue["cells"]))
    for experiment in experiments:
        registry.register_experiment(experiment, gpu_run.device_builder(
            paper_cells(experiment), transform.resolve(), 2 if toy else gpu_run.CHECKPOINTS_PER_CELL))
    log = Log(out, toy=toy, queue=str(queue_path), deadline=deadline,
              done_in_results=sorted(f"{e}/{c}" for e, c in done), pending=[
                  {"experiment": c["experiment"], "cell": c["cell"], "estimate_s": cell_estimate(c, toy)}
                  for c in pending(queue, done)])
    data_cache: dict = {}
    attempted: set = set()  # started in this call: not started again, finished or not (e.g. diverged)
    while True:
        finished = {(e, c) for e in experiments for c in experiment_cells(e) if cell_finished(workdir / e, c)}
        left = deadline - reserve_s - time.time()
        units, skipped = plan(queue, done, left, finished | attempted, toy=toy, next_s=next_s)
        if not units:
            log.data["not_started"] = [s for s in skipped if (s["experiment"], s["cell"]) not in attempted]
            log.write()
            break
        unit = units[0]
        experiment = unit[0]["experiment"]
        cells = [c for c in experiment_cells(experiment) if (experiment, c) in finished] + [c["cell"] for c in unit]
        estimate = sum(cell_estimate(c, toy) for c in unit)
        attempted.update((experiment, c["cell"]) for c in unit)
        gpu_run._progress(out, f"campaign: {experiment} {'+'.join(c['cell'] for c in unit)} starts "
                               f"(estimate {estimate:.0f} s, {left:.0f} s left)")
        started = time.time()
        entry = {"experiment": experiment, "cells": [c["cell"] for c in unit], "estimate_s": round(estimate, 1),
                 "left_s": round(left, 1), "wall_s": None, "finished": False}
        log.data["ran"].append(entry)
        log.write()
        reproduce.run_reproduction(experiment_config(experiment, cells, toy), workdir / experiment,
                                   data_cache=data_cache)
        entry.update(wall_s=round(time.time() - started, 1),
                     finished=all(cell_finished(workdir / experiment, c["cell"]) for c in unit))
        path = export_record(workdir, out, experiment, command)
        log.data["records"] = exported(out, experiments)
        log.write()
        gpu_run._progress(out, f"campaign: {experiment} {'+'.join(entry['cells'])} done in {entry['wall_s']:.0f} s "
                               f"(estimate {estimate:.0f} s); record {path.name if path else 'none'}")
    for experiment in experiments:  # a rerun on the same machine brings back what an earlier call finished
        if any(cell_finished(workdir / experiment, c) for c in experiment_cells(experiment)):
            export_record(workdir, out, experiment, command)
    log.data["records"] = exported(out, experiments)
    log.write()
    return log.data


# ----------------------------------------------------------------------------------------- summary

def _bench_lines(path: pathlib.Path) -> list[str]:
    if not path.is_file():
        return ["Measurement: no results (see bench.txt)."]
    bench = json.loads(path.read_text())
    rows = bench.get("cells", [])
    if not rows:
        return ["Measurement: no cell ran (see bench.txt)."]
    lines = ["| group | cell | seeds | step | images/s | MFU | compile |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("wall_s") is None:
            lines.append(
                f"| {r['group']} | {r['cell']} | {r['seeds']} | failed: {(r.get('error') or '?')[:80]} | | | |"
            )
            continue
        mfu = f"{100 * r['mfu']:.1f} %" if r.get("mfu") else "-"
        lines.append(f"| {r['group']} | {r['cell']} | {r['seeds']} | {1e3 * r['wall_s']:.2f} ms | "
                     f"{r['images_per_s']:.0f} | {mfu} | {r.get('compile_s') or 0:.1f} s |")
    for s in bench.get("scaling", []):
        vs_torch = s.get("vs_torch_sequential_wall")
        lines.append(f"- {s['group']}: {s['seeds']} seeds in one program: {s['speedup_wall']:.2f}x the speed of "
                     f"{s['sequential_is']}" + (f", {vs_torch:.2f}x PyTorch's {s['seeds']} networks one after another"
                                                if vs_torch else ", PyTorch not measured"))
    return lines


def write_summary(out: pathlib.Path, *, toy: bool) -> str:
    head = "# Device campaign" + (" (TOY DRY RUN on CPU: not results)" if toy else "")
    lines = [head, "", "## The program, measured", ""] + _bench_lines(out / "bench.json") + ["", "## Cells", ""]
    path = out / CAMPAIGN_FILE
    log = json.loads(path.read_text()) if path.is_file() else None
    if log is None:
        lines.append("The campaign did not start (see campaign_log.txt).")
    else:
        for r in log["ran"]:
            lines.append(f"- {r['experiment']} {'+'.join(r['cells'])}: "
                         + (f"finished in {r['wall_s']:.0f} s" if r["finished"] else "NOT finished (cut off; "
                            "rerun on the same machine to resume)") + f", estimate {r['estimate_s']:.0f} s")
        for s in log["not_started"]:
            lines.append(f"- not started: {s['experiment']} {s['cell']}: {s['reason']}")
        lines += ["", "Records (results/ format): " + (", ".join(log["records"]) or "none")]
    progress = out / "progress.txt"
    if progress.is_file():
        lines += ["", "Timeline:"] + [
            "    " + line for line in progress.read_text().splitlines() if line.startswith("[")
        ]
    text = "\n".join(lines) + "\n"
    gpu_run._write(out / "summary.md", text)
    return text


# ----------------------------------------------------------------------------------------- command line

def _print_plan(queue, done, units, skipped, toy=False) -> None:
    for cell in queue["cells"]:
        marker = done.get((cell["experiment"], cell["cell"]))
        print(f"{cell['experiment']:32s} {cell['cell']:9s} {cell['network']:13s} {cell['steps']:5d} steps "
              f"{cell['flops'] / 1e15:7.2f} PFLOP {cell_estimate(cell, toy):7.0f} s"
              + (f"  done: {marker}" if marker else ""))
    if units is not None:
        print("would start: " + "; ".join("+".join(f"{c['experiment']}/{c['cell']}" for c in u) for u in units))
        for s in skipped:
            print(f"not started: {s['experiment']}/{s['cell']}: {s['reason']}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("check", "plan", "queue", "run", "summary"):
        s = sub.add_parser(name)
        s.add_argument("--toy", action="store_true")
        if name != "summary":
            s.add_argument("--queue", type=pathlib.Path, default=QUEUE_FILE)
            s.add_argument("--results", type=pathlib.Path, default=RESULTS_DIR)
        if name == "plan":
            s.add_argument("--budget-s", type=float, required=True)
            s.add_argument("--next-s", type=float, default=0.0)
        if name == "run":
            s.add_argument("--bundle", type=pathlib.Path, required=True)
            s.add_argument("--workdir", type=pathlib.Path, required=True)
            s.add_argument("--deadline", type=float, required=True, help="time.time() by which the call must end")
            s.add_argument("--command-line", default="bash scripts/gpu_campaign.sh gpu_bundle",
                           help="the command the records name")
            s.add_argument("--next-s", type=float, default=0.0,
                           help="seconds a following call on this machine will have: one cell may end there")
        if name in ("run", "summary"):
            s.add_argument("--out", type=pathlib.Path, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, force=True,
                        format="%(asctime)s %(levelname).1s %(message)s", datefmt="%H:%M:%S")
    try:
        if args.command == "queue":
            write_queue(args.queue, build_queue(args.results))
            print(f"wrote {args.queue}")
        elif args.command in ("check", "plan"):
            queue = read_queue(args.queue)
            done = done_cells(args.results, paper_scale=not args.toy)
            units, skipped = (plan(queue, done, args.budget_s, toy=args.toy, next_s=args.next_s)
                              if args.command == "plan" else (None, []))
            _print_plan(queue, done, units, skipped, args.toy)
        elif args.command == "run":
            run_campaign(args.bundle, args.workdir, args.out, args.deadline, toy=args.toy, queue_path=args.queue,
                         results_dir=args.results, command=args.command_line, next_s=args.next_s)
        else:
            print(write_summary(args.out, toy=args.toy))
    except (CampaignError, results_record.RecordError) as error:
        print(error, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
