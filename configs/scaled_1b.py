"""A ~1.1B-parameter byte-level Reformer for pods: 24 LSH layers over 65,536-byte sequences.

The enwik8 data and training settings (configs/enwik8.py) at pod scale: d_model 2048, d_ff 8192,
16 heads of 128, every layer LSH (chunk 256, 2 hashes, 512 buckets), axial positions (256, 256),
bfloat16 compute with float32 parameters. Adam's state alone (parameters, two moments) is
~13 GiB, more than a v5e chip's 16 GiB holds with the gradients and activations, so the default
mesh is FSDP over every device (``(1, -1, 1)``). docs/pods.md has its pod table (compiled ahead
of time, not run): with FSDP it fits a v5e-16 slice (13.2 of 16 GiB per chip, one sequence per
chip) and v6e-64 (10.5 of 32 GiB).
"""

import ml_collections

from configs.enwik8 import get_config as enwik8_config


def get_config() -> ml_collections.ConfigDict:
    config = enwik8_config()
    config.model.update(
        d_model=2048,
        d_ff=8192,
        n_layers=24,
        n_heads=16,
        d_head=128,
        attention_pattern=["lsh"],
        lsh_chunk_len=256,
        lsh_n_buckets=512,
        lsh_n_hashes=2,
        axial_shape=[256, 256],
        axial_dims=[1024, 1024],
        hidden_dropout=0.1,
        lsh_dropout=0.1,
        local_dropout=0.1,
        ff_dropout=0.1,
        ff_chunk_size=16384,
        dtype="bfloat16",
    )
    config.mesh_shape = (1, -1, 1)  # FSDP over every device
    config.batch_size = 16  # 1M tokens per step
    config.learning_rate = 0.01
    return config
