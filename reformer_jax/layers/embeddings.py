"""Positional embeddings: axial (the Reformer's), learned, sinusoidal, or none."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from reformer_jax.config import ReformerConfig


class PositionalEmbedding(nnx.Module):
    """Maps a length ``L`` to position vectors ``[L, d_model]`` (added to token embeddings).

    Axial: one learned table per axis, ``[n_axis, d_axis]``; position j of the grid
    ``axial_shape`` (row-major) is the concatenation of each axis' row at j's grid index. A
    length below the capacity uses the first positions (the table is sliced, never resized).
    """

    def __init__(self, cfg: ReformerConfig, *, rngs: nnx.Rngs):
        self.kind = cfg.pos_embedding
        self.d_model = cfg.d_model
        self.axial_shape = cfg.axial_shape
        self.cfg = cfg
        init = nnx.initializers.normal(stddev=1.0)
        if self.kind == "axial":
            self.axes = nnx.List(
                [
                    nnx.Param(init(rngs.params(), (n, d), cfg.parameter_dtype), axes=(None, None))
                    for n, d in zip(cfg.axial_shape, cfg.axial_dims, strict=True)
                ]
            )
        elif self.kind == "learned":
            self.table = nnx.Param(
                init(rngs.params(), (cfg.max_len, cfg.d_model), cfg.parameter_dtype),
                axes=(None, None),
            )

    def __call__(self, length: int) -> jax.Array | None:
        self.cfg.check_length(length)
        if self.kind == "none":
            return None
        if self.kind == "learned":
            return self.table[...][:length]
        if self.kind == "sinusoidal":
            return sinusoidal_positions(length, self.d_model)
        index = np.unravel_index(np.arange(length), self.axial_shape)
        return jnp.concatenate(
            [table[...][idx] for table, idx in zip(self.axes, index, strict=True)], axis=-1
        )


def sinusoidal_positions(length: int, d_model: int) -> jax.Array:
    """The Transformer's fixed sin/cos positions ``[length, d_model]``."""
    pos = np.arange(length)[:, None]
    freq = np.exp(-math.log(10000.0) * np.arange(0, d_model, 2) / d_model)
    table = np.zeros((length, d_model), np.float32)
    table[:, 0::2] = np.sin(pos * freq)
    table[:, 1::2] = np.cos(pos * freq)
    return jnp.asarray(table)
