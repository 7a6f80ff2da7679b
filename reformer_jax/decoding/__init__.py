"""Cached autoregressive decoding, one module per attention kind's cache.

* :mod:`.spec`: the static, hashable description of a decode run (:class:`DecodeSpec`) and its
  validation (each attention kind's ``decode_check``);
* :mod:`.cache`: the functional cache pytree (:class:`Cache`, batch-first arrays per layer plus
  the layers' random draws);
* :mod:`.full`, :mod:`.local`, :mod:`.lsh`, :mod:`.sparse`, :mod:`.performer`: the cache of
  each attention kind that decodes (what a prefill stores and how a decode step attends to it),
  called by the kinds' ``prefill`` / ``step`` hooks (:mod:`reformer_jax.layers.kinds`;
  Linformer refuses: it is not causal; relative layers sample through :mod:`.memory`);
* :mod:`.memory`: sampling from models with a memory across segments (Transformer-XL,
  Compressive): the memories plus the current segment's tokens;
* :mod:`.stack`: the prompt and one new token through the reversible stack;
* :mod:`.sampling`: logits filters and the sampler; :mod:`.loop`: the public entry points
  (``generate``, ``prefill``, ``decode_step``, ``decode_logits``, ``lower_generate``).

``reformer_jax.generate`` re-exports the public names.
"""

from reformer_jax.decoding.cache import Cache, cache_bytes
from reformer_jax.decoding.loop import (
    GENERATE_DEFAULTS,
    decode_logits,
    decode_step,
    generate,
    lower_generate,
    prefill,
)
from reformer_jax.decoding.sampling import filter_logits, sample_logits
from reformer_jax.decoding.spec import DecodeSpec, decode_spec

__all__ = [
    "GENERATE_DEFAULTS",
    "Cache",
    "DecodeSpec",
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
