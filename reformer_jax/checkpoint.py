"""Everything orbax: model exports (config + parameters) and training checkpoints with resume.

Layout of a model export (``save_model``), also the ``model/`` item of every training step:

    <dir>/config.json        the ReformerConfig as JSON
    <dir>/params/            orbax StandardCheckpointer tree of the model's nnx.State

Training checkpoints (``TrainCheckpointer``) live in ``<workdir>/checkpoints/<step>/`` with
items ``params`` / ``opt_state`` (orbax, asynchronous), ``meta`` (JSON: step, data position,
config) and, for tasks that carry state across steps, ``carry`` (e.g. Transformer-XL's memories),
written through one ``CheckpointManager``; orbax writes to a temporary directory and renames, so
an interrupted save never leaves a half-written step behind. Tasks that select their best
checkpoint on the validation split keep it in ``<workdir>/best/<step>/`` (``params`` and ``meta``
with the validation metrics; ``BestCheckpoint``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from reformer_jax.config import ReformerConfig
from reformer_jax.model import ReformerLM
from reformer_jax.paths import as_path

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
# Training steps that fail to restore are moved here (beside ``checkpoints/``), kept for
# inspection; later saves of the same step number then do not collide with them.
DAMAGED_DIR = "checkpoints_damaged"


class CheckpointError(RuntimeError):
    """No checkpoint of a run can be restored; the message says what to do."""


def config_to_json(cfg: ReformerConfig) -> str:
    return json.dumps(cfg.to_dict(), indent=2, sort_keys=True)


def config_from_json(text: str) -> ReformerConfig:
    return ReformerConfig.from_dict(json.loads(text))


def save_model(
    directory: str | os.PathLike, model: ReformerLM, *, overwrite: bool = False
) -> epath.Path:
    """Exports ``model`` (config + parameters) to ``directory``; never overwrites silently."""
    directory = as_path(directory)
    if directory.exists() and any(directory.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{directory} already exists and is not empty; choose a new directory or pass "
                "overwrite=True"
            )
    directory.mkdir(parents=True, exist_ok=True)
    state = nnx.state(model, nnx.Param)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / PARAMS_DIR, state, force=overwrite)
        checkpointer.wait_until_finished()
    (directory / CONFIG_FILE).write_text(config_to_json(model.cfg))
    return directory


def load_model(
    directory: str | os.PathLike, *, sharding: Any = None, **config_overrides: Any
) -> ReformerLM:
    """Loads a model written by :func:`save_model` (or the ``model`` part of a train step).

    ``config_overrides`` change settings that do not affect parameter shapes (e.g.
    ``lsh_n_hashes`` for evaluation, ``hash_seed``, ``dtype``, dropout rates).
    """
    directory = as_path(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.exists():
        raise FileNotFoundError(
            f"{config_path} not found: {directory} is not a reformer_jax model export (expected "
            f"{CONFIG_FILE} and {PARAMS_DIR}/ written by save_model or the converter)"
        )
    record = json.loads(config_path.read_text())
    if "model" in record and "train" in record:
        raise FileNotFoundError(
            f"{directory} is a training run's workdir, not a model export; load it with "
            "load_model_from_workdir (sample.py --workdir)"
        )
    cfg = ReformerConfig.from_dict(record)
    if config_overrides:
        cfg = cfg.replace(**config_overrides)
    abstract = nnx.eval_shape(lambda: ReformerLM(cfg, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract, nnx.Param)
    target = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), abstract_state
    )
    with ocp.StandardCheckpointer() as checkpointer:
        state = checkpointer.restore(directory / PARAMS_DIR, target)
    return nnx.merge(graphdef, state)


class TrainCheckpointer:
    """Training checkpoints in ``<workdir>/checkpoints``: params, optimizer state, metadata.

    Saves are asynchronous (orbax writes in the background; :meth:`wait` blocks) and atomic
    (a step directory appears only once complete). Restoring takes abstract targets carrying the
    current run's shardings, so a run can resume on another mesh or device count.
    """

    def __init__(self, workdir: str | os.PathLike, *, keep: int = 3, save_every: int = 1000):
        self.directory = as_path(workdir) / "checkpoints"
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            save_interval_steps=1,
            enable_async_checkpointing=True,
            create=True,
        )
        self.save_every = save_every
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("params", "opt_state", "meta", "carry")
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, params: Any, opt_state: Any, meta: dict, carry: Any = None) -> None:
        """Saves a step; ``carry`` (the task's state across steps) only when it is not None."""
        items = dict(
            params=ocp.args.StandardSave(params),
            opt_state=ocp.args.StandardSave(opt_state),
            meta=ocp.args.JsonSave(meta),
        )
        if carry is not None:
            items["carry"] = ocp.args.StandardSave(carry)
        self.manager.save(step, args=ocp.args.Composite(**items))

    def restore_carry(self, step: int, target: Any) -> Any:
        """The carry saved at ``step`` (restored onto ``target``'s shardings); None if absent."""
        if target is None or not (self.directory / str(step) / "carry").exists():
            return None
        restored = self.manager.restore(
            step, args=ocp.args.Composite(carry=ocp.args.StandardRestore(target))
        )
        return restored["carry"]

    def restore(self, step: int, params_target: Any, opt_target: Any) -> tuple[Any, Any, dict]:
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(params_target),
                opt_state=ocp.args.StandardRestore(opt_target),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return restored["params"], restored["opt_state"], dict(restored["meta"])

    def restore_latest_good(
        self,
        params_target: Any,
        opt_target: Any,
        *,
        log: Callable[[str], None] = print,
    ) -> tuple[int, Any, Any, dict] | None:
        """Restores the newest step that loads and verifies; None when there is no checkpoint.

        A step is damaged when orbax cannot read it (truncated or missing array files, bad
        metadata), when its metadata names another step, or when a restored array holds NaN /
        inf (the trainer never saves a diverged state). Damaged steps newer than the restored
        one are moved to ``<workdir>/checkpoints_damaged/<step>`` (one line each through
        ``log``). When no step loads, nothing is moved and :class:`CheckpointError` says so.
        """
        steps = sorted(self.manager.all_steps(), reverse=True)
        if not steps:
            return None
        _silence_closed_loop_callbacks()
        damaged: list[tuple[int, str]] = []
        for step in steps:
            problem = self._verify(step, params_target, opt_target)
            if isinstance(problem, str):
                damaged.append((step, problem))
                continue
            params, opt_state, meta = problem
            for bad, why in damaged:
                if jax.process_index() == 0:  # one process renames (a shared file system)
                    moved = self._move_aside(bad)
                    log(
                        f"checkpoint step {bad} is damaged ({why}); moved to {moved}, "
                        f"resuming from step {step}"
                    )
            if damaged:
                if jax.process_count() > 1:
                    from jax.experimental import multihost_utils

                    multihost_utils.sync_global_devices("reformer_jax_damaged_checkpoints")
                self.manager.reload()
            return step, params, opt_state, meta
        listing = ", ".join(f"{s} ({why})" for s, why in damaged)
        raise CheckpointError(
            f"no checkpoint in {self.directory} can be restored: {listing}; nothing was moved. "
            "Start over in a new --workdir (or move the checkpoints directory aside)"
        )

    def _verify(self, step: int, params_target: Any, opt_target: Any) -> tuple | str:
        """The restored (params, opt_state, meta) of ``step``, or why it cannot be used."""
        try:
            params, opt_state, meta = self.restore(step, params_target, opt_target)
        except Exception as err:  # orbax / TensorStore raise many kinds on damaged files
            lines = str(err).strip().splitlines() or [type(err).__name__]
            return f"{type(err).__name__}: {lines[0][:120]}"
        if meta.get("step", step) != step:
            return f"its metadata says step {meta.get('step')}"
        for leaf in jax.tree.leaves((params, opt_state)):
            if _is_float(leaf) and not bool(jnp.isfinite(leaf).all()):
                return "non-finite values"
        return params, opt_state, meta

    def _move_aside(self, step: int) -> epath.Path:
        source = self.directory / str(step)
        target_dir = self.directory.parent / DAMAGED_DIR
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / str(step)
        suffix = 1
        while target.exists():  # a step damaged twice keeps both copies
            target = target_dir / f"{step}.{suffix}"
            suffix += 1
        source.rename(target)
        return target

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


class BestCheckpoint:
    """The parameters with the best validation metric so far, in ``<workdir>/best``.

    Only one step is kept (a save happens only on improvement). ``meta`` holds the step and the
    validation metrics, so a resumed run knows the value to beat.
    """

    def __init__(self, workdir: str | os.PathLike):
        self.directory = as_path(workdir) / "best"
        options = ocp.CheckpointManagerOptions(
            max_to_keep=1, enable_async_checkpointing=True, create=True
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("params", "meta")
        )

    def meta(self) -> dict | None:
        """``{"step": ..., "metrics": {...}}`` of the best step, or None before the first."""
        step = self.manager.latest_step()
        if step is None:
            return None
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def save(self, step: int, params: Any, metrics: dict[str, float]) -> None:
        meta = {"step": int(step), "metrics": {k: float(v) for k, v in metrics.items()}}
        self.manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta)
            ),
        )

    def restore(self, params_target: Any) -> Any:
        self.manager.wait_until_finished()
        step = self.manager.latest_step()
        restored = self.manager.restore(
            step, args=ocp.args.Composite(params=ocp.args.StandardRestore(params_target))
        )
        return restored["params"]

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _silence_closed_loop_callbacks() -> None:
    """Drops the "Event loop is closed" errors a failed orbax restore leaves behind.

    When one array of a damaged step fails to read, orbax gives up and closes its event loop
    while TensorStore still completes the other reads; each completion then reports (through
    ``sys.unraisablehook``) that it found the loop closed: dozens of tracebacks, all harmless.
    Every other unraisable error still reaches the previous hook.
    """
    previous = sys.unraisablehook
    if getattr(previous, "drops_closed_loop_errors", False):
        return

    def hook(unraisable: Any) -> None:
        error = unraisable.exc_value
        if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
            return
        previous(unraisable)

    hook.drops_closed_loop_errors = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def _is_float(leaf: Any) -> bool:
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.floating)


def load_model_from_workdir(
    workdir: str | os.PathLike, step: int | None = None, **config_overrides: Any
) -> ReformerLM:
    """The model of a training run's latest (or given) checkpoint in ``workdir``."""
    workdir = as_path(workdir)
    config_path = workdir / CONFIG_FILE
    if not config_path.exists():
        raise FileNotFoundError(
            f"{config_path} not found: {workdir} is not a reformer_jax training workdir"
        )
    record = json.loads(config_path.read_text())
    if "model" not in record or "train" not in record:
        raise FileNotFoundError(
            f"{config_path} is not a training run's config (no 'model'/'train' entries); for a "
            "model export written by save_model or the converter use load_model instead"
        )
    task = record["train"].get("task", "lm")
    if task not in ("lm", "lm_memory"):  # both train a ReformerLM
        raise ValueError(
            f"{workdir} trained the {task!r} task; load_model_from_workdir loads language models "
            "only (restore a classifier with reformer_jax.train.tasks and TrainCheckpointer)"
        )
    cfg = ReformerConfig.from_dict(record["model"])
    if config_overrides:
        cfg = cfg.replace(**config_overrides)
    directory = workdir / "checkpoints"
    steps = training_steps(directory)
    if step is None:
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {directory}; train first")
        step = steps[-1]
    elif step not in steps:
        raise FileNotFoundError(
            f"no checkpoint of step {step} in {directory}; the steps there are {steps}"
        )
    abstract = nnx.eval_shape(lambda: ReformerLM(cfg, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract, nnx.Param)
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), abstract_state)
    _silence_closed_loop_callbacks()
    # A plain checkpointer on the step's params item: a read-only CheckpointManager would log
    # three warnings about its options on every load.
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            params = checkpointer.restore(directory / str(step) / "params", target)
    except Exception as err:  # orbax / TensorStore raise many kinds on damaged files
        earlier = [s for s in steps if s < step]
        fix = f"pass step={earlier[-1]} (--step)" if earlier else "train again"
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        raise CheckpointError(
            f"checkpoint step {step} in {directory} cannot be read ({first_line}); {fix}, or "
            "resume the run with train.py, which moves damaged steps aside"
        ) from None
    return nnx.merge(graphdef, params)


def training_steps(directory: str | os.PathLike) -> list[int]:
    """The completed steps in a ``checkpoints`` directory, ascending (orbax's temporary
    directories of unfinished saves are not steps)."""
    directory = epath.Path(directory)
    if not directory.is_dir():
        return []
    return sorted(
        int(p.name) for p in directory.iterdir() if p.name.isdigit() and (p / "params").is_dir()
    )
