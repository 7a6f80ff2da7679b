"""All sharding rules: the device mesh, logical-to-physical axis rules, array shardings.

Parameters carry logical axis names in their ``axes`` metadata (set where they are created);
this module is the one place that maps them onto the mesh. The mesh has three axes:

- ``data``: plain data parallelism (batch rows split, parameters replicated);
- ``fsdp``: data parallelism that also splits parameters and optimizer state (the ``embed``
  dimension) over its devices, gathered per layer by the compiler (MaxText's ``fsdp``);
- ``model``: tensor parallelism (heads and the feed-forward hidden dimension).

Batches go on ``(data, fsdp)``. ``config.mesh_shape`` is ``(data, model)`` (no FSDP, as before)
or ``(data, fsdp, model)``.

Activations follow the batch too (MaxText's rule): the layers call :func:`constrain_batch` on
the residual streams and logits, and run each attention kernel on the rows of one batch shard
(:func:`per_batch_shard`). Both read the mesh set with ``jax.set_mesh`` (the trainer and
``bench/aot_tpu.py`` set it around tracing) and do nothing without one, so single-device code and
unit tests are unchanged. Without them XLA's propagation is free to replicate batch-split
activations, and it must: the attention kernels loop (``lax.map``) over ``batch x heads x
blocks``, and a loop over a split axis is compiled as an all-gather of that axis.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


# ------------------------------------------------------------------------------------------------
# Activations: the batch axis of every large activation stays split over (data, fsdp).


def _batch_mesh(batch: int) -> Any:
    """The mesh set with ``jax.set_mesh`` if it splits ``batch`` rows evenly over its batch axes
    (and they are not already manual, inside :func:`per_batch_shard`); else None."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names):
        return None
    types = dict(zip(mesh.axis_names, mesh.axis_types, strict=True))
    if any(types[a] == AxisType.Manual for a in BATCH_AXES):
        return None
    size = mesh.shape[DATA] * mesh.shape[FSDP]
    if size == 1 or batch % size:
        return None  # nothing to split, or rows that cannot split evenly: leave it to XLA
    return mesh


def constrain_batch(x: jax.Array) -> jax.Array:
    """``x [B, ...]`` with its leading axis constrained to the batch axes (``data`` x ``fsdp``).

    The other axes are left to XLA (``UNCONSTRAINED``: e.g. heads on ``model``). A no-op
    without a mesh (``jax.set_mesh``), on a mesh without data parallelism, or when ``B`` does not
    divide evenly.
    """
    if _batch_mesh(x.shape[0]) is None:
        return x
    spec = P(BATCH_AXES, *[P.UNCONSTRAINED] * (x.ndim - 1))
    return jax.lax.with_sharding_constraint(x, spec)


def per_batch_shard(
    fn: Callable[[Any, Any, jax.Array | None], Any],
    batched: Any,
    shared: Any,
    key: jax.Array | None = None,
    *,
    partitionable: bool = True,
) -> Any:
    """``fn(batched, shared, key)`` run on each batch shard's rows (``jax.shard_map``).

    ``batched``: arrays whose leading axis is the batch (split over ``data`` x ``fsdp``);
    ``shared``: arrays every shard needs whole (random draws, parameters); ``key``: a PRNG key
    (or None) into which each shard folds its index, so shards draw independent dropout masks.
    ``fn`` returns batch-first arrays. The ``model`` axis stays with XLA, unless ``fn`` is not
    ``partitionable`` (custom calls such as Pallas kernels) and that axis has one device: then
    the whole mesh is manual. Without a mesh that
    splits the batch this is ``fn(batched, shared, key)``, so dropout masks (not their
    statistics) depend on how many devices split the batch.

    Attention kernels need this: they loop over ``batch x heads x blocks`` (``lax.map``), and XLA
    compiles a loop over a split axis as an all-gather of the loop's inputs, i.e. every chip
    would hold every row's sorted queries, keys and values.
    """
    leaves = jax.tree.leaves(batched)
    mesh = _batch_mesh(leaves[0].shape[0]) if leaves else None
    if mesh is None:
        return fn(batched, shared, key)

    def local(batched, shared, key):
        if key is not None:
            key = jax.random.fold_in(key, jax.lax.axis_index(BATCH_AXES))
        return fn(batched, shared, key)

    rows, whole = P(BATCH_AXES), P()
    # Only where needed: a one-device model axis left to XLA compiles differently (the TPU
    # scaled_1b step: 12.9 GiB of temporaries, 13.3 wholly manual, with half the all-gathers).
    others = [a for a in mesh.axis_names if a not in BATCH_AXES]
    wholly_manual = not partitionable and all(mesh.shape[a] == 1 for a in others)
    manual = set(mesh.axis_names) if wholly_manual else set(BATCH_AXES)
    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(
            jax.tree.map(lambda _: rows, batched),
            jax.tree.map(lambda _: whole, shared),
            whole,
        ),
        out_specs=rows,
        axis_names=manual,
        # The kernels are written for plain arrays: their scans start from fresh (unvarying)
        # carries, e.g. Performer's prefix sums, which the varying-axes check rejects. Without
        # the check the gradients of the ``shared`` inputs are still summed over the shards.
        check_vma=False,
    )(batched, shared, key)
