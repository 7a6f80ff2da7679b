import numpy as np
from flax import nnx

from reformer_jax.config import ReformerConfig
from reformer_jax.layers.embeddings import PositionalEmbedding, sinusoidal_positions


def test_axial_positions_concatenate_per_axis_rows():
    cfg = ReformerConfig(d_model=12, axial_shape=(3, 5), axial_dims=(4, 8))
    emb = PositionalEmbedding(cfg, rngs=nnx.Rngs(0))
    table0, table1 = (np.asarray(t[...]) for t in emb.axes)
    out = np.asarray(emb(15))
    for j in range(15):
        np.testing.assert_array_equal(out[j], np.concatenate([table0[j // 5], table1[j % 5]]))
    # Shorter sequences use the first positions of the grid (no resizing).
    np.testing.assert_array_equal(np.asarray(emb(7)), out[:7])


def test_three_axes_raster_order():
    cfg = ReformerConfig(d_model=6, axial_shape=(2, 3, 4), axial_dims=(1, 2, 3))
    emb = PositionalEmbedding(cfg, rngs=nnx.Rngs(1))
    t = [np.asarray(a[...]) for a in emb.axes]
    out = np.asarray(emb(24))
    j = 17  # (1, 1, 1) in a (2, 3, 4) grid
    np.testing.assert_array_equal(out[j], np.concatenate([t[0][1], t[1][1], t[2][1]]))


def test_learned_and_sinusoidal():
    cfg = ReformerConfig(d_model=8, pos_embedding="learned", max_len=10)
    emb = PositionalEmbedding(cfg, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(np.asarray(emb(4)), np.asarray(emb.table[...][:4]))
    s = np.asarray(sinusoidal_positions(5, 8))
    np.testing.assert_allclose(s[3, 0], np.sin(3.0), rtol=1e-6)
    np.testing.assert_allclose(s[3, 1], np.cos(3.0), rtol=1e-6)
