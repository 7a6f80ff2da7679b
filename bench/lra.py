"""Long Range Arena: every attention family through the same tasks, beside LRA's tables.

    python -m bench.lra [--preset cpu|lra] [--families a,b] [--tasks listops,pathfinder]
                        [--set FIELD=VALUE ...]   # a model field for every family (diagnostics)
    python -m bench.lra --dashboard --from-json bench/results/lra.json [--out-dir docs]

**The harness** (no ``--dashboard``) trains and evaluates every attention family x every task
of a preset and measures LRA's speed/memory protocol, writing the JSON below after every row
(``--resume`` keeps an interrupted file's finished rows; ``--merge`` joins files of parallel
runs). Families are the attention-kind registry (``reformer_jax.layers.attention.KINDS``), never
a list here: a family that registers a kind gets rows without a change to this module, run with
its config defaults (its ``<kind>_*`` fields; the shared encoder settings of the preset, e.g.
windows looking both ways, apply to every kind alike). Every family runs:

* the same encoder: `reformer_jax.classifier.SequenceClassifier` (bidirectional, learned
  positions, the preset's size, pooling per task as LRA: CLS, mean for Pathfinder), with only
  ``attention_pattern`` differing;
* the same data (the task's source, generated once with a fixed seed into ``--data-dir`` and
  read back by every family), the same steps, optimiser and seed (``--seed``: parameters, data
  order, dropout, random draws);
* the same evaluation: `reformer_jax.train.train_and_evaluate` with the classification task,
  which keeps the checkpoint of best validation accuracy and reports its test accuracy.

Tasks whose data is absent (Text: TFDS ``imdb_reviews`` in ``<data-dir>/tfds`` or
``aclImdb_v1.tar.gz`` in ``<data-dir>/manual``; Retrieval: LRA's ``tsv_data`` in
``<data-dir>/lra_release/tsv_data``; Image: TFDS ``cifar10`` or the archive in
``<data-dir>/manual``; Path-X: LRA's folder in ``<data-dir>/lra_release``) get "data not present"
rows saying what to place where; tasks outside the preset get "not run". A family whose kind
cannot build the bidirectional encoder at all (the config refuses ``causal=False``: e.g. the
causal-only Transformer-XL ``relative`` kind) gets "not applicable" rows carrying the config's
reason, and the dashboard prints that reason under each table.

Speed and memory (LRA Table 2): the byte-level text classifier (the preset's speed model, CLS
pooling, vocabulary 257 bytes + CLS) at 1K, 2K, 3K, 4K, 16K and 64K tokens; one training step
(forward, backward, Adam) compiled ahead of time, its memory from ``memory_analysis()`` (temp +
arguments + outputs - donated: deterministic, and available without running, so it is the fit
check: above the preset's budget the row is "out of memory"); timed (median of the preset's
steps after a warm-up step) up to the preset's longest timed length. The batch is IMDb's when
present, else synthetic bytes of the same shape (the row's settings say which).

Presets (`PRESETS`): ``cpu`` for this project's shared 2-core machine (see its description:
model size, steps, examples, lengths), ``lra`` LRA's published per-task sizes (its configs:
ListOps 6 layers x 512, 5,000 steps of 32 at 2K; Text 4 x 256 at 4K, 20,000 steps; Retrieval
4 x 128 at 4K; Image 1 x 32; Pathfinder 1 x 32, 200 epochs of 160,000 at batch 512; Table 2 at
batch 32 with a 16 GiB budget, one TPU v3 core), for an accelerator.

**The dashboard** renders ``docs/lra.md`` (tables, PNG plots next to it: ``lra_tradeoff.png``,
``lra_speed.png``, ``lra_memory.png``) and a self-contained ``docs/lra.html`` (the same tables,
sortable by a click on a column header; the plots embedded as base64 PNG; no external asset).
Rendering needs no JAX. ``--notes FILE`` renders a markdown file as the reading.

Every family found in the JSON gets a row, in order of first appearance. The published LRA
numbers (`LRA_TABLE1`, `LRA_TABLE2`, from the paper's Tables 1 and 2) are matched to a family
through the JSON's ``families`` record (the harness writes it: the ``sparse`` family is compared
with LRA's model of its pattern, BigBird by default) or else `LRA_MODEL_NAME`; a family LRA did
not run shows "-" in the LRA cells.

## Results JSON (``schema: "lra-results/1"``)

```
{
  "schema": "lra-results/1",
  "machine": {...},            # bench/machine.py's machine_info() of the machine that ran it
  "settings": {...},           # shared settings: preset name, model size, optimiser, steps, ...
  "notes": "markdown",         # optional: the reading of the results, rendered under "Reading"
  "families": {                # optional (the harness writes it): per family, the LRA model its
    "sparse": {"lra_model": "BigBird",        # rows are compared with, and its own settings
               "settings": {"sparse_pattern": "bigbird", ...}}
  },
  "accuracy": [                # one row per (family, task)
    {"family": "lsh", "task": "listops",   # task: one of TASKS' keys
     "status": "ok",           # "ok" | "not run" | "data not present" | "failed" |
                               # "out of memory" | "not applicable" (note: why)
     "test_accuracy": 0.371,   # fraction in [0, 1]: test split, best-validation checkpoint
     "validation_accuracy": 0.380,      # that checkpoint's validation accuracy
     "steps": 5000, "best_step": 4500, "seed": 0,
     "settings": {...},        # what differs from the shared settings (family parameters, ...)
     "note": "free text"}      # optional, shown in the "notes" column
  ],
  "speed": [                   # one row per (family, length): LRA Table 2 protocol (byte-level
    {"family": "lsh",          # text classifier, training steps; batch in the row)
     "length": 4096, "batch_size": 32,
     "status": "ok",           # "ok" | "out of memory" | "not run" | "failed" | "not applicable"
     "steps_per_s": 1.25,      # training steps per second (after compilation)
     "peak_memory_bytes": 2.4e9,  # memory of the compiled training step (memory_analysis);
                               # also on "out of memory" / "not run" (memory only) rows
     "settings": {...}, "note": "..."}
  ]
}
```

Missing numbers (or a status other than "ok") render as the status text ("not run" when a
(family, task) has no row at all). Speed is shown as steps/s relative to the family ``"full"``
at the same length (LRA's convention); where full attention has no measurement at a length
(typically out of memory beyond 4K-16K) the cell shows absolute steps/s.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import html
import io
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

SCHEMA = "lra-results/1"
REFERENCE_FAMILY = "full"
NOT_APPLICABLE = "not applicable"
STATUSES = ("ok", "not run", "data not present", "failed", "out of memory", NOT_APPLICABLE)

#: Task key -> column title (LRA's order).
TASKS: dict[str, str] = {
    "listops": "ListOps",
    "text": "Text",
    "retrieval": "Retrieval",
    "image": "Image",
    "pathfinder": "Pathfinder",
    "pathx": "Path-X",
}

#: LRA Table 1 (test accuracy, %; None = "fail", chance level). Model -> task -> accuracy.
LRA_TABLE1: dict[str, dict[str, float | None]] = {
    name: dict(zip([*TASKS, "avg"], values, strict=True))
    for name, values in {
        "Transformer": (36.37, 64.27, 57.46, 42.44, 71.40, None, 54.39),
        "Local attention": (15.82, 52.98, 53.39, 41.46, 66.63, None, 46.06),
        "Sparse Transformer": (17.07, 63.58, 59.59, 44.24, 71.71, None, 51.24),
        "Longformer": (35.63, 62.85, 56.89, 42.22, 69.71, None, 53.46),
        "Linformer": (35.70, 53.94, 52.27, 38.56, 76.34, None, 51.36),
        "Reformer": (37.27, 56.10, 53.40, 38.07, 68.50, None, 50.67),
        "BigBird": (36.05, 64.02, 59.29, 40.83, 74.87, None, 55.01),
        "Performer": (18.01, 65.40, 53.82, 42.77, 77.05, None, 51.41),
    }.items()
}

#: LRA Table 2 (byte-level Text, batch 32, TPU v3): steps/s relative to the Transformer at
#: 1K-4K (the Transformer's own row: absolute steps/s) and memory per device at 4K (GB).
LRA_TABLE2: dict[str, dict[str, Any]] = {
    "Transformer": {"steps_per_s": {1024: 8.1, 2048: 4.9, 3072: 2.3, 4096: 1.4}, "memory_gb": 9.48},
    "Local attention": {
        "relative": {1024: 1.1, 2048: 1.7, 3072: 3.2, 4096: 5.3},
        "memory_gb": 1.37,
    },
    "Linformer": {"relative": {1024: 1.2, 2048: 1.9, 3072: 3.7, 4096: 5.5}, "memory_gb": 0.99},
    "Reformer": {"relative": {1024: 0.5, 2048: 0.4, 3072: 0.7, 4096: 0.8}, "memory_gb": 2.28},
    "BigBird": {"relative": {1024: 0.9, 2048: 0.8, 3072: 1.2, 4096: 1.1}, "memory_gb": 2.88},
    "Performer": {"relative": {1024: 1.2, 2048: 1.9, 3072: 3.8, 4096: 5.7}, "memory_gb": 1.06},
}
LRA_TABLE2_MEMORY_LENGTH = 4096

#: This project's family name -> LRA's model name (families LRA did not run are absent).
LRA_MODEL_NAME: dict[str, str] = {
    "full": "Transformer",
    "local": "Local attention",
    "lsh": "Reformer",
    "sparse": "Sparse Transformer",
    "longformer": "Longformer",
    "linformer": "Linformer",
    "bigbird": "BigBird",
    "performer": "Performer",
}

NOT_RUN = "not run"


# ----------------------------------------------------------------------------------------------
# Results: building (the harness's side) and loading.


def new_results(machine: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """An empty results record (the schema of the module docstring)."""
    return {"schema": SCHEMA, "machine": machine, "settings": settings, "accuracy": [], "speed": []}


def _replace_row(rows: list[dict], row: dict, keys: tuple[str, ...]) -> None:
    for i, old in enumerate(rows):
        if all(old.get(k) == row[k] for k in keys):
            rows[i] = row
            return
    rows.append(row)


def add_accuracy(results: dict, family: str, task: str, *, status: str = "ok", **fields) -> dict:
    """Adds (or replaces) the accuracy row of ``(family, task)``; returns the row."""
    row = {"family": family, "task": task, "status": status, **fields}
    _check_row(row, "accuracy")
    _replace_row(results["accuracy"], row, ("family", "task"))
    return row


def add_speed(results: dict, family: str, length: int, *, status: str = "ok", **fields) -> dict:
    """Adds (or replaces) the speed/memory row of ``(family, length)``; returns the row."""
    row = {"family": family, "length": int(length), "status": status, **fields}
    _check_row(row, "speed")
    _replace_row(results["speed"], row, ("family", "length"))
    return row


def save_results(results: dict, path: str | os.PathLike) -> None:
    """Writes the JSON atomically (a crash never leaves half a file)."""
    validate(results)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)


def _check_row(row: dict, kind: str) -> None:
    where = f"lra results: {kind} row { ({k: row.get(k) for k in ('family', 'task', 'length')}) }"
    if not isinstance(row.get("family"), str) or not row["family"]:
        raise ValueError(f"{where}: 'family' must be a non-empty string")
    if row.get("status", "ok") not in STATUSES:
        raise ValueError(f"{where}: status {row.get('status')!r} is not one of {STATUSES}")
    if kind == "accuracy":
        if row.get("task") not in TASKS:
            raise ValueError(f"{where}: task must be one of {list(TASKS)}")
        for key in ("test_accuracy", "validation_accuracy"):
            v = row.get(key)
            if v is not None and not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"{where}: {key}={v} must be a fraction in [0, 1]")
    else:
        if not isinstance(row.get("length"), int) or row["length"] <= 0:
            raise ValueError(f"{where}: 'length' must be a positive integer")


def validate(results: dict) -> dict:
    """Checks the schema (one-line errors naming the field); returns ``results``."""
    if results.get("schema") != SCHEMA:
        raise ValueError(f"lra results: schema {results.get('schema')!r}; expected {SCHEMA!r}")
    for kind in ("accuracy", "speed"):
        if not isinstance(results.get(kind, []), list):
            raise ValueError(f"lra results: {kind!r} must be a list of rows")
        for row in results.get(kind, []):
            _check_row(row, kind)
    return results


def load_results(path: str | os.PathLike) -> dict:
    """Reads and validates a results JSON."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: run the LRA harness first (or pass "
            "--from-json with a results file)"
        )
    return validate(json.loads(path.read_text()))


# ----------------------------------------------------------------------------------------------
# Tables: (header, rows) of strings, shared by the markdown and the html renderers.


def families(results: dict) -> list[str]:
    """Families in order of first appearance (accuracy rows first, then speed rows)."""
    seen: dict[str, None] = {}
    for row in [*results.get("accuracy", []), *results.get("speed", [])]:
        seen.setdefault(row["family"], None)
    return list(seen)


def not_applicable(results: dict) -> dict[str, str]:
    """Family -> why it cannot run (the note of its first "not applicable" row)."""
    reasons: dict[str, str] = {}
    for row in [*results.get("accuracy", []), *results.get("speed", [])]:
        if row.get("status") == NOT_APPLICABLE:
            reasons.setdefault(row["family"], row.get("note") or "no reason recorded")
    return reasons


def _not_applicable_lines(results: dict) -> list[str]:
    return [f"{family}: not applicable: {why}" for family, why in not_applicable(results).items()]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _lra_acc(results: dict, family: str, task: str) -> str:
    model = lra_model(results, family)
    if model is None:
        return "-"
    v = LRA_TABLE1[model][task]
    return "fail" if v is None else f"{v:.2f}"


def _accuracy_row(results: dict, family: str, task: str) -> dict | None:
    for row in results.get("accuracy", []):
        if row["family"] == family and row["task"] == task:
            return row
    return None


def _ok(row: dict | None, key: str) -> bool:
    return row is not None and row.get("status", "ok") == "ok" and row.get(key) is not None


def mean_accuracy(results: dict, family: str) -> tuple[float | None, int]:
    """(mean test accuracy over the tasks with a result, number of those tasks)."""
    values = [
        float(r["test_accuracy"])
        for t in TASKS
        if _ok(r := _accuracy_row(results, family, t), "test_accuracy")
    ]
    return (sum(values) / len(values) if values else None), len(values)


def lra_mean_accuracy(results: dict, family: str) -> float | None:
    """LRA's published mean (%) over the tasks this family has a result for (LRA's "fail" counts
    as 50%, chance); None if LRA did not run the family or no task has a result."""
    model = lra_model(results, family)
    tasks = [t for t in TASKS if _ok(_accuracy_row(results, family, t), "test_accuracy")]
    if model is None or not tasks:
        return None
    values = [50.0 if LRA_TABLE1[model][t] is None else LRA_TABLE1[model][t] for t in tasks]
    return sum(values) / len(values)


def accuracy_table(results: dict) -> tuple[list[str], list[list[str]]]:
    """Test accuracy (%) per family and task, ours beside LRA Table 1."""
    header = ["family", "LRA model"]
    for title in TASKS.values():
        header += [f"{title} (ours)", f"{title} (LRA)"]
    header += ["avg (ours)", "avg (LRA, same tasks)", "avg (LRA, published)"]
    rows = []
    for family in families(results):
        row = [family, lra_model(results, family) or "-"]
        for task in TASKS:
            r = _accuracy_row(results, family, task)
            if _ok(r, "test_accuracy"):
                row.append(_pct(r["test_accuracy"]))
            else:
                row.append(NOT_RUN if r is None else r.get("status", NOT_RUN))
            row.append(_lra_acc(results, family, task))
        mean, n = mean_accuracy(results, family)
        row.append("-" if mean is None else f"{100 * mean:.2f} ({n} task{'s' * (n != 1)})")
        lra_mean = lra_mean_accuracy(results, family)
        row.append("-" if lra_mean is None else f"{lra_mean:.2f}")
        row.append(_lra_acc(results, family, "avg"))
        rows.append(row)
    return header, rows


def details_table(results: dict) -> tuple[list[str], list[list[str]]]:
    """One row per accuracy run: validation / test accuracy, steps, best step, seed, notes."""
    header = [
        "family",
        "task",
        "status",
        "validation %",
        "test %",
        "steps",
        "best step",
        "seed",
        "settings",
        "note",
    ]
    rows = []
    for r in results.get("accuracy", []):
        settings = r.get("settings") or {}
        rows.append(
            [
                r["family"],
                TASKS[r["task"]],
                r.get("status", "ok"),
                _pct(r.get("validation_accuracy")),
                _pct(r.get("test_accuracy")),
                str(r.get("steps", "-")),
                str(r.get("best_step", "-")),
                str(r.get("seed", "-")),
                ", ".join(f"{k}={v}" for k, v in settings.items()) or "-",
                r.get("note", "") or "-",
            ]
        )
    return header, rows


def _speed_rows(results: dict) -> dict[tuple[str, int], dict]:
    return {(r["family"], r["length"]): r for r in results.get("speed", [])}


def speed_lengths(results: dict) -> list[int]:
    return sorted({r["length"] for r in results.get("speed", [])})


def relative_speed(results: dict, family: str, length: int) -> float | None:
    """steps/s of ``family`` over steps/s of full attention at ``length`` (None if either lacks)."""
    rows = _speed_rows(results)
    mine, ref = rows.get((family, length)), rows.get((REFERENCE_FAMILY, length))
    if not (_ok(mine, "steps_per_s") and _ok(ref, "steps_per_s")):
        return None
    return float(mine["steps_per_s"]) / float(ref["steps_per_s"])


def _length_label(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def _lra_speed(results: dict, family: str, length: int) -> str:
    entry = LRA_TABLE2.get(lra_model(results, family) or "")
    if entry is None:
        return "-"
    if "steps_per_s" in entry:
        v = entry["steps_per_s"].get(length)
        return "-" if v is None else f"{v} steps/s"
    v = entry["relative"].get(length)
    return "-" if v is None else f"{v}x"


def speed_table(results: dict) -> tuple[list[str], list[list[str]]]:
    """Training steps/s relative to full attention per length, ours beside LRA Table 2.

    Full attention's own cells (and any cell at a length where full attention has no
    measurement) hold absolute steps/s.
    """
    lengths = speed_lengths(results)
    rows_by_key = _speed_rows(results)
    header = ["family"]
    for n in lengths:
        header.append(f"{_length_label(n)} (ours)")
        if n in LRA_TABLE2["Transformer"]["steps_per_s"]:
            header.append(f"{_length_label(n)} (LRA)")
    rows = []
    for family in families(results):
        row = [family]
        for n in lengths:
            r = rows_by_key.get((family, n))
            if not _ok(r, "steps_per_s"):
                row.append(NOT_RUN if r is None else r.get("status", NOT_RUN))
            elif family == REFERENCE_FAMILY:
                row.append(f"{float(r['steps_per_s']):.3g} steps/s")
            elif (rel := relative_speed(results, family, n)) is not None:
                row.append(f"{rel:.2f}x")
            else:
                ref = rows_by_key.get((REFERENCE_FAMILY, n))
                why = NOT_RUN if ref is None else ref.get("status", NOT_RUN)
                row.append(f"{float(r['steps_per_s']):.3g} steps/s (full: {why})")
            if n in LRA_TABLE2["Transformer"]["steps_per_s"]:
                row.append(_lra_speed(results, family, n))
        rows.append(row)
    return header, rows


def _bytes(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def memory_table(results: dict) -> tuple[list[str], list[list[str]]]:
    """Peak memory of the training step per length, and LRA's memory at 4K."""
    lengths = speed_lengths(results)
    rows_by_key = _speed_rows(results)
    header = ["family", *(_length_label(n) for n in lengths), "LRA at 4K"]
    rows = []
    for family in families(results):
        row = [family]
        for n in lengths:
            r = rows_by_key.get((family, n))
            if r is not None and r.get("peak_memory_bytes") is not None:
                row.append(_bytes(float(r["peak_memory_bytes"])))
            else:
                row.append(NOT_RUN if r is None else r.get("status", NOT_RUN))
        entry = LRA_TABLE2.get(lra_model(results, family) or "")
        row.append("-" if entry is None else f"{entry['memory_gb']} GB")
        rows.append(row)
    return header, rows


def tradeoff_length(results: dict) -> int | None:
    """The length of the trade-off plot: 4K if measured (LRA's), else the longest length at which
    full attention ran, else the longest length."""
    lengths = speed_lengths(results)
    if not lengths:
        return None
    if LRA_TABLE2_MEMORY_LENGTH in lengths:
        return LRA_TABLE2_MEMORY_LENGTH
    rows = _speed_rows(results)
    full = [n for n in lengths if _ok(rows.get((REFERENCE_FAMILY, n)), "steps_per_s")]
    return max(full) if full else max(lengths)


def tradeoff_points(results: dict) -> list[dict[str, Any]]:
    """Per family with both numbers: mean accuracy, speed (relative to full where it ran, else
    absolute steps/s) and peak memory at `tradeoff_length`."""
    n = tradeoff_length(results)
    rows = _speed_rows(results)
    points = []
    for family in families(results):
        acc, _ = mean_accuracy(results, family)
        r = rows.get((family, n))
        if acc is None or not _ok(r, "steps_per_s"):
            continue
        rel = relative_speed(results, family, n)
        points.append(
            {
                "family": family,
                "accuracy": acc,
                "speed": rel if rel is not None else float(r["steps_per_s"]),
                "relative": rel is not None,
                "memory_bytes": r.get("peak_memory_bytes"),
            }
        )
    return points


# ----------------------------------------------------------------------------------------------
# Plots (matplotlib, PNG bytes).


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def plot_tradeoff(results: dict) -> bytes:
    """Accuracy against speed, marker area proportional to memory; LRA's published points hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    points = tradeoff_points(results)
    mems = [p["memory_bytes"] for p in points if p["memory_bytes"]]
    scale = max(mems) if mems else 1.0
    for p in points:
        size = 40 + 800 * (p["memory_bytes"] or 0) / scale
        ax.scatter(p["speed"], 100 * p["accuracy"], s=size, alpha=0.6)
        ax.annotate(
            p["family"],
            (p["speed"], 100 * p["accuracy"]),
            fontsize=8,
            xytext=(4, 4),
            textcoords="offset points",
        )
    lra_scale = max(e["memory_gb"] for e in LRA_TABLE2.values())
    for i, (model, entry) in enumerate(LRA_TABLE2.items()):
        speed = 1.0 if "steps_per_s" in entry else entry["relative"][LRA_TABLE2_MEMORY_LENGTH]
        acc = LRA_TABLE1[model]["avg"]
        ax.scatter(
            speed,
            acc,
            s=40 + 800 * entry["memory_gb"] / lra_scale,
            facecolors="none",
            edgecolors="gray",
            linestyle="--",
        )
        ax.annotate(
            f"LRA {model}",
            (speed, acc),
            fontsize=7,
            color="gray",
            xytext=(4, -10 if i % 2 else 6),
            textcoords="offset points",
        )
    n = tradeoff_length(results)
    rel = all(p["relative"] for p in points)
    ax.set_xlabel(
        f"training steps/s {'relative to full attention ' if rel else ''}at length {n} (LRA: 4K)"
    )
    ax.set_ylabel("mean test accuracy over the tasks run (%)")
    ax.set_title("Accuracy vs speed (marker area: peak memory; hollow: LRA published)")
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_speed_memory(results: dict, key: str) -> bytes:
    """steps/s (``key="steps_per_s"``) or peak memory (``"peak_memory_bytes"``) against length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    rows = _speed_rows(results)
    for family in families(results):
        pts = [(n, rows[(family, n)]) for n in speed_lengths(results) if (family, n) in rows]
        pts = [(n, float(r[key])) for n, r in pts if _ok(r, key)]
        if pts:
            ys = [y / 2**30 if key == "peak_memory_bytes" else y for _, y in pts]
            ax.plot([n for n, _ in pts], ys, marker="o", label=family)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length")
    ax.set_ylabel("training steps/s" if key == "steps_per_s" else "peak memory (GiB)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _png(fig)


# ----------------------------------------------------------------------------------------------
# Renderers.


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def esc(s: str) -> str:
        return str(s).replace("|", "\\|")

    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(lines)


def _machine_line(results: dict) -> str:
    m = results.get("machine") or {}
    if not m:
        return "Machine: not recorded."
    keys = (
        "device_kind",
        "device_count",
        "cpu_model",
        "cpus_usable",
        "memory_total_gib",
        "backend",
        "jax",
        "flax",
        "date",
    )
    return "Machine: " + ", ".join(f"{k}={m[k]}" for k in keys if k in m) + "."


def _settings_items(results: dict) -> list[str]:
    """One ``key: value`` line per shared setting (nested values as compact JSON)."""
    items = []
    for key, value in (results.get("settings") or {}).items():
        if isinstance(value, dict | list):
            value = json.dumps(value, separators=(", ", ": "))
        items.append(f"{key}: {value}")
    return items


def _settings_line(results: dict) -> str:
    items = _settings_items(results)
    return ("Settings:\n\n" + "\n".join(f"- {i}" for i in items)) if items else ""


_SECTIONS = (
    (
        "Accuracy (LRA Table 1)",
        "accuracy",
        "Test accuracy (%) of the checkpoint with the best validation accuracy; LRA's published "
        "numbers beside ours. 'fail' is LRA's chance-level Path-X.",
    ),
    (
        "Speed (LRA Table 2)",
        "speed",
        "Training steps per second relative to full attention at the same length (full's own cells "
        "are absolute); LRA's numbers are TPU v3, batch 32, byte-level Text.",
    ),
    (
        "Memory (LRA Table 2)",
        "memory",
        "Peak memory of one training step (the harness: the compiled step's memory_analysis, "
        "temp + arguments + outputs - donated).",
    ),
    ("Runs", "details", "Every accuracy run."),
)


def _tables(results: dict) -> dict[str, tuple[list[str], list[list[str]]]]:
    return {
        "accuracy": accuracy_table(results),
        "speed": speed_table(results),
        "memory": memory_table(results),
        "details": details_table(results),
    }


def _plots(results: dict) -> dict[str, bytes]:
    plots = {}
    if tradeoff_points(results):
        plots["tradeoff"] = plot_tradeoff(results)
    if results.get("speed"):
        plots["speed"] = plot_speed_memory(results, "steps_per_s")
        plots["memory"] = plot_speed_memory(results, "peak_memory_bytes")
    return plots


_PLOT_TITLES = {
    "tradeoff": "Accuracy against speed, memory as marker size",
    "speed": "Training steps/s against length",
    "memory": "Peak memory against length",
}


def render_markdown(results: dict, plot_files: dict[str, str]) -> str:
    """docs/lra.md: tables, links to the PNG files (``plot_files``: plot name -> file name)."""
    tables = _tables(results)
    out = [
        "# Long Range Arena: every attention family, like for like",
        "",
        "Generated by `python -m bench.lra --dashboard --from-json bench/results/lra.json`; do "
        "not edit by hand (the reading comes from the JSON's `notes` or the file given as "
        "`--notes`). Every family runs through "
        "the same encoder, data, steps and evaluation, seeded (LRA's own rows are not like for "
        "like: per-model configs, an unseeded ListOps generator, dense-masked Longformer and "
        "Sparse Transformer).",
        "",
        _machine_line(results),
        "",
        _settings_line(results),
        "",
    ]
    for title, key, caption in _SECTIONS:
        header, rows = tables[key]
        out += [f"## {title}", "", caption, ""]
        out += [_md_table(header, rows) if rows else "No results.", ""]
        if rows and key != "details":
            out += [f"- {line}" for line in _not_applicable_lines(results)] + [""]
    for name, file in plot_files.items():
        out += [f"## {_PLOT_TITLES[name]}", "", f"![{_PLOT_TITLES[name]}]({file})", ""]
    if results.get("notes"):
        out += ["## Reading", "", results["notes"].strip(), ""]
    return "\n".join(out)


_SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(function (th) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0];
    var col = Array.prototype.indexOf.call(th.parentNode.children, th);
    var asc = th.dataset.dir !== 'asc'; th.dataset.dir = asc ? 'asc' : 'desc';
    var key = function (tr) {
      var t = tr.children[col].textContent.trim(), v = parseFloat(t);
      return isNaN(v) ? t : v;
    };
    Array.from(body.rows).sort(function (a, b) {
      var x = key(a), y = key(b), n = typeof x === 'number' && typeof y === 'number';
      var c = n ? x - y : (typeof x === 'number' ? -1 : typeof y === 'number' ? 1 :
                           String(x).localeCompare(String(y)));
      return asc ? c : -c;
    }).forEach(function (tr) { body.appendChild(tr); });
  });
});
"""

_CSS = """
body { font-family: sans-serif; margin: 2em; max-width: 110em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }
th { background: #eee; cursor: pointer; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; }
"""


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _html_inline(text: str) -> str:
    """Escaped text with markdown's ``**bold**`` and backtick code spans (the reading's markup)."""
    out = []
    for i, part in enumerate(html.escape(text).split("`")):
        if i % 2:
            out.append(f"<code>{part}</code>")
        else:
            bold = part.split("**")
            out.append("".join(f"<b>{b}</b>" if j % 2 else b for j, b in enumerate(bold)))
    return "".join(out)


def _html_paragraph(para: str) -> str:
    """A paragraph of the markdown reading: a pipe table becomes a table, anything else a <p>."""
    lines = [line.strip() for line in para.strip().splitlines()]
    if len(lines) >= 2 and all(line.startswith("|") for line in lines):
        cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
        body = [r for r in cells[1:] if not all(set(c) <= set("-: ") for c in r)]
        head = "".join(f"<th>{_html_inline(c)}</th>" for c in cells[0])
        rows = "".join(
            "<tr>" + "".join(f"<td>{_html_inline(c)}</td>" for c in r) + "</tr>" for r in body
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    return f"<p>{_html_inline(para)}</p>"


def render_html(results: dict, plots: dict[str, bytes]) -> str:
    """A self-contained page: inline CSS and JS, plots as base64 data URIs, no external asset."""
    e = html.escape
    tables = _tables(results)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>Long Range Arena: every attention family</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Long Range Arena: every attention family, like for like</h1>",
        f"<p>{e(_machine_line(results))}</p>",
        "<p>Settings:</p><ul>"
        + "".join(f"<li>{e(item)}</li>" for item in _settings_items(results))
        + "</ul>",
        "<p>Click a column header to sort.</p>",
    ]
    for title, key, caption in _SECTIONS:
        header, rows = tables[key]
        parts += [f"<h2>{e(title)}</h2>", f"<p>{e(caption)}</p>"]
        parts.append(_html_table(header, rows) if rows else "<p>No results.</p>")
        lines = _not_applicable_lines(results) if rows and key != "details" else []
        if lines:
            parts.append("<ul>" + "".join(f"<li>{e(line)}</li>" for line in lines) + "</ul>")
    for name, png in plots.items():
        data = base64.b64encode(png).decode("ascii")
        parts += [
            f"<h2>{e(_PLOT_TITLES[name])}</h2>",
            f'<img alt="{e(_PLOT_TITLES[name])}" src="data:image/png;base64,{data}">',
        ]
    if results.get("notes"):
        parts.append("<h2>Reading</h2>")
        for para in results["notes"].strip().split("\n\n"):
            parts.append(_html_paragraph(para))
    parts += [f"<script>{_SORT_JS}</script>", "</body></html>"]
    return "\n".join(parts)


def write_dashboard(results: dict, out_dir: str | os.PathLike = "docs") -> dict[str, Path]:
    """Writes ``lra.md``, ``lra.html`` and the ``lra_*.png`` plots into ``out_dir``."""
    validate(results)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = _plots(results)
    written: dict[str, Path] = {}
    plot_files = {}
    for name, png in plots.items():
        path = out_dir / f"lra_{name}.png"
        path.write_bytes(png)
        plot_files[name] = path.name
        written[name] = path
    written["md"] = out_dir / "lra.md"
    written["md"].write_text(render_markdown(results, plot_files))
    written["html"] = out_dir / "lra.html"
    written["html"].write_text(render_html(results, plots))
    return written


# ----------------------------------------------------------------------------------------------
# The harness: every registered attention kind x every task through the same encoder, data,
# steps and evaluation (``python -m bench.lra``). JAX is imported only here, lazily.

#: LRA's name of each sparse pattern (the "sparse" family is whichever pattern it runs).
LRA_SPARSE_MODEL: dict[str, str] = {
    "bigbird": "BigBird",
    "longformer": "Longformer",
    "strided": "Sparse Transformer",
    "fixed": "Sparse Transformer",
}


def lra_model_for(family: str, model_settings: dict[str, Any]) -> str | None:
    """LRA's model name for ``family`` run with ``model_settings`` (None if LRA has no row)."""
    if family == "sparse":
        return LRA_SPARSE_MODEL.get(model_settings.get("sparse_pattern", ""))
    return LRA_MODEL_NAME.get(family)


def lra_model(results: dict, family: str) -> str | None:
    """The LRA model a family's rows are compared with: the harness's record
    (``results["families"][family]["lra_model"]``) or `LRA_MODEL_NAME`."""
    record = (results.get("families") or {}).get(family) or {}
    if "lra_model" in record:
        return record["lra_model"]
    return LRA_MODEL_NAME.get(family)


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One LRA task at a preset. Model and training overrides apply to every family alike.

    ``data(data_dir)`` gives the source's constructor settings; ``prepare(data_dir, settings)``
    (optional) writes generated data once (so every family reads the same files).
    """

    source: str
    seq_len: int
    data: Callable[[Path], dict[str, Any]]
    pooling: str = "cls"
    model: dict[str, Any] = dataclasses.field(default_factory=dict)
    train: dict[str, Any] = dataclasses.field(default_factory=dict)
    prepare: Callable[[Path, dict[str, Any]], dict[str, Any]] | None = None
    describe: str = ""


@dataclasses.dataclass(frozen=True)
class Preset:
    """Everything shared by all families: encoder, training, tasks, speed protocol."""

    name: str
    description: str
    model: dict[str, Any]  # ReformerConfig fields of the encoder (every family, every task)
    train: dict[str, Any]  # training config fields
    tasks: dict[str, TaskSpec]  # the tasks this preset trains (others: "not run")
    speed_model: dict[str, Any]  # overrides of `model` for the speed/memory protocol
    speed_batch_size: int
    speed_lengths: tuple[int, ...]
    speed_time_max_length: int  # longer lengths: compiled memory only, not timed
    speed_steps: int  # timed steps per (family, length), after one warm-up step
    memory_budget_bytes: int  # compiled memory above this: "out of memory"


def _listops(seq_len: int, lo: int, hi: int, n: tuple[int, int, int]) -> Callable:
    def data(data_dir: Path) -> dict[str, Any]:
        return dict(
            data_dir=str(data_dir / f"listops-{lo}-{hi}-{n[0]}-{n[1]}-{n[2]}"),
            seq_len=seq_len,
            num_train=n[0],
            num_validation=n[1],
            num_test=n[2],
            min_length=lo,
            max_length=hi,
        )

    return data


def _pathfinder(resolution: int, n_images: int, difficulty: str = "hard") -> dict[str, Callable]:
    """LRA's released folder under ``data_dir/lra_release`` if present, else a generated folder
    of ``n_images`` at ``difficulty`` (80 / 10 / 10 % splits, as LRA cuts its folders)."""

    def data(data_dir: Path) -> dict[str, Any]:
        release = data_dir / "lra_release"
        if (release / f"pathfinder{resolution}").is_dir():
            return dict(resolution=resolution, difficulty=difficulty, data_dir=str(release))
        generated = data_dir / f"pathfinder-gen-{n_images}"
        if difficulty != "hard":  # hard keeps its original folder name
            generated = data_dir / f"pathfinder-gen-{difficulty}-{n_images}"
        return dict(resolution=resolution, difficulty=difficulty, data_dir=str(generated))

    def prepare(data_dir: Path, settings: dict[str, Any]) -> dict[str, Any]:
        from reformer_jax.data import pathfinder

        root = Path(settings["data_dir"])
        if (
            "lra_release" in root.parts
            or (root / f"pathfinder{resolution}" / pathfinder.LRA_DIRS[difficulty]).is_dir()
        ):
            return settings
        if resolution > 32:
            return settings  # Path-X is never generated by the harness (hours of drawing)
        # One process: forking after JAX has started threads can deadlock.
        pathfinder.write_lra_folder(root, n_images, resolution=resolution, difficulty=difficulty)
        return settings

    return dict(data=data, prepare=prepare)


def _tfds(name: str) -> Callable:
    def data(data_dir: Path) -> dict[str, Any]:
        return dict(data_dir=str(data_dir / "tfds"), manual_dir=str(data_dir / "manual"))

    return data


_CPU_MODEL = dict(
    d_model=64,
    d_ff=128,
    n_layers=2,
    n_heads=2,
    d_head=32,
    residual="standard",  # the same pre-LN stack for every family (LRA's was not reversible)
    # A bidirectional encoder: windowed kinds look one chunk both ways (settings of every
    # family's fields, shared: each kind reads only its own).
    local_chunks_after=1,
    lsh_chunks_after=1,
)

#: The presets. ``cpu``: sized for this project's shared 2-core machine (whole run about an
#: hour); ``lra``: LRA's published sizes (its configs in google-research/long-range-arena,
#: per task), for an accelerator.
PRESETS: dict[str, Preset] = {
    "cpu": Preset(
        name="cpu",
        description=(
            "2-layer pre-LN encoder, d_model 64, 2 heads of 32, d_ff 128 (about 0.1 M parameters); "
            "Adam 2e-3, 10% warm-up then cosine. ListOps: LRA's generator settings but lengths "
            "50-250 (seq_len 256; LRA 500-2,000 at seq_len 2,000), 10,000 / 1,000 / 1,000 "
            "examples (LRA 96,000 / 2,000 / 2,000), batch 16, 600 steps (LRA 5,000 of 32). "
            "Pathfinder-32 hard (LRA's setting, 1,024 pixels), 4,000 generated images (3,200 / "
            "400 / 400; LRA 160,000 / 20,000 / 20,000), batch 16, 150 steps (LRA about 62,000 of "
            "512). Speed: the same encoder as a byte-level classifier, batch 2. Sized for a shared "
            "2-core CPU (about an hour for every family): enough for ListOps to leave the majority "
            "class, far too short to learn Pathfinder (pilots: full attention stays at chance "
            "after 3,200 images of the easy setting too)"
        ),
        model=_CPU_MODEL,
        train=dict(learning_rate=2e-3, schedule="cosine", eval_batch_size=100),
        tasks={
            "listops": TaskSpec(
                "listops",
                256,
                _listops(256, 50, 250, (10_000, 1_000, 1_000)),
                pooling="cls",
                train=dict(batch_size=16, num_steps=600, warmup_steps=60, eval_every=100),
                describe="generated (seed 0), lengths 50-250, 10,000 / 1,000 / 1,000 examples",
            ),
            "pathfinder": TaskSpec(
                "pathfinder",
                1024,
                **_pathfinder(32, 4000),
                pooling="mean",  # LRA's choice for Pathfinder
                train=dict(batch_size=16, num_steps=150, warmup_steps=15, eval_every=50),
                describe="generated 32x32 hard, 4,000 images: 3,200 / 400 / 400",
            ),
            "text": TaskSpec("imdb", 1024, _tfds("imdb"), describe="IMDb bytes, 1K"),
            "retrieval": TaskSpec(
                "aan",
                1024,
                lambda d: dict(data_dir=str(d / "lra_release" / "tsv_data"), seq_len=1024),
                describe="AAN pairs, 1K bytes per document",
            ),
            "image": TaskSpec("cifar10", 1024, _tfds("cifar10"), describe="CIFAR-10 grayscale"),
        },
        speed_model={},
        speed_batch_size=2,
        speed_lengths=(1024, 2048, 3072, 4096, 16384, 65536),
        speed_time_max_length=65536,
        speed_steps=2,
        memory_budget_bytes=8 * 2**30,
    ),
}


def _lra_preset() -> Preset:
    # LRA's per-task configs (lra_benchmarks/*/configs/base_*_config.py): model sizes, batch,
    # steps and learning rates differ per task, never per model.
    rsqrt = dict(schedule="rsqrt", optimizer="adam", weight_decay=0.1)
    text_model = dict(d_model=256, n_heads=4, d_head=64, n_layers=4, d_ff=1024)
    # Path-X is trained here with the same model and settings as Pathfinder.
    pathfinder_model = dict(d_model=32, n_heads=2, d_head=8, n_layers=1, d_ff=32)
    pathfinder_train = dict(
        batch_size=512, num_steps=62_400, learning_rate=1e-3, warmup_steps=312, schedule="cosine"
    )
    return Preset(
        name="lra",
        description="LRA's published sizes per task (its configs); for an accelerator",
        model=dict(
            residual="standard",
            local_chunks_after=1,
            lsh_chunks_after=1,
            hidden_dropout=0.1,
        ),
        train=dict(eval_every=500, eval_batch_size=0, mesh_shape=(-1, 1)),
        tasks={
            "listops": TaskSpec(
                "listops",
                2000,
                _listops(2000, 500, 2000, (96_000, 2_000, 2_000)),
                model=dict(d_model=512, n_heads=8, d_head=64, n_layers=6, d_ff=2048),
                train=dict(
                    batch_size=32, num_steps=5000, learning_rate=0.05, warmup_steps=1000, **rsqrt
                ),
                describe="generated with LRA's settings (seed 0), 96,000 / 2,000 / 2,000",
            ),
            "text": TaskSpec(
                "imdb",
                4096,
                _tfds("imdb"),
                model=text_model,
                train=dict(
                    batch_size=32, num_steps=20000, learning_rate=0.05, warmup_steps=8000, **rsqrt
                ),
                describe="IMDb bytes, 4K",
            ),
            "retrieval": TaskSpec(
                "aan",
                4000,
                lambda d: dict(data_dir=str(d / "lra_release" / "tsv_data"), seq_len=4000),
                model=dict(d_model=128, n_heads=4, d_head=32, n_layers=4, d_ff=512),
                train=dict(
                    batch_size=32, num_steps=5000, learning_rate=0.05, warmup_steps=8000, **rsqrt
                ),
                describe="AAN pairs, 4K bytes per document",
            ),
            "image": TaskSpec(
                "cifar10",
                1024,
                _tfds("cifar10"),
                model=dict(d_model=32, n_heads=1, d_head=32, n_layers=1, d_ff=64),
                train=dict(
                    batch_size=256,
                    num_steps=35_000,
                    learning_rate=5e-4,
                    warmup_steps=175,
                    schedule="cosine",
                ),
                describe="CIFAR-10 grayscale",
            ),
            "pathfinder": TaskSpec(
                "pathfinder",
                1024,
                **_pathfinder(32, 200_000),
                pooling="mean",
                model=pathfinder_model,
                train=pathfinder_train,
                describe="LRA's folder if present, else 200,000 generated images",
            ),
            "pathx": TaskSpec(
                "pathx",
                16384,
                **_pathfinder(128, 200_000),
                pooling="mean",
                model=pathfinder_model,
                train=pathfinder_train,
                describe="LRA's released Path-X folder",
            ),
        },
        speed_model=text_model,
        speed_batch_size=32,
        speed_lengths=(1024, 2048, 3072, 4096, 16384, 65536),
        speed_time_max_length=65536,
        speed_steps=10,
        memory_budget_bytes=16 * 2**30,  # one TPU v3 core, LRA's Table 2 device
    )


PRESETS["lra"] = _lra_preset()


def registered_families() -> list[str]:
    """Every attention kind of the registry (``reformer_jax.layers.attention.KINDS``), in order."""
    from reformer_jax.layers.attention import KINDS

    return list(KINDS)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=list))


def family_settings(family: str, model_cfg: Any) -> dict[str, Any]:
    """The family's own config fields (`reformer_jax.layers.attention.kind_fields`: its
    ``<family>_*`` fields and those its kind declares it reads): what differs between families."""
    from reformer_jax.layers.attention import kind_fields

    values = model_cfg.to_dict()
    return {k: _jsonable(values[k]) for k in kind_fields(family)}


def _encoder_settings(preset: Preset, task: str | None) -> dict[str, Any]:
    values = dict(preset.model)
    if task is None:
        values.update(preset.speed_model)
    else:
        values.update(preset.tasks[task].model)
    return values


def run_config(preset: Preset, task: str, family: str, *, seed: int, data_dir: Path):
    """The trainer config of ``family`` on ``task`` (the same for every family but the kind)."""
    import ml_collections

    from configs.common import base_config
    from reformer_jax.classifier import ClassifierConfig

    spec = preset.tasks[task]
    extra = ClassifierConfig(num_classes=2, pooling=spec.pooling).extra_tokens
    config = base_config()
    config.task = "classification"
    config.seed = seed
    config.seq_len = spec.seq_len
    settings = spec.data(data_dir)
    config.data = ml_collections.ConfigDict(dict(name=spec.source, settings=settings))
    config.classifier = ml_collections.ConfigDict(dict(pooling=spec.pooling, d_hidden=0))
    model = _encoder_settings(preset, task)
    model.update(
        attention_pattern=[family],
        causal=False,
        pos_embedding="learned",
        max_len=spec.seq_len + extra,
    )
    config.model = ml_collections.ConfigDict(model)
    train = dict(
        num_steps=1000,
        learning_rate=1e-3,
        schedule="constant",
        warmup_steps=0,
        eval_every=100,
        eval_batch_size=0,
        mesh_shape=(1, 1),
    )
    train.update(preset.train)
    train.update(spec.train)
    for key, value in train.items():
        config[key] = value
    config.eval_batches = 0  # whole validation and test splits
    config.log_every = max(1, config.num_steps // 10)
    config.checkpoint_every = config.num_steps  # only the final state (the best one is kept)
    config.keep_checkpoints = 1
    return config


def prepare_task(preset: Preset, task: str, data_dir: Path) -> tuple[dict | None, str | None]:
    """Builds the task's data once: (settings, None) or (None, why the data is not present)."""
    from reformer_jax.data import get_source

    spec = preset.tasks[task]
    settings = spec.data(data_dir)
    try:
        if spec.prepare is not None:
            settings = spec.prepare(data_dir, settings)
        source = get_source(spec.source, settings)
    except FileNotFoundError as error:
        return None, str(error)
    if source.seq_len != spec.seq_len:
        raise ValueError(f"{task}: source length {source.seq_len} != preset {spec.seq_len}")
    return settings, None


def train_one(
    preset: Preset, task: str, family: str, *, seed: int, data_dir: Path, workdir: Path | None
) -> dict[str, Any]:
    """Trains and evaluates ``family`` on ``task``: the fields of its accuracy row."""
    import tempfile

    from reformer_jax.train import train_and_evaluate

    config = run_config(preset, task, family, seed=seed, data_dir=data_dir)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=workdir) as run_dir:
        result = train_and_evaluate(config, run_dir)
    if result.best is None or result.test_metrics is None:
        raise RuntimeError(f"{family} on {task}: no best checkpoint (did the run diverge?)")
    return dict(
        test_accuracy=float(result.test_metrics["accuracy"]),
        validation_accuracy=float(result.best["accuracy"]),
        steps=int(result.step),
        best_step=int(result.best["step"]),
        seed=seed,
        wall_s=round(time.perf_counter() - start, 1),
    )


def _byte_batch(preset: Preset, length: int, seed: int, data_dir: Path):
    """A training batch of the byte-level text classifier: IMDb if present, else synthetic bytes
    of the same shape. Returns (batch dict, description of the data)."""
    import numpy as np

    from reformer_jax.data import get_source
    from reformer_jax.data.examples import BYTE_VOCAB_SIZE

    b = preset.speed_batch_size
    try:
        source = get_source("imdb", _tfds("imdb")(data_dir), seq_len=length)
        batch = next(source.batches("train", b, seed=seed))
        data = "IMDb bytes"
        inputs, mask, labels = batch.inputs, batch.mask, batch.labels
    except FileNotFoundError:
        rng = np.random.default_rng(seed)
        inputs = rng.integers(1, BYTE_VOCAB_SIZE, (b, length), dtype=np.int32)
        mask = np.ones((b, length), bool)
        labels = rng.integers(0, 2, b, dtype=np.int32)
        data = "synthetic bytes (IMDb not present)"
    batch = dict(inputs=inputs, mask=mask, labels=labels, weights=np.ones(b, np.float32))
    return batch, data


def compiled_memory_bytes(memory: Any) -> int:
    """Peak bytes of a compiled step: temporaries + arguments + outputs - donated (aliased)."""
    return int(
        memory.temp_size_in_bytes
        + memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        - memory.alias_size_in_bytes
    )


def measure_speed(
    preset: Preset, family: str, length: int, *, seed: int, data_dir: Path
) -> dict[str, Any]:
    """LRA Table 2 for one (family, length): the byte-level text classifier's training step,
    compiled memory (``memory_analysis``) and, where it fits and is within the timed lengths,
    median steps/s. Returns the fields of its speed row (``status`` included)."""
    import statistics

    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from reformer_jax.classifier import ClassifierConfig
    from reformer_jax.config import ReformerConfig
    from reformer_jax.data.examples import BYTE_VOCAB_SIZE
    from reformer_jax.train.tasks import ClassificationTask
    from reformer_jax.train.trainer import make_task_train_step

    head = ClassifierConfig(num_classes=2, pooling="cls")
    model = _encoder_settings(preset, None)
    model.update(
        attention_pattern=[family],
        causal=False,
        pos_embedding="learned",
        max_len=length + head.extra_tokens,
        vocab_size=BYTE_VOCAB_SIZE + head.extra_tokens,
    )
    cfg = ReformerConfig.from_dict(model)
    task = ClassificationTask(cfg, head)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: task.make_model(nnx.Rngs(0))), nnx.Param)
    tx = optax.adam(1e-3)
    step_fn = jax.jit(make_task_train_step(task, graphdef, tx, 1, seed), donate_argnums=(0, 1))
    batch, data = _byte_batch(preset, length, seed, data_dir)
    abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
    start = time.perf_counter()
    compiled = step_fn.lower(
        abstract,
        jax.eval_shape(tx.init, abstract),
        None,
        abstract_batch,
        jax.ShapeDtypeStruct((), jnp.int32),
    ).compile()
    row: dict[str, Any] = dict(
        batch_size=preset.speed_batch_size,
        compile_s=round(time.perf_counter() - start, 1),
        settings={"data": data, **family_settings(family, cfg)},
    )
    memory = compiled.memory_analysis()
    if memory is not None:
        row["peak_memory_bytes"] = compiled_memory_bytes(memory)
        if row["peak_memory_bytes"] > preset.memory_budget_bytes:
            budget = _bytes(preset.memory_budget_bytes)
            return dict(row, status="out of memory", note=f"compiled step needs more than {budget}")
    if length > preset.speed_time_max_length:
        return dict(row, status="not run", note="compiled memory only (not timed at this preset)")
    params = jax.jit(lambda: nnx.state(task.make_model(nnx.Rngs(seed)), nnx.Param))()
    opt_state = jax.jit(tx.init)(params)
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    times = []
    for step in range(preset.speed_steps + 1):  # step 0: warm-up
        t = time.perf_counter()
        params, opt_state, _, metrics = compiled(params, opt_state, None, batch, jnp.int32(step))
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t)
    row["steps_per_s"] = 1.0 / statistics.median(times[1:])
    return dict(row, status="ok")


def _why(error: BaseException) -> str:
    """The problem of a config error ``model.<setting>: <problem>; <fix>`` (the fix, which
    advises changing what the harness fixed, is dropped); other errors whole."""
    text = str(error)
    if text.startswith("model.") and ": " in text:
        text = text.split(": ", 1)[1].rsplit("; ", 1)[0]
    return text


def _status_of(error: BaseException) -> str:
    text = str(error).lower()
    return "out of memory" if "out of memory" in text or "resource_exhausted" in text else "failed"


def _short(error: BaseException) -> str:
    return (
        f"{type(error).__name__}: {str(error).splitlines()[0][:300]}" if str(error) else repr(error)
    )


def _done(results: dict, kind: str, family: str, key: str, value: Any) -> bool:
    return any(
        r["family"] == family and r.get(key) == value and r.get("status") == "ok"
        for r in results.get(kind, [])
    )


def run_harness(
    preset: Preset,
    out: str | os.PathLike,
    *,
    families: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    seed: int = 0,
    data_dir: str | os.PathLike = "runs/lra-data",
    workdir: str | os.PathLike | None = None,
    accuracy: bool = True,
    speed: bool = True,
    resume: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Runs every family (default: the kind registry) on every task of ``preset`` and the speed
    protocol, writing ``out`` after every row (a killed run keeps what it finished; ``resume``
    keeps an existing file's "ok" rows and runs the rest). Returns the results."""
    from bench.machine import machine_info
    from reformer_jax.config import ReformerConfig

    families = list(families) if families is not None else registered_families()
    tasks = list(tasks) if tasks is not None else list(TASKS)
    data_dir = Path(data_dir)
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    settings = {
        "preset": preset.name,
        "description": preset.description,
        "model": _jsonable(preset.model),
        "train": _jsonable(preset.train),
        "tasks": {
            t: {
                "source": s.source,
                "seq_len": s.seq_len,
                "pooling": s.pooling,
                "data": s.describe,
                **({"model": s.model} if s.model else {}),
                **({"train": _jsonable(s.train)} if s.train else {}),
            }
            for t, s in preset.tasks.items()
        },
        "selection": "test accuracy of the best-validation-accuracy checkpoint",
        "seed": seed,
        "speed": {
            "protocol": "LRA Table 2: byte-level text classifier (CLS pooling), training steps",
            "model": _jsonable(_encoder_settings(preset, None)),
            "batch_size": preset.speed_batch_size,
            "timed_steps": preset.speed_steps,
            "timed_up_to": preset.speed_time_max_length,
            "memory": "compiled memory_analysis(): temp + arguments + outputs - donated",
            "memory_budget_bytes": preset.memory_budget_bytes,
        },
    }
    results = new_results(machine_info(), settings)
    if resume and Path(out).is_file():
        previous = load_results(out)
        results["accuracy"] = [r for r in previous["accuracy"] if r.get("status") == "ok"]
        results["speed"] = [r for r in previous["speed"] if r.get("status") != "failed"]
        results["families"] = previous.get("families", {})
        if previous.get("notes"):
            results["notes"] = previous["notes"]
    records = results.setdefault("families", {})
    # Kinds whose config refuses a bidirectional encoder (e.g. causal-only ones) get "not
    # applicable" rows that say why, instead of stopping the run.
    unusable: dict[str, str] = {}
    for family in families:
        model = dict(
            _encoder_settings(preset, None),
            attention_pattern=[family],
            causal=False,
            pos_embedding="learned",
        )
        try:
            own = family_settings(family, ReformerConfig.from_dict(model))
        except ValueError as error:
            unusable[family] = f"cannot build a bidirectional (causal=False) encoder: {_why(error)}"
            own = {}
        records[family] = {"lra_model": lra_model_for(family, own), "settings": own}

    def save() -> None:
        save_results(results, out)

    if accuracy:
        for task in tasks:
            if task not in preset.tasks:
                for family in families:
                    if family in unusable:
                        add_accuracy(
                            results, family, task, status=NOT_APPLICABLE, note=unusable[family]
                        )
                        continue
                    add_accuracy(
                        results,
                        family,
                        task,
                        status="not run",
                        note=f"not in the {preset.name} preset",
                    )
                save()
                continue
            log(f"[lra] preparing {task}")
            _, missing = prepare_task(preset, task, data_dir)
            for family in families:
                if family in unusable:
                    add_accuracy(
                        results, family, task, status=NOT_APPLICABLE, note=unusable[family]
                    )
                    continue
                if missing is not None:
                    add_accuracy(results, family, task, status="data not present", note=missing)
                    continue
                if resume and _done(results, "accuracy", family, "task", task):
                    continue
                log(f"[lra] training {family} on {task}")
                try:
                    row = train_one(
                        preset, task, family, seed=seed, data_dir=data_dir, workdir=workdir
                    )
                    add_accuracy(results, family, task, settings=records[family]["settings"], **row)
                    log(f"[lra] {family} {task}: test {row['test_accuracy']:.4f}")
                except Exception as error:  # noqa: BLE001 - one failed run must not stop the rest
                    add_accuracy(
                        results, family, task, status=_status_of(error), note=_short(error)
                    )
                    log(f"[lra] {family} {task} failed: {_short(error)}")
                save()
            save()
    if speed:
        for length in preset.speed_lengths:
            for family in families:
                if family in unusable:
                    add_speed(results, family, length, status=NOT_APPLICABLE, note=unusable[family])
                    continue
                if resume and any(
                    r["family"] == family and r["length"] == length for r in results["speed"]
                ):
                    continue
                log(f"[lra] speed {family} at {length}")
                try:
                    row = measure_speed(preset, family, length, seed=seed, data_dir=data_dir)
                except Exception as error:  # noqa: BLE001
                    row = dict(status=_status_of(error), note=_short(error))
                status = row.pop("status")
                add_speed(results, family, length, status=status, **row)
                save()
    save()
    return results


def merge_results(parts: Sequence[dict]) -> dict:
    """One record from runs of the same preset and seed (e.g. tasks run by parallel processes):
    the first part's machine and settings, every row (a later part's row replaces an earlier one
    with the same key), the union of the family records. Differing presets or seeds are refused."""
    if not parts:
        raise ValueError("lra merge: nothing to merge")
    first = parts[0]
    merged = new_results(first.get("machine", {}), first.get("settings", {}))
    merged["families"] = {}
    for part in parts:
        validate(part)
        for key in ("preset", "seed"):
            if part.get("settings", {}).get(key) != first.get("settings", {}).get(key):
                raise ValueError(
                    f"lra merge: parts differ in settings.{key}; merge runs of one preset and seed"
                )
        for family, record in (part.get("families") or {}).items():
            merged["families"].setdefault(family, record)
        for row in part.get("accuracy", []):
            _replace_row(merged["accuracy"], row, ("family", "task"))
        for row in part.get("speed", []):
            _replace_row(merged["speed"], row, ("family", "length"))
        if part.get("notes"):
            merged["notes"] = part["notes"]
    return validate(merged)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.lra",
        description=__doc__.split("\n\n")[0],
        epilog="Without --dashboard: runs the harness (every registered attention kind x every "
        "task of the preset, then the speed/memory protocol) and writes --out.",
    )
    parser.add_argument(
        "--dashboard",
        action="store_true",
        help="render docs/lra.md and docs/lra.html from --from-json (no training)",
    )
    parser.add_argument(
        "--from-json",
        default="bench/results/lra.json",
        help="results JSON (schema in the module docstring)",
    )
    parser.add_argument("--out-dir", default="docs", help="where lra.md / lra.html / PNGs go")
    parser.add_argument(
        "--notes",
        default=None,
        help="a markdown file rendered as the dashboard's Reading (instead of the JSON's notes)",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument(
        "--out", default=None, help="results JSON (default bench/results/lra.json; lra_<preset>)"
    )
    parser.add_argument(
        "--families", default=None, help="comma-separated kinds (default: every registered kind)"
    )
    parser.add_argument("--tasks", default=None, help=f"comma-separated, of {list(TASKS)}")
    parser.add_argument(
        "--lengths",
        default=None,
        help="comma-separated speed lengths, in this order (default: the preset's)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a model field of the preset for every family and task (a JSON value, "
        "e.g. hash_seed=0); recorded in the results' settings",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default="runs/lra-data", help="generated data and datasets")
    parser.add_argument("--workdir", default=None, help="parent of the temporary run directories")
    parser.add_argument("--no-accuracy", action="store_true", help="skip training")
    parser.add_argument("--no-speed", action="store_true", help="skip the speed/memory protocol")
    parser.add_argument(
        "--resume", action="store_true", help="keep the 'ok' rows of an existing --out"
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="PART",
        help="merge results files of one preset (e.g. parallel runs) into --out; no training",
    )
    return parser


def _model_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["hash_seed=0", ...]`` -> ``{"hash_seed": 0}`` (values parsed as JSON, else strings)."""
    out: dict[str, Any] = {}
    for item in items:
        field, sep, value = item.partition("=")
        if not sep or not field:
            raise SystemExit(f"error: --set {item!r}: use FIELD=VALUE, e.g. --set hash_seed=0")
        try:
            out[field] = json.loads(value)
        except json.JSONDecodeError:
            out[field] = value
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.dashboard:
        try:
            results = load_results(args.from_json)
        except (FileNotFoundError, ValueError) as err:  # missing or malformed: one line
            print(f"error: --from-json {args.from_json}: {err}", file=sys.stderr)
            return 2
        if args.notes:
            results["notes"] = Path(args.notes).read_text()
        written = write_dashboard(results, args.out_dir)
        print("wrote " + ", ".join(str(p) for p in written.values()))
        return 0
    out = args.out or (
        "bench/results/lra.json"
        if args.preset == "cpu"
        else f"bench/results/lra_{args.preset}.json"
    )
    if args.merge:
        save_results(merge_results([load_results(p) for p in args.merge]), out)
        print(f"wrote {out}")
        return 0
    from reformer_jax.runtime import configure_xla

    configure_xla()
    split = lambda s: None if s is None else [x.strip() for x in s.split(",") if x.strip()]  # noqa: E731
    preset = PRESETS[args.preset]
    if args.set:
        preset = dataclasses.replace(preset, model={**preset.model, **_model_overrides(args.set)})
    if args.lengths:
        preset = dataclasses.replace(
            preset, speed_lengths=tuple(int(n) for n in split(args.lengths))
        )
    run_harness(
        preset,
        out,
        families=split(args.families),
        tasks=split(args.tasks),
        seed=args.seed,
        data_dir=args.data_dir,
        workdir=args.workdir,
        accuracy=not args.no_accuracy,
        speed=not args.no_speed,
        resume=args.resume,
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "LRA_MODEL_NAME",
    "PRESETS",
    "Preset",
    "TaskSpec",
    "lra_model",
    "lra_model_for",
    "measure_speed",
    "merge_results",
    "run_harness",
    "LRA_TABLE1",
    "LRA_TABLE2",
    "SCHEMA",
    "TASKS",
    "accuracy_table",
    "add_accuracy",
    "add_speed",
    "families",
    "load_results",
    "lra_mean_accuracy",
    "main",
    "mean_accuracy",
    "memory_table",
    "new_results",
    "relative_speed",
    "render_html",
    "render_markdown",
    "save_results",
    "speed_table",
    "validate",
    "write_dashboard",
]
