"""The chunked look-around attention of :mod:`reformer_jax.kernels.window` as Pallas kernels.

The XLA kernel loops over blocks of chunks (``lax.map``): on a CPU each block stays in cache,
but on a GPU every iteration is a few dozen small kernel launches. Here one program handles one
query chunk of one (batch, head) row: it reads the chunk's queries and its window's key and value
chunks, and computes the scores, masks, softmax and output in one kernel (the backward likewise),
so nothing score-sized ever reaches memory.

The semantics are the XLA kernel's, mask for mask: the same outputs ``(out, lse)`` and the same
softmax statistics (row maximum and row sum, kept for the backward pass), tested against it in
Pallas's interpreter (``tests/kernels/test_window_pallas.py``). The kernels are written for
Pallas's Triton back end (GPU): the neighbour chunks are separate score pieces (Triton joins
arrays only along their last axis), and ``chunk_len`` and ``d_head`` must be powers of two of
at least 16 (Triton's dot). Dropout on the probabilities is not supported (it would need the XLA
kernel's random bits): :func:`reformer_jax.kernels.window.window_attention` refuses the
combination. On a CPU the kernels run in the interpreter, which is slow and meant for tests.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from reformer_jax.kernels.masking import mask_values, score_dtype

_TRANSPOSE_LHS = (((0,), (0,)), ((), ()))  # a^T b: contract both operands' rows
_NT = (((1,), (1,)), ((), ()))  # a b^T: contract both operands' columns
_NN = (((1,), (0,)), ((), ()))


def _dot(a, b, dims):
    return jax.lax.dot_general(a, b, dims, preferred_element_type=a.dtype)


def check_supported(chunk_len: int, d_head: int, d_v: int, dropout_rate: float) -> None:
    """Raises ValueError naming what the Pallas kernels cannot do, and the way round it."""
    problems = []
    for name, size in (("chunk_len", chunk_len), ("d_head", d_head), ("d_v", d_v)):
        if size < 16 or size & (size - 1):
            problems.append(f"{name} {size} is not a power of two of at least 16")
    if dropout_rate > 0:
        problems.append(f"attention dropout {dropout_rate} is not supported")
    if problems:
        raise ValueError(
            "the Pallas window kernel: "
            + "; ".join(problems)
            + " (Triton's tiles); use implementation 'xla' (config: window_implementation='xla')"
        )


def _offsets(spec) -> range:
    return range(-spec.n_before, spec.n_after + 1)


def _pieces(spec, n_chunks, q, q_pos, k_ref, kpos_ref, valid_ref, group_ref):
    """Masked scores ``[c, c]`` against each neighbour chunk, the mask of replaced entries, and
    the chunk index each piece read."""
    c = spec.chunk_len
    j = pl.program_id(1)
    n_chunks = jnp.int32(n_chunks)  # a Python int would be int64 under jax_enable_x64
    dtype = q.dtype
    mask_value, self_value = mask_values(dtype)
    q_group = None
    pieces = []
    for offset in _offsets(spec):
        chunk = j + offset
        in_range = None
        if spec.wrap:
            chunk = jax.lax.rem(chunk + n_chunks, n_chunks)
        else:
            in_range = (chunk >= 0) & (chunk < n_chunks)
            chunk = jnp.clip(chunk, jnp.int32(0), n_chunks - 1)
        rows = pl.ds(chunk * c, c)
        k = k_ref[rows, :].astype(dtype)
        scores = _dot(q, k, _NT) * jnp.asarray(spec.scale, dtype)
        k_pos = kpos_ref[rows]
        conditions = []
        if spec.causal:
            conditions.append(k_pos[None, :] <= q_pos[:, None])
        if valid_ref is not None:
            conditions.append(jnp.broadcast_to(valid_ref[rows][None, :] != 0, (c, c)))
        if group_ref is not None:
            if q_group is None:
                q_group = group_ref[pl.ds(j * c, c)]
            conditions.append(q_group[:, None] == group_ref[rows][None, :])
        if in_range is not None and (spec.n_before or spec.n_after):
            conditions.append(jnp.broadcast_to(in_range, (c, c)))
        allowed = functools.reduce(jnp.logical_and, conditions) if conditions else None
        replaced = None
        if allowed is not None:
            scores = jnp.where(allowed, scores, mask_value)
            replaced = ~allowed
        if spec.exclude_self:
            is_self = q_pos[:, None] == k_pos[None, :]
            scores = jnp.where(is_self, self_value, scores)
            replaced = is_self if replaced is None else replaced | is_self
        pieces.append((scores, replaced, rows))
    return pieces


def _forward_kernel(spec, n_chunks, has_valid, has_group, *refs):
    q_ref, qpos_ref, k_ref, v_ref, kpos_ref, *rest = refs
    valid_ref = rest.pop(0) if has_valid else None
    group_ref = rest.pop(0) if has_group else None
    out_ref, max_ref, sum_ref = rest
    dtype = score_dtype(q_ref.dtype)
    q = q_ref[...].astype(dtype)
    pieces = _pieces(spec, n_chunks, q, qpos_ref[...], k_ref, kpos_ref, valid_ref, group_ref)
    # Normalised by the row maximum, as the XLA kernel does (see its comment on lse).
    row_max = functools.reduce(jnp.maximum, [jnp.max(s, axis=1) for s, _, _ in pieces])
    out = jnp.zeros(out_ref.shape, dtype)
    row_sum = jnp.zeros(row_max.shape, dtype)
    for scores, _, rows in pieces:
        unnormalised = jnp.exp(scores - row_max[:, None])
        row_sum = row_sum + jnp.sum(unnormalised, axis=1)
        out = out + _dot(unnormalised, v_ref[rows, :].astype(dtype), _NN)
    out_ref[...] = (out / row_sum[:, None]).astype(out_ref.dtype)
    max_ref[...] = row_max
    sum_ref[...] = row_sum


def _backward_kernel(spec, n_chunks, has_valid, has_group, *refs):
    q_ref, qpos_ref, k_ref, v_ref, kpos_ref, *rest = refs
    valid_ref = rest.pop(0) if has_valid else None
    group_ref = rest.pop(0) if has_group else None
    max_ref, sum_ref, dout_ref, dlse_ref, dq_ref, *piece_refs = rest
    dk_refs, dv_refs = piece_refs[: len(piece_refs) // 2], piece_refs[len(piece_refs) // 2 :]
    dtype = score_dtype(q_ref.dtype)
    q = q_ref[...].astype(dtype)
    pieces = _pieces(spec, n_chunks, q, qpos_ref[...], k_ref, kpos_ref, valid_ref, group_ref)
    row_max, row_sum = max_ref[...][:, None], sum_ref[...][:, None]
    d_out = dout_ref[...].astype(dtype)
    probs, d_probs = [], []
    row_dot = jnp.zeros(row_max.shape, dtype)
    for scores, _, rows in pieces:
        p = jnp.exp(scores - row_max) / row_sum
        dp = _dot(d_out, v_ref[rows, :].astype(dtype), _NT)
        row_dot = row_dot + jnp.sum(dp * p, axis=1, keepdims=True)
        probs.append(p)
        d_probs.append(dp)
    d_lse = dlse_ref[...].astype(dtype)[:, None]
    d_q = jnp.zeros(dq_ref.shape, dtype)
    for i, (_, replaced, rows) in enumerate(pieces):
        # Softmax backward; the lse output adds d_lse * probs (d lse / d score = prob).
        d_scores = probs[i] * (d_probs[i] - row_dot + d_lse)
        if replaced is not None:
            d_scores = jnp.where(replaced, 0.0, d_scores)
        d_scores = d_scores * jnp.asarray(spec.scale, dtype)
        d_q = d_q + _dot(d_scores, k_ref[rows, :].astype(dtype), _NN)
        # Key chunk j + offset's share from this query chunk; summed per key chunk outside.
        dk_refs[i][...] = _dot(d_scores, q, _TRANSPOSE_LHS).astype(dk_refs[i].dtype)
        dv_refs[i][...] = _dot(probs[i], d_out, _TRANSPOSE_LHS).astype(dv_refs[i].dtype)
    dq_ref[...] = d_q.astype(dq_ref.dtype)


def _specs(spec, n, d, d_v, has_valid, has_group):
    c = spec.chunk_len
    chunk_rows = pl.BlockSpec((None, c, d), lambda i, j: (i, j, 0))
    chunk_vector = pl.BlockSpec((None, c), lambda i, j: (i, j))
    specs = [
        chunk_rows,  # q
        chunk_vector,  # query positions
        pl.BlockSpec((None, n, d), lambda i, j: (i, 0, 0)),  # k: the whole row, sliced inside
        pl.BlockSpec((None, n, d_v), lambda i, j: (i, 0, 0)),  # v
        pl.BlockSpec((None, n), lambda i, j: (i, 0)),  # key positions
    ]
    specs += [pl.BlockSpec((None, n), lambda i, j: (i, 0))] * (int(has_valid) + int(has_group))
    return specs, chunk_rows, chunk_vector


def _call(kernel, spec, out_shape, in_specs, out_specs, grid, interpret):
    from jax.experimental.pallas import triton as pl_triton

    return pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=grid,
        in_specs=in_specs,
        out_specs=out_specs,
        interpret=interpret,
        compiler_params=pl_triton.CompilerParams(num_warps=4, num_stages=1),
        name="window_attention",
    )


def _flat(x):
    return None if x is None else x.reshape(-1, *x.shape[2:])


def forward(spec, q, k, v, positions, key_valid, key_group, *, interpret: bool):
    """``(out [b, h, n, d_v], (row_max, row_sum) [b, h, n])`` as the XLA kernel's ``_forward``."""
    b, h, n, d = q.shape
    d_v = v.shape[-1]
    n_chunks = n // spec.chunk_len
    has_valid, has_group = key_valid is not None, key_group is not None
    extras = [x for x in (_valid_ints(key_valid), _flat(key_group)) if x is not None]
    in_specs, chunk_rows, chunk_vector = _specs(spec, n, d, d_v, has_valid, has_group)
    stats_dtype = score_dtype(q.dtype)
    out_shape = (
        jax.ShapeDtypeStruct((b * h, n, d_v), v.dtype),
        jax.ShapeDtypeStruct((b * h, n), stats_dtype),
        jax.ShapeDtypeStruct((b * h, n), stats_dtype),
    )
    out_specs = (
        pl.BlockSpec((None, spec.chunk_len, d_v), lambda i, j: (i, j, 0)),
        chunk_vector,
        chunk_vector,
    )
    kernel = functools.partial(_forward_kernel, spec, n_chunks, has_valid, has_group)
    out, row_max, row_sum = _call(
        kernel, spec, out_shape, in_specs, out_specs, (b * h, n_chunks), interpret
    )(_flat(q), _flat(positions), _flat(k), _flat(v), _flat(positions), *extras)
    return out.reshape(b, h, n, d_v), (row_max.reshape(b, h, n), row_sum.reshape(b, h, n))


def backward(spec, q, k, v, positions, key_valid, key_group, stats, d_out, d_lse, *, interpret):
    """``(dq, dk, dv)`` as the XLA kernel's ``_backward``."""
    b, h, n, d = q.shape
    d_v = v.shape[-1]
    c = spec.chunk_len
    n_chunks = n // c
    has_valid, has_group = key_valid is not None, key_group is not None
    extras = [x for x in (_valid_ints(key_valid), _flat(key_group)) if x is not None]
    in_specs, chunk_rows, chunk_vector = _specs(spec, n, d, d_v, has_valid, has_group)
    chunk_values = pl.BlockSpec((None, c, d_v), lambda i, j: (i, j, 0))
    in_specs += [chunk_vector, chunk_vector, chunk_values, chunk_vector]
    width = spec.n_before + spec.n_after + 1
    dtype = score_dtype(q.dtype)
    out_shape = (
        jax.ShapeDtypeStruct((b * h, n, d), dtype),
        *[jax.ShapeDtypeStruct((b * h, n, d), dtype)] * width,
        *[jax.ShapeDtypeStruct((b * h, n, d_v), dtype)] * width,
    )
    out_specs = (chunk_rows, *[chunk_rows] * width, *[chunk_values] * width)
    kernel = functools.partial(_backward_kernel, spec, n_chunks, has_valid, has_group)
    d_q, *pieces = _call(
        kernel, spec, out_shape, in_specs, out_specs, (b * h, n_chunks), interpret
    )(
        _flat(q),
        _flat(positions),
        _flat(k),
        _flat(v),
        _flat(positions),
        *extras,
        _flat(stats[0]),
        _flat(stats[1]),
        _flat(d_out),
        _flat(d_lse),
    )

    def gather_pieces(parts, width_out):
        # Piece ``i`` of query chunk j belongs to key chunk j + offset_i: shift it there. Pieces
        # of chunks outside a non-wrapping sequence are all zeros (their scores were masked).
        total = None
        for offset, part in zip(_offsets(spec), parts, strict=True):
            part = jnp.roll(part.reshape(b * h, n_chunks, c, width_out), offset, axis=1)
            total = part if total is None else total + part
        return total.reshape(b, h, n, width_out)

    d_k = gather_pieces(pieces[:width], d)
    d_v = gather_pieces(pieces[width:], d_v)
    return (
        d_q.reshape(q.shape).astype(q.dtype),
        d_k.astype(k.dtype),
        d_v.astype(v.dtype),
    )


def _valid_ints(key_valid):
    # Triton loads no booleans from memory: the mask travels as int32.
    return None if key_valid is None else _flat(key_valid.astype(jnp.int32))
