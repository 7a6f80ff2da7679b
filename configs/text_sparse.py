"""Byte-level LM on a local text corpus with sparse-pattern attention (BigBird by default).

The text task of ``configs/text.py`` with its LSH layers replaced by a sparse pattern, so the
families compare like for like (same model, data, steps). Another pattern is one override:
``--config.model.sparse_pattern=longformer`` (``star``, ``strided``, ``fixed``), with its
``sparse_*`` fields (see ``reformer_jax/config.py``).

``python train.py --config configs/text_sparse.py --config.data.settings.path=corpus.txt``
"""

import ml_collections

from configs import text


def get_config() -> ml_collections.ConfigDict:
    config = text.get_config()
    config.model.attention_pattern = ["local", "sparse"]
    # BigBird ITC at 1024 tokens: blocks of 64, 3 window + 2 global + 3 random blocks per query
    # block (8 of 16 blocks: half the keys; the paper's setting at 4K would be an eighth).
    config.model.sparse_pattern = "bigbird"
    config.model.sparse_block_len = 64
    config.model.sparse_window_blocks = 3
    config.model.sparse_global_blocks = 2
    config.model.sparse_random_blocks = 3
    config.model.sparse_seed = 0
    return config
