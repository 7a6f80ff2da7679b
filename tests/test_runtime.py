import pytest

from reformer_jax import runtime
from reformer_jax.runtime import CPU_XLA_FLAGS, configure_xla


def test_adds_the_cpu_flags_once_and_keeps_the_users():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert configure_xla(env) == list(CPU_XLA_FLAGS)
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=8", *CPU_XLA_FLAGS]
    assert configure_xla(env) == []  # idempotent


@pytest.mark.parametrize(
    "env",
    [
        {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot,reduce"},  # the user's choice
        {"REFORMER_JAX_DEFAULT_XLA_FLAGS": "0"},  # opted out
    ],
)
def test_leaves_explicit_settings_alone(env):
    before = dict(env)
    assert configure_xla(env) == []
    assert env == before


def test_the_test_session_runs_with_the_flags():
    import os

    assert all(flag in os.environ["XLA_FLAGS"] for flag in CPU_XLA_FLAGS)


def test_an_installed_libtpu_without_a_chip_keeps_jax_off_the_tpu_plugin(monkeypatch):
    """Catches libtpu's start-up warnings reaching users on hosts without a TPU (libtpu is in the
    test extra), and an explicit JAX_PLATFORMS being overridden."""
    monkeypatch.setattr(runtime.importlib.util, "find_spec", lambda name: name == "libtpu" or None)
    monkeypatch.setattr(runtime.glob, "glob", lambda pattern: [])
    env = {}
    assert runtime.skip_absent_tpu(env) == "cpu" and env["JAX_PLATFORMS"] == "cpu"
    env = {"JAX_PLATFORMS": "tpu"}
    assert runtime.skip_absent_tpu(env) is None and env["JAX_PLATFORMS"] == "tpu"
    monkeypatch.setattr(runtime.glob, "glob", lambda pattern: ["/dev/accel0"])
    env = {}
    assert runtime.skip_absent_tpu(env) is None and "JAX_PLATFORMS" not in env
