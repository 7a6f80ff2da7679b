"""Cached decoding of the survey's families (`reformer_jax.decoding.sparse`,
`reformer_jax.decoding.performer`): cached logits equal the forward pass over the same tokens,
with rows at different positions; Linformer models are refused with the reason.

Sparse layers gather their keys from a full K/V cache by the pattern's key positions at the
run's length (the plan of a forward pass over that many tokens); Performer layers keep the
O(features x d_head) running sums of the causal prefix.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from reformer_jax import generate as gen
from reformer_jax.model import ReformerLM
from tests.model_utils import tiny_config

ATOL = 1e-4


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, tokens):
    return nnx.merge(graphdef, state)(tokens)


def forward(model, tokens):
    return _forward(*nnx.split(model), jnp.asarray(tokens))


def tokens_for(cfg, shape, seed=0):
    return np.random.default_rng(seed).integers(0, cfg.vocab_size, shape).astype(np.int32)


# Small blocks so that, at 32 tokens, every pattern's sparsity shows (keys outside the window,
# global and random keys, BigBird's global last block).
SPARSE = {
    "star": dict(sparse_block_len=4),
    "bigbird": dict(sparse_block_len=4, sparse_random_blocks=1, sparse_seed=3),
    "longformer": dict(sparse_window=3, sparse_global_positions=(2, 9), sparse_block_len=4),
    "strided": dict(sparse_block_len=4),
    "fixed": dict(sparse_block_len=8, sparse_summary_len=2),
}


@pytest.mark.parametrize("pattern", list(SPARSE))
def test_sparse_cached_logits_equal_forward(pattern):
    """Catches a decode step that gathers the wrong keys (another query's row of the plan, the
    plan of another length, non-causal keys), forgets global queries (BigBird's first and last
    blocks, Longformer's global tokens attend to everything) or a prefill that does not use the
    run's plan."""
    cfg = tiny_config(
        attention_pattern=("sparse", "local"), sparse_pattern=pattern, **SPARSE[pattern]
    )
    model = ReformerLM(cfg, rngs=nnx.Rngs(1))
    tokens = tokens_for(cfg, (2, 32), seed=2)
    cached = gen.decode_logits(model, tokens, prompt_length=6)
    np.testing.assert_allclose(cached, forward(model, tokens), atol=ATOL)


def test_performer_cached_logits_equal_forward_with_rows_at_different_positions():
    """Catches running sums that include a row's padding after a short prompt, a decode step
    that redraws the features, or a prefill state that misses the last prompt chunk."""
    cfg = tiny_config(
        attention_pattern=("performer", "sparse"),
        n_layers=4,
        performer_n_features=8,
        performer_chunk_len=3,
        sparse_pattern="star",
        sparse_block_len=4,
    )
    model = ReformerLM(cfg, rngs=nnx.Rngs(2))
    tokens = tokens_for(cfg, (2, 32), seed=3)
    full = forward(model, tokens)
    np.testing.assert_allclose(gen.decode_logits(model, tokens, prompt_length=7), full, atol=ATOL)
    logits, cache = gen.prefill(model, tokens[:, :8], prompt_lengths=[8, 5], max_length=32)
    position, rows = np.array([8, 5]), np.arange(2)
    for _ in range(4):
        np.testing.assert_allclose(logits, full[rows, position - 1], atol=ATOL)
        logits, cache = gen.decode_step(model, cache, tokens[rows, position], position)
        position = position + 1
    # The Performer cache is O(features x d_head) per head, whatever the length.
    layer = cache.layers[0]
    assert layer["kv"].shape == (2, cfg.n_heads, 8, cfg.d_head)
    assert cache.draws[0].shape == (cfg.n_heads, 8, cfg.d_head) and cache.draws[1] is None


def test_generate_with_new_kinds_equals_the_uncached_reference():
    """Catches generation that uses other draws (features) or another sparse plan than the
    uncached path, which runs the model on the whole buffer for every token."""
    cfg = tiny_config(
        attention_pattern=("sparse", "performer"),
        sparse_pattern="bigbird",
        sparse_block_len=4,
        sparse_random_blocks=1,
        performer_n_features=8,
    )
    model = ReformerLM(cfg, rngs=nnx.Rngs(3))
    prompts = [list(tokens_for(cfg, (9,), seed=4)), list(tokens_for(cfg, (4,), seed=5))]
    kw = dict(max_new_tokens=6, greedy=True)
    cached = gen.generate(model, prompts, **kw)
    uncached = gen.generate(model, prompts, use_cache=False, **kw)
    np.testing.assert_array_equal(cached, uncached)


def test_linformer_models_are_refused_with_the_reason():
    """Catches a Linformer model reaching the decoder (it would silently condition on padding
    mixed in by the length projection) or an error that does not say why."""
    cfg = tiny_config(attention_pattern=("local", "linformer"), causal=False, linformer_k=4)
    model = ReformerLM(cfg, rngs=nnx.Rngs(0))
    for use_cache in (True, False):
        with pytest.raises(ValueError, match="Linformer layers cannot generate left to right"):
            gen.generate(model, [[1, 2, 3]], max_new_tokens=2, use_cache=use_cache)
    with pytest.raises(ValueError, match="Linformer"):
        gen.decode_logits(model, np.ones((1, 8), np.int32))
