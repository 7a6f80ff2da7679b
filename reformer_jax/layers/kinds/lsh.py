"""LSH attention (the Reformer): shared query/key, random rotations drawn per call, the bucket
order replayed by the reversible backward pass."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import jax

from reformer_jax import kernels
from reformer_jax.decoding import lsh as lsh_cache
from reformer_jax.layers.kinds.base import (
    AttentionKind,
    Fail,
    validate_window_implementation,
    window_partitionable,
)

if TYPE_CHECKING:
    from reformer_jax.config import ReformerConfig
    from reformer_jax.decoding.spec import DecodeSpec


def lsh_n_buckets(cfg: ReformerConfig, length: int):
    """The configured bucket count, or the automatic one for this (padded) length."""
    if cfg.lsh_n_buckets is not None:
        return cfg.lsh_n_buckets
    padded = length + (-length) % cfg.lsh_chunk_len
    return kernels.auto_n_buckets(padded, cfg.lsh_chunk_len)


def layer_rotations(cfg: ReformerConfig, hash_key: jax.Array, n_buckets) -> jax.Array:
    """The rotations an LSH layer uses for a given key ``[heads, d_head, n_hashes, columns]``."""
    return kernels.draw_rotations(hash_key, cfg.n_heads, cfg.d_head, cfg.lsh_n_hashes, n_buckets)


class LSHReplay(NamedTuple):
    """What the reversible backward reuses of an LSH layer's forward: its sort of the hash
    rounds (so it neither hashes nor sorts again; O(L) integers) and, only for
    ``lsh_attend_across_buckets=False``, the bucket ids ``[B, H, n_hashes, L]`` (else None)."""

    order: kernels.LSHOrder
    buckets: jax.Array | None


@dataclasses.dataclass(frozen=True)
class LSH(AttentionKind):
    """``lsh_*`` fields; exact shared-QK attention below ``full_attention_below``.

    draws: the rotations ``[heads, d_head, n_hashes, columns]`` (None below
    ``full_attention_below``); replay: an :class:`LSHReplay` (None below it).
    """

    name: ClassVar[str] = "lsh"
    shared_qk: ClassVar[bool] = True
    also_reads: ClassVar[tuple[str, ...]] = ("full_attention_below", "window_implementation")

    def validate(self, cfg: ReformerConfig, used: bool, fail: Fail) -> None:
        validate_window_implementation(cfg, used, fail, "lsh_chunk_len", "lsh_dropout")
        nb = cfg.lsh_n_buckets
        factors = [nb] if isinstance(nb, int) else list(nb or ())
        if nb is not None and (not factors or any(f < 2 or f % 2 for f in factors)):
            fail(
                "lsh_n_buckets",
                f"{nb!r} has an odd or < 2 bucket count",
                "use an even number (or a list of even factors), or None for automatic",
            )

    def partitionable(self, cfg) -> bool:
        return window_partitionable(cfg)

    def draw(self, cfg: ReformerConfig, key: jax.Array, length: int) -> jax.Array | None:
        if length < cfg.full_attention_below:
            return None
        return layer_rotations(cfg, key, lsh_n_buckets(cfg, length))

    def attend(self, cfg, q, k, v, *, mask, dropout_key, draws=None, replay=None, params=None):
        dropout_rate = cfg.lsh_dropout if dropout_key is not None else 0.0
        length = q.shape[2]
        if length < cfg.full_attention_below:
            out = kernels.full_attention(
                q,
                kernels.unit_keys(q),
                v,
                scale=1.0,
                exclude_self=True,
                causal=cfg.causal,
                mask=mask,
                dropout_rate=dropout_rate,
                dropout_key=dropout_key,
            )
            return out, None
        n_buckets = lsh_n_buckets(cfg, length)
        if replay is None or not isinstance(replay, LSHReplay):
            # Bucket ids alone (what earlier versions replayed) are sorted here.
            buckets = kernels.hash_vectors(q, draws, n_buckets, mask) if replay is None else replay
            replay = LSHReplay(
                kernels.sort_order(buckets, cfg.lsh_chunk_len, n_buckets),
                None if cfg.lsh_attend_across_buckets else buckets,
            )
        out = kernels.lsh_attention(
            q,
            v,
            draws,
            n_buckets=n_buckets,
            chunk_len=cfg.lsh_chunk_len,
            n_chunks_before=cfg.lsh_chunks_before,
            n_chunks_after=cfg.lsh_chunks_after,
            causal=cfg.causal,
            mask=mask,
            dropout_rate=dropout_rate,
            dropout_key=dropout_key,
            attend_across_buckets=cfg.lsh_attend_across_buckets,
            buckets=replay.buckets,
            order=replay.order,
            implementation=cfg.window_implementation,
        )
        return out, replay

    def decode_options(self, cfg, max_length: int, lsh_cache_size) -> dict[str, Any]:
        nb = lsh_n_buckets(cfg, max_length)
        return dict(
            n_buckets=nb if isinstance(nb, int) else tuple(int(f) for f in nb),
            exact_lsh=max_length < cfg.full_attention_below,
        )

    def prefill(self, cfg, spec: DecodeSpec, q, k, v, *, lengths, draws, params):
        return lsh_cache.prefill(spec, q, v, lengths, draws)

    def step(self, cfg, spec: DecodeSpec, cache, q, k, v, positions, *, draws, params):
        return lsh_cache.step(spec, cache, q, v, positions, draws)
