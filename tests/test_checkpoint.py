"""Model exports (`reformer_jax.checkpoint.save_model` / `load_model`) with every attention kind."""

import jax
import numpy as np
from flax import nnx

from reformer_jax.checkpoint import load_model, save_model
from reformer_jax.layers.attention import KINDS
from reformer_jax.model import ReformerLM
from tests.model_utils import tiny_config


def test_round_trip_of_a_model_with_every_attention_kind(tmp_path):
    """Catches a kind whose parameters (Linformer's per-layer and model-level projections) or
    config fields (the sparse_* tuple of global positions) do not survive an export, and a
    reloaded model that draws other Performer features / LSH rotations than the original."""
    cfg = tiny_config(
        attention_pattern=tuple(KINDS),
        n_layers=len(KINDS),
        causal=False,  # Linformer layers are bidirectional
        sparse_pattern="longformer",
        sparse_window=2,
        sparse_global_positions=(1, 4),
        linformer_k=4,
        linformer_sharing="layer",
        max_len=32,
        performer_n_features=8,
        hash_seed=3,
    )
    model = ReformerLM(cfg, rngs=nnx.Rngs(0))
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 24)).astype(np.int32)
    want = model(tokens)
    save_model(tmp_path / "export", model)
    loaded = load_model(tmp_path / "export")
    assert loaded.cfg == cfg and loaded.cfg.sparse_global_positions == (1, 4)
    np.testing.assert_allclose(loaded(tokens), want, atol=1e-6)
    state, loaded_state = nnx.state(model, nnx.Param), nnx.state(loaded, nnx.Param)
    assert jax.tree.structure(state) == jax.tree.structure(loaded_state)
    assert "shared_attention" in loaded_state
