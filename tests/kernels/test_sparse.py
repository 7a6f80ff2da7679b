"""Sparse attention patterns: the blocked kernel against dense attention with explicit masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax.kernels import (
    SparsePattern,
    bigbird_pattern,
    fixed_pattern,
    full_attention,
    longformer_pattern,
    sparse_attention,
    star_pattern,
    strided_pattern,
)

HEADS = 3

# Small blocks so that a few dozen tokens hold many blocks (windows, globals, random blocks).
PATTERNS = {
    "star": star_pattern(block_len=4),
    "bigbird": bigbird_pattern(4, n_random_blocks=2, seed=1),
    "longformer": longformer_pattern(2, (0, 13), block_len=4),
    "longformer_dilated": longformer_pattern(2, (5,), dilation=3, block_len=5),
    "strided": strided_pattern(4),
    "fixed": fixed_pattern(5, 2),
}


def _inputs(seed, length, dtype=jnp.float64, batch=2, d_head=4):
    keys = jax.random.split(jax.random.key(seed), 3)
    return [jax.random.normal(k, (batch, HEADS, length, d_head), dtype) for k in keys]


def _padding(length):
    mask = np.ones((2, length), bool)
    mask[0, :2] = False  # left padding: under causal, the first queries see no real key
    mask[1, length - 5 :] = False
    return jnp.asarray(mask)


def _explicit_mask(name, pattern, length):
    """Each pattern's definition written per (i, j), independently of the kernel's plan."""
    i = np.arange(length)[:, None]
    j = np.arange(length)[None, :]
    if name == "star":
        return (i == 0) | (j == 0) | (np.abs(i - j) <= 1)
    if name.startswith("longformer"):
        w, d, g = pattern.window, pattern.dilation, np.asarray(pattern.global_positions)
        window = (np.abs(i - j) <= w * d) & ((i - j) % d == 0)
        return window | np.isin(i, g) | np.isin(j, g)
    if name == "strided":
        stride = pattern.block_len
        return (np.abs(i - j) < stride) | ((i - j) % stride == 0)
    if name == "fixed":
        block, c = pattern.block_len, pattern.summary_len
        return (i // block == j // block) | (j % block >= block - c)
    raise AssertionError(name)


def _bigbird_explicit(pattern, length, n_heads):
    """BigBird per (head, i, j): window / global blocks, plus the plan's random blocks."""
    b = pattern.block_len
    nb = -(-length // b)
    qb = np.arange(length)[:, None] // b
    kb = np.arange(length)[None, :] // b
    is_global = lambda blk: (blk == 0) | (blk == nb - 1)  # noqa: E731
    base = is_global(qb) | is_global(kb) | (np.abs(qb - kb) <= 1)
    rand = pattern.plan(length, n_heads).key_blocks[:, :, pattern.n_window_blocks :]
    out = np.zeros((n_heads, length, length), bool)
    for h in range(n_heads):
        picked = np.zeros((nb, nb), bool)
        for m in range(nb):
            picked[m, rand[h, m][rand[h, m] >= 0]] = True
        out[h] = base | picked[qb, kb]
    return out


@pytest.mark.parametrize("name", PATTERNS)
@pytest.mark.parametrize("length", [40, 37])
def test_dense_mask_matches_the_explicit_definition(name, length):
    """Catches a plan that drops or adds keys (wrong window reach, a global key missing from some
    blocks, a partial last block mishandled, wrap-around at the ends)."""
    pattern = PATTERNS[name]
    mask = pattern.dense_mask(length, HEADS)
    if name == "bigbird":
        expected = _bigbird_explicit(pattern, length, HEADS)
    else:
        expected = _explicit_mask(name, pattern, length)[None]
    assert mask.shape == expected.shape
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize("name", PATTERNS)
@pytest.mark.parametrize(("length", "causal"), [(40, False), (37, True)])
def test_values_and_gradients_equal_full_attention_with_the_dense_mask(x64, name, length, causal):
    """Catches a kernel that differs from its own pattern: a key counted twice (global key inside
    a window block), a padded key attended, a wrong causal comparison, a row with no key not
    matching full_attention, gradients lost through the gathers or the global-row overwrite."""
    pattern = PATTERNS[name]
    q, k, v = _inputs(0, length)
    pad = _padding(length)
    allowed = jnp.asarray(pattern.dense_mask(length, HEADS))[None] & pad[:, None, None, :]
    w = jax.random.normal(jax.random.key(9), v.shape, v.dtype)

    sparse = lambda q, k, v: sparse_attention(q, k, v, pattern, causal=causal, mask=pad)  # noqa: E731
    dense = lambda q, k, v: full_attention(q, k, v, causal=causal, mask=allowed)  # noqa: E731
    out, grads = _out_and_grads(sparse, (q, k, v), w)
    ref, ref_grads = _out_and_grads(dense, (q, k, v), w)
    np.testing.assert_allclose(out, ref, atol=1e-10)
    for a, b in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-10)


def _out_and_grads(fn, args, cotangent):
    """``fn(*args)`` and its vector-Jacobian product with ``cotangent``, in one compiled call."""

    @jax.jit
    def run(*args):
        out, vjp = jax.vjp(fn, *args)
        return out, vjp(cotangent)

    return run(*args)


@pytest.mark.parametrize("name", ["star", "bigbird"])
def test_a_fully_padded_row_is_finite_and_equals_full_attention(x64, name):
    """Catches NaN (0/0) or a different fallback for queries with no allowed key at all."""
    pattern = PATTERNS[name]
    q, k, v = _inputs(1, 24)
    pad = jnp.asarray(np.stack([np.zeros(24, bool), np.arange(24) >= 20]))
    allowed = jnp.asarray(pattern.dense_mask(24, HEADS))[None] & pad[:, None, None, :]
    sparse = lambda q, k, v: sparse_attention(q, k, v, pattern, causal=True, mask=pad)  # noqa: E731
    dense = lambda q, k, v: full_attention(q, k, v, causal=True, mask=allowed)  # noqa: E731
    out, grads = _out_and_grads(sparse, (q, k, v), jnp.ones_like(v))
    ref, ref_grads = _out_and_grads(dense, (q, k, v), jnp.ones_like(v))
    assert np.all(np.isfinite(out)) and all(np.all(np.isfinite(g)) for g in grads)
    np.testing.assert_allclose(out, ref, atol=1e-10)
    for a, b in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("name", PATTERNS)
@pytest.mark.parametrize("length", [40, 37])
def test_key_positions_list_the_causal_dense_mask(name, length):
    """Catches a decoding plan that differs from the kernel's pattern (a missed global key, a
    future key, duplicates, global rows not flagged)."""
    pattern = PATTERNS[name]
    keys = pattern.key_positions(length, HEADS, causal=True)
    dense = pattern.dense_mask(length, HEADS) & np.tri(length, dtype=bool)[None]
    heads = dense.shape[0]
    assert keys.index.shape[0] == keys.valid.shape[0] == heads
    assert keys.index.dtype == np.int32
    for h in range(heads):
        for i in range(length):
            if keys.attends_all[i]:
                assert not keys.valid[h, i].any()
                np.testing.assert_array_equal(dense[h, i], np.arange(length) <= i)
                continue
            listed = keys.index[h, i][keys.valid[h, i]]
            np.testing.assert_array_equal(listed, np.flatnonzero(dense[h, i]))


@pytest.mark.parametrize("name", PATTERNS)
def test_key_positions_at_one_position_equal_the_listed_rows(name):
    """Catches the decoding step's traced lookup drifting from the static rows (a wrong block
    for the position, a missed global key or column, a future key)."""
    pattern, length = PATTERNS[name], 37
    keys = pattern.key_positions(length, HEADS, causal=True)
    lookup = jax.jit(jax.vmap(lambda i: pattern.key_positions_at(length, i, HEADS)))
    index, valid, attends_all = (np.asarray(x) for x in lookup(jnp.arange(length)))
    np.testing.assert_array_equal(attends_all, keys.attends_all)
    for h in range(keys.index.shape[0]):
        for i in range(length):
            got = np.sort(index[i, h][valid[i, h]])
            np.testing.assert_array_equal(got, keys.index[h, i][keys.valid[h, i]])


@pytest.mark.parametrize("name", [n for n in PATTERNS if n != "bigbird"])
def test_causal_rows_do_not_depend_on_the_total_length(name):
    """Catches a plan whose causal rows change when the sequence grows (a decoder could then not
    reuse a prefill computed at a shorter length). BigBird's do, by design (its last block)."""
    pattern = PATTERNS[name]
    short = pattern.dense_mask(23) & np.tri(23, dtype=bool)
    long = pattern.dense_mask(41) & np.tri(41, dtype=bool)
    np.testing.assert_array_equal(short, long[:, :23, :23])


def test_bigbird_random_plan_is_static_per_seed_different_per_head_and_over_the_whole_length():
    """Catches random blocks redrawn per call, shared by all heads, ignoring the seed, drawn
    among covered blocks, or restricted to the start of the sequence (the reference's bug)."""
    pattern = bigbird_pattern(16, n_random_blocks=3, seed=3)
    length, heads = 16 * 100 + 5, 4
    plan = pattern.plan(length, heads)
    nb = plan.n_blocks
    assert nb == 101 and plan.key_blocks.shape == (heads, nb, 3 + 3)
    again = bigbird_pattern(16, n_random_blocks=3, seed=3).plan(length, heads)
    np.testing.assert_array_equal(plan.key_blocks, again.key_blocks)
    other = bigbird_pattern(16, n_random_blocks=3, seed=4).plan(length, heads)
    assert not np.array_equal(plan.key_blocks, other.key_blocks)
    rand = plan.key_blocks[:, 1:-1, 3:]  # non-global query blocks
    for h in range(1, heads):
        assert not np.array_equal(rand[0], rand[h])
    rows = np.arange(1, nb - 1)[None, :, None]
    assert np.all(rand >= 1) and np.all(rand <= nb - 2)  # never a global block
    assert np.all(np.abs(rand - rows) > 1)  # never a window block
    assert all(len(set(r)) == 3 for r in rand.reshape(-1, 3))  # distinct
    # Drawn over the whole length: far beyond the first 1,024 tokens (64 blocks of 16).
    assert set(np.unique(rand)) == set(range(1, nb - 1))
    # Uniform draws over blocks 1..99 put 36/99 = 0.36 of them at block >= 64; over 4 * 99 * 3 =
    # 1188 draws the binomial standard deviation is 0.014, so 0.25 is ~8 sigma below the mean,
    # while a draw confined to the first 64 blocks (the bug) gives 0.
    assert np.mean(rand >= 64) > 0.25


def test_bigbird_short_sequences_use_what_is_left_without_falling_back():
    """Catches an error or a silent dense fallback when fewer blocks than the plan exist."""
    pattern = bigbird_pattern(4, n_random_blocks=3)
    for length in (1, 4, 9, 17, 24):
        mask = pattern.dense_mask(length, 2)
        assert mask.shape == (2, length, length)
    # 6 blocks: globals 0 and 5; block 2 has window 1..3, so only block 4 is left to draw.
    plan = pattern.plan(24, 2)
    rand = plan.key_blocks[:, 2, 3:]
    np.testing.assert_array_equal(np.sort(rand, axis=-1), [[-1, -1, 4], [-1, -1, 4]])


def test_pattern_is_static_and_hashable():
    """Catches a pattern that cannot be a jit static argument or a config value."""
    assert star_pattern() == star_pattern() and hash(star_pattern()) == hash(star_pattern())
    assert longformer_pattern(2, [13, 0, 0]) == longformer_pattern(2, (0, 13))
    q, k, v = _inputs(2, 16, jnp.float32)
    fn = jax.jit(sparse_attention, static_argnums=3)
    fn(q, k, v, star_pattern(block_len=4))
    fn(q, k, v, star_pattern(block_len=4))  # an equal pattern: no recompilation
    assert fn._cache_size() == 1


@pytest.mark.parametrize("name", ["bigbird", "strided"])
def test_bfloat16_is_finite_and_close_to_float32(name):
    """Catches mask values overflowing in half precision or scores kept in bfloat16."""
    pattern = PATTERNS[name]
    q, k, v = _inputs(3, 37, jnp.float32)
    pad = _padding(37)
    run = jax.jit(lambda q, k, v: sparse_attention(q, k, v, pattern, causal=True, mask=pad))
    ref = run(q, k, v)
    out = run(*(x.astype(jnp.bfloat16) for x in (q, k, v)))
    assert out.dtype == jnp.bfloat16
    out = np.asarray(out, np.float32)
    assert np.all(np.isfinite(out))
    # Inputs rounded to bfloat16 (relative 2^-8) move scores of |q.k| ~ a few by a few 2^-8;
    # outputs (averages of unit-scale values) within 8 ulps of 1.0.
    np.testing.assert_allclose(out, ref, atol=8 * 2.0**-8)


def test_dropout_keeps_one_minus_p_scaled_and_is_deterministic_given_the_key():
    """Catches dropout not applied (or applied twice), missing 1/(1-p) scaling, a key ignored,
    or global rows left undropped."""
    pattern = star_pattern(block_len=4)
    length, rate = 64, 0.3
    q, k, _ = _inputs(4, length, jnp.float32, batch=2)
    # One-hot values: the output row is the (dropped) probability row itself.
    v = jnp.broadcast_to(jnp.eye(length, dtype=jnp.float32), (2, HEADS, length, length))
    run = jax.jit(
        lambda key, rate: sparse_attention(q, k, v, pattern, dropout_rate=rate, dropout_key=key),
        static_argnums=1,
    )
    probs = run(None, 0.0)
    key = jax.random.key(7)
    dropped, again, other = run(key, rate), run(key, rate), run(jax.random.key(8), rate)
    np.testing.assert_array_equal(dropped, again)
    assert not np.array_equal(dropped, other)
    probs, dropped = np.asarray(probs), np.asarray(dropped)
    nonzero = probs > 0
    kept = nonzero & (dropped != 0)
    assert np.all(dropped[~nonzero] == 0)
    np.testing.assert_allclose(dropped[kept], probs[kept] / (1 - rate), rtol=1e-5)
    n = nonzero.sum()
    frac = kept.sum() / n
    assert abs(frac - (1 - rate)) < 4 * np.sqrt(rate * (1 - rate) / n), (frac, n)
    # The global row (token 0, dense pass) is dropped too.
    row0 = nonzero[:, :, 0]
    assert 0 < (kept[:, :, 0].sum() / row0.sum()) < 1


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: bigbird_pattern(0), "block_len"),
        (lambda: bigbird_pattern(4, n_window_blocks=2), "n_window_blocks"),
        (lambda: bigbird_pattern(4, n_random_blocks=-1), "n_random_blocks"),
        (lambda: longformer_pattern(-1), "window"),
        (lambda: longformer_pattern(2, dilation=0), "dilation"),
        (lambda: longformer_pattern(2, (-1,)), "global_positions"),
        (lambda: strided_pattern(0), "stride"),
        (lambda: fixed_pattern(0, 1), "block_len"),
        (lambda: fixed_pattern(4, 5), "c"),
        (lambda: star_pattern(block_len=0), "block_len"),
        (lambda: SparsePattern("dense", 4), "kind"),
    ],
)
def test_bad_pattern_settings_raise_naming_the_argument(make, match):
    """Catches impossible settings accepted silently (and errors that do not say which)."""
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_call_arguments_raise_naming_the_argument():
    """Catches wrong shapes or out-of-range global positions reaching the gathers (which clip
    out-of-range indices silently in JAX)."""
    q, k, v = _inputs(5, 16, jnp.float32)
    with pytest.raises(ValueError, match="global_positions"):
        sparse_attention(q, k, v, longformer_pattern(2, (16,)))
    with pytest.raises(ValueError, match="mask"):
        sparse_attention(q, k, v, star_pattern(), mask=jnp.ones((2, 15), bool))
    with pytest.raises(ValueError, match="length"):
        sparse_attention(q, k[:, :, :8], v[:, :, :8], star_pattern())
    with pytest.raises(ValueError, match="shape"):
        sparse_attention(q[0], k, v, star_pattern())
    with pytest.raises(ValueError, match="pattern"):
        sparse_attention(q, k, v, "star")
    with pytest.raises(ValueError, match="dropout_key"):
        sparse_attention(q, k, v, star_pattern(), dropout_rate=0.1)


def _temp_bytes(pattern, length, heads=2, d_head=32):
    shape = jax.ShapeDtypeStruct((1, heads, length, d_head), jnp.float32)

    def loss(q, k, v):
        out = sparse_attention(q, k, v, pattern, causal=True)
        return jnp.sum(out * out)

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    return grad.lower(shape, shape, shape).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.slow
@pytest.mark.parametrize(
    "pattern",
    [star_pattern(), bigbird_pattern(64), longformer_pattern(32, (0, 100))],
    ids=["star", "bigbird", "longformer"],
)
def test_compiled_memory_is_linear_in_length(pattern):
    """Catches an L x L array anywhere in forward or backward (ratio 16 at 4x the length)."""
    small, large = _temp_bytes(pattern, 2048), _temp_bytes(pattern, 8192)
    assert large <= 4.5 * small, (small, large)
