"""float32 beside bfloat16 compute (`train.compute_dtype`) in the train step on CPU, per convolution path.

    python benchmarks/bf16_cpu.py --out benchmarks/results_bf16_cpu.json

One program per cell: ResNet-18 (width 16, batch norm) on a batch of 100 28x28x1 images, 3 seeds
vmapped in one jit, Lion, the state donated: the step `steps.make_train_step` builds, as training
runs it. Cells: every convolution implementation that runs here (`models.CONV_IMPLEMENTATIONS`
but 'xla_per_seed', which is for GPUs) x the two compute dtypes. Every cell is compiled first,
then the cells are stepped one step each per round, the order rotating, so load on a shared
machine hits all cells alike; figures are medians over rounds of the wall time and of the
process CPU time (all threads). The first loss of each cell is kept: the bfloat16 cells'
must be close to the float32 ones'.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from distill_jax import models  # noqa: E402
from distill_jax.models import onednn_conv  # noqa: E402
from distill_jax.optim import make_optimizer  # noqa: E402
from distill_jax.training import steps  # noqa: E402


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_cell(conv: str, dtype: str, seeds: int, batch: int, width: int):
    model = models.build_model("resnet18", 10, width=width, norm="batch", conv=conv, compute_dtype=dtype)
    optimizer = make_optimizer("lion", 1e-4, 5e-3)
    step = steps.make_train_step(model, optimizer)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((seeds, batch, 28, 28, 1)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, (seeds, batch)), jnp.int32)
    keys = jax.vmap(jax.random.key)(jnp.arange(seeds))
    state = jax.jit(jax.vmap(lambda k: steps.init_state(model, optimizer, k, images[0, :1])))(keys)
    multi = jax.jit(jax.vmap(lambda s, b, k: step(s, b, k, jnp.float32(1.0))), donate_argnums=(0,))
    batch_tree = {"image": images, "label": labels}
    started = time.perf_counter()
    compiled = multi.lower(state, batch_tree, keys).compile()
    compile_s = time.perf_counter() - started
    state, metrics = compiled(state, batch_tree, keys)  # warm-up step; its loss is the first one
    first_loss = [float(v) for v in metrics["loss"]]
    return {"compiled": compiled, "state": state, "batch": batch_tree, "keys": keys, "compile_s": compile_s,
            "first_loss": first_loss, "wall": [], "cpu": []}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--convs", default=",".join(c for c in models.CONV_IMPLEMENTATIONS if c != "xla_per_seed"))
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    convs = [c for c in args.convs.split(",") if c]
    if "onednn" in convs and onednn_conv.unavailable_reason() is not None:
        print("skipping onednn:", onednn_conv.unavailable_reason(), file=sys.stderr)
        convs.remove("onednn")
    cells = {(c, d): build_cell(c, d, args.seeds, args.batch, args.width) for c in convs for d in models.COMPUTE_DTYPES}
    names = list(cells)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            cell = cells[name]
            wall, cpu = time.perf_counter(), time.process_time()
            cell["state"], metrics = cell["compiled"](cell["state"], cell["batch"], cell["keys"])
            jax.block_until_ready(metrics)
            cell["wall"].append(time.perf_counter() - wall)
            cell["cpu"].append(time.process_time() - cpu)
    rows = []
    for (conv, dtype), cell in cells.items():
        rows.append({"conv": conv, "compute_dtype": dtype, "compile_s": round(cell["compile_s"], 2),
                     "step_wall_s": round(statistics.median(cell["wall"]), 4),
                     "step_cpu_s": round(statistics.median(cell["cpu"]), 4),
                     "first_loss": [round(v, 5) for v in cell["first_loss"]]})
    result = {"command": "python benchmarks/bf16_cpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)), "jax": jax.__version__,
              "network": f"resnet18 width {args.width}, batch norm", "batch": args.batch, "seeds": args.seeds,
              "image": "28x28x1", "rounds": args.rounds, "rows": rows}
    print(
        f"{result['cpu']}, {result['cores']} cores; {result['network']}, batch {args.batch}, {args.seeds} seeds vmapped"
    )
    print("| conv | compute dtype | compile s | step wall s | step CPU s | first loss (seed 0) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['conv']} | {row['compute_dtype']} | {row['compile_s']} | {row['step_wall_s']} | "
              f"{row['step_cpu_s']} | {row['first_loss'][0]} |")
    if args.out:
        with open(args.out + ".tmp", "w") as f:
            json.dump(result, f, indent=1)
        os.replace(args.out + ".tmp", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
