"""The blocked window kernel against a direct (all-windows-at-once) re-statement."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from reformer_jax.kernels.masking import mask_values
from reformer_jax.kernels.window import chunks_per_block, window_attention


def _reference(q, k, v, pos, chunk_len, before, after, wrap, causal, exclude_self, scale, valid,
               group):  # fmt: skip
    """Every chunk's window gathered explicitly (duplicated chunks count twice), one softmax."""
    b, h, n, _ = q.shape
    n_chunks = n // chunk_len
    chunk = np.arange(n_chunks)[:, None] + np.arange(-before, after + 1)[None, :]
    inside = (chunk >= 0) & (chunk < n_chunks)
    key_idx = ((chunk % n_chunks)[:, :, None] * chunk_len + np.arange(chunk_len)).reshape(
        n_chunks, -1
    )
    key_inside = np.repeat(inside, chunk_len, axis=1)
    qc = q.reshape(b, h, n_chunks, chunk_len, -1)
    kw, vw, pw = k[:, :, key_idx], v[:, :, key_idx], pos[:, :, key_idx]
    scores = jnp.einsum("bhncd,bhnwd->bhncw", qc, kw) * scale
    qp = pos.reshape(b, h, n_chunks, chunk_len)[..., None]
    allowed = jnp.ones(scores.shape, bool)
    if causal:
        allowed &= pw[:, :, :, None, :] <= qp
    if not wrap:
        allowed &= key_inside[None, None, :, None, :]
    if valid is not None:
        allowed &= valid[:, :, key_idx][:, :, :, None, :]
    if group is not None:
        allowed &= group[:, :, key_idx][:, :, :, None, :] == group.reshape(qp.shape)
    mask_value, self_value = mask_values(scores.dtype)
    scores = jnp.where(allowed, scores, mask_value)
    if exclude_self:
        scores = jnp.where(pw[:, :, :, None, :] == qp, self_value, scores)
    lse = jax.nn.logsumexp(scores, axis=-1)
    out = jnp.einsum("bhncw,bhnwd->bhncd", jnp.exp(scores - lse[..., None]), vw)
    return out.reshape(b, h, n, -1), lse.reshape(b, h, n)


CASES = [
    # chunk_len, n, before, after, wrap, causal, exclude_self, block_queries
    (4, 32, 1, 0, True, True, True, 8),  # LSH layout: several blocks per row, halo crosses blocks
    (4, 32, 1, 0, True, True, True, 4),  # one chunk per block
    (4, 32, 2, 1, False, False, False, 8),  # local, non-causal, looking both ways
    (8, 24, 1, 1, True, False, True, 16),  # blocks of 2 chunks of an odd chunk count (3 -> 1)
    (4, 8, 2, 1, True, False, False, 64),  # a window longer than the sequence (wrapped twice)
    (4, 16, 0, 0, False, True, True, 8),  # no neighbours
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("masks", [False, True])
def test_matches_reference_values_and_gradients(x64, case, masks):
    chunk_len, n, before, after, wrap, causal, exclude_self, block_queries = case
    keys = jax.random.split(jax.random.key(n + before), 6)
    q, k, v = (jax.random.normal(kk, (2, 2, n, 4), jnp.float64) for kk in keys[:3])
    pos = jnp.stack([jax.random.permutation(kk, n) for kk in jax.random.split(keys[3], 4)])
    pos = pos.reshape(2, 2, n).astype(jnp.int32)
    valid = group = None
    if masks:
        valid = jax.random.bernoulli(keys[4], 0.8, (2, 2, n))
        group = jax.random.randint(keys[5], (2, 2, n), 0, 2)
    settings = dict(
        chunk_len=chunk_len,
        before=before,
        after=after,
        wrap=wrap,
        causal=causal,
        exclude_self=exclude_self,
        scale=0.7,
        valid=valid,
        group=group,
    )

    def blocked(q, k, v):
        return window_attention(
            q,
            k,
            v,
            pos,
            chunk_len=chunk_len,
            n_before=before,
            n_after=after,
            wrap=wrap,
            causal=causal,
            exclude_self=exclude_self,
            scale=0.7,
            key_valid=valid,
            key_group=group,
            block_queries=block_queries,
        )

    out, lse = blocked(q, k, v)
    ref_out, ref_lse = _reference(q, k, v, pos, **settings)
    np.testing.assert_allclose(out, ref_out, atol=1e-12)
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-12)

    # Both outputs carry gradient (the LSH kernel weights its rounds by lse).
    w_out = jax.random.normal(keys[0], out.shape, jnp.float64)
    w_lse = jax.random.normal(keys[1], lse.shape, jnp.float64)

    def loss(fn):
        def f(q, k, v):
            o, s = fn(q, k, v)
            return jnp.sum(o * w_out) + jnp.sum(jnp.where(s > -1e4, s, 0.0) * w_lse)

        return f

    grads = jax.grad(loss(blocked), argnums=(0, 1, 2))(q, k, v)
    ref_grads = jax.grad(loss(lambda q, k, v: _reference(q, k, v, pos, **settings)), (0, 1, 2))(
        q, k, v
    )
    for g, r in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(g, r, atol=1e-10)


def test_dropout_gradients_match_finite_differences(x64):
    keys = jax.random.split(jax.random.key(3), 3)
    q, k, v = (jax.random.normal(kk, (1, 2, 16, 4), jnp.float64) for kk in keys)
    pos = jnp.broadcast_to(jnp.arange(16, dtype=jnp.int32), (1, 2, 16))

    def f(q, k, v):
        out, lse = window_attention(
            q,
            k,
            v,
            pos,
            chunk_len=4,
            n_before=1,
            n_after=0,
            wrap=False,
            causal=True,
            exclude_self=False,
            scale=0.5,
            dropout_rate=0.3,
            dropout_key=jax.random.key(7),
            block_queries=4,
        )
        return out, lse

    out, _ = f(q, k, v)
    no_dropout = window_attention(
        q, k, v, pos, chunk_len=4, n_before=1, n_after=0, wrap=False, causal=True,
        exclude_self=False, scale=0.5, block_queries=4,
    )[0]  # fmt: skip
    assert not np.allclose(out, no_dropout)  # dropout is applied
    np.testing.assert_allclose(out, f(q, k, v)[0])  # and is a function of the key only
    check_grads(f, (q, k, v), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_chunks_per_block_divides_and_respects_the_budget():
    assert chunks_per_block(512, 64) == 32
    assert chunks_per_block(7, 64) == 7
    assert chunks_per_block(96, 64, block_queries=2048) == 32
    assert chunks_per_block(97, 64) == 1  # prime: one chunk per block
    assert chunks_per_block(3, 4096) == 1  # chunks larger than the budget


def test_rejects_length_not_a_multiple_of_the_chunk():
    x = jnp.zeros((1, 1, 10, 4))
    with pytest.raises(ValueError, match="multiple of chunk_len"):
        window_attention(
            x, x, x, jnp.zeros((1, 1, 10), jnp.int32), chunk_len=4, n_before=1, n_after=0,
            wrap=True, causal=False, exclude_self=False, scale=1.0,
        )  # fmt: skip
