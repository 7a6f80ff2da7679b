import numpy as np
import pytest

from reformer_jax.data import DataSource, TextFile
from reformer_jax.data.text import corpus_files
from tests.data.checks import (
    assert_lm_batch,
    check_determinism,
    check_resume,
    check_sharding,
    take,
)

SEQ = 32


@pytest.fixture
def corpus(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8).tobytes()
    path = tmp_path / "corpus.bin"
    path.write_bytes(data)
    return path, data


def test_splits_are_head_and_tail(corpus):
    path, data = corpus
    src = TextFile(path, seq_len=SEQ, eval_fraction=0.1)
    assert isinstance(src, DataSource) and src.vocab_size == 256 and src.seq_len == SEQ
    assert src.split_bytes("train").tobytes() == data[:900]
    assert src.split_bytes("eval").tobytes() == data[900:]


def test_train_windows(corpus):
    path, data = corpus
    src = TextFile(path, seq_len=SEQ, eval_fraction=0.1)
    train = data[:900]
    for batch in take(src.batches("train", 16), 3):
        assert_lm_batch(batch, 16, SEQ, 256)
        assert batch.weights[:, 1:].all()
        for row in batch.inputs:
            assert train.find(row.astype(np.uint8).tobytes()) >= 0  # A window of the train part.
    assert src.num_batches("train", 16) is None


def test_eval_windows_cover_the_tail_once(corpus):
    path, data = corpus
    src = TextFile(path, seq_len=SEQ, eval_fraction=0.1)  # 100 eval bytes: 3 full windows + 4.
    assert src.num_batches("eval", 2) == 2
    batches = list(src.batches("eval", 2))
    assert len(batches) == 2
    rows = np.concatenate([b.inputs for b in batches])
    weights = np.concatenate([b.weights for b in batches])
    for k in range(3):
        assert rows[k].astype(np.uint8).tobytes() == data[900 + k * SEQ : 900 + (k + 1) * SEQ]
        np.testing.assert_array_equal(weights[k], np.r_[0, np.ones(SEQ - 1)])
    assert rows[3, :4].astype(np.uint8).tobytes() == data[996:]
    assert not rows[3, 4:].any()
    np.testing.assert_array_equal(weights[3], np.r_[0, 1, 1, 1, np.zeros(SEQ - 4)])
    # Scored predictions: every eval byte except the first of each window.
    assert weights.sum() == 100 - 4


def test_determinism_resume_sharding(corpus):
    path, _ = corpus
    src = TextFile(path, seq_len=SEQ, eval_fraction=0.3)
    first = check_determinism(src, "train", 4, seed=3)
    other = take(src.batches("train", 4, seed=4), 1)[0]
    assert not np.array_equal(first[0].inputs, other.inputs)
    check_resume(src, "train", 4, start_step=4, steps=2, seed=3)
    check_resume(src, "eval", 4, start_step=1, steps=2)
    check_sharding(src, "train", 4, 2, steps=2, seed=3, start_step=2)
    check_sharding(src, "eval", 4, 2, steps=3)


def test_directory(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.txt").write_bytes(b"second")
    (tmp_path / "a.txt").write_bytes(b"first")
    (tmp_path / "c.txt").write_bytes(b"third")
    (tmp_path / ".hidden").write_bytes(b"skipped")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x").write_bytes(b"skipped")
    files = corpus_files(tmp_path)
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["a.txt", "b/2.txt", "c.txt"]
    src = TextFile(tmp_path, seq_len=4, eval_fraction=0.0, separator=b"|")
    assert src.split_bytes("train").tobytes() == b"first|second|third"
    with pytest.raises(ValueError, match="empty"):
        src.batches("eval", 1)


def test_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        TextFile(missing)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.txt.*is empty"):
        TextFile(empty)
    short = tmp_path / "short.txt"
    short.write_bytes(b"x" * 40)
    with pytest.raises(ValueError, match="short.txt.*too short.*seq_len=64"):
        TextFile(short, seq_len=64)
    # 40 bytes, 20% held out: 32 training bytes, exactly one window.
    assert TextFile(short, seq_len=32, eval_fraction=0.2).num_batches("eval", 1) == 1
    with pytest.raises(ValueError, match="too short"):
        TextFile(short, seq_len=33, eval_fraction=0.2)
    empty_dir = tmp_path / "d"
    empty_dir.mkdir()
    with pytest.raises(ValueError, match="contains no"):
        TextFile(empty_dir)
    with pytest.raises(ValueError, match="eval_fraction"):
        TextFile(short, eval_fraction=1.0)
