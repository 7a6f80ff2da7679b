"""The public decoding entry points: ``generate`` (one jitted program: prefill, then a
``lax.while_loop`` of decode steps), ``prefill`` / ``decode_step`` (the step-level API),
``decode_logits`` (teacher-forced logits of the cached decoder) and ``lower_generate``.

Prompts of different lengths are *left-aligned*: row ``b`` of ``prompts`` holds its prompt in
``prompts[b, :prompt_lengths[b]]`` (the rest is ignored), so every row keeps its natural
positions and gives the same result as when run alone. The output row is the prompt, the new
tokens, then padding.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from reformer_jax.config import ReformerConfig
from reformer_jax.decoding.cache import Cache
from reformer_jax.decoding.sampling import row_keys, sample_logits
from reformer_jax.decoding.spec import DecodeSpec, decode_spec
from reformer_jax.decoding.stack import head, layer_draws, prefill_impl, step_impl


def _default_hash_rng(cfg: ReformerConfig) -> jax.Array:
    """The model's evaluation default: ``key(hash_seed)`` if set, else ``key(0)``."""
    return jax.random.key(cfg.hash_seed if cfg.hash_seed is not None else 0)


def _as_prompts(prompts, prompt_lengths) -> tuple[np.ndarray, np.ndarray]:
    """Left-aligned int32 prompts ``[B, P]`` and their lengths ``[B]`` (validated)."""
    if isinstance(prompts, list | tuple) and prompts and not np.isscalar(prompts[0]):
        rows = [np.asarray(r, np.int32).reshape(-1) for r in prompts]
        width = max(len(r) for r in rows)
        array = np.zeros((len(rows), width), np.int32)
        for i, r in enumerate(rows):
            array[i, : len(r)] = r
        lengths = np.array([len(r) for r in rows], np.int32)
        if prompt_lengths is not None:
            raise ValueError("prompt_lengths is implied by a list of prompts; do not pass both")
    else:
        array = np.asarray(prompts)
        if array.ndim == 1:
            array = array[None]
        if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(
                f"prompts must be int tokens [batch, length] (or one row, or a list of rows), "
                f"got {array.dtype} {array.shape}"
            )
        array = array.astype(np.int32)
        if prompt_lengths is None:
            lengths = np.full((array.shape[0],), array.shape[1], np.int32)
        else:
            lengths = np.asarray(prompt_lengths, np.int32).reshape(-1)
            if lengths.shape != (array.shape[0],):
                raise ValueError(
                    f"prompt_lengths must have one entry per row ({array.shape[0]}), got "
                    f"{lengths.shape}"
                )
    if array.shape[1] == 0 or (lengths < 1).any() or (lengths > array.shape[1]).any():
        raise ValueError(
            f"every prompt needs 1 .. {array.shape[1]} tokens (the model predicts from the "
            f"last prompt token), got lengths {lengths.tolist()}"
        )
    return array, lengths


def _draws(model, spec: DecodeSpec, hash_rng: jax.Array | None) -> tuple[Any, ...]:
    """The layers' random draws for the run (fixed: the model's evaluation default key)."""
    cfg = model.cfg
    return layer_draws(model, spec, _default_hash_rng(cfg) if hash_rng is None else hash_rng)


@functools.partial(jax.jit, static_argnames=("graphdef", "spec", "all_logits"))
def _prefill_jit(graphdef, state, prompts, lengths, draws, *, spec, all_logits):
    model = nnx.merge(graphdef, state)
    x1, x2, caches = prefill_impl(model, prompts, lengths, draws, spec)
    if all_logits:
        logits = head(model, x1, x2)
    else:
        rows = jnp.arange(prompts.shape[0])
        logits = head(model, x1[rows, lengths - 1], x2[rows, lengths - 1])
    return logits, Cache(caches, draws, spec)


@functools.partial(jax.jit, static_argnames=("graphdef",), donate_argnames=("cache",))
def _step_jit(graphdef, state, cache, tokens, positions):
    model = nnx.merge(graphdef, state)
    return step_impl(model, cache, tokens, positions)


def prefill(
    model,
    prompts,
    prompt_lengths=None,
    *,
    max_length: int,
    hash_rng: jax.Array | None = None,
    lsh_cache_size: int | None = None,
) -> tuple[jax.Array, Cache]:
    """Runs the prompts and builds a cache for ``max_length`` positions.

    Args:
      model: a `ReformerLM`.
      prompts: left-aligned int tokens ``[B, P]`` (row ``b`` uses ``[:prompt_lengths[b]]``).
      max_length: positions the cache holds (checked against the positional capacity).
      hash_rng: key of the layers' random draws (LSH rotations, ...; default: the model's
        evaluation default).
      lsh_cache_size: same-bucket positions kept per LSH round (default
        ``(lsh_chunks_before + 1) * lsh_chunk_len``).

    Returns:
      The logits after each row's last prompt token ``[B, vocab]`` and the cache.
    """
    array, lengths = _as_prompts(prompts, prompt_lengths)
    spec = decode_spec(model.cfg, max(max_length, array.shape[1]), lsh_cache_size=lsh_cache_size)
    graphdef, state = nnx.split(model)
    return _prefill_jit(
        graphdef,
        state,
        jnp.asarray(array),
        jnp.asarray(lengths),
        _draws(model, spec, hash_rng),
        spec=spec,
        all_logits=False,
    )


def decode_step(model, cache: Cache, tokens, positions) -> tuple[jax.Array, Cache]:
    """Feeds ``tokens [B]`` at ``positions [B]`` (each row's next position); returns the logits
    ``[B, vocab]`` predicting the following token and the updated cache (the input cache is
    donated: do not reuse it)."""
    graphdef, state = nnx.split(model)
    tokens = jnp.asarray(tokens, jnp.int32).reshape(-1)
    positions = jnp.asarray(positions, jnp.int32).reshape(-1)
    return _step_jit(graphdef, state, cache, tokens, positions)


@functools.partial(jax.jit, static_argnames=("graphdef", "spec", "prompt_length"))
def _decode_logits_jit(graphdef, state, tokens, draws, *, spec, prompt_length):
    model = nnx.merge(graphdef, state)
    batch, length = tokens.shape
    lengths = jnp.full((batch,), prompt_length, jnp.int32)
    x1, x2, caches = prefill_impl(model, tokens[:, :prompt_length], lengths, draws, spec)
    first = head(model, x1, x2)

    def body(cache, xs):
        token, position = xs
        logits, cache = step_impl(model, cache, token, jnp.full((batch,), position, jnp.int32))
        return cache, logits

    positions = jnp.arange(prompt_length, length)
    cache = Cache(caches, draws, spec)
    _, rest = jax.lax.scan(body, cache, (tokens[:, prompt_length:].T, positions))
    return jnp.concatenate([first, rest.transpose(1, 0, 2)], axis=1)


def decode_logits(
    model,
    tokens,
    *,
    prompt_length: int = 1,
    hash_rng: jax.Array | None = None,
    lsh_cache_size: int | None = None,
) -> jax.Array:
    """Teacher-forced logits ``[B, L, vocab]`` of the cached decoder.

    The first ``prompt_length`` tokens go through the prefill pass, every later token through a
    decode step (one position at a time, as in `generate`). ``logits[:, t]`` predicts token
    ``t + 1``, as for ``model(tokens)``, so ``lm_loss`` applies unchanged.
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    if tokens.ndim != 2 or not 1 <= prompt_length <= tokens.shape[1]:
        raise ValueError(
            f"tokens must be [batch, length] with 1 <= prompt_length <= length, got "
            f"{tokens.shape} and prompt_length={prompt_length}"
        )
    spec = decode_spec(model.cfg, tokens.shape[1], lsh_cache_size=lsh_cache_size)
    graphdef, state = nnx.split(model)
    return _decode_logits_jit(
        graphdef,
        state,
        tokens,
        _draws(model, spec, hash_rng),
        spec=spec,
        prompt_length=prompt_length,
    )


@functools.partial(
    jax.jit,
    static_argnames=(
        "graphdef",
        "spec",
        "max_new_tokens",
        "top_k",
        "greedy",
        "use_top_p",
        "stop_token",
        "pad_token",
        "use_cache",
    ),
)
def _generate_jit(
    graphdef,
    state,
    prompts,
    lengths,
    row_keys,
    draws,
    temperature,
    top_p,
    *,
    spec,
    max_new_tokens,
    top_k,
    greedy,
    use_top_p,
    stop_token,
    pad_token,
    use_cache,
):
    model = nnx.merge(graphdef, state)
    batch, plen = prompts.shape
    total = spec.max_length
    rows = jnp.arange(batch)
    valid = jnp.arange(plen)[None, :] < lengths[:, None]
    buf = jnp.full((batch, total), pad_token, jnp.int32)
    buf = buf.at[:, :plen].set(jnp.where(valid, prompts, pad_token))

    def pick(step, logits):
        keys = jax.vmap(jax.random.fold_in, (0, None))(row_keys, step)
        return jax.vmap(
            lambda k, lg: sample_logits(
                k,
                lg,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p if use_top_p else None,
                greedy=greedy,
            )
        )(keys, logits)

    def forward(buf, last):  # uncached: the whole model on the buffer, logits at ``last``
        mask = jnp.arange(total)[None, :] <= last[:, None]
        explicit = {i: d for i, d in enumerate(draws) if d is not None}
        return model(buf, mask=mask, draws=explicit or None)[rows, last]

    if use_cache:
        x1, x2, layers = prefill_impl(model, prompts, lengths, draws, spec)
        caches = Cache(layers, draws, spec)
        logits = head(model, x1[rows, lengths - 1], x2[rows, lengths - 1])
    else:
        caches = ()
        logits = forward(buf, lengths - 1)
    stop = -1 if stop_token is None else stop_token
    tok = pick(0, logits)
    buf = buf.at[rows, lengths].set(tok)
    done = tok == stop
    n_new = jnp.ones((batch,), jnp.int32)

    def cond(carry):
        step, _, _, _, done, _ = carry
        return (step < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        step, buf, caches, prev, done, n_new = carry
        where = lengths + step - 1  # position of ``prev``
        if use_cache:
            logits, caches = step_impl(model, caches, prev, where)
        else:
            logits = forward(buf, where)
        tok = jnp.where(done, pad_token, pick(step, logits))
        buf = buf.at[rows, where + 1].set(tok)
        n_new = n_new + (~done).astype(jnp.int32)
        done = done | (tok == stop)
        return step + 1, buf, caches, tok, done, n_new

    carry = (jnp.int32(1), buf, caches, tok, done, n_new)
    _, buf, _, _, _, n_new = jax.lax.while_loop(cond, body, carry)
    return buf, lengths + n_new


def generate(
    model,
    prompts,
    *,
    max_new_tokens: int,
    key: jax.Array | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    stop_token: int | None = None,
    pad_token: int = 0,
    prompt_lengths=None,
    use_cache: bool = True,
    hash_rng: jax.Array | None = None,
    lsh_cache_size: int | None = None,
    return_lengths: bool = False,
    segment_len: int | None = None,
    mem_len: int | None = None,
):
    """Autoregressive sampling from a causal `ReformerLM`; one jitted program.

    Args:
      model: the model (evaluation mode: no dropout).
      prompts: int tokens ``[B, P]`` (or ``[P]``, or a list of token lists of different
        lengths). Prompts are left-aligned: row ``b`` is ``prompts[b, :prompt_lengths[b]]``.
      max_new_tokens: tokens to generate per row; ``P + max_new_tokens`` must fit the model's
        positional capacity (a ``ValueError`` says so otherwise).
      key: a PRNG key, or one key per row (shape ``[B]``). With one key, row ``b`` uses
        ``fold_in(key, b)``; step ``s`` of a row uses ``fold_in(row_key, s)``, so a row's output
        depends only on its key, prompt and the model, not on the rest of the batch. Unused
        when greedy.
      temperature: divides the logits; 0 means greedy.
      top_k, top_p: keep the k most probable tokens / the nucleus of mass ``top_p``
        (:func:`filter_logits`).
      greedy: argmax decoding.
      stop_token: a row that emits it stops (the stop token is kept); the rest of the row is
        ``pad_token``. The loop ends when every row has stopped.
      pad_token: fills positions after a row's end (and after its prompt in the input).
      prompt_lengths: ``[B]`` lengths of the left-aligned prompts (default: all ``P``).
      use_cache: False recomputes the whole model on the sequence buffer for every token (the
        reference; exact training-kernel semantics also for LSH layers).
      hash_rng: key of the layers' random draws (LSH rotations, ...; default: the model's
        evaluation default, so the uncached path equals ``model(tokens)``).
      lsh_cache_size: same-bucket positions each LSH layer keeps per hash round.
      return_lengths: also return each row's length (prompt + generated, stop token included).

    Returns:
      Tokens ``[B, P + max_new_tokens]`` (and the lengths ``[B]`` if ``return_lengths``).

    Models with a memory across segments (``model.mem_len > 0``) sample through
    :func:`reformer_jax.decoding.memory.generate_with_memory` (equal-length prompts, the cache
    options do not apply; ``segment_len`` and ``mem_len`` are its, default: the model's
    ``mem_len``).
    """
    if model.cfg.has_memory:
        from reformer_jax.decoding.memory import generate_with_memory

        if prompt_lengths is not None or not use_cache or lsh_cache_size or return_lengths:
            raise ValueError(
                "generate: a model with a memory samples equal-length prompts through "
                "decoding.memory.generate_with_memory; drop prompt_lengths, use_cache, "
                "lsh_cache_size and return_lengths"
            )
        return generate_with_memory(
            model,
            prompts,
            max_new_tokens=max_new_tokens,
            key=key,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            greedy=greedy,
            stop_token=stop_token,
            pad_token=pad_token,
            segment_len=segment_len,
            mem_len=mem_len,
        )
    args, statics = _generate_args(
        model,
        prompts,
        max_new_tokens=max_new_tokens,
        key=key,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        greedy=greedy,
        stop_token=stop_token,
        pad_token=pad_token,
        prompt_lengths=prompt_lengths,
        use_cache=use_cache,
        hash_rng=hash_rng,
        lsh_cache_size=lsh_cache_size,
    )
    tokens, out_lengths = _generate_jit(*args, **statics)
    return (tokens, out_lengths) if return_lengths else tokens


def _generate_args(
    model,
    prompts,
    *,
    max_new_tokens,
    key,
    temperature,
    top_k,
    top_p,
    greedy,
    stop_token,
    pad_token,
    prompt_lengths,
    use_cache,
    hash_rng,
    lsh_cache_size,
):
    """Validates `generate`'s arguments; returns the jitted program's (args, static kwargs)."""
    cfg = model.cfg
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    for name, token in (("stop_token", stop_token), ("pad_token", pad_token)):
        if token is not None and not 0 <= token < cfg.vocab_size:
            raise ValueError(f"{name} {token} is outside the vocabulary [0, {cfg.vocab_size})")
    array, lengths = _as_prompts(prompts, prompt_lengths)
    greedy = greedy or temperature == 0
    total = array.shape[1] + max_new_tokens
    if use_cache:
        spec = decode_spec(cfg, total, lsh_cache_size=lsh_cache_size)
    else:  # the same checks and random draws, no cache
        spec = decode_spec(cfg, total, lsh_cache_size=1, cached=False)
    graphdef, state = nnx.split(model)
    args = (
        graphdef,
        state,
        jnp.asarray(array),
        jnp.asarray(lengths),
        row_keys(key, array.shape[0]),
        _draws(model, spec, hash_rng),
        jnp.float32(1.0 if greedy else temperature),
        jnp.float32(1.0 if top_p is None else top_p),
    )
    statics = dict(
        spec=spec,
        max_new_tokens=max_new_tokens,
        top_k=top_k,
        greedy=greedy,
        use_top_p=top_p is not None,
        stop_token=stop_token,
        pad_token=pad_token,
        use_cache=use_cache,
    )
    return args, statics


#: Keyword defaults of `generate` (besides ``max_new_tokens``), shared with its AOT form.
GENERATE_DEFAULTS = dict(
    key=None,
    temperature=1.0,
    top_k=None,
    top_p=None,
    greedy=False,
    stop_token=None,
    pad_token=0,
    prompt_lengths=None,
    use_cache=True,
    hash_rng=None,
    lsh_cache_size=None,
)


def lower_generate(model, prompts, **kwargs) -> tuple[Any, tuple]:
    """Ahead-of-time form of `generate` (same keyword arguments, ``return_lengths`` excepted).

    Returns ``(lowered, dynamic_args)``: ``compiled = lowered.compile()``, then
    ``tokens, lengths = compiled(*dynamic_args)`` runs the program without recompiling (what the
    benchmark times).
    """
    defaults = GENERATE_DEFAULTS
    unknown = set(kwargs) - set(defaults) - {"max_new_tokens"}
    if unknown or "max_new_tokens" not in kwargs:
        raise TypeError(f"lower_generate: needs max_new_tokens; unknown: {sorted(unknown)}")
    args, statics = _generate_args(model, prompts, **{**defaults, **kwargs})
    lowered = _generate_jit.lower(*args, **statics)
    return lowered, args[1:]  # the graphdef is static
