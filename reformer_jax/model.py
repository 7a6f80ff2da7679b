"""ReformerLM: embeddings, the residual stack of attention / feed-forward blocks, LM head.

The stack is reversible (the Reformer) or, with ``residual="standard"``, an ordinary pre-LN
Transformer stack (the paper's baseline); both use the same attention and feed-forward blocks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from reformer_jax import sharding as shd
from reformer_jax.config import ReformerConfig
from reformer_jax.kernels.masking import dropout
from reformer_jax.layers import memory as memory_lib
from reformer_jax.layers.attention import SelfAttention, kinds_of
from reformer_jax.layers.embeddings import PositionalEmbedding
from reformer_jax.layers.feedforward import FeedForward
from reformer_jax.layers.residual import standard_stack
from reformer_jax.layers.reversible import reversible_stack, stack_forward

# fold_in tags separating the independent random streams of one layer.
_ATTN_STREAM, _FF_STREAM = 0, 1
# Streams outside the stack (layer indices are small non-negative ints).
_EMBED_STREAM, _HEAD_STREAM = 2**31 - 1, 2**31 - 2


def _feedforward_fn(ff_graph):
    """The stack's G branch of one pattern position: ``fn(params, x, ctx, layer)``, with the
    layer's own dropout stream (so the reversible backward replays the forward's masks)."""

    def fn(prm, x, ctx, layer):
        _, drop_key = ctx
        feedforward = nnx.merge(ff_graph, prm)
        key = None
        if drop_key is not None:
            key = jax.random.fold_in(jax.random.fold_in(drop_key, layer), _FF_STREAM)
        return feedforward(x, dropout_key=key)

    return fn


class Block(nnx.Module):
    """One layer's two branches: F (attention) and G (feed-forward)."""

    def __init__(self, cfg: ReformerConfig, kind: str, *, rngs: nnx.Rngs):
        self.attention = SelfAttention(cfg, kind, rngs=rngs)
        self.feedforward = FeedForward(cfg, rngs=rngs)


def _stacked_blocks(cfg: ReformerConfig, kind: str, rngs: nnx.Rngs) -> Block:
    """``n_groups`` blocks of one attention kind, parameters stacked on a leading axis."""

    @nnx.split_rngs(splits=cfg.n_groups)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs: nnx.Rngs) -> Block:
        return Block(cfg, kind, rngs=rngs)

    return make(rngs)


class ReformerLM(nnx.Module):
    """The Reformer language model (causal by default).

    tokens -> embedding (+ positions, dropout) -> two copies (x1, x2) -> reversible stack ->
    concat [y1 | y2] -> LayerNorm(2 d_model) -> logits. With ``residual="standard"``:
    embedding -> x -> pre-LN residual stack -> LayerNorm(d_model) -> logits. Layers of the same
    position in the attention pattern are stored stacked (leading ``n_groups`` axis) so the
    stack is one scan.
    """

    def __init__(self, cfg: ReformerConfig, *, rngs: nnx.Rngs, lm_head: bool = True):
        """``lm_head=False`` builds the encoder alone (`hidden_states`; no vocabulary head)."""
        self.cfg = cfg
        self.embed = nnx.Embed(
            cfg.vocab_size,
            cfg.d_model,
            dtype=cfg.compute_dtype,
            param_dtype=cfg.parameter_dtype,
            embedding_init=nnx.initializers.normal(1.0),
            rngs=rngs,
        )
        self.positions = PositionalEmbedding(cfg, rngs=rngs)
        blocks = [_stacked_blocks(cfg, kind, rngs) for kind in cfg.attention_pattern]
        self.blocks = nnx.List(blocks)
        shared = {}
        for kind in dict.fromkeys(kinds_of(cfg)):
            params = kind.shared_params(cfg, rngs)
            if params:
                shared[kind.name] = nnx.Dict(params)
        if shared:  # only then: older models keep their exact parameter tree
            self.shared_attention = nnx.Dict(shared)
        d_out = 2 * cfg.d_model if cfg.residual == "reversible" else cfg.d_model
        self.final_norm = nnx.LayerNorm(
            d_out,
            epsilon=cfg.ln_eps,
            dtype=cfg.compute_dtype,
            param_dtype=cfg.parameter_dtype,
            rngs=rngs,
        )
        self.head = (
            nnx.Linear(
                d_out,
                cfg.vocab_size,
                dtype=cfg.compute_dtype,
                param_dtype=cfg.parameter_dtype,
                kernel_metadata={"axes": ("embed", "vocab")},
                bias_metadata={"axes": ("vocab",)},
                rngs=rngs,
            )
            if lm_head
            else None
        )

    def __call__(
        self,
        tokens_BL: jax.Array,
        *,
        mask: jax.Array | None = None,
        dropout_rng: jax.Array | None = None,
        hash_rng: jax.Array | None = None,
        rotations: Mapping[int, jax.Array] | None = None,
        draws: Mapping[int, Any] | None = None,
    ) -> jax.Array:
        """Logits ``[B, L, vocab]`` for int tokens ``[B, L]`` (arguments: `hidden_states`)."""
        cfg = self.cfg
        h = self.hidden_states(
            tokens_BL,
            mask=mask,
            dropout_rng=dropout_rng,
            hash_rng=hash_rng,
            rotations=rotations,
            draws=draws,
        )
        if dropout_rng is not None and cfg.hidden_dropout > 0:
            h = dropout(h, cfg.hidden_dropout, jax.random.fold_in(dropout_rng, _HEAD_STREAM))
        logits = self.head(h).astype(jnp.promote_types(cfg.compute_dtype, jnp.float32))
        return shd.constrain_batch(logits)

    def hidden_states(
        self,
        tokens_BL: jax.Array,
        *,
        mask: jax.Array | None = None,
        dropout_rng: jax.Array | None = None,
        hash_rng: jax.Array | None = None,
        rotations: Mapping[int, jax.Array] | None = None,
        draws: Mapping[int, Any] | None = None,
    ) -> jax.Array:
        """The final LayerNorm's output ``[B, L, D]`` for int tokens ``[B, L]``.

        ``D`` is ``2 d_model`` for the reversible stack, ``d_model`` for the standard one. The LM
        head (`__call__`) and the classifiers (`reformer_jax.classifier`) read it.

        Args:
          mask: ``[B, L]`` bool, True for real tokens (padding never influences real ones).
          dropout_rng: key for dropout; None is deterministic (evaluation).
          hash_rng: key for the layers' random draws (LSH rotations, Performer features).
            Precedence: explicit ``draws`` / ``rotations``, then ``hash_rng``, then the config's
            ``hash_seed``, then ``dropout_rng``, then a fixed key (so evaluation is
            reproducible). Each layer folds in its index.
          rotations: explicit LSH rotations by layer index (every LSH layer), as drawn by
            ``layer_rotations``; e.g. to match another implementation exactly.
          draws: explicit draws by layer index, for every layer whose kind draws (the general
            form of ``rotations``).
        """
        cfg = self.cfg
        batch, length = tokens_BL.shape
        cfg.check_length(length)
        x = self.embed(tokens_BL)
        pos = self.positions(length)
        if pos is not None:
            x = x + pos.astype(x.dtype)[None]
        if dropout_rng is not None and cfg.hidden_dropout > 0:
            x = dropout(x, cfg.hidden_dropout, jax.random.fold_in(dropout_rng, _EMBED_STREAM))
        x = shd.constrain_batch(x.astype(cfg.compute_dtype))

        if hash_rng is None:
            hash_rng = (
                jax.random.key(cfg.hash_seed)
                if cfg.hash_seed is not None
                else dropout_rng
                if dropout_rng is not None
                else jax.random.key(0)
            )
        explicit = ("draws", draws) if draws is not None else ("rotations", rotations)
        stacked_draws = self.stacked_draws(length, hash_rng, *explicit)
        attn_graphs, ff_graphs, params = [], [], []
        for block, kind in zip(self.blocks, kinds_of(cfg), strict=True):
            attn_graph, attn_state = nnx.split(block.attention)
            ff_graph, ff_state = nnx.split(block.feedforward)
            attn_graphs.append(attn_graph)
            ff_graphs.append(ff_graph)
            # Model-level parameters of the kind, broadcast over the groups like the stacked
            # ones: the stacks need no special case, and autodiff sums their gradients.
            shared = jax.tree.map(
                lambda a: jnp.broadcast_to(a, (cfg.n_groups, *a.shape)),
                self.shared_values(kind),
            )
            params.append(((attn_state, shared), ff_state))

        def attn_fn(p):
            def fn(prm, x, ctx_p, layer, replay):
                (mask, drop_key), layer_draws = ctx_p
                attn_state, shared = prm
                attention = nnx.merge(attn_graphs[p], attn_state)
                key = None
                if drop_key is not None:
                    key = jax.random.fold_in(jax.random.fold_in(drop_key, layer), _ATTN_STREAM)
                return attention(
                    x,
                    mask=mask,
                    dropout_key=key,
                    draws=layer_draws,
                    replay=replay,
                    shared=shared or None,
                )

            return fn

        n = len(self.blocks)
        attn_fns = [attn_fn(p) for p in range(n)]
        ff_fns = [_feedforward_fn(g) for g in ff_graphs]
        ctx = (mask, dropout_rng)
        params = tuple(params)
        if cfg.residual == "standard":
            h = self.final_norm(standard_stack(attn_fns, ff_fns, params, x, ctx, stacked_draws))
        else:
            if cfg.reversible:
                y1, y2 = reversible_stack(attn_fns, ff_fns, params, x, x, ctx, stacked_draws)
            else:
                y1, y2, _ = stack_forward(attn_fns, ff_fns, params, x, x, ctx, stacked_draws)
            h = self.final_norm(jnp.concatenate([y1, y2], axis=-1))
        return shd.constrain_batch(h)

    def with_memory(
        self,
        tokens_BL: jax.Array,
        memory: Mapping[str, jax.Array],
        *,
        mask: jax.Array | None = None,
        dropout_rng: jax.Array | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array], jax.Array]:
        """One segment with the memory of the earlier ones (Transformer-XL; docs/memory.md).

        ``memory`` as built by :func:`reformer_jax.layers.memory.init_memory` (its lengths may
        differ from the config's, e.g. a longer evaluation memory). Returns ``(logits [B, L,
        vocab], the next memory, the attention-reconstruction loss)`` (the loss is 0 without a
        compressed memory; it reaches only the compressors' parameters). ``mask`` ``[B, L]``
        marks real tokens; padded positions still enter the memory (only the tail of a stream
        is padded).
        """
        cfg = self.cfg
        if not cfg.has_memory:
            raise ValueError(
                "model.mem_len: this model has no memory (mem_len = 0); set model.mem_len > 0 "
                "(with attention_pattern=['relative']) or call the model without one"
            )
        batch, length = tokens_BL.shape
        memory_lib.check_segment(cfg, memory, length)
        x = self.embed(tokens_BL)
        if dropout_rng is not None and cfg.hidden_dropout > 0:
            x = dropout(x, cfg.hidden_dropout, jax.random.fold_in(dropout_rng, _EMBED_STREAM))
        x = x.astype(cfg.compute_dtype)
        seg_valid = jnp.ones((batch, length), bool) if mask is None else mask.astype(bool)
        valid = memory_lib.validity(memory, seg_valid, cfg.cmem_rate)
        compressed_memory = "cmem" in memory

        attn_graphs, ff_graphs, params = [], [], []
        for block in self.blocks:
            attn_graph, attn_state = nnx.split(block.attention)
            ff_graph, ff_state = nnx.split(block.feedforward)
            attn_graphs.append(attn_graph)
            ff_graphs.append(ff_graph)
            params.append((attn_state, ff_state))

        def attn_fn(p):
            def fn(prm, x, ctx, layer, layer_memory):
                mask, drop_key = ctx
                attention = nnx.merge(attn_graphs[p], prm)
                key = None
                if drop_key is not None:
                    key = jax.random.fold_in(jax.random.fold_in(drop_key, layer), _ATTN_STREAM)
                out, _ = attention(
                    x,
                    mask=mask,
                    dropout_key=key,
                    memory_BMD=memory_lib.layer_context(layer_memory),
                    memory_mask=valid["context"],
                )
                compressor = attention.extra_params() or {}
                new_memory, compressed = memory_lib.next_layer_memory(
                    cfg, layer_memory, x, compressor
                )
                recon = jnp.zeros((), jnp.float32)
                if compressed_memory:
                    frozen = nnx.merge(attn_graphs[p], jax.tree.map(jax.lax.stop_gradient, prm))
                    _, evicted = memory_lib.shift(layer_memory["mem"], x)
                    recon = memory_lib.reconstruction_loss(
                        frozen, x, evicted, compressed, valid["evicted_rows"]
                    )
                return out, new_memory, recon

            return fn

        n = len(self.blocks)
        per_pattern = memory_lib.by_pattern(memory, cfg.n_groups, n)
        y, new_per_pattern, recons = memory_lib.memory_stack(
            [attn_fn(p) for p in range(n)],
            [_feedforward_fn(g) for g in ff_graphs],
            tuple(params),
            x,
            (mask, dropout_rng),
            per_pattern,
        )
        h = self.final_norm(y)
        if dropout_rng is not None and cfg.hidden_dropout > 0:
            h = dropout(h, cfg.hidden_dropout, jax.random.fold_in(dropout_rng, _HEAD_STREAM))
        logits = self.head(h).astype(jnp.promote_types(cfg.compute_dtype, jnp.float32))
        new_memory = memory_lib.from_pattern(new_per_pattern)
        new_memory["mem_valid"] = valid["mem_valid"]
        if compressed_memory:
            new_memory["cmem_valid"] = valid["cmem_valid"]
        recon = jnp.mean(jnp.stack([jnp.mean(r) for r in recons]))
        return logits, new_memory, recon

    def shared_values(self, kind) -> dict[str, jax.Array]:
        """Values of ``kind``'s model-level parameters (``kind.shared_params``), or ``{}``."""
        if not hasattr(self, "shared_attention") or kind.name not in self.shared_attention:
            return {}
        params = self.shared_attention[kind.name]
        return {name: params[name][...] for name in params}

    def layer_draws(self, length: int, hash_rng: jax.Array) -> dict[int, Any]:
        """Every drawing layer's draw for sequences of ``length``, by layer index (what
        ``__call__`` uses for this ``hash_rng``; also the draws of a decode run)."""
        cfg = self.cfg
        kinds = kinds_of(cfg)
        out = {}
        for i in range(cfg.n_layers):
            drawn = kinds[i % len(kinds)].draw(cfg, jax.random.fold_in(hash_rng, i), length)
            if drawn is not None:
                out[i] = drawn
        return out

    def stacked_draws(
        self, length: int, hash_rng: jax.Array, name: str = "draws", explicit=None
    ) -> tuple[Any, ...]:
        """Per pattern position: the layers' draws stacked over groups, or None.

        ``explicit`` (by layer index) replaces the drawn values; it must cover every layer whose
        kind draws (the error names the argument ``name`` and the missing layers).
        """
        cfg = self.cfg
        n_pattern = len(cfg.attention_pattern)
        drawn = self.layer_draws(length, hash_rng)
        out = []
        for p, kind in enumerate(kinds_of(cfg)):
            layers = [g * n_pattern + p for g in range(cfg.n_groups)]
            if layers[0] not in drawn:
                out.append(None)
                continue
            if explicit is not None:
                missing = [i for i in layers if i not in explicit]
                if missing:
                    raise ValueError(
                        f"{name}: missing {kind.name.upper()} layer(s) {missing}; give the "
                        "draws of every such layer"
                    )
                values = [jax.tree.map(jnp.asarray, explicit[i]) for i in layers]
            else:
                values = [drawn[i] for i in layers]
            out.append(jax.tree.map(lambda *xs: jnp.stack(xs), *values))
        return tuple(out)


def loss_dtype(logits: jax.Array) -> jnp.dtype:
    """The dtype a loss computes in: at least float32 (bfloat16 logits would round the
    log-sum-exp), and float64 for float64 models (their exact gradient checks)."""
    return jnp.promote_types(logits.dtype, jnp.float32)


def lm_loss(
    logits_BLV: jax.Array, tokens_BL: jax.Array, weights_BL: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Next-token cross-entropy: logits at t predict token t+1.

    ``weights[:, t]`` says whether token t counts as a target. Returns (mean loss in nats,
    total weight).
    """
    dtype = loss_dtype(logits_BLV)
    logits = logits_BLV[:, :-1].astype(dtype)
    targets = tokens_BL[:, 1:]
    w = jnp.ones(targets.shape, dtype) if weights_BL is None else weights_BL[:, 1:]
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    total = jnp.sum(w)
    return jnp.sum(nll * w) / jnp.maximum(total, 1.0), total
