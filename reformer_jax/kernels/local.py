"""Chunked local attention: each chunk attends to itself and a few neighbouring chunks."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from reformer_jax.kernels.masking import check_qkv, pad_to_multiple
from reformer_jax.kernels.window import window_attention


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
    implementation: str = "xla",
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
      implementation: ``"xla"`` or ``"pallas"`` (:func:`reformer_jax.kernels.window.
        window_attention`).

    Returns:
      ``[batch, heads, length, d_v]``. Time and memory are linear in length: the scores are
      computed a block of chunks at a time (:func:`reformer_jax.kernels.window.window_attention`)
      and recomputed in the backward pass instead of being stored.
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
    positions = jnp.broadcast_to(jnp.arange(padded_len, dtype=jnp.int32), q.shape[:3])
    key_valid = None
    if mask is not None or padded_len != length:
        valid = jnp.ones((batch, length), bool) if mask is None else mask.astype(bool)
        valid = pad_to_multiple(valid, chunk_len, axis=1, value=False)
        key_valid = jnp.broadcast_to(valid[:, None, :], q.shape[:3])
    out, _ = window_attention(
        q,
        k,
        v,
        positions,
        chunk_len=chunk_len,
        n_before=n_chunks_before,
        n_after=n_chunks_after,
        wrap=wrap_around,
        causal=causal,
        exclude_self=False,
        scale=scale,
        key_valid=key_valid,
        dropout_rate=dropout_rate,
        dropout_key=dropout_key,
        implementation=implementation,
    )
    return out[:, :, :length]
