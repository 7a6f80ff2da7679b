"""Self-attention layer: LayerNorm, projections, one attention kernel, output projection.

Attention selection is a small dispatch over the pure kernels (:func:`attend`); new variants
add a kernel and a branch there.
"""

from __future__ import annotations

import jax
from flax import nnx

from reformer_jax import kernels
from reformer_jax.config import ATTENTION_KINDS, ReformerConfig


def _dense(cfg: ReformerConfig, d_in: int, d_out: int, axes: tuple, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
        d_in,
        d_out,
        use_bias=False,
        dtype=cfg.compute_dtype,
        param_dtype=cfg.parameter_dtype,
        kernel_init=nnx.initializers.glorot_uniform(),
        kernel_metadata={"axes": axes},
        rngs=rngs,
    )


def layer_rotations(cfg: ReformerConfig, hash_key: jax.Array, n_buckets) -> jax.Array:
    """The rotations an LSH layer uses for a given key ``[heads, d_head, n_hashes, columns]``."""
    return kernels.draw_rotations(hash_key, cfg.n_heads, cfg.d_head, cfg.lsh_n_hashes, n_buckets)


def lsh_n_buckets(cfg: ReformerConfig, length: int):
    """The configured bucket count, or the automatic one for this (padded) length."""
    if cfg.lsh_n_buckets is not None:
        return cfg.lsh_n_buckets
    padded = length + (-length) % cfg.lsh_chunk_len
    return kernels.auto_n_buckets(padded, cfg.lsh_chunk_len)


def attend(
    kind: str,
    cfg: ReformerConfig,
    q: jax.Array,
    k: jax.Array | None,
    v: jax.Array,
    *,
    mask: jax.Array | None,
    dropout_key: jax.Array | None,
    rotations: jax.Array | None = None,
    buckets: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array | None]:
    """Runs the kernel of ``kind`` on ``[batch, heads, length, d_head]`` arrays.

    For ``"lsh"``, ``q`` is the shared query/key and ``k`` is unused; returns the output and, for
    LSH, the bucket ids it used (so a reversible backward pass can reuse them).
    """
    length = q.shape[2]
    if kind == "lsh" and length < cfg.full_attention_below:
        out = kernels.full_attention(
            q,
            kernels.unit_keys(q),
            v,
            scale=1.0,
            exclude_self=True,
            causal=cfg.causal,
            mask=mask,
            dropout_rate=cfg.lsh_dropout if dropout_key is not None else 0.0,
            dropout_key=dropout_key,
        )
        return out, None
    if kind == "lsh":
        n_buckets = lsh_n_buckets(cfg, length)
        if buckets is None:
            buckets = kernels.hash_vectors(q, rotations, n_buckets, mask)
        out = kernels.lsh_attention(
            q,
            v,
            rotations,
            n_buckets=n_buckets,
            chunk_len=cfg.lsh_chunk_len,
            n_chunks_before=cfg.lsh_chunks_before,
            n_chunks_after=cfg.lsh_chunks_after,
            causal=cfg.causal,
            mask=mask,
            dropout_rate=cfg.lsh_dropout if dropout_key is not None else 0.0,
            dropout_key=dropout_key,
            attend_across_buckets=cfg.lsh_attend_across_buckets,
            buckets=buckets,
        )
        return out, buckets
    if kind == "local":
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
        )
        return out, None
    if kind == "full":
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
    raise ValueError(f"unknown attention kind {kind!r}; use one of {list(ATTENTION_KINDS)}")


class SelfAttention(nnx.Module):
    """``x [B, L, d_model] -> [B, L, d_model]``: LN, heads, kernel, output projection, dropout.

    Holds parameters only; every random input (dropout key, LSH rotations) is an argument, so
    the reversible backward pass can replay the exact forward computation.
    """

    def __init__(self, cfg: ReformerConfig, kind: str, *, rngs: nnx.Rngs):
        self.cfg, self.kind = cfg, kind
        d, inner = cfg.d_model, cfg.n_heads * cfg.d_head
        self.norm = nnx.LayerNorm(
            d,
            epsilon=cfg.ln_eps,
            dtype=cfg.compute_dtype,
            param_dtype=cfg.parameter_dtype,
            rngs=rngs,
        )
        if kind == "lsh":
            self.qk = _dense(cfg, d, inner, ("embed", "heads"), rngs)
        else:
            self.q = _dense(cfg, d, inner, ("embed", "heads"), rngs)
            self.k = _dense(cfg, d, inner, ("embed", "heads"), rngs)
        self.v = _dense(cfg, d, inner, ("embed", "heads"), rngs)
        self.out = _dense(cfg, inner, d, ("heads", "embed"), rngs)

    def _heads(self, x: jax.Array) -> jax.Array:
        b, length, _ = x.shape
        return x.reshape(b, length, self.cfg.n_heads, self.cfg.d_head).transpose(0, 2, 1, 3)

    def __call__(
        self,
        x_BLD: jax.Array,
        *,
        mask: jax.Array | None = None,
        dropout_key: jax.Array | None = None,
        rotations: jax.Array | None = None,
        buckets: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array | None]:
        """Returns the branch output and the LSH bucket ids used (None for other kinds).

        ``dropout_key`` None means deterministic (no dropout). LSH layers need ``rotations``
        (see :func:`layer_rotations`) unless running with exact attention below
        ``full_attention_below``.
        """
        h = self.norm(x_BLD)
        v = self._heads(self.v(h))
        attn_key = hidden_key = None
        if dropout_key is not None:
            attn_key, hidden_key = jax.random.split(dropout_key)
        if self.kind == "lsh":
            q, k = self._heads(self.qk(h)), None
        else:
            q, k = self._heads(self.q(h)), self._heads(self.k(h))
        out, used = attend(
            self.kind,
            self.cfg,
            q,
            k,
            v,
            mask=mask,
            dropout_key=attn_key,
            rotations=rotations,
            buckets=buckets,
        )
        b, _, length, _ = out.shape
        y = self.out(out.transpose(0, 2, 1, 3).reshape(b, length, -1))
        if hidden_key is not None and self.cfg.hidden_dropout > 0:
            y = kernels.masking.dropout(y, self.cfg.hidden_dropout, hidden_key)
        return y.astype(x_BLD.dtype), used
