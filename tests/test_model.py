import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from reformer_jax.layers.attention import layer_rotations
from reformer_jax.model import ReformerLM, lm_loss
from tests.helpers import DropoutRecorder, assert_kept_fraction, assert_masks_distinct
from tests.model_utils import loss_and_grads, tiny_config


@pytest.mark.parametrize("pattern", [("local", "full"), ("lsh",)])
def test_causal_logits_ignore_future_tokens(pattern):
    # LSH layers are exactly causal when a chunk and its look-back cover the sequence; with
    # more chunks, future tokens can change which past keys share a chunk (docs/lsh.md).
    cfg = tiny_config(n_layers=2, attention_pattern=pattern, lsh_chunk_len=32)
    model = ReformerLM(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 32), 0, cfg.vocab_size)
    i = 13
    other = tokens.at[:, i + 1 :].set((tokens[:, i + 1 :] + 5) % cfg.vocab_size)
    a, b = model(tokens), model(other)
    np.testing.assert_allclose(a[:, : i + 1], b[:, : i + 1], atol=1e-5)
    assert not np.allclose(a[:, i + 1 :], b[:, i + 1 :], atol=1e-3)


def test_any_length_and_changing_batch_sizes():
    cfg = tiny_config(n_layers=2, attention_pattern=("local", "lsh"))
    model = ReformerLM(cfg, rngs=nnx.Rngs(0))
    for batch, length in [(1, 7), (3, 13), (2, 32), (5, 1)]:
        tokens = jnp.ones((batch, length), jnp.int32)
        logits = model(tokens)
        assert logits.shape == (batch, length, cfg.vocab_size)
        assert np.isfinite(np.asarray(logits)).all()
    with pytest.raises(ValueError, match="axial_shape"):
        model(jnp.ones((1, 33), jnp.int32))


@pytest.mark.parametrize("pad_at", ["start", "end"])
def test_padding_never_influences_real_tokens(pad_at):
    cfg = tiny_config(n_layers=2, attention_pattern=("local", "lsh"), causal=False)
    model = ReformerLM(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(2), (2, 20), 0, cfg.vocab_size)
    mask = np.ones((2, 20), bool)
    if pad_at == "start":
        mask[:, :3] = False
    else:
        mask[1, 12:] = False
    m = jnp.asarray(mask)
    other = jnp.where(m, tokens, (tokens + 7) % cfg.vocab_size)
    a, b = model(tokens, mask=m), model(other, mask=m)
    np.testing.assert_allclose(np.asarray(a)[mask], np.asarray(b)[mask], atol=1e-5)


def test_fixed_hash_seed_and_explicit_rotations():
    cfg = tiny_config(n_layers=2, attention_pattern=("lsh",), lsh_chunk_len=4)
    model = ReformerLM(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(3), (1, 32), 0, cfg.vocab_size)
    a = model(tokens, hash_rng=jax.random.key(5))
    b = model(tokens, hash_rng=jax.random.key(6))
    assert not np.allclose(a, b)  # the rotations matter
    rots = {i: layer_rotations(cfg, jax.random.fold_in(jax.random.key(5), i), 4) for i in (0, 1)}
    np.testing.assert_allclose(model(tokens, rotations=rots), a, atol=1e-6)
    seeded = ReformerLM(cfg.replace(hash_seed=5), rngs=nnx.Rngs(0))
    np.testing.assert_allclose(seeded(tokens), a, atol=1e-6)
    with pytest.raises(ValueError, match="missing LSH layer"):
        model(tokens, rotations={0: rots[0]})


def test_full_attention_below_threshold_is_exact_shared_qk():
    cfg = tiny_config(n_layers=1, attention_pattern=("lsh",), lsh_chunk_len=32)
    tokens = jax.random.randint(jax.random.key(4), (2, 32), 0, cfg.vocab_size)
    lsh = ReformerLM(cfg, rngs=nnx.Rngs(0))
    exact = ReformerLM(cfg.replace(full_attention_below=64), rngs=nnx.Rngs(0))
    # One chunk per round covers everything, so LSH equals exact shared-QK attention here.
    np.testing.assert_allclose(lsh(tokens), exact(tokens), atol=2e-5)


def test_bfloat16_forward_and_backward_are_finite_and_close():
    """Catches bfloat16-specific failures: mask values or scores that overflow (non-finite),
    logits left in bfloat16 for the loss, and computation lost to low precision (reductions or
    softmax in bfloat16 would cost far more than the few-u errors bounded below)."""
    cfg = tiny_config(n_layers=2, attention_pattern=("local", "lsh"))
    tokens = jax.random.randint(jax.random.key(5), (2, 32), 0, cfg.vocab_size)
    loss32, g32 = loss_and_grads(ReformerLM(cfg, rngs=nnx.Rngs(0)), tokens)
    model16 = ReformerLM(cfg.replace(dtype="bfloat16"), rngs=nnx.Rngs(0))
    assert model16(tokens).dtype == jnp.float32  # logits are promoted for the loss
    loss16, g16 = loss_and_grads(model16, tokens)
    assert np.isfinite(float(loss16))
    # bfloat16 keeps 8 significant bits: unit roundoff u = 2**-8 = 3.9e-3. Loss: the logits
    # carry rounding errors of a few u relative, largely independent across the 62 scored tokens
    # and the features, so they average in the mean loss; measured 4e-4 relative, bound 2u.
    # Gradients: measured 0.023 relative over all parameters (~6u: the backward chains ~10
    # rounded stages) and at most 0.107 for one leaf (a layer-norm scale, whose gradient is a
    # sum over tokens with cancellation; 0.078 with local attention only, the rest from tokens
    # that bfloat16 rounding moves to another LSH bucket); bounds 16u overall, 32u per leaf.
    # The kernels' own half-precision accuracy is tested in tests/kernels.
    u = 2.0**-8
    assert abs(float(loss16) - float(loss32)) < 2 * u * float(loss32)
    flat16, flat32 = (
        np.concatenate([np.asarray(a, np.float32).ravel() for a in jax.tree.leaves(g)])
        for g in (g16, g32)
    )
    assert np.isfinite(flat16).all()
    assert np.linalg.norm(flat16 - flat32) < 16 * u * np.linalg.norm(flat32)
    for a, b in zip(jax.tree.leaves(g16), jax.tree.leaves(g32), strict=True):
        rel = np.linalg.norm(np.asarray(a, np.float32) - b) / (np.linalg.norm(b) + 1e-12)
        assert rel < 32 * u


def test_lm_loss_is_next_token_cross_entropy():
    logits = jnp.log(jnp.array([[[0.5, 0.5], [0.25, 0.75], [1.0, 1e-9]]]))
    tokens = jnp.array([[0, 1, 0]])
    loss, total = lm_loss(logits, tokens)
    np.testing.assert_allclose(loss, (-np.log(0.5) - np.log(0.25)) / 2, rtol=1e-6)
    assert float(total) == 2
    loss_w, total_w = lm_loss(logits, tokens, jnp.array([[1.0, 0.0, 1.0]]))
    np.testing.assert_allclose(loss_w, -np.log(0.25), rtol=1e-6)


def test_lm_loss_keeps_float64_and_lifts_bfloat16_to_float32(x64):
    """Catches a loss that casts every model's logits to float32: float64 models (the exact
    gradient checks) would then agree with their references only to float32 rounding."""
    rng = np.random.default_rng(0)
    logits64 = rng.normal(size=(2, 5, 7))
    tokens = rng.integers(0, 7, (2, 5))
    loss, _ = lm_loss(jnp.asarray(logits64), jnp.asarray(tokens))
    shifted = logits64[:, :-1] - logits64[:, :-1].max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    expected = -np.take_along_axis(logp, tokens[:, 1:, None], -1).mean()
    assert loss.dtype == jnp.float64
    np.testing.assert_allclose(float(loss), expected, rtol=1e-13)
    loss16, _ = lm_loss(jnp.asarray(logits64, jnp.bfloat16), jnp.asarray(tokens))
    assert loss16.dtype == jnp.float32


def _dropout_model_modules():
    from reformer_jax import model as model_module
    from reformer_jax.kernels import full, masking
    from reformer_jax.layers import feedforward

    return model_module, feedforward, masking, full


def test_hidden_dropout_masks_differ_across_layers_and_replay_in_the_backward(monkeypatch):
    """Catches hidden dropout whose key ignores the layer (every layer, or the attention and
    feed-forward branches, dropping the same units), a wrong rate or scale, and a reversible
    backward that recomputes a layer with another mask than its forward (the backward's
    recorded masks must all be forward masks)."""
    recorder = DropoutRecorder().install(monkeypatch, *_dropout_model_modules())
    rate = 0.25
    cfg = tiny_config(n_layers=4, attention_pattern=("local", "lsh"), hidden_dropout=rate)
    model = ReformerLM(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 32), 0, cfg.vocab_size)
    key = jax.random.key(9)
    graphdef, state = nnx.split(model)
    forward_fn = jax.jit(lambda state: nnx.merge(graphdef, state)(tokens, dropout_rng=key))
    jax.block_until_ready(forward_fn(state))
    forward = recorder.masks()
    # embedding + head + 4 layers x (attention output, feed-forward output)
    assert len(forward) == 2 + 2 * 4, len(forward)
    assert_masks_distinct(forward)
    kept = np.concatenate([m.ravel() for m in forward])
    assert_kept_fraction(kept, np.ones_like(kept), rate)
    recorder.clear()
    jax.block_until_ready(loss_and_grads(model, tokens, key))
    in_grad = {np.packbits(m).tobytes() for m in recorder.masks()}
    assert in_grad <= {np.packbits(m).tobytes() for m in forward}
    assert len(recorder.calls) > len(forward), "the reversible backward recomputes the layers"
