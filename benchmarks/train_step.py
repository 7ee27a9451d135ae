"""Times the jitted train step: compile time apart from step time, images/s, peak memory.

    python benchmarks/train_step.py --models convnet,resnet18 --batch 100 --seeds 1 --out bench.json

The step is the one training uses (distill_jax.training.steps): forward, loss, backward,
optimiser update, optionally with the KD teacher's forward (--kd) and k-fold DSA (--augment k).
Seeds are vmapped into one program, as in training.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from distill_jax import models  # noqa: E402
from distill_jax.data import augment  # noqa: E402
from distill_jax.optim import make_optimizer  # noqa: E402
from distill_jax.training import steps  # noqa: E402


def time_step(name: str, *, batch: int, seeds: int, size: int, channels: int, width: int | None,
              kd: bool, augment_k: int, repeats: int) -> dict:
    options = {"width": width} if width else {}
    if name.startswith("resnet"):
        options.update(droppath=True, improved_shortcut=True)
    model = models.build_model(name, num_classes=10, **options)
    opt = make_optimizer("lion", 5e-5, 5e-3)
    keys = jax.random.split(jax.random.key(0), seeds)
    sample = jnp.zeros((1, size, size, channels))
    state = jax.jit(jax.vmap(lambda k: steps.init_state(model, opt, k, sample)))(keys)
    kd_settings = teacher_vars = None
    if kd:
        teacher = models.build_model("convnet", num_classes=10)
        teacher_vars = jax.jit(lambda k: teacher.init(k, sample, train=False))(jax.random.key(1))
        kd_settings = steps.KDSettings(teacher)
    augment_fn = (lambda r, x: augment.augment(r, x, k=augment_k)) if augment_k else None
    step = steps.make_train_step(model, opt, augment_fn=augment_fn, kd=kd_settings)
    fn = jax.jit(jax.vmap(step, in_axes=(0, None, 0, None, None)), donate_argnums=(0,))
    rng = np.random.default_rng(0)
    batch_arrays = {"image": jnp.asarray(rng.normal(size=(batch, size, size, channels)), jnp.float32),
                    "label": jnp.asarray(rng.integers(0, 10, batch))}
    keep = jnp.float32(0.8)
    t0 = time.perf_counter()
    compiled = fn.lower(state, batch_arrays, keys, keep, teacher_vars).compile()
    compile_s = time.perf_counter() - t0
    flops = None
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float(cost.get("flops", 0.0)) or None
    except Exception:  # cost analysis is not offered by every backend
        pass
    state, _ = compiled(state, batch_arrays, keys, keep, teacher_vars)  # warm-up
    jax.block_until_ready(state)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch_arrays, keys, keep, teacher_vars)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    return {"model": name, "width": width, "batch": batch, "seeds": seeds, "image": [size, size, channels],
            "kd": kd, "augment_k": augment_k, "compile_s": compile_s, "step_s": step_s,
            "step_s_all": times, "images_per_s": batch * seeds / step_s, "flops_per_step": flops,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="convnet,resnet18")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--seeds", default="1", help="comma list, e.g. 1,4,8")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--width", type=int, default=0, help="0 = the network's default width")
    p.add_argument("--kd", action="store_true", help="include the ConvNet teacher's forward")
    p.add_argument("--augment", type=int, default=0, help="k DSA ops per batch (0 = none)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    rows = []
    print(f"{'model':10s} {'seeds':>5s} {'batch':>5s} {'compile s':>9s} {'step s':>8s} {'images/s':>9s} {'GFLOP':>8s}")
    for name in args.models.split(","):
        for seeds in (int(s) for s in args.seeds.split(",")):
            r = time_step(name, batch=args.batch, seeds=seeds, size=args.size, channels=args.channels,
                          width=args.width or None, kd=args.kd, augment_k=args.augment, repeats=args.repeats)
            rows.append(r)
            gflop = f"{r['flops_per_step'] / 1e9:8.1f}" if r["flops_per_step"] else "       ?"
            print(f"{name:10s} {seeds:5d} {args.batch:5d} {r['compile_s']:9.1f} {r['step_s']:8.3f} "
                  f"{r['images_per_s']:9.1f} {gflop}", flush=True)
    record = {"rows": rows, "jax": jax.__version__, "backend": jax.default_backend(),
              "device": str(jax.devices()[0].device_kind), "machine": platform.processor() or platform.machine(),
              "cpu_count": os.cpu_count(), "xla_flags": os.environ.get("XLA_FLAGS", "")}
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(record, f, indent=1)
        os.replace(tmp, args.out)
    return record


if __name__ == "__main__":
    main()
