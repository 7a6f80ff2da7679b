"""Byte-level LM on a local text corpus with Performer (FAVOR+) attention.

The text task of ``configs/text.py`` with its LSH layers replaced by Performer layers (causal
through prefix sums). Features are redrawn every training step from the step's key and fixed
for evaluation and sampling, exactly like the LSH rotations.

``python train.py --config configs/text_performer.py --config.data.settings.path=corpus.txt``
"""

import ml_collections

from configs import text


def get_config() -> ml_collections.ConfigDict:
    config = text.get_config()
    config.model.attention_pattern = ["local", "performer"]
    config.model.performer_n_features = 128  # m = 2 d_head: error within a few % (FAVOR+ paper)
    config.model.performer_orthogonal = True
    config.model.performer_chunk_len = 64
    return config
