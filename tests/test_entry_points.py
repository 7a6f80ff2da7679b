"""Every entry point applies the XLA flags before JAX starts (configure_xla raises otherwise)."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
ENTRY_POINTS = [
    # train.py's flags are absl's (--help exits before main): run one tiny step instead.
    ["train.py", "--config", "configs/tiny.py", "--config.num_steps=1", "--workdir", "WORKDIR"],
    ["sample.py", "--help"],
    *(
        ["-m", f"bench.{name}", "--help"]
        for name in (
            "ablations",
            "attention",
            "duplication_table",
            "generate",
            "lra",
            "memory_scaling",
            "model_memory",
            "peers",
            "profile_step",
            "train_step",
        )
    ),
]


@pytest.mark.parametrize("argv", ENTRY_POINTS, ids=lambda a: a[0] if a[0] != "-m" else a[1])
def test_entry_point_starts_with_default_xla_flags(argv, tmp_path):
    argv = [str(tmp_path / "run") if a == "WORKDIR" else a for a in argv]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.pop("REFORMER_JAX_DEFAULT_XLA_FLAGS", None)
    proc = subprocess.run(
        [sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
