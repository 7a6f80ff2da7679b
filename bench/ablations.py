"""The paper's ablations (Figure 3): shared-QK attention and reversible layers, in bits per char.

Each variant is a small byte-level language model trained by the library's own
``train_and_evaluate`` on the same corpus, with the same seeds, data order, optimiser and number
of steps; only the attention's query/key sharing or the residual architecture differs:

* ``separate-qk``: reversible layers, exact attention with separate query and key projections
  (``attention_pattern=["full"]``), the reference of both comparisons;
* ``shared-qk``: reversible layers, exact shared-QK attention (``["lsh"]`` with
  ``full_attention_below`` above the length: keys are the unit-length queries and a token attends
  to itself only when nothing else is allowed, as in LSH attention, but with no hashing);
* ``standard``: an ordinary pre-LN residual Transformer (``residual="standard"``), separate QK;
* ``shared-qk-standard`` (optional): the standard Transformer with shared-QK attention.

The evaluation bits per character are read from each run's ``metrics.jsonl`` (every
``--eval-every`` steps, the whole held-out split). The corpus defaults to the English
documentation strings of ``pydoc_data/topics.py``, which ships with every CPython (see
docs/benchmarks.md (ablations) for why); pass ``--corpus`` for another text file or directory.

    python -m bench.ablations                       # the documented run (about 35 min, 2 cores)
    python -m bench.ablations --variants separate-qk,shared-qk --seeds 0 --steps 200
    python -m bench.ablations --from-json bench/results/ablations.json     # replot, print table

Runs go to ``--workdir/<variant>-seed<k>``; an existing run directory is an error unless
``--resume`` (which continues it, or reuses it when it is complete). Results: JSON at ``--out``
(rewritten after every run, so an interrupted sweep keeps what it finished) and a PNG next to it.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import results_json
from bench.machine import machine_info
from reformer_jax.runtime import configure_xla

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "ablations.json"

# name -> (label, model settings). "SEQ" is replaced by seq_len + 1 (exact attention).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "separate-qk": (
        "reversible, separate QK",
        dict(attention_pattern=["full"], residual="reversible"),
    ),
    "shared-qk": (
        "reversible, shared QK",
        dict(attention_pattern=["lsh"], full_attention_below="SEQ", residual="reversible"),
    ),
    "standard": (
        "standard residual, separate QK",
        dict(attention_pattern=["full"], residual="standard"),
    ),
    "shared-qk-standard": (
        "standard residual, shared QK",
        dict(attention_pattern=["lsh"], full_attention_below="SEQ", residual="standard"),
    ),
}
DEFAULT_VARIANTS = ("separate-qk", "shared-qk", "standard")


class AblationError(RuntimeError):
    """A sweep that cannot run as asked; the message says why and what to do."""


# ----------------------------------------------------------------------------------------------
# The corpus.


def pydoc_topics_text() -> str:
    """CPython's ``pydoc_data.topics`` strings (the language reference prose), sorted by topic."""
    from pydoc_data import topics

    return "\n\n".join(topics.topics[name] for name in sorted(topics.topics)) + "\n"


def prepare_corpus(workdir: Path, corpus: Path | None) -> tuple[Path, dict[str, Any]]:
    """The corpus path and a description (written under ``workdir`` when it is pydoc's)."""
    if corpus is not None:
        path = corpus.absolute()
        info: dict[str, Any] = {"name": str(path)}
    else:
        path = workdir / "corpus" / "pydoc_topics.txt"
        text = pydoc_topics_text().encode("utf-8")
        if path.exists() and path.read_bytes() != text:
            raise AblationError(
                f"{path} exists with other contents (another Python version's pydoc topics?); "
                "use a new --workdir"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text)
        info = {"name": f"pydoc_data/topics.py (Python {platform.python_version()})"}
    from reformer_jax.data.text import corpus_files

    data = b"".join(f.read_bytes() for f in corpus_files(path))
    info.update(bytes=len(data), ascii_fraction=round(sum(b < 128 for b in data) / len(data), 5))
    return path, info


# ----------------------------------------------------------------------------------------------
# Configuration and one run.


def train_config(args: argparse.Namespace, variant: str, seed: int, corpus: Path):
    """The library training config of one variant (everything but the variant is shared)."""
    from configs.common import base_config

    config = base_config()
    config.seed = seed
    config.seq_len = args.seq_len
    config.data.name = "text"
    config.data.settings = dict(
        path=str(corpus), seq_len=args.seq_len, eval_fraction=args.eval_fraction
    )
    model = dict(
        vocab_size=256,
        d_model=args.d_model,
        d_ff=args.d_ff,
        n_layers=args.layers,
        n_heads=args.heads,
        d_head=args.d_model // args.heads,
        pos_embedding="learned",
        max_len=args.seq_len,
        hidden_dropout=args.dropout,
        ff_activation="relu",
    )
    for key, value in VARIANTS[variant][1].items():
        model[key] = args.seq_len + 1 if value == "SEQ" else value
    config.model = model
    config.batch_size = args.batch
    config.num_steps = args.steps
    config.learning_rate = args.lr
    config.schedule = "constant"
    config.warmup_steps = args.warmup
    config.log_every = args.eval_every
    config.eval_every = args.eval_every
    config.eval_batches = 10**6  # the whole held-out split, every time
    config.checkpoint_every = args.steps
    config.keep_checkpoints = 1
    config.mesh_shape = (1, 1)
    return config


def read_metrics(workdir: Path) -> dict[str, list[dict[str, float]]]:
    """Eval and train curves from ``metrics.jsonl`` (a resumed run's repeats: the last wins)."""
    curves: dict[str, dict[int, dict[str, float]]] = {"eval": {}, "train": {}}
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return {"eval": [], "train": []}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        split = record.get("split")
        if split not in curves:
            continue
        bpc = record["loss"] / math.log(2)
        point = {"step": int(record["step"]), "bpc": bpc}
        if split == "train":
            point["step_time_s"] = record.get("step_time", float("nan"))
        curves[split][point["step"]] = point
    return {k: [v[s] for s in sorted(v)] for k, v in curves.items()}


def run_variant(args: argparse.Namespace, variant: str, seed: int, corpus: Path) -> dict:
    from reformer_jax.train.trainer import train_and_evaluate

    workdir = (args.workdir / f"{variant}-seed{seed}").absolute()
    if workdir.exists() and any(workdir.iterdir()) and not args.resume:
        raise AblationError(
            f"{workdir} already holds a run; pass --resume to continue (or reuse) it, or choose "
            "another --workdir"
        )
    config = train_config(args, variant, seed, corpus)
    start = time.perf_counter()
    train_and_evaluate(config, workdir)
    wall = time.perf_counter() - start
    curves = read_metrics(workdir)
    if not curves["eval"] or curves["eval"][-1]["step"] != args.steps:
        raise AblationError(f"{workdir}: no evaluation at step {args.steps} in metrics.jsonl")
    record = json.loads((workdir / "config.json").read_text())
    step_times = [p["step_time_s"] for p in curves["train"] if p["step"] > args.eval_every]
    return {
        "variant": variant,
        "label": VARIANTS[variant][0],
        "seed": seed,
        "workdir": str(workdir),
        "model": record["model"],
        "wall_s": round(wall, 1),
        "median_step_s": statistics.median(step_times) if step_times else None,
        "final_bpc": curves["eval"][-1]["bpc"],
        "eval": curves["eval"],
        "train": [{"step": p["step"], "bpc": p["bpc"]} for p in curves["train"]],
    }


# ----------------------------------------------------------------------------------------------
# Results: summary, JSON, plot.


def summarize(runs: Sequence[dict]) -> list[dict[str, Any]]:
    """Per variant: final eval bpc mean, spread (max - min) and sample std over seeds."""
    rows = []
    for variant in dict.fromkeys(r["variant"] for r in runs):
        finals = [r["final_bpc"] for r in runs if r["variant"] == variant]
        rows.append(
            {
                "variant": variant,
                "label": VARIANTS[variant][0],
                "seeds": len(finals),
                "final_bpc_mean": statistics.fmean(finals),
                "final_bpc_spread": max(finals) - min(finals),
                "final_bpc_std": statistics.stdev(finals) if len(finals) > 1 else None,
                "final_bpc": finals,
                "wall_s_mean": statistics.fmean(
                    r["wall_s"] for r in runs if r["variant"] == variant
                ),
            }
        )
    return rows


def markdown_table(summary: Sequence[dict]) -> str:
    lines = [
        "| variant | seeds | final eval bpc (mean) | per seed | spread | wall time / run |",
        "|---|---|---|---|---|---|",
    ]
    for row in summary:
        per_seed = ", ".join(f"{b:.4f}" for b in row["final_bpc"])
        lines.append(
            f"| {row['label']} | {row['seeds']} | {row['final_bpc_mean']:.4f} | {per_seed} | "
            f"{row['final_bpc_spread']:.4f} | {row['wall_s_mean'] / 60:.1f} min |"
        )
    return "\n".join(lines)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)


def read_json(path: Path) -> dict[str, Any]:
    payload = json.loads(Path(path).read_text())
    if "runs" not in payload or "settings" not in payload:
        raise AblationError(f"{path} is not an ablation results file (no 'runs' / 'settings')")
    return payload


_OTHER = {"shared": "separate", "separate": "shared", "reversible": "standard",
          "standard": "reversible"}  # fmt: skip


def _attributes(variant: str) -> tuple[str, str]:
    """(query/key sharing, residual architecture) of a variant."""
    settings = VARIANTS[variant][1]
    qk = "shared" if "lsh" in settings["attention_pattern"] else "separate"
    return qk, settings["residual"]


def _panels(variants: Sequence[str]) -> list[tuple[str, str, list[str]]]:
    """(title, compared attribute, variants) per panel: those whose partner differing only in
    that attribute was run too."""
    present = {_attributes(v) for v in variants}
    panels = []
    for index, (title, attribute) in enumerate(
        [("Shared-QK vs separate-QK attention", "qk"),
         ("Reversible vs standard residual layers", "residual")]
    ):  # fmt: skip
        members = []
        for v in variants:
            partner = list(_attributes(v))
            partner[index] = _OTHER[partner[index]]
            if tuple(partner) in present:
                members.append(v)
        panels.append((title, attribute, members))
    return panels


def plot(path: Path, payload: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    runs = payload["runs"]
    variants = list(dict.fromkeys(r["variant"] for r in runs))
    colors = {
        "separate-qk": "tab:blue",
        "shared-qk": "tab:orange",
        "standard": "tab:green",
        "shared-qk-standard": "tab:red",
    }
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    finals = [r["final_bpc"] for r in runs]
    for ax, (title, _, members) in zip(axes, _panels(variants), strict=True):
        for v in members:
            seeds = [r for r in runs if r["variant"] == v]
            steps = [p["step"] for p in seeds[0]["eval"]]
            curves = np.array(
                [[p["bpc"] for p in r["eval"]] for r in seeds if len(r["eval"]) == len(steps)]
            )
            mean = curves.mean(0)
            label = f"{VARIANTS[v][0]} ({mean[-1]:.3f})"
            ax.plot(steps, mean, color=colors[v], marker="o", ms=3, label=label)
            if len(curves) > 1:
                ax.fill_between(steps, curves.min(0), curves.max(0), color=colors[v], alpha=0.2)
        ax.set_title(title)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        if members:
            ax.legend(fontsize=9)
        else:
            ax.text(0.5, 0.5, "no pair of runs for this comparison", ha="center",
                    transform=ax.transAxes)  # fmt: skip
    axes[0].set_ylabel("eval bits per character")
    if finals:
        # Zoom on the part where the curves can be told apart (the start is off the chart).
        lo = min(min(p["bpc"] for p in r["eval"]) for r in runs)
        axes[0].set_ylim(lo - 0.05, max(finals) + 0.6)
    s = payload["settings"]
    seeds = sorted({r["seed"] for r in runs})
    fig.suptitle(
        f"{payload['corpus']['name']}: {s['layers']} layers, d_model {s['d_model']}, "
        f"length {s['seq_len']}, batch {s['batch']}, {s['steps']} steps, seeds {seeds} "
        "(band: range over seeds)",
        fontsize=10,
    )
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    tmp.replace(path)


# ----------------------------------------------------------------------------------------------
# Command line.


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--workdir", type=Path, default=Path("runs/ablations"))
    p.add_argument("--resume", action="store_true", help="continue or reuse existing runs")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON (PNG next to it)")
    p.add_argument(
        "--from-json", type=results_json, default=None, help="replot an existing results JSON"
    )
    p.add_argument("--corpus", type=Path, default=None, help="text file/dir (default: pydoc)")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--d-ff", type=int, default=512)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dropout", type=float, default=0.0, help="hidden dropout")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--eval-fraction", type=float, default=0.05)
    args = p.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        p.error(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    if not args.seeds:
        p.error("--seeds: give at least one seed, e.g. 0 or 0,1")
    if args.steps % args.eval_every:
        p.error(f"--steps {args.steps} must be a multiple of --eval-every {args.eval_every}")
    return args


SETTINGS = (
    "steps", "eval_every", "batch", "seq_len", "layers", "d_model", "d_ff", "heads", "dropout",
    "lr", "warmup", "eval_fraction",
)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    configure_xla()
    args = parse_args(argv)
    if args.from_json is not None:
        payload = read_json(args.from_json)
        plot(args.from_json.with_suffix(".png"), payload)
        print(markdown_table(payload["summary"]))
        return 0
    corpus, corpus_info = prepare_corpus(args.workdir.absolute(), args.corpus)
    payload: dict[str, Any] = {
        "command": " ".join(
            ["python -m bench.ablations", *(sys.argv[1:] if argv is None else argv)]
        ),
        "settings": {k: getattr(args, k) for k in SETTINGS},
        "seeds": args.seeds,
        "variants": args.variants,
        "corpus": corpus_info,
        "machine": machine_info(),
        "runs": [],
        "summary": [],
    }
    png = args.out.with_suffix(".png")
    start = time.perf_counter()
    for seed in args.seeds:  # seed-major: an interrupted sweep still has comparable pairs
        for variant in args.variants:
            print(f"=== {variant}, seed {seed}", flush=True)
            run = run_variant(args, variant, seed, corpus)
            print(f"=== {variant}, seed {seed}: final eval bpc {run['final_bpc']:.4f} "
                  f"({run['wall_s'] / 60:.1f} min)", flush=True)  # fmt: skip
            payload["runs"].append(run)
            payload["summary"] = summarize(payload["runs"])
            payload["total_wall_s"] = round(time.perf_counter() - start, 1)
            write_json(args.out, payload)
            plot(png, payload)
    print(markdown_table(payload["summary"]))
    print(f"wrote {args.out} and {png} ({payload['total_wall_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
