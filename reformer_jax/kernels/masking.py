"""Mask constants and the chunk helpers shared by the chunked attention kernels.

Masks are applied by replacement (``where(allowed, score, mask_value)``), never by addition, so a
large constant cannot overflow. Scores are computed in float32 (float64 for float64 inputs) even
for bfloat16 / float16 inputs; :func:`mask_values` still gives constants that are finite in the
score dtype for callers that keep scores in half precision.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

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


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout with an explicit key; identity when ``rate == 0``."""
    if rate == 0.0:
        return x
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1), got {rate}")
    if key is None:
        raise ValueError("dropout_rate > 0 needs an explicit dropout_key (a jax.random key)")
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros((), x.dtype))


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
