"""Smoke and arithmetic tests of benchmarks/train_step.py (the JAX train-step timer) and
benchmarks/torch_reference.py (the same step in PyTorch).

Tiny sizes (width 4, batch 4, 8 px, one timed step): these check the machinery and the
arithmetic (FLOPs, MFU, ratios, seeds scaling), not the speed.
"""
import importlib.util
import json

import jax
import numpy as np
import pytest

import train_step
from distill_jax import config as config_lib
from distill_jax.data import pipeline, preprocess
from distill_jax.training import loop

TINY = dict(batch=4, size=8, width=4)
# Multiply-accumulates of ConvNet-3 width 4 on one 8x8x3 image counting, as XLA's cost analysis does,
# only kernel taps that fall inside the (zero-padded) image: per axis a 3-tap kernel with padding 1
# has 3n - 2 valid taps on a side of n, so 8 px: (22/24)^2 of 64*9 taps, 4 px: (10/12)^2, 2 px: (4/6)^2.
_VALID_MACS = (8 * 8 * 4 * 27) * (22 / 24) ** 2 + (4 * 4 * 4 * 36) * (10 / 12) ** 2 + (2 * 2 * 4 * 36) * (4 / 6) ** 2
_DENSE_MACS = 4 * 10


def test_tiny_jax_step_reports_consistent_figures(tmp_path):
    out = tmp_path / "bench.json"
    record = train_step.main(["--models", "convnet", "--batch", "4", "--size", "8", "--width", "4", "--seeds", "1",
                              "--repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(record))  # written whole, JSON-safe
    assert record["backend"] == "cpu" and record["jax"] == jax.__version__
    (row,) = record["rows"]
    assert row["compile_s"] > 0 and row["step_s"] > 0 and row["cpu_s"] >= 0
    np.testing.assert_allclose(row["images_per_s"], 4 / row["step_s"])
    assert row["num_parameters"] == (27 * 4 + 4) + 2 * (36 * 4 + 4) + 3 * 8 + (4 * 10 + 10)
    # forward, kernel gradient (same MACs) and input gradient of every layer but the first, x 2 FLOPs x 4 images
    matmul_flops = (
        2 * 4 * (2 * (_VALID_MACS + _DENSE_MACS) + (_VALID_MACS - 8 * 8 * 4 * 27 * (22 / 24) ** 2 + _DENSE_MACS))
    )
    assert matmul_flops <= row["flops_per_step"] <= 1.5 * matmul_flops  # the rest: norm, relu, pool, loss, SGD
    np.testing.assert_allclose(row["mfu"], row["flops_per_step"] / row["step_s"] / row["peak_flops"])
    assert row["peak_rss_mb"] > 0 and row["backend"] == "cpu" and row["source"].startswith("estimate")


def test_model_flops_scale_with_vmapped_seeds_without_compiling():
    """fast_conv's loops would make the compiled program's own count miss seeds; model_flops must not."""
    program = train_step.build_program(train_step.StepConfig("convnet", seeds=2, **TINY))
    flops = []
    for seeds in ([0], [0, 1]):
        init_keys, step_keys = train_step.seed_keys(seeds)
        batch = train_step.seed_batches(program.images, program.labels, seeds, TINY["batch"])
        args = jax.eval_shape(
            lambda k=init_keys, b=batch, s=step_keys: (program.init(k), b, s, program.keep_rate, None)
        )
        flops.append(train_step.model_flops(program.cost_step, args))
    np.testing.assert_allclose(flops[1], 2 * flops[0], rtol=0.01)


def _loop_config(config, num_seeds):
    """The training config of a benchmark cell's program (the loss of a first step does not depend
    on the optimiser, which the benchmark fixes to match torch_reference)."""
    c = config_lib.default_config()
    c.num_seeds, c.seed = num_seeds, 0
    c.model.name, c.model.width = config.model, config.width
    c.train.epochs, c.train.batch_size = 1, config.batch
    c.train.augment.k = config.augment_k
    c.log_every_steps = c.eval_every_epochs = c.checkpoint_every_epochs = 1
    return config_lib.validate(c)


@pytest.mark.parametrize("sequential", [False, True])
def test_the_timed_program_is_the_training_loops_first_step(tmp_path, sequential):
    """Every seed's loss in the benchmark's first step equals that seed's first logged loss when
    training.loop trains the same network on the benchmark's synthetic set: the same init, the same
    per-seed batch and the same step key (DSA draws with it), seeds together or one after another."""
    config = train_step.StepConfig("convnet", seeds=2, augment_k=1, sequential=sequential, **TINY)
    prepared = train_step.PreparedStep(config)
    prepared.run()
    program = train_step.build_program(config)
    none = preprocess.fit("none", np.zeros((2, TINY["size"], TINY["size"], 3), np.float32))
    data = pipeline.TrainingData(program.images, program.labels, program.images[:4], program.labels[:4], 10, none,
                                 "benchmark synthetic set")
    loop.train_and_evaluate(_loop_config(config, 2), tmp_path, data=data)
    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1
    np.testing.assert_allclose(prepared.losses(), first["loss"], rtol=1e-5)
    assert prepared.losses()[0] != prepared.losses()[1]


def test_several_steps_per_call_are_the_training_loops_steps(tmp_path):
    """With K steps per call (multi_seed.make_chunk), step i of the call is the loop's step i + 1 for
    every seed, across an epoch boundary (the synthetic set holds 2 batches): the same batches in
    each seed's order, the same keys, the same optimiser (Lion, constant learning rate)."""
    config = train_step.StepConfig("convnet", seeds=2, augment_k=1, optimizer="lion", steps_per_call=3, **TINY)
    prepared = train_step.PreparedStep(config)
    wall, _ = prepared.run()
    assert wall > 0 and prepared.info()["steps_per_call"] == 3
    program = train_step.build_program(config)
    none = preprocess.fit("none", np.zeros((2, TINY["size"], TINY["size"], 3), np.float32))
    data = pipeline.TrainingData(program.images, program.labels, program.images[:4], program.labels[:4], 10, none,
                                 "benchmark synthetic set")
    c = _loop_config(config, 2)
    c.train.epochs, c.train.optimizer, c.train.learning_rate, c.train.weight_decay = 2, "lion", 5e-5, 5e-3
    c.train.lr_schedule = "constant"
    loop.train_and_evaluate(config_lib.validate(c), tmp_path, data=data)
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    for i in range(3):
        assert logged[i]["step"] == i + 1
        np.testing.assert_allclose(prepared.losses(i), logged[i]["loss"], rtol=1e-5)


def test_every_seed_steps_on_its_own_batch_in_its_own_order():
    program = train_step.build_program(train_step.StepConfig("convnet", **TINY))
    assert len(program.images) == train_step.TRAIN_BATCHES * TINY["batch"]
    batch = train_step.seed_batches(program.images, program.labels, [0, 1], TINY["batch"])
    assert batch["image"].shape == (2, TINY["batch"], 8, 8, 3) and batch["label"].shape == (2, TINY["batch"])
    alone = train_step.seed_batches(program.images, program.labels, [1], TINY["batch"])
    np.testing.assert_array_equal(alone["image"][0], batch["image"][1])  # a seed's batch does not depend on the others
    assert not np.array_equal(batch["image"][0], batch["image"][1])


def test_peak_table_and_cpu_estimate():
    assert train_step.peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert train_step.peak_flops("NVIDIA H100 80GB HBM3", "tf32") == 495e12
    assert train_step.peak_flops("NVIDIA H100 PCIe", "tf32") == 378e12
    assert train_step.peak_flops("NVIDIA H200", "fp32") == 67e12
    assert train_step.peak_flops("NVIDIA A100-SXM4-40GB", "tf32") == 156e12
    assert train_step.peak_flops("TPU v5 lite", "bf16") == 197e12
    assert train_step.peak_flops("TPU v4", "fp32") is None
    assert train_step.peak_flops("Some New Chip", "bf16") is None
    assert train_step.cpu_peak_flops(2, 2.25, {"avx", "avx2", "fma"}) == 2 * 2.25e9 * 32
    assert train_step.cpu_peak_flops(4, 3.0, {"avx512f", "avx2", "fma"}) == 4 * 3e9 * 64
    assert train_step.flops_per_cycle({"sse2"}) == 8
    assert train_step.compute_precision("gpu") == "tf32" and train_step.compute_precision("cpu") == "fp32"


def test_read_cpu_info_parses_model_clock_and_flags(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text("model name\t: Test CPU\ncpu MHz\t\t: 2000.0\nflags\t\t: fpu avx2 fma\n\n"
                    "model name\t: Test CPU\ncpu MHz\t\t: 3100.5\nflags\t\t: fpu avx2 fma\n")
    info = train_step.read_cpu_info(str(path))
    assert info == {"model": "Test CPU", "ghz": 3.1005, "flags": {"fpu", "avx2", "fma"}}


def test_summarise_times_medians_and_mfu():
    config = train_step.StepConfig("convnet", batch=10, seeds=2)
    out = train_step.summarise_times(config, flops=8e9, peak=4e9, cores=2, walls=[1.0, 4.0, 2.0], cpus=[3.0, 2.0, 8.0])
    assert out["step_s"] == 2.0 and out["cpu_s"] == 3.0 and out["images_per_s"] == 10.0
    assert out["mfu"] == 8e9 / 2.0 / 4e9  # 1.0
    assert out["mfu_cpu"] == 8e9 / 3.0 / 2e9


def test_step_config_rejects_bad_fields():
    with pytest.raises(ValueError, match="train_step.py.*'batch'.*positive int"):
        train_step.StepConfig("convnet", batch=0).check()
    with pytest.raises(ValueError, match="'model' must be one of"):
        train_step.StepConfig("lenet").check()
    with pytest.raises(ValueError, match="'augment_k'"):
        train_step.StepConfig("convnet", augment_k=99).check()
    with pytest.raises(ValueError, match="--seeds expects comma-separated positive ints"):
        train_step.parse_positive_ints("1,x", "--seeds")
    with pytest.raises(ValueError, match="'compute_dtype' must be one of"):
        train_step.StepConfig("convnet", compute_dtype="float16").check()


@pytest.mark.skipif("bfloat16" not in train_step.COMPUTE_DTYPES, reason="this version's networks take no compute_dtype")
def test_a_bfloat16_cell_computes_in_bfloat16_and_is_held_against_the_bf16_peak():
    prepared = train_step.PreparedStep(train_step.StepConfig("convnet", compute_dtype="bfloat16", **TINY))
    prepared.run()
    assert np.isfinite(prepared.losses()).all() and prepared.info()["compute_dtype"] == "bfloat16"
    assert "bf16" in prepared.compiled.as_text()
    assert train_step.device_peak(compute_dtype="bfloat16")["precision"] == "fp32"  # the CPU has no bf16 peak


_NO_TORCH = importlib.util.find_spec("torch") is None


@pytest.mark.skipif(_NO_TORCH, reason="torch is not installed (optional `bench` extra: pip install torch==2.13.0)")
def test_tiny_torch_step_and_parameter_counts_match_jax():
    import torch_reference

    row = torch_reference.time_config(torch_reference.TorchConfig("convnet", threads=1, **TINY), repeats=1)
    assert row["step_s"] > 0 and row["images_per_s"] == pytest.approx(4 / row["step_s"])
    for name, norm in (("convnet", "instance"), ("resnet18", "batch"), ("resnet50", "batch")):
        torch_model = torch_reference.build_model(name, width=4, norm=norm, image_size=8, channels=3)
        jax_model = train_step.build_network(train_step.StepConfig(name, width=4, norm=norm))
        shapes = jax.eval_shape(
            lambda jax_model=jax_model: jax_model.init(
                jax.random.key(0), np.zeros((1, 8, 8, 3), np.float32), train=False
            )
        )
        jax_count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
        assert torch_reference.count_parameters(torch_model) == jax_count, name


@pytest.mark.skipif(_NO_TORCH, reason="torch is not installed (optional `bench` extra: pip install torch==2.13.0)")
def test_torch_lion_matches_the_project_lion():
    import torch

    import torch_reference
    from distill_jax.optim import make_optimizer

    rng = np.random.default_rng(0)
    p0, grads = rng.normal(size=5).astype(np.float32), [rng.normal(size=5).astype(np.float32) for _ in range(2)]
    param = torch.nn.Parameter(torch.tensor(p0))
    opt = torch_reference.Lion([param], lr=0.1, weight_decay=0.5)
    optax_opt = make_optimizer("lion", 0.1, 0.5)
    jp, state = jax.numpy.asarray(p0), optax_opt.init(jax.numpy.asarray(p0))
    for g in grads:
        param.grad = torch.tensor(g)
        opt.step()
        updates, state = optax_opt.update(jax.numpy.asarray(g), state, jp)
        jp = jp + updates
    np.testing.assert_allclose(param.detach().numpy(), np.asarray(jp), rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(_NO_TORCH, reason="torch is not installed (optional `bench` extra: pip install torch==2.13.0)")
def test_torch_config_rejects_bad_fields():
    import torch_reference

    with pytest.raises(ValueError, match="torch_reference.py.*'norm'"):
        torch_reference.TorchConfig(norm="layer").check()
    with pytest.raises(ValueError, match="'seeds' must be a positive int"):
        torch_reference.TorchConfig(seeds=0).check()
    with pytest.raises(ValueError, match="'autocast' must be one of"):
        torch_reference.TorchConfig(autocast="float16").check()
