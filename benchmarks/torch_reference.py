"""The project's train step written again in PyTorch, timed the way benchmarks/train_step.py times JAX.

    python benchmarks/torch_reference.py --models convnet,resnet18 --batch 100 --threads 2

Why: a side-by-side tells whether a slow JAX step is slow because of the work (the
network) or because of the framework (XLA's CPU kernels, vmap, layout). The networks
mirror distill_jax.models layer for layer, biases on every conv included:

* ConvNet-3: 3 x [conv3x3 width -> norm -> relu -> avgpool 2] -> flatten -> linear;
  norm 'instance' is GroupNorm(width, width) with affine parameters (the project's instance norm).
* ResNet-18 / ResNet-50 (CIFAR stem): conv3x3 -> norm -> relu, stages of basic (2,2,2,2) or
  bottleneck (3,4,6,3) blocks, widths width * (1, 2, 4, 8), conv1x1(stride) -> norm
  shortcuts where shapes change, global average pool, linear. Batch norm by default here.

The step: forward, cross-entropy, backward, and an SGD-momentum (torch.optim.SGD) or
Lion update (written below; the project's default optimiser). `seeds` > 1 means that many
independent networks stepped one after another, as separate PyTorch runs would be.
Requires the optional `bench` extra (torch); nothing in distill_jax imports this file.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import resource
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_WHERE = "benchmarks/torch_reference.py"
MODEL_NAMES = ("convnet", "resnet18", "resnet50")
NORMS = ("instance", "batch", "none")
AUTOCAST_DTYPES = {"": None, "bfloat16": torch.bfloat16}  # PyTorch's mixed precision, beside compute_dtype


def make_norm(kind: str, channels: int) -> nn.Module:
    """The project's norms in torch: instance = per-channel GroupNorm with affine parameters."""
    if kind == "instance":
        return nn.GroupNorm(channels, channels, eps=1e-5, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"{_WHERE}: norm must be one of {NORMS}, got {kind!r}")


class ConvNet(nn.Module):
    """depth x [conv3x3 -> norm -> relu -> avgpool 2] -> flatten -> linear (distill_jax ConvNet)."""

    def __init__(self, num_classes: int, width: int, norm: str, image_size: int, channels: int, depth: int = 3):
        super().__init__()
        layers, c, side = [], channels, image_size
        for _ in range(depth):
            layers += [nn.Conv2d(c, width, 3, padding=1, bias=True), make_norm(norm, width), nn.ReLU(inplace=True),
                       nn.AvgPool2d(2)]
            c, side = width, side // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width * side * side, num_classes)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


class Block(nn.Module):
    """Basic block (two conv3x3) or bottleneck (1x1, 3x3 with the stride, 1x1 to 4x), as distill_jax ResidualBlock."""

    def __init__(self, in_channels: int, features: int, stride: int, bottleneck: bool, norm: str):
        super().__init__()
        spec = [(features, 1, 1), (features, 3, stride), (4 * features, 1, 1)] if bottleneck else \
            [(features, 3, stride), (features, 3, 1)]
        layers, c = [], in_channels
        for i, (width, kernel, s) in enumerate(spec):
            layers += [nn.Conv2d(c, width, kernel, stride=s, padding=kernel // 2, bias=True), make_norm(norm, width)]
            if i < len(spec) - 1:
                layers.append(nn.ReLU(inplace=True))
            c = width
        self.branch = nn.Sequential(*layers)
        self.shortcut = nn.Identity() if stride == 1 and in_channels == c else nn.Sequential(
            nn.Conv2d(in_channels, c, 1, stride=stride, bias=True), make_norm(norm, c))
        self.out_channels = c

    def forward(self, x):
        return F.relu(self.shortcut(x) + self.branch(x))


class ResNet(nn.Module):
    """CIFAR ResNet: conv3x3 stem (no max-pool), four stages (stride 2 from the second), average pool, linear."""

    def __init__(self, num_classes: int, stage_sizes, bottleneck: bool, width: int, norm: str, channels: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1, bias=True), make_norm(norm, width),
                                  nn.ReLU(inplace=True))
        blocks, c = [], width
        for i, n in enumerate(stage_sizes):
            for j in range(n):
                block = Block(c, width * 2**i, 2 if i > 0 and j == 0 else 1, bottleneck, norm)
                blocks.append(block)
                c = block.out_channels
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def build_model(name: str, *, width: int | None, norm: str | None, image_size: int, channels: int,
                num_classes: int = 10) -> nn.Module:
    """The torch twin of distill_jax.models.build_model(name) (default norm: instance for ConvNet,
    batch for ResNets)."""
    if name == "convnet":
        return ConvNet(num_classes, width or 128, norm or "instance", image_size, channels)
    if name in ("resnet18", "resnet50"):
        stages, bottleneck = ((2, 2, 2, 2), False) if name == "resnet18" else ((3, 4, 6, 3), True)
        return ResNet(num_classes, stages, bottleneck, width or 64, norm or "batch", channels)
    raise ValueError(f"{_WHERE}: unknown model {name!r}; expected one of {MODEL_NAMES}")


class Lion(torch.optim.Optimizer):
    """Lion as the project defines it: c = b1 m + (1 - b1) g; p <- p (1 - lr wd) - lr sign(c);
    m <- b2 m + (1 - b2) g."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0, betas=(0.95, 0.98)):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "betas": betas})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            params = [p for p in group["params"] if p.grad is not None]
            grads = [p.grad for p in params]
            moms = [self.state[p].setdefault("m", torch.zeros_like(p)) for p in params]
            update = torch._foreach_add(torch._foreach_mul(moms, b1), torch._foreach_mul(grads, 1 - b1))
            torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
            torch._foreach_add_(params, torch._foreach_sign(update), alpha=-group["lr"])
            torch._foreach_mul_(moms, b2)
            torch._foreach_add_(moms, grads, alpha=1 - b2)


def make_optimizer(name: str, params) -> torch.optim.Optimizer:
    """SGD with momentum 0.9 (torch's own) or Lion (lr 5e-5, wd 5e-3, as train_step.py)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.01, momentum=0.9)
    if name == "lion":
        return Lion(params, lr=5e-5, weight_decay=5e-3)
    raise ValueError(f"{_WHERE}: optimizer must be 'sgd' or 'lion', got {name!r}")


@dataclasses.dataclass(frozen=True)
class TorchConfig:
    """One benchmark cell; fields mirror train_step.StepConfig where they mean the same."""

    model: str = "convnet"
    batch: int = 100
    seeds: int = 1
    size: int = 32
    channels: int = 3
    width: int | None = None
    norm: str | None = None
    optimizer: str = "sgd"
    channels_last: bool = False
    threads: int = 2
    device: str = "cpu"
    autocast: str = ""  # "" (float32) or "bfloat16": the forward under torch.autocast in that dtype

    def check(self) -> "TorchConfig":
        for field in ("batch", "seeds", "size", "channels", "threads"):
            value = getattr(self, field)
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"{_WHERE}: config field {field!r} must be a positive int, got {value!r}")
        if self.model not in MODEL_NAMES:
            raise ValueError(f"{_WHERE}: config field 'model' must be one of {MODEL_NAMES}, got {self.model!r}")
        if self.autocast not in AUTOCAST_DTYPES:
            raise ValueError(f"{_WHERE}: config field 'autocast' must be one of {tuple(AUTOCAST_DTYPES)}, "
                             f"got {self.autocast!r}")
        if self.norm is not None and self.norm not in NORMS:
            raise ValueError(f"{_WHERE}: config field 'norm' must be one of {NORMS}, got {self.norm!r}")
        return self


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class PreparedTorchStep:
    """`seeds` networks with their optimisers and one fixed batch; `run()` steps each network once."""

    def __init__(self, config: TorchConfig):
        self.config = config.check()
        torch.set_num_threads(config.threads)
        torch.manual_seed(0)
        self.device = torch.device(config.device)
        fmt = torch.channels_last if config.channels_last else torch.contiguous_format
        self.models, self.optimizers = [], []
        for _ in range(config.seeds):
            model = build_model(config.model, width=config.width, norm=config.norm, image_size=config.size,
                                channels=config.channels).to(self.device, memory_format=fmt).train()
            self.models.append(model)
            self.optimizers.append(make_optimizer(config.optimizer, model.parameters()))
        rng = np.random.default_rng(0)
        images = torch.as_tensor(rng.normal(size=(config.batch, config.channels, config.size, config.size)),
                                 dtype=torch.float32)
        self.images = images.to(self.device).contiguous(memory_format=fmt)
        self.labels = torch.as_tensor(rng.integers(0, 10, config.batch)).to(self.device)
        self.num_parameters = count_parameters(self.models[0])

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run(self) -> tuple[float, float]:
        """One step of every network, one after another: (wall seconds, process CPU seconds)."""
        self._sync()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        dtype = AUTOCAST_DTYPES[self.config.autocast]
        for model, opt in zip(self.models, self.optimizers, strict=True):
            opt.zero_grad(set_to_none=True)
            with torch.autocast(self.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext():
                loss = F.cross_entropy(model(self.images), self.labels)
            loss.backward()
            opt.step()
        self._sync()
        return time.perf_counter() - wall0, time.process_time() - cpu0

    def memory(self) -> dict:
        out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        if self.device.type == "cuda":
            out["peak_device_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        return out

    def info(self) -> dict:
        return {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": str(self.device),
            "num_parameters": self.num_parameters,
            "device_name": torch.cuda.get_device_name(self.device)
            if self.device.type == "cuda"
            else platform.processor(),
        }


LAYERS = ("conv3x3", "batchnorm", "instancenorm")


class PreparedTorchLayer:
    """Forward + backward of one layer on a fixed NCHW input (the NHWC `shape` given, as train_step.PreparedLayer),
    cotangent fixed: the per-layer side of the side-by-side."""

    def __init__(self, layer: str, shape, features: int = 0, threads: int = 2, channels_last: bool = False):
        if layer not in LAYERS:
            raise ValueError(f"{_WHERE}: layer must be one of {LAYERS}, got {layer!r}")
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        n, h, w, c = shape
        features = features or c
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        if layer == "conv3x3":
            self.module = nn.Conv2d(c, features, 3, padding=1, bias=True)
        else:
            self.module = make_norm("batch" if layer == "batchnorm" else "instance", c).train()
        self.module = self.module.to(memory_format=fmt)
        rng = np.random.default_rng(0)
        self.x = torch.as_tensor(rng.normal(size=(n, c, h, w)), dtype=torch.float32).contiguous(memory_format=fmt)
        self.x.requires_grad_(True)
        with torch.no_grad():
            out_shape = self.module(self.x).shape
        self.cotangent = torch.as_tensor(rng.normal(size=tuple(out_shape)), dtype=torch.float32).contiguous(
            memory_format=fmt)

    def run(self) -> tuple[float, float]:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        self.x.grad = None
        self.module.zero_grad(set_to_none=True)
        self.module(self.x).backward(self.cotangent)
        return time.perf_counter() - wall0, time.process_time() - cpu0

    def memory(self) -> dict:
        return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}

    def info(self) -> dict:
        return {"torch": torch.__version__, "threads": torch.get_num_threads()}


def time_config(config: TorchConfig, repeats: int, warmup: int = 1) -> dict:
    """Standalone timing: `warmup` untimed steps, then the median of `repeats`."""
    t0 = time.perf_counter()
    prepared = PreparedTorchStep(config)
    setup_s = time.perf_counter() - t0
    for _ in range(warmup):
        prepared.run()
    walls, cpus = zip(*(prepared.run() for _ in range(repeats)), strict=True)
    step_s = statistics.median(walls)
    return {**dataclasses.asdict(config), **prepared.info(), "setup_s": setup_s, "step_s": step_s,
            "cpu_s": statistics.median(cpus), "step_s_all": list(walls), "cpu_s_all": list(cpus),
            "images_per_s": config.batch * config.seeds / step_s, **prepared.memory()}


def _positive_ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise SystemExit(f"{_WHERE}: {flag} expects comma-separated positive ints, got {text!r}") from None
    if not values or min(values) < 1:
        raise SystemExit(f"{_WHERE}: {flag} expects comma-separated positive ints, got {text!r}")
    return values


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="convnet,resnet18")
    p.add_argument("--batch", default="100", help="comma list, e.g. 100,256")
    p.add_argument("--seeds", type=int, default=1, help="networks stepped one after another")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--width", type=int, default=0, help="0 = the network's default width")
    p.add_argument("--norm", default="", help="instance|batch|none; default instance (ConvNet), batch (ResNets)")
    p.add_argument("--optimizer", default="sgd", choices=("sgd", "lion"))
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    rows = []
    print(f"{'model':10s} {'batch':>5s} {'step s':>8s} {'cpu s':>8s} {'images/s':>9s} {'peak MB':>8s}")
    for name in args.models.split(","):
        for batch in _positive_ints(args.batch, "--batch"):
            config = TorchConfig(name, batch, args.seeds, args.size, args.channels, args.width or None,
                                 args.norm or None, args.optimizer, args.channels_last, args.threads, args.device)
            r = time_config(config, args.repeats)
            rows.append(r)
            print(f"{name:10s} {batch:5d} {r['step_s']:8.3f} {r['cpu_s']:8.3f} {r['images_per_s']:9.1f} "
                  f"{r['peak_rss_mb']:8.0f}", flush=True)
    record = {"rows": rows, "torch": torch.__version__, "python": sys.version.split()[0],
              "load_average": os.getloadavg()}
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(record, f, indent=1)
        os.replace(tmp, args.out)
    return record


if __name__ == "__main__":
    main()
