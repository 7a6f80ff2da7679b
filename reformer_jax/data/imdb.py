"""LRA Text: byte-level IMDb review sentiment (positive / negative), 2 classes.

**Tokens**: the UTF-8 bytes of a review, byte + 1 (0 is padding; ``vocab_size = 257``), cut or
padded to ``seq_len`` (LRA: 1K-4K; default 4,096).

**Splits**: ``train`` (25,000 reviews in TFDS's train split, minus the held-out validation
reviews), ``validation`` (= ``eval``: ``validation_size`` reviews of the train split, chosen by a
fixed permutation; 0 makes the validation split the test split, LRA's choice, which selects the
checkpoint on the test set), ``test`` (TFDS's 25,000 test reviews).

**Data**, first found of:

1. TFDS ``imdb_reviews/plain_text`` prepared in ``data_dir`` in the ``array_record`` format
   (``tfds build imdb_reviews/plain_text --file_format=array_record --data_dir=<data_dir>``,
   network needed once; or any mock under ``tfds.testing.mock_data``).
2. The original archive ``aclImdb_v1.tar.gz`` (https://ai.stanford.edu/~amaas/data/sentiment/),
   or its unpacked ``aclImdb/`` directory, in ``manual_dir``: read directly (no TensorFlow):
   ``{train,test}/{neg,pos}/*.txt`` sorted by name, label 1 for ``pos``, as TFDS labels them.

Injection point (tests, other storage): ``IMDb(examples={"train": seq, "test": seq})`` with
random-access sequences of ``{"text": str | bytes, "label": int}``.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from reformer_jax.data.examples import BYTE_VOCAB_SIZE, ExampleSource, byte_tokens
from reformer_jax.data.tfds_split import open_tfds, select_splits
from reformer_jax.paths import as_path

__all__ = ["ARCHIVE", "TFDS_NAME", "IMDb", "read_acl_imdb"]

TFDS_NAME = "imdb_reviews/plain_text"
ARCHIVE = "aclImdb_v1.tar.gz"


def read_acl_imdb(path: str | os.PathLike) -> dict[str, list[dict[str, Any]]]:
    """``{"train": [...], "test": [...]}`` of ``{"text": bytes, "label": int}`` from the original
    archive or its unpacked ``aclImdb`` directory (files sorted by path)."""
    path = as_path(path)
    out: dict[str, list[tuple[str, dict]]] = {"train": [], "test": []}

    def add(name: str, read) -> None:
        parts = name.split("/")
        if len(parts) >= 3 and parts[-1].endswith(".txt") and parts[-2] in ("neg", "pos"):
            split = parts[-3]
            if split in out:
                out[split].append((name, {"text": read(), "label": int(parts[-2] == "pos")}))

    if path.is_dir():
        # The known layout, not a recursive glob (which epath refuses: thousands of bucket calls).
        for split in out:
            for label in ("neg", "pos"):
                for file in (path / split / label).glob("*.txt"):
                    add(file.relative_to(path).as_posix(), file.read_bytes)
    else:
        with path.open("rb") as f, tarfile.open(fileobj=f, mode="r:*") as tar:
            for member in tar:
                if member.isfile():
                    add(member.name, lambda m=member: tar.extractfile(m).read())
    return {s: [ex for _, ex in sorted(v, key=lambda t: t[0])] for s, v in out.items()}


class IMDb(ExampleSource):
    """Byte-level IMDb (LRA Text) as a classification source (module docstring).

    Args:
      data_dir: TFDS data directory (default: TFDS's).
      manual_dir: directory holding ``aclImdb_v1.tar.gz`` or ``aclImdb/``.
      seq_len: bytes kept per review (LRA: 1K, 2K, 3K, 4K in its speed table, 4K for accuracy).
      validation_size: reviews held out of the train split for validation (0: use the test
        split, as LRA).
      examples: instead of TFDS, ``{"train": seq, "test": seq}`` of ``{"text", "label"}``.
    """

    vocab_size = BYTE_VOCAB_SIZE
    num_classes = 2
    splits = ("train", "validation", "test")
    split_aliases = {"eval": "validation", "val": "validation"}

    def __init__(
        self,
        data_dir: str | os.PathLike | None = None,
        manual_dir: str | os.PathLike | None = None,
        *,
        seq_len: int = 4096,
        validation_size: int = 2500,
        examples: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    ):
        if seq_len <= 0:
            raise ValueError(f"imdb.seq_len: {seq_len} must be positive")
        self.seq_len = int(seq_len)
        if examples is None:
            examples = open_tfds(TFDS_NAME, ("train", "test"), data_dir)
        if examples is None and manual_dir is not None:
            manual = as_path(manual_dir)
            for candidate in (manual / ARCHIVE, manual / "aclImdb"):
                if candidate.exists():
                    examples = read_acl_imdb(candidate)
                    break
        if examples is None:
            raise FileNotFoundError(
                f"IMDb not found: TFDS {TFDS_NAME} is not prepared in "
                f"{data_dir or 'the default TFDS data_dir'} and no {ARCHIVE} or aclImdb/ is in "
                f"manual_dir={manual_dir}; place {ARCHIVE} (ai.stanford.edu/~amaas/data/"
                "sentiment/) in a directory passed as manual_dir, or run `tfds build "
                f"{TFDS_NAME} --file_format=array_record --data_dir=<data_dir>`"
            )
        self._source = select_splits(examples, ("train", "test"))
        n = len(self._source["train"])
        if not 0 <= validation_size < n:
            raise ValueError(
                f"imdb.validation_size: {validation_size} must be in [0, {n}) (the train split "
                "has that many reviews)"
            )
        if validation_size:
            held = np.random.default_rng(np.random.SeedSequence([0, 1_000_003])).permutation(n)
            valid = np.sort(held[:validation_size])
            train = np.sort(held[validation_size:])
            self._index = {"train": ("train", train), "validation": ("train", valid)}
        else:
            self._index = {"train": ("train", np.arange(n)), "validation": ("test", None)}
        self._index["test"] = ("test", None)

    def _split_len(self, split: str) -> int:
        source, index = self._index[split]
        return len(self._source[source]) if index is None else len(index)

    def _example(self, split: str, index: int):
        source, rows = self._index[split]
        ex = self._source[source][index if rows is None else int(rows[index])]
        return byte_tokens(ex["text"]), int(ex["label"])
