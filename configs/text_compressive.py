"""A small Compressive Transformer on any local text: configs/text_xl.py plus a compressed memory.

Segments of 128 bytes, memory 64 and compressed memory 64 at rate 2 (a 1-D convolution, the
attention-reconstruction loss trains it): the same budget of 128 attended states as
configs/text_xl.py's memory, reaching 64 + 2 * 64 = 192 states back. See docs/memory.md.
"""

import ml_collections

from configs.text_xl import get_config as xl_config


def get_config() -> ml_collections.ConfigDict:
    config = xl_config()
    config.model.update(mem_len=64, cmem_len=64, cmem_rate=2, cmem_method="conv")
    config.eval_mem_len = None
    return config
