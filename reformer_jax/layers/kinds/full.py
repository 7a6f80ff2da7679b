"""Full (dense) softmax attention: the quadratic reference."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from reformer_jax import kernels
from reformer_jax.decoding import full as full_cache
from reformer_jax.layers.kinds.base import AttentionKind


@dataclasses.dataclass(frozen=True)
class Full(AttentionKind):
    """``full_*`` fields; decoding keeps K/V of every position (exact)."""

    name: ClassVar[str] = "full"

    def attend(self, cfg, q, k, v, *, mask, dropout_key, draws=None, replay=None, params=None):
        out = kernels.full_attention(
            q,
            k,
            v,
            causal=cfg.causal,
            mask=mask,
            dropout_rate=cfg.full_dropout if dropout_key is not None else 0.0,
            dropout_key=dropout_key,
        )
        return out, None

    def prefill(self, cfg, spec, q, k, v, *, lengths, draws, params):
        out, _ = self.attend(cfg, q, k, v, mask=None, dropout_key=None)
        return out, full_cache.prefill(spec, k, v)

    def step(self, cfg, spec, cache, q, k, v, positions, *, draws, params):
        return full_cache.step(cache, q, k, v, positions)
