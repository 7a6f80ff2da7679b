"""Thin Flax NNX modules over the kernels."""

from reformer_jax.layers.attention import SelfAttention
from reformer_jax.layers.embeddings import PositionalEmbedding
from reformer_jax.layers.feedforward import FeedForward

__all__ = ["FeedForward", "PositionalEmbedding", "SelfAttention"]
