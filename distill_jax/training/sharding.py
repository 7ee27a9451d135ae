"""Data-parallel placement with `jax.sharding`: the batch is split over a 1-D device
mesh, parameters and optimiser state are replicated.

The same code runs on one device, on several local devices, and on several hosts after
`jax.distributed.initialize()`: every host holds the same (small) global batch and
`make_array_from_callback` lets each one contribute only its own shards.
"""
from __future__ import annotations

import logging

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(batch_size: int | None = None, devices=None) -> Mesh:
    """A 1-D mesh over the largest number of devices that divides `batch_size`.

    Distilled sets are tiny (IPC 1 gives 10 images), so the batch may not split over
    every device; using fewer devices beats padding, which would bias batch norm.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if batch_size is not None:
        while batch_size % n:
            n -= 1
        if n < len(devices):
            logging.info("batch %d does not split over %d devices: using %d", batch_size, len(devices), n)
    return Mesh(np.array(devices[:n]), (DATA_AXIS,))


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
