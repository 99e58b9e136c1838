"""The one-axis device mesh that batched work shards over (:meth:`Generator.batch`, batched
cloning): every local device, or the given ones, along an axis named :data:`BATCH_AXIS`."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

#: The mesh axis batched work splits its batch over.
BATCH_AXIS = "batch"

#: The batch axis split over the mesh; :data:`REPLICATED`: the whole array on every device.
BATCHED = jax.sharding.PartitionSpec(BATCH_AXIS)
REPLICATED = jax.sharding.PartitionSpec()


def batch_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A mesh over ``devices`` (default every local device) along :data:`BATCH_AXIS`."""
    devices = jax.local_devices() if devices is None else devices
    return jax.sharding.Mesh(np.asarray(devices), (BATCH_AXIS,))
