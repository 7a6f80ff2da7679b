"""imagenet64 (Trax HEAD gin): 6 LSH layers over 12,288 sub-pixels (64 x 64 x 3, raster order).

chunk 128, 192 buckets ([16, 12] factorised automatically), 2 hashes; d_model 1024, d_ff 4096,
8 heads of 64; no dropout; GELU; vocabulary 256; axial (64, 64, 3) with dims (384, 384, 256);
8000 warm-up steps, 500k steps. The TFDS download of downsampled_imagenet is broken: place the
archives in the manual directory (reformer_jax/data/imagenet64.py says which).
"""

import ml_collections

from configs.common import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.seq_len = 12288
    config.data = ml_collections.ConfigDict(
        dict(name="imagenet64", settings=dict(data_dir="data/tfds", manual_dir="data/manual"))
    )
    config.model = ml_collections.ConfigDict(
        dict(
            vocab_size=256,
            d_model=1024,
            d_ff=4096,
            n_layers=6,
            n_heads=8,
            d_head=64,
            attention_pattern=["lsh"],
            causal=True,
            lsh_chunk_len=128,
            lsh_n_buckets=None,
            lsh_n_hashes=2,
            pos_embedding="axial",
            axial_shape=[64, 64, 3],
            axial_dims=[384, 384, 256],
            ff_activation="gelu",
            ff_chunk_size=8192,
        )
    )
    config.batch_size = 8
    config.num_steps = 500_000
    config.learning_rate = 0.03125
    config.schedule = "rsqrt"
    config.warmup_steps = 8000
    config.eval_every = 10_000
    return config
