"""The training loop: ``train_and_evaluate(config, workdir)``.

One jitted step with explicit shardings over a ``(data, model)`` mesh, donated state, a per-step
PRNG key derived from (seed, step), gradient accumulation over micro-batches, periodic
evaluation, asynchronous orbax checkpoints with exact resume, and metrics to JSON lines,
TensorBoard and a progress bar.
"""

from __future__ import annotations

import dataclasses
import functools
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
from reformer_jax.checkpoint import TrainCheckpointer
from reformer_jax.config import ReformerConfig
from reformer_jax.model import ReformerLM, lm_loss
from reformer_jax.paths import as_path
from reformer_jax.runtime import release_free_memory
from reformer_jax.train import sharding as shd
from reformer_jax.train.metrics import MetricWriter
from reformer_jax.train.optimizer import make_optimizer, make_schedule

# Settings that must match to resume in an existing workdir (the rest may change). The model is
# compared resolved (every field, defaults filled in), not as the config file spelled it: a run
# whose file listed a few fields resumes under train.py, which records every field.
RESUME_KEYS = ("optimizer", "seed", "batch_size", "data")


class TrainingError(RuntimeError):
    """A run that cannot start or continue; the message says why and what to do."""


@dataclasses.dataclass
class TrainResult:
    step: int
    train_metrics: list[dict[str, float]]
    eval_metrics: dict[str, float]
    hash_table: dict[str, float] | None
    interrupted: bool = False


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
        if not isinstance(value, int) or value < (0 if name == "num_steps" else 1):
            fail(name, f"must be a positive integer, got {value!r}", "set it to 1 or more")
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
    values = dict(config.model.to_dict())
    if values.get("vocab_size") is None:  # absent or an empty placeholder: the data's
        values["vocab_size"] = vocab_size
    cfg = ReformerConfig.from_dict(values)
    if cfg.vocab_size < vocab_size:
        raise ValueError(
            f"config.model.vocab_size: {cfg.vocab_size} is smaller than the data's vocabulary "
            f"({vocab_size}); raise it to at least {vocab_size}"
        )
    cfg.check_length(config.seq_len)
    return cfg


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
    diffs = [k for k in RESUME_KEYS if previous.get("train", {}).get(k) != record["train"].get(k)]
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


def make_train_step(graphdef, tx, model_cfg: ReformerConfig, accum: int, seed: int):
    """The pure step: (params, opt_state, batch, step) -> (params, opt_state, metrics)."""

    def loss_fn(params, batch, key, hash_key):
        model = nnx.merge(graphdef, params)
        logits = model(batch["inputs"], dropout_rng=key, hash_rng=hash_key)
        loss, weight = lm_loss(logits, batch["targets"], batch["weights"])
        correct = (jnp.argmax(logits[:, :-1], -1) == batch["targets"][:, 1:]) * batch["weights"][
            :, 1:
        ]
        return loss, (weight, jnp.sum(correct))

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step_fn(params, opt_state, batch, step):
        key = jax.random.fold_in(jax.random.key(seed), step)
        hash_key = None
        if model_cfg.hash_seed is None:
            hash_key = jax.random.fold_in(key, 2**31 - 3)  # fresh rotations every step
        if accum == 1:
            (loss, (weight, correct)), grads = grad_fn(params, batch, key, hash_key)
        else:
            micro = jax.tree.map(
                lambda x: x.reshape(accum, x.shape[0] // accum, *x.shape[1:]), batch
            )

            def body(carry, xs):
                mb, i = xs
                # Dropout differs per micro-batch; LSH rotations are the step's, as without
                # accumulation.
                (mb_loss, (w, c)), g = grad_fn(params, mb, jax.random.fold_in(key, i), hash_key)
                acc_g, acc_l, acc_w, acc_c = carry
                # Weight each micro-batch by its scored tokens: the mean over the global batch.
                acc_g = jax.tree.map(lambda a, b: a + b * w, acc_g, g)
                return (acc_g, acc_l + mb_loss * w, acc_w + w, acc_c + c), None

            zeros = jax.tree.map(jnp.zeros_like, params)
            (grads, loss_sum, weight, correct), _ = jax.lax.scan(
                body, (zeros, 0.0, 0.0, 0.0), (micro, jnp.arange(accum))
            )
            denom = jnp.maximum(weight, 1.0)
            grads = jax.tree.map(lambda g: g / denom, grads)
            loss = loss_sum / denom
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = {
            "param_norm": optax.tree.norm(params),
            "loss": loss,
            "accuracy": correct / jnp.maximum(weight, 1.0),
            "grad_norm": optax.tree.norm(grads),
            "tokens": weight,
        }
        return params, opt_state, metrics

    return step_fn


@dataclasses.dataclass(frozen=True)
class TrainStep:
    """The jitted training step of ``train.py`` for one config on one mesh, and its parts.

    ``step(params, opt_state, batch, step) -> (params, opt_state, metrics)`` has explicit
    in/out shardings and donates the parameters and optimizer state. The same object feeds the
    training loop and ahead-of-time compilation (``bench/aot_tpu.py``), so what is compiled for a
    pod is what trains.
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

        def placed(tree: Any, shardings: Any) -> Any:
            return jax.tree.map(
                lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings
            )

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
            placed(self.abstract_params, self.param_sharding),
            placed(self.abstract_opt, self.opt_sharding),
            batch,
            jax.ShapeDtypeStruct((), jnp.int32, sharding=shd.replicated(self.mesh)),
        )


def build_train_step(
    config: ml_collections.ConfigDict, model_cfg: ReformerConfig, mesh: jax.sharding.Mesh
) -> TrainStep:
    """Optimizer, shardings and the jitted step for ``config`` on ``mesh`` (no arrays made)."""
    if config.batch_size % shd.data_parallel_size(mesh):
        raise ValueError(
            f"config.batch_size {config.batch_size} is not divisible by the data-parallel "
            f"axes ({shd.data_parallel_size(mesh)} devices: data x fsdp); adjust one of them"
        )
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
    abstract_model = nnx.eval_shape(lambda: ReformerLM(model_cfg, rngs=nnx.Rngs(0)))
    graphdef, abstract_params = nnx.split(abstract_model, nnx.Param)
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
    step_fn = make_train_step(graphdef, tx, model_cfg, config.grad_accum_steps, config.seed)
    step = jax.jit(
        step_fn,
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


def make_eval_step(graphdef):
    def eval_fn(params, batch):
        model = nnx.merge(graphdef, params)
        logits = model(batch["inputs"])
        loss, weight = lm_loss(logits, batch["targets"], batch["weights"])
        correct = (jnp.argmax(logits[:, :-1], -1) == batch["targets"][:, 1:]) * batch["weights"][
            :, 1:
        ]
        return {"loss_sum": loss * weight, "weight": weight, "correct": jnp.sum(correct)}

    return eval_fn


def _as_dict(batch: data_lib.Batch) -> dict[str, np.ndarray]:
    return {"inputs": batch.inputs, "targets": batch.targets, "weights": batch.weights}


def evaluate(
    params, graphdef, source, config, mesh, *, model_cfg: ReformerConfig | None = None
) -> dict[str, float]:
    """Loss, accuracy and bits per token on ``config.eval_batches`` held-out batches."""
    eval_step = (
        _eval_step(model_cfg) if model_cfg is not None else jax.jit(make_eval_step(graphdef))
    )
    totals = {"loss_sum": 0.0, "weight": 0.0, "correct": 0.0}
    batches = source.batches(
        "eval",
        config.eval_batch_size or config.batch_size,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    for i, batch in enumerate(batches):
        if i >= config.eval_batches:
            break
        out = eval_step(params, shd.global_batch(_as_dict(batch), mesh))
        for k in totals:
            totals[k] += float(out[k])
    weight = max(totals["weight"], 1.0)
    loss = totals["loss_sum"] / weight
    return {
        "loss": loss,
        "accuracy": totals["correct"] / weight,
        "bits_per_token": loss / math.log(2),
    }


@functools.lru_cache(maxsize=32)
def _eval_step(cfg: ReformerConfig):
    """One jitted evaluation step per model config (periodic evals reuse the compilation)."""
    graphdef = nnx.split(nnx.eval_shape(lambda: ReformerLM(cfg, rngs=nnx.Rngs(0))), nnx.Param)[0]
    return jax.jit(make_eval_step(graphdef))


def hash_table(params, model_cfg: ReformerConfig, source, config, mesh) -> dict[str, float]:
    """Evaluation accuracy with exact shared-QK attention and with LSH at 1, 2, 4, 8 hashes.

    The paper's duplication table columns. Parameters do not depend on the hash count, so the
    same weights are evaluated under each setting.
    """
    table = {}
    settings = [("full", model_cfg.replace(full_attention_below=config.seq_len + 1))]
    settings += [
        (f"lsh-{n}", model_cfg.replace(lsh_n_hashes=n, full_attention_below=0))
        for n in config.eval_hashes
    ]
    for name, cfg in settings:
        table[name] = evaluate(params, None, source, config, mesh, model_cfg=cfg)["accuracy"]
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
    model_cfg = _model_config(config, source.vocab_size)
    record = {"model": model_cfg.to_dict(), "train": _jsonable(config)}
    resuming = _check_workdir(workdir, record)

    mesh = shd.make_mesh(config.mesh_shape)
    parts = build_train_step(config, model_cfg, mesh)
    schedule, tx = parts.schedule, parts.tx
    abstract_params, param_sharding = parts.abstract_params, parts.param_sharding
    abstract_opt, opt_sharding = parts.abstract_opt, parts.opt_sharding

    def init_params():
        model = ReformerLM(model_cfg, rngs=nnx.Rngs(config.seed))
        return nnx.state(model, nnx.Param)

    workdir.mkdir(parents=True, exist_ok=True)
    checkpointer = TrainCheckpointer(
        workdir, keep=config.keep_checkpoints, save_every=config.checkpoint_every
    )
    start_step = 0
    restored = None
    if resuming and checkpointer.latest_step() is not None:
        params_target = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            abstract_params,
            param_sharding,
        )
        opt_target = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            abstract_opt,
            opt_sharding,
        )
        # Falls back past damaged steps (moved aside, one line each); raises if none loads.
        restored = checkpointer.restore_latest_good(params_target, opt_target, log=_log)
    if restored is not None:
        start_step, params, opt_state, _ = restored
        _log(f"resumed from step {start_step} in {workdir}")
    else:
        params = jax.jit(init_params, out_shardings=param_sharding)()
        opt_state = jax.jit(tx.init, out_shardings=opt_sharding)(params)
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(json.dumps(record, indent=2, sort_keys=True))

    train_step = parts.step
    writer = MetricWriter(workdir)
    batch_iter: Iterator = source.batches(
        "train",
        config.batch_size,
        start_step=start_step,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    first = _as_dict(next(batch_iter))
    compiled = train_step.lower(
        params, opt_state, shd.global_batch(first, mesh), jnp.int32(start_step)
    ).compile()
    release_free_memory()  # the compiler's freed memory, before the steps allocate theirs
    memory = compiled.memory_analysis()
    if memory is not None:
        _log(
            f"train step compiled: temp {memory.temp_size_in_bytes / 2**20:.1f} MiB, "
            f"arguments {memory.argument_size_in_bytes / 2**20:.1f} MiB"
        )
        writer.write(
            start_step,
            "compile",
            {
                "temp_bytes": memory.temp_size_in_bytes,
                "argument_bytes": memory.argument_size_in_bytes,
            },
        )

    history: list[dict[str, float]] = []
    eval_metrics: dict[str, float] = {}
    interrupted = False
    step = start_step
    progress = _progress(start_step, config.num_steps)
    tokens_per_step = config.batch_size * config.seq_len
    pending = first
    last_log = time.perf_counter()
    with _Preemption() as preemption:
        while step < config.num_steps:
            batch = shd.global_batch(pending, mesh)
            params, opt_state, metrics = compiled(params, opt_state, batch, jnp.int32(step))
            step += 1
            if step < config.num_steps:
                pending = _as_dict(next(batch_iter))  # overlaps with the device step
            stop_here = config.get("stop_at_step") and step == config.stop_at_step
            if stop_here:
                # Simulated preemption (tests): the same path as a real SIGTERM.
                preemption.signal = signal.SIGTERM
            # One snapshot per step: a signal arriving later in this iteration is handled
            # (saved, then exit) at the end of the next one, never exited on without a save.
            signalled = preemption.signal
            save_now = (
                step % config.checkpoint_every == 0
                or step == config.num_steps
                or signalled is not None
            )
            if save_now or step % config.log_every == 0:
                # Never checkpoint a diverged state: check before every save as well.
                values = {k: float(v) for k, v in metrics.items()}
                if not (math.isfinite(values["loss"]) and math.isfinite(values["param_norm"])):
                    checkpointer.wait()
                    raise TrainingError(
                        f"loss became {values['loss']} (parameter norm {values['param_norm']}) "
                        f"at step {step}; stopping. The last good checkpoint (step "
                        f"{checkpointer.latest_step()}) is kept in {checkpointer.directory}; "
                        "lower config.learning_rate or enable config.grad_clip"
                    )
            if step % config.log_every == 0 or step == config.num_steps:
                metrics = values
                now = time.perf_counter()
                elapsed = (now - last_log) / config.log_every
                last_log = now
                metrics.update(
                    bits_per_token=metrics["loss"] / math.log(2),
                    learning_rate=float(schedule(step)),
                    step_time=elapsed,
                    tokens_per_second=tokens_per_step / max(elapsed, 1e-9),
                )
                history.append({"step": step, **metrics})
                writer.write(step, "train", metrics)
                if progress is not None:
                    progress.set_postfix(
                        loss=f"{metrics['loss']:.3f}", acc=f"{metrics['accuracy']:.3f}"
                    )
            if progress is not None:
                progress.update(1)
            if step % config.eval_every == 0 or step == config.num_steps:
                eval_metrics = evaluate(params, None, source, config, mesh, model_cfg=model_cfg)
                writer.write(step, "eval", eval_metrics)
                _log(
                    f"step {step}: eval loss {eval_metrics['loss']:.4f}, accuracy "
                    f"{eval_metrics['accuracy']:.4f}"
                )
            if save_now:
                checkpointer.save(step, params, opt_state, {"step": step, "data_step": step})
            if signalled is not None:
                interrupted = True
                _log(
                    f"received signal {signalled}: checkpoint saved at step {step}; "
                    "rerun the same command to resume"
                )
                break
    if progress is not None:
        progress.close()
    checkpointer.close()

    table = None
    if not interrupted and config.get("eval_hashes") and "lsh" in model_cfg.attention_pattern:
        table = hash_table(params, model_cfg, source, config, mesh)
        text = format_hash_table(table, _trained_with(model_cfg, config.seq_len))
        _log("evaluation accuracy by attention at evaluation time:\n" + text)
        writer.text("hash_table", text, step)
        if jax.process_index() == 0:
            (workdir / "hash_table.json").write_text(json.dumps(table, indent=2))
    writer.close()
    return TrainResult(step, history, eval_metrics, table, interrupted)


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
