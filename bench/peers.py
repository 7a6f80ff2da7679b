"""Training-step throughput and peak memory of reformer_jax against the PyTorch Reformer ports.

    python -m bench.peers                                   # the issue's configuration, 3 rounds
    python -m bench.peers --configs 16384x6 4096x6 16384x12 65536x6:1 --steps 3
    python -m bench.peers --from-json bench/results/peers.json

Each configuration ``LENxLAYERS[:ROUNDS]`` is one training step (forward, backward, Adam) at
batch 1, d_model 256, 4 heads x 64, d_ff 1024, LSH chunk 64, 2 hashes, axial positions, no
dropout, float32, 2 threads. Every implementation runs in its own fresh process (so each peak
resident set is its own) and the implementations alternate within each round, so a slow phase
of the machine hits all of them alike. Each run reports the median of ``--steps`` timed steps
after one warm-up step; the table gives the median over rounds of those medians and of the peak
RSS.

Implementations: ``reformer_jax`` (``bench/train_step.py``, the library's training step), and the
peers' own scripts from ``--peers-dir`` (default ``../shared/peers``): Hugging Face transformers'
``ReformerModelWithLMHead`` (``hf``) and ``reformer-pytorch`` (``lucidrains``), run with
``--peers-python``, an interpreter of an environment holding torch, transformers and
reformer-pytorch (``pip install -e .[reference]`` plus ``reformer-pytorch``; see
docs/benchmarks.md).

Model FLOPs utilisation uses the analytic count of :func:`flops_per_token` against the matrix
multiply rate measured at start-up (:func:`matmul_peak`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import statistics
import subprocess
import sys
import time
from typing import Any

from bench import results_json
from bench.roofline import matmul_peak

ROOT = pathlib.Path(__file__).resolve().parent.parent
IMPLS = ("reformer_jax", "hf", "lucidrains")
DEFAULT_PEERS_DIR = ROOT.parent / "shared" / "peers"


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """The issue's configuration; only length and depth vary between rows."""

    length: int
    layers: int
    d_model: int = 256
    n_heads: int = 4
    d_head: int = 64
    d_ff: int = 1024
    chunk: int = 64
    hashes: int = 2
    vocab: int = 256
    window_chunks: int = 2  # the chunk itself and one before

    @property
    def name(self) -> str:
        return f"{self.length}x{self.layers}"


def rotation_columns(length: int, chunk: int) -> int:
    """Columns of the LSH rotations under the automatic bucket count (kernels.auto_n_buckets)."""
    from reformer_jax.kernels.lsh import auto_n_buckets
    from reformer_jax.kernels.lsh import rotation_columns as columns

    return columns(auto_n_buckets(length, chunk))


def flops_per_token(cfg: StepConfig) -> dict[str, float]:
    """Forward multiply-add FLOPs per token (2 per multiply-add), by part.

    - projections: shared QK, V and output, ``3 * 2 * d_model * heads * d_head``;
    - hashing: ``2 * heads * d_head * hashes * columns``;
    - LSH attention: per hash round and head, scores and weighted values over a window of
      ``window_chunks * chunk`` keys, ``hashes * heads * 2 * (2 * d_head * window)``;
    - feed-forward: ``2 * 2 * d_model * d_ff``;
    - head: ``2 * (2 * d_model) * vocab`` (the LM head reads both reversible streams).
    """
    inner = cfg.n_heads * cfg.d_head
    window = cfg.window_chunks * cfg.chunk
    per_layer = {
        "projections": 3 * 2 * cfg.d_model * inner,
        "hashing": 2 * inner * cfg.hashes * rotation_columns(cfg.length, cfg.chunk),
        "attention": cfg.hashes * cfg.n_heads * 2 * (2 * cfg.d_head * window),
        "feedforward": 2 * 2 * cfg.d_model * cfg.d_ff,
    }
    parts = {k: float(v * cfg.layers) for k, v in per_layer.items()}
    parts["head"] = float(2 * 2 * cfg.d_model * cfg.vocab)
    parts["forward"] = sum(parts.values())
    # Training: backward = 2 x forward (model FLOPs). A reversible stack also recomputes the
    # layers' forward in its backward pass: executed FLOPs, not counted as useful work.
    parts["train_step"] = 3 * parts["forward"]
    parts["train_step_executed"] = parts["train_step"] + (parts["forward"] - parts["head"])
    return parts


def command(impl: str, cfg: StepConfig, args: argparse.Namespace) -> list[str]:
    common = ["--len", str(cfg.length), "--layers", str(cfg.layers), "--steps", str(args.steps)]
    if impl == "reformer_jax":
        return [sys.executable, "-m", "bench.train_step", *common, "--threads", "2"]
    peers = pathlib.Path(args.peers_dir)
    if impl == "hf":
        return [args.peers_python, str(peers / "hf_reformer_step.py"), *common, "--threads", "2"]
    if impl == "lucidrains":
        return [args.peers_python, str(peers / "lucidrains_step.py"), *common, "--threads", "2"]
    raise ValueError(f"unknown implementation {impl!r}; use one of {IMPLS}")


def run_one(impl: str, cfg: StepConfig, args: argparse.Namespace) -> dict[str, Any]:
    cmd = command(impl, cfg, args)
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"impl": impl, "config": cfg.name, "status": f"timeout after {args.timeout} s"}
    record: dict[str, Any] = {
        "impl": impl,
        "config": cfg.name,
        "wall_s": time.perf_counter() - start,
    }
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        record["status"] = f"failed (exit {proc.returncode}): {' | '.join(tail)}"
        return record
    result = json.loads(lines[-1])
    record.update(
        status="ok",
        s_per_step=result["s_per_step"],
        tokens_per_s=result["tokens_per_s"],
        peak_rss_mib=result["peak_rss_mib"],
        details=result,
    )
    return record


def parse_config(text: str, default_rounds: int) -> tuple[StepConfig, int]:
    spec, _, rounds = text.partition(":")
    length, _, layers = spec.partition("x")
    try:
        return StepConfig(int(length), int(layers)), int(rounds) if rounds else default_rounds
    except ValueError:
        raise SystemExit(
            f"--configs: {text!r} is not LENGTHxLAYERS[:ROUNDS] (e.g. 16384x6 or 65536x6:1)"
        ) from None


def summarise(
    runs: list[dict[str, Any]],
    peak_gflops: float | None,
    flops_by_config: dict[str, dict[str, float]],
) -> list[dict[str, Any]]:
    """One row per (config, impl): medians over the successful rounds, and ratios to peers.

    ``flops_by_config`` maps a config name to its :func:`flops_per_token` (computed by the probe
    process, so that this one never imports JAX; see ``main``).
    """
    rows = []
    for config in dict.fromkeys(r["config"] for r in runs):
        cfg = parse_config(config, 1)[0]
        flops = flops_by_config[config]
        for impl in dict.fromkeys(r["impl"] for r in runs if r["config"] == config):
            ok = [r for r in runs if r["config"] == config and r["impl"] == impl]
            ok = [r for r in ok if r.get("status") == "ok"]
            row: dict[str, Any] = {"config": config, "impl": impl, "rounds": len(ok)}
            if ok:
                step = statistics.median(r["s_per_step"] for r in ok)
                row.update(
                    s_per_step=step,
                    tokens_per_s=cfg.length / step,
                    peak_rss_mib=statistics.median(r["peak_rss_mib"] for r in ok),
                    model_tflop_per_step=flops["train_step"] * cfg.length / 1e12,
                )
                if peak_gflops:
                    row["mfu"] = flops["train_step"] * cfg.length / step / (peak_gflops * 1e9)
            else:
                statuses = [r.get("status") for r in runs if r["config"] == config]
                row["status"] = next((s for s in statuses if s != "ok"), "no runs")
            rows.append(row)
        ours = next((r for r in rows if r["config"] == config and r["impl"] == "reformer_jax"), {})
        peers = [r for r in rows if r["config"] == config and r["impl"] != "reformer_jax"]
        peers = [r for r in peers if "tokens_per_s" in r]
        if "tokens_per_s" in ours and peers:
            fastest = max(peers, key=lambda r: r["tokens_per_s"])
            leanest = min(peers, key=lambda r: r["peak_rss_mib"])
            ours["speedup_vs_fastest_peer"] = ours["tokens_per_s"] / fastest["tokens_per_s"]
            ours["fastest_peer"] = fastest["impl"]
            ours["memory_vs_leanest_peer"] = ours["peak_rss_mib"] / leanest["peak_rss_mib"]
            ours["leanest_peer"] = leanest["impl"]
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| config (tokens x layers) | implementation | s/step | tokens/s | peak RSS (GiB) | MFU |"
        " vs fastest peer (tokens/s) | vs leanest peer (memory) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "s_per_step" not in r:
            lines.append(f"| {r['config']} | {r['impl']} | {r.get('status')} | | | | | |")
            continue
        speed = r.get("speedup_vs_fastest_peer")
        memory = r.get("memory_vs_leanest_peer")
        cells = [
            r["config"],
            r["impl"],
            f"{r['s_per_step']:.2f}",
            f"{r['tokens_per_s']:,.0f}",
            f"{r['peak_rss_mib'] / 1024:.2f}",
            f"{100 * r['mfu']:.0f}%" if "mfu" in r else "",
            f"{speed:.2f}x ({r['fastest_peer']})" if speed else "",
            f"{memory:.2f}x ({r['leanest_peer']})" if memory else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(path: pathlib.Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = list(dict.fromkeys(r["config"] for r in rows))
    impls = [i for i in IMPLS if any(r["impl"] == i for r in rows)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(1, len(impls))
    for i, impl in enumerate(impls):
        for ax, key, scale in (
            (axes[0], "tokens_per_s", 1.0),
            (axes[1], "peak_rss_mib", 1 / 1024),
        ):
            values = []
            for config in configs:
                row = next((r for r in rows if r["config"] == config and r["impl"] == impl), {})
                values.append(row.get(key, math.nan) * scale)
            ax.bar([c + i * width for c in range(len(configs))], values, width, label=impl)
    for ax, title in zip(
        axes, ("training tokens/s (higher is better)", "peak RSS, GiB"), strict=True
    ):
        ax.set_xticks([c + width * (len(impls) - 1) / 2 for c in range(len(configs))])
        ax.set_xticklabels([f"{c}\n(tokens x layers)" for c in configs], fontsize=8)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend()
    fig.suptitle("One training step (fwd + bwd + Adam), batch 1, 2 CPU threads")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def peer_versions(python: str) -> dict[str, str]:
    code = (
        "import json, importlib.metadata as m\n"
        "out = {}\n"
        "for p in ('torch', 'transformers', 'reformer-pytorch'):\n"
        "    try: out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError: out[p] = 'missing'\n"
        "print(json.dumps(out))"
    )
    try:
        proc = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        return {"error": str(e)}
    return json.loads(proc.stdout)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["16384x6"])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per config")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run")
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    parser.add_argument(
        "--peers-python",
        default=os.environ.get("REFORMER_PEERS_PYTHON", "python3"),
        help="interpreter with torch, transformers and reformer-pytorch ($REFORMER_PEERS_PYTHON)",
    )
    parser.add_argument("--peers-dir", default=str(DEFAULT_PEERS_DIR))
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    parser.add_argument("--out", default="bench/results/peers.json")
    parser.add_argument(
        "--from-json", type=results_json, help="reprint the table and redraw the plot of a result"
    )
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        payload = json.loads(pathlib.Path(args.from_json).read_text())
        print(markdown(payload["rows"]))
        plot(pathlib.Path(args.from_json).with_suffix(".png"), payload["rows"])
        return 0
    configs = [parse_config(c, args.rounds) for c in args.configs]
    if args.probe:
        from bench.machine import machine_info
        from reformer_jax.runtime import configure_xla

        configure_xla()
        probe = {
            "machine": machine_info(),
            "matmul_peak_gflops": matmul_peak(),
            "flops_per_token": {c.name: flops_per_token(c) for c, _ in configs},
        }
        print(json.dumps(probe))
        return 0
    peers = [i for i in args.impls if i != "reformer_jax"]
    for impl in peers:
        script = pathlib.Path(command(impl, configs[0][0], args)[1])
        if not script.exists():
            raise SystemExit(f"--peers-dir: {script} does not exist; point it at the peer scripts")
    # JAX runs in a child process: a child's peak RSS (ru_maxrss) starts from its parent's
    # resident set at fork time, so this process must stay small.
    probe_cmd = [sys.executable, "-m", "bench.peers", "--probe", "--configs", *args.configs]
    probe = json.loads(
        subprocess.run(probe_cmd, cwd=ROOT, capture_output=True, text=True, check=True)
        .stdout.strip()
        .splitlines()[-1]
    )
    payload: dict[str, Any] = {
        "command": "python -m bench.peers " + " ".join(argv if argv is not None else sys.argv[1:]),
        **probe,
        "peer_versions": peer_versions(args.peers_python) if peers else {},
        "runs": [],
    }
    print(f"matmul peak: {payload['matmul_peak_gflops']:.0f} GFLOP/s", file=sys.stderr)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for cfg, rounds in configs:
        for round_index in range(rounds):
            for impl in args.impls:
                record = run_one(impl, cfg, args)
                record["round"] = round_index
                payload["runs"].append(record)
                shown = {k: record.get(k) for k in ("s_per_step", "peak_rss_mib", "status")}
                print(f"{cfg.name} round {round_index} {impl}: {shown}", file=sys.stderr)
                payload["rows"] = summarise(
                    payload["runs"], payload["matmul_peak_gflops"], payload["flops_per_token"]
                )
                tmp = out.with_suffix(".tmp")
                tmp.write_text(json.dumps(payload, indent=2))
                tmp.replace(out)  # a partial sweep is still a valid result file
    print(markdown(payload["rows"]))
    plot(out.with_suffix(".png"), payload["rows"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
