"""MetricWriter (reformer_jax/train/metrics.py): JSON lines and TensorBoard, process 0 only."""

import json
import math

import numpy as np

from reformer_jax.train.metrics import MetricWriter


def test_json_lines_hold_every_value_and_non_finite_values_survive(tmp_path):
    """Catches a writer that drops or renames values, casts steps wrongly, overwrites the file
    on resume instead of appending, or crashes on a non-finite value (a diverging run's last
    metrics must still be written to JSON even though TensorBoard skips them)."""
    writer = MetricWriter(tmp_path, enabled=True)
    writer.write(np.int64(3), "train", {"loss": np.float32(1.5), "accuracy": 0.25})
    writer.write(4, "eval", {"loss": float("nan")})
    writer.close()
    again = MetricWriter(tmp_path, enabled=True)  # a resumed run appends
    again.write(5, "train", {"loss": 1.0})
    again.close()
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in records] == [(3, "train"), (4, "eval"), (5, "train")]
    assert records[0]["loss"] == 1.5 and records[0]["accuracy"] == 0.25
    assert math.isnan(records[1]["loss"])
    assert list((tmp_path / "tb").iterdir())


def test_disabled_writer_writes_nothing(tmp_path):
    """Catches processes other than 0 writing (duplicated, interleaved metrics files)."""
    writer = MetricWriter(tmp_path, enabled=False)
    writer.write(1, "train", {"loss": 1.0})
    writer.text("tag", "text")
    writer.close()
    assert not list(tmp_path.iterdir())
