"""The synthetic duplication task of the Reformer paper (Kitaev et al., 2020, section 5).

Every row is ``0 w 0 w``: a 0 separator, a random word ``w`` of ``seq_len // 2 - 1`` symbols drawn
uniformly from ``1 .. vocab_size - 1``, a second 0, and ``w`` again (the paper: ``seq_len`` 1024,
``vocab_size`` 128, so ``w`` has 511 symbols). Only the second copy of ``w`` can be predicted, so
``weights`` is 1 exactly on positions ``seq_len // 2 + 1 .. seq_len - 1`` and 0 elsewhere
(``inputs`` = ``targets`` = the row; the loss shifts, see `reformer_jax.data.base`).

Both splits (``"train"`` and ``"eval"``) are infinite streams from different random streams;
batch ``s`` is a function of ``(seed, split, s)``.
"""

from __future__ import annotations

import numpy as np

from reformer_jax.data.base import Batch, SourceBase, step_rng

__all__ = ["Duplication", "second_copy_accuracy"]


class Duplication(SourceBase):
    """The duplication task as a `DataSource`.

    Args:
      seq_len: row length, even and at least 4 (paper: 1024).
      vocab_size: symbols are ``1 .. vocab_size - 1``, 0 is the separator (paper: 128).
    """

    splits = ("train", "eval")

    def __init__(self, seq_len: int = 1024, vocab_size: int = 128):
        if not isinstance(seq_len, int) or seq_len < 4 or seq_len % 2:
            raise ValueError(f"Duplication needs an even seq_len >= 4, got {seq_len!r}")
        if not isinstance(vocab_size, int) or vocab_size < 2:
            raise ValueError(f"Duplication needs vocab_size >= 2, got {vocab_size!r}")
        self.seq_len = seq_len
        self.vocab_size = vocab_size

    @property
    def word_len(self) -> int:
        """Length of ``w``."""
        return self.seq_len // 2 - 1

    def _num_examples(self, split: str) -> None:
        return None

    def _make_batch(self, split: str, step: int, global_batch_size: int, rows: slice, seed: int):
        rng = step_rng(seed, split, step)
        # Draw the whole global batch (so a row does not depend on the process count), keep ours.
        words = rng.integers(1, self.vocab_size, size=(global_batch_size, self.word_len))[rows]
        half = self.seq_len // 2
        tokens = np.zeros((words.shape[0], self.seq_len), np.int32)
        tokens[:, 1:half] = words
        tokens[:, half + 1 :] = words
        weights = np.zeros(tokens.shape, np.float32)
        weights[:, half + 1 :] = 1.0
        return Batch(inputs=tokens, targets=tokens.copy(), weights=weights)


def second_copy_accuracy(logits_or_predictions, batch: Batch) -> float:
    """Token accuracy on the weighted positions (the second copy of ``w``).

    Alignment: pass the model's output as it is, in the causal convention of the loss: position
    ``t`` of the output is the prediction of token ``t + 1``. So ``argmax(logits[:, :-1])`` is
    compared with ``targets[:, 1:]`` on the positions where ``weights[:, 1:]`` is 1.

    Args:
      logits_or_predictions: ``[B, L, V]`` logits (argmax taken) or ``[B, L]`` predicted token
        ids; numpy or JAX arrays.
      batch: the batch the predictions were made on.

    Returns:
      The weighted fraction of correctly predicted tokens, as a Python float.
    """
    x = np.asarray(logits_or_predictions)
    if x.ndim == 3:
        x = x.argmax(axis=-1)
    if x.shape != batch.targets.shape:
        raise ValueError(
            f"predictions have shape {x.shape} (logits: [B, L, V]) but the batch targets have "
            f"shape {batch.targets.shape}"
        )
    weights = batch.weights[:, 1:]
    correct = (x[:, :-1] == batch.targets[:, 1:]) * weights
    total = weights.sum()
    if total == 0:
        raise ValueError("The batch has no weighted positions to score")
    return float(correct.sum() / total)
