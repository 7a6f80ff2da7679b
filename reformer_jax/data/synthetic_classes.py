"""A tiny learnable classification task: does the document contain the needle token?

`ContainsToken` makes `ClassificationBatch` batches (conventions of `classification` and `base`)
for tests and smoke runs of the classification trainer. Each document has a random length in
``[min_len, seq_len]`` (the rest is padding: token 0, mask False); its tokens are drawn uniformly
from ``[2, vocab_size)``, and for label 1 one to three of them are replaced by the needle (token
1). Labels are balanced. With ``paired=True`` rows are document pairs ``[2, L]`` labelled 1 when
both or neither contain the needle (a retrieval-shaped task for the dual encoder).

Splits: ``"train"`` (endless; the batch of step s is drawn from ``step_rng(seed, "train", s)``),
``"validation"`` (alias ``"eval"``) and ``"test"`` (one pass over ``eval_examples`` /
``test_examples`` fixed examples, example k drawn from its own generator, the last batch padded
with weight-0 rows).
"""

from __future__ import annotations

import numpy as np

from reformer_jax.data.base import SourceBase, split_id, step_rng
from reformer_jax.data.classification import ClassificationBatch

NEEDLE = 1


class ContainsToken(SourceBase):
    """Binary classification: is token 1 among the real tokens (of both documents, if paired)?"""

    splits = ("train", "validation", "test")
    split_aliases = {"eval": "validation"}
    num_classes = 2

    def __init__(
        self,
        seq_len: int = 32,
        vocab_size: int = 8,
        min_len: int = 4,
        paired: bool = False,
        eval_examples: int = 128,
        test_examples: int = 128,
    ):
        if vocab_size < 3:
            raise ValueError(f"vocab_size must be >= 3 (padding, needle, others), got {vocab_size}")
        if not 1 <= min_len <= seq_len:
            raise ValueError(f"min_len must be in [1, seq_len={seq_len}], got {min_len}")
        self.seq_len = seq_len
        self.vocab_size = vocab_size
        self.min_len = min_len
        self.paired = paired
        self._examples = {"validation": eval_examples, "test": test_examples}

    def _num_examples(self, split: str) -> int | None:
        return None if split == "train" else self._examples[split]

    def _document(self, rng: np.random.Generator, contains: bool) -> tuple[np.ndarray, np.ndarray]:
        length = int(rng.integers(self.min_len, self.seq_len + 1))
        tokens = np.zeros(self.seq_len, np.int32)
        tokens[:length] = rng.integers(2, self.vocab_size, length)
        if contains:
            where = rng.choice(length, size=min(length, int(rng.integers(1, 4))), replace=False)
            tokens[where] = NEEDLE
        return tokens, np.arange(self.seq_len) < length

    def _example(self, rng: np.random.Generator):
        """(tokens, mask, label) of one example."""
        if not self.paired:
            label = int(rng.integers(0, 2))
            tokens, mask = self._document(rng, bool(label))
            return tokens, mask, label
        has = rng.integers(0, 2, size=2).astype(bool)
        docs = [self._document(rng, bool(h)) for h in has]
        tokens = np.stack([d[0] for d in docs])
        mask = np.stack([d[1] for d in docs])
        return tokens, mask, int(has[0] == has[1])

    def _make_batch(self, split: str, step: int, global_batch_size: int, rows: slice, seed: int):
        shape = (
            (global_batch_size, 2, self.seq_len)
            if self.paired
            else (global_batch_size, self.seq_len)
        )
        tokens = np.zeros(shape, np.int32)
        mask = np.zeros(shape, bool)
        labels = np.zeros(global_batch_size, np.int32)
        weights = np.zeros(global_batch_size, np.float32)
        if split == "train":
            rng = step_rng(seed, split, step)
            examples = [self._example(rng) for _ in range(global_batch_size)]
        else:
            first = step * global_batch_size
            count = max(0, min(global_batch_size, self._examples[split] - first))
            examples = [
                self._example(
                    np.random.default_rng(
                        np.random.SeedSequence([seed, split_id(split), first + i])
                    )
                )
                for i in range(count)
            ]
        for i, (t, m, label) in enumerate(examples):
            tokens[i], mask[i], labels[i], weights[i] = t, m, label, 1.0
        return ClassificationBatch(tokens[rows], mask[rows], labels[rows], weights[rows])
