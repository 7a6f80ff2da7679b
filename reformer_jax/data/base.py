"""The common interface of the data sources: `Batch`, `DataSource` and shared helpers.

Conventions (all sources follow them):

* **Language modelling alignment.** ``inputs`` and ``targets`` are the *same* tokens (separate
  arrays with equal contents). The model is causal and the loss does the shift: the logits at
  position ``t`` predict token ``t + 1``, so the training loss compares
  ``logits[:, :-1]`` with ``targets[:, 1:]``, weighted by ``weights[:, 1:]``.
* **Weights.** ``weights[b, t]`` (float32, 0 or 1) says whether token ``t`` of row ``b`` is scored
  as a prediction (made from tokens ``< t``). Token 0 of a row has no context, so
  ``weights[:, 0]`` is always 0; padding (the tail of the last evaluation window, or whole
  padding rows of the last evaluation batch) has weight 0; the synthetic duplication task only
  weights its second copy. ``weights.sum()`` is therefore the number of scored predictions.
* **Determinism.** The batch of step ``s`` is a function of ``(seed, split, s)`` only: it does not
  depend on ``start_step``, on how many batches were consumed before, nor on the number of
  processes. A run resumed with ``start_step=k`` gets exactly the batches it would have got.
  Randomness comes from ``np.random.default_rng(SeedSequence([seed, split_id, step]))``
  (`step_rng`), with ``split_id`` a stable hash of the split name.
* **Multi-process sharding.** Each process yields only its rows of the global batch:
  ``process_index * per_process : (process_index + 1) * per_process`` with
  ``per_process = global_batch_size // process_count``; ``global_batch_size`` must be divisible by
  ``process_count``. Concatenating the processes' batches (in process order) gives the
  single-process global batch.
* **Splits.** ``"train"`` is an infinite stream (random windows / examples). Evaluation splits of
  finite corpora (text, enwik8, imagenet64) are *one pass* over the data in storage order: the
  iterator stops after `num_batches` batches, and the last batch is padded with zero-weight rows
  so every batch has the full shape. ``"eval"`` is accepted by every source (an alias of
  ``"validation"`` where the dataset calls it that). The synthetic duplication task's splits are
  both infinite (the caller takes as many evaluation batches as it wants).

Batches are plain numpy arrays on the host; the training loop shards them onto devices.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import zlib
from collections.abc import Callable, Iterator
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = [
    "Batch",
    "ByteWindowSource",
    "DataSource",
    "SourceBase",
    "lm_batch",
    "lm_weights",
    "process_rows",
    "step_rng",
]


@dataclasses.dataclass(frozen=True)
class Batch:
    """One (per-process) batch.

    Attributes:
      inputs: ``[B, L]`` int32 tokens fed to the model.
      targets: ``[B, L]`` int32 tokens to predict (equal to ``inputs``; the loss shifts, see the
        module docstring).
      weights: ``[B, L]`` float32 loss mask: ``weights[:, t] == 1`` where token ``t`` is scored.
      reset: ``[B]`` bool or None. Only sources that read contiguous streams (``order="streams"``)
        set it: True where the row starts its stream afresh (its first segment, or the first
        after wrapping around), so state carried from the previous step (a Transformer-XL
        memory) must be dropped for that row.
    """

    inputs: np.ndarray
    targets: np.ndarray
    weights: np.ndarray
    reset: np.ndarray | None = None

    def __post_init__(self):
        for name, want in (("inputs", np.int32), ("targets", np.int32), ("weights", np.float32)):
            arr = getattr(self, name)
            if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.dtype != want:
                raise TypeError(
                    f"Batch.{name} must be a 2-D numpy {np.dtype(want).name} array, got "
                    f"{type(arr).__name__} {getattr(arr, 'dtype', None)} "
                    f"{getattr(arr, 'shape', None)}"
                )
        if not self.inputs.shape == self.targets.shape == self.weights.shape:
            raise ValueError(
                "Batch arrays must have equal shapes, got inputs "
                f"{self.inputs.shape}, targets {self.targets.shape}, weights {self.weights.shape}"
            )
        if self.reset is not None and (
            not isinstance(self.reset, np.ndarray)
            or self.reset.dtype != np.bool_
            or self.reset.shape != self.inputs.shape[:1]
        ):
            raise TypeError(
                f"Batch.reset must be a numpy bool array of shape {self.inputs.shape[:1]}, got "
                f"{getattr(self.reset, 'dtype', type(self.reset))} "
                f"{getattr(self.reset, 'shape', None)}"
            )


@runtime_checkable
class DataSource(Protocol):
    """What the training loop needs from a data source.

    Attributes:
      vocab_size: every token is in ``[0, vocab_size)``.
      seq_len: the length ``L`` of every row.
      splits: the split names `batches` accepts (``"eval"`` is also accepted as an alias).
    """

    vocab_size: int
    seq_len: int
    splits: tuple[str, ...]

    def batches(
        self,
        split: str,
        global_batch_size: int,
        *,
        start_step: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        seed: int = 0,
    ) -> Iterator[Batch]:
        """Yields this process's rows of the batches from step ``start_step`` on."""
        ...

    def num_batches(self, split: str, global_batch_size: int) -> int | None:
        """The number of batches in one pass over ``split``, or None for an infinite stream."""
        ...


def split_id(split: str) -> int:
    """A stable (process- and run-independent) integer id of a split name."""
    return zlib.crc32(split.encode("utf-8"))


def step_rng(seed: int, split: str, step: int) -> np.random.Generator:
    """The random generator of one step: a function of ``(seed, split, step)`` only."""
    return np.random.default_rng(np.random.SeedSequence([seed, split_id(split), step]))


def process_rows(global_batch_size: int, process_index: int, process_count: int) -> slice:
    """The rows of the global batch that belong to ``process_index``."""
    if not isinstance(global_batch_size, int | np.integer) or global_batch_size <= 0:
        raise ValueError(f"global_batch_size must be a positive integer, got {global_batch_size!r}")
    if not isinstance(process_count, int | np.integer) or process_count <= 0:
        raise ValueError(f"process_count must be a positive integer, got {process_count!r}")
    if not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index must be in [0, process_count={process_count}), got {process_index!r}"
        )
    if global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} is not divisible by "
            f"process_count={process_count}: every process must get the same number of rows"
        )
    per_process = global_batch_size // process_count
    return slice(process_index * per_process, (process_index + 1) * per_process)


def lm_weights(lengths: np.ndarray, seq_len: int) -> np.ndarray:
    """``[B, seq_len]`` float32 weights: 1 at ``1 <= t < lengths[b]`` (scored tokens), else 0."""
    t = np.arange(seq_len)
    lengths = np.asarray(lengths)[:, None]
    return ((t >= 1) & (t < lengths)).astype(np.float32)


def lm_batch(tokens: np.ndarray, lengths: np.ndarray | None = None) -> Batch:
    """A language-modelling batch: inputs = targets = ``tokens``; weights from `lm_weights`.

    Args:
      tokens: ``[B, L]`` tokens (any integer dtype; padding positions should hold the pad id).
      lengths: ``[B]`` number of real (non-padding) tokens per row; default: all ``L``.
    """
    tokens = np.ascontiguousarray(tokens, dtype=np.int32)
    b, seq_len = tokens.shape
    if lengths is None:
        lengths = np.full((b,), seq_len)
    return Batch(inputs=tokens, targets=tokens.copy(), weights=lm_weights(lengths, seq_len))


class SourceBase(abc.ABC):
    """Implements `DataSource.batches` (argument checks, sharding, resumption) for subclasses.

    A subclass sets ``vocab_size``, ``seq_len`` and ``splits`` and implements `_make_batch` (the
    global batch rows ``rows`` of step ``step``) and `_num_examples` (the number of evaluation
    rows of a finite split, or None for an infinite stream).
    """

    vocab_size: int
    seq_len: int
    splits: tuple[str, ...]
    #: Alternative split names accepted by `batches`, mapped to a name in ``splits``.
    split_aliases: dict[str, str] = {}

    def canonical_split(self, split: str) -> str:
        """Resolves aliases; raises ValueError naming the valid splits for an unknown one."""
        name = self.split_aliases.get(split, split)
        if name not in self.splits:
            valid = sorted(set(self.splits) | set(self.split_aliases))
            raise ValueError(
                f"Unknown split {split!r} for {type(self).__name__}; valid splits: {valid}"
            )
        return name

    @abc.abstractmethod
    def _num_examples(self, split: str) -> int | None:
        """Rows in one pass over ``split`` (canonical name), or None if the split is infinite."""

    @abc.abstractmethod
    def _make_batch(self, split: str, step: int, global_batch_size: int, rows: slice, seed: int):
        """The rows ``rows`` of the global batch of ``step`` (a `Batch`)."""

    def num_batches(self, split: str, global_batch_size: int) -> int | None:
        """Batches in one pass over ``split`` (last one padded), or None for an infinite split."""
        process_rows(global_batch_size, 0, 1)
        n = self._num_examples(self.canonical_split(split))
        return None if n is None else math.ceil(n / global_batch_size)

    def batches(
        self,
        split: str,
        global_batch_size: int,
        *,
        start_step: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        seed: int = 0,
    ) -> Iterator[Batch]:
        """Yields this process's slice of the batches of steps ``start_step, start_step + 1, ...``.

        See the module docstring of `reformer_jax.data.base` for the conventions. Arguments are
        checked eagerly (a bad argument raises here, not at the first ``next``).
        """
        split = self.canonical_split(split)
        rows = process_rows(global_batch_size, process_index, process_count)
        if not isinstance(start_step, int | np.integer) or start_step < 0:
            raise ValueError(f"start_step must be a non-negative integer, got {start_step!r}")
        if not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        stop = self.num_batches(split, global_batch_size)
        if stop == 0:
            raise ValueError(f"Split {split!r} of {type(self).__name__} is empty")

        def make(step: int) -> Batch:
            return self._make_batch(split, step, global_batch_size, rows, int(seed))

        return _iterate(make, int(start_step), stop)


def _iterate(make: Callable[[int], Batch], start: int, stop: int | None) -> Iterator[Batch]:
    step = start
    while stop is None or step < stop:
        yield make(step)
        step += 1


class ByteWindowSource(SourceBase):
    """Language modelling on windows of a byte stream per split (the text and enwik8 sources).

    * ``"train"``: ``global_batch_size`` windows of ``seq_len`` bytes at offsets drawn uniformly
      from ``[0, n - seq_len]`` by `step_rng` (with replacement, independently per step).
    * other splits: one pass of consecutive, non-overlapping windows starting at ``k * seq_len``;
      the last window is padded with ``pad_id`` (weight 0) to ``seq_len``; window ``k`` is row
      ``k % global_batch_size`` of batch ``k // global_batch_size``.

    With ``order = "streams"`` (segment recurrence, Transformer-XL) every split is instead cut
    into ``global_batch_size`` contiguous streams of ``n // global_batch_size`` bytes (the last
    ``n % global_batch_size`` bytes are dropped) and row ``b`` of step ``s`` is segment ``s`` of
    stream ``b``, so consecutive steps see consecutive text in every row:

    * ``"train"``: an epoch is the ``stream_len // seq_len`` whole segments of each stream; step
      ``s`` reads segment ``s mod`` that count (the streams wrap around), and ``Batch.reset`` is
      True at the first segment of each epoch.
    * other splits: one pass of ``ceil(stream_len / seq_len)`` steps, the last segment of every
      stream padded (weight 0); ``reset`` is True at step 0 only.

    Token 0 of a segment has no in-row context and, as everywhere, weight 0 (it is context for
    the rest of the segment), so 1 / seq_len of the bytes go unscored.

    Token = byte + ``token_offset``. Subclasses implement `_split_size` and `_read`.
    """

    token_offset: int = 0
    pad_id: int = 0
    order: str = "windows"  # or "streams"; subclasses' constructors set it

    @abc.abstractmethod
    def _split_size(self, split: str) -> int:
        """Number of bytes in ``split``."""

    @abc.abstractmethod
    def _read(self, split: str, offset: int, length: int) -> np.ndarray:
        """Bytes ``[offset, offset + length)`` of ``split`` as a uint8 array."""

    def _num_examples(self, split: str) -> int | None:
        if split == "train":
            return None
        return math.ceil(self._split_size(split) / self.seq_len)

    def num_batches(self, split: str, global_batch_size: int) -> int | None:
        if self.order != "streams":
            return super().num_batches(split, global_batch_size)
        process_rows(global_batch_size, 0, 1)
        split = self.canonical_split(split)
        if split == "train":
            return None
        return math.ceil(self._stream_len(split, global_batch_size) / self.seq_len)

    def _stream_len(self, split: str, global_batch_size: int) -> int:
        stream_len = self._split_size(split) // global_batch_size
        if stream_len < (self.seq_len if split == "train" else 1):
            raise ValueError(
                f"{type(self).__name__}: split {split!r} ({self._split_size(split)} bytes) cut "
                f"into {global_batch_size} streams leaves {stream_len} bytes per stream, less "
                f"than one segment of seq_len={self.seq_len}; use a smaller batch_size or seq_len"
            )
        return stream_len

    def _stream_batch(self, split: str, step: int, global_batch_size: int, rows: slice):
        stream_len = self._stream_len(split, global_batch_size)
        if split == "train":
            segment = step % (stream_len // self.seq_len)
        else:
            segment = step
        starts = np.arange(global_batch_size)[rows] * stream_len + segment * self.seq_len
        size = min(self.seq_len, stream_len - segment * self.seq_len)
        tokens = np.full((len(starts), self.seq_len), self.pad_id, np.int32)
        for i, start in enumerate(starts.tolist()):
            tokens[i, :size] = self._read(split, start, size).astype(np.int32) + self.token_offset
        batch = lm_batch(tokens, np.full(len(starts), size))
        reset = np.full(len(starts), segment == 0)
        return Batch(batch.inputs, batch.targets, batch.weights, reset)

    def _make_batch(self, split: str, step: int, global_batch_size: int, rows: slice, seed: int):
        if self.order == "streams":
            return self._stream_batch(split, step, global_batch_size, rows)
        n = self._split_size(split)
        if split == "train":
            offsets = step_rng(seed, split, step).integers(
                0, n - self.seq_len + 1, size=global_batch_size
            )
        else:
            windows = step * global_batch_size + np.arange(global_batch_size)
            offsets = np.where(windows * self.seq_len < n, windows * self.seq_len, -1)
        offsets = offsets[rows]
        tokens = np.full((len(offsets), self.seq_len), self.pad_id, np.int32)
        lengths = np.zeros((len(offsets),), np.int64)
        for i, off in enumerate(offsets.tolist()):
            if off < 0:  # Padding row past the end of an evaluation split.
                continue
            seg = self._read(split, off, min(self.seq_len, n - off))
            tokens[i, : len(seg)] = seg.astype(np.int32) + self.token_offset
            lengths[i] = len(seg)
        return lm_batch(tokens, lengths)
