import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from reformer_jax import sharding as shd
from reformer_jax.model import ReformerLM, lm_loss
from tests.model_utils import random_tokens, tiny_config, tiny_window_config


def test_mesh_shapes():
    assert jax.device_count() == 8  # tests/conftest.py simulates 8 CPU devices
    # (data, model) keeps its meaning: the fsdp axis is 1.
    assert dict(shd.make_mesh((-1, 2)).shape) == {"data": 4, "fsdp": 1, "model": 2}
    assert dict(shd.make_mesh((2, 1)).shape) == {"data": 2, "fsdp": 1, "model": 1}
    assert dict(shd.make_mesh((1, -1, 2)).shape) == {"data": 1, "fsdp": 4, "model": 2}
    with pytest.raises(ValueError, match="mesh_shape"):
        shd.make_mesh((2, 2, 2, 1))
    with pytest.raises(ValueError, match="mesh_shape"):
        shd.make_mesh((3, -1))
    with pytest.raises(ValueError, match="mesh_shape"):
        shd.make_mesh((16, 1))


def test_heads_and_mlp_go_on_the_model_axis():
    mesh = shd.make_mesh((4, 2))
    cfg = tiny_config(attention_pattern=("local", "lsh"), n_heads=2)
    state = nnx.state(nnx.eval_shape(lambda: ReformerLM(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    shardings = shd.param_shardings(mesh, state)
    block = shardings["blocks"][1]
    # Stacked layer parameters: a replicated leading group axis, then the logical axes.
    assert block["attention"]["qk"]["kernel"].get_value().spec == P(None, None, "model")
    assert block["attention"]["out"]["kernel"].get_value().spec == P(None, "model", None)
    assert block["feedforward"]["dense_in"]["kernel"].get_value().spec == P(None, None, "model")
    assert shardings["embed"]["embedding"].get_value().spec == P(None, None)


def test_indivisible_dimensions_are_replicated():
    mesh = shd.make_mesh((1, 8))
    assert shd._divisible(P(None, "model"), (4, 6), mesh) == P(None, None)
    assert shd._divisible(P(None, "model"), (4, 16), mesh) == P(None, "model")


def test_the_families_parameters_follow_the_rules():
    """Catches a family parameter without logical axes (it would be placed arbitrarily) or a
    Linformer projection sharded along its length (every device needs every position)."""
    mesh = shd.make_mesh((4, 2))
    cfg = tiny_config(
        attention_pattern=("sparse", "linformer", "performer"),
        n_layers=3,
        causal=False,
        linformer_sharing="layer",
        max_len=32,
    )
    state = nnx.state(nnx.eval_shape(lambda: ReformerLM(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    shardings = shd.param_shardings(mesh, state)
    for p in range(3):  # separate q / k / v projections: heads on the model axis
        attention = shardings["blocks"][p]["attention"]
        assert attention["q"]["kernel"].get_value().spec == P(None, None, "model")
    proj = shardings["shared_attention"]["linformer"]["proj"].get_value()
    assert proj.spec == P(None, None)
    cfg = cfg.replace(linformer_sharing="none")
    state = nnx.state(nnx.eval_shape(lambda: ReformerLM(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    per_head = shd.param_shardings(mesh, state)["blocks"][1]["attention"]["proj_k"]
    assert per_head.get_value().spec == P(None, None, None, None)


def test_fsdp_shards_the_embed_dimension_of_parameters_and_batches():
    """Catches FSDP that leaves parameters replicated (no memory saved) or batches split over
    only the ``data`` axis (each fsdp device would see the wrong rows)."""
    mesh = shd.make_mesh((1, 4, 2))
    cfg = tiny_config(attention_pattern=("local", "lsh"), n_heads=2)
    state = nnx.state(nnx.eval_shape(lambda: ReformerLM(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    shardings = shd.param_shardings(mesh, state)
    block = shardings["blocks"][1]
    assert block["attention"]["qk"]["kernel"].get_value().spec == P(None, "fsdp", "model")
    assert block["feedforward"]["dense_out"]["kernel"].get_value().spec == P(None, "model", "fsdp")
    assert shd.batch_sharding(mesh).spec == P(("data", "fsdp"))
    assert shd.data_parallel_size(mesh) == 4


# ------------------------------------------------------------------------------------------------
# Activation sharding: constrain_batch and per_batch_shard.


def _sharded_loss_and_grads(cfg, tokens, mesh_shape, mask=None):
    """Loss and gradients of ``cfg``'s model (parameters seed 0) on ``tokens``, on one device
    (``mesh_shape`` None) or traced with a mesh set, inputs laid out as the trainer does."""
    model = ReformerLM(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)

    def loss(state, tokens, mask):
        logits = nnx.merge(graphdef, state)(tokens, mask=mask, hash_rng=jax.random.key(3))
        return lm_loss(logits, tokens, None if mask is None else mask.astype(logits.dtype))[0]

    fn = jax.jit(jax.value_and_grad(loss))
    if mesh_shape is None:
        return fn(state, tokens, mask)
    mesh = shd.make_mesh(mesh_shape)
    state = jax.device_put(state, shd.param_shardings(mesh, state))
    tokens, mask = jax.device_put((tokens, mask), shd.batch_sharding(mesh))
    with jax.set_mesh(mesh):
        return fn(state, tokens, mask)


def _assert_mesh_matches_one_device(cfg, tokens, mesh_shape, mask=None):
    """Loss and gradients on ``mesh_shape`` equal one device's (float64: only the order of the
    sums differs)."""
    one_loss, one_grads = _sharded_loss_and_grads(cfg, tokens, None, mask)
    loss, grads = _sharded_loss_and_grads(cfg, tokens, mesh_shape, mask)
    np.testing.assert_allclose(loss, one_loss, rtol=1e-10)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(one_grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-12)


@pytest.mark.slow  # ~20-25 s each on 2 shared cores
@pytest.mark.parametrize("residual", ["reversible", "standard"])
def test_constrained_model_has_one_devices_loss_and_gradients(x64, residual):
    """Catches a per-shard attention kernel or feed-forward chunk loop that sees the wrong rows
    (a mask or bucket replay not split with its queries), a shared parameter (Linformer's
    projection) whose gradient is one shard's instead of the sum over shards, or a constraint
    that changes values; float64, so only summation order differs."""
    cfg = tiny_config(
        attention_pattern=("lsh", "linformer", "local"),
        n_layers=3,
        causal=False,
        linformer_k=4,
        linformer_sharing="layer",
        max_len=32,
        residual=residual,
        ff_chunk_size=48,  # chunks straddle rows, and the padded tail
        dtype="float64",
        param_dtype="float64",
    )
    tokens = random_tokens(cfg, (8, 32))
    mask = np.ones((8, 32), bool)
    mask[:, 27:] = False  # padded tails: the mask must travel with its rows
    _assert_mesh_matches_one_device(cfg, tokens, (2, 2, 2), mask)


def test_per_batch_shard_is_wholly_manual_only_for_unpartitionable_kernels():
    """Catches a shard map that leaves a one-device model axis to XLA around a kernel XLA
    cannot partition (the Pallas window kernels are custom calls: they then fail to compile on
    a data- or FSDP-parallel mesh), and one that makes every kernel's mesh manual, which
    changes what the XLA kernels compile to (the TPU scaled_1b step: 0.4 GiB more
    temporaries). With heads on a real model axis, that axis stays with XLA."""
    seen = {}

    def record(batched, shared, key):
        mesh = jax.sharding.get_abstract_mesh()
        seen.update(zip(mesh.axis_names, mesh.axis_types, strict=True))
        return batched[0] * 2.0

    x = jax.numpy.ones((8, 4))
    manual, auto = jax.sharding.AxisType.Manual, jax.sharding.AxisType.Auto
    for mesh_shape, partitionable, model_type in (
        ((4, 2, 1), True, auto),
        ((4, 2, 1), False, manual),
        ((4, 2), False, auto),
    ):
        seen.clear()
        with jax.set_mesh(shd.make_mesh(mesh_shape)):
            jax.jit(
                lambda x, p=partitionable: shd.per_batch_shard(record, (x,), None, partitionable=p)
            )(x)
        assert seen == {"data": manual, "fsdp": manual, "model": model_type}, mesh_shape


@pytest.mark.filterwarnings("ignore:window_implementation='pallas' runs in Pallas")
def test_pallas_window_kernels_train_on_a_data_parallel_mesh_and_refuse_a_model_axis(x64):
    """Catches the Pallas kernels outside the per-shard map (wrong rows per shard), and a model
    axis of several devices reaching them, which XLA cannot partition (on a TPU, a Mosaic
    lowering error): refused with the mesh settings that work."""
    cfg = tiny_window_config("pallas")
    tokens = random_tokens(cfg, (8, 64))
    _assert_mesh_matches_one_device(cfg, tokens, (4, 2, 1))
    with pytest.raises(
        ValueError, match="mesh axis 'model' \\(2 devices\\).*window_implementation='xla'"
    ):
        _sharded_loss_and_grads(cfg, tokens, (4, 2))


def test_constraints_are_no_ops_without_a_mesh_or_an_even_split():
    """Catches a constraint that demands a mesh (single-device code and unit tests have none) or
    one that forces an uneven split of the batch."""
    x = jax.numpy.ones((6, 4))
    assert shd.constrain_batch(x) is x
    assert shd.per_batch_shard(lambda b, s, k: b[0] + s, (x,), 1.0).shape == (6, 4)
    with jax.set_mesh(shd.make_mesh((4, 2))):  # 6 rows on 4 batch shards: left to XLA
        assert shd.constrain_batch(x) is x
        assert shd._batch_mesh(8) is not None
    with jax.set_mesh(shd.make_mesh((1, 8))):  # no data parallelism: nothing to split
        assert shd._batch_mesh(8) is None


_HLO_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "f64": 8, "s64": 8}


def _compiled_lsh_step(mesh_shape):
    """The trainer's compiled step for a small causal LSH + local model on ``mesh_shape``:
    (per-device temporary bytes, bytes of all-gathers in the HLO)."""
    import ml_collections

    from configs.common import base_config
    from reformer_jax.train.command_line import complete_config
    from reformer_jax.train.trainer import _model_config, build_train_step

    config = base_config()
    config.seq_len, config.batch_size = 256, 8
    config.model = ml_collections.ConfigDict(
        dict(
            vocab_size=64,
            d_model=32,
            d_ff=64,
            n_layers=2,
            n_heads=2,
            d_head=16,
            attention_pattern=["lsh", "local"],
            lsh_chunk_len=16,
            lsh_n_hashes=2,
            local_chunk_len=16,
            pos_embedding="learned",
            max_len=256,
            ff_chunk_size=128,  # the chunk loop, like the attention kernels', per batch shard
        )
    )
    config = complete_config(config, train_defaults=base_config())
    config.mesh_shape = mesh_shape
    mesh = shd.make_mesh(mesh_shape)
    parts = build_train_step(config, _model_config(config, 64), mesh)
    with jax.set_mesh(mesh):
        lowered = parts.step.lower(*parts.abstract_args(config.batch_size, config.seq_len))
    compiled = lowered.compile()
    return compiled.memory_analysis().temp_size_in_bytes, _all_gather_bytes(compiled.as_text())


def _all_gather_bytes(hlo_text: str) -> int:
    """Bytes produced by the all-gathers of a compiled program's HLO text."""
    gathered = 0
    for line in hlo_text.splitlines():
        match = re.search(r"= (\w+)\[([\d,]*)\]\S* all-gather(-start)?\(", line)
        if match:
            dims = [int(d) for d in match.group(2).split(",") if d]
            gathered += math.prod(dims) * _HLO_BYTES.get(match.group(1), 4)
    return gathered


@pytest.mark.slow  # ~22 s on 2 shared cores: two compiled training steps
def test_data_parallel_step_gathers_no_activations_and_fsdp_costs_no_temporaries():
    """Catches activations replicated across the data-parallel devices. Planted and measured
    on this toy: without the per-shard attention kernels XLA all-gathers the kernels' loop
    inputs (sorted queries, keys, values: 8.6 MB of all-gathers, 3.6x the temporaries); without
    the residual-stream constraints FSDP's temporaries are 1.85x data parallelism's (1.02x with
    them). Deterministic: compiled programs, not timings."""
    data_temp, data_gathered = _compiled_lsh_step((8, 1))
    fsdp_temp, _ = _compiled_lsh_step((1, 8, 1))
    # Parameters are replicated on a (data, model) mesh: nothing needs gathering.
    assert data_gathered == 0, data_gathered
    # FSDP gathers parameters one layer at a time: at most 10% more temporaries.
    assert fsdp_temp <= 1.1 * data_temp, (fsdp_temp, data_temp)


@pytest.mark.slow  # ~20 s on 2 shared cores: a prefill compiled with and without a mesh
def test_prefill_on_a_mesh_equals_one_device_and_gathers_no_activations(x64):
    """Catches a decoding prefill whose kinds' sorts and loops gather every row onto every chip
    (planted: without the per-shard prefill the data-parallel program all-gathers the queries,
    keys and values), or a per-shard prefill that pairs rows with another row's prompt length or
    cache; float64, rows of different prompt lengths."""
    from reformer_jax import generate as gen
    from reformer_jax.decoding import loop

    cfg = tiny_config(
        attention_pattern=("lsh", "local", "performer"),
        n_layers=3,
        lsh_chunk_len=4,
        local_chunk_len=4,
        performer_n_features=8,
        performer_chunk_len=4,
        max_len=32,
        dtype="float64",
        param_dtype="float64",
    )
    model = ReformerLM(cfg, rngs=nnx.Rngs(0))
    tokens = random_tokens(cfg, (8, 16), seed=1)
    lengths = [16, 9, 12, 16, 5, 16, 11, 7]
    one_logits, one_cache = gen.prefill(model, tokens, prompt_lengths=lengths, max_length=32)

    mesh = shd.make_mesh((8, 1))
    prompts, prompt_lengths = jax.device_put(
        (jnp.asarray(tokens), jnp.asarray(lengths)), shd.batch_sharding(mesh)
    )
    spec = loop.decode_spec(cfg, 32)
    graphdef, state = nnx.split(model)
    args = (graphdef, state, prompts, prompt_lengths, loop._draws(model, spec, None))
    with jax.set_mesh(mesh):
        logits, cache = loop._prefill_jit(*args, spec=spec, all_logits=False)
        lowered = loop._prefill_jit.lower(*args, spec=spec, all_logits=False)
    np.testing.assert_allclose(logits, one_logits, rtol=1e-10, atol=1e-12)
    for a, b in zip(jax.tree.leaves(cache), jax.tree.leaves(one_cache), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    # Planted (the kinds' prefill called on the whole batch): 39,040 bytes of all-gathers.
    # With it per shard: 128 bytes, under one row of one activation (16 x 16 float64, 2 KiB).
    gathered = _all_gather_bytes(lowered.compile().as_text())
    assert gathered < 16 * cfg.d_model * 8, gathered


@pytest.mark.slow  # ~20 s on 2 shared cores
def test_causal_performer_trains_on_a_mesh_like_one_device(x64):
    """Catches a per-shard kernel that cannot run at all on a mesh (planted: shard_map's
    varying-axes check rejected the causal Performer's prefix-sum scan, whose carry starts from
    zeros) or that pairs a shard with another shard's rows."""
    cfg = tiny_config(
        attention_pattern=("performer", "lsh"),
        n_layers=2,
        performer_n_features=8,
        performer_chunk_len=4,
        max_len=32,
        residual="standard",
        dtype="float64",
        param_dtype="float64",
    )
    tokens = random_tokens(cfg, (8, 32))
    _assert_mesh_matches_one_device(cfg, tokens, (2, 2, 2))
