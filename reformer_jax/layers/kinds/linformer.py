"""Linformer attention: keys and values projected along the length axis to ``linformer_k`` rows.

Parameters by ``linformer_sharing`` (the paper's sharing levels, section 4):

* ``"none"``: per layer, distinct E and F per head (``proj_k``, ``proj_v``
  ``[heads, k, max_len]``);
* ``"head"``: per layer, one E and one F shared by the heads (``[k, max_len]`` each);
* ``"kv"``: per layer, one matrix as both E and F (``proj``);
* ``"layer"``: one matrix for every Linformer layer of the model (E = F; a model-level
  parameter, the paper's best downstream setting).

Projections span ``max_len`` positions and are sliced to the input length. Not causal (the
projection mixes future positions into every key), so it cannot decode left to right.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from flax import nnx

from reformer_jax import kernels
from reformer_jax.layers.kinds.base import AttentionKind, Fail

SHARING = ("none", "head", "kv", "layer")


def _projection(cfg, rngs, heads: int | None) -> nnx.Param:
    value = kernels.init_linformer_projection(
        rngs.params(), cfg.linformer_k, cfg.max_len, heads, cfg.parameter_dtype
    )
    return nnx.Param(value, axes=(None,) * value.ndim)


@dataclasses.dataclass(frozen=True)
class Linformer(AttentionKind):
    """``linformer_k``, ``linformer_sharing``, ``linformer_dropout``; ``max_len`` positions."""

    name: ClassVar[str] = "linformer"

    def validate(self, cfg, used: bool, fail: Fail) -> None:
        if not isinstance(cfg.linformer_k, int) or cfg.linformer_k < 1:
            fail(
                "linformer_k",
                f"must be a positive integer, got {cfg.linformer_k!r}",
                "use e.g. 64 (the projected length)",
            )
        if cfg.linformer_sharing not in SHARING:
            fail(
                "linformer_sharing",
                f"unknown sharing level {cfg.linformer_sharing!r}",
                f"use one of {list(SHARING)}",
            )
        if not used:
            return
        if cfg.causal:
            fail(
                "causal",
                "Linformer layers cannot be causal (the length projection mixes future positions "
                "into every projected key)",
                "set model.causal=False or use a causal kind in model.attention_pattern",
            )
        cap = cfg.max_length
        if cap is not None and cap > cfg.max_len:
            fail(
                "max_len",
                f"Linformer projections cover max_len={cfg.max_len} positions but the positional "
                f"capacity is {cap}",
                f"set model.max_len to at least {cap}",
            )

    def params(self, cfg, rngs) -> dict[str, nnx.Param]:
        if cfg.linformer_sharing == "none":
            heads = cfg.n_heads
            return dict(proj_k=_projection(cfg, rngs, heads), proj_v=_projection(cfg, rngs, heads))
        if cfg.linformer_sharing == "head":
            return dict(proj_k=_projection(cfg, rngs, None), proj_v=_projection(cfg, rngs, None))
        if cfg.linformer_sharing == "kv":
            return dict(proj=_projection(cfg, rngs, None))
        return {}

    def shared_params(self, cfg, rngs) -> dict[str, nnx.Param]:
        if cfg.linformer_sharing == "layer":
            return dict(proj=_projection(cfg, rngs, None))
        return {}

    def attend(self, cfg, q, k, v, *, mask, dropout_key, draws=None, replay=None, params=None):
        proj_k = params.get("proj_k", params.get("proj"))
        proj_v = params.get("proj_v", params.get("proj"))
        out = kernels.linformer_attention(
            q,
            k,
            v,
            proj_k,
            proj_v,
            mask=mask,
            causal=cfg.causal,
            dropout_rate=cfg.linformer_dropout if dropout_key is not None else 0.0,
            dropout_key=dropout_key,
        )
        return out, None

    def decode_check(self, cfg, cached: bool) -> None:
        raise ValueError(
            "Linformer layers cannot generate left to right: their length projection mixes "
            "every position (future ones included) into each key, so the model is bidirectional; "
            "sample from a model whose attention_pattern uses causal kinds"
        )
