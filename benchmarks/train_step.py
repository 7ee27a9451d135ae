"""Times the jitted train step: compile time apart from step time, images/s, peak memory, MFU.

    python benchmarks/train_step.py --models convnet,resnet18 --batch 100,256 --seeds 1,4,8 --out bench.json

The program is the one training runs (distill_jax.training.loop): the step from
`steps.make_train_step` (forward, loss, backward, optimiser update, optionally with the KD
teacher's forward (--kd) and k-fold DSA (--augment k)), its seeds vmapped into one program and
`--steps-per-call` K steps run on the device per call (`multi_seed.make_chunk`), each seed with its
own batches gathered on the device in its own order from a synthetic training set
(`loop.epoch_orders`) and its own step key, state and batches laid out by seed over the
`(seeds, data)` mesh (`training.sharding`), the state donated. Times are per step (a call / K).
"sequential" is the same seeds run one after another with the one-seed program (N x the
one-seed step, or measured with --sequential).

Defaults match benchmarks/torch_reference.py so the two can be compared: SGD with momentum,
no DropPath, the network's default norm (--norm batch for the ResNets of the comparison).

Per cell: compile time (trace + lower + XLA compile), the median wall time and the median
process CPU time (all threads) of a step after one warm-up step, images/s, FLOPs per step,
model FLOPs utilisation (MFU) and peak memory. FLOPs are XLA's cost analysis of the step
built with XLA's own convolution (conv='xla'): cost analysis cannot see inside the
CPU default's oneDNN custom calls, and fast_conv walks batch chunks and seeds in loops, whose
bodies it counts once. The peak FLOP/s of a
device comes from PEAK_FLOPS (accelerators, dense, per compute precision) or, on CPU, from
cores x clock x FLOPs per cycle: an estimate, labelled as such. On CPU under load the wall MFU
is mostly the share of the cores this process got; `mfu_cpu` divides by CPU seconds instead.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import sys
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from distill_jax import models  # noqa: E402
from distill_jax.data import augment  # noqa: E402
from distill_jax.optim import make_optimizer  # noqa: E402
from distill_jax.training import loop, multi_seed, sharding, steps  # noqa: E402

_WHERE = "benchmarks/train_step.py"
# The compute dtypes this version's networks take (the config's train.compute_dtype).
COMPUTE_DTYPES = tuple(getattr(models, "COMPUTE_DTYPES", ("float32",)))

# Dense peak FLOP/s per compute precision, matched by substring of the lower-cased device_kind
# (first match wins, so specific names come first). Vendor datasheet figures, no sparsity.
PEAK_FLOPS = (
    ("h100 pcie", {"bf16": 756e12, "tf32": 378e12, "fp32": 51e12}),
    ("h200", {"bf16": 989e12, "tf32": 495e12, "fp32": 67e12}),
    ("h100", {"bf16": 989e12, "tf32": 495e12, "fp32": 67e12}),
    ("a100", {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12}),
    ("tpu v4", {"bf16": 275e12}),
    ("tpu v5 lite", {"bf16": 197e12}),
    ("tpu v5e", {"bf16": 197e12}),
)


def peak_flops(device_kind: str, precision: str) -> float | None:
    """Peak dense FLOP/s of an accelerator at `precision` ('bf16', 'tf32', 'fp32'); None if not in the table."""
    kind = device_kind.lower()
    for pattern, peaks in PEAK_FLOPS:
        if pattern in kind:
            return peaks.get(precision)
    return None


def flops_per_cycle(cpu_flags: set[str]) -> int:
    """fp32 FLOPs per cycle per core: two FMA pipes x SIMD lanes x 2 (AVX-512: 16 lanes, AVX2+FMA: 8)."""
    if "avx512f" in cpu_flags:
        return 64
    if "avx2" in cpu_flags and "fma" in cpu_flags:
        return 32
    if "avx" in cpu_flags:
        return 16
    return 8


def cpu_peak_flops(cores: int, ghz: float, cpu_flags: set[str]) -> float:
    """Estimated fp32 peak of a CPU: cores x GHz x FLOPs/cycle (no turbo, no contention)."""
    return cores * ghz * 1e9 * flops_per_cycle(cpu_flags)


def read_cpu_info(path: str = "/proc/cpuinfo") -> dict:
    """Model name, clock (GHz, the highest 'cpu MHz') and flags of this machine's CPU (empty where unreadable)."""
    info = {"model": platform.processor() or platform.machine(), "ghz": None, "flags": set()}
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "model name":
                    info["model"] = value
                elif key == "cpu MHz":
                    info["ghz"] = max(info["ghz"] or 0.0, float(value) / 1000)
                elif key == "flags":
                    info["flags"] = set(value.split())
    except OSError:
        pass
    return info


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def compute_precision(backend: str) -> str:
    """The precision float32 matmuls and convolutions really run at under JAX's default settings."""
    setting = str(jax.config.jax_default_matmul_precision or "default").lower()
    if backend == "tpu":
        return "fp32" if setting in ("highest", "float32") else "bf16"
    if backend in ("gpu", "cuda", "rocm"):  # TF32 tensor cores unless the highest precision is asked for
        return "fp32" if setting in ("highest", "float32") else "tf32"
    return "fp32"


def device_peak(device=None, compute_dtype: str = "float32") -> dict:
    """{'peak_flops', 'precision', 'source'} for the default device ('estimate' on CPU, None if unknown);
    a network computing in bfloat16 is held against the device's bf16 peak."""
    device = device or jax.devices()[0]
    backend = device.platform
    precision = "bf16" if compute_dtype == "bfloat16" and backend != "cpu" else compute_precision(backend)
    if backend == "cpu":
        info = read_cpu_info()
        if not info["ghz"]:
            return {"peak_flops": None, "precision": precision, "source": "CPU clock unknown"}
        cores = usable_cores()
        fpc = flops_per_cycle(info["flags"])
        return {"peak_flops": cpu_peak_flops(cores, info["ghz"], info["flags"]), "precision": precision,
                "source": f"estimate: {cores} cores x {info['ghz']:.2f} GHz x {fpc} fp32 FLOPs/cycle ({info['model']})"}
    value = peak_flops(device.device_kind, precision)
    return {
        "peak_flops": value,
        "precision": precision,
        "source": f"table: {device.device_kind} {precision}" if value else f"{device.device_kind} not in PEAK_FLOPS",
    }


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """One benchmark cell. `sequential`: run the `seeds` networks one after another with the one-seed program."""

    model: str = "convnet"
    batch: int = 100
    seeds: int = 1
    size: int = 32
    channels: int = 3
    width: int | None = None
    norm: str | None = None
    optimizer: str = "sgd"
    droppath: bool = False
    improved_shortcut: bool = False
    kd: bool = False
    augment_k: int = 0
    sequential: bool = False
    compute_dtype: str = "float32"  # of convolutions and matmuls (the config's train.compute_dtype)
    steps_per_call: int = 1  # steps of every seed per call of the program (the config's train.steps_per_call)

    def check(self) -> "StepConfig":
        for field in ("batch", "seeds", "size", "channels", "steps_per_call"):
            value = getattr(self, field)
            if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
                raise ValueError(f"{_WHERE}: config field {field!r} must be a positive int, got {value!r}")
        if self.model not in models.MODEL_NAMES:
            raise ValueError(f"{_WHERE}: config field 'model' must be one of {models.MODEL_NAMES}, got {self.model!r}")
        if self.optimizer not in ("sgd", "lion"):
            raise ValueError(f"{_WHERE}: config field 'optimizer' must be 'sgd' or 'lion', got {self.optimizer!r}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"{_WHERE}: config field 'compute_dtype' must be one of {COMPUTE_DTYPES}, "
                             f"got {self.compute_dtype!r}")
        if not (isinstance(self.augment_k, int) and 0 <= self.augment_k <= len(augment.DSA_OPS)):
            raise ValueError(f"{_WHERE}: config field 'augment_k' must be an int in [0, {len(augment.DSA_OPS)}], "
                             f"got {self.augment_k!r}")
        return self


def build_network(config: StepConfig, conv: str = "auto"):
    """The cell's network, its convolutions computed by `conv` (distill_jax.models.CONV_CHOICES)."""
    options = {"width": config.width} if config.width else {}
    if config.norm:
        options["norm"] = config.norm
    if config.compute_dtype != "float32":
        options["compute_dtype"] = config.compute_dtype
    accepted = models.model_options(config.model)  # DropPath: ResNets, VGG-11, AlexNet; the shortcut: ResNets
    options.update({name: value for name, value in (("droppath", config.droppath),
                                                    ("improved_shortcut", config.improved_shortcut))
                    if name in accepted})
    return models.build_model(config.model, num_classes=10, conv=conv, **options)


def build_optimizer(name: str):
    """SGD momentum 0.9 (lr 0.01), or Lion (lr 5e-5, wd 5e-3): the same as torch_reference.make_optimizer."""
    return make_optimizer("sgd", 0.01, 0.0, momentum=0.9) if name == "sgd" else make_optimizer("lion", 5e-5, 5e-3)


def _cost_value(cost, key: str) -> float | None:
    """One entry of XLA's cost analysis ('flops', 'bytes accessed'); None where absent or zero."""
    cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
    value = float((cost or {}).get(key, 0.0))
    return value if value > 0 else None


def _flops(cost) -> float | None:
    return _cost_value(cost, "flops")


# The synthetic training set holds this many batches: each seed's first batch is then a different
# subset of it, in a different order, as when training on a set larger than the batch.
TRAIN_BATCHES = 2


@dataclasses.dataclass
class Program:
    """What a cell runs: the per-seed train step (`steps.make_train_step`), an init (init keys ->
    seed-stacked state), the synthetic training set (`images`, `labels`: TRAIN_BATCHES batches)
    every seed draws its batch from. `cost_step` is the same step built with XLA's own convolution,
    for cost analysis (model_cost); `conv` the implementation `step`'s convolutions use."""

    step: Callable
    cost_step: Callable
    conv: str
    init: Callable
    images: np.ndarray
    labels: np.ndarray
    teacher_vars: Any
    keep_rate: jax.Array


def _teacher(config: StepConfig, conv: str):
    return models.build_model("convnet", num_classes=10, conv=conv, **({"width": config.width} if config.width else {}))


def build_program(config: StepConfig, conv: str = "auto") -> Program:
    """The project's train step for `config`, uncompiled (distill_jax.training.steps), with the
    network's (and KD teacher's) convolutions computed by `conv` (distill_jax.models.CONV_CHOICES)."""
    config = config.check()
    model = build_network(config, conv)
    opt = build_optimizer(config.optimizer)
    sample = jnp.zeros((1, config.size, config.size, config.channels))
    teacher = _teacher(config, conv) if config.kd else None
    teacher_vars = (
        jax.jit(lambda k: teacher.init(k, sample, train=False))(jax.random.key(1)) if teacher is not None else None
    )
    augment_fn = (lambda r, x: augment.augment(r, x, k=config.augment_k)) if config.augment_k else None

    def train_step(network, teacher_network):
        kd = steps.KDSettings(teacher_network) if teacher_network is not None else None
        return steps.make_train_step(network, opt, augment_fn=augment_fn, kd=kd)

    rng = np.random.default_rng(0)
    num_train = TRAIN_BATCHES * config.batch
    images = rng.normal(size=(num_train, config.size, config.size, config.channels)).astype(np.float32)
    labels = rng.integers(0, 10, num_train).astype(np.int32)
    return Program(step=train_step(model, teacher),
                   cost_step=train_step(build_network(config, "xla"), _teacher(config, "xla") if config.kd else None),
                   conv=model.conv, init=jax.vmap(lambda k: steps.init_state(model, opt, k, sample)),
                   images=images, labels=labels, teacher_vars=teacher_vars, keep_rate=jnp.float32(0.8))


def seed_keys(seeds: list[int]) -> tuple[jax.Array, jax.Array]:
    """(init keys, step key data) of `seeds`, one row per seed, as training derives them
    (`multi_seed.seed_keys`), the init keys typed for `Program.init`."""
    init_keys, step_keys = multi_seed.seed_keys(seeds)
    return jax.random.wrap_key_data(init_keys), step_keys


def seed_batches(images: np.ndarray, labels: np.ndarray, seeds: list[int], batch: int, epoch: int = 0,
                 step: int = 0) -> dict:
    """Host arrays (seeds, batch, ...): every seed's batch `step` of `epoch`, in that seed's order
    (`loop.epoch_orders`), as the training loop feeds them."""
    idx = loop.epoch_orders(seeds, epoch, len(images))[:, step * batch:(step + 1) * batch]
    return {"image": images[idx], "label": labels[idx]}


def seed_orders(seeds: list[int], batch: int, num_train: int, steps: int) -> np.ndarray:
    """(steps, seeds, batch) indices: every seed's batches of steps 0..steps-1, each epoch in that seed's
    order (`loop.epoch_orders`), as the training loop hands them to a call of `multi_seed.make_chunk`."""
    per_epoch = num_train // batch
    return np.stack([loop.epoch_orders(seeds, i // per_epoch, num_train)[:, (i % per_epoch) * batch:
                                                                        (i % per_epoch + 1) * batch]
                     for i in range(steps)]).astype(np.int32)


def seeded(step: Callable) -> Callable:
    """The training loop's multi-seed step: state, batch and step key data on a leading seed axis,
    keep rate and teacher shared."""

    def seeded_step(state, batch, key_data, keep_rate, teacher_vars):
        return step(state, batch, jax.random.wrap_key_data(key_data), keep_rate, teacher_vars)

    return jax.vmap(seeded_step, in_axes=(0, 0, 0, None, None))


def model_flops(step: Callable, args: tuple) -> float | None:
    """FLOPs of one call of `seeded(step)` on `args` (state, batch, step key data, keep rate, teacher
    variables), from XLA's cost analysis of its XLA-convolution form (pass `Program.cost_step`).

    Not the compiled CPU program's own count: oneDNN custom calls are opaque to cost analysis, and
    fast_conv walks batch chunks and seeds in loops, whose bodies it counts once. `args` may be
    abstract (jax.ShapeDtypeStruct): nothing is compiled.
    """
    return model_cost(step, args)["flops"]


def model_cost(step: Callable, args: tuple) -> dict:
    """{'flops', 'bytes_accessed'} of one call of `seeded(step)` (`Program.cost_step`: built with
    XLA's own convolution), from the same cost analysis as model_flops. The bytes are summed over
    the ops of the lowered, unfused program (each op's operands and results): an upper bound on
    memory traffic, since fusion keeps intermediates in registers."""
    try:
        cost = jax.jit(seeded(step)).lower(*args).cost_analysis()
    except Exception:  # JAX 0.11 on the device gave none for the lowered program
        cost = None
    # No fallback to the compiled program: on GPU its convolutions are opaque cuDNN calls
    # (1.6 of 290 GFLOP counted on the H200), so no figure beats a wrong one.
    return {"flops": _cost_value(cost, "flops"), "bytes_accessed": _cost_value(cost, "bytes accessed")}


class PreparedStep:
    """The program training runs, compiled and laid out as the loop lays it out
    (`distill_jax.training.multi_seed.make_chunk` on the `(seeds, data)` mesh of `sharding.make_mesh`):
    the seeds' states sharded by seed row, the training set on the devices, each seed's batches
    gathered there from its own data order, `steps_per_call` steps of every seed per call without
    returning to the host. `run()` performs one timed call (one per seed when sequential) and
    returns the time per step."""

    def __init__(self, config: StepConfig):
        self.config = config = config.check()
        program = build_program(config)
        self.step, self.teacher_vars = program.step, program.teacher_vars
        self.cost_step, self.conv = program.cost_step, program.conv
        k = self.steps_per_call = config.steps_per_call
        seeds = list(range(config.seeds))
        # sequential: the one-seed program once per seed; else one program for all seeds
        self.groups = [[s] for s in seeds] if config.sequential else [seeds]
        self.mesh = mesh = sharding.make_mesh(config.batch, num_seeds=len(self.groups[0]))
        init = jax.jit(program.init)
        self.data = sharding.replicate({"image": program.images, "label": program.labels}, mesh)
        self.states, self.orders, self.keys = [], [], []
        for group in self.groups:
            init_keys, step_keys = seed_keys(group)
            self.states.append(sharding.shard_seeds(init(init_keys), mesh))
            self.orders.append(sharding.place(seed_orders(group, config.batch, len(program.images), k),
                                              sharding.stepped_batch_sharding(mesh)))
            self.keys.append(sharding.shard_seeds(step_keys, mesh))
        self.keep_rates = sharding.replicate(np.full(k, float(program.keep_rate), np.float32), mesh)
        self.num_steps = jnp.int32(k)
        if self.teacher_vars is not None:
            self.teacher_vars = sharding.replicate(self.teacher_vars, mesh)
        self.logged = [None] * len(self.groups)
        args = (self.states[0], self.data, self.orders[0], self.keep_rates, self.num_steps, self.keys[0],
                self.teacher_vars)
        t0 = time.perf_counter()
        lowered = multi_seed.make_chunk(self.step, mesh, k).lower(*args)
        t1 = time.perf_counter()
        self.compiled = lowered.compile()
        t2 = time.perf_counter()
        self.lower_s, self.xla_compile_s = t1 - t0, t2 - t1
        self.compile_s = t2 - t0
        try:
            self.compiled_flops = _flops(self.compiled.cost_analysis())
        except Exception:  # not every backend offers cost analysis
            self.compiled_flops = None
        self.memory_analysis = self._memory_analysis()
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), (
            self.states[0], jax.eval_shape(lambda d, o: {n: v[o[0]] for n, v in d.items()}, self.data, self.orders[0]),
            self.keys[0], program.keep_rate, self.teacher_vars))
        try:  # one step of every seed (the chunk's loop body would be counted once, whatever its length)
            one_call = model_cost(self.cost_step, abstract)
        except Exception:
            one_call = {"flops": None, "bytes_accessed": None}
        self.flops = one_call["flops"] * len(self.groups) if one_call["flops"] else None
        self.bytes_accessed = one_call["bytes_accessed"] * len(self.groups) if one_call["bytes_accessed"] else None
        program_seeds = len(self.groups[0])
        self.num_parameters = sum(x.size for x in jax.tree.leaves(self.states[0]["params"])) // program_seeds

    def _memory_analysis(self) -> dict:
        try:
            m = self.compiled.memory_analysis()
            return {"argument_mb": m.argument_size_in_bytes / 2**20, "output_mb": m.output_size_in_bytes / 2**20,
                    "temp_mb": m.temp_size_in_bytes / 2**20, "alias_mb": m.alias_size_in_bytes / 2**20}
        except Exception:
            return {}

    def run(self) -> tuple[float, float]:
        """One call of `steps_per_call` steps of every seed (one call per seed when sequential): (wall s,
        process CPU s) per step."""
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for i in range(len(self.groups)):
            self.states[i], self.logged[i] = self.compiled(self.states[i], self.data, self.orders[i], self.keep_rates,
                                                           self.num_steps, self.keys[i], self.teacher_vars)
        jax.block_until_ready((self.states, self.logged))
        k = self.steps_per_call
        return (time.perf_counter() - wall0) / k, (time.process_time() - cpu0) / k

    def losses(self, step: int = 0) -> np.ndarray:
        """Every seed's training loss at `step` of the last call (seeds in order)."""
        return np.concatenate([np.asarray(logged["loss"][step]) for logged in self.logged])

    def memory(self) -> dict:
        """Peak resident memory of this process; on accelerators also the device's peak bytes in use."""
        out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **self.memory_analysis}
        try:
            stats = jax.devices()[0].memory_stats() or {}
            if "peak_bytes_in_use" in stats:
                out["peak_device_mb"] = stats["peak_bytes_in_use"] / 2**20
        except Exception:
            pass
        return out

    def info(self) -> dict:
        return {"compile_s": self.compile_s, "lower_s": self.lower_s, "xla_compile_s": self.xla_compile_s,
                "steps_per_call": self.steps_per_call, "layout": sharding.layout(self.mesh),
                "flops_per_step": self.flops, "compiled_flops": self.compiled_flops,
                "num_parameters": self.num_parameters, "conv": self.conv, "cores": usable_cores(),
                "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
                "compute_dtype": self.config.compute_dtype, **device_peak(compute_dtype=self.config.compute_dtype)}


LAYERS = ("conv3x3", "batchnorm", "instancenorm")


class PreparedLayer:
    """Forward + backward of one layer of the networks (distill_jax.models.layers), jitted, on a fixed
    NHWC input: where a train step's time goes, layer by layer, beside torch_reference.PreparedTorchLayer.
    The loss is sum(y * r) for a fixed random r, so the backward pass gets a dense cotangent."""

    def __init__(self, layer: str, shape, features: int = 0):
        import flax.linen as nn

        from distill_jax.models.layers import conv, make_norm, resolve_conv
        if layer not in LAYERS:
            raise ValueError(f"{_WHERE}: layer must be one of {LAYERS}, got {layer!r}")
        shape = tuple(shape)
        features = features or shape[-1]
        self.conv = implementation = resolve_conv("auto")  # what a network built here would use

        class One(nn.Module):
            @nn.compact
            def __call__(self, x):
                if layer == "conv3x3":
                    return conv(features, 3, implementation=implementation, name="conv")(x)
                return make_norm("batch" if layer == "batchnorm" else "instance", "norm", True)(x)

        module = One()
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.normal(size=shape), jnp.float32)
        variables = jax.jit(module.init)(jax.random.key(0), x)
        params, stats = variables["params"], {k: v for k, v in variables.items() if k != "params"}
        out_shape = jax.eval_shape(lambda: module.apply(variables, x, mutable=list(stats)))[0].shape
        cotangent = jnp.asarray(rng.normal(size=out_shape), jnp.float32)

        def loss(p, x_):
            y, _ = module.apply({"params": p, **stats}, x_, mutable=list(stats))
            return jnp.sum(y * cotangent)

        self.args = (params, x)
        t0 = time.perf_counter()
        self.compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*self.args).compile()
        self.compile_s = time.perf_counter() - t0
        self.layer, self.shape, self.features = layer, shape, features

    def run(self) -> tuple[float, float]:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(self.compiled(*self.args))
        return time.perf_counter() - wall0, time.process_time() - cpu0

    def memory(self) -> dict:
        return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}

    def info(self) -> dict:
        return {"compile_s": self.compile_s, "conv": self.conv, "backend": jax.default_backend()}


def summarise_times(config: StepConfig, flops: float | None, peak: float | None, cores: int,
                    walls: list[float], cpus: list[float]) -> dict:
    """Medians, images/s and MFU of one cell's timed steps (pure arithmetic, shared with run_all)."""
    step_s, cpu_s = statistics.median(walls), statistics.median(cpus)
    out = {"step_s": step_s, "cpu_s": cpu_s, "step_s_all": list(walls), "cpu_s_all": list(cpus),
           "images_per_s": config.batch * config.seeds / step_s, "mfu": None, "mfu_cpu": None}
    if flops and peak:
        out["mfu"] = flops / step_s / peak
        if cpu_s > 0:  # FLOPs per CPU-second against one core's share of the peak
            out["mfu_cpu"] = flops / cpu_s / (peak / cores)
    return out


def time_config(config: StepConfig, repeats: int, warmup: int = 1) -> dict:
    """Standalone timing of one cell: compile, `warmup` untimed steps, median of `repeats`."""
    prepared = PreparedStep(config)
    for _ in range(warmup):
        prepared.run()
    walls, cpus = zip(*(prepared.run() for _ in range(repeats)), strict=True)
    info = prepared.info()
    return {**dataclasses.asdict(config), **info,
            **summarise_times(config, prepared.flops, info["peak_flops"], usable_cores(), list(walls), list(cpus)),
            **prepared.memory()}


def parse_positive_ints(text: str, flag: str) -> list[int]:
    """'1,4,8' -> [1, 4, 8]; anything else is an error naming the flag."""
    try:
        values = [int(v) for v in str(text).split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ValueError(f"{_WHERE}: {flag} expects comma-separated positive ints, got {text!r}")
    return values


def environment() -> dict:
    """What a figure depends on: versions, device, CPU, threads, flags and the load at the time."""
    import flax
    import jaxlib
    import optax
    info = read_cpu_info()
    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__, "optax": optax.__version__,
            "python": sys.version.split()[0], "backend": jax.default_backend(),
            "device": str(jax.devices()[0].device_kind), "cpu_model": info["model"], "cpu_ghz": info["ghz"],
            "cores": usable_cores(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "distill_jax_conv": os.environ.get("DISTILL_JAX_CONV", ""), "load_average": list(os.getloadavg())}


def write_text(path: str, text: str) -> None:
    """Written to a temporary file, then renamed: a reader never sees half a file."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: str, record: dict) -> None:
    write_text(path, json.dumps(record, indent=1))


def _fmt(value, spec: str, missing: str = "?") -> str:
    return format(value, spec) if value is not None else missing


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="convnet,resnet18")
    p.add_argument("--batch", default="100", help="comma list, e.g. 100,256")
    p.add_argument("--seeds", default="1", help="comma list, e.g. 1,4,8 (vmapped in one program)")
    p.add_argument("--sequential", action="store_true",
                   help="also run each seed count > 1 one seed after another (else reported as N x the 1-seed step)")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--width", type=int, default=0, help="0 = the network's default width")
    p.add_argument("--norm", default="", help="instance|batch|none; default: the network's own")
    p.add_argument("--optimizer", default="sgd", choices=("sgd", "lion"))
    p.add_argument("--droppath", action="store_true", help="DropPath, keep 0.8 (ResNets, VGG-11, AlexNet)")
    p.add_argument("--improved-shortcut", action="store_true")
    p.add_argument("--kd", action="store_true", help="include the ConvNet teacher's forward")
    p.add_argument("--augment", type=int, default=0, help="k DSA ops per batch (0 = none)")
    p.add_argument("--compute-dtype", default="float32", choices=COMPUTE_DTYPES)
    p.add_argument("--steps-per-call", type=int, default=1, help="steps of every seed per call (on the device)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    batches = parse_positive_ints(args.batch, "--batch")
    seed_counts = parse_positive_ints(args.seeds, "--seeds")
    rows = []
    print(f"{'model':10s} {'seeds':>5s} {'mode':>4s} {'batch':>5s} {'compile s':>9s} {'step s':>8s} {'cpu s':>8s} "
          f"{'images/s':>9s} {'GFLOP':>8s} {'MFU %':>6s} {'peak MB':>8s}")
    for name in args.models.split(","):
        for batch in batches:
            for seeds in seed_counts:
                for sequential in ([False, True] if args.sequential and seeds > 1 else [False]):
                    config = StepConfig(name, batch, seeds, args.size, args.channels, args.width or None,
                                        args.norm or None, args.optimizer, args.droppath, args.improved_shortcut,
                                        args.kd, args.augment, sequential, args.compute_dtype, args.steps_per_call)
                    r = time_config(config, args.repeats)
                    rows.append(r)
                    mfu = _fmt(r["mfu"] and 100 * r["mfu"], "6.2f", "     ?")
                    gflop = _fmt(r["flops_per_step"] and r["flops_per_step"] / 1e9, "8.1f", "       ?")
                    print(
                        f"{name:10s} {seeds:5d} {'seq' if sequential else 'vmap':>4s} {batch:5d} {r['compile_s']:9.1f} "
                        f"{r['step_s']:8.3f} {r['cpu_s']:8.3f} {r['images_per_s']:9.1f} {gflop} {mfu} "
                        f"{r['peak_rss_mb']:8.0f}",
                        flush=True,
                    )
    record = {"rows": rows, **environment()}
    if args.out:
        write_json(args.out, record)
    return record


if __name__ == "__main__":
    main()
