"""train.py's --config flag: every setting overridable with any config file, typos caught."""

import dataclasses
import json
import pathlib

import pytest
from absl import flags

from configs.common import base_config
from reformer_jax.config import ReformerConfig
from reformer_jax.train import trainer
from reformer_jax.train.command_line import (
    complete_config,
    define_config_flag,
    load_config_file,
    set_config_default,
    unknown_override,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]

# A config file as a user might write it: a few model settings, no training settings at all.
MINIMAL = """
import ml_collections

def get_config():
    config = ml_collections.ConfigDict()
    config.seq_len = 32
    config.data = ml_collections.ConfigDict(
        dict(name="duplication", settings=dict(seq_len=32, vocab_size=16)))
    config.model = ml_collections.ConfigDict(dict(d_model=16, axial_shape=[4, 8],
                                                  axial_dims=[8, 8]))
    return config
"""


def _complete(config):
    return complete_config(config, train_defaults=base_config())


def _parse(config_file: str, overrides: list[str]):
    """The config train.py would hand to the trainer for this command line."""
    argv = ["train.py", "--config", config_file, *overrides]
    values = flags.FlagValues()
    define_config_flag(_complete, flag_values=values, sys_argv=argv)
    set_config_default(str(ROOT / "configs" / "duplication.py"), flag_values=values)
    values(argv)
    return values.config


@pytest.mark.parametrize("config_file", ["tiny", "minimal"])
def test_every_setting_is_overridable_whatever_the_file_lists(config_file, tmp_path):
    """Bug caught: overriding a model field (or a None-valued / tuple field, or a training
    setting) that the config file does not list fails in ml_collections (the config's model
    ConfigDict held only the listed fields), or a placeholder loses its type."""
    if config_file == "minimal":
        path = tmp_path / "minimal.py"
        path.write_text(MINIMAL)
    else:
        path = ROOT / "configs" / "tiny.py"
    config = _parse(
        str(path),
        [
            "--config.model.hidden_dropout=0.1",
            "--config.model.hash_seed=3",
            "--config.model.attention_pattern=('lsh', 'local')",
            "--config.model.axial_shape=(8, 4)",
            "--config.num_steps=7",
            "--config.eval_hashes=(1, 2)",
        ]
        + (["--config.model.lsh_n_buckets=(4, 2)"] if config_file == "minimal" else []),
    )
    assert set(config.model) == {f.name for f in dataclasses.fields(ReformerConfig)}
    assert set(base_config()) <= set(config)
    assert config.model.hidden_dropout == 0.1 and config.model.hash_seed == 3
    assert config.model.attention_pattern == ("lsh", "local")
    assert config.model.axial_shape == (8, 4)
    assert config.num_steps == 7 and tuple(config.eval_hashes) == (1, 2)
    if config_file == "minimal":
        assert config.model.lsh_n_buckets == (4, 2)
        assert config.model.vocab_size is None  # the trainer takes the data's vocabulary
    cfg = trainer._model_config(config, vocab_size=16)
    assert cfg.hidden_dropout == 0.1 and cfg.vocab_size == 16
    assert cfg.n_layers == ReformerConfig.n_layers or config_file == "tiny"


def test_unknown_override_is_one_line_with_the_closest_names():
    """Bug caught: a misspelt setting ends in an ml_collections traceback (or is accepted)."""
    config = load_config_file(str(ROOT / "configs" / "tiny.py"), _complete)
    message = unknown_override(config, ["--config.model.hiden_dropout=0.1"])
    assert message is not None and "\n" not in message
    assert "--config.model.hiden_dropout" in message
    assert "--config.model.hidden_dropout" in message  # the suggestion
    assert "reformer_jax/config.py" in message
    message = unknown_override(config, ["--config.num_stepz", "3"])
    assert "--config.num_steps" in message and "configs/common.py" in message
    assert "is a value" in unknown_override(config, ["--config.seed.x=1"])
    assert unknown_override(config, ["--config.model.d_model=8", "--config.num_steps=1"]) is None


def test_missing_config_file_is_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"--config .*nope.py: no such file") as err:
        load_config_file(str(tmp_path / "nope.py"), _complete)
    assert "\n" not in str(err.value)
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config():\n    return 3\n")
    with pytest.raises(ValueError, match="not a ConfigDict"):
        load_config_file(str(broken), _complete)


def test_runs_recorded_before_completion_still_resume(tmp_path):
    """Bug caught: train.py now records every model field under train.model, so a workdir
    whose config.json lists only the file's fields would be refused as 'different settings'."""
    from configs import tiny

    old = tiny.get_config()  # as runs were recorded before: the file's fields only
    model_cfg = trainer._model_config(old, 16)
    workdir = tmp_path / "run"
    workdir.mkdir()
    record = {"model": model_cfg.to_dict(), "train": trainer._jsonable(old)}
    (workdir / "config.json").write_text(json.dumps(record))
    new = _complete(tiny.get_config())
    new_record = {
        "model": trainer._model_config(new, 16).to_dict(),
        "train": trainer._jsonable(new),
    }
    assert trainer._check_workdir(workdir, new_record) is True
    new.model.d_model = 32  # a real difference is still refused
    new.model.axial_dims = (16, 16)
    changed = {"model": trainer._model_config(new, 16).to_dict(), "train": new_record["train"]}
    with pytest.raises(trainer.TrainingError, match="different settings"):
        trainer._check_workdir(workdir, changed)


def test_text_config_without_a_path_names_the_flag():
    """Bug caught: path="" read as "." trains on the current directory."""
    from configs import text
    from reformer_jax.data import get_source

    with pytest.raises(ValueError, match=r"--config\.data\.settings\.path=") as err:
        get_source("text", text.get_config().data.settings)
    assert "\n" not in str(err.value)
