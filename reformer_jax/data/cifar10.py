"""LRA Image: grayscale CIFAR-10, the 1,024 pixels as tokens (``vocab_size = 256``), 10 classes.

**Grayscale** as LRA (``tf.image.rgb_to_grayscale`` on uint8 images): with ``x = rgb / 255`` in
float32, ``gray = trunc((0.2989 R + 0.5870 G + 0.1140 B)(x) * 255.5)`` (TensorFlow's conversion
back to uint8 scales by ``255 + 0.5`` and truncates). Tokens in raster order (row, column);
no padding.

**Splits** as LRA: ``train`` = the first 90% of TFDS's train split (45,000), ``validation``
(= ``eval``) the last 10% (5,000), ``test`` TFDS's test split (10,000).

**Data**, first found of:

1. TFDS ``cifar10`` prepared in ``data_dir`` in the ``array_record`` format (``tfds build cifar10
   --file_format=array_record --data_dir=<data_dir>``; or a mock under ``tfds.testing.mock_data``).
2. ``cifar-10-binary.tar.gz`` (https://www.cs.toronto.edu/~kriz/cifar.html, "binary version",
   what TFDS downloads) in ``manual_dir``, read directly: ``data_batch_1..5.bin`` then
   ``test_batch.bin``, records of 1 label byte and 3,072 pixel bytes (R, G, B planes of 32x32).

Injection point: ``Cifar10(examples={"train": seq, "test": seq})`` of
``{"image": uint8[32, 32, 3], "label": int}``.
"""

from __future__ import annotations

import math
import os
import pathlib
import tarfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from reformer_jax.data.examples import ExampleSource
from reformer_jax.data.tfds_split import open_tfds, select_splits
from reformer_jax.paths import as_path

__all__ = ["ARCHIVE", "Cifar10", "grayscale", "read_binary_archive"]

TFDS_NAME = "cifar10"
ARCHIVE = "cifar-10-binary.tar.gz"
_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], np.float32)


def grayscale(image: np.ndarray) -> np.ndarray:
    """``uint8[32, 32, 3]`` -> ``uint8[32, 32]`` as ``tf.image.rgb_to_grayscale`` (docstring)."""
    image = np.asarray(image)
    if image.shape != (32, 32, 3):
        raise ValueError(f"cifar10: expected an image of shape (32, 32, 3), got {image.shape}")
    x = image.astype(np.float32) * np.float32(1.0 / 255.0)
    gray = (x @ _WEIGHTS) * np.float32(255.5)
    return gray.astype(np.uint8)


def read_binary_archive(path: str | os.PathLike) -> dict[str, list[dict[str, Any]]]:
    """``{"train": [...], "test": [...]}`` of ``{"image", "label"}`` from the binary archive."""
    batches: dict[str, np.ndarray] = {}
    with as_path(path).open("rb") as f, tarfile.open(fileobj=f, mode="r:*") as tar:
        for member in tar:
            name = pathlib.PurePosixPath(member.name).name
            if member.isfile() and name.endswith(".bin") and "batch" in name:
                batches[name] = np.frombuffer(tar.extractfile(member).read(), np.uint8)
    want = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    missing = [w for w in want if w not in batches]
    if missing:
        raise ValueError(f"{path}: lacks {missing}; is it the CIFAR-10 binary version?")
    out: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    for name in want:
        records = batches[name].reshape(-1, 1 + 3072)
        images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        split = "test" if name == "test_batch.bin" else "train"
        out[split] += [
            {"image": im, "label": int(lab)} for im, lab in zip(images, records[:, 0], strict=True)
        ]
    return out


class Cifar10(ExampleSource):
    """Grayscale CIFAR-10 (LRA Image) as a classification source (module docstring).

    Args:
      data_dir: TFDS data directory (default: TFDS's).
      manual_dir: directory holding ``cifar-10-binary.tar.gz``.
      examples: instead of TFDS, ``{"train": seq, "test": seq}`` of ``{"image", "label"}``.
    """

    vocab_size = 256
    seq_len = 1024
    num_classes = 10
    splits = ("train", "validation", "test")
    split_aliases = {"eval": "validation", "val": "validation"}

    def __init__(
        self,
        data_dir: str | os.PathLike | None = None,
        manual_dir: str | os.PathLike | None = None,
        *,
        examples: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    ):
        if examples is None:
            examples = open_tfds(TFDS_NAME, ("train", "test"), data_dir)
        if examples is None and manual_dir is not None:
            archive = as_path(manual_dir) / ARCHIVE
            if archive.is_file():
                examples = read_binary_archive(archive)
        if examples is None:
            raise FileNotFoundError(
                f"CIFAR-10 not found: TFDS {TFDS_NAME} is not prepared in "
                f"{data_dir or 'the default TFDS data_dir'} and {ARCHIVE} is not in "
                f"manual_dir={manual_dir}; place {ARCHIVE} (www.cs.toronto.edu/~kriz/cifar.html, "
                "binary version) in a directory passed as manual_dir, or run `tfds build "
                f"{TFDS_NAME} --file_format=array_record --data_dir=<data_dir>`"
            )
        self._source = select_splits(examples, ("train", "test"))
        n_train = math.floor(0.9 * len(self._source["train"]))  # LRA: train[:90%].
        self._ranges = {
            "train": ("train", 0, n_train),
            "validation": ("train", n_train, len(self._source["train"])),
            "test": ("test", 0, len(self._source["test"])),
        }

    def _split_len(self, split: str) -> int:
        _, lo, hi = self._ranges[split]
        return hi - lo

    def _example(self, split: str, index: int):
        source, lo, _ = self._ranges[split]
        ex = self._source[source][lo + index]
        return grayscale(ex["image"]).reshape(-1).astype(np.int32), int(ex["label"])
