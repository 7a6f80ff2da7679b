"""bench/aot_tpu: the real training step and decoding compiled for a TPU topology, without one.

The TPU compiler runs in a subprocess: libtpu's client and the topology never touch the CPU
backend the rest of the suite uses in this process.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.helpers import require_libtpu

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _run(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)  # the TPU compiler rejects the host-device-count flag of tests
    return subprocess.run(
        [sys.executable, "-m", "bench.aot_tpu", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.slow
def test_tiny_config_compiles_for_a_v5e_2x2_with_fsdp(tmp_path):
    """Catches a TPU path that does not compile (a CPU-only op, an unshardable input), a mesh
    not laid over the topology's chips, FSDP that leaves parameters whole on every chip, and
    a FLOP count that misses the layers inside the scanned stack."""
    require_libtpu()
    out = tmp_path / "aot.json"
    base = ["--config", str(ROOT / "configs" / "tiny.py"), "--topology", "v5e:2x2"]
    done = _run(tmp_path, *base, "--mesh", "2,2", "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    done = _run(tmp_path, *base, "--mesh", "1,4,1", "--decode=false", "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    plain, fsdp = json.loads(out.read_text())
    assert plain["chip"] == "v5e" and plain["chips"] == 4 and plain["compiled_not_run"]
    assert plain["mesh"] == {"data": 2, "fsdp": 1, "model": 2}
    assert set(plain["programs"]) == {"train_step", "prefill", "decode_step"}
    train = plain["programs"]["train_step"]
    assert 0 < train["memory"]["total_bytes"] < plain["hbm_bytes_per_chip"]
    assert train["memory"]["alias_bytes"] > 0  # parameters and optimizer state donated
    # Model FLOPs per chip: about 6 x parameters x tokens / chips (attention on top); the
    # compiled step does at least that much matmul work (it also recomputes the reversible
    # forward), unless a loop's trip count is unknown to the HLO.
    tokens = plain["batch_size"] * plain["seq_len"]
    six_nd = 6 * plain["parameters"] * tokens / plain["chips"]
    assert 0.5 * six_nd < train["model_flops_per_chip"] < 3 * six_nd
    if train["loops_without_trip_count"] == 0:
        assert train["hlo_matmul_flops"] >= 0.5 * train["model_flops_per_chip"]
    assert train["collectives"]["all-reduce"]["count"] > 0  # gradients summed over data
    assert train["projected_tokens_per_second"] > 0
    # FSDP over 4 chips: each holds about a quarter of the parameters and Adam moments.
    ratio = (
        fsdp["programs"]["train_step"]["memory"]["argument_bytes"]
        / (train["memory"]["argument_bytes"])
    )
    assert ratio < 0.75, ratio
    assert "all-gather" in fsdp["programs"]["train_step"]["collectives"]


@pytest.mark.slow
def test_the_training_step_compiles_for_a_tpu_with_the_pallas_window_kernels(tmp_path):
    """Catches a Pallas window kernel that XLA would have to partition in the real step (the
    per-shard map left a one-device model axis automatic, and Mosaic refuses that), or one
    that Mosaic cannot compile at the model's shapes; and a model axis of several devices that
    is not refused with the settings that work."""
    require_libtpu()
    pallas = [
        "--config.model.window_implementation=pallas",
        "--config.model.d_head=16",
        "--config.model.lsh_chunk_len=16",
        "--config.model.local_chunk_len=16",
        "--config.model.axial_shape=8,8",
        "--config.seq_len=64",
        "--config.data.settings.seq_len=64",
    ]
    base = ["--config", str(ROOT / "configs" / "tiny.py"), "--topology", "v5e:2x2", *pallas]
    done = _run(tmp_path, *base, "--mesh", "4,1", "--json", str(tmp_path / "aot.json"))
    assert done.returncode == 0, done.stderr[-3000:]
    (report,) = json.loads((tmp_path / "aot.json").read_text())
    assert set(report["programs"]) == {"train_step", "prefill", "decode_step"}
    done = _run(tmp_path, *base, "--mesh", "2,2", "--decode=false")
    assert done.returncode != 0
    assert "mesh axis 'model' (2 devices)" in done.stdout + done.stderr


def test_hlo_analysis_multiplies_loop_bodies_by_their_trip_count():
    """Catches the undercount of XLA's cost analysis (a loop body counted once although the
    trip count is known), and a collective inside a loop counted once."""
    from bench.aot_tpu import analyse_hlo

    hlo = """HloModule m

%cond (p: (s32[], f32[4,8])) -> pred[] {
  %c = s32[]{:T(128)} constant(6)
  %p = (s32[], f32[4,8]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  ROOT %lt = pred[] compare(%i, %c), direction=LT
}

%fused (a: f32[4,8], b: f32[8,8]) -> f32[4,8] {
  %a = f32[4,8]{1,0} parameter(0)
  %b = f32[8,8]{1,0} parameter(1)
  ROOT %d = f32[4,8]{1,0} dot(%a, %b), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%body (p: (s32[], f32[4,8])) -> (s32[], f32[4,8]) {
  %p = (s32[], f32[4,8]) parameter(0)
  %x = f32[4,8]{1,0} get-tuple-element(%p), index=1
  %w = f32[8,8]{1,0} constant({...})
  %f = f32[4,8]{1,0} fusion(%x, %w), kind=kOutput, calls=%fused
  %r = f32[4,8]{1,0} all-reduce(%f), replica_groups={}, to_apply=%add
  ROOT %t = (s32[], f32[4,8]) tuple(%i, %r)
}

ENTRY %main (x: f32[4,8]) -> f32[4,8] {
  %x = f32[4,8]{1,0} parameter(0)
  %w = (s32[], f32[4,8]) while(%t0), condition=%cond, body=%body, TRIP
  ROOT %g = f32[4,8]{1,0} all-gather(%x), dimensions={0}
}
"""
    out = analyse_hlo(hlo.replace("TRIP", 'backend_config={"known_trip_count":{"n":"6"}}'))
    assert out["matmul_flops"] == 6 * 2 * 4 * 8 * 8
    assert out["collectives"]["all-reduce"] == {"count": 6, "bytes": 6 * 4 * 8 * 4}
    assert out["collectives"]["all-gather"] == {"count": 1, "bytes": 4 * 8 * 4}
    assert out["loops_without_trip_count"] == 0
    unknown = analyse_hlo(hlo.replace(", TRIP", ""))
    assert unknown["matmul_flops"] == 2 * 4 * 8 * 8 and unknown["loops_without_trip_count"] == 1
