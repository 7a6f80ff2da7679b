"""Byte-level language model on any local text file or directory.

``python train.py --config configs/text.py --config.data.settings.path=corpus.txt``
"""

import ml_collections

from configs.common import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.seq_len = 1024
    config.data = ml_collections.ConfigDict(
        dict(name="text", settings=dict(path="", seq_len=1024, eval_fraction=0.05))
    )
    config.model = ml_collections.ConfigDict(
        dict(
            vocab_size=256,
            d_model=256,
            d_ff=512,
            n_layers=4,
            n_heads=4,
            d_head=64,
            attention_pattern=["local", "lsh"],
            lsh_chunk_len=64,
            local_chunk_len=64,
            lsh_n_hashes=2,
            axial_shape=[32, 32],
            axial_dims=[128, 128],
            hidden_dropout=0.1,
        )
    )
    config.batch_size = 8
    config.num_steps = 5000
    config.learning_rate = 1e-3
    config.schedule = "constant"
    config.warmup_steps = 200
    config.eval_every = 500
    return config
