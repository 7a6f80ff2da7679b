"""Sampling from a model with a memory across segments (Transformer-XL, Compressive).

The state of a sample is what training carries plus the segment being written:

* ``memory``: the per-layer memories (:mod:`reformer_jax.layers.memory`) of every completed
  segment, updated (and compressed) exactly as in training each time a segment completes;
* the *segment cache*: the tokens of the current, partial segment (``[B, segment_len]``, filled
  up to ``fill``).

Each new token runs the current segment (at most ``segment_len`` tokens) over the memory and
reads the logits at the last written position: a step costs one segment's forward whatever the
sample's length, so samples continue far past the segment length (and past any positional
capacity: the model has none). The segment is recomputed for every token rather than keeping
its keys and values: simpler, and exact; the cost per token is ``O(segment_len * (memory +
segment_len))`` instead of ``O(memory + segment_len)``.

With a memory at least as long as the whole sample the tokens are those of sampling from the
model run on the whole sequence at once (the defining property of the recurrence; tested).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from reformer_jax.decoding.sampling import row_keys, sample_logits
from reformer_jax.layers.memory import init_memory


def generate_with_memory(
    model,
    prompts,
    *,
    max_new_tokens: int,
    segment_len: int | None = None,
    mem_len: int | None = None,
    key: jax.Array | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    stop_token: int | None = None,
    pad_token: int = 0,
) -> jax.Array:
    """Samples ``max_new_tokens`` tokens after equal-length prompts ``[B, P]`` (or ``[P]``).

    Args:
      segment_len: tokens per segment (default: the model's ``mem_len``, the usual training
        segment); the memory advances every ``segment_len`` tokens.
      mem_len: memory length while sampling (default: the model's; may be longer, as in
        evaluation). The compressed memory keeps the model's ``cmem_len``.
      key, temperature, top_k, top_p, greedy: as in :func:`reformer_jax.decoding.generate`
        (row ``b`` uses ``fold_in(key, b)``, its step ``s`` ``fold_in(row_key, s)``).
      stop_token: a row that emits it stops (kept); later positions are ``pad_token``.

    Returns:
      Tokens ``[B, P + max_new_tokens]``.
    """
    cfg = model.cfg
    if not cfg.has_memory:
        raise ValueError(
            "generate_with_memory: the model has no memory (model.mem_len = 0); use "
            "reformer_jax.decoding.generate"
        )
    segment_len = cfg.mem_len if segment_len is None else segment_len
    mem_len = cfg.mem_len if mem_len is None else mem_len
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if not isinstance(segment_len, int) or segment_len < 1:
        raise ValueError(f"segment_len must be a positive int, got {segment_len!r}")
    if cfg.cmem_len and segment_len % cfg.cmem_rate:
        raise ValueError(
            f"segment_len {segment_len} is not a multiple of model.cmem_rate {cfg.cmem_rate}; "
            "sample with the training segment length"
        )
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    prompts = np.asarray(prompts, np.int32)
    if prompts.ndim == 1:
        prompts = prompts[None]
    if prompts.ndim != 2 or prompts.shape[1] < 1:
        raise ValueError(f"prompts must be [B, P] tokens with P >= 1, got shape {prompts.shape}")
    graphdef, state = nnx.split(model)
    greedy = greedy or temperature == 0
    tokens = _generate(
        graphdef,
        state,
        jnp.asarray(prompts),
        row_keys(key, prompts.shape[0]),
        jnp.float32(1.0 if greedy else temperature),
        jnp.float32(1.0 if top_p is None else top_p),
        max_new_tokens=max_new_tokens,
        segment_len=segment_len,
        mem_len=mem_len,
        top_k=top_k,
        greedy=greedy,
        use_top_p=top_p is not None,
        pad_token=pad_token,
    )
    if stop_token is not None:
        generated = tokens[:, prompts.shape[1] :]
        stopped = jnp.cumsum(generated == stop_token, axis=1) - (generated == stop_token) > 0
        generated = jnp.where(stopped, pad_token, generated)
        tokens = jnp.concatenate([tokens[:, : prompts.shape[1]], generated], axis=1)
    return tokens


@functools.partial(
    jax.jit,
    static_argnames=(
        "graphdef",
        "max_new_tokens",
        "segment_len",
        "mem_len",
        "top_k",
        "greedy",
        "use_top_p",
        "pad_token",
    ),
)
def _generate(
    graphdef,
    state,
    prompts,
    keys,
    temperature,
    top_p,
    *,
    max_new_tokens,
    segment_len,
    mem_len,
    top_k,
    greedy,
    use_top_p,
    pad_token,
):
    model = nnx.merge(graphdef, state)
    cfg = model.cfg
    batch, prompt_len = prompts.shape
    memory = init_memory(cfg, batch, mem_len)
    n_full, fill = divmod(prompt_len, segment_len)
    last_logits = None
    for s in range(n_full):  # the prompt's complete segments go to the memory
        logits, memory, _ = model.with_memory(
            prompts[:, s * segment_len : (s + 1) * segment_len], memory
        )
        last_logits = logits[:, -1]
    buffer = jnp.full((batch, segment_len), pad_token, jnp.int32)
    if fill:
        buffer = buffer.at[:, :fill].set(prompts[:, n_full * segment_len :])
        logits, _, _ = model.with_memory(buffer, memory)
        last_logits = logits[:, fill - 1]

    def sample(logits, step):
        def one(key, row_logits):
            return sample_logits(
                jax.random.fold_in(key, step),
                row_logits,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p if use_top_p else None,
                greedy=greedy,
            )

        return jax.vmap(one)(keys, logits)

    def body(carry, step):
        memory, buffer, fill, last_logits = carry
        token = sample(last_logits, step)
        buffer = jax.lax.dynamic_update_slice(buffer, token[:, None], (jnp.int32(0), fill))
        logits, next_memory, _ = model.with_memory(buffer, memory)
        last_logits = jax.lax.dynamic_index_in_dim(logits, fill, axis=1, keepdims=False)
        full = fill + 1 == segment_len
        memory = jax.tree.map(lambda new, old: jnp.where(full, new, old), next_memory, memory)
        buffer = jnp.where(full, jnp.full_like(buffer, pad_token), buffer)
        fill = jnp.where(full, 0, fill + 1)
        return (memory, buffer, fill, last_logits), token

    carry = (memory, buffer, jnp.int32(fill), last_logits)
    _, new_tokens = jax.lax.scan(body, carry, jnp.arange(max_new_tokens))
    return jnp.concatenate([prompts, new_tokens.T.astype(jnp.int32)], axis=1)
