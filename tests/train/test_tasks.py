"""Tasks: the objectives' sums against NumPy, state carried across steps (threaded, checkpointed,
split for micro-batches, sharded, separate in evaluation), and classification training with the
best validation checkpoint."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from configs import classify_tiny
from configs.common import base_config
from reformer_jax import data as data_lib
from reformer_jax import sharding as shd
from reformer_jax.checkpoint import BestCheckpoint
from reformer_jax.classifier import ClassifierConfig, SequenceClassifier
from reformer_jax.config import ReformerConfig
from reformer_jax.data.base import SourceBase, step_rng
from reformer_jax.model import ReformerLM
from reformer_jax.train import tasks as tasks_lib
from reformer_jax.train import train_and_evaluate, trainer
from reformer_jax.train.tasks import ClassificationTask, LMTask
from tests.model_utils import tiny_config


def _records(workdir, split):
    out = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["split"] == split:
            out.setdefault(record["step"], []).append(record)
    return out


def _nll_and_hits(logits, labels):
    logits = np.asarray(logits, np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, labels[..., None], -1)[..., 0]
    return nll, logits.argmax(-1) == labels


# -- the objectives against NumPy ------------------------------------------------------------


def test_lm_task_sums_match_numpy():
    """Catches a missing shift (logits at t scored against token t), unweighted sums, and an
    accuracy over padded positions."""
    cfg = tiny_config()
    model = ReformerLM(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (2, 16)).astype(np.int32)
    weights = (rng.random((2, 16)) < 0.7).astype(np.float32)
    batch = {"inputs": tokens, "targets": tokens, "weights": weights}
    loss, sums, carry = LMTask(cfg).loss(model, batch, None)
    assert carry is None
    nll, hits = _nll_and_hits(model(tokens)[:, :-1], tokens[:, 1:])
    w = weights[:, 1:]
    np.testing.assert_allclose(sums["weight"], w.sum())
    np.testing.assert_allclose(sums["loss_sum"], (nll * w).sum(), rtol=1e-5)
    np.testing.assert_allclose(sums["correct"], (hits * w).sum())
    np.testing.assert_allclose(loss, (nll * w).sum() / w.sum(), rtol=1e-5)
    metrics = LMTask(cfg).summarize({k: float(v) for k, v in sums.items()})
    np.testing.assert_allclose(metrics["bits_per_token"], metrics["loss"] / np.log(2))


@pytest.mark.parametrize("paired", [False, True])
def test_classification_task_sums_match_numpy(paired):
    """Catches padding rows (weight 0) counted in the loss or accuracy, and a loss that is not
    the weighted mean cross-entropy of the labels."""
    cfg = tiny_config(causal=False, hash_seed=0, vocab_size=10)
    head = ClassifierConfig(3, pooling="mean", paired=paired)
    task = ClassificationTask(cfg, head)
    model = task.make_model(nnx.Rngs(0))
    rng = np.random.default_rng(1)
    shape = (4, 2, 8) if paired else (4, 8)
    batch = {
        "inputs": rng.integers(1, 9, shape).astype(np.int32),
        "mask": np.ones(shape, bool),
        "labels": np.array([0, 2, 1, 2], np.int32),
        "weights": np.array([1, 1, 0, 1], np.float32),
    }
    loss, sums, _ = task.loss(model, batch, None)
    nll, hits = _nll_and_hits(model(batch["inputs"], batch["mask"]), batch["labels"])
    w = batch["weights"]
    np.testing.assert_allclose(sums["loss_sum"], (nll * w).sum(), rtol=1e-5)
    np.testing.assert_allclose(sums["correct"], (hits * w).sum())
    np.testing.assert_allclose(loss, (nll * w).sum() / 3, rtol=1e-5)
    assert task.summarize({"loss_sum": 6.0, "weight": 3.0, "correct": 2.0})["accuracy"] == 2 / 3


def test_classification_loss_keeps_float64_logits(x64):
    """Catches a loss that casts every classifier's logits to float32: a float64 model (the
    exact gradient checks) would then match its reference only to float32 rounding."""
    cfg = tiny_config(causal=False, hash_seed=0, vocab_size=10)
    task = ClassificationTask(cfg, ClassifierConfig(3, pooling="mean"))
    logits = np.random.default_rng(2).normal(size=(4, 3)) * 3
    labels = np.array([0, 2, 1, 2], np.int32)

    def model(inputs, mask, **_):
        return jnp.asarray(logits)

    batch = {
        "inputs": np.ones((4, 8), np.int32),
        "mask": np.ones((4, 8), bool),
        "labels": labels,
        "weights": np.array([1, 1, 0, 1], np.float32),
    }
    loss, sums, _ = task.loss(model, batch, None)
    nll, _ = _nll_and_hits(logits, labels)
    assert loss.dtype == jnp.float64
    np.testing.assert_allclose(float(loss), (nll * batch["weights"]).sum() / 3, rtol=1e-13)


def test_unknown_task_and_causal_classifier_are_named(tmp_path):
    config = classify_tiny.get_config()
    source = data_lib.get_source(config.data.name, config.data.settings)
    config.task = "regression"
    with pytest.raises(ValueError, match="config.task"):
        tasks_lib.make_task(config, source)
    config.task = "classification"
    config.model.causal = True
    with pytest.raises(ValueError, match="model.causal"):
        tasks_lib.make_task(config, source)
    config.model.causal = False
    config.classifier.pooling = "cls"
    task = tasks_lib.make_task(config, source)
    # The CLS token gets its own id and position.
    assert task.model_cfg.vocab_size == source.vocab_size + 1


# -- a toy task with carried state -----------------------------------------------------------

D = 4
EVAL_START = 1000.0  # the evaluation carry's initial value (the training one starts at 0)


@dataclasses.dataclass(frozen=True)
class RowsBatch:
    x: np.ndarray  # [B, D] float32
    y: np.ndarray  # [B] float32


class ToyRows(SourceBase):
    """Random rows; train endless, eval 3 batches (registered as data source "toy_rows")."""

    vocab_size, seq_len, splits, split_aliases = 2, D, ("train", "eval"), {}

    def __init__(self, eval_rows: int = 24):
        self.eval_rows = eval_rows

    def _num_examples(self, split):
        return None if split == "train" else self.eval_rows

    def _make_batch(self, split, step, global_batch_size, rows, seed):
        rng = step_rng(seed, split, step)
        x = rng.normal(size=(global_batch_size, D)).astype(np.float32)
        y = rng.normal(size=(global_batch_size,)).astype(np.float32)
        return RowsBatch(x[rows], y[rows])


class Linear(nnx.Module):
    def __init__(self, rngs):
        self.w = nnx.Param(jax.random.normal(rngs.params(), (D,)) * 0.1)


@dataclasses.dataclass(frozen=True)
class CarryTask:
    """Carry: a per-row running sum of the rows' features (independent of the parameters, so
    its value after each step is known in closed form). The loss reads it, and the metric
    ``moment`` = sum_b (b + 1) * carry_b sees both its values and its row order."""

    model_cfg: ReformerConfig = ReformerConfig()
    name: str = "toy_carry"
    batch_fields: tuple = ("x", "y")
    best_metric: tuple | None = None

    @classmethod
    def from_config(cls, config, source):
        return cls()

    def make_model(self, rngs):
        return Linear(rngs)

    def init_carry(self, batch_size, *, train=True):
        return {"total": jnp.full((batch_size,), 0.0 if train else EVAL_START, jnp.float32)}

    def loss(self, model, batch, carry, *, dropout_rng=None, hash_rng=None):
        total = carry["total"] + batch["x"].sum(-1)
        pred = batch["x"] @ model.w.get_value() + 0.01 * total
        err = jnp.sum((pred - batch["y"]) ** 2)
        n = jnp.float32(batch["x"].shape[0])
        rows = jnp.arange(1, total.shape[0] + 1, dtype=jnp.float32)
        sums = {"loss_sum": err, "weight": n, "moment": jnp.sum(rows * total)}
        return err / n, sums, {"total": total}

    def summarize(self, sums):
        return {"loss": sums["loss_sum"] / sums["weight"], "moment": sums["moment"]}


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(tasks_lib.TASKS, "toy_carry", CarryTask.from_config)
    monkeypatch.setitem(data_lib.SOURCES, "toy_rows", ("tests.train.test_tasks", "ToyRows"))
    config = base_config()
    config.update(
        task="toy_carry",
        seq_len=D,
        batch_size=8,
        num_steps=6,
        learning_rate=0.05,
        schedule="constant",
        warmup_steps=0,
        log_every=1,
        eval_every=2,
        eval_batches=0,
        checkpoint_every=2,
        mesh_shape=(1, 1),
    )
    config.data = ml_collections.ConfigDict(dict(name="toy_rows", settings={}))
    return config


def _expected_moments(config, steps, split="train", start=0.0, micro=1):
    """The carry's moment after each step, from the data alone (NumPy)."""
    source = ToyRows()
    batches = source.batches(split, config.batch_size, seed=config.seed)
    total = np.full(config.batch_size, start)
    rows = np.arange(1, config.batch_size + 1)
    out = []
    for _ in range(steps):
        total = total + next(batches).x.astype(np.float64).sum(-1)
        if micro == 1:
            out.append(float((rows * total).sum()))
        else:  # each micro-batch numbers its own rows 1..B/micro
            parts = total.reshape(micro, -1)
            out.append(float((np.arange(1, parts.shape[1] + 1) * parts).sum()))
    return out


def _moments(workdir, split="train"):
    return {s: r[-1]["moment"] for s, r in _records(workdir, split).items()}


def test_carry_is_threaded_from_step_to_step(toy, tmp_path):
    """Catches a carry reset every step, or the old carry returned instead of the new one."""
    train_and_evaluate(toy, tmp_path / "run")
    got = _moments(tmp_path / "run")
    np.testing.assert_allclose([got[s] for s in range(1, 7)], _expected_moments(toy, 6), rtol=1e-5)


def test_evaluation_has_its_own_carry(toy, tmp_path):
    """Evaluation starts from ``init_carry(train=False)`` every time and never touches the
    training carry. Catches evaluation threading (and so overwriting) the training carry."""
    toy.eval_every = 1
    train_and_evaluate(toy, tmp_path / "run")
    got = _moments(tmp_path / "run")
    np.testing.assert_allclose([got[s] for s in range(1, 7)], _expected_moments(toy, 6), rtol=1e-5)
    evals = _moments(tmp_path / "run", "eval")
    want = sum(_expected_moments(toy, 3, split="eval", start=EVAL_START))
    for step in range(1, 7):
        np.testing.assert_allclose(evals[step], want, rtol=1e-5)


def test_carry_is_checkpointed_and_restored_on_resume(toy, tmp_path):
    """A preempted, resumed run continues with the carry it had: identical losses and moments.
    Catches a carry left out of the checkpoint (the resumed run would restart from zeros)."""
    straight = train_and_evaluate(toy, tmp_path / "straight")
    toy.stop_at_step = 3  # checkpoint at 3, then exit
    assert train_and_evaluate(toy, tmp_path / "resumed").interrupted
    toy.stop_at_step = 0
    assert train_and_evaluate(toy, tmp_path / "resumed").step == 6
    a, b = _records(tmp_path / "straight", "train"), _records(tmp_path / "resumed", "train")
    for s in range(4, 7):
        np.testing.assert_allclose(b[s][-1]["moment"], a[s][-1]["moment"], rtol=1e-6)
        np.testing.assert_allclose(b[s][-1]["loss"], a[s][-1]["loss"], rtol=1e-6)
    assert (tmp_path / "resumed" / "checkpoints" / "3" / "carry").is_dir()
    assert straight.step == 6


def test_carry_is_split_along_the_batch_for_micro_batches(toy, tmp_path):
    """With 4 micro-batches, micro-batch i gets rows 2i, 2i + 1 of the carry and its new
    values go back to the same rows; the losses equal the whole batch's. Catches a carry
    reshaped in the wrong order (rows permuted) or shared by all micro-batches."""
    train_and_evaluate(toy, tmp_path / "full")
    toy.grad_accum_steps = 4
    train_and_evaluate(toy, tmp_path / "accum")
    got = _moments(tmp_path / "accum")
    np.testing.assert_allclose(
        [got[s] for s in range(1, 7)], _expected_moments(toy, 6, micro=4), rtol=1e-5
    )
    a, b = _records(tmp_path / "full", "train"), _records(tmp_path / "accum", "train")
    np.testing.assert_allclose(
        [b[s][-1]["loss"] for s in range(1, 7)], [a[s][-1]["loss"] for s in range(1, 7)], rtol=1e-5
    )


def test_carry_is_sharded_over_eight_devices(toy, tmp_path):
    """The carry lives on the data axis like the batch (one row per device here), and the run
    on 8 devices matches the run on one. Catches a replicated carry or rows exchanged between
    devices."""
    mesh = shd.make_mesh((8, 1))
    carry = trainer.init_carry(CarryTask(), 8, mesh)
    sharding = carry["total"].sharding
    assert sharding.spec == P(shd.BATCH_AXES) and len(carry["total"].addressable_shards) == 8
    assert {s.data.shape for s in carry["total"].addressable_shards} == {(1,)}
    train_and_evaluate(toy, tmp_path / "one")
    toy.mesh_shape = (8, 1)
    train_and_evaluate(toy, tmp_path / "eight")
    a, b = _records(tmp_path / "one", "train"), _records(tmp_path / "eight", "train")
    for key in ("moment", "loss"):
        np.testing.assert_allclose(
            [b[s][-1][key] for s in range(1, 7)], [a[s][-1][key] for s in range(1, 7)], rtol=1e-5
        )


# -- classification through the trainer ------------------------------------------------------


@pytest.mark.slow
def test_classify_tiny_learns_and_reports_the_best_checkpoints_test_accuracy(tmp_path):
    """The classifier beats chance clearly on held-out data, and the reported test metrics are
    those of the best validation checkpoint, recomputed here with NumPy from its logits.
    Catches test metrics of the last instead of the best parameters (when they differ) and an
    evaluation that counts padding rows."""
    config = classify_tiny.get_config()
    config.num_steps = 30
    config.eval_every = 10
    config.checkpoint_every = 10
    result = train_and_evaluate(config, tmp_path / "run")
    assert result.best["accuracy"] > 0.75 and result.test_metrics["accuracy"] > 0.75
    evals = {s: r[-1]["accuracy"] for s, r in _records(tmp_path / "run", "eval").items()}
    first_best = min(s for s, a in evals.items() if a == max(evals.values()))
    assert result.best["step"] == first_best
    assert result.test_metrics["examples"] == 128  # every test example once, padding excluded

    source = data_lib.get_source(config.data.name, config.data.settings)
    task = tasks_lib.make_task(config, source)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: task.make_model(nnx.Rngs(0))))
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), abstract)
    best = BestCheckpoint(tmp_path / "run")
    model = nnx.merge(graphdef, best.restore(target))
    best.close()
    assert isinstance(model, SequenceClassifier)
    hits = weight = 0.0
    for batch in source.batches("test", 32, seed=config.seed):
        _, ok = _nll_and_hits(model(batch.inputs, batch.mask), batch.labels)
        hits += float((ok * batch.weights).sum())
        weight += float(batch.weights.sum())
    np.testing.assert_allclose(result.test_metrics["accuracy"], hits / weight)


def test_best_checkpoint_is_selected_by_validation_accuracy(tmp_path, monkeypatch):
    """Validation accuracies scripted to peak at step 2 of 3: the test split is evaluated with
    step 2's parameters and ``best`` names step 2. Catches keeping the last checkpoint, a
    "min" comparison, or a best that is overwritten by later, worse evaluations."""
    real_evaluate = trainer.evaluate
    scripted = iter([0.6, 0.9, 0.7])
    seen = {}

    def fake_evaluate(params, graphdef, source, config, mesh, *, split="eval", **kwargs):
        metrics = real_evaluate(params, graphdef, source, config, mesh, split=split, **kwargs)
        leaves = [np.asarray(x).copy() for x in jax.tree.leaves(params)]
        if split == "test":
            seen["test"] = leaves
            return metrics
        seen[len(seen) + 1] = leaves
        return {**metrics, "accuracy": next(scripted)}

    monkeypatch.setattr(trainer, "evaluate", fake_evaluate)
    config = classify_tiny.get_config()
    config.update(num_steps=3, eval_every=1, checkpoint_every=1, eval_batch_size=64)
    result = train_and_evaluate(config, tmp_path / "run")
    assert result.best["step"] == 2 and result.best["accuracy"] == 0.9
    for a, b in zip(seen["test"], seen[2], strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(seen[2], seen[3], strict=True))


@pytest.mark.slow
def test_memory_task_carry_layout_eval_memory_and_reset():
    """Catches an evaluation carry built with the training memory length (eval_mem_len
    ignored), a memory-less evaluation that still expects a carry, and reset rows whose memory
    survives into the loss: the carry layout is the documented one, and a row reset before the
    step scores like a fresh start."""
    cfg = ReformerConfig(
        vocab_size=13, d_model=8, d_ff=16, n_layers=2, n_heads=2, d_head=4,
        attention_pattern=("relative",), residual="standard", pos_embedding="none",
        mem_len=4, cmem_len=2, cmem_rate=2, cmem_method="mean",
    )  # fmt: skip
    task = tasks_lib.LMMemoryTask(cfg, eval_mem_len=6)
    train = task.init_carry(3)
    shapes = {k: v.shape for k, v in train.items()}
    assert shapes == {
        "mem": (3, 2, 4, 8), "mem_valid": (3, 4), "cmem": (3, 2, 2, 8), "cmem_valid": (3, 2),
    }  # fmt: skip
    assert task.init_carry(3, train=False)["mem"].shape == (3, 2, 6, 8)
    assert dataclasses.replace(task, eval_mem_len=0).init_carry(3, train=False) is None
    model = ReformerLM(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(0), (3, 4), 0, 13)
    batch = {
        "inputs": tokens, "targets": tokens, "weights": jnp.ones((3, 4)).at[:, 0].set(0),
        "reset": jnp.array([False, False, False]),
    }  # fmt: skip
    _, _, carry = task.loss(model, batch, train)
    fresh_loss, fresh, _ = task.loss(model, {**batch, "reset": jnp.ones(3, bool)}, carry)
    empty_loss, empty, _ = task.loss(model, batch, task.init_carry(3))
    np.testing.assert_allclose(fresh["loss_sum"], empty["loss_sum"], rtol=1e-6)
    kept, _, _ = task.loss(model, batch, carry)
    assert abs(float(kept) - float(fresh_loss)) > 1e-6
    no_memory = dataclasses.replace(task, eval_mem_len=0)
    _, sums, new_carry = no_memory.loss(model, batch, None)
    assert new_carry is None and float(sums["weight"]) == 9.0
