"""Local attention: each chunk attends to itself and its neighbouring chunks."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from reformer_jax import kernels
from reformer_jax.decoding import local as local_cache
from reformer_jax.layers.kinds.base import (
    AttentionKind,
    validate_window_implementation,
    window_partitionable,
)


@dataclasses.dataclass(frozen=True)
class Local(AttentionKind):
    """``local_*`` fields; decoding keeps a ring of the band (exact)."""

    name: ClassVar[str] = "local"
    also_reads: ClassVar[tuple[str, ...]] = ("window_implementation",)

    def validate(self, cfg, used: bool, fail) -> None:
        validate_window_implementation(cfg, used, fail, "local_chunk_len", "local_dropout")

    def partitionable(self, cfg) -> bool:
        return window_partitionable(cfg)

    def attend(self, cfg, q, k, v, *, mask, dropout_key, draws=None, replay=None, params=None):
        out = kernels.local_attention(
            q,
            k,
            v,
            chunk_len=cfg.local_chunk_len,
            n_chunks_before=cfg.local_chunks_before,
            n_chunks_after=cfg.local_chunks_after,
            causal=cfg.causal,
            mask=mask,
            wrap_around=cfg.local_wrap_around,
            dropout_rate=cfg.local_dropout if dropout_key is not None else 0.0,
            dropout_key=dropout_key,
            implementation=cfg.window_implementation,
        )
        return out, None

    def decode_check(self, cfg, cached: bool) -> None:
        if cached and cfg.local_wrap_around and cfg.local_chunks_after > 0:
            raise ValueError(
                "local layers with local_wrap_around=True and local_chunks_after > 0 let the "
                "last chunk of a sequence see its first chunks, so a position's output depends "
                "on how long the sequence is and cannot be cached; use use_cache=False"
            )

    def prefill(self, cfg, spec, q, k, v, *, lengths, draws, params):
        out, _ = self.attend(cfg, q, k, v, mask=None, dropout_key=None)
        return out, local_cache.prefill(cfg, k, v, lengths)

    def step(self, cfg, spec, cache, q, k, v, positions, *, draws, params):
        return local_cache.step(cfg, cache, q, k, v, positions)
