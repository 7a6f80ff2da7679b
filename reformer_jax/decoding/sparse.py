"""The cache of sparse-pattern attention: K/V of every position, read through the pattern.

``k``, ``v``: ``[B, max_length, H, d_head]`` (as for full layers). The pattern is static, so the
keys of every query are known in advance: a step computes the new position's window, global and
random key positions (``pattern.key_positions_at``, causal, O(keys per query)), gathers them
from the cache and attends to them; a global query (a row that attends to everything) attends
to the whole cache. The plan is the one of ``max_length`` tokens, as in a forward pass over
``max_length`` tokens (BigBird's global last block and random blocks depend on it), so the
cached decoder equals the model run on the whole buffer.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from reformer_jax.decoding import full as full_cache
from reformer_jax.decoding.cache import softmax_attend
from reformer_jax.decoding.spec import DecodeSpec
from reformer_jax.kernels import SparsePattern
from reformer_jax.kernels.masking import mask_values, score_dtype


def pad_to(x: jax.Array, length: int) -> jax.Array:
    """``[B, H, P, d]`` zero-padded to ``length`` positions."""
    return jnp.pad(x, ((0, 0), (0, 0), (0, length - x.shape[2]), (0, 0)))


def step(
    pattern: SparsePattern, spec: DecodeSpec, cache: dict, q, k, v, positions: jax.Array
) -> tuple[jax.Array, dict]:
    """Appends the new position's ``k``, ``v`` ``[B, H, d]``, then attends with ``q`` to the
    keys the pattern gives position ``positions[b]``."""
    cache = full_cache.append(cache, k, v, positions)
    batch, heads, d = q.shape
    scale = 1.0 / math.sqrt(d)
    # Per row: [H or 1, K] key positions (O(keys per query), never a [length, K] table).
    index, valid, dense_row = jax.vmap(
        lambda t: pattern.key_positions_at(spec.max_length, t, heads)
    )(positions)
    index = jnp.broadcast_to(index, (batch, heads, index.shape[-1]))
    valid = jnp.broadcast_to(valid, index.shape)
    b_ix = jnp.arange(batch)[:, None, None]
    h_ix = jnp.arange(heads)[None, :, None]
    keys, values = cache["k"][b_ix, index, h_ix], cache["v"][b_ix, index, h_ix]  # [B, H, K, d]
    sdt = score_dtype(q.dtype)
    s = jnp.einsum("bhd,bhkd->bhk", q, keys, preferred_element_type=sdt) * scale
    s = jnp.where(valid, s, mask_values(sdt)[0])
    probs = jax.nn.softmax(s, axis=-1)
    out = jnp.einsum("bhk,bhkd->bhd", probs.astype(values.dtype), values)
    if pattern.plan(spec.max_length, heads).global_queries.size:

        def with_dense_rows():
            ok = jnp.arange(spec.max_length)[None, None, :] <= positions[:, None, None]
            dense = softmax_attend(q, cache["k"], cache["v"], ok, scale=scale)
            return jnp.where(dense_row[:, None, None], dense, out)

        # Global queries are few: pay for the dense pass only on steps that have one.
        out = jax.lax.cond(jnp.any(dense_row), with_dense_rows, lambda: out)
    return out, cache
