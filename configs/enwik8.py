"""enwik8 with the reference Trax (HEAD gin) hyperparameters; see docs/reference configs.

12 layers cycling [local, local, lsh, local]; local chunk 128, LSH chunk 256 with 512 buckets
and 2 hashes; d_model 768, d_ff 2048, 8 heads of 64; dropout 0.2; ReLU; 65,536-byte sequences;
vocabulary 258 (bytes + pad + eos); axial positions (128, 512) with dims (256, 512);
Adam(0.9, 0.98, 1e-9) with lr 0.03125 * min(1, step/2000) / sqrt(max(step, 2000)); 100k steps,
one sequence per device. Prepare the data first: place enwik8.zip in --config.data.settings.
manual_dir (see reformer_jax/data/enwik8.py).
"""

import ml_collections

from configs.common import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.seq_len = 65536
    config.data = ml_collections.ConfigDict(
        dict(
            name="enwik8",
            settings=dict(data_dir="data/tfds", manual_dir="data/manual", seq_len=65536),
        )
    )
    config.model = ml_collections.ConfigDict(
        dict(
            vocab_size=258,
            d_model=768,
            d_ff=2048,
            n_layers=12,
            n_heads=8,
            d_head=64,
            attention_pattern=["local", "local", "lsh", "local"],
            causal=True,
            local_chunk_len=128,
            local_chunks_before=1,
            lsh_chunk_len=256,
            lsh_n_buckets=512,
            lsh_n_hashes=2,
            lsh_chunks_before=1,
            pos_embedding="axial",
            axial_shape=[128, 512],
            axial_dims=[256, 512],
            hidden_dropout=0.2,
            lsh_dropout=0.2,
            local_dropout=0.2,
            ff_dropout=0.2,
            ff_activation="relu",
            ff_chunk_size=16384,
        )
    )
    config.batch_size = 8
    config.num_steps = 100_000
    config.optimizer = "adam"
    config.learning_rate = 0.03125
    config.schedule = "rsqrt"
    config.warmup_steps = 2000
    config.eval_every = 5000
    config.eval_batches = 16
    config.checkpoint_every = 1000
    return config
