"""The batch of sequence-classification sources (Long Range Arena and the like).

Conventions (on top of those of `base`, which still hold: batches are a function of
``(seed, split, step)``, each process yields its rows, evaluation splits are one pass with the
last batch padded by zero-weight rows):

* ``inputs`` are int32 tokens ``[B, L]`` (one document per row) or ``[B, 2, L]`` (document pairs,
  e.g. LRA Retrieval: both documents go through the same encoder). Short documents are padded
  at the end with token 0 and ``mask`` False; long ones truncated to ``L``.
* ``mask`` is bool, the shape of ``inputs``: True for real tokens.
* ``labels`` are int32 ``[B]`` in ``[0, num_classes)``.
* ``weights`` are float32 ``[B]``: 1 for real examples, 0 for the padding rows of the last
  evaluation batch (so accuracy counts every example exactly once).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class ClassificationBatch:
    """One (per-process) batch of labelled sequences (or sequence pairs)."""

    inputs: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    weights: np.ndarray

    def __post_init__(self) -> None:
        for name, want, ndims in (
            ("inputs", np.int32, (2, 3)),
            ("mask", np.bool_, (2, 3)),
            ("labels", np.int32, (1,)),
            ("weights", np.float32, (1,)),
        ):
            arr = getattr(self, name)
            if not isinstance(arr, np.ndarray) or arr.ndim not in ndims or arr.dtype != want:
                raise TypeError(
                    f"ClassificationBatch.{name} must be a {' or '.join(map(str, ndims))}-D numpy "
                    f"{np.dtype(want).name} array, got {type(arr).__name__} "
                    f"{getattr(arr, 'dtype', None)} {getattr(arr, 'shape', None)}"
                )
        if self.inputs.shape != self.mask.shape:
            raise ValueError(
                f"ClassificationBatch: inputs {self.inputs.shape} and mask {self.mask.shape} "
                "must have equal shapes"
            )
        if self.inputs.ndim == 3 and self.inputs.shape[1] != 2:
            raise ValueError(
                f"ClassificationBatch: paired inputs must be [B, 2, L], got {self.inputs.shape}"
            )
        batch = self.inputs.shape[0]
        if self.labels.shape != (batch,) or self.weights.shape != (batch,):
            raise ValueError(
                f"ClassificationBatch: labels {self.labels.shape} and weights "
                f"{self.weights.shape} must be [{batch}]"
            )

    @property
    def paired(self) -> bool:
        """True for document pairs ``[B, 2, L]``."""
        return self.inputs.ndim == 3


def pad_or_truncate(tokens: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens [length] int32, mask [length] bool)``: cut to ``length`` or padded with 0."""
    tokens = np.asarray(tokens, np.int32)[:length]
    out = np.zeros(length, np.int32)
    out[: len(tokens)] = tokens
    mask = np.zeros(length, bool)
    mask[: len(tokens)] = True
    return out, mask
