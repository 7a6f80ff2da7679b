import shutil
import sys
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from reformer_jax.data import DataSource
from reformer_jax.data.enwik8 import URL, Enwik8, Enwik8Config, Enwik8Reformer
from tests.data.checks import (
    assert_lm_batch,
    check_determinism,
    check_resume,
    check_sharding,
    take,
)

# A scaled-down enwik8: 40,000 + 3,000 + 2,500 bytes, stored in chunks of 1,000 (partial last
# chunk in the test split), read in windows of 128 (windows span chunks).
SIZES = dict(train_bytes=40_000, validation_bytes=3_000, test_bytes=2_500, chunk_size=1_000)
TOTAL = 45_500
SEQ = 128


def _write_archive(directory, data, member="enwik8"):
    directory.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(directory / "enwik8.zip", "w") as z:
        z.writestr(member, data)


@pytest.fixture(scope="module")
def raw():
    return np.random.default_rng(0).integers(0, 256, TOTAL, dtype=np.uint8).tobytes()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, raw):
    root = tmp_path_factory.mktemp("enwik8")
    _write_archive(root / "manual", raw)
    src = Enwik8(data_dir=root / "data", manual_dir=root / "manual", seq_len=SEQ, **SIZES)
    return root, src


def test_standard_config():
    (config,) = Enwik8Reformer.BUILDER_CONFIGS
    assert config.name == "bytes"
    assert (config.train_bytes, config.validation_bytes, config.test_bytes) == (
        90_000_000,
        5_000_000,
        5_000_000,
    )
    assert config.chunk_size == 65_536
    assert Enwik8.vocab_size == 258 and Enwik8.token_offset == 2
    assert "enwik8.zip" in Enwik8Reformer.MANUAL_DOWNLOAD_INSTRUCTIONS


def test_split_boundaries(prepared, raw):
    _, src = prepared
    assert isinstance(src, DataSource)
    assert src.read_bytes("train").tobytes() == raw[:40_000]
    # Validation is exactly the bytes after the training part, test the rest.
    assert src.read_bytes("validation").tobytes() == raw[40_000:43_000]
    assert src.read_bytes("eval").tobytes() == raw[40_000:43_000]
    assert src.read_bytes("test").tobytes() == raw[43_000:]
    # A read across a chunk boundary.
    assert src.read_bytes("train", 1_990, 30).tobytes() == raw[1_990:2_020]


def test_eval_windows_are_the_validation_bytes(prepared, raw):
    _, src = prepared
    # 3,000 bytes / 128: 23 full windows and one of 56 bytes; 24 windows in batches of 8.
    assert src.num_batches("validation", 8) == 3
    batches = list(src.batches("validation", 8))
    assert len(batches) == 3
    for b in batches:
        assert_lm_batch(b, 8, SEQ, 258)
    tokens = np.concatenate([b.inputs for b in batches])
    weights = np.concatenate([b.weights for b in batches])
    assert tokens[0, 0] == raw[40_000] + 2  # The first byte after the training part.
    flat = tokens.reshape(-1)
    np.testing.assert_array_equal(flat[:3_000] - 2, np.frombuffer(raw[40_000:43_000], np.uint8))
    assert not flat[3_000:].any()  # Padding id 0...
    assert weights.reshape(-1)[3_000:].sum() == 0  # ... with weight 0.
    assert weights.sum() == 3_000 - 24
    # "eval" is "validation"; test has its own windows.
    for a, b in zip(batches, src.batches("eval", 8), strict=True):
        np.testing.assert_array_equal(a.inputs, b.inputs)
    test_first = take(src.batches("test", 8), 1)[0]
    assert test_first.inputs[0, 0] == raw[43_000] + 2


def test_train_windows(prepared, raw):
    _, src = prepared
    train = raw[:40_000]
    for batch in take(src.batches("train", 8, seed=1), 4):
        assert_lm_batch(batch, 8, SEQ, 258)
        assert batch.inputs.min() >= 2
        assert batch.weights[:, 1:].all()
        for row in batch.inputs:
            assert train.find((row - 2).astype(np.uint8).tobytes()) >= 0


def test_determinism_resume_sharding(prepared):
    _, src = prepared
    check_determinism(src, "train", 4, seed=2)
    check_resume(src, "train", 4, start_step=3, steps=2, seed=2)
    check_resume(src, "validation", 4, start_step=2, steps=3)
    check_sharding(src, "train", 8, 2, steps=2, seed=2, start_step=5)
    check_sharding(src, "test", 8, 4, steps=3)
    with pytest.raises(ValueError, match="valid splits"):
        src.batches("dev", 8)


def test_reads_prepared_data_without_archive_or_tensorflow(prepared, raw, tmp_path):
    tf_loaded_before = "tensorflow" in sys.modules
    root, _ = prepared
    data_dir = tmp_path / "data"
    shutil.copytree(root / "data", data_dir)  # Prepared data only: no archive anywhere.
    src = Enwik8(data_dir=data_dir, manual_dir=tmp_path / "absent", seq_len=SEQ, **SIZES)
    assert src.read_bytes("test").tobytes() == raw[43_000:]
    # The files are a regular TFDS array_record dataset.
    config = src.builder.builder_config.name
    ds = tfds.data_source(f"enwik8_reformer/{config}", data_dir=data_dir, download=False)
    assert b"".join(ds["validation"][i]["bytes"] for i in range(3)) == raw[40_000:43_000]
    assert tf_loaded_before or "tensorflow" not in sys.modules  # TFDS did not import TF.


def test_missing_archive(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        Enwik8(data_dir=tmp_path / "data", manual_dir=tmp_path / "manual", seq_len=SEQ, **SIZES)
    assert str(tmp_path / "manual" / "enwik8.zip") in str(err.value)
    assert URL in str(err.value)
    # The default manual directory is <data_dir>/downloads/manual.
    with pytest.raises(FileNotFoundError, match="downloads/manual"):
        Enwik8(data_dir=tmp_path / "data", seq_len=SEQ, **SIZES)


def test_archive_size_must_match_the_splits(tmp_path, raw):
    _write_archive(tmp_path / "manual", raw[:-1])
    with pytest.raises(ValueError, match="45499 bytes"):
        Enwik8(data_dir=tmp_path / "data", manual_dir=tmp_path / "manual", seq_len=SEQ, **SIZES)


def test_bad_arguments(prepared):
    root, _ = prepared
    with pytest.raises(ValueError, match="seq_len"):
        Enwik8(data_dir=root / "data", seq_len=1, **SIZES)
    with pytest.raises(ValueError, match="longer than the training split"):
        Enwik8(data_dir=root / "data", seq_len=40_001, **SIZES)
    assert Enwik8Config(name="x").split_sizes == {
        "train": 90_000_000,
        "validation": 5_000_000,
        "test": 5_000_000,
    }
