"""Default: the Reformer paper's synthetic duplication task (section 5), sized for a CPU.

Sequences ``0 w 0 w``; the second copy can only be predicted by attending half a sequence back.
The paper uses length 1024, vocabulary 128 and a 1-layer model of width 256 with 4 heads,
trained for 150k steps on accelerators. Here: length 256 and a 10-minute CPU budget, a 2-layer
model, LSH with 4 hashes during training; at the end the trained model is evaluated with exact
attention and with LSH at 1, 2, 4 and 8 hashes (the columns of the paper's table).
"""

import ml_collections

from configs.common import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.seq_len = 256
    config.data = ml_collections.ConfigDict(
        dict(name="duplication", settings=dict(seq_len=256, vocab_size=128))
    )
    config.model = ml_collections.ConfigDict(
        dict(
            vocab_size=128,
            d_model=128,
            d_ff=256,
            n_layers=2,
            n_heads=4,
            d_head=32,
            attention_pattern=["lsh"],
            causal=True,
            lsh_chunk_len=32,
            lsh_n_buckets=16,  # two buckets per chunk of 32 at length 256
            lsh_n_hashes=4,
            pos_embedding="axial",
            axial_shape=[16, 16],
            axial_dims=[64, 64],
        )
    )
    config.batch_size = 16
    config.num_steps = 1500
    config.learning_rate = 2e-3
    config.schedule = "constant"
    config.warmup_steps = 100
    config.grad_clip = 1.0
    config.log_every = 50
    config.eval_every = 500
    config.eval_batches = 4
    config.eval_batch_size = 32
    config.checkpoint_every = 500
    config.keep_checkpoints = 2
    config.eval_hashes = [1, 2, 4, 8]
    return config
