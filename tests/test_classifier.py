"""Sequence classifiers: pooling, padding invariance, the dual encoder, gradients, bad settings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from reformer_jax.classifier import ClassifierConfig, SequenceClassifier
from tests.model_utils import tiny_config


def _cfg(**overrides):
    values = dict(
        causal=False,
        vocab_size=10,
        attention_pattern=("local", "lsh"),
        local_chunks_after=1,
        lsh_chunks_after=1,
        hash_seed=3,
        pos_embedding="learned",
        max_len=32,
    )
    values.update(overrides)
    return tiny_config(**values)


def _batch(batch=3, length=12, vocab=9, seed=0, paired=False):
    rng = np.random.default_rng(seed)
    shape = (batch, 2, length) if paired else (batch, length)
    tokens = rng.integers(1, vocab, shape).astype(np.int32)
    lengths = rng.integers(2, length + 1, shape[:-1])
    lengths.flat[0] = length  # one full row
    mask = np.arange(length) < lengths[..., None]
    return jnp.asarray(np.where(mask, tokens, 0)), jnp.asarray(mask)


def _mlp(model, features):
    """Dense -> ReLU -> Dense written with NumPy from the model's weights."""
    h = np.maximum(
        features @ np.asarray(model.hidden.kernel.get_value())
        + np.asarray(model.hidden.bias.get_value()),
        0.0,
    )
    return h @ np.asarray(model.logits.kernel.get_value()) + np.asarray(
        model.logits.bias.get_value()
    )


@pytest.mark.parametrize(("pooling", "residual"), [("cls", "reversible"), ("mean", "standard")])
def test_padded_token_ids_never_change_the_logits(pooling, residual):
    """Catches pooling over padding (mean over all L, or reading a padded position) and a CLS
    token whose mask entry is missing."""
    cfg = _cfg(residual=residual)
    model = SequenceClassifier(cfg, ClassifierConfig(3, pooling=pooling), rngs=nnx.Rngs(0))
    tokens, mask = _batch()
    other = jnp.where(mask, tokens, (tokens * 7 + 3) % 9)
    assert not np.array_equal(np.asarray(other), np.asarray(tokens))
    np.testing.assert_allclose(model(other, mask), model(tokens, mask), atol=1e-6)


def test_mean_pooling_is_the_mean_of_real_tokens_states():
    """Catches dividing by the padded length, or including padded states, in mean pooling."""
    cfg = _cfg()
    model = SequenceClassifier(cfg, ClassifierConfig(3, pooling="mean"), rngs=nnx.Rngs(1))
    tokens, mask = _batch()
    h = np.asarray(model.encoder.hidden_states(tokens, mask=mask))
    m = np.asarray(mask)
    want = np.stack([h[b][m[b]].mean(axis=0) for b in range(len(h))])
    np.testing.assert_allclose(model.encode(tokens, mask), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model(tokens, mask), _mlp(model, want), rtol=1e-5, atol=1e-5)


def test_cls_pooling_reads_the_prepended_cls_token():
    """Catches a CLS token appended instead of prepended, a wrong CLS id, or pooling position 1."""
    cfg = _cfg()
    model = SequenceClassifier(cfg, ClassifierConfig(3, pooling="cls"), rngs=nnx.Rngs(2))
    tokens, mask = _batch()
    with_cls = jnp.concatenate([jnp.full((3, 1), cfg.vocab_size - 1, jnp.int32), tokens], 1)
    mask_cls = jnp.concatenate([jnp.ones((3, 1), bool), mask], 1)
    want = np.asarray(model.encoder.hidden_states(with_cls, mask=mask_cls))[:, 0]
    np.testing.assert_allclose(model.encode(tokens, mask), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model(tokens, mask), _mlp(model, want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_dual_encoder_features_are_e1_e2_product_difference(pooling):
    """Catches dropped features (LRA's default head drops e1*e2 and e1-e2), swapped order, and
    documents of different rows mixed by the [B, 2, L] -> [2B, L] reshape."""
    cfg = _cfg()
    head = ClassifierConfig(2, pooling=pooling, paired=True, d_hidden=24)
    model = SequenceClassifier(cfg, head, rngs=nnx.Rngs(3))
    tokens, mask = _batch(paired=True)
    e1 = np.asarray(model.encode(tokens[:, 0], mask[:, 0]))
    e2 = np.asarray(model.encode(tokens[:, 1], mask[:, 1]))
    features = np.concatenate([e1, e2, e1 * e2, e1 - e2], axis=-1)
    np.testing.assert_allclose(model(tokens, mask), _mlp(model, features), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_reversible_gradients_match_plain_autodiff_float64(x64):
    """The classifier's gradients through the reversible stack's custom backward (activations
    reconstructed) equal plain autodiff of the same network (float64, 1e-9). Catches a mask or
    CLS token missing from the backward's replay, or a head gradient dropped."""
    cfg = _cfg(dtype="float64", param_dtype="float64")
    head = ClassifierConfig(3, pooling="cls")
    tokens, mask = _batch()
    labels = jnp.asarray([0, 2, 1])

    def grads(reversible):
        model = SequenceClassifier(cfg.replace(reversible=reversible), head, rngs=nnx.Rngs(4))
        graphdef, params = nnx.split(model, nnx.Param)

        def loss(p):
            logits = nnx.merge(graphdef, p)(tokens, mask)
            logp = jax.nn.log_softmax(logits)
            return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], 1))

        return jax.jit(jax.grad(loss))(params)

    got, want = grads(True), grads(False)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert a.dtype == jnp.float64
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(got["encoder"]["embed"]))


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="model.causal"):
        SequenceClassifier(tiny_config(), ClassifierConfig(2), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="classifier.pooling"):
        ClassifierConfig(2, pooling="max")
    with pytest.raises(ValueError, match="classifier: unknown setting"):
        ClassifierConfig.from_dict({"num_classes": 2, "pool": "cls"})
    model = SequenceClassifier(_cfg(), ClassifierConfig(2, paired=True), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="pairs"):
        model(*_batch())
