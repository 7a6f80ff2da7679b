"""Pure attention kernels on ``[batch, heads, length, d_head]`` arrays (no Flax, no state)."""

from reformer_jax.kernels.full import full_attention
from reformer_jax.kernels.local import local_attention
from reformer_jax.kernels.lsh import (
    auto_n_buckets,
    draw_rotations,
    hash_vectors,
    lsh_attention,
    rotation_columns,
    total_buckets,
    unit_keys,
)
from reformer_jax.kernels.masking import mask_values
from reformer_jax.kernels.sparse import (
    KeyPositions,
    SparsePattern,
    SparsePlan,
    bigbird_pattern,
    fixed_pattern,
    longformer_pattern,
    sparse_attention,
    star_pattern,
    strided_pattern,
)

__all__ = [
    "KeyPositions",
    "SparsePattern",
    "SparsePlan",
    "bigbird_pattern",
    "fixed_pattern",
    "longformer_pattern",
    "sparse_attention",
    "star_pattern",
    "strided_pattern",
    "auto_n_buckets",
    "draw_rotations",
    "full_attention",
    "hash_vectors",
    "local_attention",
    "lsh_attention",
    "mask_values",
    "rotation_columns",
    "total_buckets",
    "unit_keys",
]
