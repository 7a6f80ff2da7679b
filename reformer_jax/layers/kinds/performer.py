"""Performer (FAVOR+) attention: softmax approximated with positive random features.

The features are the kind's draw, exactly like the LSH rotations: redrawn every training step
from the step's key, fixed for evaluation (``hash_seed`` or the evaluation default) and for a
whole decode run (the running state is only valid for the features it was built with).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from reformer_jax import kernels
from reformer_jax.decoding import performer as performer_cache
from reformer_jax.layers.kinds.base import AttentionKind, Fail


@dataclasses.dataclass(frozen=True)
class Performer(AttentionKind):
    """``performer_n_features``, ``performer_orthogonal``, ``performer_chunk_len``.

    draws: the features ``[heads, n_features, d_head]`` (float32). No attention dropout (the
    attention probabilities are never formed).
    """

    name: ClassVar[str] = "performer"

    def validate(self, cfg, used: bool, fail: Fail) -> None:
        for setting, example in (("performer_n_features", 64), ("performer_chunk_len", 64)):
            value = getattr(cfg, setting)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                fail(setting, f"must be a positive integer, got {value!r}", f"use e.g. {example}")
        if not isinstance(cfg.performer_orthogonal, bool):
            fail(
                "performer_orthogonal",
                f"must be True or False, got {cfg.performer_orthogonal!r}",
                "use True (orthogonal random features, FAVOR+) or False (i.i.d.)",
            )

    def draw(self, cfg, key: jax.Array, length: int) -> jax.Array:
        return kernels.draw_features(
            key,
            cfg.performer_n_features,
            cfg.d_head,
            cfg.performer_orthogonal,
            heads=cfg.n_heads,
            dtype=jnp.float32,
        )

    def attend(self, cfg, q, k, v, *, mask, dropout_key, draws=None, replay=None, params=None):
        out = kernels.performer_attention(
            q, k, v, draws, causal=cfg.causal, mask=mask, chunk_len=cfg.performer_chunk_len
        )
        return out, None

    def prefill(self, cfg, spec, q, k, v, *, lengths, draws, params):
        return performer_cache.prefill(q, k, v, lengths, draws, cfg.performer_chunk_len)

    def step(self, cfg, spec, cache, q, k, v, positions, *, draws, params):
        return performer_cache.step(cache, q, k, v, draws)
