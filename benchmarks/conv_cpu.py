"""Time JAX 2-D convolutions on CPU: forward, input gradient and kernel gradient apart,
then whole training steps of a small ConvNet-3 and a ResNet-18-like network.

Why: on CPU, XLA's convolution *kernel* gradient is several times slower than the
forward pass, and it dominates training time. This script compares alternatives
(distill_jax/models/fast_conv.py, and the variants in benchmarks/conv_variants.py) on the
layer shapes the project trains.

    python benchmarks/conv_cpu.py --out conv.json            # layers + end-to-end
    python benchmarks/conv_cpu.py --quick                    # small, a couple of minutes
    python benchmarks/conv_cpu.py --only e2e --xla-flags="--xla_cpu_enable_fast_math=true"

Each timing is taken after compilation, `--repeats` times; the table shows the
median and the minimum (the minimum is the steadier figure when other jobs share
the CPU). XLA flags must be set before JAX starts, hence --xla-flags.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=pathlib.Path, help="write the results as JSON here")
    parser.add_argument("--quick", action="store_true", help="small batch, few shapes and variants")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 100, quick 32)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per case (default 5, quick 3)")
    parser.add_argument("--only", choices=("layers", "e2e"), help="run one part only")
    parser.add_argument("--layers", default=None, help="comma-separated layer names to run (default all)")
    parser.add_argument("--variants", default=None, help="comma-separated variant names to run (default all)")
    parser.add_argument("--xla-flags", default=None, help="extra XLA_FLAGS, set before JAX starts")
    parser.add_argument("--seeds", type=int, default=2, help="vmapped seeds in the e2e vmap case (0 to skip)")
    parser.add_argument(
        "--models", default=None, help="e2e models, comma-separated: convnet3,resnet18 (quick: convnet3)"
    )
    return parser.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.xla_flags:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + ARGS.xla_flags).strip()

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax import lax  # noqa: E402

import conv_variants  # noqa: E402  (beside this script)
from distill_jax.models import fast_conv  # noqa: E402

# name: (H, C_in, C_out, kernel, stride); input (B, H, H, C_in), padding as the networks use it.
LAYERS = {
    "convnet_in3": (32, 3, 128, 3, 1),
    "convnet_16": (16, 128, 128, 3, 1),
    "r18_32x64": (32, 64, 64, 3, 1),
    "r18_32x64_s2": (32, 64, 128, 3, 2),
    "r18_sc1x1_s2": (32, 64, 128, 1, 2),
    "r18_16x128": (16, 128, 128, 3, 1),
    "r18_16x128_s2": (16, 128, 256, 3, 2),
    "r18_8x256": (8, 256, 256, 3, 1),
    "r18_8x256_s2": (8, 256, 512, 3, 2),
    "r18_4x512": (4, 512, 512, 3, 1),
}
QUICK_LAYERS = ("convnet_in3", "r18_16x128", "r18_16x128_s2", "r18_4x512")


def timed(fn, *args, repeats):
    """(median wall, min wall, median process CPU) seconds of fn(*args) after one compiling call.

    Process CPU time (all threads) is the least disturbed by other jobs on the machine.
    """
    jax.block_until_ready(fn(*args))
    walls, cpus = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(*args))
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
    return statistics.median(walls), min(walls), statistics.median(cpus)


def same_pads(h, k, s):
    pads = fast_conv.explicit_padding("SAME", (h, h), (k, k), (s, s))
    return pads


def nchw_conv(x, w, strides, pads):
    """lax conv in NCHW/OIHW layout (the inputs are transposed once outside the timing)."""
    return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=("NCHW", "OIHW", "NCHW"))


def _chunked(chunk_bytes):
    return fast_conv.make_conv2d(
        lambda x, g, hw, s, p: fast_conv.kernel_grad_by_taps(x, g, hw, s, p, chunk_bytes=chunk_bytes)
    )


# name: (conv(x, w, strides, pads), layout, dtype)
VARIANTS = {
    "xla_nhwc": (fast_conv.xla_conv2d, "nhwc", jnp.float32),
    "xla_nchw": (nchw_conv, "nchw", jnp.float32),
    "im2col": (conv_variants.im2col_conv2d, "nhwc", jnp.float32),
    "vjp_patches": (fast_conv.make_conv2d(conv_variants.kernel_grad_by_patches), "nhwc", jnp.float32),
    "vjp_taps": (_chunked(None), "nhwc", jnp.float32),
    "vjp_taps_256k": (_chunked(1 << 18), "nhwc", jnp.float32),
    "vjp_taps_1m": (_chunked(1 << 20), "nhwc", jnp.float32),
    "vjp_taps_4m": (_chunked(1 << 22), "nhwc", jnp.float32),
    "fast_conv2d": (fast_conv.make_conv2d(), "nhwc", jnp.float32),  # fast_conv.conv2d, the one conv_variants.Conv uses
    "xla_nhwc_bf16": (fast_conv.xla_conv2d, "nhwc", jnp.bfloat16),
    "vjp_taps_1m_bf16": (_chunked(1 << 20), "nhwc", jnp.bfloat16),
}
QUICK_VARIANTS = ("xla_nhwc", "im2col", "vjp_patches", "vjp_taps", "fast_conv2d")


def time_layer(name, batch, variant, repeats):
    h, c_in, c_out, k, s = LAYERS[name]
    conv, layout, dtype = VARIANTS[variant]
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(keys[0], (batch, h, h, c_in), dtype)
    w = (jax.random.normal(keys[1], (k, k, c_in, c_out)) / np.sqrt(k * k * c_in)).astype(dtype)
    pads, strides = same_pads(h, k, s), (s, s)
    h_out = -(-h // s)
    g = jax.random.normal(keys[2], (batch, h_out, h_out, c_out), dtype)
    if layout == "nchw":
        x, w, g = x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1), g.transpose(0, 3, 1, 2)
    forward = jax.jit(lambda x, w: conv(x, w, strides, pads))
    input_grad = jax.jit(lambda x, w, g: jax.vjp(lambda x_: conv(x_, w, strides, pads), x)[1](g)[0])
    kernel_grad = jax.jit(lambda x, w, g: jax.vjp(lambda w_: conv(x, w_, strides, pads), w)[1](g)[0])
    return {
        "forward": timed(forward, x, w, repeats=repeats),
        "input_grad": timed(input_grad, x, w, g, repeats=repeats),
        "kernel_grad": timed(kernel_grad, x, w, g, repeats=repeats),
    }


# ---------------------------------------------------------------- end to end


def instance_norm():
    """Per-channel group norm with an affine, the reference code's "instance norm"."""
    return nn.GroupNorm(num_groups=None, group_size=1, epsilon=1e-5)


class ConvNet3(nn.Module):
    """3 x [conv3x3 128 -> instance norm -> relu -> avgpool 2] -> dense."""

    conv_cls: type = nn.Conv
    width: int = 128
    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        for _ in range(3):
            x = self.conv_cls(self.width, (3, 3), padding="SAME")(x)
            x = nn.relu(instance_norm()(x))
            x = nn.avg_pool(x, (2, 2), (2, 2))
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


class ResNet18Like(nn.Module):
    """CIFAR ResNet-18 stack of convs (stem 64, stages [2, 2, 2, 2], widths 64-512), instance norm."""

    conv_cls: type = nn.Conv
    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        x = nn.relu(instance_norm()(self.conv_cls(64, (3, 3))(x)))
        for stage, width in enumerate((64, 128, 256, 512)):
            for block in range(2):
                stride = 2 if stage > 0 and block == 0 else 1
                y = nn.relu(instance_norm()(self.conv_cls(width, (3, 3), strides=stride)(x)))
                y = instance_norm()(self.conv_cls(width, (3, 3))(y))
                if stride != 1 or x.shape[-1] != width:
                    x = instance_norm()(self.conv_cls(width, (1, 1), strides=stride)(x))
                x = nn.relu(x + y)
        return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


CONV_CLASSES = {"nn.Conv": nn.Conv, "fast_conv.Conv": conv_variants.Conv}  # labels as in earlier records


def make_train_step(model, learning_rate=0.01, donate=False):
    optimizer = optax.sgd(learning_rate, momentum=0.9)

    def step(params, opt_state, images, labels):
        def loss_fn(p):
            logits = model.apply(p, images)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step, optimizer


def time_train_step(model_name, conv_name, batch, repeats, seeds=0, donate=False):
    """Seconds per SGD step (forward + CE + backward + update); seeds > 0 vmaps over that many models."""
    model = {"convnet3": ConvNet3, "resnet18": ResNet18Like}[model_name](conv_cls=CONV_CLASSES[conv_name])
    images = jax.random.normal(jax.random.PRNGKey(1), (batch, 32, 32, 3))
    labels = jax.random.randint(jax.random.PRNGKey(2), (batch,), 0, 10)
    step, optimizer = make_train_step(model)
    init = lambda key: model.init(key, images[:1])  # noqa: E731
    if seeds:
        params = jax.vmap(init)(jax.random.split(jax.random.PRNGKey(0), seeds))
        opt_state = jax.vmap(optimizer.init)(params)
        step = jax.vmap(step, in_axes=(0, 0, None, None))
    else:
        params = init(jax.random.PRNGKey(0))
        opt_state = optimizer.init(params)
    jitted = jax.jit(step, donate_argnums=(0, 1) if donate else ())
    state = [params, opt_state]

    def run():
        state[0], state[1], loss = jitted(state[0], state[1], images, labels)
        return loss

    return timed(run, repeats=repeats)


# ---------------------------------------------------------------- main


def machine_info():
    model = "unknown"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(
            (line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), model
        )
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": __import__("flax").__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "loadavg_start": os.getloadavg(),
    }


def fmt(timing):
    return f"{timing[0]:6.3f} {timing[1]:6.3f} {timing[2]:6.3f}"


def run_layers(args, batch, repeats, results):
    layers = args.layers.split(",") if args.layers else (QUICK_LAYERS if args.quick else tuple(LAYERS))
    variants = args.variants.split(",") if args.variants else (QUICK_VARIANTS if args.quick else tuple(VARIANTS))
    unknown = [n for n in list(layers) + list(variants) if n not in LAYERS and n not in VARIANTS]
    if unknown:
        raise SystemExit(
            f"benchmarks/conv_cpu.py: unknown layer/variant name(s) {unknown}; "
            f"layers {list(LAYERS)}, variants {list(VARIANTS)}"
        )
    print(f"\nper layer, batch {batch}: seconds over {repeats} runs, each cell: median wall, min wall, median CPU")
    print(f"{'layer':15s} {'variant':17s} {'forward':>20s} {'input grad':>20s} {'kernel grad':>20s}")
    for layer in layers:
        for variant in variants:
            timing = time_layer(layer, batch, variant, repeats)
            results["layers"].append(
                {"layer": layer, "shape": LAYERS[layer], "batch": batch, "variant": variant, **timing}
            )
            print(
                f"{layer:15s} {variant:17s} {fmt(timing['forward']):>20s} {fmt(timing['input_grad']):>20s} "
                f"{fmt(timing['kernel_grad']):>20s}",
                flush=True,
            )


def run_e2e(args, batch, repeats, results):
    print(
        f"\ntrain step (SGD+momentum, CE), batch {batch}, 32 px: seconds over {repeats} runs: "
        "median wall, min wall, median CPU"
    )
    models = args.models.split(",") if args.models else (["convnet3"] if args.quick else ["convnet3", "resnet18"])
    cases = []
    if "convnet3" in models:
        cases += [("convnet3", conv, 0, False) for conv in CONV_CLASSES]
        cases += [("convnet3", "fast_conv.Conv", 0, True)]
        if args.seeds:
            cases += [("convnet3", conv, args.seeds, False) for conv in CONV_CLASSES]
    if "resnet18" in models:
        cases += [("resnet18", conv, 0, False) for conv in CONV_CLASSES]
    for model, conv, seeds, donate in cases:
        timing = time_train_step(model, conv, batch, repeats, seeds=seeds, donate=donate)
        results["e2e"].append(
            {"model": model, "conv": conv, "batch": batch, "seeds": seeds, "donate": donate, "step": timing}
        )
        label = f"{model} {conv}" + (f" vmap x{seeds}" if seeds else "") + (" donate" if donate else "")
        print(f"{label:40s} {fmt(timing)}", flush=True)


def main(args):
    batch = args.batch or (32 if args.quick else 100)
    repeats = args.repeats or (3 if args.quick else 5)
    results = {"machine": machine_info(), "batch": batch, "repeats": repeats, "layers": [], "e2e": []}
    print(json.dumps(results["machine"]))
    if args.only in (None, "layers"):
        run_layers(args, batch, repeats, results)
    if args.only in (None, "e2e"):
        run_e2e(args, batch, repeats, results)
    results["machine"]["loadavg_end"] = os.getloadavg()
    if args.out:
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(args.out)
        print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    sys.exit(0 if main(ARGS) else 1)
