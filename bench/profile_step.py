"""Where a training step's time goes: a ``jax.profiler`` trace grouped by what each op computes.

    python -m bench.profile_step                 # the peers' configuration (16K tokens, 6 layers)
    python -m bench.profile_step --len 4096 --layers 2 --out /tmp/step_profile

Runs ``bench.train_step`` with ``--steps 1 --profile`` (one warm-up step, one traced step) and
``--hlo-out``, then sums the durations of the trace's XLA op events by category. Each event is
named after an op of the compiled HLO, whose ``op_name`` metadata says which JAX operation it
came from: dots inside the attention kernel's window loop (a ``while`` nested in the layer
scan) are told apart from the dense matmuls of the feed-forward, projections and head, and
sorts, gathers and reductions are grouped on their own. Op times can overlap (XLA runs
independent ops concurrently), so the total may exceed the step's wall time.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
import re
import sys

from bench import train_step

# Event names that are the runtime's own bookkeeping, not XLA ops.
_RUNTIME_EVENTS = ("Thunk", "$", "Slinky", "PjitFunction", "while")


def op_names(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> its ``op_name`` metadata (the JAX operation it came from)."""
    pattern = re.compile(r'^\s*(?:ROOT )?%([\w.\-]+) = .*?op_name="([^"]*)"', re.M)
    return {m.group(1): m.group(2) for m in pattern.finditer(hlo_text)}


def category(event: str, op_name: str) -> str:
    in_window_loop = op_name.count("while/body") >= 2
    if "sort" in event or "/sort" in op_name:
        return "sorts (bucket order)"
    if "gather" in event or "scatter" in event or "gather" in op_name:
        return "gathers / scatters (sort and unsort of the hash rounds)"
    if "dot_general" in op_name or event.startswith("dot"):
        if in_window_loop:
            return "attention: the window loop's chunk matmuls"
        return "dense matmuls (feed-forward, projections, hashing, LM head)"
    if in_window_loop:
        return "attention: the window loop's masks, softmax and window assembly"
    if "reduce" in event or "reduce" in op_name or "argmax" in op_name:
        return "reductions (LayerNorm statistics, bucket argmax, norms)"
    return "other elementwise ops and copies"


def summarise(trace_events: list[dict], names: dict[str, str]) -> dict[str, float]:
    """Seconds per category over the trace's complete ("X") events."""
    seconds: collections.Counter[str] = collections.Counter()
    for event in trace_events:
        if event.get("ph") != "X" or "dur" not in event:
            continue
        name = event["name"]
        if name.startswith(_RUNTIME_EVENTS):
            continue
        seconds[category(name, names.get(name, ""))] += event["dur"] / 1e6
    return dict(seconds.most_common())


def markdown(seconds: dict[str, float], step_s: float) -> str:
    total = sum(seconds.values())
    lines = ["| XLA ops | seconds | share |", "|---|---:|---:|"]
    lines += [f"| {k} | {v:.2f} | {100 * v / total:.0f}% |" for k, v in seconds.items()]
    lines.append(f"| total op time (step wall time {step_s:.2f} s) | {total:.2f} | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Every other argument is bench.train_step's (--len, --layers, --attn, ...; see "
        "python -m bench.train_step --help).",
    )
    parser.add_argument("--out", default="/tmp/reformer_jax_step_profile", help="trace and HLO")
    args, step_args = parser.parse_known_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    hlo = out / "step.hlo.txt"
    result = train_step.main(
        [*step_args, "--steps", "1", "--profile", str(out / "trace"), "--hlo-out", str(hlo)]
    )
    traces = sorted((out / "trace").rglob("*perfetto_trace.json.gz"))
    if not traces:
        raise SystemExit(f"no perfetto trace under {out / 'trace'}: did jax.profiler run?")
    payload = json.loads(gzip.open(traces[-1]).read())
    events = payload["traceEvents"] if isinstance(payload, dict) else payload
    seconds = summarise(events, op_names(hlo.read_text()))
    print(markdown(seconds, result["s_per_step"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
