"""The synthetic ``contains_token`` classification source follows the data conventions."""

import itertools

import numpy as np
import pytest

from reformer_jax.data import get_source
from reformer_jax.data.classification import ClassificationBatch
from reformer_jax.data.synthetic_classes import NEEDLE


def _all(source, split, batch_size, **kw):
    return list(source.batches(split, batch_size, **kw))


def _fields(batch):
    return (batch.inputs, batch.mask, batch.labels, batch.weights)


@pytest.mark.parametrize("paired", [False, True])
def test_labels_say_whether_the_needle_is_among_the_real_tokens(paired):
    """Catches a needle placed in the padding, labels unrelated to the tokens, unbalanced
    labels, or padding that is not token 0 / mask False."""
    source = get_source("contains_token", seq_len=16, vocab_size=6, paired=paired)
    batches = list(itertools.islice(source.batches("train", 64, seed=1), 4))
    for batch in batches:
        assert isinstance(batch, ClassificationBatch) and batch.paired == paired
        assert (batch.inputs[~batch.mask] == 0).all() and (batch.inputs[batch.mask] > 0).all()
        assert batch.inputs.max() < 6 and (batch.weights == 1).all()
        has = ((batch.inputs == NEEDLE) & batch.mask).any(-1)
        want = (has[:, 0] == has[:, 1]) if paired else has
        np.testing.assert_array_equal(batch.labels, want.astype(np.int32))
    labels = np.concatenate([b.labels for b in batches])
    # Labels are fair coin flips: over 256 rows the mean has standard deviation 0.031, so the
    # bounds are ~5 sigma from 0.5; a generator that forgets one class gives 0 or 1.
    assert 0.35 < labels.mean() < 0.65


def test_deterministic_resumable_and_sharded_by_process():
    """Catches batches that depend on the iterator's history or on the process count."""
    source = get_source("contains_token", seq_len=8)
    a = list(itertools.islice(source.batches("train", 8, seed=3), 3))
    b = list(itertools.islice(source.batches("train", 8, seed=3, start_step=1), 2))
    for x, y in zip(a[1:], b, strict=True):
        for u, v in zip(_fields(x), _fields(y), strict=True):
            np.testing.assert_array_equal(u, v)
    parts = [
        next(source.batches("train", 8, seed=3, process_index=i, process_count=2)) for i in range(2)
    ]
    for u, *vs in zip(_fields(a[0]), *map(_fields, parts), strict=True):
        np.testing.assert_array_equal(u, np.concatenate(vs))


def test_evaluation_splits_are_one_padded_pass():
    """Every validation example appears once (weight 1), the last batch is padded with weight-0
    rows, and the test split holds other examples. Catches a double-counted or dropped tail."""
    source = get_source("contains_token", seq_len=8, eval_examples=10, test_examples=10)
    val = _all(source, "eval", 4)
    assert len(val) == source.num_batches("validation", 4) == 3
    assert [float(b.weights.sum()) for b in val] == [4.0, 4.0, 2.0]
    assert not val[-1].mask[2:].any()
    again = _all(source, "validation", 4)
    for x, y in zip(val, again, strict=True):
        np.testing.assert_array_equal(x.inputs, y.inputs)
    test = _all(source, "test", 4)
    assert not np.array_equal(test[0].inputs, val[0].inputs)
