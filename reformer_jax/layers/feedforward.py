"""Chunked feed-forward: only one chunk's d_ff activations are alive at a time."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from reformer_jax import sharding as shd
from reformer_jax.config import ReformerConfig
from reformer_jax.kernels.masking import dropout

ACTIVATIONS = {"relu": jax.nn.relu, "gelu": jax.nn.gelu}


class FeedForward(nnx.Module):
    """LayerNorm -> Dense(d_ff) -> dropout -> activation -> Dense(d_model) -> dropout.

    With ``ff_chunk_size > 0`` the ``batch * length`` rows are processed in chunks under a
    ``lax.map`` of a rematerialised function, so forward and backward each hold the d_ff
    activations of one chunk only. On a mesh (``jax.set_mesh``) each batch shard chunks its
    own rows (`reformer_jax.sharding.per_batch_shard`).
    """

    def __init__(self, cfg: ReformerConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d = cfg.d_model
        self.norm = nnx.LayerNorm(
            d,
            epsilon=cfg.ln_eps,
            dtype=cfg.compute_dtype,
            param_dtype=cfg.parameter_dtype,
            rngs=rngs,
        )
        common = dict(dtype=cfg.compute_dtype, param_dtype=cfg.parameter_dtype, rngs=rngs)
        self.dense_in = nnx.Linear(
            d,
            cfg.d_ff,
            kernel_metadata={"axes": ("embed", "mlp")},
            bias_metadata={"axes": ("mlp",)},
            **common,
        )
        self.dense_out = nnx.Linear(
            cfg.d_ff,
            d,
            kernel_metadata={"axes": ("mlp", "embed")},
            bias_metadata={"axes": ("embed",)},
            **common,
        )

    def _rows(self, x_ND: jax.Array, key: jax.Array | None) -> jax.Array:
        cfg = self.cfg
        h = self.dense_in(self.norm(x_ND))
        k1 = k2 = None
        if key is not None:
            k1, k2 = jax.random.split(key)
        if k1 is not None and cfg.ff_dropout > 0:
            h = dropout(h, cfg.ff_dropout, k1)
        h = self.dense_out(ACTIVATIONS[cfg.ff_activation](h))
        if k2 is not None and cfg.hidden_dropout > 0:
            h = dropout(h, cfg.hidden_dropout, k2)
        return h

    def __call__(self, x_BLD: jax.Array, *, dropout_key: jax.Array | None = None) -> jax.Array:
        b, length, d = x_BLD.shape
        chunk = self.cfg.ff_chunk_size
        if chunk <= 0 or chunk >= b * length:
            rows = x_BLD.reshape(b * length, d)
            return self._rows(rows, dropout_key).reshape(b, length, d).astype(x_BLD.dtype)
        graphdef, state = nnx.split(self)

        @jax.checkpoint
        def one_chunk(state, x, index, key):
            module = nnx.merge(graphdef, state)
            key = None if key is None else jax.random.fold_in(key, index)
            return module._rows(x, key)

        def chunked(batched, state, key):
            (x,) = batched
            b, length, d = x.shape
            rows = x.reshape(b * length, d)
            n_rows = rows.shape[0]
            padded = jnp.pad(rows, ((0, (-n_rows) % chunk), (0, 0)))
            n_chunks = padded.shape[0] // chunk
            out = jax.lax.map(
                lambda args: one_chunk(state, *args, key),
                (padded.reshape(n_chunks, chunk, d), jnp.arange(n_chunks)),
            )
            return out.reshape(-1, d)[:n_rows].reshape(b, length, d)

        # On a mesh each batch shard loops over its own rows: a loop over rows split across
        # chips would be compiled as an all-gather of every row onto every chip.
        out = shd.per_batch_shard(chunked, (x_BLD,), state, dropout_key)
        return out.astype(x_BLD.dtype)
