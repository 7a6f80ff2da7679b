"""The cache of full (dense) attention: K/V of every position.

``k``, ``v``: ``[B, max_length, H, d_head]``; position ``t`` attends to cached positions
``<= t``: O(max_length) work per token, exact.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from reformer_jax.decoding.cache import place, softmax_attend, to_positions, write
from reformer_jax.decoding.spec import DecodeSpec


def prefill(spec: DecodeSpec, k: jax.Array, v: jax.Array) -> dict[str, jax.Array]:
    """The cache of a prompt's keys and values ``[B, H, P, d]``."""
    return dict(
        k=place(to_positions(k), spec.max_length), v=place(to_positions(v), spec.max_length)
    )


def append(cache: dict, k: jax.Array, v: jax.Array, positions: jax.Array) -> dict:
    """Writes the new position's ``k``, ``v`` ``[B, H, d]`` at ``positions [B]``."""
    return dict(cache, k=write(cache["k"], positions, k), v=write(cache["v"], positions, v))


def step(cache: dict, q: jax.Array, k: jax.Array, v: jax.Array, positions: jax.Array):
    """Appends, then attends ``q [B, H, d]`` to every cached position ``<= positions``."""
    cache = append(cache, k, v, positions)
    ok = jnp.arange(cache["k"].shape[1])[None, None, :] <= positions[:, None, None]
    out = softmax_attend(q, cache["k"], cache["v"], ok, scale=1.0 / math.sqrt(q.shape[-1]))
    return out, cache
