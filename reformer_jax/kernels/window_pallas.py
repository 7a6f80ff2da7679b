"""The chunked look-around attention of :mod:`reformer_jax.kernels.window` as Pallas kernels.

The XLA kernel loops over blocks of chunks (``lax.map``). On a CPU each block stays in cache;
on a GPU or TPU every iteration is a few dozen small kernel launches. Here one program handles
one query chunk of one (batch, head) row. It reads the chunk's queries and its window's key and
value chunks, and computes the scores, masks, softmax and output in one kernel; the backward
works the same way. Nothing score-sized ever reaches memory.

The semantics are the XLA kernel's, mask for mask: the same outputs ``(out, lse)`` and the same
softmax statistics (row maximum and row sum, kept for the backward pass). They are tested
against it in Pallas's interpreter (``tests/kernels/test_window_pallas.py``).

The back end is chosen when the program is lowered for its platform:
- Triton on GPUs;
- Mosaic on TPUs, so a CPU host compiling ahead of time for a TPU topology gets the TPU kernel;
- the interpreter elsewhere (a CPU), which is slow and meant for tests.

Both compiled back ends are checked by the tests, without the hardware: an export for CUDA, and
a compile for a TPU v5e.

Two constraints shape the kernels. The neighbour chunks are separate score pieces, because
Triton joins arrays only along their last axis. ``chunk_len`` and ``d_head`` must be powers of
two of at least 16, for both back ends' tiles.

Not supported:
- dropout on the probabilities (it would need the XLA kernel's random bits);
- a mesh axis left to XLA's partitioner, such as heads on a model axis (custom calls cannot be
  partitioned).

:func:`reformer_jax.kernels.window.window_attention` refuses both, saying what to use instead.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from reformer_jax.kernels.masking import mask_scores, score_dtype

_TRANSPOSE_LHS = (((0,), (0,)), ((), ()))  # a^T b: contract both operands' rows
_NT = (((1,), (1,)), ((), ()))  # a b^T: contract both operands' columns
_NN = (((1,), (0,)), ((), ()))


def _dot(a, b, dims):
    return jax.lax.dot_general(a, b, dims, preferred_element_type=a.dtype)


def is_tile_size(size: int) -> bool:
    """Whether the kernels take ``size`` as a chunk length or head width: a power of two of at
    least 16 (Triton's dot and Mosaic's tiles)."""
    return size >= 16 and not size & (size - 1)


def check_supported(chunk_len: int, d_head: int, d_v: int, dropout_rate: float) -> None:
    """Raises ValueError naming what the Pallas kernels cannot do, and the way round it."""
    problems = []
    for name, size in (("chunk_len", chunk_len), ("d_head", d_head), ("d_v", d_v)):
        if not is_tile_size(size):
            problems.append(f"{name} {size} is not a power of two of at least 16")
    if dropout_rate > 0:
        problems.append(f"attention dropout {dropout_rate} is not supported")
    if problems:
        raise ValueError(
            "the Pallas window kernel: "
            + "; ".join(problems)
            + " (its tiles); use implementation 'xla' (config: window_implementation='xla')"
        )


def check_unpartitioned() -> None:
    """Raises ValueError where XLA would have to partition the kernels (it cannot: they are
    custom calls): inside a mesh (``jax.set_mesh``) with an automatic axis of several devices.
    The layers run the attention kernels per batch shard (:func:`reformer_jax.sharding.
    per_batch_shard`), which makes the batch axes manual, and the whole mesh when its other
    axes have one device and the kind says its kernel is not partitionable."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return
    types = dict(zip(mesh.axis_names, mesh.axis_types, strict=True))
    split = [
        f"{name!r} ({mesh.shape[name]} devices)"
        for name in mesh.axis_names
        if mesh.shape[name] > 1 and types[name] != jax.sharding.AxisType.Manual
    ]
    if split:
        raise ValueError(
            f"the Pallas window kernel cannot be partitioned by XLA, and mesh axis "
            f"{', '.join(split)} is left to it here (heads on a model axis, or a batch that "
            "does not divide over the data axes); use a mesh_shape whose model axis is 1, a "
            "batch divisible by the data-parallel size, or window_implementation='xla'"
        )


def _offsets(spec) -> range:
    return range(-spec.n_before, spec.n_after + 1)


# Layout. Every array is cut into chunks, ``[rows, n_chunks, chunk_len, ...]`` (rows = batch x
# heads), and a program's blocks are its query chunk and, one input per neighbour offset, the
# neighbour key and value chunks (index maps wrap or clip the chunk index). So each program
# reads only its window, which Mosaic (TPU) copies into VMEM block by block and Triton reads by
# pointer. Per-position values (positions, groups, softmax statistics) are rows ``[.., 1, c]``;
# a query chunk's become columns in registers (:func:`_column`), so that comparing them with the
# keys' rows broadcasts to the ``[c, c]`` scores.


def _pieces(spec, n_chunks, q, refs):
    """Masked scores ``[c, c]`` against each neighbour chunk, the mask of replaced entries, and
    the neighbour's offset."""
    c = spec.chunk_len
    j = pl.program_id(1)
    n_chunks = jnp.int32(n_chunks)  # a Python int would be int64 under jax_enable_x64
    dtype = q.dtype
    q_pos = _column(refs["q_pos"][...])  # [c, 1]
    pieces = []
    for offset in _offsets(spec):
        in_range = None
        if not spec.wrap:
            chunk = j + offset
            in_range = (chunk >= 0) & (chunk < n_chunks)
        k = refs[f"k{offset}"][...].astype(dtype)
        scores = _dot(q, k, _NT) * jnp.asarray(spec.scale, dtype)
        k_pos = refs[f"k_pos{offset}"][...]  # [1, c]
        allowed = []
        if f"k_valid{offset}" in refs:
            allowed.append(jnp.broadcast_to(refs[f"k_valid{offset}"][...] != 0, (c, c)))
        if f"k_group{offset}" in refs:
            allowed.append(_column(refs["q_group"][...]) == refs[f"k_group{offset}"][...])
        if in_range is not None and (spec.n_before or spec.n_after):
            allowed.append(jnp.broadcast_to(in_range, (c, c)))
        scores, replaced = mask_scores(
            scores,
            q_pos=q_pos,
            k_pos=k_pos,
            causal=spec.causal,
            exclude_self=spec.exclude_self,
            allowed=tuple(allowed),
        )
        pieces.append((scores, replaced, offset))
    return pieces


def _diagonal(c):
    rows = jax.lax.broadcasted_iota(jnp.int32, (c, c), 0)
    return rows == jax.lax.broadcasted_iota(jnp.int32, (c, c), 1)


def _column(row):
    """``[1, c]`` -> ``[c, 1]``: a row kept in memory as a row (a column would be padded to 128
    lanes in a TPU's memory, 128 times its size), turned in registers by a masked reduction,
    which every back end lowers (Triton neither slices nor transposes vectors)."""
    c = row.shape[-1]
    spread = jnp.broadcast_to(row, (c, c))
    return jnp.sum(jnp.where(_diagonal(c), spread, jnp.zeros_like(spread)), axis=1, keepdims=True)


def _row(column):
    """``[c, 1]`` -> ``[1, c]``, the inverse of :func:`_column`."""
    c = column.shape[0]
    spread = jnp.broadcast_to(column, (c, c))
    return jnp.sum(jnp.where(_diagonal(c), spread, jnp.zeros_like(spread)), axis=0, keepdims=True)


def _named(names, refs):
    return dict(zip(names, refs, strict=True))


def _forward_kernel(spec, n_chunks, in_names, *refs):
    refs = _named((*in_names, "out", "row_max", "row_sum"), refs)
    dtype = score_dtype(refs["q"].dtype)
    q = refs["q"][...].astype(dtype)
    pieces = _pieces(spec, n_chunks, q, refs)
    # Normalised by the row maximum, as the XLA kernel does (see its comment on lse).
    row_max = functools.reduce(
        jnp.maximum, [jnp.max(s, axis=1, keepdims=True) for s, _, _ in pieces]
    )
    out = jnp.zeros(refs["out"].shape, dtype)
    row_sum = jnp.zeros(row_max.shape, dtype)
    for scores, _, offset in pieces:
        unnormalised = jnp.exp(scores - row_max)
        row_sum = row_sum + jnp.sum(unnormalised, axis=1, keepdims=True)
        out = out + _dot(unnormalised, refs[f"v{offset}"][...].astype(dtype), _NN)
    refs["out"][...] = (out / row_sum).astype(refs["out"].dtype)
    refs["row_max"][...] = _row(row_max)
    refs["row_sum"][...] = _row(row_sum)


def _backward_kernel(spec, n_chunks, in_names, *refs):
    width = len(_offsets(spec))
    dk_names = tuple(f"dk{i}" for i in range(width))
    dv_names = tuple(f"dv{i}" for i in range(width))
    refs = _named((*in_names, "dq", *dk_names, *dv_names), refs)
    dtype = score_dtype(refs["q"].dtype)
    q = refs["q"][...].astype(dtype)
    pieces = _pieces(spec, n_chunks, q, refs)
    row_max, row_sum = _column(refs["row_max"][...]), _column(refs["row_sum"][...])  # [c, 1]
    d_out = refs["d_out"][...].astype(dtype)
    probs, d_probs = [], []
    row_dot = jnp.zeros(row_max.shape, dtype)
    for scores, _, offset in pieces:
        p = jnp.exp(scores - row_max) / row_sum
        dp = _dot(d_out, refs[f"v{offset}"][...].astype(dtype), _NT)
        row_dot = row_dot + jnp.sum(dp * p, axis=1, keepdims=True)
        probs.append(p)
        d_probs.append(dp)
    d_lse = _column(refs["d_lse"][...]).astype(dtype)
    d_q = jnp.zeros(refs["dq"].shape, dtype)
    for i, (_, replaced, offset) in enumerate(pieces):
        # Softmax backward; the lse output adds d_lse * probs (d lse / d score = prob).
        d_scores = probs[i] * (d_probs[i] - row_dot + d_lse)
        if replaced is not None:
            d_scores = jnp.where(replaced, 0.0, d_scores)
        d_scores = d_scores * jnp.asarray(spec.scale, dtype)
        d_q = d_q + _dot(d_scores, refs[f"k{offset}"][...].astype(dtype), _NN)
        # Key chunk j + offset's share from this query chunk; summed per key chunk outside.
        dk, dv = refs[dk_names[i]], refs[dv_names[i]]
        dk[...] = _dot(d_scores, q, _TRANSPOSE_LHS).astype(dk.dtype)
        dv[...] = _dot(probs[i], d_out, _TRANSPOSE_LHS).astype(dv.dtype)
    refs["dq"][...] = d_q.astype(refs["dq"].dtype)


def _chunked(spec, x, *, row: bool = False):
    """``[b, h, n, ...]`` -> ``[b * h, n_chunks, c, ...]``; per-position arrays ``[b, h, n]``
    (``row``) as rows ``[b * h, n_chunks, 1, c]``."""
    b, h, n = x.shape[:3]
    c = spec.chunk_len
    if row:
        return x.reshape(b * h, n // c, 1, c)
    return x.reshape(b * h, n // c, c, *x.shape[3:])


def _inputs(spec, q, k, v, positions, key_valid, key_group):
    """The kernels' inputs by name, with their block specs: the program's query chunk, and each
    neighbour's key chunk."""
    c = spec.chunk_len
    n_chunks = q.shape[2] // c

    def this_chunk(shape):
        return pl.BlockSpec((None, None, *shape), lambda i, j: (i, j, 0, 0))

    def neighbour(shape, offset):
        def index(i, j):
            count = jnp.asarray(n_chunks, j.dtype)  # not int64 under jax_enable_x64
            chunk = j + jnp.asarray(offset, j.dtype)
            if spec.wrap:
                chunk = jax.lax.rem(chunk + count, count)
            else:  # masked in the kernel; any chunk will do
                chunk = jnp.clip(chunk, jnp.zeros_like(count), count - 1)
            return i, chunk, 0, 0

        return pl.BlockSpec((None, None, *shape), index)

    inputs = {
        "q": (_chunked(spec, q), this_chunk((c, q.shape[-1]))),
        "q_pos": (_chunked(spec, positions, row=True), this_chunk((1, c))),
    }
    rows = {
        "k": _chunked(spec, k),
        "v": _chunked(spec, v),
        "k_pos": _chunked(spec, positions, row=True),
    }
    if key_valid is not None:
        # Loaded as int32: neither Triton nor Mosaic loads booleans from memory.
        rows["k_valid"] = _chunked(spec, key_valid.astype(jnp.int32), row=True)
    if key_group is not None:
        group = key_group.astype(jnp.int32)
        inputs["q_group"] = (_chunked(spec, group, row=True), this_chunk((1, c)))
        rows["k_group"] = _chunked(spec, group, row=True)
    for offset in _offsets(spec):
        for name, array in rows.items():
            inputs[f"{name}{offset}"] = (array, neighbour(array.shape[2:], offset))
    return inputs, this_chunk, n_chunks


def _call(kernel, inputs, out_shape, out_specs, grid):
    """Runs the ``pallas_call`` on ``inputs`` (name -> (array, block spec)): Triton's on GPUs,
    Mosaic's on TPUs, the interpreter elsewhere (CPU), chosen when the program is lowered for
    its platform (so a CPU host compiling ahead of time for a TPU topology gets Mosaic's
    kernel)."""
    in_specs = [block for _, block in inputs.values()]

    def call(compiler_params=None, interpret=False):
        return pl.pallas_call(
            kernel,
            out_shape=out_shape,
            grid=grid,
            in_specs=in_specs,
            out_specs=out_specs,
            interpret=interpret,
            compiler_params=compiler_params,
            name="window_attention",
        )

    from jax.experimental.pallas import tpu as pl_tpu
    from jax.experimental.pallas import triton as pl_triton

    gpu = call(pl_triton.CompilerParams(num_warps=4, num_stages=1))
    tpu = call(pl_tpu.CompilerParams(dimension_semantics=("parallel", "parallel")))
    return jax.lax.platform_dependent(
        *[array for array, _ in inputs.values()],
        cuda=gpu,
        rocm=gpu,
        tpu=tpu,
        default=call(interpret=True),
    )


def forward(spec, q, k, v, positions, key_valid, key_group):
    """``(out [b, h, n, d_v], (row_max, row_sum) [b, h, n])`` as the XLA kernel's ``_forward``."""
    b, h, n, _ = q.shape
    d_v = v.shape[-1]
    c = spec.chunk_len
    inputs, this_chunk, n_chunks = _inputs(spec, q, k, v, positions, key_valid, key_group)
    stats_dtype = score_dtype(q.dtype)
    stats = jax.ShapeDtypeStruct((b * h, n_chunks, 1, c), stats_dtype)
    out_shape = (jax.ShapeDtypeStruct((b * h, n_chunks, c, d_v), v.dtype), stats, stats)
    out_specs = (this_chunk((c, d_v)), this_chunk((1, c)), this_chunk((1, c)))
    kernel = functools.partial(_forward_kernel, spec, n_chunks, tuple(inputs))
    out, row_max, row_sum = _call(kernel, inputs, out_shape, out_specs, (b * h, n_chunks))
    return out.reshape(b, h, n, d_v), (row_max.reshape(b, h, n), row_sum.reshape(b, h, n))


def backward(spec, q, k, v, positions, key_valid, key_group, stats, d_out, d_lse):
    """``(dq, dk, dv)`` as the XLA kernel's ``_backward``."""
    b, h, n, d = q.shape
    d_v = v.shape[-1]
    c = spec.chunk_len
    inputs, this_chunk, n_chunks = _inputs(spec, q, k, v, positions, key_valid, key_group)
    inputs["row_max"] = (_chunked(spec, stats[0], row=True), this_chunk((1, c)))
    inputs["row_sum"] = (_chunked(spec, stats[1], row=True), this_chunk((1, c)))
    inputs["d_out"] = (_chunked(spec, d_out), this_chunk((c, d_v)))
    inputs["d_lse"] = (_chunked(spec, d_lse, row=True), this_chunk((1, c)))
    width = len(_offsets(spec))
    dtype = score_dtype(q.dtype)
    keys = jax.ShapeDtypeStruct((b * h, n_chunks, c, d), dtype)
    values = jax.ShapeDtypeStruct((b * h, n_chunks, c, d_v), dtype)
    out_shape = (keys, *[keys] * width, *[values] * width)
    out_specs = (
        this_chunk((c, d)),
        *[this_chunk((c, d))] * width,
        *[this_chunk((c, d_v))] * width,
    )
    kernel = functools.partial(_backward_kernel, spec, n_chunks, tuple(inputs))
    d_q, *pieces = _call(kernel, inputs, out_shape, out_specs, (b * h, n_chunks))

    def per_key_chunk(parts):
        # Piece ``i`` of query chunk j belongs to key chunk j + offset_i: shift it there. Pieces
        # of chunks outside a non-wrapping sequence are all zeros (their scores were masked).
        total = None
        for offset, part in zip(_offsets(spec), parts, strict=True):
            part = jnp.roll(part, offset, axis=1)
            total = part if total is None else total + part
        return total

    d_k = per_key_chunk(pieces[:width]).reshape(b, h, n, d)
    d_v = per_key_chunk(pieces[width:]).reshape(b, h, n, d_v)
    return (
        d_q.reshape(q.shape).astype(q.dtype),
        d_k.astype(k.dtype),
        d_v.astype(v.dtype),
    )
