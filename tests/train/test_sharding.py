import jax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from reformer_jax.model import ReformerLM
from reformer_jax.train import sharding as shd
from tests.model_utils import tiny_config


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
