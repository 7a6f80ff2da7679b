"""Mask constants and the chunk helpers shared by the chunked attention kernels.

Masks are applied by replacement (``where(allowed, score, mask_value)``), never by addition, so a
large constant cannot overflow. Scores are computed in float32 (float64 for float64 inputs) even
for bfloat16 / float16 inputs; :func:`mask_values` still gives constants that are finite in the
score dtype for callers that keep scores in half precision.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry2x32_p

# Trax / Hugging Face values for float32: a masked key is effectively -inf, while attending to
# oneself (-1e5) still beats any masked key, so self-attention only wins when nothing else is
# allowed (position 0 under a causal mask, a fully padded window).
_MASK_VALUES = {
    np.dtype(np.float64): (-1e9, -1e5),
    np.dtype(np.float32): (-1e9, -1e5),
    np.dtype(jnp.bfloat16): (-1e9, -1e5),  # bfloat16 shares float32's exponent range.
    np.dtype(np.float16): (-1e4, -1e3),  # float16 overflows past 65504.
}


def mask_values(dtype: jnp.dtype) -> tuple[float, float]:
    """Returns ``(mask_value, self_mask_value)`` that are finite and ordered in ``dtype``."""
    try:
        return _MASK_VALUES[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f"no mask values for scores of dtype {dtype}; use a float dtype") from None


def mask_scores(
    scores: jax.Array,
    *,
    q_pos: jax.Array,
    k_pos: jax.Array,
    causal: bool,
    exclude_self: bool,
    allowed: tuple[jax.Array, ...] = (),
) -> tuple[jax.Array, jax.Array | None]:
    """The chunked kernels' masking of one block of scores, by replacement.

    ``q_pos`` and ``k_pos`` broadcast against ``scores`` (original positions of the queries and
    keys); ``allowed`` are further boolean masks that broadcast too (valid keys, same bucket,
    key chunk inside the sequence). A key after the query (``causal``) or not allowed gets the
    mask score; the query's own position gets the self score (``exclude_self``), which wins
    only when nothing else is allowed. Returns ``(scores, replaced)``: the mask of replaced
    entries (None when nothing can be), whose gradient the backward pass zeroes.
    """
    conditions = ((k_pos <= q_pos,) if causal else ()) + tuple(allowed)
    mask_value, self_value = mask_values(scores.dtype)
    replaced = None
    if conditions:
        permitted = functools.reduce(jnp.logical_and, conditions)
        scores = jnp.where(permitted, scores, mask_value)
        replaced = ~permitted
    if exclude_self:
        is_self = q_pos == k_pos
        scores = jnp.where(is_self, self_value, scores)
        replaced = is_self if replaced is None else replaced | is_self
    return scores, replaced


def score_dtype(dtype: jnp.dtype) -> jnp.dtype:
    """Dtype in which scores and softmax are computed: float64 stays, everything else is f32."""
    return jnp.float64 if np.dtype(dtype) == np.dtype(np.float64) else jnp.float32


def pad_to_multiple(x: jax.Array, multiple: int, axis: int, value: float | int = 0) -> jax.Array:
    """Pads ``x`` at the end of ``axis`` up to a multiple of ``multiple``."""
    length = x.shape[axis]
    extra = (-length) % multiple
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


# Elements per piece of a large dropout mask (see `dropout`): 4 MiB of 32-bit words.
DROPOUT_PIECE = 2**20


def dropout(
    x: jax.Array, rate: float, key: jax.Array | None, *, piece: int = DROPOUT_PIECE
) -> jax.Array:
    """Inverted dropout with an explicit key; identity when ``rate == 0``.

    The mask is ``jax.random.bernoulli(key, 1 - rate, x.shape)``, bit for bit. Above ``piece``
    elements it is drawn piece by piece along the leading rows (:func:`keep_mask_rows`): XLA's
    CPU lowering of the Threefry hash loops over its rounds and so materialises several
    mask-sized 32-bit arrays at once (about 1.2 GiB for one ``[65536, 768]`` mask, the largest
    temporaries of the enwik8 step at 64K tokens), where a piece keeps them at a few MiB.
    """
    if rate == 0.0:
        return x
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1), got {rate}")
    if key is None:
        raise ValueError("dropout_rate > 0 needs an explicit dropout_key (a jax.random key)")
    # Pieces of whole rows of the last axis (a 1-d array is one column).
    rows_shape = (math.prod(x.shape[:-1]), x.shape[-1]) if x.ndim > 1 else (x.size, 1)
    rows = _piece_rows(rows_shape, piece) if _threefry_bits(key) else None
    if rows is None:
        keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
        return jnp.where(keep, x / (1.0 - rate), jnp.zeros((), x.dtype))
    n_rows, row_size = rows_shape
    # Only the mask is drawn in the loop (one byte per element); applying it outside lets XLA
    # fuse the select with x's producer as for a one-piece mask.
    starts = jnp.arange(0, n_rows, rows, dtype=jnp.uint32) * jnp.uint32(row_size)
    keep = jax.lax.map(
        lambda start: keep_mask_rows(key, 1.0 - rate, start, (rows, row_size)), starts
    )
    return jnp.where(keep.reshape(x.shape), x / (1.0 - rate), jnp.zeros((), x.dtype))


def _threefry_bits(key: jax.Array) -> bool:
    """Whether ``bernoulli(key, ...)`` draws the float32 Threefry masks :func:`keep_mask_rows`
    reproduces (64-bit mode draws float64 uniforms; other generators differ): otherwise the
    mask is drawn in one piece."""
    impl = str(jax.random.key_impl(key)) if _typed_key(key) else jax.config.jax_default_prng_impl
    return (
        impl == "threefry2x32"
        and jax.config.jax_threefry_partitionable
        and not jax.config.jax_enable_x64
    )


def _typed_key(key: jax.Array) -> bool:
    return jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)


def _piece_rows(shape: tuple[int, ...], piece: int) -> int | None:
    """Rows per piece of a ``(rows, row_size)`` array: the largest divisor of ``rows`` within
    ``piece`` elements, or None when one piece covers the array (or pieces would be too thin
    to pay off)."""
    if math.prod(shape) <= piece or math.prod(shape) >= 2**32:
        return None
    n_rows, row_size = shape
    most = min(n_rows - 1, piece // max(row_size, 1))
    least = max(1, -(-piece // (16 * max(row_size, 1))))
    return next((d for d in range(most, least - 1, -1) if n_rows % d == 0), None)


def keep_mask_rows(
    key: jax.Array, p: float, offset: jax.Array | int, shape: tuple[int, ...]
) -> jax.Array:
    """Elements ``offset .. offset + prod(shape)`` (row-major) of ``bernoulli(key, p, full)``.

    ``full`` is any shape with at least that many elements. With JAX's partitionable Threefry
    bits (the default), element i of a draw is the Threefry-2x32 hash of the counter i under the
    key, and ``bernoulli`` keeps it when the top 23 bits of ``hi ^ lo`` (the float32 uniform's
    mantissa) fall below ``p * 2**23``; so any slice of a mask can be drawn alone. The test
    compares it with ``jax.random.bernoulli`` bit for bit.
    """
    raw = jax.random.key_data(key) if _typed_key(key) else key
    size = math.prod(shape)
    counter = jnp.asarray(offset, jnp.uint32) + jax.lax.iota(jnp.uint32, size)
    high = jnp.zeros_like(counter)  # masks stay below 2**32 elements
    bits_a, bits_b = threefry2x32_p.bind(raw[0], raw[1], high, counter)
    mantissa = jax.lax.shift_right_logical(bits_a ^ bits_b, jnp.uint32(32 - 23))
    threshold = math.ceil(float(np.float32(p)) * 2**23)
    return (mantissa < jnp.uint32(threshold)).reshape(shape)


def check_qkv(name: str, *arrays: jax.Array) -> None:
    """Validates the ``[batch, heads, length, d_head]`` layout shared by all kernels."""
    for a in arrays:
        if a.ndim != 4:
            raise ValueError(
                f"{name}: expected arrays of shape [batch, heads, length, d_head], got {a.shape}"
            )
    b, h, length = arrays[0].shape[:3]
    for a in arrays[1:]:
        if a.shape[:2] != (b, h):
            raise ValueError(f"{name}: batch/heads differ: {arrays[0].shape} vs {a.shape}")
