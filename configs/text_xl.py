"""A small Transformer-XL on any local text (trains on a laptop CPU): docs/memory.md.

``python train.py --config configs/text_xl.py --config.data.settings.path=corpus.txt``

4 relative-position layers of width 128 (4 heads of 32), segments of 128 bytes, memory of 128
states per layer (evaluated with 256), 8 contiguous streams.
"""

import ml_collections

from configs.common import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.task = "lm_memory"
    config.seq_len = 128
    config.data = ml_collections.ConfigDict(
        dict(
            name="text",
            settings=dict(path="", seq_len=128, eval_fraction=0.05, order="streams"),
        )
    )
    config.model = ml_collections.ConfigDict(
        dict(
            vocab_size=256,
            d_model=128,
            d_ff=512,
            n_layers=4,
            n_heads=4,
            d_head=32,
            attention_pattern=["relative"],
            residual="standard",
            pos_embedding="none",
            mem_len=128,
            hidden_dropout=0.1,
        )
    )
    config.eval_mem_len = 256
    config.batch_size = 8
    config.num_steps = 2000
    config.learning_rate = 1e-3
    config.schedule = "constant"
    config.warmup_steps = 100
    config.eval_every = 500
    config.eval_batches = 0  # one whole pass over the held-out streams
    return config
