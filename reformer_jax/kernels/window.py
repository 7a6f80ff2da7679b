"""Chunked look-around attention computed block by block, with a recomputing backward pass.

The shared core of the LSH kernel (on the bucket-sorted sequence) and the local kernel (on the
sequence as it is): the sequence is cut into chunks of ``chunk_len`` and the queries of chunk j
attend to the keys of chunks ``j - n_before .. j + n_after``. Rather than materialising the
``[chunks, chunk_len, window]`` scores of the whole sequence (several score-sized temporaries,
each far larger than the inputs), a loop walks over blocks of a few dozen chunks: each block's
scores, masks and probabilities stay in the CPU cache, and only ``O(length)`` arrays cross
iterations. The backward pass is written out (a ``jax.custom_vjp``) in the manner of
FlashAttention: it keeps the inputs and the per-row softmax statistics, recomputes one block's
scores at a time, and never stores probabilities.
"""

from __future__ import annotations

import warnings
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from reformer_jax.kernels import window_pallas
from reformer_jax.kernels.masking import mask_scores, score_dtype

# Queries per loop iteration: large enough to amortise the loop, small enough that the block's
# score-sized temporaries (queries x window floats each) stay in the per-core cache.
BLOCK_QUERIES = 2048


class WindowSpec(NamedTuple):
    """Static settings of :func:`window_attention` (hashable: a ``custom_vjp`` argument)."""

    chunk_len: int
    n_before: int
    n_after: int
    wrap: bool
    causal: bool
    exclude_self: bool
    scale: float
    dropout_rate: float
    block_chunks: int
    implementation: str = "xla"  # or "pallas" (reformer_jax.kernels.window_pallas)


def chunks_per_block(n_chunks: int, chunk_len: int, block_queries: int = BLOCK_QUERIES) -> int:
    """The largest divisor of ``n_chunks`` whose chunks hold at most ``block_queries`` queries."""
    limit = max(1, block_queries // chunk_len)
    return max(d for d in range(1, min(n_chunks, limit) + 1) if n_chunks % d == 0)


def window_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    positions: jax.Array,
    *,
    chunk_len: int,
    n_before: int,
    n_after: int,
    wrap: bool,
    causal: bool,
    exclude_self: bool,
    scale: float,
    key_valid: jax.Array | None = None,
    key_group: jax.Array | None = None,
    dropout_rate: float = 0.0,
    dropout_key: jax.Array | None = None,
    block_queries: int = BLOCK_QUERIES,
    implementation: str = "xla",
) -> tuple[jax.Array, jax.Array]:
    """Chunked look-around attention of one sequence with itself.

    Args:
      q, k: ``[batch, heads, n, d]`` with ``n`` a multiple of ``chunk_len``; ``v``:
        ``[batch, heads, n, d_v]``.
      positions: int ``[batch, heads, n]``: each slot's position in the original sequence, which
        the causal mask (``key <= query``) and self-exclusion compare.
      chunk_len, n_before, n_after: the window of chunk j is chunks ``j-n_before .. j+n_after``,
        in that order.
      wrap: neighbour chunks wrap around the sequence (chunk 0 looks back at the last chunk);
        False masks the chunks outside it instead.
      causal: keys at a later position than the query are masked.
      exclude_self: a query's own position gets the self-mask score (Trax's -1e5), which only
        wins when no other key is allowed (shared-QK attention).
      scale: multiplies ``q . k``.
      key_valid: optional bool ``[batch, heads, n]``: False keys are masked.
      key_group: optional int ``[batch, heads, n]``: keys of another group than the query's
        are masked (LSH without attending across buckets).
      dropout_rate, dropout_key: dropout on the probabilities, the same in the backward pass.
      block_queries: queries per loop iteration (rounded to whole chunks dividing the chunks).
      implementation: ``"xla"``, the blocked loop of this module, or ``"pallas"``, one Pallas
        kernel per direction (:mod:`reformer_jax.kernels.window_pallas`; Triton on GPUs, Mosaic
        on TPUs, Pallas's interpreter on a CPU; no dropout).

    Returns:
      ``(out [batch, heads, n, d_v], lse [batch, heads, n])``: the attention output and each
      row's log-sum-exp of its (masked) scores, both differentiable (the LSH kernel weights its
      hash rounds by ``lse``). Masking replaces scores, so masked keys get exactly zero weight
      and no gradient.
    """
    n = q.shape[2]
    if n % chunk_len:
        raise ValueError(f"window_attention: length {n} is not a multiple of chunk_len {chunk_len}")
    if dropout_rate > 0 and dropout_key is None:
        raise ValueError("dropout_rate > 0 needs an explicit dropout_key (a jax.random key)")
    if implementation == "pallas":
        window_pallas.check_supported(chunk_len, q.shape[-1], v.shape[-1], dropout_rate)
        window_pallas.check_unpartitioned()
        _warn_if_interpreted()
    elif implementation != "xla":
        raise ValueError(
            f"window_attention: implementation {implementation!r} is not one of 'xla', 'pallas'"
        )
    spec = WindowSpec(
        chunk_len=chunk_len,
        n_before=n_before,
        n_after=n_after,
        wrap=wrap,
        causal=causal,
        exclude_self=exclude_self,
        scale=float(scale),
        dropout_rate=float(dropout_rate),
        block_chunks=chunks_per_block(n // chunk_len, chunk_len, block_queries),
        implementation=implementation,
    )
    if dropout_rate == 0:
        dropout_key = None
    aux = (positions.astype(jnp.int32), key_valid, key_group, dropout_key)
    return _window_attention(spec, q, k, v, aux)


def _warn_if_interpreted() -> None:
    """On a CPU the Pallas kernels run in Pallas's interpreter: correct, but slow."""
    if jax.default_backend() == "cpu":
        warnings.warn(  # once per call site, by Python's default warning filter
            "window_implementation='pallas' runs in Pallas's interpreter on a CPU: slow, for "
            "tests; use window_implementation='xla' on a CPU (compiling ahead of time for a "
            "GPU or TPU uses their kernels)",
            stacklevel=3,
        )


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _window_attention(spec: WindowSpec, q, k, v, aux):
    out, stats = _forward(spec, q, k, v, aux)
    return out, _lse(stats)


def _window_attention_fwd(spec: WindowSpec, q, k, v, aux):
    out, stats = _forward(spec, q, k, v, aux)
    return (out, _lse(stats)), (q, k, v, aux, stats)


def _window_attention_bwd(spec: WindowSpec, residuals, cotangents):
    q, k, v, aux, stats = residuals
    d_out, d_lse = cotangents
    dq, dk, dv = _backward(spec, q, k, v, aux, stats, d_out, d_lse)
    return dq, dk, dv, jax.tree.map(lambda _: None, aux)


_window_attention.defvjp(_window_attention_fwd, _window_attention_bwd)


def _lse(stats: tuple[jax.Array, jax.Array]) -> jax.Array:
    row_max, row_sum = stats
    return row_max + jnp.log(row_sum)


# ----------------------------------------------------------------------------------------------
# Layout: [batch, heads, n, ...] -> blocks [batch * heads * n_blocks, block_chunks, chunk_len, ...]
# plus each block's halo (the neighbour chunks outside it) gathered by static chunk indices.


def _halo_index(spec: WindowSpec, n_chunks: int) -> np.ndarray:
    """``[n_blocks, n_before + n_after]`` chunk ids before and after each block (wrapped)."""
    bc = spec.block_chunks
    starts = np.arange(0, n_chunks, bc)[:, None]
    offsets = np.concatenate([np.arange(-spec.n_before, 0), bc + np.arange(spec.n_after)])
    return (starts + offsets[None, :]) % n_chunks


def _blocks(spec: WindowSpec, x: jax.Array) -> jax.Array:
    b, h, n = x.shape[:3]
    bc, c = spec.block_chunks, spec.chunk_len
    return x.reshape(b * h * (n // (bc * c)), bc, c, *x.shape[3:])


def _halos(spec: WindowSpec, x: jax.Array) -> jax.Array:
    b, h, n = x.shape[:3]
    c = spec.chunk_len
    n_chunks = n // c
    idx = _halo_index(spec, n_chunks)
    chunks = x.reshape(b * h, n_chunks, c, *x.shape[3:])
    halo = chunks[:, idx.reshape(-1)]
    return halo.reshape(b * h * idx.shape[0], idx.shape[1], c, *x.shape[3:])


def _windows(spec: WindowSpec, block: jax.Array, halo: jax.Array) -> jax.Array:
    """``[bc, c, ...]`` + halo -> ``[bc, window * c, ...]``, neighbours in offset order."""
    nb, bc = spec.n_before, spec.block_chunks
    extended = jnp.concatenate([halo[:nb], block, halo[nb:]], axis=0)
    pieces = [extended[o : o + bc] for o in range(spec.n_before + spec.n_after + 1)]
    return jnp.concatenate(pieces, axis=1)


def _unwindow(spec: WindowSpec, d_window: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Transpose of :func:`_windows`: cotangents of the block and of its halo."""
    nb, bc, c = spec.n_before, spec.block_chunks, spec.chunk_len
    size = spec.n_before + spec.n_after + 1
    extended = jnp.zeros((bc + size - 1, c, *d_window.shape[2:]), d_window.dtype)
    for o in range(size):
        extended = extended.at[o : o + bc].add(d_window[:, o * c : (o + 1) * c])
    block = extended[nb : nb + bc]
    halo = jnp.concatenate([extended[:nb], extended[nb + bc :]], axis=0)
    return block, halo


def _add_halos(spec: WindowSpec, x: jax.Array, d_block: jax.Array, d_halo: jax.Array):
    """Scatters block and halo cotangents back to ``x``'s ``[batch, heads, n, ...]`` layout."""
    b, h, n = x.shape[:3]
    c = spec.chunk_len
    n_chunks = n // c
    idx = _halo_index(spec, n_chunks)
    chunks = d_block.reshape(b * h, n_chunks, c, *x.shape[3:])
    if idx.shape[1]:
        halo = d_halo.reshape(b * h, idx.size, c, *x.shape[3:])
        chunks = chunks.at[:, idx.reshape(-1)].add(halo)
    return chunks.reshape(x.shape)


# ----------------------------------------------------------------------------------------------
# One block: scores, masks, softmax statistics.


def _block_inputs(spec: WindowSpec, q, k, v, aux):
    positions, key_valid, key_group, _ = aux
    n_chunks = q.shape[2] // spec.chunk_len
    n_blocks = n_chunks // spec.block_chunks
    xs = {
        "q": _blocks(spec, q),
        "k": _blocks(spec, k),
        "k_halo": _halos(spec, k),
        "v": _blocks(spec, v),
        "v_halo": _halos(spec, v),
        "pos": _blocks(spec, positions),
        "pos_halo": _halos(spec, positions),
        # Block index within its (batch, head) row: locates chunks for `wrap=False`.
        "block": jnp.tile(jnp.arange(n_blocks, dtype=jnp.int32), q.shape[0] * q.shape[1]),
        # Global block index: the dropout stream of the block.
        "step": jnp.arange(q.shape[0] * q.shape[1] * n_blocks, dtype=jnp.int32),
    }
    if key_valid is not None:
        xs["valid"] = _blocks(spec, key_valid)
        xs["valid_halo"] = _halos(spec, key_valid)
    if key_group is not None:
        xs["group"] = _blocks(spec, key_group)
        xs["group_halo"] = _halos(spec, key_group)
    return xs, n_chunks


def _block_scores(spec: WindowSpec, blk, n_chunks: int):
    """Masked scores ``[bc, c, window]`` of one block and the mask of replaced entries."""
    dtype = score_dtype(blk["q"].dtype)
    # Half-precision inputs are upcast first: XLA's CPU dot has no bf16 x bf16 -> f32 kernel.
    k_win = _windows(spec, blk["k"], blk["k_halo"]).astype(dtype)
    scores = jnp.einsum("ncd,nwd->ncw", blk["q"].astype(dtype), k_win)
    scores = scores * jnp.asarray(spec.scale, dtype)
    q_pos = blk["pos"][:, :, None]
    k_pos = _windows(spec, blk["pos"], blk["pos_halo"])[:, None, :]
    allowed = []
    if "valid" in blk:
        allowed.append(_windows(spec, blk["valid"], blk["valid_halo"])[:, None, :])
    if "group" in blk:
        k_group = _windows(spec, blk["group"], blk["group_halo"])[:, None, :]
        allowed.append(blk["group"][:, :, None] == k_group)
    if not spec.wrap and (spec.n_before or spec.n_after):
        bc, c = spec.block_chunks, spec.chunk_len
        chunk = blk["block"] * bc + np.arange(bc)[:, None]
        offsets = np.repeat(np.arange(-spec.n_before, spec.n_after + 1), c)[None, :]
        key_chunk = chunk + offsets
        allowed.append(((key_chunk >= 0) & (key_chunk < n_chunks))[:, None, :])
    return mask_scores(
        scores,
        q_pos=q_pos,
        k_pos=k_pos,
        causal=spec.causal,
        exclude_self=spec.exclude_self,
        allowed=tuple(allowed),
    )


def _keep_mask(spec: WindowSpec, key: jax.Array | None, step: jax.Array, shape):
    if key is None:
        return None
    return jax.random.bernoulli(jax.random.fold_in(key, step), 1.0 - spec.dropout_rate, shape)


def _forward(spec: WindowSpec, q, k, v, aux):
    if spec.implementation == "pallas":
        positions, key_valid, key_group, _ = aux
        return window_pallas.forward(spec, q, k, v, positions, key_valid, key_group)
    dropout_key = aux[3]
    xs, n_chunks = _block_inputs(spec, q, k, v, aux)

    def one_block(blk):
        scores, _ = _block_scores(spec, blk, n_chunks)
        # Normalise by the row maximum, not exp(scores - lse): at the self-mask score (-1e5)
        # float32 cannot hold lse's log(count) part, and probabilities derived from it would
        # not sum to one.
        row_max = jnp.max(scores, axis=-1, keepdims=True)
        unnormalised = jnp.exp(scores - row_max)
        row_sum = jnp.sum(unnormalised, axis=-1, keepdims=True)
        probs = unnormalised / row_sum
        keep = _keep_mask(spec, dropout_key, blk["step"], probs.shape)
        if keep is not None:
            probs = jnp.where(keep, probs / (1.0 - spec.dropout_rate), 0.0)
        v_win = _windows(spec, blk["v"], blk["v_halo"])
        out = jnp.einsum("ncw,nwd->ncd", probs.astype(v.dtype), v_win)
        return out, row_max[..., 0], row_sum[..., 0]

    out, row_max, row_sum = jax.lax.map(one_block, xs)
    b, h, n = q.shape[:3]
    return (
        out.reshape(b, h, n, v.shape[-1]),
        (row_max.reshape(b, h, n), row_sum.reshape(b, h, n)),
    )


def _backward(spec: WindowSpec, q, k, v, aux, stats, d_out, d_lse):
    if spec.implementation == "pallas":
        positions, key_valid, key_group, _ = aux
        return window_pallas.backward(
            spec,
            q,
            k,
            v,
            positions,
            key_valid,
            key_group,
            stats,
            d_out,
            d_lse,
        )
    dropout_key = aux[3]
    xs, n_chunks = _block_inputs(spec, q, k, v, aux)
    xs["row_max"] = _blocks(spec, stats[0])
    xs["row_sum"] = _blocks(spec, stats[1])
    xs["d_out"] = _blocks(spec, d_out)
    xs["d_lse"] = _blocks(spec, d_lse)

    def one_block(blk):
        scores, replaced = _block_scores(spec, blk, n_chunks)
        dtype = scores.dtype
        probs = jnp.exp(scores - blk["row_max"][..., None]) / blk["row_sum"][..., None]
        keep = _keep_mask(spec, dropout_key, blk["step"], probs.shape)
        dropped = probs
        if keep is not None:
            dropped = jnp.where(keep, probs / (1.0 - spec.dropout_rate), 0.0)
        d_out = blk["d_out"].astype(dtype)
        v_win = _windows(spec, blk["v"], blk["v_halo"]).astype(dtype)
        d_v_win = jnp.einsum("ncw,ncd->nwd", dropped, d_out)
        d_probs = jnp.einsum("ncd,nwd->ncw", d_out, v_win)
        if keep is not None:
            d_probs = jnp.where(keep, d_probs / (1.0 - spec.dropout_rate), 0.0)
        # Softmax backward; the lse output adds d_lse * probs (d lse / d score = prob).
        row_dot = jnp.sum(d_probs * probs, axis=-1, keepdims=True)
        d_scores = probs * (d_probs - row_dot + blk["d_lse"][..., None].astype(dtype))
        if replaced is not None:
            d_scores = jnp.where(replaced, 0.0, d_scores)
        d_scores = d_scores * jnp.asarray(spec.scale, dtype)
        k_win = _windows(spec, blk["k"], blk["k_halo"]).astype(dtype)
        d_q = jnp.einsum("ncw,nwd->ncd", d_scores, k_win)
        d_k_win = jnp.einsum("ncw,ncd->nwd", d_scores, blk["q"].astype(dtype))
        d_k, d_k_halo = _unwindow(spec, d_k_win)
        d_v, d_v_halo = _unwindow(spec, d_v_win)
        return d_q, d_k, d_k_halo, d_v, d_v_halo

    d_q, d_k, d_k_halo, d_v, d_v_halo = jax.lax.map(one_block, xs)
    dq = d_q.reshape(q.shape).astype(q.dtype)
    dk = _add_halos(spec, k, d_k, d_k_halo).astype(k.dtype)
    dv = _add_halos(spec, v, d_v, d_v_halo).astype(v.dtype)
    return dq, dk, dv
