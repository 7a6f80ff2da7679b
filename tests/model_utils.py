"""Small model configurations and helpers shared by the model tests."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
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


def tiny_window_config(window_implementation: str, **overrides) -> ReformerConfig:
    """A float64 LSH + local model whose sizes the Pallas window kernels take (tiles of 16)."""
    return tiny_config(
        attention_pattern=("lsh", "local"),
        d_head=16,
        lsh_chunk_len=16,
        local_chunk_len=16,
        axial_shape=(8, 8),
        dtype="float64",
        param_dtype="float64",
        window_implementation=window_implementation,
        **overrides,
    )


def loss_and_grads(model: ReformerLM, tokens, dropout_rng=None, **kwargs):
    graphdef, state = nnx.split(model)

    def loss(state):
        m = nnx.merge(graphdef, state)
        return lm_loss(m(tokens, dropout_rng=dropout_rng, **kwargs), tokens)[0]

    return jax.jit(jax.value_and_grad(loss))(state)


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, tokens):
    return nnx.merge(graphdef, state)(tokens)


def forward(model: ReformerLM, tokens) -> jax.Array:
    """``model(tokens)`` (jitted, evaluation mode)."""
    return _forward(*nnx.split(model), jnp.asarray(tokens))


def random_tokens(cfg: ReformerConfig, shape, seed: int = 0) -> np.ndarray:
    # numpy, not jax.random: eager threefry programs cost compile time in every fresh process
    return np.random.default_rng(seed).integers(0, cfg.vocab_size, shape).astype(np.int32)
