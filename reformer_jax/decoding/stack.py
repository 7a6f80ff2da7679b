"""The prompt and one new token per row through the reversible stack, layer caches in hand.

Prefill runs the prompt (the whole prompt at once) through the stack as the model does (one scan
over the layer groups) and asks each layer's attention kind for its output and its cache
(``kind.prefill``); a decode step feeds one token per row (``y1 = x1 + F(x2)``,
``y2 = x2 + G(y1)`` for the new position only) and asks the kind to attend to its cache
(``kind.step``).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from reformer_jax import sharding as shd
from reformer_jax.decoding.cache import Cache
from reformer_jax.decoding.spec import DecodeSpec


def head(model, y1: jax.Array, y2: jax.Array) -> jax.Array:
    """The LM head on the two streams ``[..., d_model]``: logits ``[..., vocab]``."""
    cfg = model.cfg
    h = model.final_norm(jnp.concatenate([y1, y2], axis=-1))
    return model.head(h).astype(jnp.promote_types(cfg.compute_dtype, jnp.float32))


def layer_draws(model, spec: DecodeSpec, hash_rng: jax.Array) -> tuple[Any, ...]:
    """Every layer's random draw for the run (None where its kind draws nothing): what
    ``model(tokens)`` draws for ``max_length`` tokens with this ``hash_rng``."""
    drawn = model.layer_draws(spec.max_length, hash_rng)
    return tuple(drawn.get(i) for i in range(model.cfg.n_layers))


def _layers(model) -> list[tuple[Any, Any]]:
    """``(attention, feedforward)`` per layer, in order (unstacked modules)."""
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
        out.append((attention, feedforward))
    return out


def prefill_impl(model, prompts, lengths, draws: tuple, spec: DecodeSpec):
    """The left-aligned prompts ``[B, P]`` (row ``b`` real up to ``lengths[b]``) through the
    stack: the two output streams ``[B, P, d]`` and the per-layer caches. A scan over the layer
    groups (as in the model), so compile time does not grow with depth."""
    cfg = model.cfg
    plen = prompts.shape[1]
    x = model.embed(prompts)
    pos = model.positions(plen)
    if pos is not None:
        x = x + pos.astype(x.dtype)[None]
    x = x.astype(cfg.compute_dtype)
    n_pattern = len(cfg.attention_pattern)
    graphs, states, stacked_draws = [], [], []
    for p, block in enumerate(model.blocks):
        ag, astate = nnx.split(block.attention)
        fg, fstate = nnx.split(block.feedforward)
        graphs.append((ag, fg))
        states.append((astate, fstate))
        layer_draws = [draws[i] for i in range(p, cfg.n_layers, n_pattern)]
        if layer_draws[0] is None:
            stacked_draws.append(None)
        else:
            stacked_draws.append(jax.tree.map(lambda *xs: jnp.stack(xs), *layer_draws))

    def group(carry, xs):
        x1, x2 = carry
        group_states, group_draws = xs
        caches = []
        for p in range(n_pattern):
            attn = nnx.merge(graphs[p][0], group_states[p][0])
            ff = nnx.merge(graphs[p][1], group_states[p][1])
            q, k, v = attn.project(attn.norm(x2))

            def kernel(batched, whole, _key, kind=attn.kind):
                q, k, v, lengths = batched
                draws, params = whole
                return kind.prefill(cfg, spec, q, k, v, lengths=lengths, draws=draws, params=params)

            # As in training: on a mesh each batch shard runs the kind's prefill on its own
            # rows (its sorts and loops would otherwise gather every row onto every chip).
            out, cache = shd.per_batch_shard(
                kernel,
                (q, k, v, lengths),
                (group_draws[p], attn.extra_params(model.shared_values(attn.kind))),
                partitionable=attn.kind.partitionable(cfg),
            )
            x1 = shd.constrain_batch(x1 + attn.merge_heads(out).astype(x1.dtype))
            x2 = shd.constrain_batch(x2 + ff(x1))
            caches.append(cache)
        return (x1, x2), tuple(caches)

    (x1, x2), stacked = jax.lax.scan(group, (x, x), (tuple(states), tuple(stacked_draws)))
    caches = tuple(
        jax.tree.map(lambda a, g=i // n_pattern: a[g], stacked[i % n_pattern])
        for i in range(cfg.n_layers)
    )
    return x1, x2, caches


def step_impl(model, cache: Cache, tokens: jax.Array, positions: jax.Array):
    """Logits ``[B, V]`` for ``tokens [B]`` at ``positions [B]``, and the updated cache."""
    cfg = model.cfg
    spec = cache.spec
    x = model.embed(tokens)
    pos = position_rows(model, positions, spec.max_length)
    if pos is not None:
        x = x + pos.astype(x.dtype)
    x1 = x2 = x.astype(cfg.compute_dtype)
    new_layers = []
    for (attn, ff), layer_cache, layer_draws in zip(
        _layers(model), cache.layers, cache.draws, strict=True
    ):
        q, k, v = attn.project(attn.norm(x2)[:, None])  # [B, H, 1, d]
        q, v = q[:, :, 0], v[:, :, 0]
        k = None if k is None else k[:, :, 0]
        out, layer_cache = attn.kind.step(
            cfg,
            spec,
            layer_cache,
            q,
            k,
            v,
            positions,
            draws=layer_draws,
            params=attn.extra_params(model.shared_values(attn.kind)),
        )
        x1 = x1 + attn.merge_heads(out[:, :, None])[:, 0].astype(x1.dtype)
        x2 = x2 + ff(x1[:, None])[:, 0]
        new_layers.append(layer_cache)
    return head(model, x1, x2), Cache(tuple(new_layers), cache.draws, spec)


def position_rows(model, positions: jax.Array, max_length: int) -> jax.Array | None:
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
