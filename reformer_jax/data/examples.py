"""`ExampleSource`: classification batches from finite, indexed example sets (the LRA tasks).

A subclass holds, per split, a number of examples and a way to fetch example ``i`` as
``(tokens, label)`` (tokens ``[n]`` or, for pairs, a tuple of two ``[n]`` arrays). This class
turns them into `ClassificationBatch` es with the conventions of `reformer_jax.data.base`:

* ``"train"``: infinite; a fresh permutation of the training examples every epoch (drawn from
  ``(seed, "train-epoch", epoch)``); global row ``g`` of step ``s`` is example
  ``perm[epoch][(s * B + g) % N]`` with ``epoch = (s * B + g) // N``.
* other splits: one pass in stored order; the last batch is padded with zero-weight rows
  (tokens 0, mask False, label 0).
* every row is cut or padded to ``seq_len`` (`pad_or_truncate`): the batch is a function of
  ``(seed, split, step)`` only, and each process builds only its rows.
"""

from __future__ import annotations

import abc
import math

import numpy as np

from reformer_jax.data.base import SourceBase, step_rng
from reformer_jax.data.classification import ClassificationBatch, pad_or_truncate

__all__ = ["BYTE_VOCAB_SIZE", "ExampleSource", "byte_tokens", "split_sizes"]


class ExampleSource(SourceBase):
    """Base of the finite classification sources (see the module docstring).

    Subclasses set ``vocab_size``, ``seq_len``, ``num_classes``, ``splits`` (and
    ``split_aliases``), ``paired`` (True for two documents per example), and implement
    `_split_len` and `_example`.
    """

    num_classes: int
    paired: bool = False

    @abc.abstractmethod
    def _split_len(self, split: str) -> int:
        """Number of examples in ``split`` (canonical name)."""

    @abc.abstractmethod
    def _example(self, split: str, index: int) -> tuple[np.ndarray | tuple, int]:
        """Example ``index`` of ``split``: ``(tokens, label)``; tokens a pair for paired sources."""

    def num_examples(self, split: str) -> int:
        """Number of examples in ``split`` (aliases accepted)."""
        return self._split_len(self.canonical_split(split))

    def _num_examples(self, split: str) -> int | None:
        return None if split == "train" else self._split_len(split)

    def _permutation(self, seed: int, epoch: int) -> np.ndarray:
        cache = self.__dict__.setdefault("_perm_cache", {})
        key = (seed, epoch)
        if key not in cache:
            if len(cache) >= 2:
                cache.pop(next(iter(cache)))
            cache[key] = step_rng(seed, "train-epoch", epoch).permutation(self._split_len("train"))
        return cache[key]

    def _make_batch(self, split: str, step: int, global_batch_size: int, rows: slice, seed: int):
        n = self._split_len(split)
        if n == 0:
            raise ValueError(f"The {split!r} split of {type(self).__name__} is empty")
        positions = step * global_batch_size + np.arange(global_batch_size)[rows]
        shape = (len(positions), 2, self.seq_len) if self.paired else (len(positions), self.seq_len)
        tokens = np.zeros(shape, np.int32)
        mask = np.zeros(shape, bool)
        labels = np.zeros(len(positions), np.int32)
        weights = np.zeros(len(positions), np.float32)
        for i, g in enumerate(positions.tolist()):
            if split == "train":
                index = int(self._permutation(seed, g // n)[g % n])
            elif g < n:
                index = g
            else:  # Padding row past the end of the evaluation split.
                continue
            example, label = self._example(split, index)
            if not 0 <= int(label) < self.num_classes:
                raise ValueError(
                    f"{type(self).__name__}: label {label} of {split} example {index} is not in "
                    f"[0, {self.num_classes})"
                )
            if self.paired:
                for j in range(2):
                    tokens[i, j], mask[i, j] = pad_or_truncate(example[j], self.seq_len)
            else:
                tokens[i], mask[i] = pad_or_truncate(example, self.seq_len)
            labels[i] = label
            weights[i] = 1.0
        return ClassificationBatch(inputs=tokens, mask=mask, labels=labels, weights=weights)


def split_sizes(total: int, fractions: tuple[float, ...]) -> list[int]:
    """Cuts ``total`` into consecutive parts of the given fractions (the last takes the rest)."""
    sizes = [math.floor(total * f) for f in fractions[:-1]]
    return [*sizes, total - sum(sizes)]


#: Byte-level sources: token = byte + 1 (0 stays the padding token), so vocab 257.
BYTE_VOCAB_SIZE = 257


def byte_tokens(text: str | bytes) -> np.ndarray:
    """``int32[n]`` tokens of the UTF-8 bytes of ``text``: byte + 1 (0 is padding)."""
    raw = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return np.frombuffer(raw, np.uint8).astype(np.int32) + 1
