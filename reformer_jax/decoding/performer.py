"""The cache of Performer attention: the running sums of the causal prefix, O(m d) per head.

``kv`` ``[B, H, m, d_head]`` (sum of ``phi(k_j) v_j^T``), ``normaliser`` ``[B, H, m]`` (sum of
``phi(k_j)``) and ``shift`` ``[B, H]`` (the running maximum of the key exponents the sums are
scaled by), in the score dtype (float32 for bfloat16 models); the layer's random features are
the cache's ``draws``. A step adds the new key/value and attends with the new query: O(m d) work
and memory per token and head, independent of the length, and exactly the causal kernel.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from reformer_jax import kernels


def prefill(q, k, v, lengths: jax.Array, features, chunk_len: int):
    """Causal attention over left-aligned prompts ``[B, H, P, d]`` and the running sums of each
    row's real prompt (positions ``>= lengths[b]`` are left out)."""
    valid = jnp.arange(q.shape[2])[None, :] < lengths[:, None]
    out, state = kernels.performer_prefill(q, k, v, features, mask=valid, chunk_len=chunk_len)
    return out, state._asdict()


def step(cache: dict, q, k, v, features):
    """Adds the new key/value ``[B, H, d]`` to the sums, then attends with ``q``."""
    state = kernels.PerformerState(**cache)
    out, state = kernels.performer_decode_step(
        state, q[:, :, None], k[:, :, None], v[:, :, None], features
    )
    return out[:, :, 0], state._asdict()
