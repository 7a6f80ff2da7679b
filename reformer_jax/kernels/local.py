"""Chunked local attention: each chunk attends to itself and a few neighbouring chunks."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from reformer_jax.kernels.masking import (
    check_qkv,
    dropout,
    look_around,
    mask_values,
    pad_to_multiple,
    score_dtype,
    window_offsets,
)


def local_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    chunk_len: int,
    n_chunks_before: int = 1,
    n_chunks_after: int = 0,
    causal: bool = False,
    mask: jax.Array | None = None,
    wrap_around: bool = False,
    scale: float | None = None,
    dropout_rate: float = 0.0,
    dropout_key: jax.Array | None = None,
) -> jax.Array:
    """Local (chunked, banded) softmax attention.

    The sequence is cut into chunks of ``chunk_len``; the queries of chunk j attend to the keys of
    chunks ``j - n_chunks_before .. j + n_chunks_after``. Lengths that are not a multiple of
    ``chunk_len`` are padded internally and the padding is masked.

    Args:
      q, k, v: ``[batch, heads, length, d_head]`` (``v`` may have another last dim).
      chunk_len: positions per chunk.
      n_chunks_before, n_chunks_after: neighbouring chunks each chunk also attends to.
      causal: query i only attends to keys j <= i.
      mask: ``[batch, length]`` bool, True for real tokens; padded keys are never attended to.
      wrap_around: the Trax / Hugging Face neighbour lookup wraps (chunk 0 looks back at the
        last chunk, the last chunk looks ahead at chunk 0). Default False: a true band. True
        reproduces the lineage for imported models; it matters without a causal mask, and with
        one when ``n_chunks_after > 0`` (the last chunks then see the first ones).
      scale: multiplies ``q . k``; default ``1 / sqrt(d_head)``.
      dropout_rate, dropout_key: dropout on the attention probabilities.

    Returns:
      ``[batch, heads, length, d_v]``. Memory is linear in length: the scores are
      ``[batch, heads, n_chunks, chunk_len, (1 + before + after) * chunk_len]``.
    """
    check_qkv("local_attention", q, k, v)
    if chunk_len < 1 or n_chunks_before < 0 or n_chunks_after < 0:
        raise ValueError(
            f"local_attention: chunk_len must be >= 1 and n_chunks_before/after >= 0, got "
            f"chunk_len={chunk_len}, n_chunks_before={n_chunks_before}, "
            f"n_chunks_after={n_chunks_after}"
        )
    batch, heads, length, d_head = q.shape
    scale = 1.0 / math.sqrt(d_head) if scale is None else scale
    q, k, v = (pad_to_multiple(x, chunk_len, axis=2) for x in (q, k, v))
    padded_len = q.shape[2]
    n_chunks = padded_len // chunk_len

    def chunked(x: jax.Array) -> jax.Array:
        return x.reshape(batch, heads, n_chunks, chunk_len, x.shape[-1])

    q_chunks = chunked(q)
    k_window = look_around(chunked(k), n_chunks_before, n_chunks_after, axis=2)
    v_window = look_around(chunked(v), n_chunks_before, n_chunks_after, axis=2)

    positions = jnp.arange(padded_len).reshape(n_chunks, chunk_len)
    q_pos = positions[:, :, None]
    k_pos = look_around(positions, n_chunks_before, n_chunks_after, axis=0)[:, None, :]

    allowed = jnp.ones((n_chunks, 1, k_pos.shape[-1]), bool)
    if causal:
        allowed = allowed & (k_pos <= q_pos)
    if not wrap_around:
        key_chunk = jnp.arange(n_chunks)[:, None] + window_offsets(
            chunk_len, n_chunks_before, n_chunks_after
        )
        allowed = allowed & ((key_chunk >= 0) & (key_chunk < n_chunks))[:, None, :]
    key_valid = None
    if mask is not None or padded_len != length:
        valid = jnp.ones((batch, length), bool) if mask is None else mask.astype(bool)
        valid = pad_to_multiple(valid, chunk_len, axis=1, value=False)
        valid = look_around(
            valid.reshape(batch, n_chunks, chunk_len), n_chunks_before, n_chunks_after, axis=1
        )
        key_valid = valid[:, None, :, None, :]  # [batch, 1, n_chunks, 1, window]

    dtype = score_dtype(q.dtype)
    mask_value, _ = mask_values(dtype)
    scores = jnp.einsum("bhncd,bhnkd->bhnck", q_chunks, k_window, preferred_element_type=dtype)
    scores = scores * scale
    allowed = allowed[None, None]
    if key_valid is not None:
        allowed = allowed & key_valid
    scores = jnp.where(allowed, scores, mask_value)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = dropout(probs, dropout_rate, dropout_key)
    out = jnp.einsum("bhnck,bhnkd->bhncd", probs.astype(v.dtype), v_window)
    return out.reshape(batch, heads, padded_len, -1)[:, :, :length]
