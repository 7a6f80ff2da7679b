"""A tiny classification run (``config.task = "classification"``) on the synthetic
``contains_token`` source: a bidirectional Reformer encoder (local + LSH layers), mean pooling,
Dense -> ReLU -> Dense. Learns well above chance in a few dozen steps on a CPU; the trainer keeps
the best validation checkpoint and reports its test accuracy."""

import ml_collections

from configs.common import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.task = "classification"
    config.seq_len = 32
    config.data = ml_collections.ConfigDict(
        dict(
            name="contains_token",
            settings=dict(seq_len=32, vocab_size=8, eval_examples=128, test_examples=128),
        )
    )
    # The head: "cls" (a learned token prepended; the model's last vocabulary id) or "mean"
    # (mean over real tokens); d_hidden 0 = the encoder's width. num_classes and paired come
    # from the data source.
    config.classifier = ml_collections.ConfigDict(dict(pooling="mean", d_hidden=32))
    config.model = ml_collections.ConfigDict(
        dict(
            d_model=16,
            d_ff=32,
            n_layers=2,
            n_heads=2,
            d_head=8,
            causal=False,  # an encoder: every token sees the whole document
            attention_pattern=["local", "lsh"],
            lsh_chunk_len=8,
            local_chunk_len=8,
            local_chunks_after=1,  # bidirectional windows
            lsh_chunks_after=1,
            lsh_n_buckets=4,
            lsh_n_hashes=2,
            pos_embedding="learned",
            max_len=64,  # room for the CLS token with pooling="cls"
        )
    )
    config.batch_size = 16
    config.num_steps = 60
    config.learning_rate = 3e-3
    config.schedule = "constant"
    config.warmup_steps = 0
    config.log_every = 10
    config.eval_every = 20
    config.eval_batches = 0  # the whole validation / test split
    config.eval_batch_size = 32
    config.checkpoint_every = 20
    config.keep_checkpoints = 2
    config.mesh_shape = (1, 1)
    return config
