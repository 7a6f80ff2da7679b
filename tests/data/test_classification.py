"""The classification batch validates what the encoder relies on."""

import numpy as np
import pytest

from reformer_jax.data.classification import ClassificationBatch, pad_or_truncate


def _batch(shape=(2, 5), labels=(0, 1)):
    return ClassificationBatch(
        inputs=np.zeros(shape, np.int32),
        mask=np.ones(shape, bool),
        labels=np.asarray(labels, np.int32),
        weights=np.ones(len(labels), np.float32),
    )


def test_single_and_paired_batches_are_accepted():
    assert not _batch().paired
    assert _batch((2, 2, 5)).paired


def test_wrong_shapes_and_dtypes_are_refused():
    """Catches a source that emits labels per token or float tokens (silently wrong losses)."""
    with pytest.raises(ValueError, match="labels"):
        _batch(labels=(0, 1, 1))
    with pytest.raises(ValueError, match=r"\[B, 2, L\]"):
        _batch((2, 3, 5))
    with pytest.raises(TypeError, match="inputs"):
        ClassificationBatch(
            np.zeros((2, 5), np.float32),
            np.ones((2, 5), bool),
            np.zeros(2, np.int32),
            np.ones(2, np.float32),
        )


def test_pad_or_truncate():
    """Catches an off-by-one in the mask (a padded token counted as real) or a lost token."""
    tokens, mask = pad_or_truncate(np.array([5, 6, 7]), 5)
    np.testing.assert_array_equal(tokens, [5, 6, 7, 0, 0])
    np.testing.assert_array_equal(mask, [True, True, True, False, False])
    tokens, mask = pad_or_truncate(np.arange(1, 9), 4)
    np.testing.assert_array_equal(tokens, [1, 2, 3, 4])
    assert mask.all()
