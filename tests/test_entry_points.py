"""The entry points as a user runs them: they start (with XLA's flags applied before JAX starts;
configure_xla raises otherwise), print no library noise, and answer bad input in one line."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCH_MODULES = (
    "ablations",
    "aot_tpu",
    "aot_tpu_table",
    "approximation",
    "attention",
    "duplication_table",
    "generate",
    "lra",
    "machine",
    "memory",
    "memory_scaling",
    "dot_shapes",
    "model_memory",
    "peers",
    "profile_step",
    "roofline",
    "train_step",
)
ENTRY_POINTS = [
    # train.py's flags are absl's (--help exits before main): run one tiny step instead, with a
    # model setting tiny.py does not list (every ReformerConfig field is overridable).
    [
        "train.py",
        "--config",
        "configs/tiny.py",
        "--config.num_steps=1",
        "--config.model.hidden_dropout=0.1",
        "--workdir",
        "WORKDIR",
    ],
    ["sample.py", "--help"],
    ["-m", "reformer_jax.convert", "--help"],
    *(["-m", f"bench.{name}", "--help"] for name in BENCH_MODULES),
]


def test_every_bench_module_is_an_entry_point():
    """Bug caught: a new bench module left out of BENCH_MODULES, so nobody sees its --help
    end in a traceback or exit 1 (bench.aot_tpu_table read --help as a file)."""
    found = {p.stem for p in (ROOT / "bench").glob("*.py") if p.stem != "__init__"}
    assert found == set(BENCH_MODULES)


def _run(argv: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def _noise(text: str) -> list[str]:
    """Library log lines and tracebacks a user should never see."""
    return [
        line
        for line in text.splitlines()
        if line.startswith(("WARNING:absl", "Traceback", "W0", "W1"))
        or "Event loop is closed" in line
    ]


@pytest.mark.parametrize("argv", ENTRY_POINTS, ids=lambda a: a[0] if a[0] != "-m" else a[1])
def test_entry_point_starts_with_default_xla_flags(argv, tmp_path):
    argv = [str(tmp_path / "run") if a == "WORKDIR" else a for a in argv]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.pop("REFORMER_JAX_DEFAULT_XLA_FLAGS", None)
    proc = _run(argv, env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not _noise(proc.stderr), proc.stderr[-2000:]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--config.model.hiden_dropout=0.1"], "did you mean --config.model.hidden_dropout"),
        (["--config", "configs/nope.py"], "--config configs/nope.py: no such file"),
        (["--config", "configs/text.py"], "--config.data.settings.path="),
    ],
    ids=["misspelt-override", "missing-config-file", "text-without-path"],
)
def test_bad_train_command_is_one_line_and_creates_nothing(argv, expected, tmp_path):
    """Bugs caught: a misspelt override or a missing config file ends in an ml_collections
    traceback; configs/text.py without a path trains on the current directory."""
    workdir = tmp_path / "run"
    proc = _run(["train.py", *argv, "--workdir", str(workdir)])
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0], proc.stderr[-2000:]
    assert not _noise(proc.stderr), proc.stderr[-2000:]
    assert not workdir.exists()


@pytest.mark.slow
def test_sample_after_training_is_clean(tmp_path):
    """Bugs caught: sample.py --task duplication scores the separator the model was never
    trained to emit ("separator WRONG" for a perfect model), prints orbax's read_only warnings,
    and ends in TensorStore tracebacks on a truncated checkpoint."""
    workdir = tmp_path / "run"
    train = _run(["train.py", "--config", "configs/tiny.py", "--workdir", str(workdir)])
    assert train.returncode == 0, train.stderr[-2000:]
    assert not _noise(train.stdout + train.stderr), train.stderr[-2000:]
    argv = ["sample.py", "--workdir", str(workdir), "--task", "duplication", "--num-samples", "2"]
    sample = _run(argv)
    assert sample.returncode == 0, sample.stderr[-2000:]
    assert "copy accuracy" in sample.stdout and "separator" not in sample.stdout
    assert not _noise(sample.stdout + sample.stderr), sample.stderr[-2000:]

    for path in (workdir / "checkpoints" / "2").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            path.write_bytes(path.read_bytes()[:10])
    damaged = _run(argv)
    assert damaged.returncode == 2
    errors = [line for line in damaged.stderr.splitlines() if line.startswith("sample.py: error")]
    assert len(errors) == 1 and "step 2" in errors[0], damaged.stderr[-2000:]
    assert not _noise(damaged.stderr), damaged.stderr[-2000:]


def test_train_help_lists_the_config_flag_and_how_to_override():
    """Bugs caught: --help showed train.py's other flags but not --config (defined inside
    ml_collections), so a user could not learn how to override a setting; --help exited with
    status 1 (absl's), a failure to scripts."""
    proc = _run(["train.py", "--help"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--config: Training configuration file" in proc.stdout, proc.stdout[-2000:]
    assert "reformer_jax/config.py" in proc.stdout and "configs/common.py" in proc.stdout
    assert not _noise(proc.stderr), proc.stderr[-2000:]


def test_aot_tpu_takes_train_overrides():
    """Bugs caught: bench.aot_tpu loaded its config without train.py's completion, so a setting
    the config file does not list (e.g. --config.model.hidden_dropout on tiny.py) could not be
    overridden and a misspelt one ended in an ml_collections traceback; a bad --topology ended
    in libtpu's traceback."""
    base = ["-m", "bench.aot_tpu", "--config", "configs/tiny.py", "--topology", "nope"]
    misspelt = _run([*base, "--config.model.hiden_dropout=0.1"])
    assert misspelt.returncode == 2
    lines = [line for line in misspelt.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "--config.model.hidden_dropout" in lines[0], misspelt.stderr
    if importlib.util.find_spec("libtpu") is None:
        return  # the rest needs the TPU compiler to describe topologies
    # An unlisted setting is accepted: the run gets as far as the (invalid) topology.
    unlisted = _run([*base, "--config.model.hidden_dropout=0.1"])
    assert unlisted.returncode == 1 and "Traceback" not in unlisted.stderr, unlisted.stderr
    lines = [line for line in unlisted.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: --topology nope"), unlisted.stderr
