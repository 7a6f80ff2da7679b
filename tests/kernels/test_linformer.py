"""Linformer kernel against the paper's formula written densely, one (batch, head) at a time."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax.kernels import (
    init_linformer_projection,
    linformer_attention,
    linformer_projection_shape,
)

B, H, D, RANK, MAX_LEN = 2, 3, 8, 5, 24


def _dense_linformer(q, k, v, e, f, mask=None):
    """softmax(Q (E K)^T / sqrt(d)) (F V) per batch row and head, with explicit matrices.

    Padded tokens are removed by multiplying K and V by a 0/1 diagonal matrix before E and F.
    """
    length = k.shape[2]
    rows = []
    for b in range(q.shape[0]):
        keep = jnp.eye(length) if mask is None else jnp.diag(mask[b].astype(q.dtype))
        heads = []
        for h in range(q.shape[1]):
            e_h = (e if e.ndim == 2 else e[h])[:, :length]
            f_h = (f if f.ndim == 2 else f[h])[:, :length]
            k_low = e_h @ (keep @ k[b, h])
            v_low = f_h @ (keep @ v[b, h])
            scores = q[b, h] @ k_low.T / math.sqrt(q.shape[-1])
            probs = jnp.exp(scores - scores.max(-1, keepdims=True))
            probs = probs / probs.sum(-1, keepdims=True)
            heads.append(probs @ v_low)
        rows.append(jnp.stack(heads))
    return jnp.stack(rows)


def _inputs(seed, length, len_q=None, per_head=False, dtype=jnp.float64):
    keys = jax.random.split(jax.random.key(seed), 5)
    len_q = length if len_q is None else len_q
    q = jax.random.normal(keys[0], (B, H, len_q, D), dtype)
    k = jax.random.normal(keys[1], (B, H, length, D), dtype)
    v = jax.random.normal(keys[2], (B, H, length, D), dtype)
    heads = H if per_head else None
    e = init_linformer_projection(keys[3], RANK, MAX_LEN, heads, dtype) * 4.0
    f = init_linformer_projection(keys[4], RANK, MAX_LEN, heads, dtype) * 4.0
    return q, k, v, e, f


@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize("length", [MAX_LEN, 13])
def test_values_and_gradients_match_dense_formula(x64, per_head, length):
    """Catches: E applied along the wrong axis, a missing 1/sqrt(d), slicing E from the wrong end
    or not at all, per-head projections mixed up between heads, padded keys not zeroed, and any
    gradient error (w.r.t. q, k, v and both projections)."""
    q, k, v, e, f = _inputs(0, length, len_q=length + 2, per_head=per_head)
    mask = jnp.arange(length)[None, :] < jnp.array([[length], [length - 4]])
    np.testing.assert_allclose(
        linformer_attention(q, k, v, e, f, mask=mask),
        _dense_linformer(q, k, v, e, f, mask),
        rtol=1e-10,
        atol=1e-10,
    )
    weights = jax.random.normal(jax.random.key(9), (B, H, length + 2, D), jnp.float64)

    def loss(fn):
        return lambda *a: jnp.sum(fn(*a) * weights)

    # jitted: op-by-op dispatch of the per-(batch, head) loops is slow on CPU
    grads = jax.jit(
        jax.grad(loss(lambda *a: linformer_attention(*a, mask=mask)), argnums=range(5))
    )(q, k, v, e, f)
    want = jax.jit(jax.grad(loss(lambda *a: _dense_linformer(*a, mask)), argnums=range(5)))(
        q, k, v, e, f
    )
    for got, ref in zip(grads, want, strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10)


def test_padded_values_do_not_reach_real_tokens(x64):
    """Catches: padding ignored when projecting (LRA's bug): padded keys/values would be mixed into
    every projected key and change every real token's output."""
    length = 16
    q, k, v, e, f = _inputs(1, length)
    mask = jnp.arange(length)[None, :] < jnp.array([[length], [9]])
    out = linformer_attention(q, k, v, e, f, mask=mask)
    noise = jax.random.normal(jax.random.key(5), k.shape, k.dtype) * 100.0
    padded = ~mask[:, None, :, None]
    out2 = linformer_attention(
        q, jnp.where(padded, noise, k), jnp.where(padded, -noise, v), e, f, mask=mask
    )
    np.testing.assert_allclose(out2, out, rtol=1e-12, atol=1e-12)
    # and without the mask the padded values do change the real tokens' outputs
    assert not np.allclose(
        linformer_attention(q, jnp.where(padded, noise, k), v, e, f)[1, :, :9], out[1, :, :9]
    )


def test_shared_projection_equals_identical_per_head_projections(x64):
    """Catches: a shared [k_rank, max_len] projection broadcast over the wrong axis."""
    q, k, v, e, f = _inputs(2, 20)
    per_head = lambda p: jnp.broadcast_to(p, (H, *p.shape))  # noqa: E731
    np.testing.assert_allclose(
        linformer_attention(q, k, v, e, f),
        linformer_attention(q, k, v, per_head(e), per_head(f)),
        rtol=1e-12,
    )


def test_only_the_first_len_columns_of_the_projection_are_used(x64):
    """Catches: slicing E to the last columns (or padding the input to max_len)."""
    q, k, v, e, f = _inputs(3, 10)
    out = linformer_attention(q, k, v, e, f)
    e2, f2 = e.at[:, 10:].set(7.0), f.at[:, 10:].set(-7.0)
    np.testing.assert_allclose(linformer_attention(q, k, v, e2, f2), out, rtol=1e-12)


def test_bfloat16_is_finite_and_close_to_float32():
    """Catches: projections or scores kept in bfloat16 (sums over the whole length lose ~3
    digits) and non-finite results."""
    q, k, v, e, f = _inputs(4, MAX_LEN, dtype=jnp.float32)
    mask = jnp.arange(MAX_LEN)[None, :] < jnp.array([[MAX_LEN], [7]])
    want = linformer_attention(q, k, v, e, f, mask=mask)
    bf = lambda x: x.astype(jnp.bfloat16)  # noqa: E731
    got = linformer_attention(bf(q), bf(k), bf(v), bf(e), bf(f), mask=mask)
    assert got.dtype == jnp.bfloat16
    assert np.isfinite(np.asarray(got, np.float32)).all()
    # inputs rounded to bfloat16 (rel. 2^-9) propagate to the output; 8 eps of slack.
    err = np.abs(np.asarray(got, np.float32) - np.asarray(want))
    assert err.max() <= 8 * 2.0**-8 * np.abs(np.asarray(want)).max()


def test_dropout_uses_the_key():
    """Catches: dropout_rate silently ignored."""
    q, k, v, e, f = _inputs(5, 12, dtype=jnp.float32)
    out = linformer_attention(q, k, v, e, f)
    dropped = linformer_attention(q, k, v, e, f, dropout_rate=0.5, dropout_key=jax.random.key(0))
    assert not np.allclose(out, dropped)
    with pytest.raises(ValueError, match="dropout_key"):
        linformer_attention(q, k, v, e, f, dropout_rate=0.5)


def test_errors_name_the_argument():
    """Catches: silent acceptance of impossible settings (causal, too long inputs, wrong heads)."""
    q, k, v, e, f = _inputs(6, 12, dtype=jnp.float32)
    with pytest.raises(ValueError, match="causal=True is impossible.*future"):
        linformer_attention(q, k, v, e, f, causal=True)
    long_k = jnp.zeros((B, H, MAX_LEN + 1, D))
    with pytest.raises(ValueError, match="proj_k's max_len"):
        linformer_attention(q, long_k, long_k, e, f)
    with pytest.raises(ValueError, match="proj_v has 2 heads"):
        linformer_attention(q, k, v, e, jnp.zeros((2, RANK, MAX_LEN)))
    with pytest.raises(ValueError, match="proj_k must be"):
        linformer_attention(q, k, v, e[0], f)
    with pytest.raises(ValueError, match="k_rank"):
        linformer_attention(q, k, v, e, f[:2])
    with pytest.raises(ValueError, match="mask must be"):
        linformer_attention(q, k, v, e, f, mask=jnp.ones((B, 5), bool))


def test_projection_shape_and_init_scale():
    """Catches: an init that ignores the documented std 1/sqrt(max_len + k_rank)."""
    assert linformer_projection_shape(4, 64) == (4, 64)
    assert linformer_projection_shape(4, 64, heads=2) == (2, 4, 64)
    with pytest.raises(ValueError, match="k_rank"):
        linformer_projection_shape(0, 64)
    e = init_linformer_projection(jax.random.key(0), 64, 960, heads=4)
    assert e.shape == (4, 64, 960)
    # The sample standard deviation of n = 4 * 64 * 960 normal draws has relative standard error
    # 1 / sqrt(2n) = 1.4e-3; allow 5 of them (std 1/sqrt(960) instead of 1/sqrt(1024) is off
    # by 3.3%).
    n = e.size
    np.testing.assert_allclose(
        np.std(np.asarray(e)), 1 / math.sqrt(1024), rtol=5 / math.sqrt(2 * n)
    )
