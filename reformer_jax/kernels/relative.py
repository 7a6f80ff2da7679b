"""Transformer-XL attention: queries of a segment over keys of ``[memory; segment]`` with
relative positions (Dai et al. 2019).

For query ``i`` of the segment (absolute position ``M + i`` when the memory holds ``M`` states)
and key ``j`` of ``[memory; segment]`` the score is the sum of four terms::

    (q_i + u) . k_j           content, plus the global content bias u
  + (q_i + v) . r_{M + i - j} position (the projected encoding of the distance), plus the global
                              position bias v

scaled by ``1 / sqrt(d_head)``; keys after the query (``j > M + i``) are masked (the attention
is causal by construction: relative distances are non-negative).

The reference code computes the position term for every (query, distance) pair and then applies
a "relative shift" (pad, reshape, slice) that lines distances up with keys; the entries it
produces above the causal diagonal are garbage that only the causal mask hides. Here the
position term is *gathered* by the exact distance ``M + i - j`` (clipped to 0 where masked), so
every entry of the score matrix is the formula's, masked or not.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from reformer_jax.kernels.masking import check_qkv, dropout, mask_values, score_dtype


def sinusoid_encodings(n_distances: int, dim: int, dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """Sinusoidal encodings ``[n_distances, dim]`` of the distances ``0 .. n_distances - 1``.

    Row ``r`` is ``[sin(r w_0) .. sin(r w_{dim/2-1}), cos(r w_0) .. cos(r w_{dim/2-1})]`` with
    ``w_k = 10000 ** (-2k / dim)`` (Transformer-XL's layout: sines then cosines).
    """
    if dim < 2 or dim % 2:
        raise ValueError(f"sinusoid_encodings: dim must be even and >= 2, got {dim}")
    if n_distances < 0:
        raise ValueError(f"sinusoid_encodings: n_distances must be >= 0, got {n_distances}")
    inv_freq = 1.0 / (10000.0 ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    angles = jnp.arange(n_distances, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1).astype(dtype)


def relative_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    rel_k: jax.Array,
    content_bias: jax.Array,
    position_bias: jax.Array,
    *,
    mask: jax.Array | None = None,
    dropout_rate: float = 0.0,
    dropout_key: jax.Array | None = None,
) -> jax.Array:
    """Causal relative-position attention of a segment over ``[memory; segment]``.

    Args:
      q: queries of the segment ``[batch, heads, seg_len, d_head]``.
      k: keys ``[batch, heads, mem_len + seg_len, d_head]``: the memory's keys first (any
        ``mem_len >= 0``), then the segment's.
      v: values ``[batch, heads, mem_len + seg_len, d_v]``.
      rel_k: projected encodings of the distances ``0 .. mem_len + seg_len - 1``,
        ``[heads, mem_len + seg_len, d_head]`` (``rel_k[h, r]`` is head h's ``W_R R_r``); longer
        tables are accepted and only their first ``mem_len + seg_len`` rows are used.
      content_bias: ``u``, ``[heads, d_head]``.
      position_bias: ``v`` of the paper, ``[heads, d_head]``.
      mask: ``[batch, mem_len + seg_len]`` bool, True for real keys (an empty or padded memory
        is masked out).
      dropout_rate, dropout_key: dropout on the attention probabilities.

    Returns:
      ``[batch, heads, seg_len, d_v]`` in ``v.dtype``. Forms the ``seg_len x (mem_len +
      seg_len)`` scores (Transformer-XL attends densely within a segment).
    """
    check_qkv("relative_attention", q, k, v)
    batch, heads, seg_len, d_head = q.shape
    key_len = k.shape[2]
    mem_len = key_len - seg_len
    if mem_len < 0:
        raise ValueError(
            f"relative_attention: keys ({key_len}) must cover the memory and the segment "
            f"({seg_len} queries)"
        )
    if v.shape[2] != key_len:
        raise ValueError(f"relative_attention: k has {key_len} positions but v {v.shape[2]}")
    if rel_k.ndim != 3 or rel_k.shape[0] != heads or rel_k.shape[2] != d_head:
        raise ValueError(
            f"relative_attention: rel_k must be [heads={heads}, distances, d_head={d_head}], "
            f"got {rel_k.shape}"
        )
    if rel_k.shape[1] < key_len:
        raise ValueError(
            f"relative_attention: rel_k covers {rel_k.shape[1]} distances but memory + segment "
            f"need {key_len}; give encodings of at least {key_len} distances"
        )
    for name, bias in (("content_bias", content_bias), ("position_bias", position_bias)):
        if bias.shape != (heads, d_head):
            raise ValueError(
                f"relative_attention: {name} must be [heads={heads}, d_head={d_head}], "
                f"got {bias.shape}"
            )
    dtype = score_dtype(q.dtype)
    scale = 1.0 / math.sqrt(d_head)
    content = jnp.einsum(
        "bhqd,bhkd->bhqk", q + content_bias[None, :, None], k, preferred_element_type=dtype
    )
    # Position term for every (query, distance), then each key picks its own distance.
    by_distance = jnp.einsum(
        "bhqd,hrd->bhqr",
        q + position_bias[None, :, None],
        rel_k[:, :key_len],
        preferred_element_type=dtype,
    )
    distance = mem_len + jnp.arange(seg_len)[:, None] - jnp.arange(key_len)[None, :]
    allowed = distance >= 0
    index = jnp.broadcast_to(jnp.clip(distance, 0, key_len - 1), by_distance.shape)
    position = jnp.take_along_axis(by_distance, index, axis=-1)
    scores = (content + position) * scale
    allowed = allowed[None, None]
    if mask is not None:
        if mask.shape != (batch, key_len):
            raise ValueError(
                f"relative_attention: mask must be [batch={batch}, keys={key_len}], "
                f"got {mask.shape}"
            )
        allowed = allowed & mask.astype(bool)[:, None, None, :]
    mask_value, _ = mask_values(dtype)
    scores = jnp.where(allowed, scores, mask_value)
    probs = dropout(jax.nn.softmax(scores, axis=-1), dropout_rate, dropout_key)
    return jnp.einsum("bhqk,bhkd->bhqd", probs.astype(v.dtype), v)
