"""Metric sinks: JSON lines, TensorBoard event files, and the console (process 0 only)."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import jax

from reformer_jax.paths import as_path, is_uri


class MetricWriter:
    """Writes scalars to ``<workdir>/metrics.jsonl`` and TensorBoard (``<workdir>/tb``)."""

    def __init__(self, workdir: str | os.PathLike, *, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.workdir = as_path(workdir)
        self._jsonl = None
        self._tb = None
        if self.enabled:
            self._jsonl = (self.workdir / "metrics.jsonl").open("a")
            try:
                if is_uri(self.workdir):
                    # tensorboardX writes buckets itself, through google-cloud-storage
                    import google.cloud.storage  # noqa: F401
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(self.workdir / "tb"))
            except ImportError:  # no TensorBoard files there; metrics.jsonl is still written
                self._tb = None

    def write(self, step: int, split: str, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in values.items()}
        record = {"step": int(step), "split": split, "time": time.time(), **clean}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for name, value in clean.items():
                if math.isfinite(value):
                    self._tb.add_scalar(f"{split}/{name}", value, step)

    def text(self, tag: str, value: str, step: int = 0) -> None:
        if self.enabled and self._tb is not None:
            self._tb.add_text(tag, value, step)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
