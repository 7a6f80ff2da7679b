import numpy as np
import pytest

from reformer_jax.data import base


def test_batch_checks_dtypes_and_shapes():
    tokens = np.zeros((2, 4), np.int32)
    weights = np.ones((2, 4), np.float32)
    base.Batch(tokens, tokens.copy(), weights)
    with pytest.raises(TypeError, match="inputs"):
        base.Batch(tokens.astype(np.int64), tokens, weights)
    with pytest.raises(TypeError, match="weights"):
        base.Batch(tokens, tokens, weights.astype(np.float64))
    with pytest.raises(ValueError, match="equal shapes"):
        base.Batch(tokens, tokens[:, :3], weights)


def test_process_rows():
    assert base.process_rows(8, 0, 1) == slice(0, 8)
    assert base.process_rows(8, 1, 2) == slice(4, 8)
    assert base.process_rows(12, 2, 4) == slice(6, 9)
    with pytest.raises(
        ValueError, match="global_batch_size=10 is not divisible by process_count=4"
    ):
        base.process_rows(10, 0, 4)
    with pytest.raises(ValueError, match="process_index"):
        base.process_rows(8, -1, 2)
    with pytest.raises(ValueError, match="global_batch_size"):
        base.process_rows(0, 0, 1)
    with pytest.raises(ValueError, match="process_count"):
        base.process_rows(8, 0, 0)


def test_step_rng_is_a_function_of_seed_split_step():
    def draw(*args):
        return base.step_rng(*args).integers(0, 2**31, 4)

    np.testing.assert_array_equal(draw(1, "train", 5), draw(1, "train", 5))
    assert not np.array_equal(draw(1, "train", 5), draw(1, "train", 6))
    assert not np.array_equal(draw(1, "train", 5), draw(2, "train", 5))
    assert not np.array_equal(draw(1, "train", 5), draw(1, "eval", 5))
    assert base.split_id("train") == 1_550_247_075  # Stable across runs and versions (crc32).


def test_lm_batch_weights():
    batch = base.lm_batch(np.arange(10).reshape(2, 5), lengths=np.array([5, 3]))
    np.testing.assert_array_equal(batch.weights, [[0, 1, 1, 1, 1], [0, 1, 1, 0, 0]])
    np.testing.assert_array_equal(batch.inputs, batch.targets)
    assert batch.inputs.dtype == np.int32
    assert base.lm_batch(np.zeros((1, 3))).weights.tolist() == [[0, 1, 1]]
