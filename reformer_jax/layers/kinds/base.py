"""The protocol every attention kind answers (one frozen, hashable object per family).

A kind tells the attention layer which projections to create (shared query/key or not, extra
parameters such as Linformer's length projections), tells the model what per-call randomness to
draw (``draw``: LSH rotations, Performer features), runs its kernel (``attend``, returning what
a reversible backward pass must reuse: ``replay``, e.g. LSH's bucket order) and owns its decoding
cache (``decode_check`` / ``prefill`` / ``step``, implemented in :mod:`reformer_jax.decoding`).

Kinds carry no fields: every setting is a flat, prefixed field of
:class:`~reformer_jax.config.ReformerConfig` (``lsh_*``, ``local_*``, ...), passed as ``cfg``.
Being frozen and hashable they can sit in a module's static graph and in jit cache keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import jax

from reformer_jax.kernels import window_pallas

if TYPE_CHECKING:
    from reformer_jax.config import ReformerConfig
    from reformer_jax.decoding.spec import DecodeSpec

#: ``fail(setting, problem, fix)`` raises ``ValueError("model.<setting>: <problem>; <fix>")``.
Fail = Callable[[str, str, str], None]


@dataclasses.dataclass(frozen=True)
class AttentionKind:
    """Defaults for a kind with separate q/k projections, no randomness and no replay.

    Array layout everywhere: ``[batch, heads, length, d_head]`` (``k`` is None when
    ``shared_qk``); decode steps get ``[batch, heads, d_head]`` (one new position per row).
    """

    #: The name used in ``attention_pattern``.
    name: ClassVar[str] = ""
    #: One projection serves as queries and keys (``q`` is the shared query/key, ``k`` None).
    shared_qk: ClassVar[bool] = False
    #: Config fields this kind reads beyond its own ``<name>_*`` ones (see
    #: :func:`reformer_jax.layers.attention.kind_fields`); a field listed here belongs to this
    #: kind even when its name starts with another kind's prefix.
    also_reads: ClassVar[tuple[str, ...]] = ()

    # -- configuration -------------------------------------------------------------------------
    def validate(self, cfg: ReformerConfig, used: bool, fail: Fail) -> None:
        """Checks this kind's config fields (``used``: the kind is in ``attention_pattern``)."""

    # -- parameters and randomness ---------------------------------------------------------------
    def params(self, cfg: ReformerConfig, rngs: Any) -> dict[str, Any]:
        """Extra ``nnx.Param`` objects of one layer, by attribute name (none by default)."""
        return {}

    def shared_params(self, cfg: ReformerConfig, rngs: Any) -> dict[str, Any]:
        """``nnx.Param`` objects shared by every layer of this kind in the model (Linformer's
        layerwise sharing); the model holds them and hands their values to each layer."""
        return {}

    def draw(self, cfg: ReformerConfig, key: jax.Array, length: int) -> Any:
        """The per-call random inputs of one layer for sequences of ``length`` (a pytree of
        arrays without a batch axis, or None). The model derives ``key`` from the step's key and
        the layer index, so training redraws every step and evaluation is fixed."""
        return None

    # -- the kernel ------------------------------------------------------------------------------
    def attend(
        self,
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
        """``(out [B, H, L, d_head], replay)``: the kernel on one layer's heads.

        ``mask`` ``[B, L]`` True for real tokens; ``dropout_key`` None is deterministic;
        ``draws`` what :meth:`draw` returned; ``replay`` None in the forward pass, or what the
        forward pass returned (the reversible backward recomputes with it); ``params`` the
        values of :meth:`params` and :meth:`shared_params` (None when there are none).
        """
        raise NotImplementedError

    def partitionable(self, cfg: ReformerConfig) -> bool:
        """Whether XLA can partition the kernel over mesh axes left to it (False for custom
        calls, e.g. Pallas kernels: the layers then run it on a wholly manual mesh)."""
        return True

    # -- decoding --------------------------------------------------------------------------------
    def decode_check(self, cfg: ReformerConfig, cached: bool) -> None:
        """Raises ``ValueError`` (saying why, and what to do) if this kind cannot decode left to
        right (``cached``: with a cache; False: recomputing the model for every token)."""

    def decode_options(
        self, cfg: ReformerConfig, max_length: int, lsh_cache_size: int | None
    ) -> dict[str, Any]:
        """Fields of :class:`~reformer_jax.decoding.spec.DecodeSpec` this kind sets."""
        return {}

    def prefill(
        self,
        cfg: ReformerConfig,
        spec: DecodeSpec,
        q: jax.Array,
        k: jax.Array | None,
        v: jax.Array,
        *,
        lengths: jax.Array,
        draws: Any,
        params: dict[str, jax.Array] | None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Causal attention over left-aligned prompts ``[B, H, P, d]`` (row ``b`` is real up to
        ``lengths[b]``) and the cache a decode step continues from (batch-first arrays)."""
        raise NotImplementedError

    def step(
        self,
        cfg: ReformerConfig,
        spec: DecodeSpec,
        cache: dict[str, jax.Array],
        q: jax.Array,
        k: jax.Array | None,
        v: jax.Array,
        positions: jax.Array,
        *,
        draws: Any,
        params: dict[str, jax.Array] | None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """One new position per row (``q``, ``k``, ``v`` ``[B, H, d]`` at ``positions [B]``):
        ``(out [B, H, d], new cache)``."""
        raise NotImplementedError


def window_partitionable(cfg: ReformerConfig) -> bool:
    """:meth:`AttentionKind.partitionable` of the kinds that attend through the window kernel."""
    return cfg.window_implementation != "pallas"


def validate_window_implementation(
    cfg: ReformerConfig, used: bool, fail: Fail, chunk_field: str, dropout_field: str
) -> None:
    """What ``window_implementation="pallas"`` needs of a kind that attends through the window
    kernel (LSH, local): tile sizes the kernels take, and no attention dropout."""
    if not used or cfg.window_implementation != "pallas":
        return
    for name in (chunk_field, "d_head"):
        size = getattr(cfg, name)
        if not window_pallas.is_tile_size(size):
            fail(
                name,
                f"{size} is not a power of two of at least 16, which "
                "window_implementation='pallas' needs (the kernels' tiles)",
                "use e.g. 64, or window_implementation='xla'",
            )
    rate = getattr(cfg, dropout_field)
    if rate > 0:
        fail(
            dropout_field,
            f"{rate} > 0, but window_implementation='pallas' has no attention dropout",
            f"set {dropout_field}=0, or window_implementation='xla'",
        )
