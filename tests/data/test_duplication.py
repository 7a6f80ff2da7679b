import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax.data import DataSource, Duplication, second_copy_accuracy
from tests.data.checks import (
    assert_batches_equal,
    check_determinism,
    check_resume,
    check_sharding,
    take,
)


def test_paper_defaults():
    src = Duplication()
    assert (src.seq_len, src.vocab_size, src.word_len) == (1024, 128, 511)
    assert isinstance(src, DataSource)
    assert src.num_batches("train", 8) is None and src.num_batches("eval", 8) is None


@pytest.mark.parametrize("split", ["train", "eval"])
def test_structure(split):
    src = Duplication(seq_len=32, vocab_size=7)
    (batch,) = take(src.batches(split, 16), 1)
    half = 16
    assert batch.inputs.shape == batch.targets.shape == batch.weights.shape == (16, 32)
    assert batch.inputs.dtype == np.int32 and batch.weights.dtype == np.float32
    np.testing.assert_array_equal(batch.inputs, batch.targets)
    tokens = batch.inputs
    # 0 w 0 w, w in 1..vocab-1.
    assert not tokens[:, 0].any() and not tokens[:, half].any()
    np.testing.assert_array_equal(tokens[:, 1:half], tokens[:, half + 1 :])
    assert tokens[:, 1:half].min() >= 1 and tokens[:, 1:half].max() <= 6
    assert len(np.unique(tokens[:, 1:half])) == 6  # All symbols drawn (16 * 15 draws).
    want_weights = np.zeros((16, 32), np.float32)
    want_weights[:, half + 1 :] = 1
    np.testing.assert_array_equal(batch.weights, want_weights)


def test_paper_shape():
    (batch,) = take(Duplication().batches("train", 2), 1)
    assert batch.inputs.shape == (2, 1024)
    assert batch.weights.sum() == 2 * 511
    assert batch.inputs.max() <= 127


def test_determinism_and_streams_differ():
    src = Duplication(seq_len=64, vocab_size=128)
    train = check_determinism(src, "train", 4, steps=3, seed=5)
    evals = check_determinism(src, "eval", 4, steps=3, seed=5)
    other_seed = take(src.batches("train", 4, seed=6), 1)[0]
    assert not np.array_equal(train[0].inputs, evals[0].inputs)
    assert not np.array_equal(train[0].inputs, train[1].inputs)
    assert not np.array_equal(train[0].inputs, other_seed.inputs)


@pytest.mark.parametrize("split", ["train", "eval"])
def test_resume(split):
    check_resume(Duplication(seq_len=16), split, 4, start_step=5, steps=3, seed=1)


@pytest.mark.parametrize("process_count", [2, 4])
def test_sharding(process_count):
    check_sharding(Duplication(seq_len=16), "train", 8, process_count, steps=2, start_step=3)


def test_batch_independent_of_start_and_process_count():
    src = Duplication(seq_len=16)
    a = take(src.batches("train", 8, start_step=7), 1)[0]
    b = take(src.batches("train", 8, start_step=0), 8)[7]
    assert_batches_equal(a, b)


def test_bad_arguments():
    src = Duplication(seq_len=16)
    with pytest.raises(ValueError, match="not divisible by process_count=3"):
        src.batches("train", 8, process_count=3)
    with pytest.raises(ValueError, match="process_index"):
        src.batches("train", 8, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="valid splits"):
        src.batches("validation", 8)
    with pytest.raises(ValueError, match="start_step"):
        src.batches("train", 8, start_step=-1)
    with pytest.raises(ValueError, match="even seq_len"):
        Duplication(seq_len=15)
    with pytest.raises(ValueError, match="vocab_size"):
        Duplication(vocab_size=1)


def _perfect_predictions(batch):
    """Predictions in the model's alignment: position t predicts token t + 1."""
    preds = np.zeros_like(batch.targets)
    preds[:, :-1] = batch.targets[:, 1:]
    return preds


def test_second_copy_accuracy():
    src = Duplication(seq_len=32, vocab_size=50)
    (batch,) = take(src.batches("eval", 4), 1)
    preds = _perfect_predictions(batch)
    assert second_copy_accuracy(preds, batch) == 1.0
    # Logits (argmax is taken), numpy or JAX.
    logits = np.eye(50, dtype=np.float32)[preds]
    assert second_copy_accuracy(logits, batch) == 1.0
    assert second_copy_accuracy(jnp.asarray(logits), batch) == 1.0
    # Positions outside the second copy do not count.
    preds[:, : 32 // 2] = 0
    assert second_copy_accuracy(preds, batch) == 1.0
    # Break 3 of the 15 scored predictions of every row.
    preds[:, 20:23] = 0
    assert second_copy_accuracy(preds, batch) == pytest.approx(12 / 15)
    # Predictions aligned to the targets (not shifted) are right exactly where a scored token
    # repeats its predecessor (chance, ~1/vocab): counted here by hand, no tolerance.
    scored = [(r, t) for r in range(4) for t in range(1, 32) if batch.weights[r, t]]
    repeats = sum(int(batch.targets[r, t] == batch.targets[r, t - 1]) for r, t in scored)
    assert len(scored) == 4 * 15 and repeats < 10
    assert second_copy_accuracy(batch.targets, batch) == pytest.approx(repeats / len(scored))
    with pytest.raises(ValueError, match="shape"):
        second_copy_accuracy(preds[:, :-1], batch)
