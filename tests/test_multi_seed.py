"""Many seeds at once on the device: the `(seeds, data)` mesh, several steps per call
(`multi_seed.make_chunk`) and the loop built on them.

A call of k steps must give exactly what k calls of one step give, seeds sharded over devices
what one device gives, and the compiled program of seeds on separate devices no collective.
"""
import collections
import json
import logging

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax import models
from distill_jax.data import augment
from distill_jax.optim import make_optimizer
from distill_jax.training import loop, multi_seed, sharding, steps
from helpers import synthetic_data, tiny_run_config

NUM_TRAIN, BATCH, CLASSES = 16, 8, 4
COLLECTIVES = ("all-reduce", "all-gather", "collective-permute", "all-to-all", "reduce-scatter")


def _program(num_seeds, droppath=False, optimizer="lion"):
    options = {"width": 4, "norm": "batch", "droppath": True} if droppath else {"width": 4, "depth": 2, "norm": "batch"}
    model = models.build_model("resnet10" if droppath else "convnet", num_classes=CLASSES, **options)
    # Lion's update is the sign of the gradient, so a bias before batch norm (whose gradient is
    # rounding noise) moves by +-lr with the noise: exact comparisons use it, close ones SGD
    opt = make_optimizer(optimizer, 1e-3 if optimizer == "lion" else 0.05, 5e-4)
    train_step = steps.make_train_step(
        model, opt, augment_fn=lambda rng, x: augment.augment(rng, x, ops=("flip", "crop"), k=1))
    init_keys, step_keys = multi_seed.seed_keys(list(range(num_seeds)))
    sample = jnp.zeros((1, 8, 8, 1))
    state = jax.jit(jax.vmap(lambda k: steps.init_state(model, opt, jax.random.wrap_key_data(k), sample)))(init_keys)
    rng = np.random.default_rng(0)
    data = {"image": rng.normal(size=(NUM_TRAIN, 8, 8, 1)).astype(np.float32),
            "label": rng.integers(0, CLASSES, NUM_TRAIN).astype(np.int32)}
    orders = np.stack([[rng.permutation(NUM_TRAIN)[:BATCH] for _ in range(num_seeds)] for _ in range(6)]).astype(
        np.int32
    )
    return train_step, jax.device_get(state), np.asarray(step_keys), data, orders


def _run_chunks(train_step, state, step_keys, data, orders, mesh, sizes, keep_rates, length=None):
    length = length or max(sizes)
    chunk = _chunk(train_step, mesh, length)
    state = sharding.shard_seeds(state, mesh)
    keys = sharding.shard_seeds(step_keys, mesh)
    placed = sharding.replicate(data, mesh)
    logged, start = [], 0
    for n in sizes:
        o = np.zeros((length,) + orders.shape[1:], np.int32)
        o[:n] = orders[start:start + n]
        r = np.ones((length,), np.float32)
        r[:n] = keep_rates[start:start + n]
        state, out = chunk(state, placed, sharding.place(o, sharding.stepped_batch_sharding(mesh)),
                           sharding.replicate(r, mesh), np.int32(n), keys, None)
        out = sharding.to_host(out)
        assert not out["loss"][n:].any(), "rows past num_steps stay zero"
        logged.append({k: v[:n] for k, v in out.items()})
        start += n
    return sharding.to_host(state), {k: np.concatenate([part[k] for part in logged]) for k in logged[0]}


_CHUNKS = {}


def _chunk(train_step, mesh, length):
    """One compiled program per (step function, mesh, length), as a run has."""
    key = (id(train_step), id(mesh), length)
    if key not in _CHUNKS:
        _CHUNKS[key] = (train_step, multi_seed.make_chunk(train_step, mesh, length))
    return _CHUNKS[key][1]


def test_a_call_of_k_steps_is_k_calls_of_one_step():
    train_step, state0, step_keys, data, orders = _program(3, droppath=True)
    keep_rates = np.array([1.0, 0.9, 0.9, 0.8, 0.7, 0.7], np.float32)
    # the reference: the host drives one vmapped step at a time, gathering each batch itself
    step = jax.jit(multi_seed.vmap_seeds(train_step))
    state, ref_logged = state0, []
    for i in range(6):
        batch = {k: v[orders[i]] for k, v in data.items()}
        state, metrics = step(state, batch, step_keys, jnp.float32(keep_rates[i]), None)
        ref_logged.append(jax.device_get(metrics))
    reference = jax.device_get(state)
    mesh = sharding.make_mesh(BATCH, devices=jax.devices()[:1], num_seeds=3)
    for sizes in ((6,), (1, 2, 3), (1,) * 6):
        got, logged = _run_chunks(train_step, state0, step_keys, data, orders, mesh, sizes, keep_rates, length=6)
        chex.assert_trees_all_close(got, reference, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(logged["loss"], np.stack([m["loss"] for m in ref_logged]), rtol=1e-6)
        np.testing.assert_allclose(logged["keep_rate_used"], np.stack([m["keep_rate_used"] for m in ref_logged]),
                                   rtol=1e-6)
        assert int(got["step"][0]) == 6


def test_eight_seeds_on_eight_devices_train_as_on_one_device():
    assert len(jax.devices()) == 8, "conftest sets 8 fake CPU devices"
    train_step, state0, step_keys, data, orders = _program(8, optimizer="sgd")
    rates = np.ones(6, np.float32)
    one = sharding.make_mesh(BATCH, devices=jax.devices()[:1], num_seeds=8)
    eight = sharding.make_mesh(BATCH, num_seeds=8)
    assert sharding.layout(eight) == {"seeds": 8, "data": 1}
    a, la = _run_chunks(train_step, state0, step_keys, data, orders, one, (2, 4), rates)
    b, lb = _run_chunks(train_step, state0, step_keys, data, orders, eight, (2, 4), rates)
    chex.assert_trees_all_close(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(la["loss"], lb["loss"], rtol=1e-5)
    # and on a (4 seeds, 2 data) mesh: each seed's batch split over two devices, batch norm included
    four_by_two = sharding.make_mesh(BATCH, devices=jax.devices(), num_seeds=4)
    assert sharding.layout(four_by_two) == {"seeds": 4, "data": 2}


def test_seeds_on_separate_devices_compile_to_a_program_without_collectives():
    train_step, state0, step_keys, data, orders = _program(8)
    mesh = sharding.make_mesh(BATCH, num_seeds=8)
    chunk = multi_seed.make_chunk(train_step, mesh, 4)
    args = (sharding.shard_seeds(state0, mesh), sharding.replicate(data, mesh),
            sharding.place(orders[:4], sharding.stepped_batch_sharding(mesh)),
            sharding.replicate(np.ones(4, np.float32), mesh), np.int32(4), sharding.shard_seeds(step_keys, mesh), None)
    hlo = chunk.lower(*args).compile().as_text()
    assert "while" in hlo  # the steps loop on the device
    found = [c for c in COLLECTIVES if c in hlo]
    assert not found, f"collectives between seeds on separate devices: {found}"
    # the same program with each seed's batch split over 2 devices does reduce, within a seed row
    mesh2 = sharding.make_mesh(BATCH, num_seeds=4)
    train_step4, state4, keys4, data4, orders4 = _program(4)
    chunk2 = multi_seed.make_chunk(train_step4, mesh2, 4)
    hlo2 = chunk2.lower(sharding.shard_seeds(state4, mesh2), sharding.replicate(data4, mesh2),
                        sharding.place(orders4[:4], sharding.stepped_batch_sharding(mesh2)),
                        sharding.replicate(np.ones(4, np.float32), mesh2), np.int32(4),
                        sharding.shard_seeds(keys4, mesh2), None).compile().as_text()
    assert "all-reduce" in hlo2


Device = collections.namedtuple("Device", "id process_index")


@pytest.mark.parametrize("devices, seeds, batch, shape", [
    (8, 8, 100, (8, 1)),   # a seed per device
    (8, 3, 100, (3, 2)),   # seeds first, then the batch over the devices left per seed (6 of 8 used)
    (3, 8, 100, (2, 1)),   # rows must divide the seeds: 2 rows of 4 seeds (2 of 3 used)
    (8, 1, 100, (1, 5)),   # one seed: the batch over the devices that divide it
    (8, 5, 10, (5, 1)),
    (1, 7, 13, (1, 1)),
])
def test_mesh_layout_puts_seeds_first_and_divides_evenly(devices, seeds, batch, shape):
    chosen, s, d = sharding.mesh_layout([Device(i, 0) for i in range(devices)], batch, seeds)
    assert (s, d) == shape and len(chosen) == s * d
    assert seeds % s == 0 and batch % d == 0


def test_mesh_layout_over_processes_takes_equal_shares():
    devices = [Device(i, i // 4) for i in range(8)]  # 2 processes x 4 devices
    chosen, s, d = sharding.mesh_layout(devices, 100, 6)
    assert (s, d) == (6, 1) and chosen == devices[0:3] + devices[4:7]
    with pytest.raises(sharding.MeshError, match="3 seed.*batch 5.*2 processes"):
        sharding.mesh_layout(devices, 5, 3)


def test_the_layout_line_explains_idle_devices():
    mesh = sharding.make_mesh(100, num_seeds=3)
    line = sharding.describe_layout(mesh, 3, 100, 8)
    assert "3 seed(s) over 3 device row(s)" in line and "split over 2 device(s) per row (50 images each)" in line
    assert "2 of 8 devices idle" in line
    assert "idle" not in sharding.describe_layout(sharding.make_mesh(100, num_seeds=8), 8, 100, 8)


def test_stretches_end_where_the_host_has_work():
    def due(step):
        return step % 4 == 0

    assert multi_seed.stretches(0, 10, due) == [(0, 1), (1, 4), (4, 8), (8, 10)]
    assert multi_seed.stretches(0, 10, due, first_alone=False) == [(0, 4), (4, 8), (8, 10)]
    assert multi_seed.stretches(4, 10, due, max_steps=2) == [(4, 5), (5, 7), (7, 8), (8, 10)]
    assert multi_seed.stretches(0, 3, lambda s: True) == [(0, 1), (1, 2), (2, 3)]
    assert multi_seed.stretches(5, 5, due) == []


def test_the_loop_gives_the_same_run_whatever_the_steps_per_call_and_records_its_mesh(tmp_path, caplog):
    data = synthetic_data()
    fields = {"num_seeds": 8, "train.epochs": 4, "log_every_steps": 3, "eval_every_epochs": 2,
              "checkpoint_every_epochs": 4}
    caplog.set_level(logging.INFO)
    results = {}
    for per_call in (1, 0):
        config = tiny_run_config(**fields, **{"train.steps_per_call": per_call})
        results[per_call] = loop.train_and_evaluate(config, tmp_path / str(per_call), data=data)
    assert results[1]["history"] == results[0]["history"]
    assert results[0]["mesh"] == {"seeds": 8, "data": 1}  # 8 fake devices: a seed on each
    saved = json.loads((tmp_path / "0" / "results.json").read_text())
    assert saved["mesh"] == {"seeds": 8, "data": 1}
    assert saved["timing"]["compile_seconds"] > 0 and saved["timing"]["seconds_per_step"] > 0
    assert any("mesh: 8 seed(s) over 8 device row(s)" in r.getMessage() for r in caplog.records)
    # every step was logged where due, whatever the calls: steps 3 and 6 and the last (8)
    lines = [json.loads(line) for line in (tmp_path / "0" / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in lines if "loss_mean" in record] == [3, 6, 8]
