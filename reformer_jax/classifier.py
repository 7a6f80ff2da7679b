"""Sequence classifiers on the Reformer encoder (Long Range Arena's models).

The encoder is `ReformerLM` without its vocabulary head, run bidirectionally (``causal=False``;
reversible or standard stack): its `ReformerLM.hidden_states` ``[B, L, D]`` are pooled into one
vector per document, then Dense -> ReLU -> Dense gives ``num_classes`` logits.

* ``pooling="cls"``: a learned CLS token is prepended to every document (mask True, attended like
  any token) and its final state is the document's vector. The CLS token is the model's last
  vocabulary id (``vocab_size - 1``): the data's tokens must lie below it, and the encoder sees
  ``L + 1`` positions.
* ``pooling="mean"``: the mean of the final states of the real tokens (``mask`` True).
* Pairs (``paired=True``, inputs ``[B, 2, L]``, LRA Retrieval): both documents go through the same
  encoder (as one batch of ``2 B`` rows); the MLP reads ``[e1, e2, e1 * e2, e1 - e2]``.

Padding never influences the logits: attention masks it out for the real tokens, and pooling
reads only the CLS token or the real tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from reformer_jax import sharding as shd
from reformer_jax.config import ReformerConfig
from reformer_jax.model import ReformerLM

POOLINGS = ("cls", "mean")


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """The classification head (``config.classifier`` plus what the data source says).

    Attributes:
      num_classes: logits per example (from the data source).
      pooling: ``"cls"`` (learned CLS token) or ``"mean"`` (mean over real tokens).
      d_hidden: width of the MLP's hidden layer; 0 means the encoder's width.
      paired: documents come in pairs ``[B, 2, L]`` (dual encoder); from the data source.
    """

    num_classes: int
    pooling: str = "cls"
    d_hidden: int = 0
    paired: bool = False

    def __post_init__(self) -> None:
        def fail(setting: str, problem: str, fix: str) -> None:
            raise ValueError(f"classifier.{setting}: {problem}; {fix}")

        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            fail("num_classes", f"must be an integer >= 2, got {self.num_classes!r}", "check data")
        if self.pooling not in POOLINGS:
            fail("pooling", f"unknown pooling {self.pooling!r}", f"use one of {list(POOLINGS)}")
        if not isinstance(self.d_hidden, int) or self.d_hidden < 0:
            fail("d_hidden", f"must be an integer >= 0, got {self.d_hidden!r}", "use 0 or more")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ClassifierConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"classifier: unknown setting(s) {unknown}; valid settings are {sorted(known)}"
            )
        return cls(**values)

    @property
    def extra_tokens(self) -> int:
        """Tokens the classifier adds to the vocabulary and to each sequence (the CLS token)."""
        return 1 if self.pooling == "cls" else 0


class SequenceClassifier(nnx.Module):
    """Logits ``[B, num_classes]`` for documents ``[B, L]`` or pairs ``[B, 2, L]``."""

    def __init__(self, cfg: ReformerConfig, head: ClassifierConfig, *, rngs: nnx.Rngs):
        if cfg.causal:
            raise ValueError(
                "model.causal: a classifier encodes every token with the whole sequence; set "
                "causal=False"
            )
        self.cfg = cfg
        self.head_cfg = head
        self.encoder = ReformerLM(cfg, rngs=rngs, lm_head=False)
        d_enc = 2 * cfg.d_model if cfg.residual == "reversible" else cfg.d_model
        d_features = 4 * d_enc if head.paired else d_enc
        d_hidden = head.d_hidden or d_enc

        def dense(d_in: int, d_out: int, axes: tuple) -> nnx.Linear:
            return nnx.Linear(
                d_in,
                d_out,
                dtype=cfg.compute_dtype,
                param_dtype=cfg.parameter_dtype,
                kernel_metadata={"axes": axes},
                rngs=rngs,
            )

        self.hidden = dense(d_features, d_hidden, ("embed", "mlp"))
        self.logits = dense(d_hidden, head.num_classes, ("mlp", None))

    @property
    def cls_id(self) -> int:
        return self.cfg.vocab_size - 1

    def encode(
        self,
        tokens_BL: jax.Array,
        mask_BL: jax.Array,
        *,
        dropout_rng: jax.Array | None = None,
        hash_rng: jax.Array | None = None,
    ) -> jax.Array:
        """One pooled vector ``[B, D]`` per document (``D``: the encoder's output width)."""
        mask_BL = mask_BL.astype(bool)
        if self.head_cfg.pooling == "cls":
            batch = tokens_BL.shape[0]
            cls = jnp.full((batch, 1), self.cls_id, tokens_BL.dtype)
            tokens_BL = jnp.concatenate([cls, tokens_BL], axis=1)
            mask_BL = jnp.concatenate([jnp.ones((batch, 1), bool), mask_BL], axis=1)
        h_BLD = self.encoder.hidden_states(
            tokens_BL, mask=mask_BL, dropout_rng=dropout_rng, hash_rng=hash_rng
        ).astype(self._out_dtype)
        if self.head_cfg.pooling == "cls":
            return h_BLD[:, 0]
        m = mask_BL[..., None].astype(h_BLD.dtype)
        return jnp.sum(h_BLD * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)

    def __call__(
        self,
        inputs: jax.Array,
        mask: jax.Array,
        *,
        dropout_rng: jax.Array | None = None,
        hash_rng: jax.Array | None = None,
    ) -> jax.Array:
        """Logits ``[B, num_classes]`` (float32 or wider) for ``inputs`` / ``mask`` ``[B, L]``
        (documents) or ``[B, 2, L]`` (pairs).

        ``dropout_rng`` / ``hash_rng`` as in `ReformerLM.hidden_states` (both documents of a
        pair share them: they are one batch of the encoder).
        """
        paired = inputs.ndim == 3
        if paired != self.head_cfg.paired:
            want = "[B, 2, L] pairs" if self.head_cfg.paired else "[B, L] documents"
            raise ValueError(f"classifier: expected {want}, got inputs of shape {inputs.shape}")
        if paired:
            batch, _, length = inputs.shape
            e = self.encode(
                inputs.reshape(2 * batch, length),
                mask.reshape(2 * batch, length),
                dropout_rng=dropout_rng,
                hash_rng=hash_rng,
            ).reshape(batch, 2, -1)
            e1, e2 = e[:, 0], e[:, 1]
            features = jnp.concatenate([e1, e2, e1 * e2, e1 - e2], axis=-1)
        else:
            features = self.encode(inputs, mask, dropout_rng=dropout_rng, hash_rng=hash_rng)
        features = shd.constrain_batch(features)
        hidden = jax.nn.relu(self.hidden(features.astype(self.cfg.compute_dtype)))
        return shd.constrain_batch(self.logits(hidden).astype(self._out_dtype))

    @property
    def _out_dtype(self) -> jnp.dtype:
        # float32 at least (bfloat16 compute), float64 under a float64 config (exact tests).
        return jnp.promote_types(self.cfg.compute_dtype, jnp.float32)
