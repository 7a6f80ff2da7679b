import io
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from reformer_jax.data import get_source
from reformer_jax.data.cifar10 import Cifar10, grayscale
from tests.data.lra_checks import check_conventions, take


def _images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_grayscale_matches_tensorflows_formula():
    """Catches other weights (e.g. 0.299/0.587/0.114 rounded differently), rounding instead of
    truncation, or channels read in the wrong order."""
    image = np.zeros((32, 32, 3), np.uint8)
    image[0, 0] = (255, 0, 0)
    image[0, 1] = (0, 255, 0)
    image[0, 2] = (0, 0, 255)
    image[0, 3] = (255, 255, 255)
    image[0, 4] = (10, 200, 30)
    g = grayscale(image)
    # trunc((0.2989 R + 0.587 G + 0.114 B) / 255 * 255.5), by hand: 0.2989 * 255.5 = 76.37,
    # 0.587 * 255.5 = 149.98, 0.114 * 255.5 = 29.13, 0.9999 * 255.5 = 255.47,
    # (2.989 + 117.4 + 3.42) / 255 * 255.5 = 124.05.
    assert g[0, :5].tolist() == [76, 149, 29, 255, 124]
    assert g.dtype == np.uint8 and g.shape == (32, 32)


def test_splits_as_lra_and_tokens_in_raster_order():
    train, test = _images(20, 0), _images(3, 1)
    ex = {
        "train": [{"image": im, "label": i % 10} for i, im in enumerate(train)],
        "test": [{"image": im, "label": 9} for im in test],
    }
    src = Cifar10(examples=ex)
    assert [src.num_examples(s) for s in ("train", "validation", "test")] == [18, 2, 3]
    assert (src.vocab_size, src.seq_len, src.num_classes) == (256, 1024, 10)
    valid = take(src.batches("validation", 2), 1)[0]
    np.testing.assert_array_equal(valid.inputs[1], grayscale(train[19]).reshape(-1))
    assert valid.inputs[1][5 * 32 + 7] == grayscale(train[19])[5, 7]
    assert valid.labels.tolist() == [8, 9] and valid.mask.all()
    check_conventions(src)


def test_tfds_mock_and_binary_archive(tmp_path):
    with tfds.testing.mock_data(num_examples=10):
        src = get_source("cifar10", data_dir=tmp_path / "tfds")
        assert take(src.batches("train", 2), 1)[0].inputs.shape == (2, 1024)
    images, labels = _images(12, 2), np.arange(12) % 10
    archive = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
        for k, name in enumerate(names):
            sel = slice(2 * k, 2 * k + 2)
            planes = images[sel].transpose(0, 3, 1, 2).reshape(2, -1)  # R, G, B planes.
            data = np.concatenate([labels[sel, None].astype(np.uint8), planes], 1).tobytes()
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    src = Cifar10(data_dir=tmp_path / "none", manual_dir=tmp_path)
    assert src.num_examples("train") == 9 and src.num_examples("test") == 2
    test = take(src.batches("test", 2), 1)[0]
    np.testing.assert_array_equal(test.inputs[0], grayscale(images[10]).reshape(-1))
    assert test.labels.tolist() == [0, 1]


def test_missing_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-binary.tar.gz.*manual_dir"):
        Cifar10(data_dir=tmp_path / "none", manual_dir=tmp_path)
