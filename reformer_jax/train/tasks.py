"""Training objectives: what a step optimises, what it reports, and what it carries across steps.

A task is a small frozen (hashable) object that the generic train and eval steps call. It owns:

* ``name`` and ``batch_fields``: the registry name and the batch attributes the loss reads
  (``inputs``, ``targets``, ``weights`` for language modelling).
* ``make_model(rngs)``: the model the task trains (``ReformerLM``, a classifier, ...).
* ``init_carry(batch_size, *, train)``: the state carried from one step to the next (e.g.
  Transformer-XL's memories), or ``None`` for stateless tasks. Every leaf has a leading axis of
  ``batch_size`` rows: the trainer shards it like the batch, splits it like the batch into
  micro-batches under gradient accumulation, donates it to the step and checkpoints it with the
  train state. Evaluation builds its own carry (``train=False``, possibly of another size), so
  evaluating never touches the training carry.
* ``loss(model, batch, carry, *, dropout_rng, hash_rng) -> (loss, sums, new_carry)``: the
  objective (a scalar the step differentiates, a mean over ``sums["weight"]``), additive metric
  sums, and the next carry. Sums add over micro-batches and evaluation batches; ``"weight"`` is
  the loss's denominator (scored tokens, real examples), by which gradient accumulation weights
  each micro-batch so the result is the mean over the whole batch.
* ``summarize(sums) -> metrics``: metrics from (possibly accumulated) sums; works on Python
  floats and on traced arrays.
* ``best_metric``: ``(metric name, "max" | "min")`` when the trainer should keep the best
  checkpoint by that validation metric and report the test metrics of that checkpoint; ``None``
  evaluates the latest parameters only.

``TASKS`` maps ``config.task`` to a builder ``(config, source) -> Task``; `make_task` uses it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from reformer_jax.classifier import ClassifierConfig, SequenceClassifier
from reformer_jax.config import ReformerConfig
from reformer_jax.layers.memory import init_memory, reset_memory
from reformer_jax.model import ReformerLM, lm_loss, loss_dtype

#: A pytree whose leaves all have a leading batch axis, or None (stateless).
Carry = Any
Sums = dict[str, jax.Array]

BEST_MODES = ("max", "min")


class Task(Protocol):
    """The interface the trainer uses (see the module docstring)."""

    name: str
    batch_fields: tuple[str, ...]
    best_metric: tuple[str, str] | None
    model_cfg: ReformerConfig | None

    def make_model(self, rngs: nnx.Rngs) -> nnx.Module: ...

    def init_carry(self, batch_size: int, *, train: bool = True) -> Carry: ...

    def loss(
        self,
        model: nnx.Module,
        batch: Mapping[str, jax.Array],
        carry: Carry,
        *,
        dropout_rng: jax.Array | None,
        hash_rng: jax.Array | None,
    ) -> tuple[jax.Array, Sums, Carry]: ...

    def summarize(self, sums: Mapping[str, Any]) -> dict[str, Any]: ...


def is_better(best_metric: tuple[str, str], new: float, old: float | None) -> bool:
    """Whether ``new`` improves on ``old`` (None: nothing yet) for ``(name, "max" | "min")``."""
    if old is None:
        return math.isfinite(new)
    return new > old if best_metric[1] == "max" else new < old


def _mean(total: Any, weight: Any) -> Any:
    if isinstance(weight, int | float):  # host sums (evaluation): keep float64
        return total / max(weight, 1.0)
    return total / jnp.maximum(weight, 1.0)


# ---------------------------------------------------------------------------------------------
# Language modelling (the Reformer's objective).


@dataclasses.dataclass(frozen=True)
class LMTask:
    """Next-token cross-entropy, token accuracy and bits per token; stateless.

    ``model_cfg`` may be None when the caller brings its own graph (the legacy
    ``make_eval_step(graphdef)``); `make_model` then cannot be used.
    """

    model_cfg: ReformerConfig | None = None
    name: str = "lm"
    batch_fields: tuple[str, ...] = ("inputs", "targets", "weights")
    best_metric: tuple[str, str] | None = None

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, source: Any) -> LMTask:
        return cls(model_config(config, source.vocab_size, config.seq_len))

    def make_model(self, rngs: nnx.Rngs) -> ReformerLM:
        return ReformerLM(self.model_cfg, rngs=rngs)

    def init_carry(self, batch_size: int, *, train: bool = True) -> None:
        return None

    def loss(self, model, batch, carry, *, dropout_rng=None, hash_rng=None):
        logits = model(batch["inputs"], dropout_rng=dropout_rng, hash_rng=hash_rng)
        loss, weight = lm_loss(logits, batch["targets"], batch["weights"])
        hits = jnp.argmax(logits[:, :-1], -1) == batch["targets"][:, 1:]
        correct = jnp.sum(hits * batch["weights"][:, 1:])
        return loss, {"loss_sum": loss * weight, "weight": weight, "correct": correct}, carry

    def summarize(self, sums: Mapping[str, Any]) -> dict[str, Any]:
        loss = _mean(sums["loss_sum"], sums["weight"])
        return {
            "loss": loss,
            "accuracy": _mean(sums["correct"], sums["weight"]),
            "bits_per_token": loss / math.log(2),
            "tokens": sums["weight"],
        }


# ---------------------------------------------------------------------------------------------
# Language modelling with a memory across segments (Transformer-XL, Compressive Transformer).


@dataclasses.dataclass(frozen=True)
class LMMemoryTask:
    """Next-token loss on consecutive segments of contiguous streams, with per-layer memories.

    The carry is the model's memory (:mod:`reformer_jax.layers.memory`): ``mem [B, n_layers,
    M, d_model]``, ``mem_valid [B, M]`` and, with a compressed memory, ``cmem [B, n_layers, C,
    d_model]``, ``cmem_valid [B, C]``; rows whose ``reset`` is True start from an empty memory.
    The source must yield contiguous streams (``order="streams"``: row b of step s is segment s
    of stream b). The step minimises the LM loss plus the attention-reconstruction loss (which
    reaches only the compressors); metrics report them apart (``reconstruction_loss``).

    ``eval_mem_len``: the memory of evaluation (None: the training ``mem_len``; 0: none; the
    paper evaluates with longer memories than it trains with). The compressed memory keeps its
    training length.
    """

    model_cfg: ReformerConfig
    eval_mem_len: int | None = None
    name: str = "lm_memory"
    batch_fields: tuple[str, ...] = ("inputs", "targets", "weights", "reset")
    best_metric: tuple[str, str] | None = None

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, source: Any) -> LMMemoryTask:
        if getattr(source, "order", None) != "streams":
            raise ValueError(
                "config.data.settings.order: the lm_memory task needs contiguous streams (each "
                "step continuing every row's text); set config.data.settings.order = 'streams'"
            )
        cfg = model_config(config, source.vocab_size, config.seq_len)
        if not cfg.has_memory:
            raise ValueError(
                "config.model.mem_len: the lm_memory task carries a memory but mem_len is 0; set "
                "config.model.mem_len > 0 (or use config.task = 'lm')"
            )
        if cfg.cmem_len and config.seq_len % cfg.cmem_rate:
            raise ValueError(
                f"config.seq_len: {config.seq_len} is not a multiple of model.cmem_rate "
                f"{cfg.cmem_rate} (each segment's evicted states are compressed in groups of the "
                "rate); choose a segment length divisible by it"
            )
        eval_mem_len = config.get("eval_mem_len", None)
        if eval_mem_len is not None and (not isinstance(eval_mem_len, int) or eval_mem_len < 0):
            raise ValueError(
                f"config.eval_mem_len: must be None or an integer >= 0, got {eval_mem_len!r}; "
                "use None for the training memory length"
            )
        return cls(cfg, eval_mem_len)

    def make_model(self, rngs: nnx.Rngs) -> ReformerLM:
        return ReformerLM(self.model_cfg, rngs=rngs)

    def mem_len(self, *, train: bool) -> int:
        """The memory length of training or of evaluation."""
        if train or self.eval_mem_len is None:
            return self.model_cfg.mem_len
        return self.eval_mem_len

    def init_carry(self, batch_size: int, *, train: bool = True) -> Carry:
        mem_len = self.mem_len(train=train)
        if mem_len == 0:
            return None
        return init_memory(self.model_cfg, batch_size, mem_len)

    def loss(self, model, batch, carry, *, dropout_rng=None, hash_rng=None):
        if carry is None:  # evaluation without memory
            logits, new_carry = model(batch["inputs"], dropout_rng=dropout_rng), None
            recon = jnp.zeros((), jnp.float32)
        else:
            memory = reset_memory(carry, batch["reset"])
            logits, new_carry, recon = model.with_memory(
                batch["inputs"], memory, dropout_rng=dropout_rng
            )
        loss, weight = lm_loss(logits, batch["targets"], batch["weights"])
        hits = jnp.argmax(logits[:, :-1], -1) == batch["targets"][:, 1:]
        sums = {
            "loss_sum": loss * weight,
            "weight": weight,
            "correct": jnp.sum(hits * batch["weights"][:, 1:]),
            "reconstruction_sum": recon * weight,
        }
        return loss + recon, sums, new_carry

    def summarize(self, sums: Mapping[str, Any]) -> dict[str, Any]:
        metrics = LMTask().summarize(sums)
        metrics["reconstruction_loss"] = _mean(sums["reconstruction_sum"], sums["weight"])
        return metrics


# ---------------------------------------------------------------------------------------------
# Sequence classification (Long Range Arena).


@dataclasses.dataclass(frozen=True)
class ClassificationTask:
    """Cross-entropy on one label per row (or document pair), weighted by ``weights``; accuracy.

    Batches follow `reformer_jax.data.classification`: ``inputs`` / ``mask`` ``[B, L]`` or
    ``[B, 2, L]``, ``labels`` and ``weights`` ``[B]``. Stateless. The best checkpoint is the one
    with the highest validation accuracy.
    """

    model_cfg: ReformerConfig
    classifier_cfg: ClassifierConfig
    name: str = "classification"
    batch_fields: tuple[str, ...] = ("inputs", "mask", "labels", "weights")
    best_metric: tuple[str, str] | None = ("accuracy", "max")

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, source: Any) -> ClassificationTask:
        for attr in ("num_classes", "paired"):
            if not hasattr(source, attr):
                raise ValueError(
                    f"config.data.name: {config.data.name!r} is not a classification source (no "
                    f"{attr}); use one registered for config.task='classification'"
                )
        settings = dict(config.get("classifier", None) or {})
        settings.update(num_classes=source.num_classes, paired=source.paired)
        classifier_cfg = ClassifierConfig.from_dict(settings)
        extra = classifier_cfg.extra_tokens
        model_cfg = model_config(config, source.vocab_size + extra, config.seq_len + extra)
        if model_cfg.causal:
            raise ValueError(
                "model.causal: a classifier encodes every token with the whole sequence; set "
                "config.model.causal = False"
            )
        return cls(model_cfg, classifier_cfg)

    def make_model(self, rngs: nnx.Rngs) -> SequenceClassifier:
        return SequenceClassifier(self.model_cfg, self.classifier_cfg, rngs=rngs)

    def init_carry(self, batch_size: int, *, train: bool = True) -> None:
        return None

    def loss(self, model, batch, carry, *, dropout_rng=None, hash_rng=None):
        logits = model(batch["inputs"], batch["mask"], dropout_rng=dropout_rng, hash_rng=hash_rng)
        logits = logits.astype(loss_dtype(logits))
        weights = batch["weights"].astype(logits.dtype)
        logp = jax.nn.log_softmax(logits, axis=-1)
        nll = -jnp.take_along_axis(logp, batch["labels"][:, None], axis=-1)[:, 0]
        weight = jnp.sum(weights)
        loss_sum = jnp.sum(nll * weights)
        correct = jnp.sum((jnp.argmax(logits, -1) == batch["labels"]) * weights)
        sums = {"loss_sum": loss_sum, "weight": weight, "correct": correct}
        return _mean(loss_sum, weight), sums, carry

    def summarize(self, sums: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "loss": _mean(sums["loss_sum"], sums["weight"]),
            "accuracy": _mean(sums["correct"], sums["weight"]),
            "examples": sums["weight"],
        }


# ---------------------------------------------------------------------------------------------


def model_config(config: ml_collections.ConfigDict, vocab_size: int, length: int) -> ReformerConfig:
    """``config.model`` as a ReformerConfig covering ``vocab_size`` tokens and ``length``."""
    values = dict(config.model.to_dict())
    if values.get("vocab_size") is None:  # absent or an empty placeholder: the task's
        values["vocab_size"] = vocab_size
    cfg = ReformerConfig.from_dict(values)
    if cfg.vocab_size < vocab_size:
        raise ValueError(
            f"config.model.vocab_size: {cfg.vocab_size} is smaller than the task needs "
            f"({vocab_size}: the data's vocabulary plus any reserved token); raise it to at "
            f"least {vocab_size}"
        )
    cfg.check_length(length)
    return cfg


#: ``config.task`` -> builder ``(config, source) -> Task``.
TASKS: dict[str, Callable[[ml_collections.ConfigDict, Any], Task]] = {
    "lm": LMTask.from_config,
    "lm_memory": LMMemoryTask.from_config,
    "classification": ClassificationTask.from_config,
}


def task_name(config: ml_collections.ConfigDict) -> str:
    return config.get("task", "lm")


def make_task(config: ml_collections.ConfigDict, source: Any) -> Task:
    """The task ``config.task`` (default ``"lm"``) for ``source``."""
    name = task_name(config)
    if name not in TASKS:
        raise ValueError(f"config.task: unknown task {name!r}; use one of {sorted(TASKS)}")
    task = TASKS[name](config, source)
    if task.best_metric is not None and task.best_metric[1] not in BEST_MODES:
        raise ValueError(f"{name}: best_metric mode must be one of {BEST_MODES}")
    return task
