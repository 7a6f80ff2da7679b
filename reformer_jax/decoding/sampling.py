"""Turning logits into tokens: top-k / nucleus filters and the sampler."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def filter_logits(
    logits: jax.Array, *, top_k: int | None = None, top_p: float | jax.Array | None = None
) -> jax.Array:
    """Sets logits outside the top-k / nucleus to ``-inf`` (last axis is the vocabulary).

    ``top_k``: keep the ``k`` largest (ties with the k-th are kept). ``top_p``: keep the smallest
    set of most probable tokens whose probability reaches ``top_p`` (the most probable token is
    always kept; ties with the last kept token are kept). Applied in that order.
    """
    neg = jnp.array(-jnp.inf, logits.dtype)
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        k = min(int(top_k), logits.shape[-1])
        kth = jax.lax.top_k(logits, k)[0][..., -1:]
        logits = jnp.where(logits < kth, neg, logits)
    if top_p is not None:
        ordered = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(ordered.astype(jnp.float32), axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of the strictly more probable
        n_keep = jnp.maximum(jnp.sum(before < top_p, axis=-1, keepdims=True), 1)
        threshold = jnp.take_along_axis(ordered, n_keep - 1, axis=-1)
        logits = jnp.where(logits < threshold, neg, logits)
    return logits


def sample_logits(
    key: jax.Array | None,
    logits: jax.Array,
    *,
    temperature: float | jax.Array = 1.0,
    top_k: int | None = None,
    top_p: float | jax.Array | None = None,
    greedy: bool = False,
) -> jax.Array:
    """Draws token ids from ``logits [..., vocab]`` (one key for all leading dims).

    ``greedy`` (or ``temperature == 0``) is the argmax; otherwise the logits are divided by
    ``temperature``, filtered by :func:`filter_logits` and sampled.
    """
    if greedy or (isinstance(temperature, int | float) and temperature == 0):
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    logits = filter_logits(logits, top_k=top_k, top_p=top_p)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def row_keys(key, batch: int) -> jax.Array:
    if key is None:
        key = jax.random.key(0)
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(jnp.asarray(key, jnp.uint32))
    if key.ndim == 0:
        return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(batch))
    if key.shape == (batch,):
        return key
    raise ValueError(
        f"key must be one PRNG key or one key per row (shape [{batch}]), got shape {key.shape}"
    )
