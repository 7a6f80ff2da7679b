"""Training: tasks, optimizers, metrics and the loop (the sharding rules are
:mod:`reformer_jax.sharding`, shared with the layers)."""

from __future__ import annotations

import sys
from typing import Any

import jax
import ml_collections

__all__ = ["TrainResult", "TrainingError", "run_main", "train_and_evaluate"]


def __getattr__(name: str) -> Any:
    # The loop is imported on first use, so that importing a light submodule (the optimizers,
    # the metrics) does not load the model, the data sources and the checkpointing.
    if name in ("TrainResult", "TrainingError", "train_and_evaluate"):
        from reformer_jax.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run_main(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    distributed: bool = False,
) -> int:
    """Entry point behind ``train.py``: multi-host set-up, then train; returns an exit code."""
    from reformer_jax.checkpoint import CheckpointError
    from reformer_jax.train.trainer import TrainingError, train_and_evaluate

    if coordinator_address or num_processes or process_id is not None:
        if not (coordinator_address and num_processes and process_id is not None):
            print(
                "error: multi-host needs --coordinator_address, --num_processes and "
                "--process_id together",
                file=sys.stderr,
            )
            return 2
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    elif distributed:
        jax.distributed.initialize()
    try:
        result = train_and_evaluate(config, workdir)
    except (TrainingError, CheckpointError, ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 3 if result.interrupted else 0
