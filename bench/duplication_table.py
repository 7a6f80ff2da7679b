"""The Reformer paper's duplication-task table (its Table 2), at a length this machine allows.

    python -m bench.duplication_table      # trains 4 models: ~45 min on 2 busy cores, less if quiet
    python -m bench.duplication_table --from-json bench/results/duplication_table.json

One-layer models of the shape of ``configs/duplication.py`` (d_model 256, 4 heads, learned
positions, shared-QK attention) are trained with exact shared-QK attention ("full") and with
LSH attention at 1, 2 and 4 hashes, each by the library's ``train_and_evaluate`` in its own
workdir under ``--workdir``. At the end of training the library evaluates the same weights with
exact attention and with LSH at 1, 2, 4 and 8 hashes (``reformer_jax.train.trainer.hash_table``);
the rows of those evaluations form the table, printed beside the paper's numbers.

What is measured: token accuracy of the argmax prediction on the second copy of ``w`` only (the
evaluation weights of the duplication source are 1 exactly there; the separators and the first
copy, which cannot be predicted, are not counted), on the ``eval`` split, which the training
stream never sees. Every column evaluates the same held-out rows; LSH evaluation draws its
rotations from a fixed key. Chance is 1 / (vocab_size - 1).

Workdirs are never reused silently: if a row's workdir exists the script stops before training
anything, unless ``--resume`` is given (then an unfinished run continues from its checkpoint and
a finished one is only re-evaluated; its training time is kept from when it was trained).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import results_json
from reformer_jax.runtime import configure_xla

# The paper's Table 2 (Kitaev et al. 2020; length 1024, REFORMER.md section 4), accuracy in %.
PAPER = {
    "full": {"full": 100.0, "lsh-8": 94.8, "lsh-4": 92.5, "lsh-2": 76.9, "lsh-1": 52.5},
    "lsh-4": {"full": 0.8, "lsh-8": 100.0, "lsh-4": 99.9, "lsh-2": 99.4, "lsh-1": 91.9},
    "lsh-2": {"full": 0.8, "lsh-8": 100.0, "lsh-4": 99.9, "lsh-2": 98.1, "lsh-1": 86.8},
    "lsh-1": {"full": 0.8, "lsh-8": 99.9, "lsh-4": 99.6, "lsh-2": 94.8, "lsh-1": 77.9},
}
ROWS = ("full", "lsh-4", "lsh-2", "lsh-1")  # the paper's order
# Training steps per row by default. In the run of docs/benchmarks.md every row found the copy
# around step 300; LSH rows get more steps because a round sees the partner position only
# when the hash puts it in the query's window, so they sharpen more slowly (LSH-2: 99.2% training
# accuracy at step 500, 99.8% at 2000).
DEFAULT_STEPS = {"full": 1000, "lsh-4": 2000, "lsh-2": 2000, "lsh-1": 2000}
MEASURED = (
    "token accuracy (%) on the second copy of w (the duplication source's weights), held-out rows"
)
ROW_RECORD = "duplication_row.json"


class UsageError(ValueError):
    """Bad flags or an existing workdir: the message says what to do."""


def parse_steps(text: str, rows: Sequence[str] = ROWS) -> dict[str, int]:
    """``"900"``, ``"full=600,lsh=2000"`` or ``"full=600,lsh-1=3000"`` -> steps per row.

    A bare number sets every row; ``lsh`` sets every LSH row; later items override earlier ones;
    rows not named keep their default; rows not in ``rows`` are ignored.
    """
    steps = {row: DEFAULT_STEPS.get(row, DEFAULT_STEPS["lsh-1"]) for row in rows}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.rpartition("=")
        try:
            n = int(value)
        except ValueError:
            n = -1
        if n < 0 or (sep and not name):
            raise UsageError(f"--steps: cannot read {item!r}; use e.g. 900 or full=600,lsh=2000")
        if not sep:
            targets = list(rows)
        elif name == "lsh":
            targets = [r for r in rows if r.startswith("lsh-")]
        elif name in ROWS:
            targets = [name] if name in rows else []  # a row not trained this time
        else:
            raise UsageError(f"--steps: unknown row {name!r}; rows are {', '.join(ROWS)}, lsh")
        for row in targets:
            steps[row] = n
    return steps


def parse_rows(text: str) -> list[str]:
    rows = [r.strip().lower() for r in text.split(",") if r.strip()]
    bad = [r for r in rows if r not in ROWS]
    if bad or not rows:
        raise UsageError(f"--train: unknown row(s) {bad}; choose from {', '.join(ROWS)}")
    return [r for r in ROWS if r in rows]


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seq-len", type=int, default=128, help="row length (paper: 1024)")
    parser.add_argument(
        "--steps",
        default="",
        help="training steps: N for every row, or per row, e.g. full=600,lsh=1500 "
        f"(default {','.join(f'{k}={v}' for k, v in DEFAULT_STEPS.items())})",
    )
    parser.add_argument("--train", default=",".join(ROWS), help="rows to train")
    parser.add_argument("--eval-hashes", default="1,2,4,8", help="LSH columns")
    parser.add_argument("--eval-batches", type=int, default=16)
    parser.add_argument("--eval-batch-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument(
        "--chunk-len",
        type=int,
        default=16,
        help="LSH chunk length (16: a query sees at most 2 x 16 of 128 positions per hash)",
    )
    parser.add_argument(
        "--n-buckets", type=int, default=0, help="LSH buckets (0: 2 per chunk, seq_len*2/chunk)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("runs/duplication_table"),
        help="root; each row trains in <workdir>/<row>",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue (or re-evaluate) runs already in the row workdirs instead of refusing",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/duplication_table.json"))
    parser.add_argument(
        "--from-json", type=results_json, help="reprint a saved table; trains nothing"
    )
    return parser.parse_args(argv)


def row_config(args: argparse.Namespace, row: str, steps: int):
    """The ``configs/duplication.py`` config with this table's overrides for ``row``."""
    from configs import duplication

    config = duplication.get_config()
    length = args.seq_len
    config.seq_len = length
    config.data.settings.seq_len = length
    config.model.max_len = length
    config.model.lsh_chunk_len = args.chunk_len
    config.model.lsh_n_buckets = args.n_buckets or max(2, 2 * length // args.chunk_len)
    if row == "full":
        config.model.full_attention_below = length + 1  # exact shared-QK attention
    else:
        config.model.full_attention_below = 0  # LSH at every length
        config.model.lsh_n_hashes = int(row.split("-")[1])
    config.num_steps = steps
    config.batch_size = args.batch_size
    config.learning_rate = args.learning_rate
    config.warmup_steps = min(args.warmup_steps, steps)
    config.seed = args.seed
    config.log_every = max(1, min(50, steps))
    config.eval_every = max(1, min(500, steps))
    config.checkpoint_every = max(1, min(500, steps))
    config.eval_batches = args.eval_batches
    config.eval_batch_size = args.eval_batch_size
    config.eval_hashes = _int_list(args.eval_hashes)
    return config


def check_workdirs(root: Path, rows: Sequence[str], resume: bool) -> None:
    """Raises `UsageError` when a row's workdir exists and ``resume`` is False."""
    existing = [root / row for row in rows if (root / row).exists()]
    if existing and not resume:
        names = ", ".join(str(p) for p in existing)
        raise UsageError(
            f"{names} already exist(s): nothing was trained. Pass --resume to continue or reuse "
            "those runs, or choose a new --workdir"
        )


def train_seconds(workdir: Path) -> float:
    """Seconds of the training loop, from the per-step times logged in ``metrics.jsonl``.

    Sums ``step_time`` x steps over the train records (the last record per step after a resume),
    so it covers the loop (with its periodic evaluations and checkpoints), not compilation.
    """
    by_step: dict[int, float] = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("split") == "train":
            by_step[int(record["step"])] = float(record["step_time"])
    total, previous = 0.0, 0
    for step in sorted(by_step):
        total += by_step[step] * (step - previous)
        previous = step
    return total


def run_row(args: argparse.Namespace, row: str, steps: int) -> dict[str, Any]:
    from reformer_jax.train import TrainingError, train_and_evaluate

    workdir = args.workdir / row
    config = row_config(args, row, steps)
    earlier = None
    if (workdir / ROW_RECORD).exists():
        earlier = json.loads((workdir / ROW_RECORD).read_text())
    start = time.perf_counter()
    result = train_and_evaluate(config, workdir)
    wall = time.perf_counter() - start
    if result.interrupted or result.hash_table is None:
        raise TrainingError(f"{row}: training stopped at step {result.step} ({workdir})")
    last = result.train_metrics[-1] if result.train_metrics else {}
    record = {
        "trained_with": row,
        "steps": steps,
        "workdir": str(workdir),
        "train_s": round(train_seconds(workdir), 1),
        "wall_s": round(wall, 1),
        "final_train_loss": last.get("loss"),
        "final_eval": result.eval_metrics,
        "eval": {k: float(v) for k, v in result.hash_table.items()},
    }
    if earlier is not None and earlier.get("steps") == steps:
        # A finished run, only re-evaluated now: keep the time it took to train.
        record["wall_s"] = earlier["wall_s"]
        record["reevaluated_s"] = round(wall, 1)
    (workdir / ROW_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return record


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_table(payload: dict[str, Any]) -> str:
    """Markdown: this run's accuracy (%) beside the paper's, one row per trained model."""
    rows = payload["rows"]
    hashes = sorted(payload["settings"]["eval_hashes"], reverse=True)
    columns = ["full", *(f"lsh-{n}" for n in hashes)]
    head = ["trained \\ evaluated", *(c.upper() if c != "full" else c for c in columns)]
    head += ["steps", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for name in ROWS:
        if name not in rows:
            continue
        record = rows[name]
        cells = []
        for column in columns:
            ours = record["eval"].get(column)
            paper = PAPER.get(name, {}).get(column)
            text = _cell(None if ours is None else 100 * ours)
            cells.append(f"{text} ({_cell(paper)})")
        label = name.upper() if name != "full" else "full"
        cells += [str(record["steps"]), _cell(record["train_s"])]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    s = payload["settings"]
    lines.append("")
    lines.append(
        f"Cells: this run (paper). {MEASURED}: {s['eval_rows']} rows x {s['scored_per_row']} "
        f"scored tokens; chance {100 / (s['vocab_size'] - 1):.1f}%. Length {s['seq_len']} "
        "(paper 1024). 'train s' is the training loop (no compilation, no final evaluation)."
    )
    return "\n".join(lines)


def _header(payload: dict[str, Any]) -> str:
    m, s = payload["machine"], payload["settings"]
    return (
        f"# {m['cpu_model']}, {m['cpus_usable']} cores, {m['backend']}, jax {m['jax']} / "
        f"jaxlib {m['jaxlib']}; length {s['seq_len']}, batch {s['batch_size']}, lr "
        f"{s['learning_rate']}, LSH chunk {s['chunk_len']}, {s['n_buckets']} buckets"
    )


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)


def main(argv: Sequence[str] | None = None) -> int:
    configure_xla()
    args = parse_args(argv)
    try:
        if args.from_json is not None:
            payload = json.loads(args.from_json.read_text())
            print(_header(payload))
            print(format_table(payload))
            return 0
        rows = parse_rows(args.train)
        steps = parse_steps(args.steps, rows)
        check_workdirs(args.workdir, rows, args.resume)
    except (UsageError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from bench.machine import machine_info
    from reformer_jax.train import TrainingError

    probe = row_config(args, rows[0], 1)
    payload: dict[str, Any] = {
        "benchmark": "Reformer paper Table 2: duplication task, trained x evaluated attention",
        "command": " ".join(
            ["python -m bench.duplication_table", *(sys.argv[1:] if argv is None else argv)]
        ),
        "measured": MEASURED,
        "machine": machine_info(),
        "settings": {
            "seq_len": args.seq_len,
            "vocab_size": probe.data.settings.vocab_size,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "warmup_steps": args.warmup_steps,
            "schedule": probe.schedule,
            "optimizer": probe.optimizer,
            "grad_clip": probe.grad_clip,
            "chunk_len": args.chunk_len,
            "n_buckets": probe.model.lsh_n_buckets,
            "model": {
                k: probe.model[k]
                for k in ("d_model", "d_ff", "n_layers", "n_heads", "d_head", "pos_embedding")
            },
            "steps": steps,
            "eval_hashes": _int_list(args.eval_hashes),
            "eval_rows": args.eval_batches * args.eval_batch_size,
            "scored_per_row": args.seq_len // 2 - 1,
            "seed": args.seed,
            "workdir": str(args.workdir),
        },
        "paper": PAPER,
        "rows": {},
    }
    print(_header(payload), flush=True)
    start = time.perf_counter()
    for row in rows:
        print(f"## training {row} for {steps[row]} steps in {args.workdir / row}", flush=True)
        try:
            payload["rows"][row] = run_row(args, row, steps[row])
        except (TrainingError, ValueError) as err:
            print(f"error: {row}: {err}", file=sys.stderr)
            return 1
        payload["elapsed_s"] = round(time.perf_counter() - start, 1)
        write_json(args.out, payload)
    print()
    print(format_table(payload))
    print(f"\nwrote {args.out}; total {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
