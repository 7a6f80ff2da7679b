"""The pod table of docs/pods.md from ``bench/aot_tpu`` results (compiled, not run).

python -m bench.aot_tpu_table bench/results/aot_tpu_*.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def _collectives(prog: dict[str, Any]) -> str:
    parts = [
        f"{kind} {v['count']}x {v['bytes'] / 2**30:.2f} GiB"
        for kind, v in sorted(prog["collectives"].items(), key=lambda kv: -kv[1]["bytes"])
    ]
    return "; ".join(parts) or "none"


def row(record: dict[str, Any]) -> str:
    config = pathlib.Path(record["config"]).stem
    mesh = "x".join(str(x) for x in record["mesh_shape"])
    command = f"`{record['command']}`"
    if "error" in record:
        cells = [config, record["topology"], mesh, f"does not fit: {record['error']}"]
        return "| " + " | ".join([*cells, "", "", "", "", "", command]) + " |"
    train = record["programs"]["train_step"]
    m = train["memory"]
    memory = (
        f"{_gib(m['total_bytes'])} of {_gib(m['hbm_bytes'])} (args {_gib(m['argument_bytes'])},"
        f" temp {_gib(m['temp_bytes'])})"
    )
    batch = f"{record['batch_size']} x {record['seq_len']}"
    if record.get("grad_accum_steps", 1) > 1:
        batch += f" ({record['grad_accum_steps']} micro-batches)"
    decode = "not compiled"
    if "decode_step" in record["programs"]:
        prefill, step = record["programs"]["prefill"], record["programs"]["decode_step"]
        decode = (
            f"prefill {_gib(prefill['memory']['total_bytes'])} ({prefill['batch']} x "
            f"{prefill['prompt_len']}), step {_gib(step['memory']['total_bytes'])}"
        )
    return (
        f"| {config} | {record['topology']} ({record['chips']} chips) | {mesh} "
        f"| {memory} | {train['model_flops_per_chip'] / 1e12:.1f} | {_collectives(train)} "
        f"| {train['projected_tokens_per_second']:,.0f} | {batch} | {decode} | {command} |"
    )


HEADER = (
    "| config | topology | mesh (data x fsdp x model) | per-chip memory, GiB | model TFLOP per "
    "chip per step | collectives per chip (in the HLO) | projected tokens/s | batch x length "
    "| decoding, GiB per chip | command |\n|---|---|---|---|---|---|---|---|---|---|"
)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.aot_tpu_table",
        description="Print docs/pods.md's table from bench.aot_tpu --json results.",
    )
    parser.add_argument("paths", nargs="+", help="JSON lists written by bench.aot_tpu --json")
    paths = parser.parse_args(argv).paths
    records = [r for p in paths for r in json.loads(pathlib.Path(p).read_text())]
    print(HEADER)
    for record in records:
        print(row(record))


if __name__ == "__main__":
    main(sys.argv[1:])
