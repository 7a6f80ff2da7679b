"""Model exports (reformer_jax/checkpoint.py): exact round trip, no silent overwrite.

Training checkpoints (resume, pruning, load_model_from_workdir) are exercised end to end in
tests/train/test_trainer.py.
"""

import jax
import numpy as np
import pytest
from flax import nnx

from reformer_jax.checkpoint import load_model, save_model
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
