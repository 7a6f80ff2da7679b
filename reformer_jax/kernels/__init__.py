"""Pure attention kernels on ``[batch, heads, length, d_head]`` arrays (no Flax, no state)."""

from reformer_jax.kernels.full import full_attention
from reformer_jax.kernels.linformer import (
    init_linformer_projection,
    linformer_attention,
    linformer_projection_shape,
)
from reformer_jax.kernels.local import local_attention
from reformer_jax.kernels.lsh import (
    LSHOrder,
    auto_n_buckets,
    draw_rotations,
    hash_vectors,
    lsh_attention,
    rotation_columns,
    sort_order,
    total_buckets,
    unit_keys,
)
from reformer_jax.kernels.masking import mask_values
from reformer_jax.kernels.performer import (
    PerformerState,
    draw_features,
    performer_attention,
    performer_decode_init,
    performer_decode_step,
    performer_prefill,
)
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
    "LSHOrder",
    "PerformerState",
    "SparsePattern",
    "SparsePlan",
    "bigbird_pattern",
    "fixed_pattern",
    "longformer_pattern",
    "sparse_attention",
    "star_pattern",
    "strided_pattern",
    "auto_n_buckets",
    "draw_features",
    "draw_rotations",
    "full_attention",
    "hash_vectors",
    "init_linformer_projection",
    "linformer_attention",
    "linformer_projection_shape",
    "local_attention",
    "lsh_attention",
    "mask_values",
    "performer_attention",
    "performer_decode_init",
    "performer_decode_step",
    "performer_prefill",
    "rotation_columns",
    "sort_order",
    "total_buckets",
    "unit_keys",
]
