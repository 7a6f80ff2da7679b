"""bench/memory.py at toy size: every measurement runs end to end and is written and replotted."""

import json
import math

import pytest

from bench import memory
from bench.ablations import pydoc_topics_text


@pytest.mark.slow
def test_toy_run_writes_every_measurement(tmp_path, capsys):
    """Catches a benchmark that crashes on one of its parts (training with memory, streamed
    evaluation at several memory lengths, the Reformer baseline, compiled step memory) or
    writes results the plot and the docs cannot read."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(pydoc_topics_text()[:6000])
    out = tmp_path / "results" / "memory.json"
    argv = ["--toy", "--workdir", str(tmp_path / "runs"), "--out", str(out)]
    argv += ["--eval-multiples", "0,1,2", "--step-mem-lens", "0,8"]
    assert memory.main([*argv, "--corpus", str(corpus)]) == 0
    results = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert [r["variant"] for r in results["runs"]] == list(memory.DEFAULT_VARIANTS)
    xl, compressive, reformer = results["runs"]
    assert [e["memory"] for e in xl["evals"]] == [0, 8, 16]
    assert xl["model"]["mem_len"] == 8 and compressive["model"]["cmem_len"] == 4
    # The compressive model lengthens only its plain memory; its attended budget matches XL's.
    assert [e["mem_len"] + e["cmem_len"] for e in compressive["evals"][1:]] == [8, 16]
    assert reformer["seq_len"] == 16 and reformer["batch_size"] * 16 == xl["batch_size"] * 8
    for run in results["runs"]:
        for e in run["evals"]:
            assert math.isfinite(e["bpb"]) and 0 < e["bpb"] < 9 and e["by_position"]
    kinds = {(r["kind"], r["mem_len"]) for r in results["step_memory"]}
    assert kinds == {("recompute", 0), ("memory", 8), ("recompute", 8)}
    assert all(r["temp_bytes"] > 0 for r in results["step_memory"])
    assert "machine" in results and "Transformer-XL" in capsys.readouterr().out
    assert memory.main(["--from-json", str(out)]) == 0
