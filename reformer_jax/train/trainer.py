"""The training loop: ``train_and_evaluate(config, workdir)``.

One jitted step with explicit shardings over a ``(data, model)`` or ``(data, fsdp, model)`` mesh,
donated state, a per-step PRNG key derived from (seed, step), gradient accumulation over
micro-batches, periodic evaluation, asynchronous orbax checkpoints with exact resume, and metrics to
JSON lines, TensorBoard and a progress bar. What is optimised and reported, and any state carried
from step to step, belong to the task (`reformer_jax.train.tasks`, chosen by ``config.task``); tasks
with a ``best_metric`` keep their best validation checkpoint and report its test metrics at the end.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath
from flax import nnx

from reformer_jax import data as data_lib
from reformer_jax import sharding as shd
from reformer_jax.checkpoint import BestCheckpoint, TrainCheckpointer
from reformer_jax.config import ReformerConfig
from reformer_jax.paths import as_path
from reformer_jax.runtime import release_free_memory
from reformer_jax.train.metrics import MetricWriter
from reformer_jax.train.optimizer import make_optimizer, make_schedule
from reformer_jax.train.tasks import Carry, LMTask, Task, is_better, make_task, model_config

# Settings that must match to resume in an existing workdir (the rest may change). The model is
# compared resolved (every field, defaults filled in), not as the config file spelled it: a run
# whose file listed a few fields resumes under train.py, which records every field.
RESUME_KEYS = ("optimizer", "seed", "batch_size", "data", "task", "classifier")
# What a workdir recorded before a setting existed means.
_RESUME_DEFAULTS = {"task": "lm"}


class TrainingError(RuntimeError):
    """A run that cannot start or continue; the message says why and what to do."""


@dataclasses.dataclass
class TrainResult:
    """What a run did. ``best`` (step and validation metrics of the best checkpoint) and
    ``test_metrics`` (that checkpoint on the test split) are set for tasks with a best metric."""

    step: int
    train_metrics: list[dict[str, float]]
    eval_metrics: dict[str, float]
    hash_table: dict[str, float] | None
    interrupted: bool = False
    best: dict[str, float] | None = None
    test_metrics: dict[str, float] | None = None


def validate_train_config(config: ml_collections.ConfigDict) -> None:
    def fail(setting: str, problem: str, fix: str) -> None:
        raise ValueError(f"config.{setting}: {problem}; {fix}")

    for name in (
        "num_steps",
        "batch_size",
        "grad_accum_steps",
        "log_every",
        "eval_every",
        "eval_batches",
        "checkpoint_every",
        "keep_checkpoints",
    ):
        value = config[name]
        # eval_batches 0: one whole pass over a finite evaluation split.
        low = 0 if name in ("num_steps", "eval_batches") else 1
        if not isinstance(value, int) or value < low:
            fail(name, f"must be an integer >= {low}, got {value!r}", f"set it to {low} or more")
    if config.batch_size % config.grad_accum_steps:
        fail(
            "grad_accum_steps",
            f"{config.grad_accum_steps} does not divide batch_size {config.batch_size}",
            "choose a divisor of batch_size",
        )
    if not config.learning_rate > 0:
        fail("learning_rate", f"must be > 0, got {config.learning_rate}", "use e.g. 1e-3")
    if config.seq_len < 2:
        fail("seq_len", f"must be >= 2, got {config.seq_len}", "use a longer sequence")


def _jsonable(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return json.loads(config.to_json_best_effort())


def _model_config(config: ml_collections.ConfigDict, vocab_size: int) -> ReformerConfig:
    """The language model's config for data of ``vocab_size`` tokens (`tasks.model_config`)."""
    return model_config(config, vocab_size, config.seq_len)


def _check_workdir(workdir: epath.Path, record: dict[str, Any]) -> bool:
    """True when the workdir holds a compatible run to resume; raises when incompatible."""
    config_path = workdir / "config.json"
    if workdir.exists() and not workdir.is_dir():
        raise TrainingError(f"--workdir {workdir} is a file; pass a new or empty directory")
    if not config_path.exists():
        if workdir.exists() and any(workdir.iterdir()):
            raise TrainingError(
                f"--workdir {workdir} is not empty and holds no run (no config.json): refusing "
                "to write into it; pass a new or empty directory"
            )
        return False
    previous = json.loads(config_path.read_text())
    before, now = previous.get("train", {}), record["train"]
    diffs = [
        k
        for k in RESUME_KEYS
        if before.get(k, _RESUME_DEFAULTS.get(k)) != now.get(k, _RESUME_DEFAULTS.get(k))
    ]
    if _resolved_model(previous.get("model")) != json.loads(json.dumps(record["model"])):
        diffs.append("model (resolved)")
    if diffs:
        raise TrainingError(
            f"{workdir} holds a run with different settings ({', '.join(sorted(set(diffs)))}); "
            "nothing was changed. Resume it with its own config, or pass a new --workdir"
        )
    return True


def _resolved_model(values: Any) -> Any:
    """A workdir's recorded model config with the current defaults filled in.

    Runs recorded before a setting existed (e.g. ``residual``) resolve to its default, so they
    still resume; records that no longer parse are compared as they are (and so differ).
    """
    try:
        return json.loads(json.dumps(ReformerConfig.from_dict(values).to_dict()))
    except (TypeError, ValueError):
        return values


class _Preemption:
    """Turns SIGTERM / SIGINT into a flag the loop checks, so it can checkpoint and exit."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Preemption:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handlers
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def make_task_train_step(task: Task, graphdef, tx, accum: int, seed: int):
    """The pure step of ``task``: (params, opt_state, carry, batch, step) ->
    (params, opt_state, carry, metrics).

    Dropout keys come from (seed, step); LSH rotations are fresh every step unless the model
    config fixes ``hash_seed``. With ``accum`` > 1 the batch and the carry are split along their
    leading axis into ``accum`` micro-batches (rows ``i * B / accum ...`` form micro-batch i) whose
    gradients are weighted by their ``sums["weight"]``: the same update as the whole batch.
    """

    def loss_fn(params, batch, carry, key, hash_key):
        model = nnx.merge(graphdef, params)
        loss, sums, carry = task.loss(model, batch, carry, dropout_rng=key, hash_rng=hash_key)
        return loss, (sums, carry)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def accumulate(params, batch, carry, key, hash_key):
        def split(x):
            return x.reshape(accum, x.shape[0] // accum, *x.shape[1:])

        micro, micro_carry = jax.tree.map(split, batch), jax.tree.map(split, carry)

        def body(acc, xs):
            mb, mc, i = xs
            # Dropout differs per micro-batch; random draws are the step's, as without
            # accumulation.
            (_, (sums, mc)), g = grad_fn(params, mb, mc, jax.random.fold_in(key, i), hash_key)
            acc_g, acc_sums = acc
            # Weight each micro-batch by its scored tokens: the mean over the global batch.
            acc_g = jax.tree.map(lambda a, b: a + b * sums["weight"], acc_g, g)
            return (acc_g, jax.tree.map(jnp.add, acc_sums, sums)), mc

        first = jax.tree.map(lambda x: x[0], (micro, micro_carry))
        sums_shape = jax.eval_shape(loss_fn, params, *first, key, hash_key)[1][0]
        zeros = (
            jax.tree.map(jnp.zeros_like, params),
            jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), sums_shape),
        )
        (grads, sums), carries = jax.lax.scan(body, zeros, (micro, micro_carry, jnp.arange(accum)))
        grads = jax.tree.map(lambda g: g / jnp.maximum(sums["weight"], 1.0), grads)
        carry = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), carries)
        return grads, sums, carry

    def step_fn(params, opt_state, carry, batch, step):
        key = jax.random.fold_in(jax.random.key(seed), step)
        hash_key = None
        if getattr(task.model_cfg, "hash_seed", None) is None:
            hash_key = jax.random.fold_in(key, 2**31 - 3)  # fresh rotations / features every step
        if accum == 1:
            (_, (sums, carry)), grads = grad_fn(params, batch, carry, key, hash_key)
        else:
            grads, sums, carry = accumulate(params, batch, carry, key, hash_key)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = {
            "param_norm": optax.tree.norm(params),
            **task.summarize(sums),
            "grad_norm": optax.tree.norm(grads),
        }
        return params, opt_state, carry, metrics

    return step_fn


def make_train_step(graphdef, tx, model_cfg: ReformerConfig, accum: int, seed: int):
    """The language-model step without carry: (params, opt_state, batch, step) ->
    (params, opt_state, metrics). `make_task_train_step` with `LMTask` (benchmarks use it)."""
    step_fn = make_task_train_step(LMTask(model_cfg), graphdef, tx, accum, seed)

    def lm_step(params, opt_state, batch, step):
        params, opt_state, _, metrics = step_fn(params, opt_state, None, batch, step)
        return params, opt_state, metrics

    return lm_step


def make_task_eval_step(task: Task, graphdef):
    """(params, carry, batch) -> (metric sums, carry): deterministic (no dropout, fixed hash)."""

    def eval_fn(params, carry, batch):
        model = nnx.merge(graphdef, params)
        _, sums, carry = task.loss(model, batch, carry, dropout_rng=None, hash_rng=None)
        return sums, carry

    return eval_fn


def make_eval_step(graphdef, task: Task | None = None):
    """(params, batch) -> metric sums for a stateless task (default: language modelling, whose
    sums are ``loss_sum``, ``weight`` and ``correct``)."""
    eval_fn = make_task_eval_step(task or LMTask(), graphdef)
    return lambda params, batch: eval_fn(params, None, batch)[0]


def _batch_dict(batch: Any, task: Task) -> dict[str, np.ndarray]:
    return {name: getattr(batch, name) for name in task.batch_fields}


def init_carry(task: Task, batch_size: int, mesh, *, train: bool = True) -> Carry:
    """``task.init_carry`` as global arrays sharded along the batch (None when stateless)."""
    if jax.eval_shape(lambda: task.init_carry(batch_size, train=train)) is None:
        return None
    make = functools.partial(task.init_carry, batch_size, train=train)
    return jax.jit(make, out_shardings=shd.batch_sharding(mesh))()


def evaluate(
    params,
    graphdef,
    source,
    config,
    mesh,
    *,
    model_cfg: ReformerConfig | None = None,
    task: Task | None = None,
    split: str = "eval",
) -> dict[str, float]:
    """The task's metrics (default: LM loss, accuracy, bits per token) on ``split``.

    Reads ``config.eval_batches`` batches (0: one whole pass over a finite split) of
    ``config.eval_batch_size`` rows. A stateful task threads its own evaluation carry through
    the batches, never the training one. ``model_cfg`` overrides the task's model config (the
    hash-count table evaluates the same weights under other attention settings).
    """
    if task is None:
        task = LMTask(model_cfg)
    elif model_cfg is not None:
        task = dataclasses.replace(task, model_cfg=model_cfg)
    if task.model_cfg is not None:
        eval_step = _eval_step(task)
    else:
        eval_step = jax.jit(make_task_eval_step(task, graphdef), donate_argnums=1)
    batch_size = config.eval_batch_size or config.batch_size
    count = config.eval_batches or None
    if count is None and source.num_batches(split, batch_size) is None:
        raise ValueError(
            f"config.eval_batches: 0 (one whole pass) needs a finite {split!r} split, and this "
            "source's is endless; set a number of batches"
        )
    carry = init_carry(task, batch_size, mesh, train=False)
    batches = source.batches(
        split,
        batch_size,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    totals: dict[str, float] = {}
    for batch in itertools.islice(batches, count):
        sums, carry = eval_step(params, carry, shd.global_batch(_batch_dict(batch, task), mesh))
        for k, v in sums.items():
            totals[k] = totals.get(k, 0.0) + float(v)
    return {k: float(v) for k, v in task.summarize(totals).items()}


def _graphdef(task: Task):
    return nnx.split(nnx.eval_shape(lambda: task.make_model(nnx.Rngs(0))), nnx.Param)[0]


@functools.lru_cache(maxsize=32)
def _eval_step(task: Task):
    """One jitted evaluation step per task (periodic evals reuse the compilation)."""
    return jax.jit(make_task_eval_step(task, _graphdef(task)), donate_argnums=1)


def hash_table(
    params, model_cfg: ReformerConfig, source, config, mesh, *, task: Task | None = None
) -> dict[str, float]:
    """Evaluation accuracy with exact shared-QK attention and with LSH at 1, 2, 4, 8 hashes.

    The paper's duplication table columns. Parameters do not depend on the hash count, so the
    same weights are evaluated under each setting.
    """
    table = {}
    # Longer than any sequence the task feeds (a classifier adds a CLS token).
    settings = [("full", model_cfg.replace(full_attention_below=config.seq_len + 2))]
    settings += [
        (f"lsh-{n}", model_cfg.replace(lsh_n_hashes=n, full_attention_below=0))
        for n in config.eval_hashes
    ]
    for name, cfg in settings:
        metrics = evaluate(params, None, source, config, mesh, model_cfg=cfg, task=task)
        table[name] = metrics["accuracy"]
    return table


def format_hash_table(table: dict[str, float], trained_with: str) -> str:
    head = "| trained \\ evaluated | " + " | ".join(table) + " |"
    sep = "|---" * (len(table) + 1) + "|"
    row = f"| {trained_with} | " + " | ".join(f"{100 * v:.1f}" for v in table.values()) + " |"
    return "\n".join([head, sep, row])


def _trained_with(cfg: ReformerConfig, seq_len: int) -> str:
    if "lsh" in cfg.attention_pattern and seq_len >= cfg.full_attention_below:
        return f"lsh-{cfg.lsh_n_hashes}"
    return "full"


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str | os.PathLike
) -> TrainResult:
    """Trains (or resumes) the run described by ``config`` in ``workdir`` (local or
    ``gs://``)."""
    workdir = as_path(workdir)
    validate_train_config(config)
    source = data_lib.get_source(config.data.name, config.data.settings)
    if source.seq_len != config.seq_len:
        raise ValueError(
            f"config.seq_len ({config.seq_len}) differs from the data source's "
            f"seq_len ({source.seq_len}); set config.data.settings.seq_len too"
        )
    task = make_task(config, source)
    record = {"model": task.model_cfg.to_dict(), "train": _jsonable(config)}
    resuming = _check_workdir(workdir, record)
    mesh = shd.make_mesh(config.mesh_shape)
    _check_batch(config, mesh)
    # Every program is traced with the mesh set: the layers' activation sharding constraints
    # (shd.constrain_batch, shd.per_batch_shard) read it.
    with jax.set_mesh(mesh):
        return _train_on_mesh(config, workdir, source, task, record, resuming, mesh)


def _train_on_mesh(config, workdir, source, task, record, resuming, mesh) -> TrainResult:
    """The loop of `train_and_evaluate` (the mesh is set)."""
    schedule, tx = _optimizer(config)
    workdir.mkdir(parents=True, exist_ok=True)
    state = _TrainState.start(config, task, tx, mesh, workdir, resuming)
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(json.dumps(record, indent=2, sort_keys=True))

    writer = MetricWriter(workdir)
    batch_iter: Iterator = source.batches(
        "train",
        config.batch_size,
        start_step=state.step,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    pending = _batch_dict(next(batch_iter), task)
    compiled = state.compile_step(task, tx, config, mesh, pending, writer)
    best = _BestTracker(workdir, task.best_metric) if task.best_metric else None

    history: list[dict[str, float]] = []
    eval_metrics: dict[str, float] = {}
    interrupted = False
    progress = _progress(state.step, config.num_steps)
    clock = _StepClock(config.batch_size * config.seq_len)
    with _Preemption() as preemption:
        while state.step < config.num_steps:
            metrics = state.run(compiled, shd.global_batch(pending, mesh))
            step = state.step
            if step < config.num_steps:
                pending = _batch_dict(next(batch_iter), task)  # overlaps with the device step
            if config.get("stop_at_step") and step == config.stop_at_step:
                # Simulated preemption (tests): the same path as a real SIGTERM.
                preemption.signal = signal.SIGTERM
            # One snapshot per step: a signal arriving later in this iteration is handled
            # (saved, then exit) at the end of the next one, never exited on without a save.
            signalled = preemption.signal
            last = step == config.num_steps
            save_now = step % config.checkpoint_every == 0 or last or signalled is not None
            if save_now or step % config.log_every == 0:
                # Never checkpoint a diverged state: check before every save as well.
                values = _finite_metrics(metrics, step, state.checkpointer)
            if step % config.log_every == 0 or last:
                values.update(learning_rate=float(schedule(step)), **clock.rates(config, step))
                history.append({"step": step, **values})
                writer.write(step, "train", values)
                if progress is not None:
                    shown = {k: f"{values[k]:.3f}" for k in ("loss", "accuracy") if k in values}
                    progress.set_postfix(**shown)
            if progress is not None:
                progress.update(1)
            if step % config.eval_every == 0 or last:
                eval_metrics = evaluate(state.params, None, source, config, mesh, task=task)
                writer.write(step, "eval", eval_metrics)
                shown = ", ".join(f"{k} {v:.4f}" for k, v in eval_metrics.items())
                _log(f"step {step}: eval {shown}")
                if best is not None:
                    best.offer(step, state.params, eval_metrics)
            if save_now:
                state.save()
            if signalled is not None:
                interrupted = True
                _log(
                    f"received signal {signalled}: checkpoint saved at step {state.step}; "
                    "rerun the same command to resume"
                )
                break
    if progress is not None:
        progress.close()
    state.checkpointer.close()

    result = TrainResult(state.step, history, eval_metrics, None, interrupted)
    if not interrupted:
        _final_evaluations(result, state, task, best, source, config, mesh, writer, workdir)
    if best is not None:
        best.store.close()
    writer.close()
    return result


def _optimizer(config: ml_collections.ConfigDict):
    """(learning-rate schedule, optax transformation) of ``config``."""
    schedule = make_schedule(
        config.schedule, config.learning_rate, config.warmup_steps, config.num_steps
    )
    tx = make_optimizer(
        config.optimizer,
        schedule,
        b1=config.adam_b1,
        b2=config.adam_b2,
        eps=config.adam_eps,
        weight_decay=config.weight_decay,
        grad_clip=config.grad_clip,
    )
    return schedule, tx


def _check_batch(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
    if config.batch_size % shd.data_parallel_size(mesh):
        raise ValueError(
            f"config.batch_size {config.batch_size} is not divisible by the data-parallel "
            f"axes ({shd.data_parallel_size(mesh)} devices: data x fsdp); adjust one of them"
        )


def _state_shardings(tx, abstract_params: Any, mesh: jax.sharding.Mesh):
    """(parameter shardings, abstract optimizer state, its shardings): the training state's
    layout on ``mesh``, shared by the loop and `build_train_step`."""
    param_sharding = shd.param_shardings(mesh, abstract_params)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    opt_sharding = optax.tree_map_params(
        tx,
        # Adam's moments mirror their parameter; Adafactor's factored rows/columns do not.
        lambda leaf, sharding: (
            sharding if leaf.ndim == len(sharding.spec) else shd.replicated(mesh)
        ),
        abstract_opt,
        param_sharding,
        transform_non_params=lambda _: shd.replicated(mesh),
    )
    return param_sharding, abstract_opt, opt_sharding


@dataclasses.dataclass(frozen=True)
class TrainStep:
    """The jitted language-model training step for one config on one mesh, and its parts.

    ``step(params, opt_state, batch, step) -> (params, opt_state, metrics)``: the loop's step
    (`make_task_train_step` with `LMTask`, no carry) with the loop's optimizer, shardings and
    donation. Ahead-of-time compilation (``bench/aot_tpu.py``) compiles it for pods.
    """

    step: Any
    mesh: jax.sharding.Mesh
    graphdef: Any
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    abstract_params: Any
    param_sharding: Any
    abstract_opt: Any
    opt_sharding: Any

    def abstract_args(self, batch_size: int, seq_len: int) -> tuple[Any, ...]:
        """Sharded ``jax.ShapeDtypeStruct`` arguments of ``step`` (nothing allocated)."""
        rows = shd.batch_sharding(self.mesh)
        batch = {
            name: jax.ShapeDtypeStruct((batch_size, seq_len), dtype, sharding=rows)
            for name, dtype in (
                ("inputs", jnp.int32),
                ("targets", jnp.int32),
                ("weights", jnp.float32),
            )
        }
        return (
            _with_shardings(self.abstract_params, self.param_sharding),
            _with_shardings(self.abstract_opt, self.opt_sharding),
            batch,
            jax.ShapeDtypeStruct((), jnp.int32, sharding=shd.replicated(self.mesh)),
        )


def build_train_step(
    config: ml_collections.ConfigDict, model_cfg: ReformerConfig, mesh: jax.sharding.Mesh
) -> TrainStep:
    """Optimizer, shardings and the jitted LM step for ``config`` on ``mesh`` (no arrays)."""
    _check_batch(config, mesh)
    schedule, tx = _optimizer(config)
    task = LMTask(model_cfg)
    graphdef, abstract_params = nnx.split(
        nnx.eval_shape(lambda: task.make_model(nnx.Rngs(0))), nnx.Param
    )
    param_sharding, abstract_opt, opt_sharding = _state_shardings(tx, abstract_params, mesh)
    step = jax.jit(
        make_train_step(graphdef, tx, model_cfg, config.grad_accum_steps, config.seed),
        in_shardings=(param_sharding, opt_sharding, shd.batch_sharding(mesh), None),
        out_shardings=(param_sharding, opt_sharding, shd.replicated(mesh)),
        donate_argnums=(0, 1),
    )
    return TrainStep(
        step,
        mesh,
        graphdef,
        tx,
        schedule,
        abstract_params,
        param_sharding,
        abstract_opt,
        opt_sharding,
    )


def _with_shardings(abstract: Any, shardings: Any) -> Any:
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )


@dataclasses.dataclass
class _TrainState:
    """Parameters, optimizer state and the task's carry at ``step``, with their shardings and
    their checkpoints (saved together, restored together)."""

    params: Any
    opt_state: Any
    carry: Carry
    step: int
    graphdef: Any
    shardings: tuple[Any, Any, Any]  # params, opt_state, carry
    params_target: Any  # abstract params with shardings (restoring any checkpoint of them)
    checkpointer: TrainCheckpointer

    @classmethod
    def start(cls, config, task: Task, tx, mesh, workdir: epath.Path, resuming: bool):
        """Fresh parameters (seeded by ``config.seed``), or the latest checkpoint when resuming."""
        graphdef, abstract_params = nnx.split(
            nnx.eval_shape(lambda: task.make_model(nnx.Rngs(0))), nnx.Param
        )
        param_sharding, abstract_opt, opt_sharding = _state_shardings(tx, abstract_params, mesh)
        carry_sharding = shd.batch_sharding(mesh)
        params_target = _with_shardings(abstract_params, param_sharding)
        checkpointer = TrainCheckpointer(
            workdir, keep=config.keep_checkpoints, save_every=config.checkpoint_every
        )
        carry = init_carry(task, config.batch_size, mesh)
        step, restored = 0, None
        if resuming and checkpointer.latest_step() is not None:
            opt_target = _with_shardings(abstract_opt, opt_sharding)
            # Falls back past damaged steps (moved aside, one line each); raises if none loads.
            restored = checkpointer.restore_latest_good(params_target, opt_target, log=_log)
        if restored is not None:
            step, params, opt_state, _ = restored
            if carry is not None:
                carry_target = jax.tree.map(
                    lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=carry_sharding),
                    carry,
                )
                saved_carry = checkpointer.restore_carry(step, carry_target)
                carry = carry if saved_carry is None else saved_carry
            _log(f"resumed from step {step} in {workdir}")
        else:
            params = jax.jit(
                lambda: nnx.state(task.make_model(nnx.Rngs(config.seed)), nnx.Param),
                out_shardings=param_sharding,
            )()
            opt_state = jax.jit(tx.init, out_shardings=opt_sharding)(params)
        shardings = (param_sharding, opt_sharding, carry_sharding)
        return cls(params, opt_state, carry, step, graphdef, shardings, params_target, checkpointer)

    def compile_step(self, task: Task, tx, config, mesh, example_batch, writer: MetricWriter):
        """The jitted, compiled train step (memory use logged and written as ``compile``)."""
        params_s, opt_s, carry_s = self.shardings
        step_fn = make_task_train_step(
            task, self.graphdef, tx, config.grad_accum_steps, config.seed
        )
        train_step = jax.jit(
            step_fn,
            in_shardings=(params_s, opt_s, carry_s, shd.batch_sharding(mesh), None),
            out_shardings=(params_s, opt_s, carry_s, shd.replicated(mesh)),
            donate_argnums=(0, 1, 2),
        )
        batch = shd.global_batch(example_batch, mesh)
        compiled = train_step.lower(
            self.params, self.opt_state, self.carry, batch, jnp.int32(self.step)
        ).compile()
        release_free_memory()  # the compiler's freed memory, before the steps allocate theirs
        memory = compiled.memory_analysis()
        if memory is not None:
            _log(
                f"train step compiled: temp {memory.temp_size_in_bytes / 2**20:.1f} MiB, "
                f"arguments {memory.argument_size_in_bytes / 2**20:.1f} MiB"
            )
            sizes = {
                "temp_bytes": memory.temp_size_in_bytes,
                "argument_bytes": memory.argument_size_in_bytes,
            }
            writer.write(self.step, "compile", sizes)
        return compiled

    def run(self, compiled, batch) -> dict[str, jax.Array]:
        """One step; returns its metrics (on device)."""
        self.params, self.opt_state, self.carry, metrics = compiled(
            self.params, self.opt_state, self.carry, batch, jnp.int32(self.step)
        )
        self.step += 1
        return metrics

    def save(self) -> None:
        meta = {"step": self.step, "data_step": self.step}
        self.checkpointer.save(self.step, self.params, self.opt_state, meta, carry=self.carry)


def _finite_metrics(metrics, step: int, checkpointer: TrainCheckpointer) -> dict[str, float]:
    """The step's metrics as floats; raises (keeping the last good checkpoint) on divergence."""
    values = {k: float(v) for k, v in metrics.items()}
    if not (math.isfinite(values["loss"]) and math.isfinite(values["param_norm"])):
        checkpointer.wait()
        raise TrainingError(
            f"loss became {values['loss']} (parameter norm {values['param_norm']}) "
            f"at step {step}; stopping. The last good checkpoint (step "
            f"{checkpointer.latest_step()}) is kept in {checkpointer.directory}; "
            "lower config.learning_rate or enable config.grad_clip"
        )
    return values


class _StepClock:
    """Seconds per step and tokens per second between two log lines."""

    def __init__(self, tokens_per_step: int):
        self.tokens_per_step = tokens_per_step
        self.last = time.perf_counter()

    def rates(self, config, step: int) -> dict[str, float]:
        now = time.perf_counter()
        elapsed = (now - self.last) / config.log_every
        self.last = now
        return {
            "step_time": elapsed,
            "tokens_per_second": self.tokens_per_step / max(elapsed, 1e-9),
        }


class _BestTracker:
    """Keeps the checkpoint with the best validation metric (``(name, "max" | "min")``)."""

    def __init__(self, workdir: epath.Path, best_metric: tuple[str, str]):
        self.best_metric = best_metric
        self.store = BestCheckpoint(workdir)
        self.meta = self.store.meta()  # a resumed run continues from its best so far

    def offer(self, step: int, params, metrics: dict[str, float]) -> None:
        name = self.best_metric[0]
        old = None if self.meta is None else self.meta["metrics"][name]
        if is_better(self.best_metric, metrics[name], old):
            self.store.save(step, params, metrics)
            self.meta = {"step": step, "metrics": dict(metrics)}

    def summary(self) -> dict[str, float] | None:
        return None if self.meta is None else {"step": self.meta["step"], **self.meta["metrics"]}


def _final_evaluations(
    result: TrainResult, state: _TrainState, task: Task, best, source, config, mesh, writer, workdir
) -> None:
    """The hash-count table (LSH models, ``config.eval_hashes``) and, for tasks with a best
    metric, the test metrics of the best validation checkpoint."""
    model_cfg = task.model_cfg
    if config.get("eval_hashes") and model_cfg and "lsh" in model_cfg.attention_pattern:
        table = hash_table(state.params, model_cfg, source, config, mesh, task=task)
        text = format_hash_table(table, _trained_with(model_cfg, config.seq_len))
        _log("evaluation accuracy by attention at evaluation time:\n" + text)
        writer.text("hash_table", text, state.step)
        if jax.process_index() == 0:
            (workdir / "hash_table.json").write_text(json.dumps(table, indent=2))
        result.hash_table = table
    if best is None or best.meta is None:
        return
    params = best.store.restore(state.params_target)
    result.best = best.summary()
    result.test_metrics = evaluate(params, None, source, config, mesh, task=task, split="test")
    writer.write(best.meta["step"], "test", result.test_metrics)
    _log(
        f"best validation {task.best_metric[0]} {result.best[task.best_metric[0]]:.4f} at step "
        f"{result.best['step']}; its test accuracy {result.test_metrics['accuracy']:.4f}"
    )
    if jax.process_index() == 0:
        summary = {"best": result.best, "test": result.test_metrics}
        (workdir / "best.json").write_text(json.dumps(summary, indent=2))


def _progress(start: int, total: int):
    if jax.process_index() != 0:
        return None
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=start,
        desc="train",
        unit="step",
        dynamic_ncols=True,
        file=sys.stderr,
        mininterval=1.0,
    )


def _log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)
