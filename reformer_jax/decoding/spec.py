"""The static description of a decode run and the checks that decide whether it can be cached."""

from __future__ import annotations

import dataclasses

from reformer_jax.config import ReformerConfig


@dataclasses.dataclass(frozen=True)
class DecodeSpec:
    """Everything static about a cache (hashable: part of the jit cache key).

    Attributes:
      max_length: positions the cache holds (prompt + new tokens); at most the model's
        positional capacity.
      n_buckets: LSH bucket count used for hashing (the configured one, or the automatic one for
        ``max_length``, which is what a forward pass over ``max_length`` tokens would use); None
        without LSH layers.
      lsh_cache_size: positions kept per (round, bucket) by LSH layers.
      exact_lsh: LSH layers run exact shared-QK attention (the model does below
        ``full_attention_below``; used when the whole run is shorter than that).
    """

    max_length: int
    n_buckets: int | tuple[int, ...] | None
    lsh_cache_size: int
    exact_lsh: bool


def decode_spec(
    cfg: ReformerConfig,
    max_length: int,
    *,
    lsh_cache_size: int | None = None,
    cached: bool = True,
) -> DecodeSpec:
    """Validates ``cfg`` for (``cached``) decoding and builds the static spec for ``max_length``.

    Every attention kind of the pattern is asked whether it can be cached (its
    ``decode_check``) and which spec fields it sets (its ``decode_options``).
    """
    from reformer_jax.layers.attention import kinds_of

    for kind in dict.fromkeys(kinds_of(cfg)):  # first: a kind's reason beats generic ones
        kind.decode_check(cfg, cached)
    if cached and cfg.residual != "reversible":
        raise ValueError(
            f"cached decoding supports model.residual='reversible' only, got {cfg.residual!r}; "
            "use use_cache=False (recomputes the model for every token)"
        )
    if not cfg.causal:
        raise ValueError(
            "cached decoding needs a causal model (model.causal=True); a bidirectional model "
            "cannot generate left to right"
        )
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    cap = cfg.max_length
    if cap is not None and max_length > cap:
        setting = "axial_shape" if cfg.pos_embedding == "axial" else "max_len"
        raise ValueError(
            f"prompt + max_new_tokens = {max_length} positions exceed the model's positional "
            f"capacity {cap} (model.{setting}); shorten the prompt or generate fewer tokens"
        )
    if lsh_cache_size is None:
        lsh_cache_size = (cfg.lsh_chunks_before + 1) * cfg.lsh_chunk_len
    if lsh_cache_size < 1:
        raise ValueError(f"lsh_cache_size must be >= 1, got {lsh_cache_size}")
    fields = dict(max_length=max_length, n_buckets=None, lsh_cache_size=int(lsh_cache_size))
    fields["exact_lsh"] = False
    for kind in dict.fromkeys(kinds_of(cfg)):
        fields.update(kind.decode_options(cfg, max_length, lsh_cache_size))
    return DecodeSpec(**fields)
