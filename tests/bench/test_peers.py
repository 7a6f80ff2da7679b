import json
import subprocess
import sys

import pytest

from bench import peers


def test_flops_per_token_written_out_for_the_issue_configuration():
    cfg = peers.StepConfig(16384, 6)
    flops = peers.flops_per_token(cfg)
    # 512 buckets at 16K / chunk 64 are factorised [32, 16]: 16 + 8 rotation columns.
    assert peers.rotation_columns(16384, 64) == 24
    per_layer = 3 * 2 * 256 * 256 + 2 * 256 * 2 * 24 + 2 * 4 * 2 * (2 * 64 * 128) + 4 * 256 * 1024
    assert flops["forward"] == 6 * per_layer + 2 * 512 * 256
    assert flops["train_step"] == 3 * flops["forward"]
    assert flops["train_step_executed"] == flops["train_step"] + 6 * per_layer


def _run(impl, step, rss, config="1024x1"):
    return {"impl": impl, "config": config, "status": "ok", "s_per_step": step, "peak_rss_mib": rss}


def test_summary_takes_medians_and_ratios_to_the_best_peer():
    runs = [
        _run("reformer_jax", 1.0, 500),
        _run("reformer_jax", 3.0, 700),
        _run("reformer_jax", 2.0, 600),
        _run("hf", 4.0, 1000),
        _run("lucidrains", 8.0, 800),
        {"impl": "lucidrains", "config": "1024x1", "status": "failed (exit 1): oom"},
    ]
    flops = {"1024x1": peers.flops_per_token(peers.StepConfig(1024, 1))}
    rows = {r["impl"]: r for r in peers.summarise(runs, 100.0, flops)}
    ours = rows["reformer_jax"]
    assert ours["rounds"] == 3 and ours["s_per_step"] == 2.0 and ours["peak_rss_mib"] == 600
    assert ours["tokens_per_s"] == 512.0
    assert ours["speedup_vs_fastest_peer"] == 2.0 and ours["fastest_peer"] == "hf"
    assert ours["memory_vs_leanest_peer"] == 0.75 and ours["leanest_peer"] == "lucidrains"
    flops = peers.flops_per_token(peers.StepConfig(1024, 1))["train_step"] * 1024
    assert ours["mfu"] == pytest.approx(flops / 2.0 / 100e9)
    table = peers.markdown(list(rows.values()))
    assert "2.00x (hf)" in table and "0.75x (lucidrains)" in table


def test_failed_configuration_is_reported_not_dropped():
    runs = [{"impl": "hf", "config": "65536x6", "status": "timeout after 10 s"}]
    (row,) = peers.summarise(runs, None, {"65536x6": {}})
    assert row["status"] == "timeout after 10 s"
    assert "timeout after 10 s" in peers.markdown([row])


def test_bad_config_names_the_flag():
    with pytest.raises(SystemExit, match="--configs"):
        peers.parse_config("16k-6", 3)
    assert peers.parse_config("65536x6:1", 3) == (peers.StepConfig(65536, 6), 1)


def test_missing_peer_scripts_fail_before_running(tmp_path):
    with pytest.raises(SystemExit, match="--peers-dir"):
        peers.main(["--peers-dir", str(tmp_path), "--out", str(tmp_path / "p.json")])


def test_smoke_run_of_reformer_jax_alone(tmp_path):
    out = tmp_path / "peers.json"
    assert peers.main(
        ["--impls", "reformer_jax", "--configs", "256x1:1", "--steps", "1", "--out", str(out)]
    ) == 0  # fmt: skip
    payload = json.loads(out.read_text())
    (row,) = payload["rows"]
    assert row["impl"] == "reformer_jax" and row["rounds"] == 1 and row["s_per_step"] > 0
    assert row["peak_rss_mib"] > 100  # the child's own resident set, not this process's
    assert payload["matmul_peak_gflops"] > 0
    assert out.with_suffix(".png").exists()
    assert peers.main(["--from-json", str(out)]) == 0


def test_the_orchestrator_never_imports_jax():
    # Children inherit the parent's resident set in their ru_maxrss: the parent must stay small.
    code = (
        "import sys; from bench import peers\n"
        "runs = [{'impl': 'hf', 'config': '1024x1', 'status': 'ok', 's_per_step': 1.0,"
        " 'peak_rss_mib': 1.0}]\n"
        "peers.summarise(runs, 100.0, {'1024x1': {'train_step': 1.0}})\n"
        "peers.markdown(peers.summarise(runs, None, {'1024x1': {'train_step': 1.0}}))\n"
        "print('jax' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=peers.ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
