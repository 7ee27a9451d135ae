"""Train and eval steps: purity, sharding over devices, keep rate as a traced value, KD."""
from typing import Callable

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from distill_jax import losses, models
from distill_jax.data import augment
from distill_jax.optim import make_optimizer
from distill_jax.training import sharding, steps


def _batch(n=8, size=8, channels=1, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": rng.normal(size=(n, size, size, channels)).astype(np.float32),
            "label": rng.integers(0, classes, size=n).astype(np.int64)}


def _setup(name="convnet", optimizer="sgd", lr=0.05, **options):
    options = options or {"width": 4, "depth": 2, "norm": "batch"}
    model = models.build_model(name, num_classes=4, **options)
    opt = make_optimizer(optimizer, lr, 5e-4)
    state = steps.init_state(model, opt, jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    return model, opt, state


def test_step_is_pure_and_deterministic():
    model, opt, state = _setup()
    step = jax.jit(steps.make_train_step(model, opt))
    batch = _batch()
    a, ma = step(state, batch, jax.random.key(1), 1.0)
    b, mb = step(state, batch, jax.random.key(1), 1.0)
    chex.assert_trees_all_equal(a, b)
    chex.assert_trees_all_equal(ma, mb)
    assert int(a["step"]) == 1 and int(state["step"]) == 0
    assert not jax.tree_util.tree_all(jax.tree.map(lambda x, y: bool(jnp.all(x == y)), a["params"], state["params"]))


def test_step_loss_equals_cross_entropy_of_apply():
    model, opt, state = _setup(norm="none", width=4, depth=2)
    batch = _batch()
    _, metrics = steps.make_train_step(model, opt)(state, batch, jax.random.key(1), 1.0)
    logits = model.apply({"params": state["params"]}, jnp.asarray(batch["image"]), train=True)
    np.testing.assert_allclose(metrics["loss"], losses.cross_entropy(logits, batch["label"]), rtol=1e-5)


def test_soft_labels_use_soft_cross_entropy():
    model, opt, state = _setup(norm="none", width=4, depth=2)
    batch = _batch()
    probs = jax.nn.softmax(jnp.asarray(np.random.default_rng(3).normal(size=(8, 4)), jnp.float32))
    batch["label"] = np.asarray(probs)
    _, metrics = steps.make_train_step(model, opt)(state, batch, jax.random.key(1), 1.0)
    logits = model.apply({"params": state["params"]}, jnp.asarray(batch["image"]), train=True)
    np.testing.assert_allclose(metrics["loss"], losses.soft_cross_entropy(logits, probs), rtol=1e-5)


def test_same_result_on_one_and_eight_devices():
    """Data parallelism must not change the maths, batch-norm statistics included."""
    assert len(jax.devices()) == 8, "conftest sets 8 fake CPU devices"
    model, opt, state0 = _setup()
    step = steps.make_train_step(model, opt)
    results = []
    for n in (1, 8):
        mesh = sharding.make_mesh(8, devices=jax.devices()[:n])
        assert mesh.size == n
        repl = sharding.replicated(mesh)
        fn = jax.jit(step, out_shardings=(repl, repl))
        state = sharding.replicate(state0, mesh)
        for i in range(3):
            state, metrics = fn(state, sharding.shard_batch(_batch(seed=i), mesh), jax.random.key(7), jnp.float32(1.0))
        results.append((jax.device_get(state), jax.device_get(metrics)))
    chex.assert_trees_all_close(results[0], results[1], rtol=1e-4, atol=1e-5)
    # the batch really was split over 8 devices
    mesh8 = sharding.make_mesh(8, devices=jax.devices())
    placed = sharding.shard_batch(_batch(), mesh8)
    assert len(placed["image"].addressable_shards) == 8
    assert placed["image"].addressable_shards[0].data.shape[0] == 1


def test_mesh_uses_devices_that_divide_the_batch():
    assert sharding.make_mesh(10).size == 5
    assert sharding.make_mesh(100).size == 5
    assert sharding.make_mesh(7).size == 7
    assert sharding.make_mesh(16).size == 8


def _droppath_setup():
    return _setup("resnet10", optimizer="lion", lr=1e-3, width=4, norm="batch", droppath=True,
                  improved_shortcut=True)


def test_keep_rate_is_traced_no_recompilation():
    model, opt, state = _droppath_setup()
    step = steps.make_train_step(model, opt)
    traced = chex.assert_max_traces(step, n=1)
    jitted = jax.jit(traced)
    batch = _batch()
    for p in (1.0, 0.9, 0.7, 0.5, 0.8):
        state, metrics = jitted(state, batch, jax.random.key(0), jnp.float32(p))
        # the rate the DropPath blocks really applied is the one passed in
        np.testing.assert_allclose(metrics["keep_rate_used"], p, rtol=1e-6)


def test_keep_rate_changes_the_update():
    model, opt, state = _droppath_setup()
    step = jax.jit(steps.make_train_step(model, opt))
    batch = _batch()
    a, _ = step(state, batch, jax.random.key(0), jnp.float32(1.0))
    b, _ = step(state, batch, jax.random.key(0), jnp.float32(0.5))
    diffs = jax.tree.leaves(jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y))), a["params"], b["params"]))
    assert max(diffs) > 0


def test_multi_seed_vmap_gives_independent_networks():
    model, opt, _ = _setup()
    keys = jax.random.split(jax.random.key(0), 3)
    states = jax.vmap(lambda k: steps.init_state(model, opt, k, jnp.zeros((1, 8, 8, 1))))(keys)
    step = jax.jit(jax.vmap(steps.make_train_step(model, opt), in_axes=(0, None, 0, None)))
    new, metrics = step(states, _batch(), keys, jnp.float32(1.0))
    chex.assert_shape(metrics["loss"], (3,))
    kernel = jax.tree.leaves(new["params"])[0]
    assert not np.allclose(kernel[0], kernel[1])
    # seed 1 of the vmapped program equals seed 1 trained alone
    single = jax.tree.map(lambda x: x[1], states)
    alone, _ = jax.jit(steps.make_train_step(model, opt))(single, _batch(), keys[1], jnp.float32(1.0))
    chex.assert_trees_all_close(jax.tree.map(lambda x: x[1], new["params"]), alone["params"], rtol=1e-5, atol=1e-6)


class _RecordingTeacher(nn.Module):
    """A small ConvNet teacher that hands every batch it is applied to to `record` (under jit too)."""

    record: Callable

    @nn.compact
    def __call__(self, x, train):
        jax.debug.callback(self.record, x)
        return models.ConvNet(num_classes=4, width=4, depth=1, norm="instance", name="net")(x, train)


def test_kd_teacher_gets_the_students_augmented_batch_and_loss_matches():
    """A random augmentation (k = 2 of scale, crop, colour): the teacher sees exactly the images the
    student trains on, augment(split(fold_in(rng, step))[0], images) as steps.py derives the key, and
    the loss is the KD loss of both networks on those images."""
    model, opt, state = _setup(norm="none", width=4, depth=2)
    state = dict(state, step=jnp.asarray(3, jnp.int32))  # a later step: the key must fold in the counter
    seen = []
    teacher = _RecordingTeacher(lambda x: seen.append(np.asarray(x)))
    teacher_vars = teacher.init(jax.random.key(5), jnp.zeros((1, 8, 8, 1)), train=False)
    jax.effects_barrier()
    seen.clear()  # init ran the callback too
    augment_fn = lambda rng, x: augment.augment(rng, x, ops=("scale", "crop", "color"), k=2)  # noqa: E731
    kd = steps.KDSettings(teacher, alpha=0.7, temperature=2.0)
    # Eager, so the step and the replay below run the same compiled augmentation: equal to the bit.
    step = steps.make_train_step(model, opt, augment_fn=augment_fn, kd=kd)
    batch = _batch()
    _, metrics = step(state, batch, jax.random.key(1), 1.0, teacher_vars)
    jax.effects_barrier()

    # The augmentation replayed outside the step, from steps.py's key derivation at step 3.
    augment_rng, _ = jax.random.split(jax.random.fold_in(jax.random.key(1), 3))
    x = np.asarray(augment_fn(augment_rng, jnp.asarray(batch["image"])))
    assert np.max(np.abs(x - batch["image"])) > 0.1  # really augmented, not the identity
    assert len(seen) == 1
    np.testing.assert_array_equal(seen[0], x)  # the teacher's input: the augmented batch
    s = model.apply({"params": state["params"]}, x, train=True)
    t = teacher.apply(teacher_vars, x, train=False)
    expected = losses.kd_loss(s, t, jnp.asarray(batch["label"]), alpha=0.7, temperature=2.0)
    np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-5)  # the student's input: the same batch


def test_eval_step_counts_with_mask():
    model, _, state = _setup()
    batch = _batch()
    batch["mask"] = np.array([1, 1, 1, 1, 0, 0, 0, 0], np.float32)
    sums = steps.make_eval_step(model)(state["params"], state["batch_stats"], batch)
    logits = model.apply({"params": state["params"], "batch_stats": state["batch_stats"]}, batch["image"], train=False)
    expected = np.sum(np.argmax(logits, -1)[:4] == batch["label"][:4])
    assert float(sums["count"]) == 4
    assert float(sums["correct"]) == expected
