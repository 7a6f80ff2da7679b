"""Memory of a training step against depth and against length, from compiled memory.

Two figures, one subcommand each:

    python -m bench.memory_scaling depth     # memory vs layers, reversible vs ordinary stack
    python -m bench.memory_scaling length    # longest trainable length per attention kind
    python -m bench.memory_scaling depth --from-json bench/results/memory_depth.json

The step is the library's training step (``reformer_jax.train.trainer.make_train_step``: loss
value-and-grad, Adam update, metrics), jitted with parameters and optimiser state donated, on
the configuration of ``bench/train_step.py`` (batch 1, d_model 256, 4 heads x 64, d_ff 1024,
LSH chunk 64 with 2 hashes and automatic buckets, local chunk 64, axial positions whose two
factors multiply to the length, float32). It is compiled on abstract inputs, never run, and
``memory_analysis()`` gives its buffers: ``total = temp + arguments + outputs - aliased``
(the donated parameters and optimiser state are reused for the outputs, so they count once).
On CPU these numbers are deterministic. ``--measure-rss`` (depth) and ``--verify`` (length)
also run the step in a fresh ``python -m bench.train_step`` process per configuration and
record its peak resident set, which adds the interpreter, JAX's runtime and the host copy of
the initial parameters to the compiled buffers.

``depth``: layers 2..24 at ``--length`` (16384), both stacks. ``length``: for each attention
kind (the same model with every layer's attention replaced), lengths rising in steps of 2x and
1.5x (4K, 6K, 8K, 12K, ... up to ``--max-length``); a series stops at the first length whose
compiled total exceeds ``--budget-gib`` (default: this machine's RAM minus ``--margin-gib``).

Results: JSON (settings, machine, every compiled configuration) at ``--out``, rewritten after
each configuration, and a PNG next to it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from bench import results_json, train_step
from bench.machine import machine_info
from reformer_jax.runtime import configure_xla

RESULTS = Path(__file__).resolve().parent / "results"
GIB = 2**30
KINDS = ("full", "local", "lsh")
DEFAULT_LAYERS = (2, 4, 6, 8, 12, 16, 20, 24)
STACKS = ("reversible", "ordinary")


# ----------------------------------------------------------------------------------------------
# The measured step.


def step_argv(
    args: argparse.Namespace, *, length: int, layers: int, attn: str, reversible: bool
) -> list[str]:
    """``bench.train_step`` flags for one configuration: the compiled and the run step are
    built from the same flags, so they are the same model."""
    argv = [
        *("--len", str(length), "--layers", str(layers), "--attn", attn),
        *("--d", str(args.d), "--heads", str(args.heads), "--ff", str(args.ff)),
        *("--hashes", str(args.hashes), "--chunk", str(args.chunk)),
        *("--batch", str(args.batch), "--ff-chunk", str(args.ff_chunk)),
    ]
    return argv + ([] if reversible else ["--ordinary"])


def compiled_memory(argv: Sequence[str]) -> dict[str, Any]:
    """Compiles (does not run) the training step of ``bench.train_step`` with ``argv`` and
    returns its ``memory_analysis()`` in bytes, plus ``total_bytes`` and the compile time."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from reformer_jax.model import ReformerLM
    from reformer_jax.train.trainer import make_train_step

    step_args = train_step.parse_args(list(argv))
    cfg = train_step.model_config(step_args)
    if cfg.pos_embedding == "axial" and cfg.max_length != step_args.len:
        raise ValueError(f"axial shape {cfg.axial_shape} does not cover length {step_args.len}")
    start = time.perf_counter()
    model = nnx.eval_shape(lambda: ReformerLM(cfg, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optax.adam(1e-4)
    opt_state = jax.eval_shape(tx.init, params)
    shape = (step_args.batch, step_args.len)
    batch = {
        "inputs": jax.ShapeDtypeStruct(shape, jnp.int32),
        "targets": jax.ShapeDtypeStruct(shape, jnp.int32),
        "weights": jax.ShapeDtypeStruct(shape, jnp.float32),
    }
    step = jax.ShapeDtypeStruct((), jnp.int32)
    step_fn = jax.jit(make_train_step(graphdef, tx, cfg, accum=1, seed=0), donate_argnums=(0, 1))
    compiled = step_fn.lower(params, opt_state, batch, step).compile()
    mem = compiled.memory_analysis()
    out = {
        "temp_bytes": int(mem.temp_size_in_bytes),
        "argument_bytes": int(mem.argument_size_in_bytes),
        "output_bytes": int(mem.output_size_in_bytes),
        "alias_bytes": int(mem.alias_size_in_bytes),
        "param_count": int(sum(x.size for x in jax.tree.leaves(params))),
        "axial_shape": list(cfg.axial_shape),
        "compile_s": round(time.perf_counter() - start, 2),
    }
    out["total_bytes"] = (
        out["temp_bytes"] + out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"]
    )
    return out


def run_step(argv: Sequence[str], timeout: float | None = None) -> dict[str, Any]:
    """Runs one step (after the warm-up step) of ``bench.train_step`` in a fresh process and
    returns its JSON line, or ``{"error": ...}`` if it failed (e.g. killed for memory)."""
    cmd = [sys.executable, "-m", "bench.train_step", *argv, "--steps", "1"]
    root = Path(__file__).resolve().parent.parent
    try:
        proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines()[-1:] or [""]
        return {"error": f"exit code {proc.returncode}: {tail[0][:200]}"}
    result = json.loads(lines[-1])
    keep = ("peak_rss_mib", "s_per_step", "compile_s", "xla_temp_mib")
    return {k: result[k] for k in keep if k in result}


# ----------------------------------------------------------------------------------------------
# The length search.


def length_steps(start: int, stop: int) -> list[int]:
    """Powers of two and 1.5x powers of two from ``start`` to ``stop`` inclusive:
    4096 -> [4096, 6144, 8192, 12288, ...]."""
    out = []
    power = 1
    while power <= stop:
        for n in (power, power + power // 2):
            if start <= n <= stop and n not in out:
                out.append(n)
        power *= 2
    return out


def search_max_length(
    lengths: Iterable[int],
    memory: Callable[[int], int],
    budget_bytes: int,
    on_row: Callable[[dict[str, Any]], None] = lambda row: None,
) -> int | None:
    """Largest length (scanned upwards) whose ``memory(length)`` fits in ``budget_bytes``;
    stops at the first that does not (memory grows with length, and compiles get slow).
    ``memory`` may return a dict with ``total_bytes``; each row is passed to ``on_row``."""
    best = None
    for length in sorted(lengths):
        measured = memory(length)
        row = dict(measured) if isinstance(measured, dict) else {"total_bytes": int(measured)}
        row["length"] = length
        row["fits"] = row["total_bytes"] <= budget_bytes
        on_row(row)
        if not row["fits"]:
            break
        best = length
    return best


# ----------------------------------------------------------------------------------------------
# Machine, JSON, plots.


def total_ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024 / GIB
    except OSError:
        pass
    return None


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)


def _label(length: int) -> str:
    if length % (1024 * 1024) == 0:
        return f"{length // (1024 * 1024)}M"
    return f"{length // 1024}K" if length % 1024 == 0 else str(length)


def _config_line(settings: dict[str, Any], machine: dict[str, Any]) -> str:
    return (
        f"d_model {settings['d']}, {settings['heads']} heads, d_ff {settings['ff']}, chunk "
        f"{settings['chunk']}, {settings['hashes']} hashes, batch {settings['batch']}, float32 — "
        f"{machine.get('cpu_model')}, jax {machine.get('jax')} ({machine.get('backend')})"
    )


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    tmp.replace(path)


def plot_depth(path: Path, payload: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = payload["settings"]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    colors = {"reversible": "tab:blue", "ordinary": "tab:red"}
    for stack in STACKS:
        rows = sorted(
            (r for r in payload["rows"] if r["stack"] == stack), key=lambda r: r["layers"]
        )
        if not rows:
            continue
        layers = [r["layers"] for r in rows]
        ax.plot(
            layers,
            [r["total_bytes"] / GIB for r in rows],
            "o-",
            color=colors[stack],
            label=f"{stack}: compiled",
        )
        rss = [(r["layers"], r["peak_rss_mib"] / 1024) for r in rows if r.get("peak_rss_mib")]
        if rss:
            ax.plot(*zip(*rss, strict=True), "s--", color=colors[stack], label=f"{stack}: peak RSS")
    ax.set_xticks(settings["layers"])
    ax.set_xlabel("layers")
    ax.set_ylabel("memory of one training step (GiB)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(
        f"Training-step memory vs depth, {_label(settings['length'])} tokens, "
        f"{settings['attn']} attention",
        fontsize=10,
    )
    fig.text(0.5, 0.01, _config_line(settings, payload["machine"]), ha="center", fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    _save(fig, path)


def plot_length(path: Path, payload: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    settings = payload["settings"]
    budget = settings["budget_gib"]
    colors = {"full": "black", "local": "tab:red", "lsh": "tab:blue"}
    fig, (ax_bar, ax_mem) = plt.subplots(1, 2, figsize=(13, 5))
    kinds = [k for k in settings["kinds"] if k in payload["max_length"]]
    best = [payload["max_length"][k] or 0 for k in kinds]
    bars = ax_bar.bar(kinds, best, color=[colors.get(k) for k in kinds])
    for bar, n, kind in zip(bars, best, kinds, strict=True):
        # A series that never went over the budget stopped at --max-length: a lower bound.
        capped = n and all(r["fits"] for r in payload["rows"] if r["attn"] == kind)
        ax_bar.annotate(
            (f">= {_label(n)} (search cap)" if capped else _label(n)) if n else "none",
            (bar.get_x() + bar.get_width() / 2, max(n, 1)),
            ha="center",
            va="bottom",
        )
    ax_bar.set_yscale("log", base=2)
    ticks = sorted({n for n in best if n})
    ax_bar.set_yticks(ticks, [_label(n) for n in ticks])
    ax_bar.minorticks_off()
    ax_bar.set_ylabel("longest trainable sequence (tokens)")
    ax_bar.set_title(f"Longest length whose training step fits in {budget:g} GiB", fontsize=10)
    for kind in kinds:
        rows = sorted((r for r in payload["rows"] if r["attn"] == kind), key=lambda r: r["length"])
        ax_mem.plot(
            [r["length"] for r in rows],
            [r["total_bytes"] / GIB for r in rows],
            "o-",
            color=colors.get(kind),
            label=kind,
        )
        rss = [(r["length"], r["peak_rss_mib"] / 1024) for r in rows if r.get("peak_rss_mib")]
        if rss:
            ax_mem.plot(*zip(*rss, strict=True), "s", color=colors.get(kind), mfc="white")
    ax_mem.axhline(budget, color="gray", ls="--", lw=1)
    ax_mem.annotate(f"budget {budget:g} GiB", (0.02, budget), xycoords=("axes fraction", "data"),
                    va="bottom", fontsize=8, color="gray")  # fmt: skip
    lengths = sorted({r["length"] for r in payload["rows"]})
    ax_mem.set_xscale("log", base=2)
    ax_mem.set_yscale("log", base=2)
    ax_mem.yaxis.set_major_formatter(ticker.FuncFormatter(lambda y, _: f"{y:g}"))
    shown = [n for n in lengths if n & (n - 1) == 0] or lengths
    ax_mem.set_xticks(shown, [_label(n) for n in shown])
    ax_mem.minorticks_off()
    ax_mem.set_xlabel("sequence length (tokens)")
    ax_mem.set_ylabel("compiled memory of one training step (GiB)")
    ax_mem.set_title("Compiled memory (squares: measured peak RSS)", fontsize=10)
    ax_mem.grid(True, alpha=0.3)
    ax_mem.legend()
    fig.suptitle(
        f"{settings['layers']} layers, {'ordinary' if settings['ordinary'] else 'reversible'} "
        f"stack; {_config_line(settings, payload['machine'])}",
        fontsize=9,
    )
    fig.tight_layout()
    _save(fig, path)


PLOTS = {"depth": plot_depth, "length": plot_length}


def depth_table(payload: dict[str, Any]) -> str:
    lines = [
        "| layers | stack | compiled total GiB | temp GiB | peak RSS GiB |",
        "| ---: | --- | ---: | ---: | ---: |",
    ]
    for r in sorted(payload["rows"], key=lambda r: (r["layers"], STACKS.index(r["stack"]))):
        rss = f"{r['peak_rss_mib'] / 1024:.2f}" if r.get("peak_rss_mib") else "-"
        lines.append(
            f"| {r['layers']} | {r['stack']} | {r['total_bytes'] / GIB:.2f} | "
            f"{r['temp_bytes'] / GIB:.2f} | {rss} |"
        )
    return "\n".join(lines)


def length_table(payload: dict[str, Any]) -> str:
    lines = [
        "| attention | longest length | compiled GiB | peak RSS GiB | first length over |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for kind in payload["settings"]["kinds"]:
        rows = {r["length"]: r for r in payload["rows"] if r["attn"] == kind}
        best = payload["max_length"].get(kind)
        over = [n for n, r in rows.items() if not r["fits"]]
        row = rows.get(best, {})
        rss = f"{row['peak_rss_mib'] / 1024:.2f}" if row.get("peak_rss_mib") else "-"
        lines.append(
            f"| {kind} | {_label(best) if best else 'none'} | "
            f"{row['total_bytes'] / GIB:.2f} | {rss} | "
            f"{_label(min(over)) if over else 'none (search cap)'} |"
            if row
            else f"| {kind} | none | - | - | {_label(min(over)) if over else '-'} |"
        )
    return "\n".join(lines)


TABLES = {"depth": depth_table, "length": length_table}


# ----------------------------------------------------------------------------------------------
# Command line.


def _lengths(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1024, "m": 1024 * 1024}.get(text[-1:], 1)
    return int(float(text.rstrip("km")) * scale)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.memory_scaling",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="figure", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--d", type=int, default=256, help="d_model")
    common.add_argument("--heads", type=int, default=4)
    common.add_argument("--ff", type=int, default=1024, help="d_ff")
    common.add_argument("--hashes", type=int, default=2, help="LSH hash rounds")
    common.add_argument("--chunk", type=int, default=64, help="LSH and local chunk length")
    common.add_argument("--batch", type=int, default=1)
    common.add_argument("--ff-chunk", type=int, default=0, help="feed-forward rows per chunk")
    common.add_argument("--out", type=Path, default=None, help="JSON path (PNG next to it)")
    common.add_argument("--no-plot", action="store_true")
    common.add_argument(
        "--from-json", type=results_json, default=None, help="replot (no measuring)"
    )
    common.add_argument(
        "--run-timeout", type=float, default=7200, help="seconds allowed per run subprocess"
    )

    depth = sub.add_parser(
        "depth",
        parents=[common],
        help="memory vs number of layers, reversible and ordinary stack",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    depth.add_argument("--length", type=_lengths, default=16384)
    depth.add_argument("--layers", type=int, nargs="+", default=list(DEFAULT_LAYERS))
    depth.add_argument("--stacks", nargs="+", choices=STACKS, default=list(STACKS))
    depth.add_argument("--attn", choices=KINDS, default="lsh")
    depth.add_argument(
        "--measure-rss",
        action="store_true",
        help="also run one step per configuration in a fresh process (peak RSS)",
    )

    length = sub.add_parser(
        "length",
        parents=[common],
        help="longest length whose training step fits, per attention kind",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    length.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    length.add_argument("--layers", type=int, default=6)
    length.add_argument("--ordinary", action="store_true", help="activation-storing stack")
    length.add_argument("--min-length", type=_lengths, default=4096)
    length.add_argument("--max-length", type=_lengths, default=1024 * 1024)
    length.add_argument(
        "--budget-gib",
        type=float,
        default=None,
        help="memory a step may use; default: total RAM minus --margin-gib",
    )
    length.add_argument(
        "--margin-gib",
        type=float,
        default=1.5,
        help="RAM left for the interpreter, JAX's runtime and the host copy of the parameters",
    )
    length.add_argument(
        "--verify",
        action="store_true",
        help="run one step at each kind's longest length in a fresh process (peak RSS); "
        "if it fails, also at the next shorter length",
    )
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = RESULTS / f"memory_{args.figure}.json"
    if args.figure == "length" and args.budget_gib is None and args.from_json is None:
        ram = total_ram_gib()
        if ram is None:
            parser.error("cannot read the total RAM: give --budget-gib")
        args.budget_gib = round(ram - args.margin_gib, 1)
    return args


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    skip = ("from_json", "no_plot", "out")
    return {k: v for k, v in vars(args).items() if k not in skip}


def run_depth(args: argparse.Namespace, payload: dict[str, Any]) -> None:
    for layers in args.layers:
        for stack in args.stacks:
            argv = step_argv(
                args,
                length=args.length,
                layers=layers,
                attn=args.attn,
                reversible=stack == "reversible",
            )
            row = {"layers": layers, "stack": stack, **compiled_memory(argv)}
            if args.measure_rss:
                row.update(run_step(argv, args.run_timeout))
            payload["rows"].append(row)
            rss = (
                f", peak RSS {row['peak_rss_mib'] / 1024:.2f} GiB" if "peak_rss_mib" in row else ""
            )
            print(
                f"{layers:3d} layers {stack:10s}: compiled {row['total_bytes'] / GIB:6.2f} GiB "
                f"(temp {row['temp_bytes'] / GIB:.2f}){rss}{'  ' + row.get('error', '')}"
                f"  [compile {row['compile_s']:.0f} s]",
                flush=True,
            )
            write_json(args.out, payload)


def run_length(args: argparse.Namespace, payload: dict[str, Any]) -> None:
    budget = int(args.budget_gib * GIB)
    lengths = length_steps(args.min_length, args.max_length)
    payload["max_length"] = {}
    for kind in args.kinds:

        def memory(length: int, kind: str = kind) -> dict[str, Any]:
            argv = step_argv(
                args, length=length, layers=args.layers, attn=kind, reversible=not args.ordinary
            )
            return compiled_memory(argv)

        def on_row(row: dict[str, Any], kind: str = kind) -> None:
            payload["rows"].append({"attn": kind, **row})
            print(
                f"{kind:5s} {_label(row['length']):>5s}: compiled {row['total_bytes'] / GIB:7.2f}"
                f" GiB {'fits' if row['fits'] else 'over budget'}  [compile "
                f"{row['compile_s']:.0f} s]",
                flush=True,
            )
            write_json(args.out, payload)

        best = search_max_length(lengths, memory, budget, on_row)
        payload["max_length"][kind] = best
        write_json(args.out, payload)
        if args.verify and best is not None:
            fitting = [r for r in payload["rows"] if r["attn"] == kind and r["fits"]]
            for row in sorted(fitting, key=lambda r: -r["length"])[:2]:
                argv = step_argv(
                    args,
                    length=row["length"],
                    layers=args.layers,
                    attn=kind,
                    reversible=not args.ordinary,
                )
                row.update(run_step(argv, args.run_timeout))
                outcome = row.get("error") or (
                    f"peak RSS {row['peak_rss_mib'] / 1024:.2f} GiB, {row['s_per_step']:.0f} s/step"
                )
                print(f"{kind:5s} {_label(row['length']):>5s}: ran one step: {outcome}", flush=True)
                write_json(args.out, payload)
                if "error" not in row:
                    break


def main(argv: Sequence[str] | None = None) -> int:
    configure_xla()
    args = parse_args(argv)
    if args.from_json is not None:
        payload = json.loads(args.from_json.read_text())
        print(TABLES[args.figure](payload))
        if not args.no_plot:
            png = args.from_json.with_suffix(".png")
            PLOTS[args.figure](png, payload)
            print(f"wrote {png}", file=sys.stderr)
        return 0
    payload: dict[str, Any] = {
        "figure": args.figure,
        "command": " ".join(
            ["python -m bench.memory_scaling", *(sys.argv[1:] if argv is None else argv)]
        ),
        "measure": "compiled memory_analysis(): temp + arguments + outputs - aliased (donated)",
        "settings": _settings(args),
        "machine": machine_info(),
        "rows": [],
    }
    start = time.perf_counter()
    (run_depth if args.figure == "depth" else run_length)(args, payload)
    payload["elapsed_s"] = round(time.perf_counter() - start, 1)
    write_json(args.out, payload)
    print(TABLES[args.figure](payload))
    print(f"wrote {args.out}", file=sys.stderr)
    if not args.no_plot:
        png = args.out.with_suffix(".png")
        PLOTS[args.figure](png, payload)
        print(f"wrote {png}", file=sys.stderr)
    print(f"total {payload['elapsed_s']:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
