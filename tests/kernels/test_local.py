import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from reformer_jax.kernels import full_attention, local_attention
from tests.kernels.reference import band_mask, dense_attention


def _inputs(seed, shape, dtype=jnp.float64):
    keys = jax.random.split(jax.random.key(seed), 3)
    return [jax.random.normal(k, shape, dtype) for k in keys]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(
    ("length", "chunk_len", "before", "after"),
    [(32, 8, 1, 0), (30, 8, 1, 0), (29, 4, 2, 1), (5, 8, 1, 1), (24, 8, 0, 0)],
)
def test_equals_full_attention_with_band_mask(x64, causal, length, chunk_len, before, after):
    q, k, v = _inputs(0, (2, 2, length, 4))
    out = local_attention(
        q, k, v, chunk_len=chunk_len, n_chunks_before=before, n_chunks_after=after, causal=causal
    )
    allowed = jnp.asarray(band_mask(length, chunk_len, before, after, causal))[None, None]
    ref = full_attention(q, k, v, mask=allowed)
    np.testing.assert_allclose(out, ref, atol=1e-12)
    np.testing.assert_allclose(out, dense_attention(q, k, v, np.asarray(allowed), 0.5), atol=1e-12)


def test_wrap_around_lets_first_chunk_see_last_chunk(x64):
    q, k, v = _inputs(1, (1, 1, 16, 4))
    out = local_attention(q, k, v, chunk_len=4, wrap_around=True)
    pos = np.arange(16)
    allowed = (pos[None, :] // 4 == pos[:, None] // 4) | (
        pos[None, :] // 4 == (pos[:, None] // 4 - 1) % 4
    )
    ref = dense_attention(q, k, v, allowed[None, None], 0.5)
    np.testing.assert_allclose(out, ref, atol=1e-12)
    # Under a causal mask wrapping changes nothing.
    np.testing.assert_allclose(
        local_attention(q, k, v, chunk_len=4, wrap_around=True, causal=True),
        local_attention(q, k, v, chunk_len=4, causal=True),
        atol=1e-12,
    )


def test_padding_is_ignored_at_any_position(x64):
    q, k, v = _inputs(2, (2, 2, 20, 4))
    mask = np.ones((2, 20), bool)
    mask[0, :2] = False
    mask[1, 13:] = False
    fn = lambda v: local_attention(q, k, v, chunk_len=4, mask=jnp.asarray(mask))  # noqa: E731
    v2 = jnp.where(jnp.asarray(mask)[:, None, :, None], v, 1e3)
    valid = np.broadcast_to(mask[:, None, :], (2, 2, 20))
    np.testing.assert_allclose(np.asarray(fn(v))[valid], np.asarray(fn(v2))[valid], atol=1e-10)


def test_causal_outputs_ignore_the_future(x64):
    q, k, v = _inputs(3, (1, 2, 24, 4))
    out = local_attention(q, k, v, chunk_len=8, n_chunks_after=1, causal=True)
    i = 10
    bump = jnp.zeros_like(q).at[:, :, i + 1 :].set(5.0)
    out2 = local_attention(q + bump, k + bump, v + bump, chunk_len=8, n_chunks_after=1, causal=True)
    np.testing.assert_allclose(out[:, :, : i + 1], out2[:, :, : i + 1], atol=1e-12)
    assert not np.allclose(out[:, :, i + 1 :], out2[:, :, i + 1 :])


def test_gradients(x64):
    q, k, v = _inputs(4, (1, 2, 12, 3))
    fn = lambda q, k, v: local_attention(q, k, v, chunk_len=4, causal=True)  # noqa: E731
    check_grads(fn, (q, k, v), order=1, modes=["rev"])


def test_bad_settings_name_the_setting():
    q, k, v = _inputs(5, (1, 1, 8, 2), jnp.float32)
    with pytest.raises(ValueError, match="chunk_len"):
        local_attention(q, k, v, chunk_len=0)
    with pytest.raises(ValueError, match=r"\[batch, heads, length, d_head\]"):
        local_attention(q[0], k[0], v[0], chunk_len=4)
