"""Dropout and mask conventions shared by the kernels (reformer_jax/kernels/masking.py).

Every kernel drops attention probabilities by inverted dropout: each probability is kept with
probability ``1 - rate`` and then scaled by ``1 / (1 - rate)`` (so the expected output equals
the dropout-free one), with masks drawn independently for every block the kernel processes, and
the backward pass uses the forward's mask. The probe: with values ``v = I`` (one-hot of the key
position), the output row of query i *is* its (dropped) probability row, and the gradient with
respect to ``v`` of ``<out, I>`` is its transpose.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax.kernels import draw_rotations, full_attention, local_attention, lsh_attention
from reformer_jax.kernels.masking import dropout, mask_values
from tests.helpers import assert_kept_fraction, assert_masks_distinct, keep_mask

RATE = 0.3


def test_dropout_keeps_one_minus_rate_and_scales_by_its_inverse():
    """Catches dropout keeping ``rate`` instead of ``1 - rate`` (30% instead of 70%), scaling by
    ``1 / rate`` or not at all (the mean would change), and a mask that ignores its key."""
    x = jnp.linspace(1.0, 2.0, 4096).reshape(64, 64)
    out = dropout(x, RATE, jax.random.key(0))
    kept, live = keep_mask(out, x, RATE)
    assert live.all()
    assert_kept_fraction(kept, live, RATE)
    # The mean is preserved: E[out] = x, within the binomial bound scaled by max(x) / (1 - p).
    bound = 5 * np.sqrt(RATE / (1 - RATE) / x.size) * float(x.max())
    assert abs(float(out.mean()) - float(x.mean())) <= bound
    other = dropout(x, RATE, jax.random.key(1))
    assert_masks_distinct([kept, keep_mask(other, x, RATE)[0]])
    np.testing.assert_array_equal(dropout(x, 0.0, None), x)
    with pytest.raises(ValueError, match="dropout_key"):
        dropout(x, RATE, None)


@pytest.mark.parametrize(("shape", "piece"), [((64, 48), 256), ((30, 7, 5), 128), (999, 64)])
def test_dropout_in_pieces_draws_bernoullis_mask_bit_for_bit(shape, piece):
    """Catches a piecewise mask that is not ``jax.random.bernoulli``'s (every piece repeating the
    first piece's counters, a threshold off by one, the wrong half of the hash): large masks
    are drawn piece by piece, and must equal the one-piece draw exactly so that the reversible
    backward, evaluation and old checkpoints see the same dropout."""
    x = jnp.linspace(1.0, 2.0, int(np.prod(shape)), dtype=jnp.float32).reshape(shape)
    for rate in (0.2, 0.37):
        for key in (jax.random.key(3), jax.random.PRNGKey(4)):
            keep = jax.random.bernoulli(key, 1.0 - rate, shape)
            expected = jnp.where(keep, x / (1.0 - rate), 0.0)
            got = jax.jit(lambda x, k, rate=rate: dropout(x, rate, k, piece=piece))(x, key)
            np.testing.assert_array_equal(got, expected)


def test_dropout_in_pieces_needs_less_memory():
    """Catches large masks drawn in one piece again: XLA's CPU Threefry loop materialises
    several mask-sized words at once (1.2 GiB for one 64K x 768 mask of the enwik8 step)."""
    x = jax.ShapeDtypeStruct((4096, 256), jnp.float32)

    def temp_bytes(piece):
        grad = jax.grad(lambda x: jnp.sum(dropout(x, RATE, jax.random.key(0), piece=piece) ** 2))
        return jax.jit(grad).lower(x).compile().memory_analysis().temp_size_in_bytes

    x_bytes = 4096 * 256 * 4
    assert temp_bytes(2**14) <= x_bytes < 2 * x_bytes < temp_bytes(2**22)


def test_mask_values_fit_every_float_dtype():
    """Catches a mask value that overflows half precision (-1e9 is -inf in float16)."""
    for dtype in (jnp.float16, jnp.bfloat16, jnp.float32):
        masked, self_value = mask_values(dtype)
        assert np.isfinite(float(jnp.asarray(masked, dtype)))
        assert float(jnp.asarray(masked, dtype)) < float(jnp.asarray(self_value, dtype)) < 0


B, H, L = 2, 2, 64


def _qk():
    q = jax.random.normal(jax.random.key(1), (B, H, L, 8))
    k = jax.random.normal(jax.random.key(2), (B, H, L, 8))
    return q, k


def _full(v, rate, key):
    q, k = _qk()
    return full_attention(q, k, v, dropout_rate=rate, dropout_key=key)


def _local(v, rate, key):
    q, k = _qk()
    return local_attention(
        q, k, v, chunk_len=8, n_chunks_before=1, causal=True, dropout_rate=rate, dropout_key=key
    )


def _lsh(v, rate, key):
    q, _ = _qk()
    rotations = draw_rotations(jax.random.key(3), H, 8, 1, 4)  # one round: out row = probs
    return lsh_attention(
        q, v, rotations, n_buckets=4, chunk_len=8, dropout_rate=rate, dropout_key=key
    )


@pytest.mark.parametrize("kernel", [_full, _local, _lsh], ids=["full", "local", "lsh"])
def test_attention_dropout_rate_scaling_independence_and_backward(kernel):
    """Catches attention dropout keeping 30% instead of 70%, a wrong or missing 1/(1-p) scale,
    one key reused for every (batch, head) block (repeated masks), and a backward pass that
    draws its own mask instead of replaying the forward's."""
    eye = jnp.broadcast_to(jnp.eye(L), (B, H, L, L))
    key = jax.random.key(5)
    probs = kernel(eye, 0.0, None)
    dropped, vjp = jax.vjp(lambda v: kernel(v, RATE, key), eye)
    kept, live = keep_mask(dropped, probs, RATE)
    assert_kept_fraction(kept, live, RATE)
    assert_masks_distinct([kept[b, h] for b in range(B) for h in range(H)])
    # Backward: d<out, I>/dv = P_dropped^T, the very mask and scale of the forward.
    (dv,) = vjp(eye)
    np.testing.assert_allclose(np.swapaxes(np.asarray(dv), -1, -2), dropped, atol=1e-6)
