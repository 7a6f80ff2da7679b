"""All sharding rules: the device mesh, logical-to-physical axis rules, array shardings.

Parameters carry logical axis names in their ``axes`` metadata (set where they are created);
this module is the one place that maps them onto the mesh. Heads and the feed-forward hidden
dimension go on the ``model`` axis; everything else is replicated; batches go on ``data``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA, MODEL = "data", "model"

# Logical axis -> mesh axis (None: replicated).
LOGICAL_RULES: dict[str | None, str | None] = {
    "heads": MODEL,
    "mlp": MODEL,
    "embed": None,
    "vocab": None,
    None: None,
}


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``(data, model)`` mesh; one entry of ``shape`` may be -1 (all remaining devices)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = list(shape)
    if len(shape) != 2:
        raise ValueError(f"mesh_shape must be (data, model), got {tuple(shape)}")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh_shape {tuple(shape)}: at most one entry may be -1")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if len(devices) % known:
            raise ValueError(
                f"mesh_shape {tuple(shape)} does not divide the {len(devices)} devices; "
                "choose sizes whose product divides the device count"
            )
        shape[shape.index(-1)] = len(devices) // known
    if int(np.prod(shape)) < len(devices):
        devices = devices[: int(np.prod(shape))]  # an explicit smaller mesh uses the first ones
    if int(np.prod(shape)) != len(devices):
        raise ValueError(
            f"mesh_shape {tuple(shape)} needs {int(np.prod(shape))} devices but "
            f"{len(devices)} are available; set config.mesh_shape to match (e.g. (-1, 1))"
        )
    return jax.make_mesh(
        tuple(shape), (DATA, MODEL), axis_types=(AxisType.Auto, AxisType.Auto), devices=devices
    )


def logical_to_spec(axes: Sequence[str | None] | None, ndim: int) -> P:
    """PartitionSpec for an array of rank ``ndim`` with (trailing) logical ``axes``.

    Stacked layer parameters have extra leading axes (the scanned layer groups): they are
    replicated.
    """
    if axes is None:
        return P(*([None] * ndim))
    axes = tuple(axes)
    mesh_axes = [LOGICAL_RULES.get(a) for a in axes]
    return P(*([None] * (ndim - len(axes)) + mesh_axes))


def param_shardings(mesh: Mesh, state: nnx.State) -> Any:
    """NamedShardings for an ``nnx.State`` of parameters (same tree structure)."""

    def one(variable: nnx.Variable) -> nnx.Variable:
        shape = variable.get_value().shape
        spec = logical_to_spec(variable.get_metadata().get("axes"), len(shape))
        return variable.replace(NamedSharding(mesh, _divisible(spec, shape, mesh)))

    # Same tree structure as the state (Variables holding shardings), as jit expects.
    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def _divisible(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
    """Replicates dimensions that the mesh axis does not divide (e.g. 2 heads on 4 devices)."""
    out = []
    for dim, axis in zip(shape, spec, strict=True):
        out.append(axis if axis is None or dim % mesh.shape[axis] == 0 else None)
    return P(*out)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Arrays with a leading batch axis (``[B, ...]`` batches, a task's carry) split over data."""
    return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles the per-process rows into global arrays sharded over ``data``."""
    sharding = batch_sharding(mesh)
    return {
        name: jax.make_array_from_process_local_data(sharding, value)
        for name, value in local.items()
    }
