"""LSH self-attention with shared queries and keys (Reformer section 3, Trax HEAD semantics).

Pipeline for each (example, head): hash every position into a bucket per hash round by random
rotations; sort the rounds' positions by (round, bucket, position); cut the sorted sequence into
chunks; let each chunk attend to itself and its neighbours (wrapping around, so the first chunk
of a round looks back into the previous round); unsort; combine the rounds weighted by their
softmax normalisers. Time is O(n_hashes * L * log L) for the sort plus O(n_hashes * L * chunk_len
* window) for the attention; memory is linear in L.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from reformer_jax.kernels.masking import check_qkv, pad_to_multiple, score_dtype
from reformer_jax.kernels.window import window_attention

NBuckets = int | Sequence[int]


def auto_n_buckets(length: int, chunk_len: int) -> NBuckets:
    """The lineage's automatic bucket count: about two buckets per chunk.

    ``n = 2 * max(1, length // chunk_len)``; above 128 buckets it is factorised into two factors
    (to keep the rotation matrix small): ``[2**ceil(log2(sqrt(n))), 2 * (n // (2 * first))]``.
    enwik8 (65536 / 256) gives ``[32, 16]``; imagenet64 (12288 / 128) gives ``[16, 12]``.
    """
    n = 2 * max(1, length // chunk_len)
    if n <= 128:
        return n
    first = 2 ** math.ceil(math.log2(math.sqrt(n)))
    return [first, 2 * (n // (2 * first))]


def _factors(n_buckets: NBuckets) -> list[int]:
    factors = [int(n_buckets)] if isinstance(n_buckets, int | np.integer) else list(n_buckets)
    if not factors or any(f < 2 or f % 2 for f in factors):
        raise ValueError(
            f"n_buckets must be an even int >= 2 or a list of such factors, got {n_buckets!r}: "
            "each bucket pairs a rotation direction with its negation"
        )
    return [int(f) for f in factors]


def total_buckets(n_buckets: NBuckets) -> int:
    """Number of buckets per round (the product of the factors)."""
    return int(np.prod(_factors(n_buckets)))


def rotation_columns(n_buckets: NBuckets) -> int:
    """Columns of the rotation matrix: ``n // 2``, or ``sum(factors) // 2`` when factorised."""
    return sum(f // 2 for f in _factors(n_buckets))


def draw_rotations(
    key: jax.Array,
    n_heads: int,
    d_head: int,
    n_hashes: int,
    n_buckets: NBuckets,
    dtype: jnp.dtype = jnp.float32,
) -> jax.Array:
    """Draws the random rotations: i.i.d. N(0, 1), ``[n_heads, d_head, n_hashes, columns]``.

    ``columns = rotation_columns(n_buckets)``. Shared across the batch (as Hugging Face does); not
    orthogonalised. Draw fresh ones per step in training and fixed ones for evaluation.
    """
    shape = (n_heads, d_head, n_hashes, rotation_columns(n_buckets))
    return jax.random.normal(key, shape, dtype)


def hash_vectors(
    x: jax.Array,
    rotations: jax.Array,
    n_buckets: NBuckets,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Angular LSH: bucket ids per hash round.

    Args:
      x: ``[batch, heads, length, d_head]`` vectors (the un-normalised shared query/keys).
      rotations: ``[heads, d_head, n_hashes, rotation_columns(n_buckets)]``.
      n_buckets: even int, or a list of even factors (mixed radix ``b0 + f0*b1 + f0*f1*b2 ...``,
        each factor hashed on its own slice of columns).
      mask: optional ``[batch, length]`` bool, True for real tokens; padded positions go into an
        extra bucket ``total_buckets(n_buckets)`` that sorts after every real bucket.

    Returns:
      int32 ``[batch, heads, n_hashes, length]`` with ids in ``[0, total_buckets]``
      (``argmax`` over ``[xR, -xR]``). Carries no gradient.
    """
    factors = _factors(n_buckets)
    if rotations.ndim != 4 or rotations.shape[-1] != rotation_columns(factors):
        raise ValueError(
            f"rotations must be [heads, d_head, n_hashes, {rotation_columns(factors)}] for "
            f"n_buckets={n_buckets!r}, got {rotations.shape}; draw them with draw_rotations"
        )
    x = jax.lax.stop_gradient(x)
    batch, heads, length, d_head = x.shape
    n_hashes, columns = rotations.shape[2:]
    # Contract to [b, h, l, rounds * columns] (the natural layout of x @ R) and move the small
    # int ids to [b, h, rounds, l] afterwards: asking the dot for rounds before positions
    # makes XLA's CPU dot transpose the float result.
    dtype = score_dtype(x.dtype)  # half precision is upcast: ties would move buckets
    rotated = jnp.einsum(
        "bhld,hdc->bhlc",
        x.astype(dtype),
        rotations.astype(dtype).reshape(heads, d_head, n_hashes * columns),
    ).reshape(batch, heads, length, n_hashes, columns)
    buckets = jnp.zeros(rotated.shape[:-1], jnp.int32)
    column, radix = 0, 1
    for factor in factors:
        part = rotated[..., column : column + factor // 2]
        ids = _argmax_of_both_signs(part)
        buckets = buckets + radix * ids
        column += factor // 2
        radix *= factor
    buckets = buckets.transpose(0, 1, 3, 2)
    if mask is not None:
        buckets = jnp.where(mask[:, None, None, :].astype(bool), buckets, radix)
    return buckets


def _argmax_of_both_signs(part: jax.Array) -> jax.Array:
    """``argmax(concat([part, -part], -1), -1)`` as int32, without forming the concatenation.

    The concatenation (and the negation) would be two more copies of the rotated vectors, the
    largest temporaries of a long-sequence step (2 GiB + 1 GiB for the enwik8 model at 64K
    tokens). Same ties as the concatenation: the first half wins an exact tie between the
    largest value and the negated smallest, and within a half the first index wins.
    """
    half = part.shape[-1]
    largest = jnp.max(part, axis=-1)
    smallest = jnp.min(part, axis=-1)
    first_half = jnp.argmax(part, axis=-1).astype(jnp.int32)
    second_half = half + jnp.argmin(part, axis=-1).astype(jnp.int32)
    # A NaN makes both halves' arg-reductions point at it; the concatenation finds it first.
    in_first = (largest >= -smallest) | jnp.isnan(largest)
    return jnp.where(in_first, first_half, second_half)


class LSHOrder(NamedTuple):
    """The bucket order of every hash round (what the reversible backward replays).

    ``sorted_pos [batch, heads, n_hashes, padded_len]``: the position at each sorted slot of a
    round (sorted by bucket, then position); ``rank``, same shape: the slot of each position
    (the inverse permutation). ``padded_len`` is the length padded to a multiple of the chunk.
    """

    sorted_pos: jax.Array
    rank: jax.Array


def sort_order(buckets: jax.Array, chunk_len: int, n_buckets: NBuckets) -> LSHOrder:
    """Sorts each round's positions by bucket (stable, so ties keep position order).

    ``buckets [batch, heads, n_hashes, length]`` from :func:`hash_vectors`; the length is padded
    to a multiple of ``chunk_len`` with the padding bucket (``total_buckets(n_buckets)``), which
    sorts after every real one. Carries no gradient. Sorting each round on its own and laying
    the rounds end to end gives the global (round, bucket, position) order without ever forming
    the ``(round * n_buckets + bucket) * length + position`` keys, which overflow int32.
    """
    buckets = pad_to_multiple(
        jax.lax.stop_gradient(buckets), chunk_len, axis=3, value=total_buckets(n_buckets)
    )
    sorted_pos = jnp.argsort(buckets, axis=-1, stable=True).astype(jnp.int32)
    rank = jnp.put_along_axis(
        jnp.zeros_like(sorted_pos),
        sorted_pos,
        jnp.broadcast_to(jnp.arange(buckets.shape[-1], dtype=jnp.int32), sorted_pos.shape),
        axis=-1,
        inplace=False,
    )
    return LSHOrder(sorted_pos, rank)


def unit_keys(qk: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Keys of shared-QK attention: ``qk`` scaled to unit length (Trax's length normalisation)."""
    dtype = score_dtype(qk.dtype)
    x = qk.astype(dtype)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)
    return (x / math.sqrt(qk.shape[-1])).astype(qk.dtype)


def lsh_attention(
    qk: jax.Array,
    v: jax.Array,
    rotations: jax.Array,
    *,
    n_buckets: NBuckets | None = None,
    chunk_len: int,
    n_chunks_before: int = 1,
    n_chunks_after: int = 0,
    causal: bool = False,
    mask: jax.Array | None = None,
    dropout_rate: float = 0.0,
    dropout_key: jax.Array | None = None,
    attend_across_buckets: bool = True,
    buckets: jax.Array | None = None,
    order: LSHOrder | None = None,
    implementation: str = "xla",
) -> jax.Array:
    """LSH self-attention with shared queries and keys.

    Args:
      qk: shared queries/keys ``[batch, heads, length, d_head]``. Queries are used as they are;
        keys are ``qk`` normalised to unit length; scores are ``q . k_hat`` (no 1/sqrt(d)).
      v: values ``[batch, heads, length, d_v]``.
      rotations: ``[heads, d_head, n_hashes, rotation_columns(n_buckets)]`` from
        :func:`draw_rotations`; the number of hash rounds is ``rotations.shape[2]``.
      n_buckets: even int, list of even factors, or None for :func:`auto_n_buckets` of the
        (padded) length.
      chunk_len: positions per chunk of the sorted sequence. Any length works: the sequence is
        padded to a multiple of ``chunk_len`` internally and the padding masked.
      n_chunks_before, n_chunks_after: neighbouring sorted chunks each chunk attends to.
      causal: query i never attends to a key at a later position.
      mask: ``[batch, length]`` bool, True for real tokens. Padded keys are never attended to, at
        any position; padded positions hash into their own bucket.
      dropout_rate, dropout_key: dropout on the attention probabilities.
      attend_across_buckets: False is the paper-era variant that masks keys from another bucket
        (or another round) sharing the chunk window.
      buckets: optional precomputed ``hash_vectors(qk, rotations, n_buckets, mask)`` output
        ``[batch, heads, n_hashes, length]``; the backward of a reversible layer passes the
        forward's ids so that reconstruction drift cannot move a token to another bucket.
      order: optional :func:`sort_order` of those buckets (``padded_len`` = length padded to a
        multiple of ``chunk_len``): the reversible backward passes the forward's, so that it
        neither hashes nor sorts again. ``buckets`` are then needed only with
        ``attend_across_buckets=False``.
      implementation: how the sorted chunks attend, ``"xla"`` or ``"pallas"``
        (:func:`reformer_jax.kernels.window.window_attention`).

    Returns:
      ``[batch, heads, length, d_v]``. A token attends to itself only when no other key is
      allowed. Rounds are combined as ``sum_r out_r * softmax_r(lse_r)``: one
      softmax over the union of all rounds' candidates, duplicates counted per appearance.
      Gradients flow to ``qk`` (as query and as key) and ``v``; hashing is not differentiated.
      The backward pass recomputes the chunked scores instead of storing them.
    """
    check_qkv("lsh_attention", qk, v)
    if chunk_len < 1 or n_chunks_before < 0 or n_chunks_after < 0:
        raise ValueError(
            f"lsh_attention: chunk_len must be >= 1 and n_chunks_before/after >= 0, got "
            f"chunk_len={chunk_len}, n_chunks_before={n_chunks_before}, "
            f"n_chunks_after={n_chunks_after}"
        )
    batch, heads, length, _ = qk.shape
    padded_len = length + (-length) % chunk_len
    if n_buckets is None:
        n_buckets = auto_n_buckets(padded_len, chunk_len)
    n_hashes = rotations.shape[2]
    if rotations.shape[:2] != (heads, qk.shape[-1]):
        raise ValueError(
            f"rotations {rotations.shape} do not match qk {qk.shape}: expected "
            f"[{heads}, {qk.shape[-1]}, n_hashes, columns]"
        )

    if order is None or not attend_across_buckets:
        if buckets is None:
            buckets = hash_vectors(qk, rotations, n_buckets, mask)
        elif buckets.shape != (batch, heads, n_hashes, length):
            raise ValueError(
                f"buckets must be [batch, heads, n_hashes, length] = "
                f"{(batch, heads, n_hashes, length)}, got {buckets.shape}"
            )
    if order is None:
        order = sort_order(buckets, chunk_len, n_buckets)
    elif any(a.shape != (batch, heads, n_hashes, padded_len) for a in order):
        raise ValueError(
            f"order must hold [batch, heads, n_hashes, padded length] = "
            f"{(batch, heads, n_hashes, padded_len)} arrays (sort_order of the buckets), got "
            f"{[a.shape for a in order]}"
        )
    valid = None
    if mask is not None or padded_len != length:
        valid = jnp.ones((batch, length), bool) if mask is None else mask.astype(bool)
        valid = pad_to_multiple(valid, chunk_len, axis=1, value=False)
    pad_bucket = total_buckets(n_buckets)
    qk = pad_to_multiple(qk, chunk_len, axis=2)
    v = pad_to_multiple(v, chunk_len, axis=2)

    # Each round sorted by (bucket, position), the rounds laid end to end: the global
    # (round, bucket, position) order (see sort_order).
    sorted_pos, rank_in_round = order
    round_start = (jnp.arange(n_hashes, dtype=jnp.int32) * padded_len)[:, None]
    # unsort[r * L + i]: where (round r, position i) sits in the sorted sequence; its inverse
    # maps a sorted slot back to (round, position). Both are permutations, so the gathers below
    # get gathers (not scatter-adds) as their transposes.
    unsort = (rank_in_round + round_start).reshape(batch, heads, n_hashes * padded_len)
    sorted_slot = (sorted_pos + round_start).reshape(batch, heads, n_hashes * padded_len)
    sorted_pos = sorted_pos.reshape(batch, heads, n_hashes * padded_len)

    key_valid = None if valid is None else _take(valid[:, None], sorted_pos)
    key_group = None
    if not attend_across_buckets:
        # Round-distinct ids, so keys reached from another round never count as the same bucket.
        buckets = pad_to_multiple(jax.lax.stop_gradient(buckets), chunk_len, 3, pad_bucket)
        key_group = _take(buckets.reshape(batch, heads, -1), sorted_slot)
        key_group = key_group + (sorted_slot // padded_len) * (pad_bucket + 1)

    q_sorted = take_rows(qk, sorted_pos, unsort)
    v_sorted = take_rows(v, sorted_pos, unsort)
    out_sorted, lse_sorted = window_attention(
        q_sorted,
        unit_keys(q_sorted),
        v_sorted,
        sorted_pos,
        chunk_len=chunk_len,
        n_before=n_chunks_before,
        n_after=n_chunks_after,
        wrap=True,
        causal=causal,
        exclude_self=True,
        scale=1.0,
        key_valid=key_valid,
        key_group=key_group,
        dropout_rate=dropout_rate,
        dropout_key=dropout_key,
        implementation=implementation,
    )
    out = take_rows(out_sorted, unsort, sorted_slot)
    out = out.reshape(batch, heads, n_hashes, padded_len, -1)
    if n_hashes == 1:
        return out[:, :, 0, :length]
    lse = take_rows(lse_sorted[..., None], unsort, sorted_slot)
    lse = lse.reshape(batch, heads, n_hashes, padded_len, 1)
    # softmax over the rounds, written out per round: a reduction over the middle (rounds) axis
    # is several times slower on XLA's CPU backend than these few elementwise passes.
    rounds = range(n_hashes)
    top = jax.lax.stop_gradient(functools.reduce(jnp.maximum, [lse[:, :, r] for r in rounds]))
    weights = [jnp.exp(lse[:, :, r] - top) for r in rounds]
    total = functools.reduce(jnp.add, weights)  # sums to one even where the lse are imprecise
    combined = functools.reduce(
        jnp.add, [out[:, :, r] * (weights[r] / total).astype(out.dtype) for r in rounds]
    )
    return combined[:, :, :length]


def _take(x: jax.Array, index: jax.Array) -> jax.Array:
    """``x[b, h, index[b, h, m]]`` with ``x`` broadcastable over batch and heads."""
    x = jnp.broadcast_to(x, index.shape[:2] + x.shape[2:])
    return jax.vmap(jax.vmap(lambda row, idx: row[idx]))(x, index)


@jax.custom_vjp
def take_rows(x: jax.Array, index: jax.Array, inverse: jax.Array) -> jax.Array:
    """``x[b, h, index[b, h, m]]`` for an index that visits every row of ``x`` equally often.

    ``x`` is ``[batch, heads, n, ...]`` and ``index`` ``[batch, heads, r * n]`` holds each of
    ``0 .. n-1`` exactly ``r`` times, once per segment of ``n`` (a hash round);
    ``inverse[b, h, s * n + i]`` is the slot of ``index`` where row i appears in segment s.
    The gradient is then a gather by ``inverse`` summed over segments, instead of the
    scatter-add that differentiating a gather produces (serial and slow on CPU).
    """
    return _take(x, index)


def _take_rows_fwd(x, index, inverse):
    return _take(x, index), (index, inverse, x.shape[2])


def _take_rows_bwd(residuals, d_out):
    index, inverse, n = residuals
    d_x = _take(d_out, inverse)
    segments = index.shape[2] // n
    d_x = d_x.reshape(*d_x.shape[:2], segments, n, *d_x.shape[3:]).sum(axis=2)
    return d_x, None, None


take_rows.defvjp(_take_rows_fwd, _take_rows_bwd)
