"""Sparse-pattern attention (Star, BigBird, Longformer, Sparse Transformer strided / fixed).

The pattern is built from the flat ``sparse_*`` config fields (:func:`sparse_pattern`); it is
static, so there is nothing to draw (BigBird's random blocks are a plan fixed by
``sparse_seed``) and nothing to replay.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from reformer_jax import kernels
from reformer_jax.decoding import full as full_cache
from reformer_jax.decoding import sparse as sparse_cache
from reformer_jax.layers.kinds.base import AttentionKind, Fail

PATTERNS = ("star", "bigbird", "longformer", "strided", "fixed")
# The kernel's argument names -> the config fields that set them (for one-line errors).
_FIELDS = {
    "block_len": "sparse_block_len",
    "stride": "sparse_block_len",
    "window": "sparse_window",
    "dilation": "sparse_dilation",
    "global_positions": "sparse_global_positions",
    "n_window_blocks": "sparse_window_blocks",
    "n_global_blocks": "sparse_global_blocks",
    "n_random_blocks": "sparse_random_blocks",
    "c": "sparse_summary_len",
    "summary_len": "sparse_summary_len",
}


def sparse_pattern(cfg) -> kernels.SparsePattern:
    """The kernel's pattern object for the config's ``sparse_*`` fields.

    ``sparse_block_len`` is BigBird's block, the Sparse Transformer's stride (strided) or block
    (fixed), and only a cost knob for Star and Longformer.
    """
    name = cfg.sparse_pattern
    if name == "star":
        return kernels.star_pattern(cfg.sparse_block_len)
    if name == "bigbird":
        return kernels.bigbird_pattern(
            cfg.sparse_block_len,
            n_window_blocks=cfg.sparse_window_blocks,
            n_global_blocks=cfg.sparse_global_blocks,
            n_random_blocks=cfg.sparse_random_blocks,
            seed=cfg.sparse_seed,
        )
    if name == "longformer":
        return kernels.longformer_pattern(
            cfg.sparse_window,
            cfg.sparse_global_positions,
            dilation=cfg.sparse_dilation,
            block_len=cfg.sparse_block_len,
        )
    if name == "strided":
        return kernels.strided_pattern(cfg.sparse_block_len)
    return kernels.fixed_pattern(cfg.sparse_block_len, cfg.sparse_summary_len)


@dataclasses.dataclass(frozen=True)
class Sparse(AttentionKind):
    """``sparse_pattern`` and its ``sparse_*`` fields; decoding reads a full K/V cache through
    the pattern's key positions."""

    name: ClassVar[str] = "sparse"

    def validate(self, cfg, used: bool, fail: Fail) -> None:
        if cfg.sparse_pattern not in PATTERNS:
            fail(
                "sparse_pattern",
                f"unknown pattern {cfg.sparse_pattern!r}",
                f"use one of {list(PATTERNS)}",
            )
        try:
            sparse_pattern(cfg)
        except (ValueError, TypeError) as error:
            argument, _, problem = str(error).partition(": ")
            setting = _FIELDS.get(argument.split(".")[-1], "sparse_pattern")
            fail(
                setting,
                f"invalid for the {cfg.sparse_pattern!r} pattern: {problem or error}",
                f"change model.{setting}",
            )
        cap = cfg.max_length
        if used and cfg.sparse_pattern == "longformer" and cap is not None:
            outside = [p for p in cfg.sparse_global_positions if p >= cap]
            if outside:
                fail(
                    "sparse_global_positions",
                    f"{outside} lie beyond the positional capacity {cap}",
                    f"use positions < {cap}",
                )

    def attend(self, cfg, q, k, v, *, mask, dropout_key, draws=None, replay=None, params=None):
        out = kernels.sparse_attention(
            q,
            k,
            v,
            sparse_pattern(cfg),
            causal=cfg.causal,
            mask=mask,
            dropout_rate=cfg.sparse_dropout if dropout_key is not None else 0.0,
            dropout_key=dropout_key,
        )
        return out, None

    def prefill(self, cfg, spec, q, k, v, *, lengths, draws, params):
        # The plan of max_length tokens (what the step uses); causal, so the padding after the
        # prompt is never seen by prompt positions.
        plen = q.shape[2]
        padded = [sparse_cache.pad_to(x, spec.max_length) for x in (q, k, v)]
        out, _ = self.attend(cfg, *padded, mask=None, dropout_key=None)
        return out[:, :, :plen], full_cache.prefill(spec, k, v)

    def step(self, cfg, spec, cache, q, k, v, positions, *, draws, params):
        return sparse_cache.step(sparse_pattern(cfg), spec, cache, q, k, v, positions)
