"""The standard (pre-LN) residual stack: float64 reference, gradients, config and defaults."""

import dataclasses
import importlib
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from reformer_jax.checkpoint import config_from_json, config_to_json
from reformer_jax.config import ReformerConfig
from reformer_jax.generate import decode_spec
from reformer_jax.model import ReformerLM
from reformer_jax.train.trainer import _resolved_model
from tests.model_utils import tiny_config

CONFIGS = sorted(
    p.stem
    for p in (pathlib.Path(__file__).parents[2] / "configs").glob("*.py")
    if p.stem not in ("__init__", "common")
)


# ------------------------------------------------------------------------------------------------
# A hand-written reference of the standard stack (float64, no library layers).


def _layer_norm(x, scale, bias, eps):
    mean = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean((x - mean) ** 2, -1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps) * scale + bias


def _attention(h, w, kind, cfg):
    """Causal multi-head attention on ``h [B, L, D]``; ``w`` maps names to this layer's weights."""
    b, length, _ = h.shape

    def heads(x):
        return x.reshape(b, length, cfg.n_heads, cfg.d_head).transpose(0, 2, 1, 3)

    v = heads(h @ w["v"])
    causal = np.tril(np.ones((length, length), bool))
    if kind == "lsh":  # exact shared-QK: keys are the unit-length queries, no 1/sqrt(d)
        q = heads(h @ w["qk"])
        k = q / jnp.sqrt(jnp.sum(q * q, -1, keepdims=True) + cfg.d_head * 1e-6)
        scores = jnp.einsum("bhqd,bhkd->bhqk", q, k)
        scores = jnp.where(causal, scores, -1e9)
        scores = jnp.where(np.eye(length, dtype=bool), -1e5, scores)  # self only as a last resort
    else:
        q, k = heads(h @ w["q"]), heads(h @ w["k"])
        scores = jnp.einsum("bhqd,bhkd->bhqk", q, k) / np.sqrt(cfg.d_head)
        scores = jnp.where(causal, scores, -1e9)
    probs = jnp.exp(scores - jnp.max(scores, -1, keepdims=True))
    probs = probs / jnp.sum(probs, -1, keepdims=True)
    out = jnp.einsum("bhqk,bhkd->bhqd", probs, v).transpose(0, 2, 1, 3).reshape(b, length, -1)
    return out @ w["out"]


def reference_logits(model: ReformerLM, tokens):
    """x = emb + pos; per layer x += Attn(LN(x)); x += FF(LN(x)); logits = head(LN(x))."""
    cfg = model.cfg
    x = model.embed(tokens) + model.positions(tokens.shape[1])[None]
    n_pattern = len(cfg.attention_pattern)
    for layer in range(cfg.n_layers):
        g, p = divmod(layer, n_pattern)
        attn, ff = model.blocks[p].attention, model.blocks[p].feedforward
        kind = cfg.attention_pattern[p]
        names = ("qk", "v", "out") if kind == "lsh" else ("q", "k", "v", "out")
        w = {n: getattr(attn, n).kernel[g] for n in names}
        h = _layer_norm(x, attn.norm.scale[g], attn.norm.bias[g], cfg.ln_eps)
        x = x + _attention(h, w, kind, cfg)
        h = _layer_norm(x, ff.norm.scale[g], ff.norm.bias[g], cfg.ln_eps)
        h = jax.nn.relu(h @ ff.dense_in.kernel[g] + ff.dense_in.bias[g])
        x = x + h @ ff.dense_out.kernel[g] + ff.dense_out.bias[g]
    norm = model.final_norm
    h = _layer_norm(x, norm.scale[...], norm.bias[...], cfg.ln_eps)
    return h @ model.head.kernel[...] + model.head.bias[...]


def _nll(logits, tokens):
    """Next-token cross-entropy in the logits' dtype (``lm_loss`` rounds to float32)."""
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))


def _loss_and_grads(model, tokens, logits_fn):
    graphdef, state = nnx.split(model, nnx.Param)

    def loss(state):
        return _nll(logits_fn(nnx.merge(graphdef, state), tokens), tokens)

    return jax.value_and_grad(loss)(state)


@pytest.mark.parametrize(
    "pattern",
    [
        ("full",),  # separate QK
        ("lsh",),  # shared QK, exact (full_attention_below above the length)
        ("full", "lsh"),  # two pattern positions, two scanned groups
    ],
)
def test_standard_stack_matches_float64_reference_with_gradients(x64, pattern):
    cfg = tiny_config(
        n_layers=4,
        attention_pattern=pattern,
        residual="standard",
        full_attention_below=64,
        dtype="float64",
        param_dtype="float64",
    )
    model = ReformerLM(cfg, rngs=nnx.Rngs(0))
    # Non-trivial LayerNorm parameters, so a wrong scale/bias in the stack would show.
    graphdef, state = nnx.split(model, nnx.Param)
    state = jax.tree.map(
        lambda a: a + 0.1 * jax.random.normal(jax.random.key(a.size), a.shape, a.dtype), state
    )
    model = nnx.merge(graphdef, state)
    tokens = jax.random.randint(jax.random.key(1), (2, 24), 0, cfg.vocab_size)

    np.testing.assert_allclose(model(tokens), reference_logits(model, tokens), rtol=1e-10)
    loss, grads = _loss_and_grads(model, tokens, lambda m, t: m(t))
    ref_loss, ref_grads = _loss_and_grads(model, tokens, reference_logits)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    flat, ref_flat = jax.tree.leaves(grads), jax.tree.leaves(ref_grads)
    assert len(flat) == len(ref_flat) > 10
    for a, b in zip(flat, ref_flat, strict=True):
        scale = float(jnp.max(jnp.abs(b)))
        assert scale > 0
        assert float(jnp.max(jnp.abs(a - b))) <= 1e-10 * scale


def test_standard_stack_gradients_match_finite_differences(x64):
    cfg = tiny_config(
        n_layers=2,
        attention_pattern=("full",),
        residual="standard",
        dtype="float64",
        param_dtype="float64",
    )
    model = ReformerLM(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(2), (1, 16), 0, cfg.vocab_size)
    graphdef, state = nnx.split(model, nnx.Param)

    def loss(state):
        return _nll(nnx.merge(graphdef, state)(tokens), tokens)

    grads = jax.grad(loss)(state)
    # Directional derivative along a random direction: autodiff vs central differences.
    direction = jax.tree.map(
        lambda a: jax.random.normal(jax.random.key(a.size + 7), a.shape, a.dtype), state
    )
    eps = 1e-6
    plus = jax.tree.map(lambda a, d: a + eps * d, state, direction)
    minus = jax.tree.map(lambda a, d: a - eps * d, state, direction)
    numeric = (loss(plus) - loss(minus)) / (2 * eps)
    pairs = zip(jax.tree.leaves(grads), jax.tree.leaves(direction), strict=True)
    analytic = sum(jnp.vdot(g, d) for g, d in pairs)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6)


def test_standard_head_is_d_model_wide_and_reversible_flag_has_no_effect():
    cfg = tiny_config(attention_pattern=("full",), residual="standard")
    a = ReformerLM(cfg, rngs=nnx.Rngs(0))
    b = ReformerLM(cfg.replace(reversible=False), rngs=nnx.Rngs(0))
    assert a.final_norm.scale[...].shape == (cfg.d_model,)
    assert a.head.kernel[...].shape == (cfg.d_model, cfg.vocab_size)
    rev = ReformerLM(cfg.replace(residual="reversible"), rngs=nnx.Rngs(0))
    assert rev.head.kernel[...].shape == (2 * cfg.d_model, cfg.vocab_size)
    tokens = jax.random.randint(jax.random.key(3), (2, 16), 0, cfg.vocab_size)
    np.testing.assert_array_equal(a(tokens), b(tokens))
    # Causal like the reversible model.
    other = tokens.at[:, 9:].set((tokens[:, 9:] + 3) % cfg.vocab_size)
    np.testing.assert_allclose(a(tokens)[:, :9], a(other)[:, :9], atol=1e-6)


# ------------------------------------------------------------------------------------------------
# The setting: defaults, validation, serialisation.


def test_default_and_every_shipped_config_is_reversible():
    """Every shipped config is the Reformer, except those with a segment memory (Transformer-XL,
    Compressive), which must be standard: the model refuses memory with reversible layers."""
    assert ReformerConfig().residual == "reversible"
    for name in CONFIGS:
        config = importlib.import_module(f"configs.{name}").get_config()
        cfg = ReformerConfig.from_dict(config.model)
        assert cfg.residual == ("standard" if cfg.mem_len else "reversible"), name


def test_invalid_residual_names_the_setting_and_the_fix():
    with pytest.raises(ValueError, match=r"model\.residual: .*'plain'.*; use \"reversible\""):
        ReformerConfig(residual="plain")
    with pytest.raises(ValueError, match="unknown model setting"):
        ReformerConfig.from_dict({"residuals": "standard"})


def test_residual_round_trips_and_old_records_default_to_reversible():
    cfg = tiny_config(residual="standard", reversible=False)
    assert ReformerConfig.from_dict(cfg.to_dict()) == cfg
    assert config_from_json(config_to_json(cfg)) == cfg
    assert json.loads(config_to_json(cfg))["residual"] == "standard"
    # A config.json written before the setting existed loads as the reversible model ...
    old = dataclasses.asdict(tiny_config())
    del old["residual"]
    assert config_from_json(json.dumps(old)).residual == "reversible"
    # ... and a training workdir recorded then still counts as the same run (resume).
    assert _resolved_model(old) == json.loads(json.dumps(tiny_config().to_dict()))
    assert _resolved_model({"nonsense": 1}) == {"nonsense": 1}


def test_cached_decoding_refuses_the_standard_stack_clearly():
    cfg = tiny_config(attention_pattern=("full",), residual="standard")
    with pytest.raises(ValueError, match="residual='reversible' only.*use_cache=False"):
        decode_spec(cfg, 16)
    decode_spec(cfg, 16, cached=False)


# ------------------------------------------------------------------------------------------------
# The survey's families in the standard stack, against their math written densely.


def _family_attention(h, w, kind, cfg, features, causal):
    """Dense float64 attention of one layer: sparse (the pattern's mask), Linformer (the paper's
    formula), Performer (the random-feature formula with the layer's ``features``)."""
    b, length, _ = h.shape

    def heads(x):
        return x.reshape(b, length, cfg.n_heads, cfg.d_head).transpose(0, 2, 1, 3)

    q, k, v = heads(h @ w["q"]), heads(h @ w["k"]), heads(h @ w["v"])
    tril = np.tril(np.ones((length, length), bool)) if causal else np.ones((length, length), bool)
    if kind == "performer":

        def phi(x):
            x = x * cfg.d_head**-0.25
            proj = jnp.einsum("bhld,hmd->bhlm", x, features)
            return jnp.exp(proj - 0.5 * jnp.sum(x * x, -1, keepdims=True))

        weights = jnp.einsum("bhqm,bhkm->bhqk", phi(q), phi(k)) * tril
        probs = weights / jnp.sum(weights, -1, keepdims=True)
    elif kind == "linformer":
        e, f = w["proj_k"][:, :length], w["proj_v"][:, :length]
        k, v = jnp.einsum("rl,bhld->bhrd", e, k), jnp.einsum("rl,bhld->bhrd", f, v)
        scores = jnp.einsum("bhqd,bhrd->bhqr", q, k) / np.sqrt(cfg.d_head)
        probs = jax.nn.softmax(scores, axis=-1)
    else:
        from reformer_jax.layers.kinds.sparse import sparse_pattern

        allowed = sparse_pattern(cfg).dense_mask(length, cfg.n_heads) & tril
        scores = jnp.einsum("bhqd,bhkd->bhqk", q, k) / np.sqrt(cfg.d_head)
        probs = jax.nn.softmax(jnp.where(allowed, scores, -1e9), axis=-1)
    out = jnp.einsum("bhqk,bhkd->bhqd", probs, v).transpose(0, 2, 1, 3).reshape(b, length, -1)
    return out @ w["out"]


def family_reference_logits(model: ReformerLM, tokens):
    """As :func:`reference_logits`, with the families' dense attention."""
    cfg = model.cfg
    length = tokens.shape[1]
    features = model.layer_draws(length, jax.random.key(0))  # the evaluation default draws
    x = model.embed(tokens) + model.positions(length)[None]
    n_pattern = len(cfg.attention_pattern)
    for layer in range(cfg.n_layers):
        g, p = divmod(layer, n_pattern)
        attn, ff = model.blocks[p].attention, model.blocks[p].feedforward
        kind = cfg.attention_pattern[p]
        w = {n: getattr(attn, n).kernel[g] for n in ("q", "k", "v", "out")}
        if kind == "linformer":
            w.update(proj_k=attn.proj_k[g], proj_v=attn.proj_v[g])
        h = _layer_norm(x, attn.norm.scale[g], attn.norm.bias[g], cfg.ln_eps)
        x = x + _family_attention(h, w, kind, cfg, features.get(layer), cfg.causal)
        h = _layer_norm(x, ff.norm.scale[g], ff.norm.bias[g], cfg.ln_eps)
        h = jax.nn.relu(h @ ff.dense_in.kernel[g] + ff.dense_in.bias[g])
        x = x + h @ ff.dense_out.kernel[g] + ff.dense_out.bias[g]
    norm = model.final_norm
    h = _layer_norm(x, norm.scale[...], norm.bias[...], cfg.ln_eps)
    return h @ model.head.kernel[...] + model.head.bias[...]


@pytest.mark.slow
@pytest.mark.parametrize(
    "causal, pattern", [(True, ("sparse", "performer")), (False, ("linformer", "sparse"))]
)
def test_standard_stack_with_the_survey_families_matches_dense_math(x64, causal, pattern):
    """Catches a family that misbehaves outside the reversible stack: the wrong features, the
    causal flag or the pattern not reaching the kernel, Linformer's E and F swapped, or missing
    gradients for the families' parameters (values and gradients against dense float64)."""
    cfg = tiny_config(
        n_layers=2 * len(pattern),
        attention_pattern=pattern,
        causal=causal,
        residual="standard",
        sparse_pattern="longformer",
        sparse_window=2,
        sparse_global_positions=(5,),
        sparse_block_len=4,
        linformer_k=6,
        max_len=32,
        performer_n_features=8,
        performer_chunk_len=5,
        dtype="float64",
        param_dtype="float64",
    )
    model = ReformerLM(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 23), 0, cfg.vocab_size)
    np.testing.assert_allclose(model(tokens), family_reference_logits(model, tokens), rtol=1e-9)
    loss, grads = _loss_and_grads(model, tokens, lambda m, t: m(t))
    ref_loss, ref_grads = _loss_and_grads(model, tokens, family_reference_logits)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-11)
    flat, ref_flat = jax.tree.leaves(grads), jax.tree.leaves(ref_grads)
    assert len(flat) == len(ref_flat) > 10
    for a, b in zip(flat, ref_flat, strict=True):
        scale = float(jnp.max(jnp.abs(b)))
        assert scale > 0
        assert float(jnp.max(jnp.abs(a - b))) <= 1e-9 * scale
