"""Sampling and fast autoregressive decoding: the public names of :mod:`reformer_jax.decoding`.

``generate(model, prompts, max_new_tokens=..., key=...)`` runs one jitted program: a *prefill*
pass over the prompt that fills a fixed-size cache per layer, then a ``lax.while_loop`` of
*decode steps*, each feeding one token per row through the reversible stack and attending to
the cache instead of re-running the sequence. Each attention kind's cache lives in its own
module of :mod:`reformer_jax.decoding` (full: K/V of every position; local: a ring of the band;
LSH: per-round bucket tables; see ``docs/sampling.md``). This module keeps the historical import
path (``from reformer_jax import generate as gen``) working.
"""

from __future__ import annotations

import jax

from reformer_jax.config import ReformerConfig
from reformer_jax.decoding import lsh as _lsh_cache
from reformer_jax.decoding.cache import Cache, cache_bytes
from reformer_jax.decoding.cache import place as _place
from reformer_jax.decoding.loop import (
    GENERATE_DEFAULTS,
    decode_logits,
    decode_step,
    generate,
    lower_generate,
    prefill,
)
from reformer_jax.decoding.lsh import bucket_attention
from reformer_jax.decoding.lsh import bucket_prefill as _bucket_prefill
from reformer_jax.decoding.sampling import filter_logits, sample_logits
from reformer_jax.decoding.spec import DecodeSpec, decode_spec
from reformer_jax.decoding.stack import position_rows as _position_rows

__all__ = [
    "GENERATE_DEFAULTS",
    "Cache",
    "DecodeSpec",
    "bucket_attention",
    "cache_bytes",
    "decode_logits",
    "decode_spec",
    "decode_step",
    "filter_logits",
    "generate",
    "lower_generate",
    "prefill",
    "sample_logits",
]

# Internal helpers some tests reach through this module (kept under their historical names).
_ = (_bucket_prefill, _place, _position_rows)


def _lsh_step(
    cfg: ReformerConfig, spec: DecodeSpec, cache: dict, qk, v, t, mask_value, self_value, sdt
) -> jax.Array:
    """The bucket-cache step in its historical form: ``cache`` holds the layer's rotations
    under ``"rotations"`` and gets its bucket tables updated in place (dict entries); the mask
    values and score dtype are those of ``qk``'s dtype (the arguments are ignored)."""
    del cfg, mask_value, self_value, sdt
    out, tables = _lsh_cache.bucket_step(spec, cache, qk, v, t, cache["rotations"])
    cache.update(tables)
    return out
