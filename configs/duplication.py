"""Default: the Reformer paper's synthetic duplication task (section 5), sized for a CPU.

Sequences ``0 w 0 w``: the second copy can only be predicted by attending half a sequence back.
The paper uses length 1024, vocabulary 128 and a 1-layer model (d_model 256, 4 heads), trained
for 150k steps. Here: length 128 (w of 63 symbols from 1..127) and a budget of a few minutes on
two CPU cores, same model shape, learned positions.

The model's attention layer is an LSH layer, trained with exact shared-QK attention
(``full_attention_below`` above the length): the paper's "full attention" row. At the end the
same weights are evaluated with exact attention and with LSH at 1, 2, 4 and 8 hashes (the
columns of the paper's table). To train with LSH instead (the paper's other rows), pass
``--config.model.full_attention_below=0``: bench/duplication_table.py trains all four rows
(LSH models found the copy as early as the exact one there, then sharpened more slowly).
"""

import ml_collections

from configs.common import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.seq_len = 128
    config.data = ml_collections.ConfigDict(
        dict(name="duplication", settings=dict(seq_len=128, vocab_size=128))
    )
    config.model = ml_collections.ConfigDict(
        dict(
            vocab_size=128,
            d_model=256,
            d_ff=512,
            n_layers=1,
            n_heads=4,
            d_head=64,
            attention_pattern=["lsh"],
            causal=True,
            lsh_chunk_len=32,
            lsh_n_buckets=8,  # two buckets per chunk at length 128
            lsh_n_hashes=4,
            full_attention_below=1 << 30,  # train with exact shared-QK attention
            pos_embedding="learned",
            max_len=128,
        )
    )
    config.batch_size = 16
    config.num_steps = 600
    config.learning_rate = 1e-3
    config.schedule = "constant"
    config.warmup_steps = 100
    config.grad_clip = 1.0
    config.log_every = 50
    config.eval_every = 200
    config.eval_batches = 4
    config.eval_batch_size = 32
    config.checkpoint_every = 200
    config.keep_checkpoints = 2
    config.eval_hashes = [1, 2, 4, 8]
    return config
