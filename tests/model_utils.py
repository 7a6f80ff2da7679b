"""Small model configurations and helpers shared by the model tests."""

import jax
from flax import nnx

from reformer_jax.config import ReformerConfig
from reformer_jax.model import ReformerLM, lm_loss

TINY = dict(
    vocab_size=17,
    d_model=16,
    d_ff=24,
    n_heads=2,
    d_head=4,
    lsh_chunk_len=4,
    local_chunk_len=4,
    lsh_n_buckets=4,
    axial_shape=(4, 8),
    axial_dims=(8, 8),
)


def tiny_config(**overrides) -> ReformerConfig:
    return ReformerConfig(**{**TINY, "n_layers": 2, **overrides})


def loss_and_grads(model: ReformerLM, tokens, dropout_rng=None, **kwargs):
    graphdef, state = nnx.split(model)

    def loss(state):
        m = nnx.merge(graphdef, state)
        return lm_loss(m(tokens, dropout_rng=dropout_rng, **kwargs), tokens)[0]

    return jax.jit(jax.value_and_grad(loss))(state)
