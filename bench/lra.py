"""Long Range Arena dashboard: every attention family through the same tasks, beside LRA's tables.

    python -m bench.lra --dashboard --from-json bench/results/lra.json [--out-dir docs]

renders ``docs/lra.md`` (tables, PNG plots next to it: ``lra_tradeoff.png``, ``lra_speed.png``,
``lra_memory.png``) and a self-contained ``docs/lra.html`` (the same tables, sortable by a click
on a column header; the plots embedded as base64 PNG; no external asset). Rendering needs no JAX.
The training half (running family x task and writing the JSON below) plugs in through
`new_results`, `add_accuracy`, `add_speed` and `save_results`; it is not part of this module yet.

Families are never listed here: every family found in the JSON gets a row, in order of first
appearance (so a family landing later only needs its runs added). The published LRA numbers
(`LRA_TABLE1`, `LRA_TABLE2`, from the paper's Tables 1 and 2) are matched to a family through
`LRA_MODEL_NAME`; a family LRA did not run shows "-" in the LRA cells.

## Results JSON (``schema: "lra-results/1"``)

```
{
  "schema": "lra-results/1",
  "machine": {...},            # bench/machine.py's machine_info() of the machine that ran it
  "settings": {...},           # shared settings: preset name, model size, optimiser, steps, ...
  "notes": "markdown",         # optional: the reading of the results, rendered under "Reading"
  "accuracy": [                # one row per (family, task)
    {"family": "lsh", "task": "listops",   # task: one of TASKS' keys
     "status": "ok",           # "ok" | "not run" | "data not present" | "failed" | "out of memory"
     "test_accuracy": 0.371,   # fraction in [0, 1]: test split, best-validation checkpoint
     "validation_accuracy": 0.380,      # that checkpoint's validation accuracy
     "steps": 5000, "best_step": 4500, "seed": 0,
     "settings": {...},        # what differs from the shared settings (family parameters, ...)
     "note": "free text"}      # optional, shown in the "notes" column
  ],
  "speed": [                   # one row per (family, length): LRA Table 2 protocol (byte-level
    {"family": "lsh",          # text classifier, training steps; batch in the row)
     "length": 4096, "batch_size": 32,
     "status": "ok",           # "ok" | "out of memory" | "not run" | "failed"
     "steps_per_s": 1.25,      # training steps per second (after compilation)
     "peak_memory_bytes": 2.4e9,  # peak device memory of the training step
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
import html
import io
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SCHEMA = "lra-results/1"
REFERENCE_FAMILY = "full"
STATUSES = ("ok", "not run", "data not present", "failed", "out of memory")

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


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _lra_acc(family: str, task: str) -> str:
    model = LRA_MODEL_NAME.get(family)
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
    model = LRA_MODEL_NAME.get(family)
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
        row = [family, LRA_MODEL_NAME.get(family, "-")]
        for task in TASKS:
            r = _accuracy_row(results, family, task)
            if _ok(r, "test_accuracy"):
                row.append(_pct(r["test_accuracy"]))
            else:
                row.append(NOT_RUN if r is None else r.get("status", NOT_RUN))
            row.append(_lra_acc(family, task))
        mean, n = mean_accuracy(results, family)
        row.append("-" if mean is None else f"{100 * mean:.2f} ({n} task{'s' * (n != 1)})")
        lra_mean = lra_mean_accuracy(results, family)
        row.append("-" if lra_mean is None else f"{lra_mean:.2f}")
        row.append(_lra_acc(family, "avg"))
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


def _lra_speed(family: str, length: int) -> str:
    entry = LRA_TABLE2.get(LRA_MODEL_NAME.get(family, ""))
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
                row.append(_lra_speed(family, n))
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
        entry = LRA_TABLE2.get(LRA_MODEL_NAME.get(family, ""))
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


def _settings_line(results: dict) -> str:
    s = results.get("settings") or {}
    return ("Settings: " + ", ".join(f"{k}={v}" for k, v in s.items()) + ".") if s else ""


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
    ("Memory (LRA Table 2)", "memory", "Peak memory of one training step."),
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
        "not edit by hand (the reading lives in the JSON's `notes`). Every family runs through "
        "the same encoder, data, steps and evaluation, seeded; see FAMILIES.md section 4 for why "
        "LRA's own rows are not like for like.",
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
        f"<p>{e(_settings_line(results))}</p>",
        "<p>Click a column header to sort.</p>",
    ]
    for title, key, caption in _SECTIONS:
        header, rows = tables[key]
        parts += [f"<h2>{e(title)}</h2>", f"<p>{e(caption)}</p>"]
        parts.append(_html_table(header, rows) if rows else "<p>No results.</p>")
    for name, png in plots.items():
        data = base64.b64encode(png).decode("ascii")
        parts += [
            f"<h2>{e(_PLOT_TITLES[name])}</h2>",
            f'<img alt="{e(_PLOT_TITLES[name])}" src="data:image/png;base64,{data}">',
        ]
    if results.get("notes"):
        parts.append("<h2>Reading</h2>")
        for para in results["notes"].strip().split("\n\n"):
            parts.append(f"<p>{e(para)}</p>")
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.lra", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--dashboard",
        action="store_true",
        required=True,
        help="render docs/lra.md and docs/lra.html from --from-json",
    )
    parser.add_argument(
        "--from-json",
        default="bench/results/lra.json",
        help="results JSON (schema in the module docstring)",
    )
    parser.add_argument("--out-dir", default="docs", help="where lra.md / lra.html / PNGs go")
    args = parser.parse_args(argv)
    try:
        results = load_results(args.from_json)
    except (FileNotFoundError, ValueError) as err:  # missing or malformed: one line
        print(f"error: --from-json {args.from_json}: {err}", file=sys.stderr)
        return 2
    written = write_dashboard(results, args.out_dir)
    print("wrote " + ", ".join(str(p) for p in written.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "LRA_MODEL_NAME",
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
