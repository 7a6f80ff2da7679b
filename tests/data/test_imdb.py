import io
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from reformer_jax.data import get_source
from reformer_jax.data.imdb import IMDb
from tests.data.lra_checks import check_conventions, take


def _examples(n, prefix):
    return [{"text": f"{prefix} review {i} \u00e9".encode(), "label": i % 2} for i in range(n)]


def test_bytes_labels_and_held_out_validation():
    """Catches bytes not offset by 1, validation overlapping train, or a validation split that
    silently is the test split."""
    ex = {"train": _examples(10, "tr"), "test": _examples(4, "te")}
    src = IMDb(examples=ex, seq_len=12, validation_size=3)
    assert (src.vocab_size, src.num_classes, src.seq_len) == (257, 2, 12)
    assert [src.num_examples(s) for s in ("train", "validation", "test")] == [7, 3, 4]
    test = take(src.batches("test", 4), 1)[0]
    want = np.frombuffer(b"te review 1 ", np.uint8) + 1
    np.testing.assert_array_equal(test.inputs[1], want)  # Truncated to 12 bytes.
    assert test.mask.all() and test.labels.tolist() == [0, 1, 0, 1]

    def rows(split):
        return {
            r.tobytes()
            for b in src.batches(split, 4)
            for r, w in zip(b.inputs, b.weights, strict=True)
            if w
        }

    train_rows = {r.tobytes() for b in take(src.batches("train", 7), 1) for r in b.inputs}
    assert len(train_rows) == 7 and not train_rows & rows("validation")
    assert rows("validation") <= {
        np.pad(np.frombuffer(e["text"][:12], np.uint8).astype(np.int32) + 1, (0, 0)).tobytes()
        for e in ex["train"]
    }
    lra_like = IMDb(examples=ex, seq_len=12, validation_size=0)
    assert rows("test") == {
        r.tobytes() for b in lra_like.batches("validation", 4) for r in b.inputs[b.weights > 0]
    }
    check_conventions(src)


def test_short_reviews_are_padded_with_mask():
    ex = {"train": [{"text": "ab", "label": 1}] * 3, "test": [{"text": "abc", "label": 0}]}
    b = take(IMDb(examples=ex, seq_len=5, validation_size=1).batches("test", 2), 1)[0]
    np.testing.assert_array_equal(b.inputs[0], [98, 99, 100, 0, 0])
    np.testing.assert_array_equal(b.mask[0], [1, 1, 1, 0, 0])


def test_tfds_mock_and_manual_archive(tmp_path):
    with tfds.testing.mock_data(num_examples=6):
        src = get_source("imdb", data_dir=tmp_path / "tfds", seq_len=32, validation_size=2)
        batch = take(src.batches("train", 2), 1)[0]
    assert batch.inputs.shape == (2, 32)
    archive = tmp_path / "manual" / "aclImdb_v1.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        for split in ("train", "test"):
            for label in ("neg", "pos"):
                for i in range(2):
                    data = f"{split} {label} {i}".encode()
                    info = tarfile.TarInfo(f"aclImdb/{split}/{label}/{i}_7.txt")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("aclImdb/train/unsup/0_0.txt")  # Unlabelled: ignored.
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    src = IMDb(
        data_dir=tmp_path / "empty", manual_dir=archive.parent, seq_len=16, validation_size=1
    )
    assert src.num_examples("train") == 3 and src.num_examples("test") == 4
    test = take(src.batches("test", 4), 1)[0]
    texts = [
        bytes((row[m] - 1).astype(np.uint8)).decode()
        for row, m in zip(test.inputs, test.mask, strict=True)
    ]
    assert texts == ["test neg 0", "test neg 1", "test pos 0", "test pos 1"]
    assert test.labels.tolist() == [0, 0, 1, 1]


def test_missing_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="aclImdb_v1.tar.gz.*manual_dir"):
        IMDb(data_dir=tmp_path / "none", manual_dir=tmp_path)
