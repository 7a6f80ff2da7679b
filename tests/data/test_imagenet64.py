import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from reformer_jax.data import DataSource
from reformer_jax.data.imagenet64 import TFDS_NAME, ImageNet64, flatten
from tests.data.checks import (
    assert_lm_batch,
    check_determinism,
    check_resume,
    check_sharding,
    random_images,
    take,
    write_image_tar,
)

L = 64 * 64 * 3


def _fake(n_train=6, n_valid=5):
    train, valid = random_images(n_train, 0), random_images(n_valid, 1)
    examples = {
        "train": [{"image": im} for im in train],
        "validation": [{"image": im} for im in valid],
    }
    return examples, train, valid


def test_flatten_order():
    image = random_images(1, 3)[0]
    tokens = flatten(image)
    assert tokens.shape == (12_288,) and tokens.dtype == np.int32
    r, c, ch = np.indices((64, 64, 3)).reshape(3, -1)
    np.testing.assert_array_equal(tokens[(r * 64 + c) * 3 + ch], image[r, c, ch])
    assert tokens[(5 * 64 + 7) * 3 + 2] == image[5, 7, 2]
    with pytest.raises(ValueError, match=r"\(64, 64, 3\)"):
        flatten(np.zeros((32, 32, 3), np.uint8))


def test_eval_is_one_pass_in_order():
    examples, _, valid = _fake()
    src = ImageNet64(examples=examples)
    assert isinstance(src, DataSource)
    assert (src.seq_len, src.vocab_size) == (12_288, 256)
    assert src.num_batches("eval", 2) == 3
    batches = list(src.batches("eval", 2))
    assert len(batches) == 3
    for b in batches:
        assert_lm_batch(b, 2, L, 256)
    tokens = np.concatenate([b.inputs for b in batches])
    weights = np.concatenate([b.weights for b in batches])
    np.testing.assert_array_equal(tokens[:5], valid.reshape(5, -1))
    assert not tokens[5].any() and not weights[5].any()  # Padding row.
    assert weights.sum() == 5 * (L - 1)


def test_train_epochs_are_permutations():
    examples, train, _ = _fake(n_train=6)
    src = ImageNet64(examples=examples)
    as_index = {im.tobytes(): i for i, im in enumerate(train.reshape(6, -1).astype(np.int32))}
    batches = take(src.batches("train", 3, seed=4), 4)  # Two epochs of 6 examples.
    seen = [as_index[row.tobytes()] for b in batches for row in b.inputs]
    assert sorted(seen[:6]) == sorted(seen[6:]) == list(range(6))
    assert seen[:6] != seen[6:]  # Reshuffled (for this seed).
    for b in batches:
        assert_lm_batch(b, 3, L, 256)
        assert b.weights[:, 1:].all()


def test_determinism_resume_sharding():
    examples, _, _ = _fake(n_train=5)
    src = ImageNet64(examples=examples)
    check_determinism(src, "train", 2, steps=4, seed=1)
    check_resume(src, "train", 2, start_step=3, steps=3, seed=1)  # Across epoch boundaries.
    check_resume(src, "validation", 2, start_step=1, steps=2)
    check_sharding(src, "train", 4, 2, steps=3, seed=1, start_step=1)
    check_sharding(src, "eval", 4, 4, steps=2)


def test_bad_examples():
    examples, _, _ = _fake()
    with pytest.raises(ValueError, match="validation"):
        ImageNet64(examples={"train": examples["train"]})
    bad = {"train": [{"image": np.zeros((32, 32, 3), np.uint8)}], "validation": []}
    with pytest.raises(ValueError, match=r"\(64, 64, 3\)"):
        next(ImageNet64(examples=bad).batches("train", 1))


def _mock_sources(valid):
    def as_data_source(builder, split=None, **kwargs):
        del kwargs
        assert builder.name == "downsampled_imagenet"
        sources = {
            "train": [{"image": im} for im in random_images(4, 2)],
            "validation": [{"image": im} for im in valid],
        }
        return [sources[s] for s in split] if isinstance(split, list) else sources[split]

    return as_data_source


def _placeholder_manual_dir(path):
    path.mkdir()
    for name in ("train_64x64.tar", "valid_64x64.tar"):
        (path / name).write_bytes(b"")
    return path


def test_reads_through_tfds_data_source_mock(tmp_path):
    valid = random_images(3, 5)
    manual = _placeholder_manual_dir(tmp_path / "manual")
    with tfds.testing.mock_data(as_data_source_fn=_mock_sources(valid)):
        src = ImageNet64(data_dir=tmp_path / "data", manual_dir=manual)
        batch = take(src.batches("validation", 4), 1)[0]
    np.testing.assert_array_equal(batch.inputs[:3], valid.reshape(3, -1))
    assert not batch.weights[3].any()


def test_tfds_mock_data_wrong_shapes_are_reported(tmp_path):
    manual = _placeholder_manual_dir(tmp_path / "manual")
    with tfds.testing.mock_data(num_examples=3):  # Random image sizes.
        src = ImageNet64(data_dir=tmp_path / "data", manual_dir=manual)
        assert src.num_batches("train", 1) is None and src.num_batches("validation", 1) == 3
        with pytest.raises(ValueError, match=r"shape \(64, 64, 3\)"):
            next(src.batches("train", 2))


def test_manual_route_prepares_a_tfds_dataset_without_tensorflow(tmp_path):
    tf_loaded_before = "tensorflow" in sys.modules
    train, valid = random_images(4, 6), random_images(3, 7)
    manual = tmp_path / "manual"
    manual.mkdir()
    write_image_tar(manual / "train_64x64.tar", train)
    write_image_tar(manual / "valid_64x64.tar", valid)
    src = ImageNet64(data_dir=tmp_path / "data", manual_dir=manual)
    # TFDS stores examples in its own (hashed) order: compare as sets of rows.
    rows = np.concatenate([b.inputs for b in src.batches("eval", 3)])
    assert sorted(r.tobytes() for r in rows) == sorted(
        v.astype(np.int32).tobytes() for v in valid.reshape(3, -1)
    )
    epoch = np.concatenate([b.inputs for b in take(src.batches("train", 2), 2)])
    assert sorted(r.tobytes() for r in epoch) == sorted(
        t.astype(np.int32).tobytes() for t in train.reshape(4, -1)
    )
    # A regular TFDS dataset: readable by name, and again without the manual files.
    ds = tfds.data_source(TFDS_NAME, data_dir=tmp_path / "data", download=False)
    assert {k: len(v) for k, v in ds.items()} == {"train": 4, "validation": 3}
    ImageNet64(data_dir=tmp_path / "data")
    assert tf_loaded_before or "tensorflow" not in sys.modules  # TFDS did not import TF.


def test_missing_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="not prepared.*train_64x64.tar.*manual_dir"):
        ImageNet64(data_dir=tmp_path / "data")
    (tmp_path / "manual").mkdir()
    (tmp_path / "manual" / "train_64x64.tar").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="valid_64x64.tar") as err:
        ImageNet64(data_dir=tmp_path / "data", manual_dir=tmp_path / "manual")
    assert str(tmp_path / "manual") in str(err.value)
