"""Checks shared by the LRA classification-source tests (batch format, determinism, resume,
sharding, one evaluation pass)."""

import itertools

import numpy as np

from reformer_jax.data.classification import ClassificationBatch

FIELDS = ("inputs", "mask", "labels", "weights")


def take(iterator, n):
    return list(itertools.islice(iterator, n))


def assert_batch(batch, rows, seq_len, vocab_size, num_classes, paired=False):
    """Shapes, dtypes, token range, padding tokens are 0 where the mask is False."""
    assert isinstance(batch, ClassificationBatch)
    shape = (rows, 2, seq_len) if paired else (rows, seq_len)
    assert batch.inputs.shape == shape
    assert batch.inputs.min() >= 0 and batch.inputs.max() < vocab_size
    assert not batch.inputs[~batch.mask].any()
    assert batch.labels.min() >= 0 and batch.labels.max() < num_classes
    assert set(np.unique(batch.weights).tolist()) <= {0.0, 1.0}


def assert_equal(a, b):
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))


def check_conventions(source, batch_size=4, steps=3, seed=1):
    """Determinism per (seed, split, step), resumption, 2-process sharding, one eval pass."""
    for split in ("train", "eval"):
        first = take(source.batches(split, batch_size, seed=seed), steps)
        again = take(source.batches(split, batch_size, seed=seed), steps)
        for a, b in zip(first, again, strict=True):
            assert_equal(a, b)
        resumed = take(source.batches(split, batch_size, seed=seed, start_step=1), steps - 1)
        for a, b in zip(first[1:], resumed, strict=True):
            assert_equal(a, b)
        halves = [
            take(source.batches(split, batch_size, seed=seed, process_index=p, process_count=2), 1)
            for p in range(2)
        ]
        for f in FIELDS:
            np.testing.assert_array_equal(
                np.concatenate([getattr(h[0], f) for h in halves]), getattr(first[0], f)
            )
        for b in first:
            assert_batch(
                b, batch_size, source.seq_len, source.vocab_size, source.num_classes, source.paired
            )
    n = source.num_examples("eval")
    batches = list(source.batches("eval", batch_size))
    assert len(batches) == source.num_batches("eval", batch_size) == -(-n // batch_size)
    weights = np.concatenate([b.weights for b in batches])
    assert weights.sum() == n and not weights[n:].any()
