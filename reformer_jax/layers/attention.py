"""Self-attention layer: LayerNorm, projections, one attention kind's kernel, output projection.

The attention kinds (one frozen object per family, :mod:`reformer_jax.layers.kinds`) are
collected in :data:`KINDS`; a new family adds its kernel module, its config fields, its kind
module and one line here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from reformer_jax import kernels
from reformer_jax import sharding as shd
from reformer_jax.config import ReformerConfig
from reformer_jax.layers.kinds.base import AttentionKind
from reformer_jax.layers.kinds.full import Full
from reformer_jax.layers.kinds.linformer import Linformer
from reformer_jax.layers.kinds.local import Local
from reformer_jax.layers.kinds.lsh import LSH, layer_rotations, lsh_n_buckets
from reformer_jax.layers.kinds.performer import Performer
from reformer_jax.layers.kinds.relative import Relative
from reformer_jax.layers.kinds.sparse import Sparse

#: Every attention kind by its ``attention_pattern`` name.
KINDS: dict[str, AttentionKind] = {
    kind.name: kind
    for kind in (LSH(), Local(), Full(), Sparse(), Linformer(), Performer(), Relative())
}
ATTENTION_KINDS = tuple(KINDS)

__all__ = [
    "ATTENTION_KINDS",
    "KINDS",
    "AttentionKind",
    "SelfAttention",
    "attend",
    "get_kind",
    "kind_fields",
    "kinds_of",
    "layer_rotations",
    "lsh_n_buckets",
]


def get_kind(kind: str | AttentionKind) -> AttentionKind:
    """The kind object of a pattern entry (``"lsh"``, ...); unknown names list the valid ones."""
    if isinstance(kind, AttentionKind):
        return kind
    try:
        return KINDS[kind]
    except (KeyError, TypeError):
        raise ValueError(f"unknown attention kind {kind!r}; use one of {list(KINDS)}") from None


def kind_fields(kind: str | AttentionKind) -> tuple[str, ...]:
    """The `ReformerConfig` fields that configure ``kind``, in the config's order: its
    ``<name>_*`` fields (less any another kind claims in its ``also_reads``, e.g. LSH's
    ``full_attention_below`` is not a setting of ``full``) and its own ``also_reads``."""
    kind = get_kind(kind)
    claimed = {f for other in KINDS.values() if other.name != kind.name for f in other.also_reads}
    names = [f.name for f in dataclasses.fields(ReformerConfig)]
    return tuple(
        n
        for n in names
        if n in kind.also_reads or (n.startswith(f"{kind.name}_") and n not in claimed)
    )


def kinds_of(cfg: ReformerConfig) -> list[AttentionKind]:
    """The kind object of every pattern position, in order."""
    return [get_kind(name) for name in cfg.attention_pattern]


def attend(
    kind: str | AttentionKind,
    cfg: ReformerConfig,
    q: jax.Array,
    k: jax.Array | None,
    v: jax.Array,
    *,
    mask: jax.Array | None,
    dropout_key: jax.Array | None,
    draws: Any = None,
    replay: Any = None,
    params: dict[str, jax.Array] | None = None,
) -> tuple[jax.Array, Any]:
    """Runs the kernel of ``kind`` on ``[batch, heads, length, d_head]`` arrays.

    Returns the output and the kind's replay (e.g. LSH's bucket order; see
    :meth:`AttentionKind.attend`).
    """
    return get_kind(kind).attend(
        cfg, q, k, v, mask=mask, dropout_key=dropout_key, draws=draws, replay=replay, params=params
    )


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


class SelfAttention(nnx.Module):
    """``x [B, L, d_model] -> [B, L, d_model]``: LN, heads, kernel, output projection, dropout.

    Holds parameters only; every random input (dropout key, the kind's draws) is an argument,
    so the reversible backward pass can replay the exact forward computation.
    """

    def __init__(self, cfg: ReformerConfig, kind: str | AttentionKind, *, rngs: nnx.Rngs):
        self.cfg, self.kind = cfg, get_kind(kind)
        d, inner = cfg.d_model, cfg.n_heads * cfg.d_head
        self.norm = nnx.LayerNorm(
            d,
            epsilon=cfg.ln_eps,
            dtype=cfg.compute_dtype,
            param_dtype=cfg.parameter_dtype,
            rngs=rngs,
        )
        if self.kind.shared_qk:
            self.qk = _dense(cfg, d, inner, ("embed", "heads"), rngs)
        else:
            self.q = _dense(cfg, d, inner, ("embed", "heads"), rngs)
            self.k = _dense(cfg, d, inner, ("embed", "heads"), rngs)
        self.v = _dense(cfg, d, inner, ("embed", "heads"), rngs)
        self.out = _dense(cfg, inner, d, ("heads", "embed"), rngs)
        extra = self.kind.params(cfg, rngs)
        for name, param in extra.items():
            setattr(self, name, param)
        self.extra_names = tuple(extra)

    def _heads(self, x: jax.Array) -> jax.Array:
        b, length, _ = x.shape
        return x.reshape(b, length, self.cfg.n_heads, self.cfg.d_head).transpose(0, 2, 1, 3)

    def project(self, h_BLD: jax.Array) -> tuple[jax.Array, jax.Array | None, jax.Array]:
        """``(q, k, v)`` heads ``[B, H, L, d_head]`` of normalised inputs (``k`` None and ``q``
        the shared query/key for shared-QK kinds)."""
        v = self._heads(self.v(h_BLD))
        if self.kind.shared_qk:
            return self._heads(self.qk(h_BLD)), None, v
        return self._heads(self.q(h_BLD)), self._heads(self.k(h_BLD)), v

    def extra_params(self, shared: dict[str, jax.Array] | None = None) -> dict | None:
        """Values of the kind's extra parameters, the layer's own and the model-level
        ``shared`` ones (None if there are none)."""
        values = {name: getattr(self, name)[...] for name in self.extra_names}
        values.update(shared or {})
        return values or None

    def merge_heads(self, out_BHLd: jax.Array) -> jax.Array:
        """Output projection of the heads ``[B, H, L, d_head] -> [B, L, d_model]``."""
        b, _, length, _ = out_BHLd.shape
        return self.out(out_BHLd.transpose(0, 2, 1, 3).reshape(b, length, -1))

    def __call__(
        self,
        x_BLD: jax.Array,
        *,
        mask: jax.Array | None = None,
        dropout_key: jax.Array | None = None,
        draws: Any = None,
        replay: Any = None,
        shared: dict[str, jax.Array] | None = None,
        memory_BMD: jax.Array | None = None,
        memory_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, Any]:
        """Returns the branch output and the kind's replay (LSH's bucket order; None for most).

        ``dropout_key`` None means deterministic (no dropout). ``draws`` is what the kind's
        ``draw`` returned (LSH: the rotations of :func:`layer_rotations`); ``replay`` what an
        earlier call returned, to recompute exactly that call (the reversible backward);
        ``shared`` the values of the kind's model-level parameters (``shared_params``).

        ``memory_BMD`` (kinds with ``takes_memory``, Transformer-XL): ``M`` earlier states of
        this layer's input, oldest first; the segment's queries attend over keys of
        ``[memory; segment]`` (both through this layer's LayerNorm and projections).
        ``memory_mask [B, M]`` is True for filled memory slots.
        """
        if memory_BMD is None:
            q, k, v = self.project(self.norm(x_BLD))
        else:
            if self.kind.shared_qk or not getattr(self.kind, "takes_memory", False):
                raise ValueError(
                    f"{self.kind.name} attention cannot attend to a memory; use the relative kind"
                )
            b, n_mem = memory_BMD.shape[:2]
            context = jnp.concatenate([memory_BMD.astype(x_BLD.dtype), x_BLD], axis=1)
            h = self.norm(context)
            q = self._heads(self.q(h[:, n_mem:]))  # queries of the segment only
            k, v = self._heads(self.k(h)), self._heads(self.v(h))
            seg_mask = jnp.ones(x_BLD.shape[:2], bool) if mask is None else mask.astype(bool)
            mem_mask = (
                jnp.ones((b, n_mem), bool) if memory_mask is None else memory_mask.astype(bool)
            )
            mask = jnp.concatenate([mem_mask, seg_mask], axis=1)
        attn_key = hidden_key = None
        if dropout_key is not None:
            attn_key, hidden_key = jax.random.split(dropout_key)

        def kernel(batched, whole, dropout_key):
            q, k, v, mask, replay = batched
            draws, params = whole
            return self.kind.attend(
                self.cfg,
                q,
                k,
                v,
                mask=mask,
                dropout_key=dropout_key,
                draws=draws,
                replay=replay,
                params=params,
            )

        # On a mesh, each batch shard runs the kernel on its own rows (the kernels' loops
        # would otherwise gather every row onto every chip); outside one, a plain call.
        out, replay = shd.per_batch_shard(
            kernel,
            (q, k, v, mask, replay),
            (draws, self.extra_params(shared)),
            attn_key,
            partitionable=self.kind.partitionable(self.cfg),
        )
        y = shd.constrain_batch(self.merge_heads(out))
        if hidden_key is not None and self.cfg.hidden_dropout > 0:
            y = kernels.masking.dropout(y, self.cfg.hidden_dropout, hidden_key)
        return y.astype(x_BLD.dtype), replay
