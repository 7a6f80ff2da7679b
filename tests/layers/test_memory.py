"""Segment recurrence (Transformer-XL, Compressive Transformer) in the model.

References are independent of the memory code: the model run on the concatenated segments at
once (no memory), plain pooling in NumPy, and autodiff of the whole two-segment computation.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from reformer_jax.config import ReformerConfig
from reformer_jax.layers.memory import init_memory, reset_memory
from reformer_jax.model import ReformerLM, lm_loss

XL = dict(
    vocab_size=13,
    d_model=8,
    d_ff=16,
    n_layers=2,
    n_heads=2,
    d_head=4,
    attention_pattern=("relative",),
    residual="standard",
    pos_embedding="none",
)


def _model(**overrides) -> ReformerLM:
    return ReformerLM(ReformerConfig(**{**XL, **overrides}), rngs=nnx.Rngs(0))


def _tokens(batch: int, length: int, seed: int = 1) -> jax.Array:
    return jax.random.randint(jax.random.key(seed), (batch, length), 0, XL["vocab_size"])


@pytest.mark.parametrize("seg_len, n_segments, mem_len", [(5, 2, 5), (4, 3, 8), (4, 2, 12)])
def test_segments_with_full_memory_equal_one_pass(x64, seg_len, n_segments, mem_len):
    """The defining property of the recurrence: with a memory holding every earlier token and
    no compression, each segment's logits equal those of the model run on all segments at once.
    Catches a memory holding the wrong layer's states (output instead of input), a reversed
    memory, wrong relative distances to memory keys, empty slots not masked, the memory's
    states not passing the layer's LayerNorm, and a pattern of two layers stored out of order."""
    model = _model(n_layers=4, mem_len=mem_len, dtype="float64", param_dtype="float64")
    tokens = _tokens(2, seg_len * n_segments)
    whole = model(tokens)
    memory = init_memory(model.cfg, 2)
    for s in range(n_segments):
        segment = tokens[:, s * seg_len : (s + 1) * seg_len]
        logits, memory, recon = model.with_memory(segment, memory)
        np.testing.assert_allclose(
            logits, whole[:, s * seg_len : (s + 1) * seg_len], rtol=0, atol=1e-9
        )
        assert float(recon) == 0.0


def test_two_layer_pattern_keeps_each_layer_its_own_memory(x64):
    """Catches the by-pattern regrouping of the memory swapping layers (pattern of two kinds
    positions, two groups: layer index g * 2 + p)."""
    model = _model(
        n_layers=4,
        attention_pattern=("relative", "relative"),
        mem_len=4,
        dtype="float64",
        param_dtype="float64",
    )
    tokens = _tokens(1, 8, seed=3)
    whole = model(tokens)
    _, memory, _ = model.with_memory(tokens[:, :4], init_memory(model.cfg, 1))
    logits, _, _ = model.with_memory(tokens[:, 4:], memory)
    np.testing.assert_allclose(logits, whole[:, 4:], rtol=0, atol=1e-9)


def test_truncated_memory_sees_less_than_the_whole_pass(x64):
    """Catches a memory that silently keeps more than mem_len states (or none): with mem_len
    smaller than the context, the last segment's logits differ from the one-pass ones, and
    differ from having no memory at all."""
    model = _model(mem_len=2, dtype="float64", param_dtype="float64")
    tokens = _tokens(1, 8)
    whole = model(tokens)
    _, memory, _ = model.with_memory(tokens[:, :4], init_memory(model.cfg, 1))
    assert bool(memory["mem_valid"].all()) and memory["mem"].shape[2] == 2
    logits, _, _ = model.with_memory(tokens[:, 4:], memory)
    alone = model(tokens[:, 4:])
    assert np.abs(logits - whole[:, 4:]).max() > 1e-6
    assert np.abs(logits - alone).max() > 1e-6


def test_reset_rows_forget_their_memory(x64):
    """Catches Batch.reset applied to the wrong rows, or a reset that leaves stale states
    attended: a reset row's logits equal a fresh start, the other row keeps its memory."""
    model = _model(mem_len=4, dtype="float64", param_dtype="float64")
    tokens = _tokens(2, 8)
    _, memory, _ = model.with_memory(tokens[:, :4], init_memory(model.cfg, 2))
    memory = reset_memory(memory, jnp.array([True, False]))
    logits, _, _ = model.with_memory(tokens[:, 4:], memory)
    np.testing.assert_allclose(logits[0], model(tokens[:, 4:])[0], rtol=0, atol=1e-9)
    np.testing.assert_allclose(logits[1], model(tokens)[1, 4:], rtol=0, atol=1e-9)


@pytest.mark.slow
def test_gradients_never_flow_into_the_memory(x64):
    """Catches a missing stop_gradient on the stored states: the gradient of the second
    segment's loss equals that of a run whose memory is stop-gradient'd explicitly, and the
    stored memory itself has zero gradient with respect to every parameter."""
    model = _model(mem_len=4, dtype="float64", param_dtype="float64")
    graphdef, params = nnx.split(model)
    tokens = _tokens(2, 8)
    empty = init_memory(model.cfg, 2)

    def two_segments(params, stop):
        m = nnx.merge(graphdef, params)
        _, memory, _ = m.with_memory(tokens[:, :4], empty)
        if stop:
            memory = jax.lax.stop_gradient(memory)
        logits, _, _ = m.with_memory(tokens[:, 4:], memory)
        return lm_loss(logits, tokens[:, 4:])[0]

    def stored(params):
        _, memory, _ = nnx.merge(graphdef, params).with_memory(tokens[:, :4], empty)
        return jnp.sum(memory["mem"] ** 2)

    through = jax.grad(two_segments)(params, False)
    stopped = jax.grad(two_segments)(params, True)
    for a, b in zip(jax.tree.leaves(through), jax.tree.leaves(stopped), strict=True):
        np.testing.assert_array_equal(a, b)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(jax.grad(stored)(params)))


def _compressive(method="conv", **overrides):
    return _model(
        mem_len=4,
        cmem_len=4,
        cmem_rate=2,
        cmem_method=method,
        dtype="float64",
        param_dtype="float64",
        **overrides,
    )


@pytest.mark.slow
def test_reconstruction_loss_reaches_only_the_compressor(x64):
    """Catches the attention-reconstruction loss training the main network (queries, old
    memories or the K/V projections used on the compressed states not stopped), and the LM loss
    reaching the compressor: the reconstruction gradient is nonzero exactly on compress_kernel /
    compress_bias, the LM gradient is zero there."""
    model = _compressive()
    graphdef, params = nnx.split(model)
    tokens = _tokens(2, 12)
    empty = init_memory(model.cfg, 2)

    def losses(params):
        m = nnx.merge(graphdef, params)
        memory, recons, lm = empty, [], 0.0
        for s in range(3):
            segment = tokens[:, 4 * s : 4 * s + 4]
            logits, memory, recon = m.with_memory(segment, memory)
            recons.append(recon)
            lm = lm + lm_loss(logits, segment)[0]
        return lm, recons[-1]

    recon_grads = jax.grad(lambda p: losses(p)[1])(params)
    lm_grads = jax.grad(lambda p: losses(p)[0])(params)
    for path, g in jax.tree_util.tree_leaves_with_path(recon_grads):
        name = jax.tree_util.keystr(path)
        is_compressor = "compress_" in name
        assert (float(jnp.abs(g).max()) > 0) == is_compressor, name
    for path, g in jax.tree_util.tree_leaves_with_path(lm_grads):
        if "compress_" in jax.tree_util.keystr(path):
            assert float(jnp.abs(g).max()) == 0.0


@pytest.mark.parametrize("method, pool", [("mean", np.mean), ("max", np.max)])
def test_evicted_states_are_pooled_oldest_first(x64, method, pool):
    """Catches evicting the newest states instead of the oldest, compressing across the wrong
    groups, or appending compressed states at the wrong end: with mem_len = segment length, the
    states evicted by segment 2 are exactly the memory after segment 1, pooled in pairs."""
    model = _compressive(method)
    tokens = _tokens(2, 8)
    _, after_one, _ = model.with_memory(tokens[:, :4], init_memory(model.cfg, 2))
    _, after_two, recon = model.with_memory(tokens[:, 4:], after_one)
    old = np.asarray(after_one["mem"])  # [B, layers, 4, D]
    want = pool(old.reshape(2, 2, 2, 2, -1), axis=3)  # pairs of consecutive states
    np.testing.assert_allclose(after_two["cmem"][:, :, 2:], want, rtol=0, atol=1e-12)
    assert after_two["cmem_valid"].tolist() == [[False, False, True, True]] * 2
    assert float(recon) > 0  # the evicted states were real: the loss scores them


def test_empty_compressed_slots_are_masked_and_filled_ones_attended(x64):
    """Catches compressed slots attended before they hold anything (or never attended): with
    cmem_valid all False the logits equal the plain Transformer-XL's; once valid they differ."""
    model = _compressive("mean")
    plain = nnx.merge(
        nnx.graphdef(_model(mem_len=4, dtype="float64", param_dtype="float64")),
        nnx.state(model),
    )
    tokens = _tokens(1, 8)
    memory = init_memory(model.cfg, 1)
    _, memory, _ = model.with_memory(tokens[:, :4], memory)
    memory = dict(memory, cmem=memory["cmem"] + 5.0)  # junk in invalid slots
    logits, _, _ = model.with_memory(tokens[:, 4:], memory)
    plain_memory = {k: memory[k] for k in ("mem", "mem_valid")}
    want, _, _ = plain.with_memory(tokens[:, 4:], plain_memory)
    np.testing.assert_allclose(logits, want, rtol=0, atol=1e-9)
    memory = dict(memory, cmem_valid=jnp.ones_like(memory["cmem_valid"]))
    attended, _, _ = model.with_memory(tokens[:, 4:], memory)
    assert np.abs(attended - want).max() > 1e-6


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(residual="reversible"), r"model\.residual: the reversible stack cannot carry"),
        (dict(attention_pattern=("lsh",)), r"model\.attention_pattern: .*relative"),
        (dict(pos_embedding="learned"), r"model\.pos_embedding: .*restart at every segment"),
        (dict(mem_len=0, cmem_len=4), r"model\.cmem_len: .*mem_len is 0"),
        (dict(cmem_len=4, cmem_method="avg"), r"model\.cmem_method: unknown compression"),
        (dict(cmem_rate=0), r"model\.cmem_rate: must be a positive integer"),
        (dict(mem_len=-1), r"model\.mem_len: must be an integer >= 0"),
    ],
)
def test_memory_settings_fail_with_one_line_errors(overrides, match):
    """Catches a memory config that builds and fails later (or silently ignores the memory)."""
    with pytest.raises(ValueError, match=match) as error:
        ReformerConfig(**{**XL, "mem_len": 4, **overrides})
    assert "\n" not in str(error.value)


def test_segment_must_split_into_compression_groups():
    """Catches a silent truncation of evicted states that are not a multiple of the rate."""
    model = _model(mem_len=4, cmem_len=2, cmem_rate=3)
    with pytest.raises(ValueError, match=r"model\.cmem_rate: a segment of 4 tokens"):
        model.with_memory(_tokens(1, 4), init_memory(model.cfg, 1))
