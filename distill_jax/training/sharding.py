"""Data-parallel placement with `jax.sharding`: the batch is split over a 1-D device
mesh, parameters and optimiser state are replicated.

The same code runs on one device, on several local devices, and on several hosts after
`jax.distributed.initialize()`: every host holds the same (small) global batch and
`make_array_from_callback` lets each one contribute only its own shards, to its own devices
(the mesh takes the same number from every host).
"""
from __future__ import annotations

import logging

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from distill_jax.errors import UserError

DATA_AXIS = "data"


class MeshError(UserError, ValueError):
    """The batch cannot be split so that every process holds an equal part."""


def mesh_devices(devices, batch_size: int | None) -> list:
    """The devices of the data mesh: the most that divide `batch_size`, the same number from
    every process, in process order.

    Distilled sets are tiny (IPC 1 gives 10 images), so the batch may not split over every
    device; using fewer devices beats padding, which would bias batch norm. With several
    processes (`jax.distributed`) each one must keep devices in the mesh: a process runs the
    same program as the others and feeds its own devices, so it cannot sit one out.
    """
    by_process: dict[int, list] = {}
    for d in devices:
        by_process.setdefault(d.process_index, []).append(d)
    processes = len(by_process)
    per_process = min(len(ds) for ds in by_process.values())
    if batch_size is not None:
        while per_process and batch_size % (processes * per_process):
            per_process -= 1
        if not per_process:
            raise MeshError(f"batch {batch_size} does not split over {processes} processes (each feeds an "
                            f"equal part of it): use a batch size divisible by {processes}, or fewer processes")
    chosen = [d for p in sorted(by_process) for d in by_process[p][:per_process]]
    if len(chosen) < len(devices):
        logging.info("using %d of %d devices (%d per process; batch %s)", len(chosen), len(devices), per_process,
                     batch_size)
    return chosen


def make_mesh(batch_size: int | None = None, devices=None) -> Mesh:
    """A 1-D data mesh over `mesh_devices` of all processes' devices (`jax.devices()`)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.array(mesh_devices(devices, batch_size)), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def seeded_batch_sharding(mesh: Mesh) -> NamedSharding:
    """(seeds, batch, ...) arrays: every seed's batch split over the mesh like `batch_sharding`."""
    return NamedSharding(mesh, P(None, DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _place(tree, sharding: NamedSharding):
    """Builds global arrays from host arrays that every process holds in full."""

    def place(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(place, tree)


def shard_batch(batch, mesh: Mesh):
    """Places a host batch (a pytree of numpy arrays with a leading batch axis) on the mesh."""
    return _place(batch, batch_sharding(mesh))


def shard_seeded_batch(batch, mesh: Mesh):
    """Places per-seed host batches (leading axes seeds, batch) on the mesh."""
    return _place(batch, seeded_batch_sharding(mesh))


def replicate(tree, mesh: Mesh):
    """Copies a pytree to every device of the mesh."""
    return _place(tree, replicated(mesh))
