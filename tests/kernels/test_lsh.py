import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from reformer_jax.kernels import (
    auto_n_buckets,
    draw_rotations,
    full_attention,
    hash_vectors,
    lsh_attention,
    rotation_columns,
    sort_order,
    total_buckets,
    unit_keys,
)
from tests.kernels.reference import dense_attention, unit


def _inputs(seed, shape, dtype=jnp.float64):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return jax.random.normal(k1, shape, dtype), jax.random.normal(k2, shape, dtype)


def _shared_qk_reference(qk, v, allowed):
    """Full attention with the LSH scoring: unit keys, unscaled queries, soft self mask."""
    return dense_attention(qk, unit(qk), v, allowed, 1.0, self_score=-1e5)


def test_auto_n_buckets_matches_the_reference_configs():
    assert auto_n_buckets(65536, 256) == [32, 16]  # enwik8: 512 buckets
    assert auto_n_buckets(12288, 128) == [16, 12]  # imagenet64: 192 buckets
    assert auto_n_buckets(1024, 64) == 32
    assert auto_n_buckets(10, 64) == 2
    assert total_buckets([32, 16]) == 512
    assert rotation_columns([32, 16]) == 24
    assert rotation_columns(64) == 32


def test_draw_rotations_shape_and_bad_buckets():
    rot = draw_rotations(jax.random.key(0), 3, 8, 4, [4, 6])
    assert rot.shape == (3, 8, 4, 5)
    with pytest.raises(ValueError, match="even"):
        draw_rotations(jax.random.key(0), 3, 8, 4, 7)
    with pytest.raises(ValueError, match="n_buckets"):
        hash_vectors(jnp.zeros((1, 3, 4, 8)), rot, 8)


@pytest.mark.parametrize("n_buckets", [8, [2, 4], [4, 2, 6]])
def test_hash_vectors_is_argmax_over_signed_rotations(n_buckets):
    x, _ = _inputs(1, (2, 3, 10, 6), jnp.float32)
    rot = draw_rotations(jax.random.key(2), 3, 6, 2, n_buckets)
    buckets = np.asarray(hash_vectors(x, rot, n_buckets))
    rotated = np.einsum("bhld,hdkr->bhklr", np.asarray(x), np.asarray(rot))
    factors = [n_buckets] if isinstance(n_buckets, int) else n_buckets
    expected, col, radix = 0, 0, 1
    for f in factors:
        part = rotated[..., col : col + f // 2]
        expected = expected + radix * np.argmax(np.concatenate([part, -part], -1), -1)
        col, radix = col + f // 2, radix * f
    np.testing.assert_array_equal(buckets, expected)
    assert buckets.shape == (2, 3, 2, 10) and buckets.max() < total_buckets(n_buckets)


def test_hash_vectors_breaks_ties_as_the_concatenated_argmax():
    """Catches an argmax that no longer follows ``argmax(concat[xR, -xR])`` on ties: the kernel
    takes the first half's ``argmax`` or the second half's ``argmin`` without forming the
    concatenation, and an exact tie between the largest value and the negated smallest must
    still go to the first half (zero vectors, integer-valued rotations)."""
    x = jnp.asarray(
        [[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0], [1.0, -1.0], [-1.0, 1.0], [0.0, 2.0], [2.0, 2.0]]
    )[None, None]
    rot = jnp.asarray([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]])[None, :, None, :]
    rotated = np.einsum("ld,dc->lc", np.asarray(x[0, 0]), np.asarray(rot[0, :, 0]))
    expected = np.argmax(np.concatenate([rotated, -rotated], -1), -1)
    np.testing.assert_array_equal(hash_vectors(x, rot, 6)[0, 0, 0], expected)


def test_hash_vectors_keeps_one_copy_of_the_rotated_vectors():
    """Catches hashing that forms ``concat[xR, -xR]`` again: at 64K tokens with 512 buckets
    the concatenation and the negation were 3 GiB, the largest temporaries of the enwik8
    training step. Without them the compiled temporaries stay near the rotated array (1.25x
    here; 4x with the concatenation)."""
    q = jax.ShapeDtypeStruct((1, 2, 4096, 32), jnp.float32)
    rot = jax.ShapeDtypeStruct((2, 32, 2, 64), jnp.float32)
    compiled = jax.jit(lambda q, r: hash_vectors(q, r, 128)).lower(q, rot).compile()
    rotated_bytes = 2 * 4096 * 2 * 64 * 4
    assert compiled.memory_analysis().temp_size_in_bytes <= 2 * rotated_bytes


def test_hash_vectors_is_angular_and_sends_padding_to_its_own_bucket():
    x, _ = _inputs(3, (1, 2, 9, 4), jnp.float32)
    rot = draw_rotations(jax.random.key(4), 2, 4, 3, 6)
    np.testing.assert_array_equal(hash_vectors(x, rot, 6), hash_vectors(7.5 * x, rot, 6))
    mask = jnp.arange(9)[None] >= 2  # positions 0 and 1 padded
    buckets = hash_vectors(x, rot, 6, mask)
    assert (buckets[..., :2] == 6).all() and (buckets[..., 2:] < 6).all()


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(
    ("length", "chunk_len", "n_hashes"),
    [(32, 16, 1), (30, 16, 1), (24, 24, 3), (20, 32, 2), (16, 16, 4)],
)
def test_equals_full_attention_when_one_window_covers_everything(
    x64, causal, length, chunk_len, n_hashes
):
    """One round with two chunks (the look-back wraps) or one chunk per round sees all keys."""
    qk, v = _inputs(5, (2, 3, length, 8))
    rot = draw_rotations(jax.random.key(6), 3, 8, n_hashes, 4, jnp.float64)
    mask = np.ones((2, length), bool)
    mask[1, -3:] = False
    for m in (None, mask):
        out = lsh_attention(
            qk,
            v,
            rot,
            n_buckets=4,
            chunk_len=chunk_len,
            causal=causal,
            mask=None if m is None else jnp.asarray(m),
        )
        allowed = np.ones((2, 1, length, length), bool)
        if causal:
            allowed &= np.tril(allowed[0, 0])
        if m is not None:
            allowed &= m[:, None, None, :]
        ref = _shared_qk_reference(qk, v, allowed)
        valid = np.broadcast_to(
            (mask if m is not None else np.ones_like(mask))[:, None], out.shape[:3]
        )
        np.testing.assert_allclose(np.asarray(out)[valid], ref[valid], atol=1e-9)
        # The kernel-level reference agrees too.
        full = full_attention(
            qk,
            unit_keys(qk),
            v,
            scale=1.0,
            exclude_self=True,
            causal=causal,
            mask=None if m is None else jnp.asarray(m),
        )
        np.testing.assert_allclose(np.asarray(out)[valid], np.asarray(full)[valid], atol=1e-9)


def _explicit_lsh(qk, v, buckets, chunk_len, before, after, causal, valid):
    """A slow, loop-based re-statement of the algorithm (per example, head and query)."""
    qk, v = np.asarray(qk, np.float64), np.asarray(v, np.float64)
    batch, heads, length, _ = qk.shape
    n_hashes = buckets.shape[2]
    keys = unit(qk)
    out = np.zeros_like(v)
    for b in range(batch):
        for h in range(heads):
            order = np.concatenate(
                [np.lexsort((np.arange(length), buckets[b, h, r])) for r in range(n_hashes)]
            )
            n_chunks = len(order) // chunk_len
            chunks = order.reshape(n_chunks, chunk_len)
            per_round = []
            for r in range(n_hashes):
                o_r, lse_r = np.zeros((length, v.shape[-1])), np.zeros(length)
                for c in range(r * length // chunk_len, (r + 1) * length // chunk_len):
                    window = np.concatenate(
                        [chunks[(c + d) % n_chunks] for d in range(-before, after + 1)]
                    )
                    for i in chunks[c]:
                        s = qk[b, h, i] @ keys[b, h, window].T
                        ok = valid[b, window].copy()
                        if causal:
                            ok &= window <= i
                        s = np.where(ok, s, -1e9)
                        s = np.where(window == i, -1e5, s)
                        m = s.max()
                        p = np.exp(s - m)
                        lse_r[i] = m + np.log(p.sum())
                        o_r[i] = (p / p.sum()) @ v[b, h, window]
                per_round.append((o_r, lse_r))
            lses = np.stack([lse for _, lse in per_round])
            w = np.exp(lses - lses.max(0))
            w /= w.sum(0)
            out[b, h] = sum(w[r][:, None] * per_round[r][0] for r in range(n_hashes))
    return out


@pytest.mark.parametrize(
    ("length", "chunk_len", "n_hashes", "n_buckets", "before", "after", "causal", "pad"),
    [
        (32, 4, 2, 8, 1, 0, True, None),
        (32, 4, 3, [2, 4], 1, 0, False, None),
        (30, 4, 2, 8, 2, 1, True, "start"),
        (27, 8, 1, 4, 1, 1, False, "end"),
    ],
)
def test_matches_loop_reference(
    x64, length, chunk_len, n_hashes, n_buckets, before, after, causal, pad
):
    qk, v = _inputs(7, (2, 2, length, 4))
    rot = draw_rotations(jax.random.key(8), 2, 4, n_hashes, n_buckets, jnp.float64)
    mask = np.ones((2, length), bool)
    if pad == "start":
        mask[0, :2] = False
    elif pad == "end":
        mask[1, -5:] = False
    m = None if pad is None else jnp.asarray(mask)
    out = lsh_attention(
        qk,
        v,
        rot,
        n_buckets=n_buckets,
        chunk_len=chunk_len,
        n_chunks_before=before,
        n_chunks_after=after,
        causal=causal,
        mask=m,
    )
    padded = length + (-length) % chunk_len
    buckets = np.asarray(hash_vectors(qk, rot, n_buckets, m))
    pad_bucket = total_buckets(n_buckets)
    buckets = np.pad(buckets, [(0, 0)] * 3 + [(0, padded - length)], constant_values=pad_bucket)
    qk_p = np.pad(np.asarray(qk), [(0, 0), (0, 0), (0, padded - length), (0, 0)])
    v_p = np.pad(np.asarray(v), [(0, 0), (0, 0), (0, padded - length), (0, 0)])
    valid_p = np.pad(mask, [(0, 0), (0, padded - length)])
    ref = _explicit_lsh(qk_p, v_p, buckets, chunk_len, before, after, causal, valid_p)[
        :, :, :length
    ]
    valid = np.broadcast_to(mask[:, None], out.shape[:3])
    np.testing.assert_allclose(np.asarray(out)[valid], ref[valid], atol=1e-9)


def test_causal_outputs_never_attend_to_the_future(x64):
    """Future values and keys never reach earlier outputs.

    What future tokens can change is the sorted order, hence which earlier keys share a chunk
    with an earlier query: that is inherent to the lineage's sort-and-chunk LSH (docs/lsh.md).
    So the future's keys are held fixed in the hash (same buckets) and its vectors perturbed.
    """
    qk, v = _inputs(9, (1, 2, 40, 4))
    rot = draw_rotations(jax.random.key(10), 2, 4, 2, 4, jnp.float64)
    i = 17
    buckets = hash_vectors(qk, rot, 4)
    kwargs = dict(n_buckets=4, chunk_len=8, n_chunks_after=1, causal=True, buckets=buckets)
    out = lsh_attention(qk, v, rot, **kwargs)
    bump = jnp.zeros_like(qk).at[:, :, i + 1 :].set(3.0)
    out2 = lsh_attention(qk + bump, v - bump, rot, **kwargs)
    np.testing.assert_allclose(out[:, :, : i + 1], out2[:, :, : i + 1], atol=1e-12)
    assert not np.allclose(out[:, :, i + 1 :], out2[:, :, i + 1 :])
    # Future values alone never matter, whatever the hashing.
    out3 = lsh_attention(qk, v - bump, rot, n_buckets=4, chunk_len=8, causal=True)
    out4 = lsh_attention(qk, v, rot, n_buckets=4, chunk_len=8, causal=True)
    np.testing.assert_allclose(out3[:, :, : i + 1], out4[:, :, : i + 1], atol=1e-12)


@pytest.mark.parametrize("padded_positions", [[0, 1], [0, 1, 2, 3, 4], [13, 14, 15], [6]])
def test_valid_outputs_ignore_padded_values(x64, padded_positions):
    qk, v = _inputs(11, (2, 2, 16, 4))
    rot = draw_rotations(jax.random.key(12), 2, 4, 2, 4, jnp.float64)
    mask = np.ones((2, 16), bool)
    mask[:, padded_positions] = False
    m = jnp.asarray(mask)
    out = lsh_attention(qk, v, rot, n_buckets=4, chunk_len=4, mask=m)
    noise = 100.0 * jnp.ones_like(qk) * (~m)[:, None, :, None]
    out2 = lsh_attention(qk + noise, v - noise, rot, n_buckets=4, chunk_len=4, mask=m)
    valid = np.broadcast_to(mask[:, None], out.shape[:3])
    np.testing.assert_allclose(np.asarray(out)[valid], np.asarray(out2)[valid], atol=1e-10)


def test_attend_across_buckets_false_restricts_to_the_bucket(x64):
    qk, v = _inputs(13, (1, 2, 16, 4))
    rot = draw_rotations(jax.random.key(14), 2, 4, 1, 4, jnp.float64)
    out = lsh_attention(qk, v, rot, n_buckets=4, chunk_len=8, attend_across_buckets=False)
    b = np.asarray(hash_vectors(qk, rot, 4))[:, :, 0]
    allowed = b[:, :, :, None] == b[:, :, None, :]
    ref = _shared_qk_reference(qk, v, allowed)
    np.testing.assert_allclose(out, ref, atol=1e-9)


def test_precomputed_buckets_are_used():
    qk, v = _inputs(15, (1, 2, 16, 4), jnp.float32)
    rot = draw_rotations(jax.random.key(16), 2, 4, 2, 4)
    buckets = hash_vectors(qk, rot, 4)
    kwargs = dict(n_buckets=4, chunk_len=4)
    np.testing.assert_allclose(
        lsh_attention(qk, v, rot, buckets=buckets, **kwargs), lsh_attention(qk, v, rot, **kwargs)
    )
    other = lsh_attention(qk, v, rot, buckets=(buckets + 1) % 4, **kwargs)
    assert not np.allclose(other, lsh_attention(qk, v, rot, **kwargs))
    with pytest.raises(ValueError, match="buckets must be"):
        lsh_attention(qk, v, rot, buckets=buckets[:, :, :1], **kwargs)


def test_precomputed_order_is_used_and_skips_hashing_and_sorting():
    """Catches a kernel that hashes or sorts again although the forward's order is passed (the
    reversible backward's replay), or that ignores the order it is given."""
    qk, v = _inputs(15, (1, 2, 14, 4), jnp.float32)  # 14: padded to 16 inside
    rot = draw_rotations(jax.random.key(16), 2, 4, 2, 4)
    kwargs = dict(n_buckets=4, chunk_len=4, causal=True)
    order = sort_order(hash_vectors(qk, rot, 4), 4, 4)
    assert order.sorted_pos.shape == (1, 2, 2, 16)
    np.testing.assert_array_equal(
        lsh_attention(qk, v, rot, order=order, **kwargs), lsh_attention(qk, v, rot, **kwargs)
    )
    other = sort_order(jnp.zeros((1, 2, 2, 14), jnp.int32), 4, 4)
    assert not np.allclose(
        lsh_attention(qk, v, rot, order=other, **kwargs), lsh_attention(qk, v, rot, **kwargs)
    )
    jaxpr = str(jax.make_jaxpr(lambda q, v: lsh_attention(q, v, rot, order=order, **kwargs))(qk, v))
    for primitive in (" sort[", " argmax[", " scatter["):
        assert primitive not in jaxpr.replace("\n", " "), primitive
    with pytest.raises(ValueError, match="order must"):
        lsh_attention(qk, v, rot, order=sort_order(hash_vectors(qk, rot, 4), 2, 4), **kwargs)


def test_gradients_flow_through_qk_and_v_only(x64):
    qk, v = _inputs(17, (1, 2, 12, 3))
    rot = draw_rotations(jax.random.key(18), 2, 3, 2, 4, jnp.float64)
    buckets = hash_vectors(qk, rot, 4)

    def fn(qk, v):
        return lsh_attention(qk, v, rot, n_buckets=4, chunk_len=4, causal=True, buckets=buckets)

    check_grads(fn, (qk, v), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)

    def loss(qk, v, rot):
        return jnp.sum(lsh_attention(qk, v, rot, n_buckets=4, chunk_len=4, causal=True) ** 2)

    g_qk, g_v, g_rot = jax.grad(loss, argnums=(0, 1, 2))(qk, v, rot)
    assert np.all(np.asarray(g_rot) == 0.0)
    assert np.abs(g_qk).sum() > 0 and np.abs(g_v).sum() > 0

    # qk acts as query and as key: the key path alone carries gradient.
    def key_only(k_src):
        q_part = jax.lax.stop_gradient(qk)
        return jnp.sum(
            full_attention(q_part, unit_keys(k_src), v, scale=1.0, exclude_self=True) ** 2
        )

    assert np.abs(jax.grad(key_only)(qk)).sum() > 0


def test_dropout_is_keyed():
    qk, v = _inputs(19, (1, 1, 16, 4), jnp.float32)
    rot = draw_rotations(jax.random.key(20), 1, 4, 2, 4)
    kw = dict(n_buckets=4, chunk_len=4, dropout_rate=0.3)
    a = lsh_attention(qk, v, rot, dropout_key=jax.random.key(1), **kw)
    b = lsh_attention(qk, v, rot, dropout_key=jax.random.key(1), **kw)
    c = lsh_attention(qk, v, rot, dropout_key=jax.random.key(2), **kw)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    with pytest.raises(ValueError, match="dropout_key"):
        lsh_attention(qk, v, rot, **kw)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("causal", [False, True])
def test_half_precision_is_finite_and_close(dtype, causal):
    qk, v = _inputs(21, (1, 2, 64, 16), jnp.float32)
    rot = draw_rotations(jax.random.key(22), 2, 16, 2, 8)
    mask = jnp.arange(64)[None] >= 3
    kw = dict(n_buckets=8, chunk_len=8, causal=causal, mask=mask)
    ref = lsh_attention(qk, v, rot, **kw)
    buckets = hash_vectors(qk, rot, 8, mask)
    out = lsh_attention(qk.astype(dtype), v.astype(dtype), rot, buckets=buckets, **kw)
    assert out.dtype == dtype and np.isfinite(np.asarray(out, np.float32)).all()
    # Bound from the dtype's precision (same buckets, so only rounding differs). Rounding q and
    # k_hat moves each score q . k_hat by <= eps * |q| (|k_hat| = 1); softmax turns score errors
    # <= d into probability errors summing to <= 2 d; the output sum_j p_j v_j then moves by
    # <= 2 eps |q| max|v|, plus eps / 2 max|v| for rounding v and the output (eps: the dtype's
    # machine epsilon; bfloat16 2**-7, float16 2**-10). Measured: ~5% of this worst case.
    eps = float(jnp.finfo(dtype).eps)
    q_norm = float(jnp.linalg.norm(qk, axis=-1).max())
    bound = eps * float(jnp.abs(v).max()) * (2 * q_norm + 1)
    error = np.abs(np.asarray(out, np.float32)[:, :, 3:] - np.asarray(ref)[:, :, 3:]).max()
    assert error <= bound, (error, bound)
