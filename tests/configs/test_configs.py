"""Every shipped config is valid; the big ones compile and take a training step on mock data."""

import importlib
import zipfile

import numpy as np
import pytest

from reformer_jax.config import ReformerConfig
from reformer_jax.train import train_and_evaluate
from reformer_jax.train.trainer import validate_train_config
from tests.data.checks import random_images, write_image_tar

NAMES = [
    "classify_tiny",
    "duplication",
    "enwik8",
    "enwik8_compressive",
    "enwik8_small",
    "enwik8_xl",
    "imagenet64",
    "scaled_1b",
    "text",
    "text_compressive",
    "text_performer",
    "text_sparse",
    "text_xl",
    "tiny",
]


@pytest.mark.parametrize("name", NAMES)
def test_config_is_valid(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    validate_train_config(config)
    cfg = ReformerConfig.from_dict(config.model.to_dict())
    cfg.check_length(config.seq_len)
    assert config.batch_size % config.grad_accum_steps == 0


def test_reference_configs_match_the_paper_setups():
    enwik8 = ReformerConfig.from_dict(
        importlib.import_module("configs.enwik8").get_config().model.to_dict()
    )
    assert enwik8.layer_kinds() == ["local", "local", "lsh", "local"] * 3
    assert (enwik8.d_model, enwik8.d_ff, enwik8.n_heads, enwik8.d_head) == (768, 2048, 8, 64)
    assert enwik8.axial_shape == (128, 512) and enwik8.max_length == 65536
    image = ReformerConfig.from_dict(
        importlib.import_module("configs.imagenet64").get_config().model.to_dict()
    )
    assert image.axial_shape == (64, 64, 3) and image.max_length == 12288
    assert image.ff_activation == "gelu" and image.layer_kinds() == ["lsh"] * 6
    xl_config = importlib.import_module("configs.enwik8_xl").get_config()
    xl = ReformerConfig.from_dict(xl_config.model.to_dict())
    assert (xl.n_layers, xl.d_model, xl.n_heads, xl.d_head, xl.d_ff) == (12, 512, 8, 64, 2048)
    assert xl_config.seq_len == xl.mem_len == 512 and xl.layer_kinds() == ["relative"] * 12
    compressive = importlib.import_module("configs.enwik8_compressive").get_config()
    assert compressive.model.cmem_rate == 3 and compressive.seq_len % 3 == 0


def _one_step(config, workdir):
    """One training step, one evaluation batch and a checkpoint, on one device."""
    config.update(
        batch_size=1,
        num_steps=1,
        eval_batches=1,
        mesh_shape=(1, 1),
        checkpoint_every=1,
        log_every=1,
        eval_every=1,
    )
    result = train_and_evaluate(config, workdir)
    assert result.step == 1 and np.isfinite(result.train_metrics[-1]["loss"])


@pytest.mark.slow
def test_imagenet64_config_takes_a_step_on_mock_data(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    write_image_tar(manual / "train_64x64.tar", random_images(2, 1))
    write_image_tar(manual / "valid_64x64.tar", random_images(1, 2))
    config = importlib.import_module("configs.imagenet64").get_config()
    config.data.settings = dict(data_dir=str(tmp_path / "tfds"), manual_dir=str(manual))
    _one_step(config, tmp_path / "run")


@pytest.mark.slow
def test_enwik8_model_takes_a_step_on_mock_data(tmp_path):
    """The reference enwik8 model (12 layers, width 768) at 8K tokens on a fake archive.

    The full 64K-token step is measured by compilation only (bench/model_memory.py,
    docs/benchmarks.md): on two CPU cores one such step takes minutes.
    """
    manual = tmp_path / "manual"
    manual.mkdir()
    raw = np.random.default_rng(0).integers(0, 256, 40_000, dtype=np.uint8).tobytes()
    with zipfile.ZipFile(manual / "enwik8.zip", "w") as z:
        z.writestr("enwik8", raw)
    config = importlib.import_module("configs.enwik8").get_config()
    config.seq_len = 8192
    config.data.settings = dict(
        data_dir=str(tmp_path / "tfds"),
        manual_dir=str(manual),
        seq_len=8192,
        train_bytes=30_000,
        validation_bytes=5_000,
        test_bytes=5_000,
        chunk_size=4096,
    )
    _one_step(config, tmp_path / "run")
