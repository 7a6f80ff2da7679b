"""Contiguous streams (order="streams"): consecutive steps continue every row's text."""

import numpy as np
import pytest

from reformer_jax.data.text import TextFile


def _corpus(tmp_path, n=1000):
    data = (np.arange(n) % 251).astype(np.uint8)  # distinct bytes: positions are recoverable
    path = tmp_path / "corpus.bin"
    path.write_bytes(data.tobytes())
    return path, data


def test_rows_are_consecutive_segments_of_their_stream(tmp_path):
    """Catches segments taken at random offsets, streams interleaved across rows, or a stride
    other than seq_len (each would break the memory's continuity)."""
    path, data = _corpus(tmp_path)
    source = TextFile(path, seq_len=10, eval_fraction=0.2, order="streams")
    train = data[:800]
    stream_len = 800 // 4
    batches = list(zip(range(6), source.batches("train", 4), strict=False))
    for step, batch in batches:
        for b in range(4):
            start = b * stream_len + step * 10
            np.testing.assert_array_equal(batch.inputs[b], train[start : start + 10])
        assert batch.reset.tolist() == [step == 0] * 4
        assert batch.weights[:, 0].sum() == 0 and batch.weights[:, 1:].all()


def test_train_wraps_with_reset_and_eval_is_one_padded_pass(tmp_path):
    """Catches a stream read past its end (into the next row's text) instead of wrapping, and
    an evaluation pass that drops or double-counts the tail of each stream."""
    path, data = _corpus(tmp_path)
    source = TextFile(path, seq_len=30, eval_fraction=0.2, order="streams")
    per_epoch = (800 // 2) // 30  # 13 whole segments per stream
    it = source.batches("train", 2, start_step=per_epoch - 1)
    last, wrapped = next(it), next(it)
    assert not last.reset.any() and wrapped.reset.all()
    np.testing.assert_array_equal(wrapped.inputs[1], data[400:430])
    # Eval: 200 bytes in 2 streams of 100 -> 4 steps, the last holding 10 real bytes.
    assert source.num_batches("eval", 2) == 4
    batches = list(source.batches("eval", 2))
    assert len(batches) == 4
    scored = sum(b.weights.sum() for b in batches)
    assert scored == 2 * (4 * 29 - 20)  # per stream: 3 full segments + 10 bytes, minus token 0
    np.testing.assert_array_equal(batches[3].inputs[1, :10], data[800 + 190 : 800 + 200])
    assert batches[3].weights[:, 10:].sum() == 0


def test_process_rows_concatenate_to_the_global_batch(tmp_path):
    """Catches processes reading their own streams 0..k instead of their global rows."""
    path, _ = _corpus(tmp_path)
    source = TextFile(path, seq_len=10, order="streams")
    whole = next(iter(source.batches("train", 4, start_step=3)))
    parts = [
        next(iter(source.batches("train", 4, start_step=3, process_index=i, process_count=2)))
        for i in range(2)
    ]
    np.testing.assert_array_equal(np.concatenate([p.inputs for p in parts]), whole.inputs)


def test_streams_shorter_than_a_segment_are_refused(tmp_path):
    path, _ = _corpus(tmp_path, n=100)
    source = TextFile(path, seq_len=30, eval_fraction=0.0, order="streams")
    with pytest.raises(ValueError, match="smaller batch_size or seq_len"):
        next(iter(source.batches("train", 8)))
    with pytest.raises(ValueError, match="order"):
        TextFile(path, seq_len=30, order="random")
