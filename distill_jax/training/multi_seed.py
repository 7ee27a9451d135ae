"""The program that trains many seeds at once, several steps per call, on the device.

A call of `make_chunk`'s function runs up to `length` steps of every seed without returning to
the host: the training set and the teacher's variables are already on the devices, each
step gathers its seeds' batches there from the data orders of the call (computed on the host,
one small integer array), and the values every step logs come back together at the end. The
host calls it once per stretch between things it must do itself (a log line, an evaluation,
a checkpoint), so a step costs no dispatch, no host-to-device copy of a batch and no
synchronisation. The number of steps is an argument, not a shape: one compiled program serves
every stretch of a run.

Seeds are vmapped and laid out on the `(seeds, data)` mesh (`sharding`): parameters, optimiser
state, keys and batches by seed row, batches split over a row's devices.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from distill_jax.training import sharding


def seed_keys(seeds) -> tuple[jax.Array, jax.Array]:
    """(init keys, step key data) of each seed, (seeds, ...): a seed's network and its steps
    draw from streams fixed by the seed alone, trained with others or not."""
    keys = [jax.random.key(s) for s in seeds]
    init = jnp.stack([jax.random.key_data(jax.random.fold_in(k, 0)) for k in keys])
    step = jnp.stack([jax.random.key_data(jax.random.fold_in(k, 1)) for k in keys])
    return init, step


def vmap_seeds(train_step: Callable) -> Callable:
    """`train_step` of `steps.make_train_step` for every seed at once:
    `(state, batch, step_key_data, keep_rate, teacher_variables) -> (state, metrics)`, state,
    batch and key data with a leading seed axis; the keep rate and the teacher shared."""

    def one(state, batch, key_data, keep_rate, teacher_variables):
        return train_step(state, batch, jax.random.wrap_key_data(key_data), keep_rate, teacher_variables)

    return jax.vmap(one, in_axes=(0, 0, 0, None, None))


def make_chunk(train_step: Callable, mesh: Mesh, length: int) -> Callable:
    """`chunk(state, data, orders, keep_rates, num_steps, step_keys, teacher_variables) -> (state, logged)`.

    Runs steps 0..num_steps-1 (num_steps <= length, a traced int) of every seed:
      state:      per-seed train state (`steps.init_state`, vmapped), placed by `sharding.shard_seeds`;
                  donated: the returned state replaces it;
      data:       `{"image": (N, ...), "label": (N, ...)}`, the whole training set, replicated;
      orders:     (length, seeds, batch) int32 indices into `data`, step i's batch of each seed
                  (`sharding.stepped_batch_sharding`; rows past num_steps are ignored);
      keep_rates: (length,) float32, step i's DropPath keep rate;
      step_keys:  (seeds, ...) key data (`seed_keys`), each step folds in its own counter;
      teacher_variables: the KD teacher's variables (replicated) or None.
    `logged` holds each step's metrics, (length, seeds) per value; rows past num_steps are zero.
    A call with num_steps = n gives what n calls of one step give (tests/test_multi_seed.py: equal
    up to float32 rounding, and the loop's histories equal whatever the steps per call).
    """
    seeded = vmap_seeds(train_step)

    # inside the map a device sees its own seeds; the compiler still splits their batches over the
    # row's devices (the `data` axis stays automatic, batch-norm and gradient reductions included)
    def one_step(i, state, data, orders, keep_rates, step_keys, teacher_variables):
        idx = orders[i]
        batch = {k: v[idx] for k, v in data.items()}
        if mesh.shape[sharding.DATA_AXIS] > 1:
            row_batch = NamedSharding(jax.sharding.get_abstract_mesh(), P(None, sharding.DATA_AXIS))
            batch = jax.lax.with_sharding_constraint(batch, row_batch)
        return seeded(state, batch, step_keys, keep_rates[i], teacher_variables)

    def chunk(state, data, orders, keep_rates, num_steps, step_keys, teacher_variables: Optional[dict]):
        shapes = jax.eval_shape(one_step, 0, state, data, orders, keep_rates, step_keys, teacher_variables)[1]
        logged = jax.tree.map(lambda s: jnp.zeros((length,) + s.shape, s.dtype), shapes)

        def body(i, carry):
            state, logged = carry
            state, metrics = one_step(i, state, data, orders, keep_rates, step_keys, teacher_variables)
            return state, jax.tree.map(lambda buf, v: buf.at[i].set(v), logged, metrics)

        return jax.lax.fori_loop(0, num_steps, body, (state, logged))

    # seeds are manual: each row runs its own seeds and nothing crosses rows (the compiler, left
    # to partition a vmapped network by seed, gathers per-seed kernels across devices)
    seed, step_seed = P(sharding.SEED_AXIS), P(None, sharding.SEED_AXIS)
    per_row = jax.shard_map(chunk, mesh=mesh, in_specs=(seed, P(), step_seed, P(), P(), seed, P()),
                            out_specs=(seed, step_seed), axis_names=frozenset({sharding.SEED_AXIS}),
                            check_vma=False)
    return jax.jit(per_row, out_shardings=(sharding.seed_sharding(mesh), sharding.stepped_seed_sharding(mesh)),
                   donate_argnums=(0,))


def stretches(start: int, end: int, boundaries: Callable[[int], bool], first_alone: bool = True,
              max_steps: int = 0) -> list[tuple[int, int]]:
    """The (first, last) steps of the calls from `start` (done) to `end`: each call stops at a step
    where `boundaries(step)` is true (something is due there) or after `max_steps` steps (0: no
    limit); with `first_alone` the first call runs one step (it compiles: timed apart)."""
    spans, first = [], start
    for step in range(start + 1, end + 1):
        size = step - first
        if (step == end or boundaries(step) or (first_alone and not spans and size == 1)
                or (max_steps and size >= max_steps)):
            spans.append((first, step))
            first = step
    return spans
