"""reformer_jax: the Reformer in JAX and Flax NNX.

Kernels live in :mod:`reformer_jax.kernels`, layers in :mod:`reformer_jax.layers`, training in
:mod:`reformer_jax.train`, data sources in :mod:`reformer_jax.data`, the sharding rules shared by
layers and trainer in :mod:`reformer_jax.sharding`.
"""

from reformer_jax.config import ReformerConfig
from reformer_jax.model import ReformerLM, lm_loss

__all__ = ["ReformerConfig", "ReformerLM", "lm_loss"]
