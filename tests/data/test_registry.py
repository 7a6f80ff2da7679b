import ml_collections
import pytest

from reformer_jax import data
from reformer_jax.data import DataSource, Duplication, TextFile, get_source


def test_get_source_from_settings(tmp_path):
    src = get_source("duplication", seq_len=64, vocab_size=16)
    assert isinstance(src, Duplication) and isinstance(src, DataSource)
    assert (src.seq_len, src.vocab_size) == (64, 16)
    path = tmp_path / "t.txt"
    path.write_bytes(b"abc" * 100)
    config = ml_collections.ConfigDict({"path": str(path), "seq_len": 32})
    src = get_source("text", config, eval_fraction=0.5)  # Keywords override the config.
    assert isinstance(src, TextFile) and src.seq_len == 32 and src.eval_fraction == 0.5
    src = get_source("text", {"path": path, "seq_len": 16})
    assert src.seq_len == 16


def test_get_source_tfds_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="enwik8.zip"):
        get_source("enwik8", data_dir=tmp_path, seq_len=1024)
    with pytest.raises(FileNotFoundError, match="valid_64x64.tar"):
        get_source("imagenet64", data_dir=tmp_path)
    assert data.Enwik8.vocab_size == 258 and data.ImageNet64.seq_len == 12_288


def test_get_source_errors():
    with pytest.raises(
        ValueError, match=r"'aan', 'cifar10', 'contains_token', 'duplication', 'enwik8'"
    ):
        get_source("wikitext")
    with pytest.raises(ValueError, match=r"Unknown setting\(s\) \['seqlen'\].*'seq_len'"):
        get_source("duplication", seqlen=64)
    with pytest.raises(AttributeError):
        data.NotASource  # noqa: B018
