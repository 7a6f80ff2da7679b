"""Performer (FAVOR+) against the random-feature formula written densely, and against softmax."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax.kernels import (
    draw_features,
    full_attention,
    performer_attention,
    performer_decode_init,
    performer_decode_step,
    performer_prefill,
)

B, H, D, M = 2, 2, 8, 16


def _phi(x, w):
    """phi(x) = exp(w x / d^(1/4) - |x|^2 / (2 sqrt(d))) / sqrt(m), unstabilised (float64)."""
    d, m = x.shape[-1], w.shape[-2]
    wx = x @ jnp.swapaxes(w, -1, -2) / d**0.25
    return jnp.exp(wx - jnp.sum(x * x, -1, keepdims=True) / (2 * math.sqrt(d))) / math.sqrt(m)


def _dense_favor(q, k, v, w, causal=False, mask=None):
    """phi(Q) phi(K)^T (masked: lower triangle, real keys), normalised by its row sums."""
    rows = []
    for b in range(q.shape[0]):
        heads = []
        for h in range(q.shape[1]):
            w_h = w if w.ndim == 2 else w[h]
            kernel = _phi(q[b, h], w_h) @ _phi(k[b, h], w_h).T
            if causal:
                kernel = jnp.tril(kernel)
            if mask is not None:
                kernel = kernel * mask[b][None, :]
            den = kernel.sum(-1, keepdims=True)
            # a query without any real key (row 0 with a padded first key) gets 0
            heads.append((kernel @ v[b, h]) / jnp.where(den > 0, den, 1.0))
        rows.append(jnp.stack(heads))
    return jnp.stack(rows)


def _inputs(seed, length, dtype=jnp.float64, scale=1.0):
    keys = jax.random.split(jax.random.key(seed), 3)
    return tuple(jax.random.normal(kk, (B, H, length, D), dtype) * scale for kk in keys)


@pytest.mark.parametrize(
    ("causal", "per_head", "chunk_len"),
    [(False, False, 64), (False, True, 64), (True, False, 4), (True, True, 5), (True, False, 64)],
)
def test_values_and_gradients_match_dense_formula(x64, causal, per_head, chunk_len):
    """Catches: a wrong d^(1/4) scaling or missing |x|^2/2 term, a per-key stabiliser (does not
    cancel), prefix sums off by one (query i missing key i or seeing key i+1), chunk borders
    (length 13 is not a multiple of 4 or 5), padded keys counted, per-head features mixed up, and
    any gradient error (q, k, v and the features)."""
    length = 13
    q, k, v = _inputs(0, length)
    w = draw_features(jax.random.key(1), M, D, heads=H if per_head else None, dtype=jnp.float64)
    mask = jnp.arange(length)[None, :] < jnp.array([[length], [9]])
    mask = mask.at[0, 0].set(False)  # a padded first key: causal row 0 of batch 0 sees nothing

    def kernel(q, k, v, w):
        return performer_attention(q, k, v, w, causal=causal, mask=mask, chunk_len=chunk_len)

    def dense(q, k, v, w):
        return _dense_favor(q, k, v, w, causal, mask)

    np.testing.assert_allclose(kernel(q, k, v, w), dense(q, k, v, w), rtol=1e-10, atol=1e-12)
    weights = jax.random.normal(jax.random.key(9), v.shape, jnp.float64)
    grads = jax.grad(lambda *a: jnp.sum(kernel(*a) * weights), argnums=range(4))(q, k, v, w)
    want = jax.grad(lambda *a: jnp.sum(dense(*a) * weights), argnums=range(4))(q, k, v, w)
    for got, ref in zip(grads, want, strict=True):
        assert np.isfinite(np.asarray(got)).all()
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-10)


def test_large_activations_stay_finite_and_exact(x64):
    """Catches: no stabiliser, one that is not a common constant (a per-key maximum), or the
    reference's single maximum over keys and features. With |q|, |k| ~ 34 (d = 8) the exponents
    are ~ -200 +- 100: unstabilised float32 features underflow to 0 (0/0), and with one shared
    key maximum the keys below the largest one underflow. The float32 kernel must match the
    float64 log-space softmax of the same random-feature estimate. Causal with chunk_len=1 (what
    decoding does): within a chunk the chunk's maximum is shared by its queries, which at this
    extreme scale loses keys for queries early in the chunk (documented)."""
    length = 12
    q, k, v = (x.astype(jnp.float32) for x in _inputs(2, length, scale=12.0))
    w = draw_features(jax.random.key(3), M, D, dtype=jnp.float32)
    q64, k64, v64, w64 = (x.astype(jnp.float64) for x in (q, k, v, w))

    def log_phi(x):
        return x @ w64.T / D**0.25 - jnp.sum(x * x, -1, keepdims=True) / (2 * math.sqrt(D))

    for causal in (False, True):
        out = performer_attention(q, k, v, w, causal=causal, chunk_len=1)
        assert out.dtype == jnp.float32
        assert np.isfinite(np.asarray(out)).all()
        lq, lk = log_phi(q64), log_phi(k64)
        logits = jax.nn.logsumexp(lq[..., :, None, :] + lk[..., None, :, :], axis=-1)
        if causal:
            logits = jnp.where(jnp.tril(jnp.ones((length, length), bool)), logits, -jnp.inf)
        want = jax.nn.softmax(logits, axis=-1) @ v64
        np.testing.assert_allclose(out, want, rtol=1e-3, atol=1e-3)


def test_query_on_a_feature_no_key_dominates_keeps_its_keys(x64):
    """Catches: the reference's single key maximum over all features instead of one per feature.
    A query aligned with feature 0 (its other features are ~e^-140 smaller) meets keys
    anti-aligned with feature 0 (their feature 0 is ~e^-140 below their others): with a shared
    key shift every product underflows in float32 and the output is 0; shifting each feature by
    its own key maximum (compensated in the query) keeps the denominator >= 1/m."""
    w = draw_features(jax.random.key(3), M, D, dtype=jnp.float32)
    u = w[0] / jnp.linalg.norm(w[0])
    x_scale = D**0.25  # x = x' d^(1/4)
    q = jnp.broadcast_to(50.0 * u * x_scale, (1, 1, 4, D))
    noise = jax.random.normal(jax.random.key(4), (1, 1, 6, D), jnp.float32) * 0.3
    k = (-50.0 * u + noise) * x_scale
    v = jax.random.normal(jax.random.key(5), (1, 1, 6, D), jnp.float32)
    q64, k64, v64, w64 = (x.astype(jnp.float64) for x in (q, k, v, w))

    def log_phi(x):
        return x @ w64.T / D**0.25 - jnp.sum(x * x, -1, keepdims=True) / (2 * math.sqrt(D))

    logits = jax.nn.logsumexp(log_phi(q64)[..., :, None, :] + log_phi(k64)[..., None, :, :], -1)
    want = jax.nn.softmax(logits, axis=-1) @ v64
    out = performer_attention(q, k, v, w)
    np.testing.assert_allclose(out, want, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(
        performer_attention(k, k, v, w, causal=True, chunk_len=1)[:, :, -1],
        (
            jax.nn.softmax(
                jax.nn.logsumexp(
                    log_phi(k64)[..., -1:, None, :] + log_phi(k64)[..., None, :, :], -1
                ),
                axis=-1,
            )
            @ v64
        )[:, :, 0],
        rtol=1e-3,
        atol=1e-3,
    )


def test_padded_keys_change_nothing(x64):
    """Catches: padded keys entering the sums or the key stabiliser (a huge padded key would then
    underflow every real feature)."""
    length = 11
    q, k, v = _inputs(4, length)
    w = draw_features(jax.random.key(5), M, D, dtype=jnp.float64)
    mask = jnp.arange(length)[None, :] < jnp.array([[length], [6]])
    padded = ~mask[:, None, :, None]
    noise = jax.random.normal(jax.random.key(6), k.shape, jnp.float64) * 50.0
    for causal in (False, True):
        out = performer_attention(q, k, v, w, causal=causal, mask=mask, chunk_len=4)
        out2 = performer_attention(
            q,
            jnp.where(padded, noise, k),
            jnp.where(padded, -noise, v),
            w,
            causal=causal,
            mask=mask,
            chunk_len=4,
        )
        np.testing.assert_allclose(out2[1, :, :6], out[1, :, :6], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(out2[0], out[0], rtol=1e-12)


def _relative_error(m, seed, length=64, d=16):
    keys = jax.random.split(jax.random.key(seed), 4)
    # |x / d^(1/4)| ~ 1: FAVOR+'s variance grows like exp(|q'|^2 + |k'|^2), keep it moderate
    q, k = (jax.random.normal(kk, (1, 2, length, d)) * 0.5 for kk in keys[:2])
    v = jax.random.normal(keys[2], (1, 2, length, d))
    out = performer_attention(q, k, v, draw_features(keys[3], m, d))
    want = full_attention(q, k, v)
    return float(jnp.linalg.norm(out - want) / jnp.linalg.norm(want))


@pytest.mark.slow
def test_converges_to_softmax_as_features_grow():
    """Catches: a biased estimator (e.g. a missing |x|^2/2 term, the reference's epsilon, a wrong
    d^(1/4)): the error would plateau instead of falling like 1/sqrt(m).

    Measured (mean relative error over 6 seeds, L=64, d=16, |q|, |k| ~ 0.5 sqrt(d)):
    m=16: 0.53, m=64: 0.29, m=256: 0.15, m=1024: 0.086 (about 1/sqrt(m)).
    """
    ms = (16, 64, 256, 1024)
    errors = [np.mean([_relative_error(m, seed) for seed in range(6)]) for m in ms]
    for smaller, larger in zip(errors, errors[1:], strict=False):
        assert larger < 1.1 * smaller, errors
    assert errors[-1] < errors[0] / 3, errors


def test_orthogonal_features_beat_iid_on_average():
    """Catches: orthogonal features not actually orthogonal within a block (or rows not rescaled
    to Gaussian norms): FAVOR+'s variance reduction disappears, or the estimate is biased.

    The gain is moderate and the estimator heavy-tailed, so the test compares the median over 300
    draws of the mean squared error of phi(q).phi(k) against exp(q.k / sqrt(d)) at m = d = 16.
    Measured: orthogonal 0.37, iid 0.50.
    """
    d, m = 16, 16
    keys = jax.random.split(jax.random.key(0), 3)
    q, k = (jax.random.normal(kk, (32, d), jnp.float32) * 0.5 for kk in keys[:2])
    exact = jnp.exp(q @ k.T / math.sqrt(d))

    def squared_error(key, orthogonal):
        w = draw_features(key, m, d, orthogonal=orthogonal)
        phi = lambda x: _phi(x, w)  # noqa: E731
        return jnp.mean((phi(q) @ phi(k).T - exact) ** 2)

    draws = jax.random.split(keys[2], 300)
    orth = np.median(jax.vmap(lambda kk: squared_error(kk, True))(draws))
    iid = np.median(jax.vmap(lambda kk: squared_error(kk, False))(draws))
    assert orth < 0.85 * iid, (orth, iid)


def test_draw_features_blocks_are_orthogonal_with_chi_norms():
    """Catches: QR rows taken as columns (not orthogonal), all rows of norm 1 or sqrt(d) (no chi
    rescaling), blocks beyond the first not orthogonal, per-head draws identical across heads."""
    d, m = 8, 20  # two full blocks and a truncated one
    w = np.asarray(draw_features(jax.random.key(0), m, d, heads=3), np.float64)
    assert w.shape == (3, m, d)
    for head in w:
        for start in range(0, m, d):
            block = head[start : start + d]
            unit = block / np.linalg.norm(block, axis=1, keepdims=True)
            np.testing.assert_allclose(unit @ unit.T, np.eye(len(block)), atol=1e-5)
    assert not np.allclose(w[0], w[1])
    norms = np.linalg.norm(
        np.asarray(draw_features(jax.random.key(1), 4096, d), np.float64), axis=1
    )
    assert norms.std() > 0.3  # chi_8 has std ~0.69
    # E chi_d^2 = d, Var chi_d^2 = 2d: the mean of 4096 independent rows has relative standard
    # deviation sqrt(2 / (d * 4096)) = 0.0078; allow 5 of them (norms of 1, the bug, give 1/d).
    np.testing.assert_allclose(np.mean(norms**2), d, rtol=5 * math.sqrt(2 / (d * 4096)))
    iid = draw_features(jax.random.key(2), m, d, orthogonal=False)
    assert iid.shape == (m, d)


@pytest.mark.parametrize("causal", [False, True])
def test_bfloat16_is_finite_and_close_to_float32(causal):
    """Catches: sums or exponentials kept in bfloat16 (prefix sums over the whole length lose
    ~3 digits) and overflow in half precision."""
    length = 40
    q, k, v = _inputs(7, length, jnp.float32)
    w = draw_features(jax.random.key(8), 32, D)
    want = performer_attention(q, k, v, w, causal=causal, chunk_len=16)
    bf = lambda x: x.astype(jnp.bfloat16)  # noqa: E731
    got = performer_attention(bf(q), bf(k), bf(v), bf(w), causal=causal, chunk_len=16)
    assert got.dtype == jnp.bfloat16
    got = np.asarray(got, np.float32)
    assert np.isfinite(got).all()
    # inputs rounded to bfloat16 (rel. 2^-9) move exponents by ~|w||q|2^-9: 16 eps of slack.
    assert np.abs(got - np.asarray(want)).max() <= 16 * 2.0**-8 * np.abs(np.asarray(want)).max()


def test_decoding_steps_equal_the_causal_kernel(x64):
    """Catches: a decode state that forgets the rescaling by the running maximum, adds the key
    after attending (query t would miss key t), or a prefill state that differs from stepping."""
    length, prompt = 10, 6
    q, k, v = _inputs(10, length, scale=3.0)
    w = draw_features(jax.random.key(11), M, D, heads=H, dtype=jnp.float64)
    mask = jnp.arange(length)[None, :] >= jnp.array([[0], [2]])  # left-padded second row
    want = performer_attention(q, k, v, w, causal=True, mask=mask, chunk_len=4)
    state = performer_decode_init(B, H, M, D, jnp.float64)
    outs = []
    for t in range(length):
        s = slice(t, t + 1)
        out_t, state = performer_decode_step(
            state, q[:, :, s], k[:, :, s], v[:, :, s], w, mask_t=mask[:, t]
        )
        outs.append(out_t)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=2), want, rtol=1e-10, atol=1e-12)
    stepped = state
    # prefill the prompt, then step the rest
    out, state = performer_prefill(
        q[:, :, :prompt], k[:, :, :prompt], v[:, :, :prompt], w, mask=mask[:, :prompt], chunk_len=4
    )
    np.testing.assert_allclose(out, want[:, :, :prompt], rtol=1e-10, atol=1e-12)
    for t in range(prompt, length):
        s = slice(t, t + 1)
        out_t, state = performer_decode_step(state, q[:, :, s], k[:, :, s], v[:, :, s], w)
        np.testing.assert_allclose(out_t[:, :, 0], want[:, :, t], rtol=1e-10, atol=1e-12)
    # same running sums once expressed with the same shift
    scale = jnp.exp(state.shift - stepped.shift)
    np.testing.assert_allclose(state.normaliser * scale, stepped.normaliser, rtol=1e-10)


def test_bfloat16_decoding_with_a_float32_state():
    """Catches: a decode step that changes the state's dtype (breaks a scan / while_loop carry)
    or loses precision in bfloat16 inputs."""
    length = 6
    q, k, v = _inputs(13, length, jnp.float32)
    w = draw_features(jax.random.key(14), 32, D)
    want = np.asarray(performer_attention(q, k, v, w, causal=True))
    bf = lambda x: x.astype(jnp.bfloat16)  # noqa: E731
    state = performer_decode_init(B, H, 32, D, jnp.float32)

    def step(state, t):
        s = lambda x: jax.lax.dynamic_slice_in_dim(bf(x), t, 1, axis=2)  # noqa: E731
        out, state = performer_decode_step(state, s(q), s(k), s(v), bf(w))
        return state, out[:, :, 0]

    state, outs = jax.lax.scan(step, state, jnp.arange(length))
    assert state.kv.dtype == jnp.float32
    got = np.asarray(jnp.moveaxis(outs, 0, 2), np.float32)
    assert np.abs(got - want).max() <= 16 * 2.0**-8 * np.abs(want).max()
    # a bfloat16 state (not recommended) also keeps its dtype through a scan
    state16 = jax.tree.map(bf, performer_decode_init(B, H, 32, D))
    state16, _ = jax.lax.scan(step, state16, jnp.arange(length))
    assert state16.kv.dtype == jnp.bfloat16


def test_errors_name_the_argument():
    """Catches: silently accepting features of the wrong size or heads, bad masks and chunks."""
    q, k, v = _inputs(12, 8, jnp.float32)
    w = draw_features(jax.random.key(0), M, D)
    with pytest.raises(ValueError, match="features must be"):
        performer_attention(q, k, v, w[:, :4])
    with pytest.raises(ValueError, match="features has 3 heads"):
        performer_attention(q, k, v, jnp.zeros((3, M, D)))
    with pytest.raises(ValueError, match="mask must be"):
        performer_attention(q, k, v, w, mask=jnp.ones((B, 3), bool))
    with pytest.raises(ValueError, match="chunk_len"):
        performer_attention(q, k, v, w, causal=True, chunk_len=0)
    with pytest.raises(ValueError, match="len_q == len_k"):
        performer_attention(q[:, :, :4], k, v, w, causal=True)
    with pytest.raises(ValueError, match="n_features"):
        draw_features(jax.random.key(0), 0, D)
    with pytest.raises(ValueError, match="state"):
        performer_decode_step(
            performer_decode_init(B, H, M + 1, D), q[:, :, :1], k[:, :, :1], v[:, :, :1], w
        )


def _causal_temp_bytes(length: int) -> int:
    x = jax.ShapeDtypeStruct((1, 2, length, 32), jnp.float32)
    w = draw_features(jax.random.key(0), 64, 32)

    def loss(q, k, v):
        out = performer_attention(q, k, v, w, causal=True, chunk_len=64)
        return jnp.sum(out * out)

    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(x, x, x).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_causal_memory_is_linear_in_length():
    """Catches: a causal mask built as an L x L array (or a dense quadratic form): 4x the length
    would take 16x the memory instead of <= 4.5x.

    Measured (value and grad, 2 heads, d = 32, m = 64, chunk 64): 11.7 MiB at 2K, 46.5 MiB at
    8K (~23x the bytes of q: features, exponents, per-chunk states and quadratic forms kept for
    the backward); with one chunk over the whole sequence: 103 MiB and 1.56 GiB."""
    small, large = _causal_temp_bytes(2048), _causal_temp_bytes(8192)
    assert large <= 4.5 * small, (small, large)
