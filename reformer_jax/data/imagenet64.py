"""ImageNet 64x64 (TFDS ``downsampled_imagenet/64x64``) as sub-pixel sequences.

**Tokens.** Each 64x64 RGB image is flattened in raster order (row, column, channel) into
``seq_len = 12288`` tokens with ``vocab_size = 256``: token ``(r * 64 + c) * 3 + ch`` is the
intensity of channel ``ch`` of pixel ``(r, c)``. Inputs = targets = tokens, weights 1 on tokens
``1 .. 12287`` (the first sub-pixel has no context; see `reformer_jax.data.base`).

**Batches.** ``"train"``: examples in a fresh random order every epoch (a permutation per epoch
drawn from ``(seed, "train-epoch", epoch)``), global row ``g`` of step ``s`` being example
``perm[epoch][(s * B + g) % N]``. ``"validation"`` (alias ``"eval"``): one pass in stored order,
the last batch padded with zero-weight rows.

**Data.** Read with random access and without TensorFlow through
``tfds.data_source("downsampled_imagenet/64x64", data_dir=...)``, which needs the dataset prepared
in the ``array_record`` file format (images are PNG/JPEG bytes decoded by Pillow, or OpenCV if
installed). The public download of this dataset (image-net.org/small) is gone, so use the manual
route: obtain the two original archives (e.g. from the ImageNet website, account required) and
place them, not extracted, in ``manual_dir``:

* ``train_64x64.tar`` (12,112,588,800 bytes)
* ``valid_64x64.tar`` (477,255,680 bytes)

(sizes as in TFDS's ``checksums.tsv`` for this dataset; each archive holds one PNG per image).

``ImageNet64(data_dir=..., manual_dir=...)`` then prepares the dataset once (several GB of
array_record files in ``<data_dir>/downsampled_imagenet/64x64/2.0.0/``). TFDS's own preparation of
this dataset reads the tar files through TensorFlow (``tf.io.gfile``), so preparation here uses
`TarPreparer`: the TFDS builder unchanged (same name, config, version and features, so the output
is the regular TFDS dataset) except that it reads the archives with Python's ``tarfile``. It does
not verify the archives' checksums. A dataset prepared elsewhere with
``tfds build downsampled_imagenet/64x64 --file_format=array_record --manual_dir=...`` (that route
needs TensorFlow) works too.

**Injection point** (tests, other storage): ``ImageNet64(examples={"train": seq, "validation":
seq})`` with any random-access sequences (``len`` and ``[i]``) of ``{"image": uint8[64, 64, 3]}``.
"""

from __future__ import annotations

import math
import os
import tarfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.datasets.downsampled_imagenet import (
    downsampled_imagenet_dataset_builder as _tfds_downsampled_imagenet,
)

from reformer_jax.data.base import SourceBase, lm_batch, step_rng
from reformer_jax.paths import as_path

__all__ = ["IMAGE_SHAPE", "MANUAL_FILES", "TFDS_NAME", "ImageNet64", "TarPreparer", "flatten"]

TFDS_NAME = "downsampled_imagenet/64x64"
IMAGE_SHAPE = (64, 64, 3)
#: Split name -> archive expected in the manual directory.
MANUAL_FILES = {"train": "train_64x64.tar", "validation": "valid_64x64.tar"}


class TarPreparer(_tfds_downsampled_imagenet.Builder, skip_registration=True):
    """TFDS's ``downsampled_imagenet`` builder reading its manual archives without TensorFlow.

    Only `_split_generators` / `_generate_examples` differ from TFDS's builder (the archives are
    read with ``tarfile`` from the manual directory instead of ``dl_manager.iter_archive``, which
    needs TensorFlow); the name, configs, version and features are TFDS's, so the prepared files
    are read by ``tfds.data_source("downsampled_imagenet/64x64")``.
    """

    name = "downsampled_imagenet"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Place " + " and ".join(MANUAL_FILES.values()) + " (not extracted) in the manual directory."
    )

    # Same metadata (description, citation) as TFDS's builder, not this package's directory.
    @classmethod
    def get_metadata(cls):
        return _tfds_downsampled_imagenet.Builder.get_metadata()

    # tensorflow-datasets 4.9.10 resolves `code_path` (only used to find download checksums, and
    # nothing is downloaded here) through the `importlib_resources` backport, which it does not
    # install on Python >= 3.9 (tensorflow/datasets#11212).
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        return None

    def _split_generators(self, dl_manager):
        manual_dir = epath.Path(dl_manager.manual_dir)
        if self.builder_config.name != "64x64":
            raise ValueError("TarPreparer only prepares the 64x64 config")
        paths = {split: manual_dir / name for split, name in MANUAL_FILES.items()}
        for path in paths.values():
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        return {split: self._generate_examples(path) for split, path in paths.items()}

    def _generate_examples(self, archive):
        with (
            archive.open("rb") as f,
            tarfile.open(fileobj=f, mode="r|*") as tar,
        ):  # Streaming: one pass over a 12 GB file.
            for member in tar:
                if member.isfile():
                    yield member.name, {"image": tar.extractfile(member).read()}


def flatten(image: np.ndarray) -> np.ndarray:
    """``uint8[64, 64, 3]`` -> ``int32[12288]``, token ``(r * 64 + c) * 3 + ch``."""
    image = np.asarray(image)
    if image.shape != IMAGE_SHAPE:
        raise ValueError(f"Expected an image of shape {IMAGE_SHAPE}, got {image.shape}")
    return image.reshape(-1).astype(np.int32)


def _is_prepared(data_dir: str | None) -> tuple[bool, str]:
    builder = tfds.builder(TFDS_NAME, data_dir=data_dir)
    return builder.is_prepared(), str(builder.data_dir)


class ImageNet64(SourceBase):
    """Downsampled ImageNet 64x64 as a `DataSource` (see the module docstring).

    Args:
      data_dir: TFDS data directory (default: TFDS's).
      manual_dir: directory holding ``train_64x64.tar`` and ``valid_64x64.tar``; used to prepare
        the dataset if it is not prepared in ``data_dir`` yet.
      examples: instead of TFDS, random-access sequences of ``{"image": uint8[64, 64, 3]}`` per
        split (``"train"``, ``"validation"``).
    """

    vocab_size = 256
    seq_len = math.prod(IMAGE_SHAPE)
    splits = ("train", "validation")
    split_aliases = {"eval": "validation"}

    def __init__(
        self,
        data_dir: str | os.PathLike | None = None,
        manual_dir: str | os.PathLike | None = None,
        *,
        examples: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    ):
        if examples is None:
            data_dir = None if data_dir is None else os.fspath(data_dir)
            examples = self._open_tfds(data_dir, manual_dir)
        missing = [s for s in self.splits if s not in examples]
        if missing:
            raise ValueError(f"examples lacks the split(s) {missing} (has {sorted(examples)})")
        self._examples = {s: examples[s] for s in self.splits}
        self._perm_cache: dict[tuple[int, int], np.ndarray] = {}

    @staticmethod
    def _open_tfds(data_dir: str | None, manual_dir) -> Mapping[str, Sequence]:
        prepared, where = _is_prepared(data_dir)
        if not prepared:
            if manual_dir is None:
                raise FileNotFoundError(
                    f"{TFDS_NAME} is not prepared in {where} and no manual_dir was given: place "
                    f"{' and '.join(MANUAL_FILES.values())} (not extracted) in a directory and "
                    "pass it as --config.data.settings.manual_dir= (manual_dir=; see "
                    "reformer_jax.data.imagenet64's docstring)"
                )
            manual_dir = as_path(manual_dir)
            absent = [str(manual_dir / f) for f in MANUAL_FILES.values()]
            absent = [p for p in absent if not epath.Path(p).is_file()]
            if absent:
                raise FileNotFoundError(
                    f"{TFDS_NAME} is not prepared in {where} and the manual archive(s) {absent} "
                    f"do not exist: place {' and '.join(MANUAL_FILES.values())} (not extracted) "
                    f"in {manual_dir}, or point --config.data.settings.manual_dir= (manual_dir=) "
                    "elsewhere (see reformer_jax.data.imagenet64's docstring)"
                )
            preparer = TarPreparer(config="64x64", data_dir=data_dir, file_format="array_record")
            preparer.download_and_prepare(
                download_config=tfds.download.DownloadConfig(
                    manual_dir=os.fspath(manual_dir), try_download_gcs=False
                )
            )
        splits = list(ImageNet64.splits)  # Explicit: TFDS's mock data knows no split names.
        sources = tfds.data_source(TFDS_NAME, split=splits, data_dir=data_dir, download=False)
        return dict(zip(splits, sources, strict=True))

    def _num_examples(self, split: str) -> int | None:
        return None if split == "train" else len(self._examples[split])

    def _permutation(self, seed: int, epoch: int) -> np.ndarray:
        key = (seed, epoch)
        if key not in self._perm_cache:
            if len(self._perm_cache) >= 2:
                self._perm_cache.pop(next(iter(self._perm_cache)))
            n = len(self._examples["train"])
            self._perm_cache[key] = step_rng(seed, "train-epoch", epoch).permutation(n)
        return self._perm_cache[key]

    def _make_batch(self, split: str, step: int, global_batch_size: int, rows: slice, seed: int):
        source = self._examples[split]
        n = len(source)
        if n == 0:
            raise ValueError(f"The {split!r} split of ImageNet64 is empty")
        positions = step * global_batch_size + np.arange(global_batch_size)[rows]
        tokens = np.zeros((len(positions), self.seq_len), np.int32)
        lengths = np.zeros((len(positions),), np.int64)
        for i, g in enumerate(positions.tolist()):
            if split == "train":
                index = int(self._permutation(seed, g // n)[g % n])
            elif g < n:
                index = g
            else:  # Padding row past the end of the evaluation split.
                continue
            tokens[i] = flatten(source[index]["image"])
            lengths[i] = self.seq_len
        return lm_batch(tokens, lengths)
