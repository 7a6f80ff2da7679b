"""The cache of local attention: a ring of the last ``(local_chunks_before + 1) * chunk_len``
positions with their position ids.

``k``, ``v``: ``[B, window, H, d_head]``; ``pos``: int32 ``[B, window]`` (-1 empty). Slot ``j``
holds position ``p`` with ``p % window == j``. Position ``t`` attends to the keys of chunks
``t // c - before .. t // c`` that are ``<= t``, exactly the training kernel's band: O(window)
per token, exact.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from reformer_jax.config import ReformerConfig
from reformer_jax.decoding.cache import softmax_attend, to_positions, write


def window(cfg: ReformerConfig) -> int:
    return (cfg.local_chunks_before + 1) * cfg.local_chunk_len


def prefill(cfg: ReformerConfig, k: jax.Array, v: jax.Array, lengths: jax.Array) -> dict:
    """Ring cache of the last ``window`` prompt positions of every row (``k``, ``v``
    ``[B, H, P, d]``, row ``b`` real up to ``lengths[b]``)."""
    k, v = to_positions(k), to_positions(v)
    size = window(cfg)
    j = jnp.arange(size)[None, :]
    last = lengths[:, None] - 1
    p = last - jnp.mod(last - j, size)
    ok = p >= 0
    idx = jnp.clip(p, 0, k.shape[1] - 1)
    take = functools.partial(jnp.take_along_axis, indices=idx[:, :, None, None], axis=1)
    zero = jnp.zeros((), k.dtype)
    return dict(
        k=jnp.where(ok[:, :, None, None], take(k), zero),
        v=jnp.where(ok[:, :, None, None], take(v), zero),
        pos=jnp.where(ok, p, -1).astype(jnp.int32),
    )


def step(cfg: ReformerConfig, cache: dict, q, k, v, positions: jax.Array):
    """Writes the new position into its ring slot, then attends to its band."""
    t = positions
    slot = t % window(cfg)
    cache = dict(
        k=write(cache["k"], slot, k), v=write(cache["v"], slot, v), pos=write(cache["pos"], slot, t)
    )
    first = (t // cfg.local_chunk_len - cfg.local_chunks_before) * cfg.local_chunk_len
    kpos = cache["pos"]
    ok = (kpos >= jnp.maximum(first, 0)[:, None]) & (kpos <= t[:, None])
    out = softmax_attend(
        q, cache["k"], cache["v"], ok[:, None, :], scale=1.0 / math.sqrt(q.shape[-1])
    )
    return out, cache
