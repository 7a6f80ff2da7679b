"""The reversible stack: exact gradients, flat memory in depth, depth-independent compile."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from reformer_jax.config import ReformerConfig
from reformer_jax.model import ReformerLM, lm_loss
from tests.model_utils import loss_and_grads, tiny_config


def test_reversible_gradients_equal_autodiff_with_dropout_and_mixed_pattern(x64):
    cfg = tiny_config(
        n_layers=6,
        attention_pattern=("local", "lsh", "full"),
        dtype="float64",
        param_dtype="float64",
        hidden_dropout=0.1,
        lsh_dropout=0.1,
        local_dropout=0.1,
        full_dropout=0.1,
        ff_dropout=0.1,
        ff_chunk_size=16,
    )
    tokens = jax.random.randint(jax.random.key(1), (2, 30), 0, cfg.vocab_size)
    rng = jax.random.key(3)
    rev = ReformerLM(cfg, rngs=nnx.Rngs(0))
    plain = ReformerLM(cfg.replace(reversible=False), rngs=nnx.Rngs(0))
    loss_r, g_r = loss_and_grads(rev, tokens, rng)
    loss_p, g_p = loss_and_grads(plain, tokens, rng)
    np.testing.assert_allclose(loss_r, loss_p, rtol=1e-12)
    # Dropout really is on: another key gives another loss.
    loss_other, _ = loss_and_grads(rev, tokens, jax.random.key(4))
    assert abs(float(loss_other) - float(loss_r)) > 1e-6
    flat_r, flat_p = jax.tree.leaves(g_r), jax.tree.leaves(g_p)
    assert len(flat_r) == len(flat_p) > 20
    for a, b in zip(flat_r, flat_p, strict=True):
        scale = float(jnp.max(jnp.abs(b)))
        assert scale > 0
        assert float(jnp.max(jnp.abs(a - b))) <= 1e-8 * scale


@pytest.mark.slow
@pytest.mark.parametrize(
    "causal, pattern",
    [
        (True, ("sparse", "performer")),
        (False, ("linformer", "sparse", "performer")),
    ],
)
def test_reversible_gradients_equal_autodiff_for_the_survey_families(x64, causal, pattern):
    """Catches a family whose recomputation in the reversible backward differs from its forward
    (Performer features redrawn, BigBird's random plan changing, dropout keys not replayed) or
    whose extra parameters get no or wrong gradients (Linformer's model-level matrix, shared by
    every layer, must get the sum over them)."""
    cfg = tiny_config(
        n_layers=2 * len(pattern),
        attention_pattern=pattern,
        causal=causal,
        dtype="float64",
        param_dtype="float64",
        hidden_dropout=0.1,
        sparse_dropout=0.1,
        linformer_dropout=0.1,
        sparse_pattern="bigbird",
        sparse_block_len=4,
        sparse_random_blocks=1,
        linformer_k=6,
        linformer_sharing="layer",
        performer_n_features=8,
        performer_chunk_len=4,
        max_len=32,
    )
    tokens = jax.random.randint(jax.random.key(1), (2, 30), 0, cfg.vocab_size)
    rng = jax.random.key(3)
    rev = ReformerLM(cfg, rngs=nnx.Rngs(0))
    plain = ReformerLM(cfg.replace(reversible=False), rngs=nnx.Rngs(0))
    loss_r, g_r = loss_and_grads(rev, tokens, rng)
    loss_p, g_p = loss_and_grads(plain, tokens, rng)
    np.testing.assert_allclose(loss_r, loss_p, rtol=1e-12)
    flat_r, flat_p = jax.tree.leaves(g_r), jax.tree.leaves(g_p)
    assert len(flat_r) == len(flat_p) > 20
    for a, b in zip(flat_r, flat_p, strict=True):
        scale = float(jnp.max(jnp.abs(b)))
        assert scale > 0
        assert float(jnp.max(jnp.abs(a - b))) <= 1e-8 * scale
    if not causal:  # the model-level Linformer matrix: its gradient sums every layer's share
        shared = g_r["shared_attention"]["linformer"]["proj"]
        assert float(jnp.max(jnp.abs(shared))) > 0


def _train_temp_bytes(n_layers: int, reversible: bool, length: int = 16384) -> int:
    cfg = ReformerConfig(
        vocab_size=256,
        d_model=256,
        d_ff=512,
        n_layers=n_layers,
        n_heads=4,
        d_head=64,
        attention_pattern=("lsh",),
        lsh_chunk_len=64,
        axial_shape=(128, 128),
        axial_dims=(128, 128),
        reversible=reversible,
        ff_chunk_size=4096,
    )
    graphdef, state = nnx.split(nnx.eval_shape(lambda: ReformerLM(cfg, rngs=nnx.Rngs(0))))
    tokens = jax.ShapeDtypeStruct((1, length), jnp.int32)

    def loss(state, tokens):
        logits = nnx.merge(graphdef, state)(tokens, dropout_rng=jax.random.key(0))
        return lm_loss(logits, tokens)[0]

    compiled = jax.jit(jax.value_and_grad(loss)).lower(state, tokens).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.slow
def test_memory_is_flat_in_depth_only_when_reversible():
    rev_2, rev_12 = _train_temp_bytes(2, True), _train_temp_bytes(12, True)
    plain_2, plain_12 = _train_temp_bytes(2, False), _train_temp_bytes(12, False)
    # Not a precision bound: only parameter-sized buffers grow with depth in the reversible
    # stack (a fraction of the activations here), while stored activations grow 6x from 2 to
    # 12 layers; 1.25 and 2 separate the two behaviours.
    assert rev_12 <= 1.25 * rev_2, (rev_2, rev_12)
    assert plain_12 > 2 * plain_2, (plain_2, plain_12)
    print(
        f"reversible 2/12 layers: {rev_2 / 2**20:.0f}/{rev_12 / 2**20:.0f} MiB; "
        f"ordinary: {plain_2 / 2**20:.0f}/{plain_12 / 2**20:.0f} MiB"
    )


def test_compiled_program_does_not_grow_with_depth():
    def hlo_size(n_layers):
        cfg = tiny_config(n_layers=n_layers, attention_pattern=("local", "lsh"))
        graphdef, state = nnx.split(nnx.eval_shape(lambda: ReformerLM(cfg, rngs=nnx.Rngs(0))))
        tokens = jax.ShapeDtypeStruct((1, 32), jnp.int32)

        def loss(state, tokens):
            return lm_loss(nnx.merge(graphdef, state)(tokens), tokens)[0]

        return len(jax.jit(jax.grad(loss)).lower(state, tokens).as_text())

    small, large = hlo_size(2), hlo_size(24)
    # One scanned layer body whatever the depth: only constants (the depth, parameter shapes)
    # change in the program text; an unrolled stack would be ~12x larger.
    assert large < 1.05 * small, (small, large)


def test_linformer_layer_sharing_gradient_is_the_sum_over_layers(x64):
    """Catches a model-level (layerwise-shared) Linformer matrix whose gradient is not the sum
    of what every layer contributes (e.g. only the first group's), against the same model with
    one copy of the matrix per layer."""
    cfg = tiny_config(
        n_layers=4,
        attention_pattern=("linformer", "local"),
        causal=False,
        linformer_k=5,
        linformer_sharing="layer",
        max_len=32,
        dtype="float64",
        param_dtype="float64",
    )
    shared_model = ReformerLM(cfg, rngs=nnx.Rngs(0))
    copies = ReformerLM(cfg.replace(linformer_sharing="kv"), rngs=nnx.Rngs(0))
    flat_shared = dict(nnx.to_flat_state(nnx.state(shared_model, nnx.Param)))
    proj = flat_shared["shared_attention", "linformer", "proj"].get_value()
    graphdef, state = nnx.split(copies, nnx.Param)
    flat = []
    for path, variable in nnx.to_flat_state(state):
        if path in flat_shared:
            flat.append((path, variable.replace(flat_shared[path].get_value())))
        else:  # the per-layer copies [n_groups, k, max_len]
            assert path == ("blocks", 0, "attention", "proj")
            flat.append((path, variable.replace(jnp.broadcast_to(proj, variable.shape))))
    copies = nnx.merge(graphdef, nnx.from_flat_state(flat))
    tokens = jax.random.randint(jax.random.key(2), (2, 27), 0, cfg.vocab_size)
    loss_s, g_s = loss_and_grads(shared_model, tokens)
    loss_c, g_c = loss_and_grads(copies, tokens)
    np.testing.assert_allclose(loss_s, loss_c, rtol=1e-12)
    summed = jnp.sum(g_c["blocks"][0]["attention"]["proj"][...], axis=0)
    np.testing.assert_allclose(g_s["shared_attention"]["linformer"]["proj"][...], summed, rtol=1e-9)
    np.testing.assert_allclose(
        g_s["blocks"][1]["attention"]["q"]["kernel"][...],
        g_c["blocks"][1]["attention"]["q"]["kernel"][...],
        rtol=1e-9,
    )


# -- float32: the backward must reuse the forward's bucket ids ------------------------------
#
# Tolerance derivation. The reversible backward reconstructs each layer's inputs by subtraction
# (x2 = y2 - G(y1), x1 = y1 - F(x2)); each subtraction rounds with an absolute error of about
# eps * |y| (float32 eps = 2**-23 = 1.2e-7), and the errors of the n_layers layers add up. The
# feed-forward outputs are scaled by STREAM_SCALE, so the streams grow to |y| ~ STREAM_SCALE * |x|
# and the reconstructed inputs carry a relative error of about n_layers * eps * STREAM_SCALE. The
# gradients are smooth functions of those inputs (condition ~1 here; measured 0.6), so with the
# forward's bucket ids they agree with autodiff to FLOAT32_TOL = 2 * n_layers * eps * STREAM_SCALE
# (1.4e-3; measured 4.3e-4). Re-hashing the reconstructed inputs instead moves some tokens to other
# buckets, i.e. changes which keys they attend to: an O(1) change for those tokens (measured 5e-2).
REV_LAYERS, STREAM_SCALE = 6, 1000.0
FLOAT32_TOL = 2 * REV_LAYERS * float(np.finfo(np.float32).eps) * STREAM_SCALE


def _float32_case():
    cfg = tiny_config(
        n_layers=REV_LAYERS,
        attention_pattern=("lsh",),
        lsh_n_hashes=4,
        lsh_n_buckets=8,
        lsh_chunk_len=8,
        axial_shape=(8, 16),
    )
    tokens = jax.random.randint(jax.random.key(1), (2, 128), 0, cfg.vocab_size)

    def model(c):
        m = ReformerLM(c, rngs=nnx.Rngs(0))
        for block in m.blocks:
            ff = block.feedforward.dense_out
            ff.kernel.value = ff.kernel.value * STREAM_SCALE
        return m

    return cfg, tokens, model


def _relative_error(grads, reference) -> float:
    return max(
        float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(reference), strict=True)
    )


@pytest.fixture(scope="module")
def float32_autodiff_grads():
    cfg, tokens, model = _float32_case()
    return loss_and_grads(model(cfg.replace(reversible=False)), tokens, jax.random.key(3))[1]


@pytest.mark.slow
def test_float32_reversible_gradients_equal_autodiff(float32_autodiff_grads):
    """Catches a reversible backward that re-hashes the reconstructed activations instead of
    reusing the forward's bucket ids (in float32 reconstruction error moves tokens to other
    buckets: see the next test), and reconstruction that drifts more than float32 rounding
    explains (e.g. a branch recomputed with another key). Tolerance: FLOAT32_TOL above."""
    cfg, tokens, model = _float32_case()
    grads = loss_and_grads(model(cfg), tokens, jax.random.key(3))[1]
    assert _relative_error(grads, float32_autodiff_grads) <= FLOAT32_TOL


@pytest.mark.slow
def test_float32_case_where_re_hashing_moves_buckets_exists(float32_autodiff_grads, monkeypatch):
    """Shows that the previous test can fail: re-hashing in the backward (``replay=None`` for
    every LSH call, so the backward hashes the reconstructed inputs) changes the gradients by
    far more than FLOAT32_TOL in this case. If this test failed, the float32 comparison above
    would no longer be able to detect a backward that ignores the forward's bucket ids."""
    from reformer_jax.layers.kinds.lsh import LSH

    original = LSH.attend

    def re_hashing(self, *args, **kwargs):
        kwargs["replay"] = None
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LSH, "attend", re_hashing)
    cfg, tokens, model = _float32_case()
    grads = loss_and_grads(model(cfg), tokens, jax.random.key(3))[1]
    assert _relative_error(grads, float32_autodiff_grads) > 10 * FLOAT32_TOL
