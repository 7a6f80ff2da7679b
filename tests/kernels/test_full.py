import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from reformer_jax.kernels import full_attention
from tests.kernels.reference import dense_attention


def _inputs(seed, shape, dtype=jnp.float64):
    keys = jax.random.split(jax.random.key(seed), 3)
    return [jax.random.normal(k, shape, dtype) for k in keys]


@pytest.mark.parametrize("causal", [False, True])
def test_matches_numpy_softmax(x64, causal):
    q, k, v = _inputs(0, (2, 3, 11, 5))
    mask = np.ones((2, 11), bool)
    mask[1, 7:] = False
    out = full_attention(q, k, v, causal=causal, mask=jnp.asarray(mask))
    allowed = mask[:, None, None, :] & (np.tril(np.ones((11, 11), bool)) if causal else True)
    ref = dense_attention(q, k, v, allowed, 1 / np.sqrt(5))
    np.testing.assert_allclose(out, ref, atol=1e-12)


def test_self_mask_only_wins_when_nothing_else_allowed(x64):
    q, k, v = _inputs(1, (1, 1, 6, 4))
    out = full_attention(q, k, v, causal=True, exclude_self=True)
    # Position 0 can only see itself; every other position never sees itself.
    np.testing.assert_allclose(out[0, 0, 0], v[0, 0, 0], atol=1e-12)
    ref = dense_attention(q, k, v, np.tril(np.ones((6, 6), bool), -1), 0.5)
    np.testing.assert_allclose(out[0, 0, 1:], ref[0, 0, 1:], atol=1e-12)


def test_four_d_mask_and_bad_mask():
    q, k, v = _inputs(2, (1, 2, 4, 3), jnp.float32)
    allowed = jnp.eye(4, dtype=bool)[None, None]
    np.testing.assert_allclose(full_attention(q, k, v, mask=allowed), v, atol=1e-6)
    with pytest.raises(ValueError, match="mask must be"):
        full_attention(q, k, v, mask=jnp.ones((4,), bool))


def test_gradients(x64):
    q, k, v = _inputs(3, (1, 2, 7, 4))
    fn = lambda q, k, v: full_attention(q, k, v, causal=True, exclude_self=True)  # noqa: E731
    check_grads(fn, (q, k, v), order=1, modes=["rev"])


def test_dropout_needs_key_and_is_deterministic():
    q, k, v = _inputs(4, (1, 1, 8, 4), jnp.float32)
    with pytest.raises(ValueError, match="dropout_key"):
        full_attention(q, k, v, dropout_rate=0.1)
    key = jax.random.key(7)
    a = full_attention(q, k, v, dropout_rate=0.5, dropout_key=key)
    b = full_attention(q, k, v, dropout_rate=0.5, dropout_key=key)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, full_attention(q, k, v))
