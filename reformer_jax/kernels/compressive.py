"""Compressive Transformer memory (Rae et al. 2020): compression and its training loss.

States evicted from a Transformer-XL memory are compressed by a rate ``c`` into a second memory
that is attended together with the ordinary one. The compression functions (the paper's best:
a 1-D convolution with kernel = stride = c; baselines: mean and max pooling) are here as pure
functions; the attention-reconstruction loss that trains the convolution is
:func:`attention_reconstruction_loss`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from reformer_jax.kernels.full import full_attention

COMPRESSIONS = ("conv", "mean", "max")


def compress(
    states_BND: jax.Array,
    rate: int,
    method: str = "conv",
    kernel_CDE: jax.Array | None = None,
    bias_E: jax.Array | None = None,
) -> jax.Array:
    """Compresses ``[batch, n, d]`` states into ``[batch, n // rate, d_out]``.

    Args:
      states_BND: the evicted states, oldest first; ``n`` must be a multiple of ``rate``.
      rate: the compression rate ``c`` (consecutive states merged into one).
      method: ``"conv"`` (a learned 1-D convolution, kernel = stride = ``rate``), ``"mean"`` or
        ``"max"`` pooling over each group of ``rate`` states.
      kernel_CDE: the convolution's weights ``[rate, d, d_out]`` (``"conv"`` only).
      bias_E: its bias ``[d_out]`` (optional).
    """
    if method not in COMPRESSIONS:
        raise ValueError(f"compress: unknown method {method!r}; use one of {list(COMPRESSIONS)}")
    if not isinstance(rate, int) or rate < 1:
        raise ValueError(f"compress: rate must be a positive integer, got {rate!r}")
    batch, n, d = states_BND.shape
    if n % rate:
        raise ValueError(
            f"compress: {n} states are not a multiple of the rate {rate}; evict a multiple of it"
        )
    groups = states_BND.reshape(batch, n // rate, rate, d)
    if method == "mean":
        return groups.mean(axis=2)
    if method == "max":
        return groups.max(axis=2)
    if kernel_CDE is None or kernel_CDE.shape[:2] != (rate, d):
        raise ValueError(
            f"compress: method 'conv' needs kernel_CDE of shape [rate={rate}, d={d}, d_out], got "
            f"{None if kernel_CDE is None else kernel_CDE.shape}"
        )
    out = jnp.einsum("bgcd,cde->bge", groups, kernel_CDE.astype(states_BND.dtype))
    return out if bias_E is None else out + bias_E.astype(out.dtype)


def attention_reconstruction_loss(
    q: jax.Array,
    k_old: jax.Array,
    v_old: jax.Array,
    k_compressed: jax.Array,
    v_compressed: jax.Array,
) -> jax.Array:
    """Mean squared difference between attention over old and over compressed memories.

    ``q [batch, heads, len_q, d_head]`` attends (content only, no positions, no mask) to the
    evicted memories ``k_old, v_old [batch, heads, n, d]`` and to their compression
    ``k_compressed, v_compressed [batch, heads, n // rate, d]``; the loss is the mean over all
    entries of the squared difference of the two outputs. The caller stops the gradients into
    the main network (queries, old memories, and the projections applied to the compressed
    states), so that the loss trains only the compression.
    """
    target = full_attention(q, k_old, v_old)
    approx = full_attention(q, k_compressed, v_compressed)
    return jnp.mean(jnp.square((target - approx).astype(jnp.float32)))
