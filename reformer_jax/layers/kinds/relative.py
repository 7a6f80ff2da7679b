"""Transformer-XL attention: relative positions, and a memory of earlier segments.

Extra parameters of each layer: ``rel_proj`` (``W_R`` ``[d_model, heads, d_head]``, projecting
the sinusoidal encodings of the distances), ``content_bias`` (``u``) and ``position_bias``
(``v`` of the paper), both ``[heads, d_head]``; with a convolutional compressed memory
(``cmem_len > 0``, ``cmem_method="conv"``) also the compressor ``compress_kernel``
``[cmem_rate, d_model, d_model]`` and ``compress_bias`` ``[d_model]`` (the layer compresses
the states evicted from its own memory; see :mod:`reformer_jax.layers.memory`).

``attend`` takes the queries of the segment and the keys / values of ``[memory; segment]`` (the
layer projects the memory's states with its own LayerNorm and K/V projections); the mask covers
the keys (False for empty memory slots). Causal only.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from reformer_jax.kernels.relative import relative_attention, sinusoid_encodings
from reformer_jax.layers.kinds.base import AttentionKind, Fail


def _param(value: jax.Array) -> nnx.Param:
    return nnx.Param(value, axes=(None,) * value.ndim)


def relative_keys(cfg, rel_proj: jax.Array, n_distances: int, dtype) -> jax.Array:
    """``W_R R_r`` for the distances ``0 .. n_distances - 1``: ``[heads, n_distances, d_head]``."""
    encodings = sinusoid_encodings(n_distances, cfg.d_model, dtype)
    return jnp.einsum("rd,dhe->hre", encodings, rel_proj.astype(dtype))


@dataclasses.dataclass(frozen=True)
class Relative(AttentionKind):
    """``relative_dropout``; the memory fields ``mem_len``, ``cmem_*`` (model-wide)."""

    name: ClassVar[str] = "relative"
    #: Attends to a memory of earlier segments (the model passes ``[memory; segment]`` keys).
    takes_memory: ClassVar[bool] = True

    def validate(self, cfg, used: bool, fail: Fail) -> None:
        if used and not cfg.causal:
            fail(
                "causal",
                "relative (Transformer-XL) layers are causal by construction (keys come from the "
                "past: the memory and the segment up to the query)",
                "set model.causal=True or use another kind",
            )
        if used and cfg.d_model % 2:
            fail("d_model", "must be even for sinusoidal relative encodings", "use an even one")

    def params(self, cfg, rngs) -> dict[str, nnx.Param]:
        d, h, e = cfg.d_model, cfg.n_heads, cfg.d_head
        dtype = cfg.parameter_dtype
        init = nnx.initializers.glorot_uniform(in_axis=0, out_axis=(1, 2))
        out = dict(
            rel_proj=_param(init(rngs.params(), (d, h, e), dtype)),
            content_bias=_param(jnp.zeros((h, e), dtype)),
            position_bias=_param(jnp.zeros((h, e), dtype)),
        )
        if cfg.cmem_len and cfg.cmem_method == "conv":
            # Starts as mean pooling (each of the rate states weighted 1 / rate).
            eye = jnp.eye(d, dtype=dtype) / cfg.cmem_rate
            out["compress_kernel"] = _param(jnp.broadcast_to(eye, (cfg.cmem_rate, d, d)))
            out["compress_bias"] = _param(jnp.zeros((d,), dtype))
        return out

    def attend(self, cfg, q, k, v, *, mask, dropout_key, draws=None, replay=None, params=None):
        key_len = k.shape[2]
        rel_k = relative_keys(cfg, params["rel_proj"], key_len, q.dtype)
        out = relative_attention(
            q,
            k,
            v,
            rel_k,
            params["content_bias"].astype(q.dtype),
            params["position_bias"].astype(q.dtype),
            mask=mask,
            dropout_rate=cfg.relative_dropout if dropout_key is not None else 0.0,
            dropout_key=dropout_key,
        )
        return out, None

    def decode_check(self, cfg, cached: bool) -> None:
        if cached:
            raise ValueError(
                "relative (Transformer-XL) layers have no decoding cache of their own: give the "
                "model a memory (model.mem_len > 0; generate then samples segment by segment "
                "through reformer_jax.decoding.memory) or pass use_cache=False"
            )
