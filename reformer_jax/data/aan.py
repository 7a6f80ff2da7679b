"""LRA Retrieval: do two ACL Anthology Network papers cite each other? Byte-level document pairs.

**Data** (LRA's release only; there is no generator): ``lra_release/tsv_data/`` of LRA's archive
(``https://storage.googleapis.com/long-range-arena/lra_release.gz``) holds
``new_aan_pairs.train.tsv``, ``new_aan_pairs.eval.tsv`` and ``new_aan_pairs.test.tsv``: no
header, one pair per line, five tab-separated fields ``label, id1, id2, text1, text2`` (label
``0``/``1``, possibly written ``0.0``/``1.0``; LRA reads the fields without quoting, so the texts
hold no tab and the last field takes the rest of the line). Place the three files in one
directory and pass it as ``data_dir``.

**Tokens**: the UTF-8 bytes of each text, byte + 1 (0 is padding; ``vocab_size = 257``), cut or
padded to ``seq_len`` (LRA: 4,000 per document). Batches are pairs: ``inputs [B, 2, seq_len]``,
both documents going through the same encoder (LRA's dual encoder). Splits ``train``,
``validation`` (= ``eval``, the ``.eval.tsv`` file), ``test``.
"""

from __future__ import annotations

import os

import numpy as np

from reformer_jax.data.examples import BYTE_VOCAB_SIZE, ExampleSource, byte_tokens
from reformer_jax.paths import as_path

__all__ = ["FILES", "AAN", "read_tsv"]

#: Split -> file name in the data directory.
FILES = {
    "train": "new_aan_pairs.train.tsv",
    "validation": "new_aan_pairs.eval.tsv",
    "test": "new_aan_pairs.test.tsv",
}


def read_tsv(path: str | os.PathLike) -> tuple[list[tuple[bytes, bytes]], np.ndarray]:
    """(text pairs as bytes, labels int32) of one LRA AAN file."""
    path = as_path(path)
    pairs, labels = [], []
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip(b"\r\n")
            if not line:
                continue
            fields = line.split(b"\t", 4)
            if len(fields) != 5:
                raise ValueError(
                    f"{path}:{number}: expected 5 tab-separated fields (label, id1, id2, text1, "
                    f"text2), got {len(fields)}"
                )
            label = float(fields[0])
            if label not in (0.0, 1.0):
                raise ValueError(f"{path}:{number}: label {fields[0]!r} is not 0 or 1")
            labels.append(int(label))
            pairs.append((fields[3], fields[4]))
    return pairs, np.asarray(labels, np.int32)


class AAN(ExampleSource):
    """LRA Retrieval (AAN document pairs) from LRA's released TSVs (module docstring).

    Args:
      data_dir: directory holding the three ``new_aan_pairs.*.tsv`` files.
      seq_len: bytes kept per document (LRA: 4,000).
    """

    vocab_size = BYTE_VOCAB_SIZE
    num_classes = 2
    paired = True
    splits = ("train", "validation", "test")
    split_aliases = {"eval": "validation", "val": "validation"}

    def __init__(self, data_dir: str | os.PathLike | None = None, *, seq_len: int = 4000):
        if seq_len <= 0:
            raise ValueError(f"aan.seq_len: {seq_len} must be positive")
        self.seq_len = int(seq_len)
        where = as_path(data_dir) if data_dir is not None else None
        missing = [n for n in FILES.values() if where is None or not (where / n).is_file()]
        if missing:
            raise FileNotFoundError(
                f"LRA Retrieval files {missing} not found"
                + (f" in {where}" if where is not None else " (no data_dir given)")
                + ": unpack LRA's release (lra_release.gz) and pass its lra_release/tsv_data/ "
                "directory (holding " + ", ".join(FILES.values()) + ") as data_dir"
            )
        self._data = {split: read_tsv(where / name) for split, name in FILES.items()}

    def _split_len(self, split: str) -> int:
        return len(self._data[split][1])

    def _example(self, split: str, index: int):
        pairs, labels = self._data[split]
        a, b = pairs[index]
        return (byte_tokens(a), byte_tokens(b)), int(labels[index])
