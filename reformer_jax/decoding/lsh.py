"""The cache of LSH attention: unit keys and values of every position plus bucket tables.

``k`` (unit keys), ``v``: ``[B, max_length, H, d_head]``; per hash round a table ``table`` int32
``[B, H, n_hashes, n_buckets, S]`` holding the ``S`` most recent positions of each bucket (a
ring per bucket, ``S = lsh_cache_size``, by default ``(lsh_chunks_before + 1) * lsh_chunk_len``;
-1 is empty) and ``counts`` int32 ``[B, H, n_hashes, n_buckets]``. The layer's rotations are
the cache's ``draws``. The new token is hashed with them, attends in every round to the cached
positions of its own bucket (and to itself with the self-mask score), and the rounds are
combined with the kernel's logsumexp weights: O(n_hashes * S) per token. This is the causal,
cache-friendly reading of LSH attention; it is *not* the training kernel (whose chunks of the
sorted sequence also contain neighbouring buckets and shift as tokens are appended). See
``docs/sampling.md``. Below ``full_attention_below`` (``spec.exact_lsh``) the cache is only
``k``/``v`` and attention is exact shared-QK attention.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from reformer_jax import kernels
from reformer_jax.decoding.cache import place, softmax_attend, to_positions, write
from reformer_jax.decoding.spec import DecodeSpec
from reformer_jax.kernels.masking import score_dtype


def n_buckets_arg(spec: DecodeSpec):
    return spec.n_buckets if isinstance(spec.n_buckets, int) else list(spec.n_buckets)


def bucket_attention(
    qk: jax.Array, v: jax.Array, buckets: jax.Array, *, n_buckets: int, cache_size: int
) -> jax.Array:
    """LSH attention as the bucket cache computes it, for all positions at once.

    In every hash round, position ``t`` attends to the ``cache_size`` most recent earlier
    positions of its own bucket (scores ``qk_t . unit(qk_s)``) and to itself with the self-mask
    score (so it attends to itself only when its bucket has no earlier position); the rounds are
    combined with weights ``softmax_r(logsumexp_r)``, as in :func:`kernels.lsh_attention`.

    Args:
      qk, v: ``[batch, heads, length, d]``.
      buckets: int ``[batch, heads, n_hashes, length]``; ids ``>= n_buckets`` mark padding
        (never attended to).
      n_buckets: number of real buckets per round.
      cache_size: earlier positions of the same bucket each position sees (per round).
    """
    return bucket_prefill(qk, v, buckets, n_buckets, cache_size)[0]


def bucket_prefill(qk, v, buckets, n_buckets: int, size: int):
    """:func:`bucket_attention` plus the bucket tables a decode step continues from.

    Tables: ``table`` int32 ``[B, H, R, n_buckets, size]``, the ``size`` most recent positions
    of every bucket (a ring: the position of within-bucket rank ``w`` sits in slot
    ``w % size``; -1 is empty) and ``counts`` int32 ``[B, H, R, n_buckets]``.
    """
    batch, heads, length, _ = qk.shape
    n_hashes = buckets.shape[2]
    padded = length + (-length) % size
    n_chunks = padded // size
    dtype = score_dtype(qk.dtype)
    mask_value, self_value = kernels.mask_values(dtype)

    buckets = jnp.pad(
        buckets, ((0, 0), (0, 0), (0, 0), (0, padded - length)), constant_values=n_buckets
    )
    qk_p = jnp.pad(qk, ((0, 0), (0, 0), (0, padded - length), (0, 0)))
    v_p = jnp.pad(v, ((0, 0), (0, 0), (0, padded - length), (0, 0)))
    # Sorting by bucket with a stable sort orders every round by (bucket, position): a bucket's
    # positions are contiguous and in order, so "the ``size`` most recent earlier positions of
    # my bucket" are the (same-bucket) sorted rows ``i - size .. i - 1``.
    index = jnp.broadcast_to(jnp.arange(padded, dtype=jnp.int32), buckets.shape)
    sorted_b, order = jax.lax.sort((buckets, index), dimension=3, num_keys=1, is_stable=True)

    def gather(x):  # [B, H, P, d] by order [B, H, R, P] -> [B, H, R, P, d]
        return jnp.take_along_axis(x[:, :, None], order[..., None], axis=3)

    def chunks(x):  # [B, H, R, P, ...] -> [B, H, R, n, size, ...]
        return x.reshape(batch, heads, n_hashes, n_chunks, size, *x.shape[4:])

    def window(x):  # previous chunk + own chunk: [B, H, R, n, 2 * size, ...]
        c = chunks(x)
        prev = jnp.roll(c, 1, axis=3)  # chunk 0's "previous" chunk is masked below
        return jnp.concatenate([prev, c], axis=4)

    scores = jnp.einsum(
        "bhrnqd,bhrnkd->bhrnqk",
        chunks(gather(qk_p)),
        window(gather(kernels.unit_keys(qk_p))),
        preferred_element_type=dtype,
    )
    rows = jnp.arange(padded).reshape(n_chunks, size)
    q_idx = rows[:, :, None]
    k_idx = (rows[:, None, :1] - size) + jnp.arange(2 * size)[None, None, :]
    allowed = (k_idx < q_idx) & (k_idx >= q_idx - size) & (k_idx >= 0)
    q_b = chunks(sorted_b)[..., :, None]
    allowed = allowed & (q_b == window(sorted_b)[..., None, :]) & (q_b < n_buckets)
    scores = jnp.where(allowed, scores, mask_value)
    scores = jnp.where(q_idx == k_idx, self_value, scores)
    row_max = jnp.max(scores, axis=-1, keepdims=True)
    unnormalised = jnp.exp(scores - row_max)
    row_sum = jnp.sum(unnormalised, axis=-1, keepdims=True)
    probs = unnormalised / row_sum
    lse = (row_max + jnp.log(row_sum)).reshape(batch, heads, n_hashes, padded)
    out = jnp.einsum("bhrnqk,bhrnkd->bhrnqd", probs.astype(v.dtype), window(gather(v_p)))
    out = out.reshape(batch, heads, n_hashes, padded, -1)
    # Unsort: sorted row i goes back to position order[i].
    inverse = jnp.put_along_axis(jnp.zeros_like(order), order, index, axis=-1, inplace=False)
    out = jnp.take_along_axis(out, inverse[..., None], axis=3)[:, :, :, :length]
    lse = jnp.take_along_axis(lse, inverse, axis=3)[:, :, :, :length]
    if n_hashes == 1:
        out = out[:, :, 0]
    else:
        weights = jax.nn.softmax(lse, axis=2)[..., None]
        out = jnp.sum(out * weights.astype(out.dtype), axis=2)

    # Tables: within-bucket rank of every sorted row, keep the last ``size`` of each bucket.
    first = jnp.concatenate(
        [jnp.ones_like(sorted_b[..., :1], bool), sorted_b[..., 1:] != sorted_b[..., :-1]], -1
    )
    rank = index - jax.lax.cummax(jnp.where(first, index, 0), axis=3)
    flat = (-1, padded)

    def one_row(sb, rank, pos):
        counts = jnp.zeros((n_buckets,), jnp.int32).at[sb].add(1, mode="drop")
        keep = (sb < n_buckets) & (rank >= counts[jnp.minimum(sb, n_buckets - 1)] - size)
        table = jnp.full((n_buckets, size), -1, jnp.int32)
        table = table.at[jnp.where(keep, sb, n_buckets), rank % size].set(pos, mode="drop")
        return table, counts

    table, counts = jax.vmap(one_row)(
        sorted_b.reshape(flat), rank.reshape(flat), order.reshape(flat)
    )
    table = table.reshape(batch, heads, n_hashes, n_buckets, size)
    counts = counts.reshape(batch, heads, n_hashes, n_buckets)
    return out, table, counts


def prefill(
    spec: DecodeSpec, qk: jax.Array, v: jax.Array, lengths: jax.Array, rotations: jax.Array | None
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Bucket-cache attention over left-aligned prompts ``[B, H, P, d]`` and the cache."""
    cache: dict[str, jax.Array] = {}
    if spec.exact_lsh:
        out = kernels.full_attention(
            qk, kernels.unit_keys(qk), v, scale=1.0, exclude_self=True, causal=True
        )
    else:
        valid = jnp.arange(qk.shape[2])[None, :] < lengths[:, None]
        nb = kernels.total_buckets(spec.n_buckets)
        buckets = kernels.hash_vectors(qk, rotations, n_buckets_arg(spec), valid)
        out, table, counts = bucket_prefill(qk, v, buckets, nb, spec.lsh_cache_size)
        cache.update(table=table, counts=counts)
    cache["k"] = place(to_positions(kernels.unit_keys(qk)), spec.max_length)
    cache["v"] = place(to_positions(v), spec.max_length)
    return out, cache


def step(
    spec: DecodeSpec, cache: dict, qk: jax.Array, v: jax.Array, positions: jax.Array, rotations
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The new position (``qk``, ``v`` ``[B, H, d]``) against the cache; appends it."""
    t = positions
    cache = dict(cache, k=write(cache["k"], t, kernels.unit_keys(qk)), v=write(cache["v"], t, v))
    if spec.exact_lsh:
        kpos = jnp.arange(spec.max_length)[None, None, :]
        t3 = t[:, None, None]
        out = softmax_attend(
            qk, cache["k"], cache["v"], kpos <= t3, scale=1.0, self_slot=kpos == t3
        )
        return out, cache
    out, tables = bucket_step(spec, cache, qk, v, t, rotations)
    return out, {**cache, **tables}


def bucket_step(spec: DecodeSpec, cache: dict, qk, v, t, rotations):
    """Bucket-cache attention of the new token: ``(out [B, H, d], {"table", "counts"})``.

    Reads positions ``< t`` of ``cache["k"]``/``cache["v"]`` (the new position's own key is the
    self-mask term), and appends ``t`` to its bucket's ring in every round.
    """
    batch, heads = qk.shape[:2]
    size = spec.lsh_cache_size
    sdt = score_dtype(qk.dtype)
    mask_value, self_value = kernels.mask_values(sdt)
    bucket = kernels.hash_vectors(qk[:, :, None, :], rotations, n_buckets_arg(spec))[..., 0]
    table, counts = cache["table"], cache["counts"]  # [B, H, R, nb, S], [B, H, R, nb]
    idx = jnp.take_along_axis(table, bucket[..., None, None], axis=3)[:, :, :, 0]  # [B,H,R,S]
    b_ix = jnp.arange(batch)[:, None, None, None]
    h_ix = jnp.arange(heads)[None, :, None, None]
    safe = jnp.maximum(idx, 0)
    keys = cache["k"][b_ix, safe, h_ix]  # [B, H, R, S, d]
    vals = cache["v"][b_ix, safe, h_ix]
    s = jnp.einsum("bhd,bhrsd->bhrs", qk, keys, preferred_element_type=sdt)
    ok = (idx >= 0) & (idx < t[:, None, None, None])
    s = jnp.where(ok, s, mask_value)
    s = jnp.concatenate([s, jnp.full(s.shape[:-1] + (1,), self_value, s.dtype)], axis=-1)
    own = jnp.broadcast_to(v[:, :, None, None], (*vals.shape[:3], 1, v.shape[-1]))
    vals = jnp.concatenate([vals, own], axis=3)
    row_max = jnp.max(s, axis=-1, keepdims=True)
    unnormalised = jnp.exp(s - row_max)
    row_sum = jnp.sum(unnormalised, axis=-1, keepdims=True)
    probs = unnormalised / row_sum
    lse = (row_max + jnp.log(row_sum))[..., 0]  # [B, H, R]
    out = jnp.einsum("bhrs,bhrsd->bhrd", probs.astype(v.dtype), vals)
    if out.shape[2] == 1:
        out = out[:, :, 0]
    else:
        weights = jax.nn.softmax(lse, axis=2)[..., None]
        out = jnp.sum(out * weights.astype(out.dtype), axis=2)
    # Append the new position to its bucket's ring.
    count = jnp.take_along_axis(counts, bucket[..., None], axis=3)[..., 0]  # [B, H, R]
    r_ix = jnp.arange(bucket.shape[2])[None, None, :]
    b3, h3 = jnp.arange(batch)[:, None, None], jnp.arange(heads)[None, :, None]
    tt = jnp.broadcast_to(t[:, None, None], bucket.shape).astype(jnp.int32)
    table = table.at[b3, h3, r_ix, bucket, count % size].set(tt)
    counts = counts.at[b3, h3, r_ix, bucket].add(1)
    return out, dict(table=table, counts=counts)
