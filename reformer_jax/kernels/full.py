"""Exact softmax attention: the reference every other kernel is tested against."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from reformer_jax.kernels.masking import check_qkv, dropout, mask_values, score_dtype


def full_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    causal: bool = False,
    mask: jax.Array | None = None,
    scale: float | None = None,
    exclude_self: bool = False,
    dropout_rate: float = 0.0,
    dropout_key: jax.Array | None = None,
) -> jax.Array:
    """Softmax attention over all key positions.

    Args:
      q: queries ``[batch, heads, len_q, d_head]``.
      k: keys ``[batch, heads, len_k, d_head]``.
      v: values ``[batch, heads, len_k, d_v]``.
      causal: query i only attends to keys j <= i (positions aligned at 0).
      mask: bool, True where attention is allowed: ``[batch, len_k]`` marks real tokens (padded
        keys are never attended to); a 4-D mask broadcastable to ``[batch, heads, len_q, len_k]``
        allows arbitrary patterns (bands, buckets), e.g. as a reference for other kernels.
      scale: multiplies ``q . k``; default ``1 / sqrt(d_head)``. LSH's shared-QK scoring is
        ``full_attention(q, unit(q), v, scale=1.0, exclude_self=True)``.
      exclude_self: the Reformer self mask: key i gets the low self score for query i, so a token
        attends to itself only when no other key is allowed.
      dropout_rate, dropout_key: dropout on the attention probabilities.

    Returns:
      ``[batch, heads, len_q, d_v]`` in ``v.dtype``. Materialises the ``len_q x len_k`` scores;
      this is the only kernel that does.
    """
    check_qkv("full_attention", q, k, v)
    d_head = q.shape[-1]
    scale = 1.0 / math.sqrt(d_head) if scale is None else scale
    dtype = score_dtype(q.dtype)
    scores = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=dtype) * scale
    mask_value, self_value = mask_values(dtype)
    q_pos = jnp.arange(q.shape[2])[:, None]
    k_pos = jnp.arange(k.shape[2])[None, :]
    allowed = jnp.ones((1, 1, q.shape[2], k.shape[2]), bool)
    if causal:
        allowed = allowed & (k_pos <= q_pos)
    if mask is not None:
        if mask.ndim == 2:
            mask = mask[:, None, None, :]
        elif mask.ndim != 4:
            raise ValueError(
                f"full_attention: mask must be [batch, len_k] or 4-D, got shape {mask.shape}"
            )
        allowed = allowed & mask.astype(bool)
    scores = jnp.where(allowed, scores, mask_value)
    if exclude_self:
        scores = jnp.where(q_pos == k_pos, self_value, scores)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = dropout(probs, dropout_rate, dropout_key)
    return jnp.einsum("bhqk,bhkd->bhqd", probs.astype(v.dtype), v)
