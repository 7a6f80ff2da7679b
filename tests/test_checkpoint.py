"""Model exports (reformer_jax/checkpoint.py): exact round trip, no silent overwrite.

Training checkpoints (resume, pruning, load_model_from_workdir) are exercised end to end in
tests/train/test_trainer.py.
"""

import jax
import numpy as np
import pytest
from flax import nnx

from reformer_jax.checkpoint import load_model, save_model
from reformer_jax.layers.attention import KINDS
from reformer_jax.model import ReformerLM
from tests.model_utils import tiny_config


def test_save_then_load_returns_the_same_weights_and_config(tmp_path):
    """Catches an export that loses parameters (e.g. a freshly initialised leaf on load), rounds
    them, or stores another config than the model's (a config override must apply on load)."""
    cfg = tiny_config(attention_pattern=("local", "lsh"))
    model = ReformerLM(cfg, rngs=nnx.Rngs(3))
    save_model(tmp_path / "m", model)
    loaded = load_model(tmp_path / "m", lsh_n_hashes=4)
    assert loaded.cfg == cfg.replace(lsh_n_hashes=4)
    saved_leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    loaded_leaves = jax.tree.leaves(nnx.state(loaded, nnx.Param))
    assert len(saved_leaves) == len(loaded_leaves) > 10
    for a, b in zip(saved_leaves, loaded_leaves, strict=True):
        np.testing.assert_array_equal(a, b)
    fresh = jax.tree.leaves(nnx.state(ReformerLM(cfg, rngs=nnx.Rngs(0)), nnx.Param))
    assert any(not np.array_equal(a, b) for a, b in zip(fresh, loaded_leaves, strict=True))


def test_existing_export_is_not_overwritten_silently(tmp_path):
    """Catches save_model replacing an existing export without overwrite=True."""
    model = ReformerLM(tiny_config(), rngs=nnx.Rngs(0))
    save_model(tmp_path / "m", model)
    before = sorted(p.name for p in (tmp_path / "m").iterdir())
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_model(tmp_path / "m", model)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == before
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path / "nothing")


def test_round_trip_of_a_model_with_every_attention_kind(tmp_path):
    """Catches a kind whose parameters (Linformer's per-layer and model-level projections) or
    config fields (the sparse_* tuple of global positions) do not survive an export, and a
    reloaded model that draws other Performer features / LSH rotations than the original."""
    # Relative (Transformer-XL) layers are causal only: their export is checked below.
    kinds = tuple(name for name in KINDS if name != "relative")
    cfg = tiny_config(
        attention_pattern=kinds,
        n_layers=len(kinds),
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


def test_round_trip_of_a_compressive_memory_model(tmp_path):
    """Catches relative-attention parameters (W_R, u, v) or the compressor that do not survive an
    export, or memory settings lost from the config: the reloaded model continues a segment with
    the same memory to the same logits."""
    from reformer_jax.layers.memory import init_memory

    cfg = tiny_config(
        attention_pattern=("relative",),
        residual="standard",
        pos_embedding="none",
        mem_len=4,
        cmem_len=2,
        cmem_rate=2,
    )
    model = ReformerLM(cfg, rngs=nnx.Rngs(0))
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 4)).astype(np.int32)
    _, memory, _ = model.with_memory(tokens, init_memory(cfg, 2))
    save_model(tmp_path / "export", model)
    loaded = load_model(tmp_path / "export")
    assert loaded.cfg == cfg
    np.testing.assert_allclose(
        loaded.with_memory(tokens, memory)[0], model.with_memory(tokens, memory)[0], atol=1e-6
    )
