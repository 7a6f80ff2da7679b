"""A CPU-sized enwik8 model: the reference layout at 4K tokens, 4 layers of width 256."""

import ml_collections

from configs.enwik8 import get_config as enwik8_config


def get_config() -> ml_collections.ConfigDict:
    config = enwik8_config()
    config.seq_len = 4096
    config.data.settings.seq_len = 4096
    config.model.update(
        d_model=256,
        d_ff=512,
        n_layers=4,
        n_heads=4,
        d_head=64,
        lsh_chunk_len=64,
        lsh_n_buckets=64,
        local_chunk_len=64,
        axial_shape=[64, 64],
        axial_dims=[128, 128],
        hidden_dropout=0.1,
        lsh_dropout=0.1,
        local_dropout=0.1,
        ff_dropout=0.1,
        ff_chunk_size=4096,
    )
    config.batch_size = 2
    config.num_steps = 20_000
    config.learning_rate = 0.03125
    config.warmup_steps = 1000
    config.eval_every = 1000
    config.eval_batches = 8
    return config
