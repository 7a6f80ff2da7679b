"""The survey's families in the trainer: the text configs learn, and an 8-device mesh matches one
device with a model mixing them."""

import importlib
import json
import pathlib

import numpy as np
import pytest

from configs import tiny
from reformer_jax.checkpoint import load_model_from_workdir
from reformer_jax.train import train_and_evaluate


def _losses(workdir: pathlib.Path) -> dict[int, float]:
    out = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["split"] == "train":
            out[record["step"]] = record["loss"]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["text_sparse", "text_performer"])
def test_text_config_learns_in_a_few_hundred_steps(tmp_path, name):
    """Catches a family that cannot learn through the trainer (features redrawn every step but
    never reaching the layers, a sparse plan that hides the previous bytes): the shipped text
    config, shrunk to toy sizes, memorises a repeated sentence in 200 steps."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"the quick brown fox jumps over the lazy dog. " * 100)
    config = importlib.import_module(f"configs.{name}").get_config()
    config.seq_len = 32
    config.data.settings = dict(path=str(corpus), seq_len=32, eval_fraction=0.1)
    config.model.update(
        d_model=32,
        d_ff=64,
        n_layers=2,
        n_heads=2,
        d_head=16,
        local_chunk_len=8,
        axial_shape=[4, 8],
        axial_dims=[16, 16],
        hidden_dropout=0.0,
        sparse_block_len=4,
        sparse_random_blocks=1,
        performer_n_features=16,
        performer_chunk_len=8,
    )
    config.update(
        batch_size=8,
        num_steps=200,
        learning_rate=3e-3,
        warmup_steps=0,
        log_every=20,
        eval_every=200,
        eval_batches=1,
        checkpoint_every=200,
        mesh_shape=(1, 1),
    )
    result = train_and_evaluate(config, tmp_path / "run")
    losses = _losses(tmp_path / "run")
    assert result.step == 200
    assert losses[200] < 0.3 * losses[20], losses  # from ~3 nats to well under 1
    assert result.eval_metrics["loss"] < 1.0
    model = load_model_from_workdir(tmp_path / "run")
    assert model.cfg.attention_pattern == tuple(config.model.attention_pattern)


@pytest.mark.slow
def test_eight_device_mesh_matches_one_device_with_the_families(tmp_path):
    """Catches sharding rules that break a family (Linformer's replicated projections, the
    model-level shared matrix, per-head Performer features) or draws that differ across
    devices. The model is bidirectional (Linformer), so the LM loss only checks mechanics."""
    config = tiny.get_config()
    config.num_steps = 2
    config.model.update(
        attention_pattern=["sparse", "linformer", "performer"],
        n_layers=3,
        causal=False,
        sparse_pattern="bigbird",
        sparse_block_len=4,
        sparse_random_blocks=1,
        linformer_k=4,
        linformer_sharing="layer",
        max_len=32,
        performer_n_features=8,
    )
    config.mesh_shape = (1, 1)
    train_and_evaluate(config, tmp_path / "one")
    config.mesh_shape = (4, 2)  # data x model
    train_and_evaluate(config, tmp_path / "eight")
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "eight")
    np.testing.assert_allclose([b[s] for s in (1, 2)], [a[s] for s in (1, 2)], atol=1e-5)


@pytest.mark.slow
def test_bidirectional_families_classify_through_the_encoder(tmp_path):
    """Catches a bidirectional family that cannot serve as a classification encoder (Linformer's
    projections, a non-causal sparse pattern, non-causal Performer features): the tiny
    classification config with its layers replaced by the three families beats chance."""
    from configs import classify_tiny

    config = classify_tiny.get_config()
    config.model.update(
        attention_pattern=["linformer", "sparse", "performer"],
        n_layers=3,
        linformer_k=8,
        linformer_sharing="layer",
        sparse_pattern="longformer",
        sparse_window=4,
        sparse_block_len=8,
        performer_n_features=16,
    )
    config.num_steps = 60
    result = train_and_evaluate(config, tmp_path / "run")
    assert result.best["accuracy"] > 0.75 and result.test_metrics["accuracy"] > 0.75
