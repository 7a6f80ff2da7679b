"""Transformer-XL relative attention against the paper's four-term formula written per entry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax.kernels.relative import relative_attention, sinusoid_encodings


def _inputs(seed, batch=2, heads=2, seg=5, mem=3, d=4, dtype=jnp.float64):
    keys = jax.random.split(jax.random.key(seed), 6)
    n = seg + mem
    q = jax.random.normal(keys[0], (batch, heads, seg, d), dtype)
    k = jax.random.normal(keys[1], (batch, heads, n, d), dtype)
    v = jax.random.normal(keys[2], (batch, heads, n, d), dtype)
    rel = jax.random.normal(keys[3], (heads, n, d), dtype)
    u = jax.random.normal(keys[4], (heads, d), dtype)
    pb = jax.random.normal(keys[5], (heads, d), dtype)
    return q, k, v, rel, u, pb


def _reference(q, k, v, rel, u, pb, mask=None):
    """Score (i, j) = (q_i + u).k_j + (q_i + v).r_{M+i-j} for j <= M + i, one entry at a time."""
    q, k, v, rel, u, pb = (np.asarray(x, np.float64) for x in (q, k, v, rel, u, pb))
    batch, heads, seg, d = q.shape
    n = k.shape[2]
    mem = n - seg
    out = np.zeros((batch, heads, seg, v.shape[-1]))
    for b in range(batch):
        for h in range(heads):
            for i in range(seg):
                scores, values = [], []
                for j in range(n):
                    if j > mem + i or (mask is not None and not mask[b, j]):
                        continue
                    s = (q[b, h, i] + u[h]) @ k[b, h, j] + (q[b, h, i] + pb[h]) @ rel[
                        h, mem + i - j
                    ]
                    scores.append(s / np.sqrt(d))
                    values.append(v[b, h, j])
                p = np.exp(np.array(scores) - max(scores))
                out[b, h, i] = (p / p.sum()) @ np.array(values)
    return out


@pytest.mark.parametrize("mem", [0, 1, 3, 7])
def test_matches_the_four_term_formula(x64, mem):
    """Catches a wrong relative shift (distances off by the memory length or mirrored), the
    biases added to the wrong term, or a missing causal mask over the segment."""
    args = _inputs(mem, mem=mem)
    mask = np.ones((2, mem + 5), bool)
    mask[1, : min(mem, 2)] = False  # a partly empty memory in row 1
    out = relative_attention(*args, mask=jnp.asarray(mask))
    np.testing.assert_allclose(out, _reference(*args, mask=mask), atol=1e-12)


def test_gradients_match_autodiff_of_a_dense_reference(x64):
    """Catches a gather whose transpose drops or duplicates position-term gradients."""
    q, k, v, rel, u, pb = _inputs(1, mem=4)
    seg, n = q.shape[2], k.shape[2]
    mem = n - seg
    # Dense: the distance matrix one-hot encoded, so no gather is involved.
    dist = mem + np.arange(seg)[:, None] - np.arange(n)[None, :]
    onehot = jnp.asarray((dist[..., None] == np.arange(n)).astype(np.float64))  # [seg, n, n]

    def dense(q, k, v, rel, u, pb):
        content = jnp.einsum("bhqd,bhkd->bhqk", q + u[None, :, None], k)
        rel_per_key = jnp.einsum("qkr,hrd->hqkd", onehot, rel)
        position = jnp.einsum("bhqd,hqkd->bhqk", q + pb[None, :, None], rel_per_key)
        scores = jnp.where(dist >= 0, (content + position) / 2.0, -1e9)
        return jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(scores, -1), v)

    def loss(fn):
        return lambda *a: jnp.sum(jnp.sin(fn(*a)))

    argnums = tuple(range(6))
    want = jax.grad(loss(dense), argnums)(q, k, v, rel, u, pb)
    got = jax.grad(loss(relative_attention), argnums)(q, k, v, rel, u, pb)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-11)


def test_output_depends_on_distances_only(x64):
    """A masked-out memory of any length leaves the segment's output unchanged: catches
    distances measured from the start of the keys instead of from the query."""
    q, k, v, rel, u, pb = _inputs(2, mem=6)
    seg = q.shape[2]
    no_mem = relative_attention(q, k[:, :, 6:], v[:, :, 6:], rel, u, pb)
    mask = jnp.asarray(np.arange(6 + seg) >= 6)[None].repeat(2, 0)
    with_mem = relative_attention(q, k, v, rel, u, pb, mask=mask)
    np.testing.assert_allclose(with_mem, no_mem, atol=1e-12)


def test_sinusoid_encodings_formula(x64):
    """Catches interleaved sin/cos or a wrong frequency exponent (changes every score)."""
    enc = np.asarray(sinusoid_encodings(7, 6, jnp.float64))
    r = np.arange(7)[:, None]
    w = 10000.0 ** (-np.arange(0, 6, 2) / 6)
    np.testing.assert_allclose(enc, np.concatenate([np.sin(r * w), np.cos(r * w)], 1), atol=1e-6)


def test_bfloat16_is_finite_and_close():
    """Catches mask constants or softmax in half precision (NaN / inf for bfloat16 inputs)."""
    args = _inputs(3, mem=3, dtype=jnp.float32)
    ref = relative_attention(*args)
    out = relative_attention(*(a.astype(jnp.bfloat16) for a in args))
    assert jnp.isfinite(out.astype(jnp.float32)).all()
    # bfloat16 keeps 8 significant bits (relative error 2^-8 per rounding); scores of O(3)
    # rounded once in the inputs move probabilities by a few percent: 0.1 bounds it with margin.
    np.testing.assert_allclose(out.astype(jnp.float32), ref, atol=0.1)


def test_errors_name_the_argument():
    q, k, v, rel, u, pb = _inputs(4, mem=2, dtype=jnp.float32)
    with pytest.raises(ValueError, match="rel_k covers"):
        relative_attention(q, k, v, rel[:, :3], u, pb)
    with pytest.raises(ValueError, match="content_bias"):
        relative_attention(q, k, v, rel, u[:, :2], pb)
    with pytest.raises(ValueError, match="must cover"):
        relative_attention(q, k[:, :, :3], v[:, :, :3], rel, u, pb)
    with pytest.raises(ValueError, match="mask"):
        relative_attention(q, k, v, rel, u, pb, mask=jnp.ones((2, 3), bool))
