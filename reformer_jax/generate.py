"""Sampling and fast autoregressive decoding with per-layer attention caches.

``generate(model, prompts, max_new_tokens=..., key=...)`` runs one jitted program: a *prefill*
pass over the prompt (the whole prompt at once, with the training kernels) that also fills a
fixed-size cache per layer, then a ``lax.while_loop`` of *decode steps*, each feeding one token
per row through the reversible stack (``y1 = x1 + F(x2)``, ``y2 = x2 + G(y1)`` for the new
position only) and attending to the cache instead of re-running the sequence.

Caches (``L`` = prompt + new tokens, the fixed cache length):

* ``full`` layers keep K/V of every position: O(L) work per token (exact).
* ``local`` layers keep a ring of the last ``(local_chunks_before + 1) * local_chunk_len``
  positions with their position ids; position ``t`` attends to the keys of chunks
  ``t // c - before .. t // c`` that are ``<= t``, exactly the training kernel's band: O(window)
  per token (exact).
* ``lsh`` layers keep the unit keys and values of every position plus, per hash round, a table
  ``[n_buckets, S]`` holding the ``S`` most recent positions of each bucket (a ring per bucket,
  ``S = lsh_cache_size``, by default ``(lsh_chunks_before + 1) * lsh_chunk_len``). The new token
  is hashed with the layer's rotations, attends in every round to the cached positions of its own
  bucket (and to itself with the self-mask score), and the rounds are combined with the kernel's
  logsumexp weights: O(n_hashes * S) per token. This is the causal, cache-friendly reading of LSH
  attention; it is *not* the training kernel (whose chunks of the sorted sequence also contain
  neighbouring buckets and shift as tokens are appended). See ``docs/sampling.md``.

The prompt pass uses the same semantics as the decode steps (the kernels for full and local
layers, a parallel version of the bucket cache for LSH layers), so prefill + decode equals
feeding the tokens one by one.

Prompts of different lengths are *left-aligned*: row ``b`` of ``prompts`` holds its prompt in
``prompts[b, :prompt_lengths[b]]`` (the rest is ignored), so every row keeps its natural
positions and gives the same result as when run alone. The output row is the prompt, the new
tokens, then padding.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from reformer_jax import kernels
from reformer_jax.config import ReformerConfig
from reformer_jax.kernels.masking import score_dtype
from reformer_jax.layers.attention import attend, layer_rotations, lsh_n_buckets

__all__ = [
    "Cache",
    "DecodeSpec",
    "bucket_attention",
    "cache_bytes",
    "decode_logits",
    "decode_spec",
    "decode_step",
    "filter_logits",
    "generate",
    "lower_generate",
    "prefill",
    "sample_logits",
]


# ------------------------------------------------------------------------------------------------
# Static description of a decode run.


@dataclasses.dataclass(frozen=True)
class DecodeSpec:
    """Everything static about a cache (hashable: part of the jit cache key).

    Attributes:
      max_length: positions the cache holds (prompt + new tokens); at most the model's
        positional capacity.
      n_buckets: LSH bucket count used for hashing (the configured one, or the automatic one for
        ``max_length``, which is what a forward pass over ``max_length`` tokens would use).
      lsh_cache_size: positions kept per (round, bucket) by LSH layers.
      exact_lsh: LSH layers run exact shared-QK attention (the model does below
        ``full_attention_below``; used when the whole run is shorter than that).
    """

    max_length: int
    n_buckets: int | tuple[int, ...] | None
    lsh_cache_size: int
    exact_lsh: bool


def decode_spec(
    cfg: ReformerConfig,
    max_length: int,
    *,
    lsh_cache_size: int | None = None,
    cached: bool = True,
) -> DecodeSpec:
    """Validates ``cfg`` for (``cached``) decoding and builds the static spec for ``max_length``."""
    if cached and cfg.residual != "reversible":
        raise ValueError(
            f"cached decoding supports model.residual='reversible' only, got {cfg.residual!r}; "
            "use use_cache=False (recomputes the model for every token)"
        )
    if not cfg.causal:
        raise ValueError(
            "cached decoding needs a causal model (model.causal=True); a bidirectional model "
            "cannot generate left to right"
        )
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    cap = cfg.max_length
    if cap is not None and max_length > cap:
        setting = "axial_shape" if cfg.pos_embedding == "axial" else "max_len"
        raise ValueError(
            f"prompt + max_new_tokens = {max_length} positions exceed the model's positional "
            f"capacity {cap} (model.{setting}); shorten the prompt or generate fewer tokens"
        )
    if "local" in cfg.attention_pattern and cfg.local_wrap_around and cfg.local_chunks_after > 0:
        raise ValueError(
            "local layers with local_wrap_around=True and local_chunks_after > 0 let the last "
            "chunk of a sequence see its first chunks, so a position's output depends on how "
            "long the sequence is and cannot be cached; use use_cache=False"
        )
    n_buckets = None
    if "lsh" in cfg.attention_pattern:
        nb = lsh_n_buckets(cfg, max_length)
        n_buckets = nb if isinstance(nb, int) else tuple(int(f) for f in nb)
    if lsh_cache_size is None:
        lsh_cache_size = (cfg.lsh_chunks_before + 1) * cfg.lsh_chunk_len
    if lsh_cache_size < 1:
        raise ValueError(f"lsh_cache_size must be >= 1, got {lsh_cache_size}")
    exact_lsh = max_length < cfg.full_attention_below
    return DecodeSpec(max_length, n_buckets, int(lsh_cache_size), exact_lsh)


def _default_hash_rng(cfg: ReformerConfig) -> jax.Array:
    """The model's evaluation default: ``key(hash_seed)`` if set, else ``key(0)``."""
    return jax.random.key(cfg.hash_seed if cfg.hash_seed is not None else 0)


# ------------------------------------------------------------------------------------------------
# Model plumbing: per-layer modules from the stacked blocks.


def _layers(model) -> list[tuple[str, Any, Any]]:
    """``(kind, attention, feedforward)`` per layer, in order (unstacked modules)."""
    cfg = model.cfg
    n_pattern = len(cfg.attention_pattern)
    per_pattern = []
    for block in model.blocks:
        per_pattern.append((nnx.split(block.attention), nnx.split(block.feedforward)))
    out = []
    for i in range(cfg.n_layers):
        g, p = divmod(i, n_pattern)
        (ag, astate), (fg, fstate) = per_pattern[p]
        attention = nnx.merge(ag, jax.tree.map(lambda a, g=g: a[g], astate))
        feedforward = nnx.merge(fg, jax.tree.map(lambda a, g=g: a[g], fstate))
        out.append((cfg.attention_pattern[p], attention, feedforward))
    return out


def _head(model, y1: jax.Array, y2: jax.Array) -> jax.Array:
    cfg = model.cfg
    h = model.final_norm(jnp.concatenate([y1, y2], axis=-1))
    return model.head(h).astype(jnp.promote_types(cfg.compute_dtype, jnp.float32))


def _rotations(cfg: ReformerConfig, spec: DecodeSpec, hash_rng: jax.Array) -> dict[int, Any]:
    if spec.n_buckets is None or spec.exact_lsh:
        return {}
    nb = spec.n_buckets if isinstance(spec.n_buckets, int) else list(spec.n_buckets)
    return {
        i: layer_rotations(cfg, jax.random.fold_in(hash_rng, i), nb)
        for i, kind in enumerate(cfg.layer_kinds())
        if kind == "lsh"
    }


# ------------------------------------------------------------------------------------------------
# LSH with a bucket cache: the parallel (prompt) form.


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
    return _bucket_prefill(qk, v, buckets, n_buckets, cache_size)[0]


def _bucket_prefill(qk, v, buckets, n_buckets: int, size: int):
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


# ------------------------------------------------------------------------------------------------
# Prefill: the prompt through the stack, filling the caches.


def _heads(cfg: ReformerConfig, x: jax.Array) -> jax.Array:
    """``[..., H * d_head] -> [..., H, d_head]``."""
    return x.reshape(*x.shape[:-1], cfg.n_heads, cfg.d_head)


def _local_window(cfg: ReformerConfig) -> int:
    return (cfg.local_chunks_before + 1) * cfg.local_chunk_len


def _prefill_impl(model, prompts, lengths, rotations, spec: DecodeSpec):
    """The prompt through the stack: returns the two output streams ``[B, P, d]`` and the
    per-layer caches. A scan over the layer groups (as in the model), so compile time does
    not grow with depth."""
    cfg = model.cfg
    plen = prompts.shape[1]
    valid = jnp.arange(plen)[None, :] < lengths[:, None]
    x = model.embed(prompts)
    pos = model.positions(plen)
    if pos is not None:
        x = x + pos.astype(x.dtype)[None]
    x = x.astype(cfg.compute_dtype)
    n_pattern = len(cfg.attention_pattern)
    graphs, states, stacked_rot = [], [], []
    for p, block in enumerate(model.blocks):
        ag, astate = nnx.split(block.attention)
        fg, fstate = nnx.split(block.feedforward)
        graphs.append((ag, fg))
        states.append((astate, fstate))
        layers = range(p, cfg.n_layers, n_pattern)
        has_rot = rotations and cfg.attention_pattern[p] == "lsh"
        stacked_rot.append(jnp.stack([rotations[i] for i in layers]) if has_rot else None)

    def group(carry, xs):
        x1, x2 = carry
        group_states, group_rot = xs
        caches = []
        for p, kind in enumerate(cfg.attention_pattern):
            attn = nnx.merge(graphs[p][0], group_states[p][0])
            ff = nnx.merge(graphs[p][1], group_states[p][1])
            x1, x2, cache = _prefill_layer(
                cfg, spec, kind, attn, ff, x1, x2, valid, lengths, group_rot[p]
            )
            caches.append(cache)
        return (x1, x2), tuple(caches)

    (x1, x2), stacked = jax.lax.scan(group, (x, x), (tuple(states), tuple(stacked_rot)))
    caches = tuple(
        jax.tree.map(lambda a, g=i // n_pattern: a[g], stacked[i % n_pattern])
        for i in range(cfg.n_layers)
    )
    return x1, x2, caches


def _prefill_layer(cfg, spec, kind, attn, ff, x1, x2, valid, lengths, rotations):
    """One layer on the prompt: ``(y1, y2, cache)``."""
    batch, plen, _ = x1.shape
    big = spec.max_length
    h = attn.norm(x2)
    v = _heads(cfg, attn.v(h))  # [B, P, H, d]
    cache: dict[str, jax.Array] = {}
    if kind == "lsh":
        qk = _heads(cfg, attn.qk(h))
        q_bhld = qk.transpose(0, 2, 1, 3)
        v_bhld = v.transpose(0, 2, 1, 3)
        if spec.exact_lsh:
            out = kernels.full_attention(
                q_bhld, kernels.unit_keys(q_bhld), v_bhld, scale=1.0, exclude_self=True, causal=True
            )
        else:
            nb = kernels.total_buckets(spec.n_buckets)
            buckets = kernels.hash_vectors(q_bhld, rotations, _nb_arg(spec), valid)
            out, table, counts = _bucket_prefill(q_bhld, v_bhld, buckets, nb, spec.lsh_cache_size)
            cache.update(table=table, counts=counts, rotations=rotations)
        cache["k"] = _place(kernels.unit_keys(qk), big)
        cache["v"] = _place(v, big)
    else:
        q = _heads(cfg, attn.q(h))
        k = _heads(cfg, attn.k(h))
        out, _ = attend(
            kind,
            cfg,
            q.transpose(0, 2, 1, 3),
            k.transpose(0, 2, 1, 3),
            v.transpose(0, 2, 1, 3),
            mask=None,
            dropout_key=None,
        )
        if kind == "full":
            cache.update(k=_place(k, big), v=_place(v, big))
        else:
            cache.update(_ring(k, v, lengths, _local_window(cfg)))
    out = out.transpose(0, 2, 1, 3).reshape(batch, plen, -1)
    x1 = x1 + attn.out(out).astype(x1.dtype)
    x2 = x2 + ff(x1)
    return x1, x2, cache


def _nb_arg(spec: DecodeSpec):
    return spec.n_buckets if isinstance(spec.n_buckets, int) else list(spec.n_buckets)


def _place(x: jax.Array, big: int) -> jax.Array:
    """``[B, P, ...]`` into a zero cache ``[B, big, ...]``."""
    cache = jnp.zeros((x.shape[0], big, *x.shape[2:]), x.dtype)
    return jax.lax.dynamic_update_slice_in_dim(cache, x, 0, axis=1)


def _ring(k, v, lengths, window):
    """Ring cache of the last ``window`` prompt positions: slot ``j`` holds position ``p``
    with ``p % window == j`` (the latest such ``p < length``), or -1."""
    j = jnp.arange(window)[None, :]
    last = lengths[:, None] - 1
    p = last - jnp.mod(last - j, window)
    ok = p >= 0
    idx = jnp.clip(p, 0, k.shape[1] - 1)
    take = functools.partial(jnp.take_along_axis, indices=idx[:, :, None, None], axis=1)
    zero = jnp.zeros((), k.dtype)
    return dict(
        k=jnp.where(ok[:, :, None, None], take(k), zero),
        v=jnp.where(ok[:, :, None, None], take(v), zero),
        pos=jnp.where(ok, p, -1).astype(jnp.int32),
    )


# ------------------------------------------------------------------------------------------------
# One decode step: one token per row at per-row positions.


def _step_impl(model, caches, tokens, positions, spec: DecodeSpec):
    """Logits ``[B, V]`` for ``tokens [B]`` at ``positions [B]``, and the updated caches."""
    cfg = model.cfg
    batch = tokens.shape[0]
    rows = jnp.arange(batch)
    x = model.embed(tokens)
    pos = _position_rows(model, positions, spec.max_length)
    if pos is not None:
        x = x + pos.astype(x.dtype)
    x = x.astype(cfg.compute_dtype)
    x1 = x2 = x
    t = positions
    sdt = score_dtype(cfg.compute_dtype)
    mask_value, self_value = kernels.mask_values(sdt)
    new_caches = []
    for (kind, attn, ff), cache in zip(_layers(model), caches, strict=True):
        h = attn.norm(x2)
        v = _heads(cfg, attn.v(h))  # [B, H, d]
        cache = dict(cache)
        if kind == "full":
            q, k = _heads(cfg, attn.q(h)), _heads(cfg, attn.k(h))
            cache["k"] = cache["k"].at[rows, t].set(k)
            cache["v"] = cache["v"].at[rows, t].set(v)
            s = jnp.einsum("bhd,blhd->bhl", q, cache["k"], preferred_element_type=sdt)
            s = s * (1.0 / math.sqrt(cfg.d_head))
            ok = jnp.arange(spec.max_length)[None, None, :] <= t[:, None, None]
            probs = jax.nn.softmax(jnp.where(ok, s, mask_value), axis=-1)
            out = jnp.einsum("bhl,blhd->bhd", probs.astype(v.dtype), cache["v"])
        elif kind == "local":
            q, k = _heads(cfg, attn.q(h)), _heads(cfg, attn.k(h))
            slot = t % _local_window(cfg)
            cache["k"] = cache["k"].at[rows, slot].set(k)
            cache["v"] = cache["v"].at[rows, slot].set(v)
            cache["pos"] = cache["pos"].at[rows, slot].set(t)
            kpos = cache["pos"]
            first = (t // cfg.local_chunk_len - cfg.local_chunks_before) * cfg.local_chunk_len
            ok = (kpos >= jnp.maximum(first, 0)[:, None]) & (kpos <= t[:, None])
            s = jnp.einsum("bhd,bwhd->bhw", q, cache["k"], preferred_element_type=sdt)
            s = s * (1.0 / math.sqrt(cfg.d_head))
            probs = jax.nn.softmax(jnp.where(ok[:, None, :], s, mask_value), axis=-1)
            out = jnp.einsum("bhw,bwhd->bhd", probs.astype(v.dtype), cache["v"])
        else:
            qk = _heads(cfg, attn.qk(h))
            cache["k"] = cache["k"].at[rows, t].set(kernels.unit_keys(qk))
            cache["v"] = cache["v"].at[rows, t].set(v)
            if spec.exact_lsh:
                s = jnp.einsum("bhd,blhd->bhl", qk, cache["k"], preferred_element_type=sdt)
                kpos = jnp.arange(spec.max_length)[None, None, :]
                s = jnp.where(kpos <= t[:, None, None], s, mask_value)
                s = jnp.where(kpos == t[:, None, None], self_value, s)
                probs = jax.nn.softmax(s, axis=-1)
                out = jnp.einsum("bhl,blhd->bhd", probs.astype(v.dtype), cache["v"])
            else:
                out = _lsh_step(cfg, spec, cache, qk, v, t, mask_value, self_value, sdt)
        y = attn.out(out.reshape(batch, -1))
        x1 = x1 + y.astype(x1.dtype)
        x2 = x2 + ff(x1[:, None])[:, 0]
        new_caches.append(cache)
    return _head(model, x1, x2), tuple(new_caches)


def _position_rows(model, positions: jax.Array, max_length: int) -> jax.Array | None:
    """``model.positions(max_length)[positions]`` without building the whole table."""
    cfg = model.cfg
    table = model.positions
    if cfg.pos_embedding == "none":
        return None
    if cfg.pos_embedding == "learned":
        return table.table[...][positions]
    if cfg.pos_embedding == "axial":  # row-major grid index of every position
        rows, stride = [], math.prod(cfg.axial_shape)
        for axis, n in zip(table.axes, cfg.axial_shape, strict=True):
            stride //= n
            rows.append(axis[...][(positions // stride) % n])
        return jnp.concatenate(rows, axis=-1)
    return model.positions(max_length)[positions]  # sinusoidal: a constant table


def _lsh_step(cfg, spec, cache, qk, v, t, mask_value, self_value, sdt):
    """Bucket-cache attention of the new token (updates ``cache`` in place of the dict)."""
    batch = qk.shape[0]
    size = spec.lsh_cache_size
    bucket = kernels.hash_vectors(qk[:, :, None, :], cache["rotations"], _nb_arg(spec))[..., 0]
    table, counts = cache["table"], cache["counts"]  # [B, H, R, nb, S], [B, H, R, nb]
    idx = jnp.take_along_axis(table, bucket[..., None, None], axis=3)[:, :, :, 0]  # [B,H,R,S]
    heads = jnp.arange(cfg.n_heads)
    b_ix = jnp.arange(batch)[:, None, None, None]
    h_ix = heads[None, :, None, None]
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
    b3, h3 = jnp.arange(batch)[:, None, None], heads[None, :, None]
    tt = jnp.broadcast_to(t[:, None, None], bucket.shape).astype(jnp.int32)
    cache["table"] = table.at[b3, h3, r_ix, bucket, count % size].set(tt)
    cache["counts"] = counts.at[b3, h3, r_ix, bucket].add(1)
    return out


# ------------------------------------------------------------------------------------------------
# Public cache API: prefill, decode_step, decode_logits.


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Cache:
    """The decoding state of every layer (a pytree; ``spec`` is static).

    ``layers[i]`` is a dict of arrays with the batch first: ``k``/``v`` (``[B, max_length, H,
    d_head]`` for full and LSH layers, where LSH keys are unit keys; ``[B, window, H, d_head]``
    ring for local layers, with ``pos`` ``[B, window]``), and for LSH layers ``table``
    ``[B, H, n_hashes, n_buckets, lsh_cache_size]``, ``counts`` ``[B, H, n_hashes, n_buckets]``
    and the layer's ``rotations``.
    """

    layers: tuple[dict[str, jax.Array], ...]
    spec: DecodeSpec = dataclasses.field(metadata=dict(static=True))


def cache_bytes(cache: Cache) -> int:
    """Bytes held by the cache's arrays (LSH rotations included); also works on the abstract
    cache of ``jax.eval_shape(lambda: prefill(...))``."""
    leaves = jax.tree.leaves(cache.layers)
    return int(sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in leaves))


def _as_prompts(prompts, prompt_lengths) -> tuple[np.ndarray, np.ndarray]:
    """Left-aligned int32 prompts ``[B, P]`` and their lengths ``[B]`` (validated)."""
    if isinstance(prompts, list | tuple) and prompts and not np.isscalar(prompts[0]):
        rows = [np.asarray(r, np.int32).reshape(-1) for r in prompts]
        width = max(len(r) for r in rows)
        array = np.zeros((len(rows), width), np.int32)
        for i, r in enumerate(rows):
            array[i, : len(r)] = r
        lengths = np.array([len(r) for r in rows], np.int32)
        if prompt_lengths is not None:
            raise ValueError("prompt_lengths is implied by a list of prompts; do not pass both")
    else:
        array = np.asarray(prompts)
        if array.ndim == 1:
            array = array[None]
        if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(
                f"prompts must be int tokens [batch, length] (or one row, or a list of rows), "
                f"got {array.dtype} {array.shape}"
            )
        array = array.astype(np.int32)
        if prompt_lengths is None:
            lengths = np.full((array.shape[0],), array.shape[1], np.int32)
        else:
            lengths = np.asarray(prompt_lengths, np.int32).reshape(-1)
            if lengths.shape != (array.shape[0],):
                raise ValueError(
                    f"prompt_lengths must have one entry per row ({array.shape[0]}), got "
                    f"{lengths.shape}"
                )
    if array.shape[1] == 0 or (lengths < 1).any() or (lengths > array.shape[1]).any():
        raise ValueError(
            f"every prompt needs 1 .. {array.shape[1]} tokens (the model predicts from the "
            f"last prompt token), got lengths {lengths.tolist()}"
        )
    return array, lengths


def _hash_rng(cfg, hash_rng):
    return _default_hash_rng(cfg) if hash_rng is None else hash_rng


@functools.partial(jax.jit, static_argnames=("graphdef", "spec", "all_logits"))
def _prefill_jit(graphdef, state, prompts, lengths, rotations, *, spec, all_logits):
    model = nnx.merge(graphdef, state)
    x1, x2, caches = _prefill_impl(model, prompts, lengths, rotations, spec)
    if all_logits:
        logits = _head(model, x1, x2)
    else:
        rows = jnp.arange(prompts.shape[0])
        logits = _head(model, x1[rows, lengths - 1], x2[rows, lengths - 1])
    return logits, Cache(caches, spec)


@functools.partial(jax.jit, static_argnames=("graphdef",), donate_argnames=("cache",))
def _step_jit(graphdef, state, cache, tokens, positions):
    model = nnx.merge(graphdef, state)
    logits, layers = _step_impl(model, cache.layers, tokens, positions, cache.spec)
    return logits, Cache(layers, cache.spec)


def prefill(
    model,
    prompts,
    prompt_lengths=None,
    *,
    max_length: int,
    hash_rng: jax.Array | None = None,
    lsh_cache_size: int | None = None,
) -> tuple[jax.Array, Cache]:
    """Runs the prompts and builds a cache for ``max_length`` positions.

    Args:
      model: a `ReformerLM`.
      prompts: left-aligned int tokens ``[B, P]`` (row ``b`` uses ``[:prompt_lengths[b]]``).
      max_length: positions the cache holds (checked against the positional capacity).
      hash_rng: key of the LSH rotations (default: the model's evaluation default).
      lsh_cache_size: same-bucket positions kept per LSH round (default
        ``(lsh_chunks_before + 1) * lsh_chunk_len``).

    Returns:
      The logits after each row's last prompt token ``[B, vocab]`` and the cache.
    """
    array, lengths = _as_prompts(prompts, prompt_lengths)
    spec = decode_spec(model.cfg, max(max_length, array.shape[1]), lsh_cache_size=lsh_cache_size)
    graphdef, state = nnx.split(model)
    return _prefill_jit(
        graphdef,
        state,
        jnp.asarray(array),
        jnp.asarray(lengths),
        _rotations(model.cfg, spec, _hash_rng(model.cfg, hash_rng)),
        spec=spec,
        all_logits=False,
    )


def decode_step(model, cache: Cache, tokens, positions) -> tuple[jax.Array, Cache]:
    """Feeds ``tokens [B]`` at ``positions [B]`` (each row's next position); returns the logits
    ``[B, vocab]`` predicting the following token and the updated cache (the input cache is
    donated: do not reuse it)."""
    graphdef, state = nnx.split(model)
    tokens = jnp.asarray(tokens, jnp.int32).reshape(-1)
    positions = jnp.asarray(positions, jnp.int32).reshape(-1)
    return _step_jit(graphdef, state, cache, tokens, positions)


@functools.partial(jax.jit, static_argnames=("graphdef", "spec", "prompt_length"))
def _decode_logits_jit(graphdef, state, tokens, rotations, *, spec, prompt_length):
    model = nnx.merge(graphdef, state)
    batch, length = tokens.shape
    lengths = jnp.full((batch,), prompt_length, jnp.int32)
    x1, x2, caches = _prefill_impl(model, tokens[:, :prompt_length], lengths, rotations, spec)
    first = _head(model, x1, x2)

    def body(caches, xs):
        token, position = xs
        logits, caches = _step_impl(
            model, caches, token, jnp.full((batch,), position, jnp.int32), spec
        )
        return caches, logits

    positions = jnp.arange(prompt_length, length)
    _, rest = jax.lax.scan(body, caches, (tokens[:, prompt_length:].T, positions))
    return jnp.concatenate([first, rest.transpose(1, 0, 2)], axis=1)


def decode_logits(
    model,
    tokens,
    *,
    prompt_length: int = 1,
    hash_rng: jax.Array | None = None,
    lsh_cache_size: int | None = None,
) -> jax.Array:
    """Teacher-forced logits ``[B, L, vocab]`` of the cached decoder.

    The first ``prompt_length`` tokens go through the prefill pass, every later token through a
    decode step (one position at a time, as in `generate`). ``logits[:, t]`` predicts token
    ``t + 1``, as for ``model(tokens)``, so ``lm_loss`` applies unchanged.
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    if tokens.ndim != 2 or not 1 <= prompt_length <= tokens.shape[1]:
        raise ValueError(
            f"tokens must be [batch, length] with 1 <= prompt_length <= length, got "
            f"{tokens.shape} and prompt_length={prompt_length}"
        )
    spec = decode_spec(model.cfg, tokens.shape[1], lsh_cache_size=lsh_cache_size)
    graphdef, state = nnx.split(model)
    return _decode_logits_jit(
        graphdef,
        state,
        tokens,
        _rotations(model.cfg, spec, _hash_rng(model.cfg, hash_rng)),
        spec=spec,
        prompt_length=prompt_length,
    )


# ------------------------------------------------------------------------------------------------
# Sampling.


def filter_logits(
    logits: jax.Array, *, top_k: int | None = None, top_p: float | jax.Array | None = None
) -> jax.Array:
    """Sets logits outside the top-k / nucleus to ``-inf`` (last axis is the vocabulary).

    ``top_k``: keep the ``k`` largest (ties with the k-th are kept). ``top_p``: keep the smallest
    set of most probable tokens whose probability reaches ``top_p`` (the most probable token is
    always kept; ties with the last kept token are kept). Applied in that order.
    """
    neg = jnp.array(-jnp.inf, logits.dtype)
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        k = min(int(top_k), logits.shape[-1])
        kth = jax.lax.top_k(logits, k)[0][..., -1:]
        logits = jnp.where(logits < kth, neg, logits)
    if top_p is not None:
        ordered = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(ordered.astype(jnp.float32), axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of the strictly more probable
        n_keep = jnp.maximum(jnp.sum(before < top_p, axis=-1, keepdims=True), 1)
        threshold = jnp.take_along_axis(ordered, n_keep - 1, axis=-1)
        logits = jnp.where(logits < threshold, neg, logits)
    return logits


def sample_logits(
    key: jax.Array | None,
    logits: jax.Array,
    *,
    temperature: float | jax.Array = 1.0,
    top_k: int | None = None,
    top_p: float | jax.Array | None = None,
    greedy: bool = False,
) -> jax.Array:
    """Draws token ids from ``logits [..., vocab]`` (one key for all leading dims).

    ``greedy`` (or ``temperature == 0``) is the argmax; otherwise the logits are divided by
    ``temperature``, filtered by :func:`filter_logits` and sampled.
    """
    if greedy or (isinstance(temperature, int | float) and temperature == 0):
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    logits = filter_logits(logits, top_k=top_k, top_p=top_p)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _row_keys(key, batch: int) -> jax.Array:
    if key is None:
        key = jax.random.key(0)
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(jnp.asarray(key, jnp.uint32))
    if key.ndim == 0:
        return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(batch))
    if key.shape == (batch,):
        return key
    raise ValueError(
        f"key must be one PRNG key or one key per row (shape [{batch}]), got shape {key.shape}"
    )


@functools.partial(
    jax.jit,
    static_argnames=(
        "graphdef",
        "spec",
        "max_new_tokens",
        "top_k",
        "greedy",
        "use_top_p",
        "stop_token",
        "pad_token",
        "use_cache",
    ),
)
def _generate_jit(
    graphdef,
    state,
    prompts,
    lengths,
    row_keys,
    rotations,
    temperature,
    top_p,
    *,
    spec,
    max_new_tokens,
    top_k,
    greedy,
    use_top_p,
    stop_token,
    pad_token,
    use_cache,
):
    model = nnx.merge(graphdef, state)
    batch, plen = prompts.shape
    total = spec.max_length
    rows = jnp.arange(batch)
    valid = jnp.arange(plen)[None, :] < lengths[:, None]
    buf = jnp.full((batch, total), pad_token, jnp.int32)
    buf = buf.at[:, :plen].set(jnp.where(valid, prompts, pad_token))

    def pick(step, logits):
        keys = jax.vmap(jax.random.fold_in, (0, None))(row_keys, step)
        return jax.vmap(
            lambda k, lg: sample_logits(
                k,
                lg,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p if use_top_p else None,
                greedy=greedy,
            )
        )(keys, logits)

    def forward(buf, last):  # uncached: the whole model on the buffer, logits at ``last``
        mask = jnp.arange(total)[None, :] <= last[:, None]
        return model(buf, mask=mask, rotations=rotations or None)[rows, last]

    if use_cache:
        x1, x2, caches = _prefill_impl(model, prompts, lengths, rotations, spec)
        logits = _head(model, x1[rows, lengths - 1], x2[rows, lengths - 1])
    else:
        caches = ()
        logits = forward(buf, lengths - 1)
    stop = -1 if stop_token is None else stop_token
    tok = pick(0, logits)
    buf = buf.at[rows, lengths].set(tok)
    done = tok == stop
    n_new = jnp.ones((batch,), jnp.int32)

    def cond(carry):
        step, _, _, _, done, _ = carry
        return (step < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        step, buf, caches, prev, done, n_new = carry
        where = lengths + step - 1  # position of ``prev``
        if use_cache:
            logits, caches = _step_impl(model, caches, prev, where, spec)
        else:
            logits = forward(buf, where)
        tok = jnp.where(done, pad_token, pick(step, logits))
        buf = buf.at[rows, where + 1].set(tok)
        n_new = n_new + (~done).astype(jnp.int32)
        done = done | (tok == stop)
        return step + 1, buf, caches, tok, done, n_new

    carry = (jnp.int32(1), buf, caches, tok, done, n_new)
    _, buf, _, _, _, n_new = jax.lax.while_loop(cond, body, carry)
    return buf, lengths + n_new


def generate(
    model,
    prompts,
    *,
    max_new_tokens: int,
    key: jax.Array | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    stop_token: int | None = None,
    pad_token: int = 0,
    prompt_lengths=None,
    use_cache: bool = True,
    hash_rng: jax.Array | None = None,
    lsh_cache_size: int | None = None,
    return_lengths: bool = False,
):
    """Autoregressive sampling from a causal `ReformerLM`; one jitted program.

    Args:
      model: the model (evaluation mode: no dropout).
      prompts: int tokens ``[B, P]`` (or ``[P]``, or a list of token lists of different
        lengths). Prompts are left-aligned: row ``b`` is ``prompts[b, :prompt_lengths[b]]``.
      max_new_tokens: tokens to generate per row; ``P + max_new_tokens`` must fit the model's
        positional capacity (a ``ValueError`` says so otherwise).
      key: a PRNG key, or one key per row (shape ``[B]``). With one key, row ``b`` uses
        ``fold_in(key, b)``; step ``s`` of a row uses ``fold_in(row_key, s)``, so a row's output
        depends only on its key, prompt and the model, not on the rest of the batch. Unused
        when greedy.
      temperature: divides the logits; 0 means greedy.
      top_k, top_p: keep the k most probable tokens / the nucleus of mass ``top_p``
        (:func:`filter_logits`).
      greedy: argmax decoding.
      stop_token: a row that emits it stops (the stop token is kept); the rest of the row is
        ``pad_token``. The loop ends when every row has stopped.
      pad_token: fills positions after a row's end (and after its prompt in the input).
      prompt_lengths: ``[B]`` lengths of the left-aligned prompts (default: all ``P``).
      use_cache: False recomputes the whole model on the sequence buffer for every token (the
        reference; exact training-kernel semantics also for LSH layers).
      hash_rng: key of the LSH rotations (default: the model's evaluation default, so the
        uncached path equals ``model(tokens)``).
      lsh_cache_size: same-bucket positions each LSH layer keeps per hash round.
      return_lengths: also return each row's length (prompt + generated, stop token included).

    Returns:
      Tokens ``[B, P + max_new_tokens]`` (and the lengths ``[B]`` if ``return_lengths``).
    """
    args, statics = _generate_args(
        model,
        prompts,
        max_new_tokens=max_new_tokens,
        key=key,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        greedy=greedy,
        stop_token=stop_token,
        pad_token=pad_token,
        prompt_lengths=prompt_lengths,
        use_cache=use_cache,
        hash_rng=hash_rng,
        lsh_cache_size=lsh_cache_size,
    )
    tokens, out_lengths = _generate_jit(*args, **statics)
    return (tokens, out_lengths) if return_lengths else tokens


def _generate_args(
    model,
    prompts,
    *,
    max_new_tokens,
    key,
    temperature,
    top_k,
    top_p,
    greedy,
    stop_token,
    pad_token,
    prompt_lengths,
    use_cache,
    hash_rng,
    lsh_cache_size,
):
    """Validates `generate`'s arguments; returns the jitted program's (args, static kwargs)."""
    cfg = model.cfg
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    for name, token in (("stop_token", stop_token), ("pad_token", pad_token)):
        if token is not None and not 0 <= token < cfg.vocab_size:
            raise ValueError(f"{name} {token} is outside the vocabulary [0, {cfg.vocab_size})")
    array, lengths = _as_prompts(prompts, prompt_lengths)
    greedy = greedy or temperature == 0
    total = array.shape[1] + max_new_tokens
    if use_cache:
        spec = decode_spec(cfg, total, lsh_cache_size=lsh_cache_size)
    else:  # the same checks and LSH rotations, no cache
        spec = decode_spec(
            cfg.replace(local_wrap_around=False), total, lsh_cache_size=1, cached=False
        )
    graphdef, state = nnx.split(model)
    args = (
        graphdef,
        state,
        jnp.asarray(array),
        jnp.asarray(lengths),
        _row_keys(key, array.shape[0]),
        _rotations(cfg, spec, _hash_rng(cfg, hash_rng)),
        jnp.float32(1.0 if greedy else temperature),
        jnp.float32(1.0 if top_p is None else top_p),
    )
    statics = dict(
        spec=spec,
        max_new_tokens=max_new_tokens,
        top_k=top_k,
        greedy=greedy,
        use_top_p=top_p is not None,
        stop_token=stop_token,
        pad_token=pad_token,
        use_cache=use_cache,
    )
    return args, statics


#: Keyword defaults of `generate` (besides ``max_new_tokens``), shared with its AOT form.
GENERATE_DEFAULTS = dict(
    key=None,
    temperature=1.0,
    top_k=None,
    top_p=None,
    greedy=False,
    stop_token=None,
    pad_token=0,
    prompt_lengths=None,
    use_cache=True,
    hash_rng=None,
    lsh_cache_size=None,
)


def lower_generate(model, prompts, **kwargs) -> tuple[Any, tuple]:
    """Ahead-of-time form of `generate` (same keyword arguments, ``return_lengths`` excepted).

    Returns ``(lowered, dynamic_args)``: ``compiled = lowered.compile()``, then
    ``tokens, lengths = compiled(*dynamic_args)`` runs the program without recompiling (what the
    benchmark times).
    """
    defaults = GENERATE_DEFAULTS
    unknown = set(kwargs) - set(defaults) - {"max_new_tokens"}
    if unknown or "max_new_tokens" not in kwargs:
        raise TypeError(f"lower_generate: needs max_new_tokens; unknown: {sorted(unknown)}")
    args, statics = _generate_args(model, prompts, **{**defaults, **kwargs})
    lowered = _generate_jit.lower(*args, **statics)
    return lowered, args[1:]  # the graphdef is static
