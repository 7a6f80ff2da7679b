"""Transformer-XL on enwik8: the paper's 12-layer base (Dai et al. 2019, 1.06 bpc, 41M params).

12 layers of relative-position attention over [memory; segment], d_model 512, 8 heads of 64,
d_ff 2048, segments of 512 bytes with a memory of 512 states per layer (evaluation with a
longer memory, 2048), dropout 0.1, Adam 2.5e-4 with cosine decay over 400k steps, batch 22
contiguous streams. Differences from the paper: evaluation keeps the training segment length
(the paper evaluates 80-byte segments with 2,100 states of memory), pre-LN residual blocks
(this library's standard stack), no attention dropout schedule. See docs/memory.md.
Prepare the data first (reformer_jax/data/enwik8.py).
"""

import ml_collections

from configs.common import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.task = "lm_memory"
    config.seq_len = 512
    config.data = ml_collections.ConfigDict(
        dict(
            name="enwik8",
            settings=dict(
                data_dir="data/tfds", manual_dir="data/manual", seq_len=512, order="streams"
            ),
        )
    )
    config.model = ml_collections.ConfigDict(
        dict(
            vocab_size=258,
            d_model=512,
            d_ff=2048,
            n_layers=12,
            n_heads=8,
            d_head=64,
            attention_pattern=["relative"],
            residual="standard",
            pos_embedding="none",
            mem_len=512,
            hidden_dropout=0.1,
            relative_dropout=0.0,
            ff_dropout=0.1,
            ff_activation="relu",
        )
    )
    config.eval_mem_len = 2048
    config.batch_size = 22
    config.num_steps = 400_000
    config.optimizer = "adam"
    config.adam_b1, config.adam_b2, config.adam_eps = 0.9, 0.999, 1e-8
    config.learning_rate = 2.5e-4
    config.schedule = "cosine"
    config.warmup_steps = 0
    config.grad_clip = 0.25
    config.eval_every = 4000
    config.eval_batches = 16
    config.eval_batch_size = 0
    config.checkpoint_every = 4000
    return config
