"""enwik8 (the first 10^8 bytes of an English Wikipedia XML dump) as a TFDS dataset and a source.

**Storage.** `Enwik8Reformer` is a `tfds.core.GeneratorBasedBuilder` (dataset name
``enwik8_reformer``, config ``bytes``) prepared from the standard archive ``enwik8.zip``
(http://mattmahoney.net/dc/enwik8.zip, one member ``enwik8`` of 100,000,000 bytes) with the standard
split: the first 90,000,000 bytes are ``train``, the next 5,000,000 ``validation``, the last
5,000,000 ``test``. Each split is stored in order (``disable_shuffling``) as examples
``{"bytes": <raw bytes>, "offset": <int64 offset in the split>}`` of ``chunk_size`` (65,536) bytes;
the last example of a split holds the remainder (e.g. 23,872 bytes for ``train``). Files are written
with ``file_format="array_record"``, so they are read with random access and WITHOUT TensorFlow,
through ``builder.as_data_source()`` / ``tfds.data_source("enwik8_reformer", data_dir=...)``.
(Checked with tensorflow-datasets 4.9.10: preparing and reading this dataset needs no TensorFlow.)

**Manual download only.** The builder never downloads: put ``enwik8.zip`` (not extracted) in the
manual directory, by default ``<data_dir>/downloads/manual/``, or pass ``manual_dir``. Preparing
reads the archive once (about 100 MB in memory) and writes ~100 MB of array_record files to
``<data_dir>/enwik8_reformer/bytes/1.0.0/``; afterwards the archive is no longer needed. Prepare on
one process (or give each host its own ``data_dir``) before a multi-process run.

**Tokens.** As in the Trax/Tensor2Tensor enwik8 configs, ``vocab_size = 258``: ids 0 (padding) and
1 (end of sequence, unused here) are reserved and byte ``b`` is token ``b + 2``.

**Batches** (`Enwik8`): ``"train"`` rows are windows of ``seq_len`` bytes at random offsets of the
training bytes (drawn per step, they may span stored chunks); ``"validation"`` (alias ``"eval"``)
and ``"test"`` are one pass of consecutive non-overlapping windows, the last one padded with 0
(weight 0). See `reformer_jax.data.base` for the conventions.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import zipfile

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from reformer_jax.data.base import ByteWindowSource
from reformer_jax.paths import as_path

__all__ = ["ARCHIVE_NAME", "URL", "Enwik8", "Enwik8Config", "Enwik8Reformer"]

URL = "http://mattmahoney.net/dc/enwik8.zip"
ARCHIVE_NAME = "enwik8.zip"
_MEMBER = "enwik8"

_CITATION = """\
@misc{mahoney2011large,
  author = {Matt Mahoney},
  title = {Large Text Compression Benchmark},
  year = {2011},
  howpublished = {\\url{http://mattmahoney.net/dc/text.html}}
}"""


@dataclasses.dataclass
class Enwik8Config(tfds.core.BuilderConfig):
    """Split sizes (bytes, in archive order) and the size of the stored chunks."""

    train_bytes: int = 90_000_000
    validation_bytes: int = 5_000_000
    test_bytes: int = 5_000_000
    chunk_size: int = 65_536

    @property
    def split_sizes(self) -> dict[str, int]:
        return {
            "train": self.train_bytes,
            "validation": self.validation_bytes,
            "test": self.test_bytes,
        }


_STANDARD = Enwik8Config(
    name="bytes",
    description="Standard split: bytes [0, 90M) train, [90M, 95M) validation, [95M, 100M) test.",
)


class Enwik8Reformer(tfds.core.GeneratorBasedBuilder):
    """enwik8 as raw-byte chunks in archive order (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [_STANDARD]
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
    Download {URL} and place the archive, not extracted, as `{ARCHIVE_NAME}` in the manual
    directory (default: `<data_dir>/downloads/manual/`)."""

    # tensorflow-datasets 4.9.10 resolves `code_path` (only used to find a checksums.tsv for
    # downloads, which this builder never does) through the `importlib_resources` backport that
    # it does not install on Python >= 3.9 (tensorflow/datasets#11212). No code path: no checksums.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        return None

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "enwik8: the first 10^8 bytes of the English Wikipedia XML dump of 2006-03-03, "
                "stored in order as raw-byte chunks with their offset in the split."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "bytes": tfds.features.Tensor(shape=(), dtype=np.object_),
                    "offset": tfds.features.Scalar(dtype=np.int64),
                }
            ),
            homepage="http://mattmahoney.net/dc/textdata.html",
            citation=_CITATION,
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        archive = dl_manager.manual_dir / ARCHIVE_NAME
        if not archive.exists():
            raise FileNotFoundError(
                f"{archive} not found. {self.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}"
            )
        data = memoryview(read_archive(archive))
        sizes = self.builder_config.split_sizes
        if len(data) != sum(sizes.values()):
            raise ValueError(
                f"{archive} holds {len(data)} bytes, but the split sizes {sizes} of config "
                f"{self.builder_config.name!r} add up to {sum(sizes.values())}"
            )
        generators, start = {}, 0
        for split, size in sizes.items():
            generators[split] = self._generate_examples(data[start : start + size])
            start += size
        return generators

    def _generate_examples(self, data: memoryview):
        chunk = self.builder_config.chunk_size
        for offset in range(0, len(data), chunk):
            yield offset, {"bytes": bytes(data[offset : offset + chunk]), "offset": offset}


def read_archive(path: str | os.PathLike) -> bytes:
    """The contents of ``enwik8`` inside the zip archive ``path``."""
    with epath.Path(path).open("rb") as f, zipfile.ZipFile(f) as z:
        names = z.namelist()
        if _MEMBER in names:
            return z.read(_MEMBER)
        if len(names) == 1:
            return z.read(names[0])
        raise ValueError(f"{path} has no member {_MEMBER!r} (members: {names[:10]})")


class _ChunkStream:
    """Random byte access to one split stored as consecutive chunks of ``chunk_size`` bytes."""

    def __init__(self, source, size: int, chunk_size: int, where: str):
        self._source = source
        self.size = size
        self._chunk_size = chunk_size
        self._where = where
        want = math.ceil(size / chunk_size)
        if len(source) != want:
            raise ValueError(
                f"Prepared enwik8 data in {where} has {len(source)} chunks, expected {want} "
                f"({size} bytes in chunks of {chunk_size}); delete that directory to re-prepare"
            )
        self.chunk = functools.lru_cache(maxsize=16)(self._chunk)

    def _chunk(self, index: int) -> np.ndarray:
        example = self._source[index]
        if int(example["offset"]) != index * self._chunk_size:
            raise ValueError(
                f"Prepared enwik8 data in {self._where} is out of order (chunk {index} has offset "
                f"{int(example['offset'])}); delete that directory to re-prepare"
            )
        return np.frombuffer(example["bytes"], np.uint8)

    def read(self, offset: int, length: int) -> np.ndarray:
        if length <= 0:
            return np.zeros((0,), np.uint8)
        if offset < 0 or offset + length > self.size:
            raise IndexError(f"bytes [{offset}, {offset + length}) outside [0, {self.size})")
        c = self._chunk_size
        first, last = offset // c, (offset + length - 1) // c
        parts = [self.chunk(i) for i in range(first, last + 1)]
        buf = parts[0] if len(parts) == 1 else np.concatenate(parts)
        start = offset - first * c
        return buf[start : start + length]


class Enwik8(ByteWindowSource):
    """enwik8 as a `DataSource` (vocabulary 258: byte ``b`` is token ``b + 2``, 0 is padding).

    Prepares the TFDS dataset on first use from ``<manual_dir>/enwik8.zip`` if it is not prepared
    in ``data_dir`` yet, and raises FileNotFoundError (naming the directory and the URL) if
    neither prepared data nor the archive exist.

    Args:
      data_dir: the TFDS data directory (default: TFDS's, ``~/tensorflow_datasets`` or
        ``$TFDS_DATA_DIR``).
      manual_dir: where ``enwik8.zip`` is (default: ``<data_dir>/downloads/manual``).
      seq_len: window length in bytes (the Reformer enwik8 experiments use 65536).
      train_bytes, validation_bytes, test_bytes: split sizes; must add up to the archive size.
        Change them only for tests (a scaled-down archive); non-standard sizes are prepared as a
        separate config.
      chunk_size: bytes per stored example.
      order: ``"windows"`` (random training windows) or ``"streams"`` (contiguous streams, one
        per batch row, for Transformer-XL; see `reformer_jax.data.base.ByteWindowSource`).
    """

    vocab_size = 258
    token_offset = 2
    pad_id = 0
    eos_id = 1
    splits = ("train", "validation", "test")
    split_aliases = {"eval": "validation"}

    def __init__(
        self,
        data_dir: str | os.PathLike | None = None,
        manual_dir: str | os.PathLike | None = None,
        seq_len: int = 65_536,
        *,
        train_bytes: int = _STANDARD.train_bytes,
        validation_bytes: int = _STANDARD.validation_bytes,
        test_bytes: int = _STANDARD.test_bytes,
        chunk_size: int = _STANDARD.chunk_size,
        order: str = "windows",
    ):
        if order not in ("windows", "streams"):
            raise ValueError(f"order must be 'windows' or 'streams', got {order!r}")
        self.order = order
        if not isinstance(seq_len, int) or seq_len < 2:
            raise ValueError(f"seq_len must be an integer >= 2, got {seq_len!r}")
        sizes = (train_bytes, validation_bytes, test_bytes, chunk_size)
        if any(not isinstance(s, int) or s <= 0 for s in sizes):
            raise ValueError(f"split sizes and chunk_size must be positive integers, got {sizes}")
        if seq_len > train_bytes:
            raise ValueError(f"seq_len={seq_len} is longer than the training split ({train_bytes})")
        self.seq_len = seq_len
        if sizes == (
            _STANDARD.train_bytes,
            _STANDARD.validation_bytes,
            _STANDARD.test_bytes,
            _STANDARD.chunk_size,
        ):
            config = _STANDARD
        else:
            config = Enwik8Config(
                name=f"bytes_{train_bytes}_{validation_bytes}_{test_bytes}_c{chunk_size}",
                description="Scaled-down split sizes (tests).",
                train_bytes=train_bytes,
                validation_bytes=validation_bytes,
                test_bytes=test_bytes,
                chunk_size=chunk_size,
            )
        builder = Enwik8Reformer(
            data_dir=None if data_dir is None else os.fspath(data_dir),
            config=config,
            file_format="array_record",
        )
        if not builder.is_prepared():
            if manual_dir is None:
                manual_dir = epath.Path(builder.data_dir_root) / "downloads" / "manual"
            manual_dir = as_path(manual_dir)
            if not (manual_dir / ARCHIVE_NAME).is_file():
                raise FileNotFoundError(
                    f"enwik8 is not prepared in {builder.data_dir} and the archive "
                    f"{manual_dir / ARCHIVE_NAME} does not exist: download {URL} and put "
                    f"{ARCHIVE_NAME} (not extracted) in {manual_dir}, or point "
                    "--config.data.settings.manual_dir= (manual_dir=) at the directory holding it"
                )
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(
                    manual_dir=os.fspath(manual_dir), try_download_gcs=False
                )
            )
        self.builder = builder
        sources = builder.as_data_source()
        self._streams = {
            split: _ChunkStream(sources[split], size, chunk_size, str(builder.data_dir))
            for split, size in config.split_sizes.items()
        }

    def read_bytes(self, split: str, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Raw bytes ``[offset, offset + length)`` of ``split`` (default: to its end), uint8."""
        stream = self._streams[self.canonical_split(split)]
        if length is None:
            length = stream.size - offset
        return stream.read(offset, length)

    def _split_size(self, split: str) -> int:
        return self._streams[split].size

    def _read(self, split: str, offset: int, length: int) -> np.ndarray:
        return self._streams[split].read(offset, length)
