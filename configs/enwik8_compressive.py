"""Compressive Transformer on enwik8 (Rae et al. 2020) on the Transformer-XL base.

The paper's enwik8 model (0.97 bpc) has 24 layers of width 1024 with segments of 768 bytes, a
memory of 768 states and a compressed memory of 768 states at rate 3 (a 1-D convolution,
kernel = stride = 3, trained by the attention-reconstruction loss). This config keeps those
memory settings on configs/enwik8_xl.py's 12-layer base (d_model 512, 8 heads of 64), so it
compares with that config at equal depth and width; the model reaches 768 + 3 * 768 states
back. See docs/memory.md.
"""

import ml_collections

from configs.enwik8_xl import get_config as xl_config


def get_config() -> ml_collections.ConfigDict:
    config = xl_config()
    config.seq_len = 768
    config.data.settings.seq_len = 768
    config.model.update(mem_len=768, cmem_len=768, cmem_rate=3, cmem_method="conv")
    config.eval_mem_len = None  # the training memory (the compressed memory reaches further)
    return config
