"""Segment recurrence: the per-layer memories of Transformer-XL and the Compressive Transformer.

The memory is a dict of batch-first arrays (so the trainer can shard it, split it into
micro-batches, donate and checkpoint it like any task carry)::

    "mem":        [B, n_layers, mem_len, d_model]   the last mem_len inputs of each layer's
                                                    attention branch, oldest first
    "mem_valid":  [B, mem_len] bool                 True where the slot holds a real state
    "cmem":       [B, n_layers, cmem_len, d_model]  compressed evicted states (cmem_len > 0 only)
    "cmem_valid": [B, cmem_len] bool

One segment of ``L`` tokens through layer ``l``: the segment attends over keys of
``[cmem_l; mem_l; segment]``; then ``[mem_l; x_l]`` (``x_l`` the layer's attention-branch input,
gradient stopped) keeps its last ``mem_len`` states and evicts the first ``L``, which are
compressed by ``cmem_rate`` and appended to ``cmem_l`` (keeping its last ``cmem_len``). Slot
validity is the same for every layer (it depends on how many segments a row has seen since its
last reset), so it is stored once.

The compressor is trained only by the attention-reconstruction loss
(:func:`reconstruction_loss`), which stops gradients into everything else; the language-model
loss never reaches it either, because the compressed memory is a stop-gradient state used from
the next segment on.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from reformer_jax.config import ReformerConfig
from reformer_jax.kernels.compressive import attention_reconstruction_loss, compress

Memory = dict[str, jax.Array]


def init_memory(
    cfg: ReformerConfig,
    batch_size: int,
    mem_len: int | None = None,
    cmem_len: int | None = None,
) -> Memory:
    """An empty memory (every slot invalid) for ``batch_size`` rows.

    ``mem_len`` / ``cmem_len`` default to the config's; evaluation may pass longer ones (the
    model reads the lengths from the arrays).
    """
    mem_len = cfg.mem_len if mem_len is None else mem_len
    cmem_len = cfg.cmem_len if cmem_len is None else cmem_len
    if mem_len < 1:
        raise ValueError(f"init_memory: mem_len must be >= 1, got {mem_len}")
    shape = (batch_size, cfg.n_layers)
    out = {
        "mem": jnp.zeros((*shape, mem_len, cfg.d_model), cfg.compute_dtype),
        "mem_valid": jnp.zeros((batch_size, mem_len), bool),
    }
    if cmem_len:
        out["cmem"] = jnp.zeros((*shape, cmem_len, cfg.d_model), cfg.compute_dtype)
        out["cmem_valid"] = jnp.zeros((batch_size, cmem_len), bool)
    return out


def reset_memory(memory: Memory, reset_B: jax.Array) -> Memory:
    """Empties the memory of the rows where ``reset_B`` is True (their stream starts afresh)."""
    keep = ~reset_B.astype(bool)
    out = {}
    for name, value in memory.items():
        row = keep.reshape((-1,) + (1,) * (value.ndim - 1))
        out[name] = value & row if value.dtype == jnp.bool_ else jnp.where(row, value, 0)
    return out


def shift(old_BMX: jax.Array, new_BLX: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``[old; new]`` split into (its last ``M`` entries, the first ``L`` it evicts)."""
    both = jnp.concatenate([old_BMX, new_BLX.astype(old_BMX.dtype)], axis=1)
    length = new_BLX.shape[1]
    return both[:, length:], both[:, :length]


def validity(memory: Memory, seg_valid_BL: jax.Array, rate: int) -> dict[str, jax.Array]:
    """The slot masks of one segment step (shared by every layer).

    ``context``: ``[B, C + M]`` mask of the keys before the segment (``[cmem; mem]``);
    ``mem_valid`` / ``cmem_valid``: the next memory's; ``evicted_rows``: ``[B]`` float, 1 where
    every evicted state was real (the rows the reconstruction loss scores).
    """
    mem_valid, evicted = shift(memory["mem_valid"], seg_valid_BL)
    out = {"context": memory["mem_valid"], "mem_valid": mem_valid}
    out["evicted_rows"] = jnp.all(evicted, axis=1).astype(jnp.float32)
    if "cmem" in memory:
        batch, n = evicted.shape
        groups = jnp.all(evicted.reshape(batch, n // rate, rate), axis=2)
        out["cmem_valid"], _ = shift(memory["cmem_valid"], groups)
        out["context"] = jnp.concatenate([memory["cmem_valid"], memory["mem_valid"]], axis=1)
    return out


def check_segment(cfg: ReformerConfig, memory: Memory, length: int) -> None:
    """Raises if a segment of ``length`` cannot be compressed evenly."""
    if "cmem" in memory and length % cfg.cmem_rate:
        raise ValueError(
            f"model.cmem_rate: a segment of {length} tokens evicts {length} states, not a "
            f"multiple of the compression rate {cfg.cmem_rate}; use a segment length (seq_len) "
            "divisible by it"
        )


def layer_context(layer_memory: Memory) -> jax.Array:
    """The states a layer attends to before its segment: ``[cmem; mem]`` ``[B, C + M, D]``."""
    if "cmem" in layer_memory:
        return jnp.concatenate([layer_memory["cmem"], layer_memory["mem"]], axis=1)
    return layer_memory["mem"]


def next_layer_memory(
    cfg: ReformerConfig, layer_memory: Memory, x_BLD: jax.Array, compressor: dict[str, Any]
) -> tuple[Memory, jax.Array | None]:
    """One layer's next memory after a segment whose attention-branch input is ``x_BLD``.

    Returns the new ``{"mem", ["cmem"]}`` and the evicted states compressed (None without a
    compressed memory). Gradients are stopped into the stored states; the compressed ones keep
    their gradient into ``compressor`` (``compress_kernel`` / ``compress_bias``), for the
    reconstruction loss.
    """
    mem, evicted = shift(layer_memory["mem"], jax.lax.stop_gradient(x_BLD))
    out = {"mem": mem}
    if "cmem" not in layer_memory:
        return out, None
    compressed = compress(
        evicted,
        cfg.cmem_rate,
        cfg.cmem_method,
        compressor.get("compress_kernel"),
        compressor.get("compress_bias"),
    ).astype(mem.dtype)
    out["cmem"], _ = shift(layer_memory["cmem"], jax.lax.stop_gradient(compressed))
    return out, compressed


def reconstruction_loss(
    frozen_attention: Any,
    x_BLD: jax.Array,
    evicted_BND: jax.Array,
    compressed_BCD: jax.Array,
    row_weight_B: jax.Array,
) -> jax.Array:
    """The attention-reconstruction loss of one layer (Rae et al. 2020), rows weighted.

    ``frozen_attention`` is the layer's attention module with every parameter behind
    ``stop_gradient``: the segment's queries, the evicted states' keys / values and the
    compressed states' keys / values all go through the layer's LayerNorm and projections, but
    the only gradient path left is ``compressed_BCD`` (into the compressor). Returns the mean
    over scored rows of the per-row mean squared difference between attention over the evicted
    states and over their compression.
    """
    stop = jax.lax.stop_gradient

    def heads(h, proj):
        return frozen_attention._heads(proj(frozen_attention.norm(h)))

    q = stop(heads(stop(x_BLD), frozen_attention.q))
    old = stop(evicted_BND)
    k_old, v_old = stop(heads(old, frozen_attention.k)), stop(heads(old, frozen_attention.v))
    k_c, v_c = heads(compressed_BCD, frozen_attention.k), heads(compressed_BCD, frozen_attention.v)

    def per_row(*arrays):
        return attention_reconstruction_loss(*(a[None] for a in arrays))

    losses = jax.vmap(per_row)(q, k_old, v_old, k_c, v_c)
    return jnp.sum(losses * row_weight_B) / jnp.maximum(jnp.sum(row_weight_B), 1.0)


def by_pattern(memory: Memory, n_groups: int, n_pattern: int) -> tuple[Memory, ...]:
    """Per pattern position ``p``: the layer arrays of layers ``g * n_pattern + p`` stacked on a
    leading group axis (``[n_groups, B, ...]``), the layout the stack scans."""
    out = []
    for p in range(n_pattern):
        layers = {}
        for name in ("mem", "cmem"):
            if name in memory:
                per_layer = jnp.moveaxis(memory[name], 1, 0)  # [n_layers, B, ...]
                grouped = per_layer.reshape(n_groups, n_pattern, *per_layer.shape[1:])
                layers[name] = grouped[:, p]
        out.append(layers)
    return tuple(out)


def from_pattern(per_pattern: tuple[Memory, ...]) -> Memory:
    """Inverse of :func:`by_pattern` for the layer arrays (``[B, n_layers, ...]``)."""
    out = {}
    for name in per_pattern[0]:
        grouped = jnp.stack([m[name] for m in per_pattern], axis=1)  # [G, P, B, ...]
        per_layer = grouped.reshape(-1, *grouped.shape[2:])
        out[name] = jnp.moveaxis(per_layer, 0, 1)
    return out


def memory_stack(attn_fns, ff_fns, params: Any, x: jax.Array, ctx: Any, memories: tuple):
    """The pre-LN residual stack with memories: one scan over the layer groups.

    ``attn_fns[p](params, x, ctx, layer, layer_memory) -> (out, new_layer_memory, recon)``;
    ``ff_fns`` as in :func:`reformer_jax.layers.residual.standard_stack`; ``memories`` from
    :func:`by_pattern`. Returns ``(y, new memories (by pattern), reconstruction loss per
    pattern position [n_groups])``.
    """
    n_pattern = len(attn_fns)
    n_groups = jax.tree.leaves(params)[0].shape[0]

    def body(x, xs):
        group_params, group_memory, g = xs
        outs = []
        for p in range(n_pattern):
            layer = g * n_pattern + p
            attn_params, ff_params = group_params[p]
            a, new_memory, recon = attn_fns[p](attn_params, x, ctx, layer, group_memory[p])
            x = x + a
            x = x + ff_fns[p](ff_params, x, ctx, layer)
            outs.append((new_memory, recon))
        return x, tuple(outs)

    y, outs = jax.lax.scan(body, x, (params, memories, jnp.arange(n_groups)))
    return y, tuple(o[0] for o in outs), tuple(o[1] for o in outs)
