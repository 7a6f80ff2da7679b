"""The decoding cache: a functional pytree of batch-first arrays, plus shared helpers."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from reformer_jax.decoding.spec import DecodeSpec
from reformer_jax.kernels.masking import mask_values, score_dtype


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Cache:
    """The decoding state of every layer (a pytree; ``spec`` is static).

    ``layers[i]`` is layer ``i``'s cache, a dict of arrays whose first axis is the batch (what
    each kind stores is documented in its module: :mod:`.full`, :mod:`.local`, :mod:`.lsh`).
    ``draws[i]`` is the layer's random draw (LSH rotations; None for kinds without one), fixed
    for the whole run and shared by the rows.
    """

    layers: tuple[dict[str, jax.Array], ...]
    draws: tuple[Any, ...]
    spec: DecodeSpec = dataclasses.field(metadata=dict(static=True))


def cache_bytes(cache: Cache) -> int:
    """Bytes held by the cache's arrays (random draws included); also works on the abstract
    cache of ``jax.eval_shape(lambda: prefill(...))``."""
    leaves = jax.tree.leaves((cache.layers, cache.draws))
    return int(sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in leaves))


def place(x: jax.Array, size: int) -> jax.Array:
    """``[B, P, ...]`` into a zero cache ``[B, size, ...]`` (positions ``0 .. P-1``)."""
    cache = jnp.zeros((x.shape[0], size, *x.shape[2:]), x.dtype)
    return jax.lax.dynamic_update_slice_in_dim(cache, x, 0, axis=1)


def to_positions(x_BHPd: jax.Array) -> jax.Array:
    """Kernel layout ``[B, H, P, d]`` to the cache layout ``[B, P, H, d]``."""
    return x_BHPd.transpose(0, 2, 1, 3)


def write(cache: jax.Array, slots: jax.Array, x: jax.Array) -> jax.Array:
    """``cache[b, slots[b]] = x[b]`` for a batch-first cache ``[B, S, ...]``."""
    return cache.at[jnp.arange(cache.shape[0]), slots].set(x)


def softmax_attend(
    q_BHd: jax.Array,
    keys_BSHd: jax.Array,
    values_BSHd: jax.Array,
    allowed: jax.Array,
    *,
    scale: float,
    self_slot: jax.Array | None = None,
) -> jax.Array:
    """One query per row and head over ``S`` cached slots: ``[B, H, d]``.

    ``allowed`` broadcasts to ``[B, H, S]``; ``self_slot`` (bool, same broadcast) gets the
    self-mask score (shared-QK attention: a token attends to itself only when nothing else is
    allowed).
    """
    sdt = score_dtype(q_BHd.dtype)
    masked, self_value = mask_values(sdt)
    s = jnp.einsum("bhd,bshd->bhs", q_BHd, keys_BSHd, preferred_element_type=sdt) * scale
    s = jnp.where(allowed, s, masked)
    if self_slot is not None:
        s = jnp.where(self_slot, self_value, s)
    probs = jax.nn.softmax(s, axis=-1)
    return jnp.einsum("bhs,bshd->bhd", probs.astype(values_BSHd.dtype), values_BSHd)
