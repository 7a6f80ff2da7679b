"""Where a training step's time goes: a ``jax.profiler`` trace grouped by what each op computes.

    python -m bench.profile_step                 # the peers' configuration (16K tokens, 6 layers)
    python -m bench.profile_step --len 4096 --layers 2 --out /tmp/step_profile

Runs ``bench.train_step`` with ``--steps 1 --profile`` (one warm-up step, one traced step) and
``--hlo-out``, then sums the durations of the trace's XLA op events by category. Each event is
named after an op of the compiled HLO, whose ``op_name`` metadata says which JAX operation it
came from: dots inside the attention kernel's window loop (a ``while`` nested in the layer
scan) are told apart from the dense matmuls of the feed-forward, projections and head, and
sorts, gathers and reductions are grouped on their own. Ops that overlap in time share it
(:func:`attributed_seconds`), so the categories add up to the wall time during which ops ran.

Then (unless ``--no-floor``) it measures the machine's matmul peak and memory bandwidth and
prints each category against its floor (:mod:`bench.roofline`): how long the same compiled
work would take at those rates, and the ops that lose the most time to it.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import gzip
import json
import pathlib
import re
import sys

from bench import roofline, train_step

# Event names that are the runtime's own bookkeeping, not XLA ops.
_RUNTIME_EVENTS = (
    "Thunk",
    "$",
    "Slinky",
    "PjitFunction",
    "while",
    "ThreadpoolListener",
    "CommonPjRt",
    "PythonRefManager",
    "Wait for ",
)


_ASYNC_DOT = re.compile(r"dot(_general)?(\.\d+)?$")


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


def op_events(trace_events: list[dict]) -> list[tuple[str, float, float]]:
    """The XLA ops of a trace as (name, start, end) in seconds; runtime bookkeeping dropped.

    A dot's event can end before its work does: XLA's CPU runtime hands the dots it does not
    give YNNPACK (the weight gradients' ``dot`` thunks) to its thread pool, closes their event
    at dispatch and marks completion with an ``end: <op>`` event. Such a dot ends at the first
    unclaimed ``end:`` event of its name after its start; without this, their work (about
    0.8 s of a 16K-token step, the thread pool busy with no op event open) counts as idle.
    Other ops' ``end:`` events are left alone: they record when the runtime got round to the
    completion, which can be long after the op (hundreds of ms while a dot held the thread).
    """
    starts: list[tuple[str, float, float]] = []
    completions: dict[str, list[float]] = collections.defaultdict(list)
    for event in trace_events:
        if event.get("ph") != "X" or "dur" not in event:
            continue
        name = event["name"]
        start = event["ts"] / 1e6 if "ts" in event else 0.0
        end = start + event["dur"] / 1e6
        if name.startswith("end: "):
            if _ASYNC_DOT.match(name[5:]):
                completions[name[5:]].append(end)
        elif not name.startswith(_RUNTIME_EVENTS):
            starts.append((name, start, end))
    for ends in completions.values():
        ends.sort()
    claimed: collections.Counter[str] = collections.Counter()
    ops = []
    for name, start, end in sorted(starts, key=lambda op: op[1]):
        ends = completions.get(name, [])
        i = bisect.bisect_left(ends, start, lo=claimed[name])
        if i < len(ends):
            end = max(end, ends[i])
            claimed[name] = i + 1
        ops.append((name, start, end))
    return ops


def attributed_seconds(ops: list[tuple[str, float, float]]) -> list[tuple[str, float]]:
    """Each op's share of the wall clock: an interval where k ops run counts 1/k to each.

    XLA's CPU runtime overlaps ops: a thread waiting for a multi-threaded dot picks up the
    next independent op, so that op's event lies inside the dot's (same thread, same time).
    Summing raw durations counts such intervals twice and makes the waiting op look slow
    (a feed-forward matmul measured 2x its real time that way). Shared this way the
    attributions sum to the time during which any op ran, at most the step's wall time.
    """
    boundaries = sorted({t for _, start, end in ops for t in (start, end)})
    if not boundaries:
        return []
    index = {t: i for i, t in enumerate(boundaries)}
    starting: dict[int, list[int]] = collections.defaultdict(list)
    ending: dict[int, list[int]] = collections.defaultdict(list)
    for k, (_, start, end) in enumerate(ops):
        starting[index[start]].append(k)
        ending[index[end]].append(k)
    share = [0.0] * len(ops)
    active: set[int] = set()
    for i, t in enumerate(boundaries[:-1]):
        active.difference_update(ending[i])
        active.update(starting[i])
        if active:
            dt = (boundaries[i + 1] - t) / len(active)
            for k in active:
                share[k] += dt
    return [(name, share[k]) for k, (name, _, _) in enumerate(ops)]


def summarise(trace_events: list[dict], names: dict[str, str]) -> dict[str, float]:
    """Wall-clock seconds per category (:func:`attributed_seconds`) over the trace's ops."""
    seconds: collections.Counter[str] = collections.Counter()
    for name, share in attributed_seconds(op_events(trace_events)):
        seconds[category(name, names.get(name, ""))] += share
    return dict(seconds.most_common())


def markdown(seconds: dict[str, float], step_s: float) -> str:
    total = sum(seconds.values())
    lines = ["| XLA ops | seconds | share |", "|---|---:|---:|"]
    lines += [f"| {k} | {v:.2f} | {100 * v / total:.0f}% |" for k, v in seconds.items()]
    lines.append(f"| ops' wall time (step wall time {step_s:.2f} s) | {total:.2f} | |")
    return "\n".join(lines)


def trace_events(out: pathlib.Path) -> list[dict]:
    """The events of the newest perfetto trace this tool left under ``out`` (its ``--out``)."""
    traces = sorted((out / "trace").rglob("*perfetto_trace.json.gz"))
    if not traces:
        raise SystemExit(
            f"no perfetto trace under {out / 'trace'}: run python -m bench.profile_step "
            f"--out {out} (did jax.profiler run?)"
        )
    payload = json.loads(gzip.open(traces[-1]).read())
    return payload["traceEvents"] if isinstance(payload, dict) else payload


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Every other argument is bench.train_step's (--len, --layers, --attn, ...; see "
        "python -m bench.train_step --help).",
    )
    parser.add_argument("--out", default="/tmp/reformer_jax_step_profile", help="trace and HLO")
    parser.add_argument(
        "--no-floor",
        action="store_true",
        help="skip measuring the machine's matmul peak and bandwidth and the per-op floor table",
    )
    args, step_args = parser.parse_known_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    hlo = out / "step.hlo.txt"
    result = train_step.main(
        [*step_args, "--steps", "1", "--profile", str(out / "trace"), "--hlo-out", str(hlo)]
    )
    events = trace_events(out)
    hlo_text = hlo.read_text()
    names = op_names(hlo_text)
    seconds = summarise(events, names)
    print(markdown(seconds, result["s_per_step"]))
    if not args.no_floor:
        print()
        print(floor_report(events, hlo_text, names))
    return 0


def floor_report(events: list[dict], hlo_text: str, names: dict[str, str], top: int = 12) -> str:
    """The categories against the machine's floor (:mod:`bench.roofline`), and the ops that
    lose the most time to it."""
    machine = roofline.Machine(roofline.matmul_peak(), roofline.memory_bandwidth())
    module = roofline.Module.parse(hlo_text)
    timed = attributed_seconds(op_events(events))
    table, ops = roofline.floors(timed, module, machine, lambda n: category(n, names.get(n, "")))
    lines = [
        roofline.markdown(table, machine),
        "",
        "| op | runs | measured, s | floor, s | category |",
    ]
    lines.append("|---|---:|---:|---:|---|")
    for name, measured, floor, runs in ops[:top]:  # largest gap first
        lines.append(
            f"| {name} | {runs} | {measured:.3f} | {floor:.3f} | "
            f"{category(name, names.get(name, ''))} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
