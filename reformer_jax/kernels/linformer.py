"""Linformer attention (Wang et al. 2020): keys and values projected along the length axis.

``head = softmax(Q (E K)^T / sqrt(d)) (F V)`` with learned ``E, F`` of shape ``[k_rank, max_len]``
sliced to the actual key length, so the scores are ``len_q x k_rank`` instead of
``len_q x len_k``: time and memory linear in length.

Sharing levels (the paper's section 4; the model exposes them as options, the kernel only sees
the resulting arrays):

- **per head**: ``proj_k`` / ``proj_v`` of shape ``[heads, k_rank, max_len]``, distinct E and F;
- **key-value shared**: pass the same array as ``proj_k`` and ``proj_v`` (E = F), either shape;
- **per layer, one for all heads**: ``[k_rank, max_len]`` shared across heads (LRA's choice,
  with E = F and k_rank = 16);
- **one per model** (layerwise sharing, the paper's best downstream result): the model passes
  the same ``[k_rank, max_len]`` array to every layer (and as both E and F).

:func:`linformer_projection_shape` gives the parameter shape for a sharing level and
:func:`init_linformer_projection` the paper code's initialisation.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from reformer_jax.kernels.masking import check_qkv, dropout, score_dtype


def linformer_projection_shape(
    k_rank: int, max_len: int, heads: int | None = None
) -> tuple[int, ...]:
    """Shape of one Linformer projection: ``[k_rank, max_len]``, or per head with ``heads``."""
    if k_rank < 1 or max_len < 1:
        raise ValueError(
            f"linformer_projection_shape: k_rank ({k_rank}) and max_len ({max_len}) must be >= 1"
        )
    if heads is None:
        return (k_rank, max_len)
    if heads < 1:
        raise ValueError(f"linformer_projection_shape: heads must be >= 1, got {heads}")
    return (heads, k_rank, max_len)


def init_linformer_projection(
    key: jax.Array,
    k_rank: int,
    max_len: int,
    heads: int | None = None,
    dtype: jnp.dtype = jnp.float32,
) -> jax.Array:
    """The paper code's initialisation of E or F: uniform with std ``1 / sqrt(max_len + k_rank)``.

    fairseq's Linformer (the authors' code) initialises ``compress_k`` / ``compress_v``
    (``nn.Linear(max_len, k_rank)``) with ``xavier_uniform_(gain=1/sqrt(2))``: bound
    ``gain * sqrt(6 / (max_len + k_rank))``, i.e. std ``1 / sqrt(max_len + k_rank)``. Then a
    projected key ``sum_j E_rj k_j`` over ``n`` real tokens has roughly the scale of one key times
    ``sqrt(n / (max_len + k_rank))``, so the scores keep the scale of ordinary attention.
    (LRA uses lecun-normal with fan-in ``max_len``, std ``1 / sqrt(max_len)``, nearly the same;
    lucidrains' ``uniform(+-1/sqrt(k_rank))`` makes projected keys ``sqrt(n / k_rank)`` times
    larger, i.e. sharper attention at initialisation.)
    """
    shape = linformer_projection_shape(k_rank, max_len, heads)
    bound = math.sqrt(3.0 / (max_len + k_rank))
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def _check_projection(name: str, proj: jax.Array, heads: int, length: int) -> None:
    if proj.ndim not in (2, 3):
        raise ValueError(
            f"linformer_attention: {name} must be [k_rank, max_len] or [heads, k_rank, max_len], "
            f"got shape {proj.shape}"
        )
    if proj.ndim == 3 and proj.shape[0] != heads:
        raise ValueError(
            f"linformer_attention: {name} has {proj.shape[0]} heads but k/v have {heads}; "
            "use one projection per head or a 2-D [k_rank, max_len] shared one"
        )
    if length > proj.shape[-1]:
        raise ValueError(
            f"linformer_attention: key length {length} exceeds {name}'s max_len "
            f"{proj.shape[-1]}; make the projection at least as long as the longest input"
        )


def _project(proj: jax.Array, x: jax.Array) -> jax.Array:
    """``E x`` along the length axis: ``[b, h, len, d] -> [b, h, k_rank, d]``."""
    proj = proj[..., : x.shape[2]].astype(x.dtype)
    if proj.ndim == 2:
        return jnp.einsum("rl,bhld->bhrd", proj, x)
    return jnp.einsum("hrl,bhld->bhrd", proj, x)


def linformer_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    proj_k: jax.Array,
    proj_v: jax.Array,
    *,
    mask: jax.Array | None = None,
    causal: bool = False,
    dropout_rate: float = 0.0,
    dropout_key: jax.Array | None = None,
) -> jax.Array:
    """Linformer attention: softmax over ``k_rank`` projected keys.

    Args:
      q: queries ``[batch, heads, len_q, d_head]``.
      k: keys ``[batch, heads, len_k, d_head]``.
      v: values ``[batch, heads, len_k, d_v]``.
      proj_k: E, ``[k_rank, max_len]`` (shared across heads) or ``[heads, k_rank, max_len]``;
        only its first ``len_k`` columns are used (shorter inputs use a prefix of E, as in the
        paper's code). ``len_k > max_len`` is an error.
      proj_v: F, same conventions (may be the same array as ``proj_k``: key-value sharing).
      mask: ``[batch, len_k]`` bool, True for real tokens. Padded keys and values are zeroed
        BEFORE projecting, so they cannot leak into the projected keys (LRA's version ignores the
        padding mask). The ``k_rank`` projected keys themselves are all attended to.
      causal: must be False: E mixes every position (future ones included) into each projected
        key, so no causal variant exists. Refused with a ValueError.
      dropout_rate, dropout_key: dropout on the ``len_q x k_rank`` attention probabilities.

    Returns:
      ``[batch, heads, len_q, d_v]`` in ``v.dtype``. Scores and softmax in float32 (float64 for
      float64 inputs); memory ``O(len_q * k_rank)``.
    """
    if causal:
        raise ValueError(
            "linformer_attention: causal=True is impossible: the length projection mixes future "
            "positions into every projected key; use a causal kind (full, local, lsh, performer)"
        )
    check_qkv("linformer_attention", q, k, v)
    _, heads, len_k = k.shape[:3]
    if v.shape[2] != len_k:
        raise ValueError(f"linformer_attention: k and v lengths differ: {k.shape} vs {v.shape}")
    _check_projection("proj_k", proj_k, heads, len_k)
    _check_projection("proj_v", proj_v, heads, len_k)
    if proj_k.shape[-2] != proj_v.shape[-2]:
        raise ValueError(
            f"linformer_attention: proj_k and proj_v have different k_rank: "
            f"{proj_k.shape} vs {proj_v.shape}"
        )
    dtype = score_dtype(q.dtype)
    if mask is not None:
        if mask.shape != (k.shape[0], len_k):
            raise ValueError(
                f"linformer_attention: mask must be [batch, len_k] = {(k.shape[0], len_k)}, "
                f"got {mask.shape}"
            )
        real = mask.astype(bool)[:, None, :, None]
        k = jnp.where(real, k, jnp.zeros((), k.dtype))
        v = jnp.where(real, v, jnp.zeros((), v.dtype))
    # Projection sums len_k terms: do it in the score dtype so bfloat16 inputs keep precision.
    k_proj = _project(proj_k, k.astype(dtype))
    v_proj = _project(proj_v, v.astype(dtype))
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = jnp.einsum("bhqd,bhrd->bhqr", q.astype(dtype), k_proj) * scale
    probs = jax.nn.softmax(scores, axis=-1)
    probs = dropout(probs, dropout_rate, dropout_key)
    return jnp.einsum("bhqr,bhrd->bhqd", probs, v_proj).astype(v.dtype)
