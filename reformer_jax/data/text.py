"""A local file or directory as a byte-level language-modelling corpus.

Tokens are the raw bytes ``0 .. 255`` (``vocab_size = 256``, no special tokens; byte 0 doubles as
the padding value of the last evaluation window, where the weights are 0).

* A **file** is used as it is (memory-mapped).
* A **directory**: every regular file below it, recursively, in sorted order of the relative path
  (hidden files and directories, i.e. names starting with ``.``, are skipped), concatenated with
  ``separator`` (default ``b"\\n"``) between files, read into memory.

The last ``eval_fraction`` (default 0.05) of the bytes is the held-out ``"eval"`` split, the rest
is ``"train"``. Training rows are random windows of ``seq_len`` bytes (offsets drawn per step),
evaluation rows are consecutive non-overlapping windows (see `reformer_jax.data.base`).
"""

from __future__ import annotations

import math
import os

import numpy as np
from etils import epath

from reformer_jax.data.base import ByteWindowSource
from reformer_jax.paths import is_uri

__all__ = ["TextFile", "corpus_files"]


def corpus_files(path: str | os.PathLike) -> list[epath.Path]:
    """The files making up the corpus at ``path`` (local or ``gs://``), in concatenation order.

    An empty ``path`` is an error (a path library would read it as the current directory,
    making whatever lies there the corpus).
    """
    if not str(path).strip():
        raise ValueError(
            "data.settings.path: no text corpus given; pass "
            "--config.data.settings.path=FILE_OR_DIRECTORY (train.py) or path= (get_source)"
        )
    path = epath.Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(
            f"data.settings.path: text corpus {str(path)!r} does not exist; pass "
            "--config.data.settings.path= (or path=) an existing file or directory"
        )
    files = _visible_files(path)
    return sorted(files, key=lambda f: f.relative_to(path).as_posix())


def _visible_files(directory: epath.Path) -> list[epath.Path]:
    """Regular files below ``directory``, skipping hidden files and directories."""
    files = []
    for child in directory.iterdir():
        if child.name.startswith("."):
            continue
        if child.is_dir():
            files += _visible_files(child)
        elif child.is_file():
            files.append(child)
    return files


class TextFile(ByteWindowSource):
    """A byte-level corpus from a local file or directory (see the module docstring).

    Args:
      path: a file, or a directory whose files (recursively) are concatenated.
      seq_len: window length in bytes.
      eval_fraction: fraction of the bytes (the tail) held out as the ``"eval"`` split, in
        ``[0, 1)``; 0 means no evaluation split.
      separator: bytes inserted between the files of a directory.
      order: ``"windows"`` (random training windows, the default) or ``"streams"``
        (contiguous streams, one per batch row, for segment recurrence; see `ByteWindowSource`).
    """

    vocab_size = 256
    splits = ("train", "eval")

    def __init__(
        self,
        path: str | os.PathLike,
        seq_len: int = 1024,
        eval_fraction: float = 0.05,
        separator: bytes = b"\n",
        order: str = "windows",
    ):
        if not isinstance(seq_len, int) or seq_len < 2:
            raise ValueError(f"seq_len must be an integer >= 2, got {seq_len!r}")
        if not 0.0 <= eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction!r}")
        if order not in ("windows", "streams"):
            raise ValueError(f"order must be 'windows' or 'streams', got {order!r}")
        self.order = order
        files = corpus_files(path)
        self.path = epath.Path(path)
        self.seq_len = seq_len
        self.eval_fraction = eval_fraction
        if not files:
            raise ValueError(
                f"Text corpus directory {str(self.path)!r} contains no (non-hidden) files"
            )
        if len(files) == 1 and files[0] == self.path:
            size = self.path.stat().length
            if not size:
                data = np.zeros(0, np.uint8)
            elif is_uri(self.path):  # a bucket: read once into memory
                data = np.frombuffer(self.path.read_bytes(), np.uint8)
            else:
                data = np.memmap(os.fspath(self.path), np.uint8, mode="r")
        else:
            data = np.frombuffer(bytes(separator).join(f.read_bytes() for f in files), np.uint8)
        n = len(data)
        if n == 0:
            raise ValueError(f"Text corpus {str(self.path)!r} is empty")
        n_eval = math.ceil(n * eval_fraction) if eval_fraction > 0 else 0
        n_train = n - n_eval
        if n_train < seq_len:
            raise ValueError(
                f"Text corpus {str(self.path)!r} is too short: {n} bytes, of which {n_train} for "
                f"training (eval_fraction={eval_fraction}), fewer than one window of "
                f"seq_len={seq_len}; use a larger corpus or a smaller seq_len"
            )
        self._data = {"train": data[:n_train], "eval": data[n_train:]}

    def split_bytes(self, split: str) -> np.ndarray:
        """All bytes of ``split`` (uint8 array; a view of the corpus)."""
        return self._data[self.canonical_split(split)]

    def _split_size(self, split: str) -> int:
        return len(self._data[split])

    def _read(self, split: str, offset: int, length: int) -> np.ndarray:
        return np.asarray(self._data[split][offset : offset + length])
