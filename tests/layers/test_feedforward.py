import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from reformer_jax.layers.feedforward import FeedForward
from tests.helpers import DropoutRecorder, assert_kept_fraction, assert_masks_distinct, keep_mask
from tests.model_utils import tiny_config


def _grads(ff, x):
    graphdef, state = nnx.split(ff)

    def loss(state, x):
        return jnp.sum(nnx.merge(graphdef, state)(x) ** 2)

    return jax.grad(loss, argnums=(0, 1))(state, x)


def test_chunked_equals_unchunked_values_and_gradients(x64):
    cfg = tiny_config(dtype="float64", param_dtype="float64", ff_activation="gelu")
    ff = FeedForward(cfg, rngs=nnx.Rngs(0))
    chunked = FeedForward(cfg.replace(ff_chunk_size=7), rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (3, 10, cfg.d_model), jnp.float64)
    np.testing.assert_allclose(chunked(x), ff(x), atol=1e-12)
    g_full, g_chunk = _grads(ff, x), _grads(chunked, x)
    for a, b in zip(jax.tree.leaves(g_full), jax.tree.leaves(g_chunk), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-10)


def test_chunking_bounds_the_d_ff_activations():
    """Compiled memory of value-and-grad: chunked holds one chunk of d_ff activations."""
    cfg = tiny_config(d_model=64, d_ff=4096, pos_embedding="none")
    x = jax.ShapeDtypeStruct((1, 2048, 64), jnp.float32)

    def temp_bytes(chunk):
        ff = FeedForward(cfg.replace(ff_chunk_size=chunk), rngs=nnx.Rngs(0))
        graphdef, state = nnx.split(ff)

        def loss(state, x):
            return jnp.sum(nnx.merge(graphdef, state)(x) ** 2)

        compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(state, x).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    full, chunked = temp_bytes(0), temp_bytes(128)
    activations = 2048 * 4096 * 4  # one [rows, d_ff] float32 array: 32 MiB
    assert full >= activations
    assert chunked < activations / 4, (full, chunked)


def test_dropout_keys_are_replayable():
    cfg = tiny_config(ff_dropout=0.5, ff_chunk_size=5)
    ff = FeedForward(cfg, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 6, cfg.d_model))
    a = ff(x, dropout_key=jax.random.key(4))
    np.testing.assert_array_equal(a, ff(x, dropout_key=jax.random.key(4)))
    assert not np.allclose(a, ff(x))


def test_dropout_rate_scaling_and_masks_independent_across_chunks(monkeypatch):
    """Catches feed-forward dropout keeping ``rate`` instead of ``1 - rate``, a missing
    1/(1-p) scale, and every chunk reusing one key (the chunk index not folded in: each chunk
    of rows would get the same mask), for both the inner (ff_dropout) and output
    (hidden_dropout) dropout."""
    from reformer_jax.layers import feedforward

    recorder = DropoutRecorder().install(monkeypatch, feedforward)
    cfg = tiny_config(ff_dropout=0.3, hidden_dropout=0.2, ff_chunk_size=16, d_ff=32)
    ff = FeedForward(cfg, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (4, 32, cfg.d_model))  # 128 rows: 8 chunks
    jax.block_until_ready(ff(x, dropout_key=jax.random.key(4)))
    by_rate: dict[float, list] = {0.3: [], 0.2: []}
    for rate, inp, out in recorder.calls:
        by_rate[rate].append(keep_mask(out, inp, rate))
    for rate, pairs in by_rate.items():
        assert len(pairs) == 8, "one dropout call per chunk"
        kept = np.stack([k for k, _ in pairs])
        live = np.stack([lv for _, lv in pairs])
        assert_kept_fraction(kept, live, rate)
        assert_masks_distinct(list(kept))
