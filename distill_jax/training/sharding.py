"""Placement with `jax.sharding` on a 2-D device mesh `(seeds, data)`.

The workload is many small, independent networks (seeds) trained at once, so seeds go on
devices first: every network's parameters, optimiser state and batches live on the devices of
its seed row, and networks never talk to each other. Only the devices left per seed split a
seed's batch (`data`), with the gradient and batch-norm reductions that implies, inside the row.

The same code runs on one device, on several local devices, and on several hosts after
`jax.distributed.initialize()`: every host holds the same (small) host arrays and
`make_array_from_callback` lets each one contribute only its own shards, to its own devices
(the mesh takes the same number of devices from every host); `to_host` brings results back on
every host.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from distill_jax.errors import UserError

SEED_AXIS = "seeds"
DATA_AXIS = "data"


class MeshError(UserError, ValueError):
    """The seeds and the batch cannot be laid out so that every process holds an equal part."""


def _divisors(n: int | None, limit: int) -> list[int]:
    return [d for d in range(limit, 0, -1) if n is None or n % d == 0]


def mesh_layout(devices, batch_size: int | None, num_seeds: int = 1) -> tuple[list, int, int]:
    """(devices in mesh order, seed rows S, data columns D) for `num_seeds` networks whose batch is
    `batch_size`.

    S divides the seeds and D the batch: uneven shares would pad a seed's batch (biasing batch
    norm) or add networks nobody asked for. Seeds come first, as they need no communication: the
    largest S that fits, then the largest D that fits beside it. With several processes
    (`jax.distributed`) every process keeps devices in the mesh, equally many: each runs the same
    program and feeds its own devices, so none can sit out.
    """
    by_process: dict[int, list] = {}
    for d in devices:
        by_process.setdefault(d.process_index, []).append(d)
    processes = len(by_process)
    per_process = min(len(ds) for ds in by_process.values())
    total = processes * per_process
    for s in _divisors(num_seeds, total):
        for d in _divisors(batch_size, total // s):
            if (s * d) % processes == 0:
                take = s * d // processes
                chosen = [dev for p in sorted(by_process) for dev in by_process[p][:take]]
                return chosen, s, d
    raise MeshError(f"{num_seeds} seed(s) with batch {batch_size} do not split over {processes} processes (each "
                    f"feeds an equal part): use a seed count or a batch size divisible by {processes}, or fewer "
                    f"processes")


def make_mesh(batch_size: int | None = None, devices=None, *, num_seeds: int = 1) -> Mesh:
    """The `(seeds, data)` mesh of `mesh_layout` over all processes' devices (`jax.devices()`)."""
    devices = list(jax.devices() if devices is None else devices)
    chosen, s, d = mesh_layout(devices, batch_size, num_seeds)
    return Mesh(np.array(chosen, dtype=object).reshape(s, d), (SEED_AXIS, DATA_AXIS))


def layout(mesh: Mesh) -> dict:
    """What a run records of its placement: `{"seeds": S, "data": D}`."""
    return {"seeds": int(mesh.shape[SEED_AXIS]), "data": int(mesh.shape[DATA_AXIS])}


def describe_layout(mesh: Mesh, num_seeds: int, batch_size: int, num_devices: int) -> str:
    """One line: where the seeds and their batches went, and why devices stay idle if any do."""
    s, d = mesh.shape[SEED_AXIS], mesh.shape[DATA_AXIS]
    line = (f"mesh: {num_seeds} seed(s) over {s} device row(s) ({num_seeds // s} per device), "
            f"batch {batch_size} split over {d} device(s) per row ({batch_size // d} images each)")
    idle = num_devices - s * d
    if idle:
        line += (f"; {idle} of {num_devices} devices idle: rows must divide the seeds and columns the batch "
                 f"(equal shares; padding would add networks or bias batch norm)")
    return line


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """(batch, ...) arrays shared by every seed (test images): split over `data`, the same in every row."""
    return NamedSharding(mesh, P(DATA_AXIS))


def seed_sharding(mesh: Mesh) -> NamedSharding:
    """Per-seed arrays (leading seed axis: parameters, optimiser state, keys): one row's seeds per row."""
    return NamedSharding(mesh, P(SEED_AXIS))


def stepped_seed_sharding(mesh: Mesh) -> NamedSharding:
    """(steps, seeds, ...) arrays, e.g. the values a run of several steps logs: seeds by row."""
    return NamedSharding(mesh, P(None, SEED_AXIS))


def stepped_batch_sharding(mesh: Mesh) -> NamedSharding:
    """(steps, seeds, batch) arrays, e.g. the data orders of several steps."""
    return NamedSharding(mesh, P(None, SEED_AXIS, DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def place(tree, sharding: NamedSharding):
    """Builds global arrays from host arrays that every process holds in full."""

    def place_one(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(place_one, tree)


def shard_batch(batch, mesh: Mesh):
    """Places a host batch shared by every seed (a pytree with a leading batch axis) on the mesh."""
    return place(batch, batch_sharding(mesh))


def shard_seeds(tree, mesh: Mesh):
    """Places per-seed host arrays (leading seed axis) by seed row."""
    return place(tree, seed_sharding(mesh))


def replicate(tree, mesh: Mesh):
    """Copies a pytree to every device of the mesh."""
    return place(tree, replicated(mesh))


def to_host(tree):
    """Numpy copies of global arrays on every process, whether or not this process holds all of
    their shards (with several processes a seed row may live on another host)."""

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(one, tree)
