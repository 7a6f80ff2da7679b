"""Compressive-memory functions against direct NumPy computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax.kernels.compressive import attention_reconstruction_loss, compress
from tests.kernels.reference import dense_attention


def test_conv_is_a_strided_convolution(x64):
    """Catches groups taken with a stride other than the kernel (overlapping or skipped states)
    or the kernel's taps applied in the wrong order."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 9, 4))
    w = rng.normal(size=(3, 4, 5))
    b = rng.normal(size=5)
    out = compress(jnp.asarray(x), 3, "conv", jnp.asarray(w), jnp.asarray(b))
    want = np.stack([sum(x[:, 3 * g + c] @ w[c] for c in range(3)) + b for g in range(3)], axis=1)
    np.testing.assert_allclose(out, want, atol=1e-12)


def test_pooling(x64):
    """Catches pooling over the feature axis instead of over time."""
    x = np.arange(2 * 6 * 3, dtype=np.float64).reshape(2, 6, 3)
    np.testing.assert_allclose(compress(jnp.asarray(x), 2, "mean"), (x[:, 0::2] + x[:, 1::2]) / 2)
    np.testing.assert_allclose(compress(jnp.asarray(x), 3, "max"), x[:, 2::3])


def test_reconstruction_loss_is_the_mean_squared_attention_difference(x64):
    """Catches a loss over the memories themselves instead of the attention outputs."""
    keys = jax.random.split(jax.random.key(0), 5)
    q = jax.random.normal(keys[0], (1, 2, 3, 4), jnp.float64)
    ko, vo = (jax.random.normal(k, (1, 2, 6, 4), jnp.float64) for k in keys[1:3])
    kc, vc = (jax.random.normal(k, (1, 2, 2, 4), jnp.float64) for k in keys[3:5])
    loss = attention_reconstruction_loss(q, ko, vo, kc, vc)
    a = dense_attention(q, ko, vo, True, 0.5)
    b = dense_attention(q, kc, vc, True, 0.5)
    np.testing.assert_allclose(loss, np.mean((a - b) ** 2), rtol=1e-6)
    assert float(attention_reconstruction_loss(q, ko, vo, ko, vo)) == 0.0


def test_errors():
    x = jnp.zeros((1, 7, 4))
    with pytest.raises(ValueError, match="multiple of the rate"):
        compress(x, 3, "mean")
    with pytest.raises(ValueError, match="unknown method"):
        compress(x, 7, "sum")
    with pytest.raises(ValueError, match="kernel_CDE"):
        compress(x, 7, "conv")
