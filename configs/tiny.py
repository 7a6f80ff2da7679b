"""A tiny configuration for tests: compiles and runs a step in seconds."""

import ml_collections

from configs.common import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.seq_len = 32
    config.data = ml_collections.ConfigDict(
        dict(name="duplication", settings=dict(seq_len=32, vocab_size=16))
    )
    config.model = ml_collections.ConfigDict(
        dict(
            vocab_size=16,
            d_model=16,
            d_ff=32,
            n_layers=2,
            n_heads=2,
            d_head=8,
            attention_pattern=["local", "lsh"],
            lsh_chunk_len=8,
            local_chunk_len=8,
            lsh_n_buckets=4,
            lsh_n_hashes=2,
            axial_shape=[4, 8],
            axial_dims=[8, 8],
        )
    )
    config.batch_size = 8
    config.num_steps = 2
    config.learning_rate = 1e-2
    config.schedule = "constant"
    config.warmup_steps = 0
    config.log_every = 1
    config.eval_every = 2
    config.eval_batches = 1
    config.checkpoint_every = 2
    config.keep_checkpoints = 2
    config.mesh_shape = (1, 1)  # one device: compiles fastest; sharding tests set their own
    return config
