import numpy as np
import pytest

from reformer_jax.data import get_source
from reformer_jax.data.aan import AAN, FILES
from tests.data.lra_checks import check_conventions, take


def _write(tmp_path, n=5):
    """LRA's format: label, id1, id2, text1, text2; no header; labels written as floats."""
    for split, name in FILES.items():
        lines = [
            f"{float(i % 2)}\t{split}{i}a\t{split}{i}b\tpaper {split} {i} \u00e9\tcited {i}"
            for i in range(n)
        ]
        (tmp_path / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_pairs_labels_and_bytes(tmp_path):
    """Catches ids read as texts (fields shifted), text1/text2 swapped, or bytes not offset by 1
    (padding confused with byte 0)."""
    _write(tmp_path)
    src = AAN(tmp_path, seq_len=16)
    assert (src.vocab_size, src.num_classes, src.paired) == (257, 2, True)
    batch = take(src.batches("test", 8), 1)[0]
    assert batch.inputs.shape == (8, 2, 16) and batch.paired
    want = np.frombuffer("paper test 1 \u00e9".encode(), np.uint8) + 1
    np.testing.assert_array_equal(batch.inputs[1, 0, : len(want)], want)
    assert batch.mask[1, 0].sum() == min(16, len(want))
    second = np.frombuffer(b"cited 1", np.uint8) + 1
    np.testing.assert_array_equal(batch.inputs[1, 1, : len(second)], second)
    assert not batch.mask[1, 1, len(second) :].any()
    assert batch.labels[:5].tolist() == [0, 1, 0, 1, 0]
    assert batch.weights.tolist() == [1] * 5 + [0] * 3
    check_conventions(src)
    assert isinstance(get_source("aan", data_dir=tmp_path), AAN)


def test_missing_and_malformed(tmp_path):
    with pytest.raises(FileNotFoundError, match="new_aan_pairs.train.tsv.*tsv_data"):
        AAN(tmp_path)
    _write(tmp_path)
    (tmp_path / FILES["train"]).write_text("1\tonly\tthree\n")
    with pytest.raises(ValueError, match="5 tab-separated fields"):
        AAN(tmp_path)
