"""All sharding rules: the device mesh, logical-to-physical axis rules, array shardings.

Parameters carry logical axis names in their ``axes`` metadata (set where they are created);
this module is the one place that maps them onto the mesh. The mesh has three axes:

- ``data``: plain data parallelism (batch rows split, parameters replicated);
- ``fsdp``: data parallelism that also splits parameters and optimizer state (the ``embed``
  dimension) over its devices, gathered per layer by the compiler (MaxText's ``fsdp``);
- ``model``: tensor parallelism (heads and the feed-forward hidden dimension).

Batches go on ``(data, fsdp)``. ``config.mesh_shape`` is ``(data, model)`` (no FSDP, as before)
or ``(data, fsdp, model)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA, FSDP, MODEL = "data", "fsdp", "model"
AXES = (DATA, FSDP, MODEL)
BATCH_AXES = (DATA, FSDP)  # batch rows are split over both data-parallel axes

# Logical axis -> mesh axis (None: replicated). An fsdp axis of size 1 shards nothing.
LOGICAL_RULES: dict[str | None, str | None] = {
    "heads": MODEL,
    "mlp": MODEL,
    "embed": FSDP,
    "vocab": None,
    None: None,
}


def mesh_axes(shape: Sequence[int]) -> tuple[int, int, int]:
    """``(data, fsdp, model)`` sizes of a ``config.mesh_shape`` (2-tuples are ``(data, model)``)."""
    shape = tuple(shape)
    if len(shape) == 2:
        return (shape[0], 1, shape[1])
    if len(shape) == 3:
        return shape
    raise ValueError(
        f"mesh_shape must be (data, model) or (data, fsdp, model), got {shape}; e.g. (-1, 1)"
    )


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``(data, fsdp, model)`` mesh; one entry of ``shape`` may be -1 (all remaining devices).

    ``shape`` is ``(data, model)`` or ``(data, fsdp, model)``; ``devices`` defaults to
    ``jax.devices()`` (a TPU topology's devices compile for a pod without one).
    """
    devices = list(jax.devices() if devices is None else devices)
    given = tuple(shape)
    shape = list(mesh_axes(shape))
    if shape.count(-1) > 1:
        raise ValueError(f"mesh_shape {given}: at most one entry may be -1")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if len(devices) % known:
            raise ValueError(
                f"mesh_shape {given} does not divide the {len(devices)} devices; "
                "choose sizes whose product divides the device count"
            )
        shape[shape.index(-1)] = len(devices) // known
    if int(np.prod(shape)) < len(devices):
        devices = devices[: int(np.prod(shape))]  # an explicit smaller mesh uses the first ones
    if int(np.prod(shape)) != len(devices):
        raise ValueError(
            f"mesh_shape {given} needs {int(np.prod(shape))} devices but "
            f"{len(devices)} are available; set config.mesh_shape to match (e.g. (-1, 1))"
        )
    return jax.make_mesh(tuple(shape), AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def data_parallel_size(mesh: Mesh) -> int:
    """Devices a batch is split over (``data`` x ``fsdp``)."""
    return mesh.shape[DATA] * mesh.shape[FSDP]


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
    """Replicates dimensions that the mesh axis does not divide (e.g. 2 heads on 4 devices).

    Axes of size 1 are dropped too, so a mesh without FSDP gives the specs it always gave.
    """
    out = []
    for dim, axis in zip(shape, spec, strict=True):
        keep = axis is not None and mesh.shape[axis] > 1 and dim % mesh.shape[axis] == 0
        out.append(axis if keep else None)
    return P(*out)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Arrays with a leading batch axis (``[B, ...]`` batches, a task's carry) split over the
    data-parallel axes (``data`` and ``fsdp``)."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles the per-process rows into global arrays sharded over ``data`` x ``fsdp``."""
    sharding = batch_sharding(mesh)
    return {
        name: jax.make_array_from_process_local_data(sharding, value)
        for name, value in local.items()
    }
