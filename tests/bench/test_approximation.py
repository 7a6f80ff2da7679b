"""bench/approximation.py: the captured activations are the model's, exact settings give zero
error, and a tiny end-to-end run writes every family's errors."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from bench import ablations
from bench import approximation as approx
from bench.attention import Series
from reformer_jax.config import ReformerConfig
from reformer_jax.model import ReformerLM


def _model(residual: str) -> ReformerLM:
    cfg = ReformerConfig(
        d_model=32,
        d_ff=64,
        n_layers=2,
        n_heads=2,
        d_head=16,
        attention_pattern=("full",),
        pos_embedding="learned",
        max_len=32,
        residual=residual,
    )
    return ReformerLM(cfg, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("residual", ["reversible", "standard"])
def test_capture_follows_the_models_own_forward_pass(residual):
    """Catches a capture that runs the layers differently from the model (wrong stream, a
    missing feed-forward, the wrong residual rule): its logits must equal the model's, and the
    first layer's queries must be the projection of the embedded input."""
    model = _model(residual)
    tokens = jax.random.randint(jax.random.key(1), (2, 24), 0, 256)
    (q, k, v), logits = approx.capture_qkv(model, tokens, layer=0)
    np.testing.assert_allclose(logits, model(tokens), rtol=1e-4, atol=1e-4)
    x = model.embed(tokens) + model.positions(24)[None]
    attention = approx._layer(model.blocks[0].attention, 0)
    q0, k0, v0 = attention.project(attention.norm(x))
    for got, want in ((q, q0), (k, k0), (v, v0)):
        assert got.shape == (2, 2, 24, 16)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    (q1, _, _), _ = approx.capture_qkv(model, tokens, layer=1)
    assert not np.allclose(q1, q)  # another layer, other activations
    with pytest.raises(ValueError, match="layer 2"):
        approx.capture_qkv(model, tokens, layer=2)


def _qkv(length=32, heads=2, d_head=8):
    keys = jax.random.split(jax.random.key(0), 3)
    return tuple(3 * jax.random.normal(k, (2, heads, length, d_head)) for k in keys)


@pytest.mark.parametrize("causal", [True, False])
def test_settings_that_cover_every_key_are_exact(causal):
    """Catches a reference in the wrong masking mode (causal against bidirectional), or a
    setting measured with the wrong config: windows spanning the whole sequence must give zero
    error, a short window a clearly non-zero one."""
    q, k, v = _qkv()
    covering = [
        Series("local", "local", (("local_chunk_len", 32), ("local_chunks_after", 1))),
        Series("longformer", "sparse", (("sparse_pattern", "longformer"), ("sparse_window", 32))),
        Series("strided", "sparse", (("sparse_pattern", "strided"), ("sparse_block_len", 32))),
    ]
    for series in covering:
        series = Series(series.name, series.kind, series.settings, causal=causal)
        assert approx.setting_errors(series, q, k, v, n_draws=1) == [pytest.approx(0, abs=1e-5)]
    short = Series("local", "local", (("local_chunk_len", 4),), causal=causal)
    assert approx.setting_errors(short, q, k, v, n_draws=1)[0] > 0.05


def test_lsh_is_measured_against_exact_shared_qk_attention():
    """Catches LSH compared with separate-QK full attention (an error that no hash count could
    remove): with one bucket-spanning chunk LSH attends to every key, so it equals the exact
    shared-QK reference, and more hash rounds never get worse on average."""
    q, k, v = _qkv()
    whole = Series(
        "lsh", "lsh", (("lsh_chunk_len", 32), ("lsh_n_buckets", 2), ("lsh_chunks_before", 0))
    )
    # 2 buckets, one 32-token chunk: every key is in the query's chunk, bucket or not.
    errors = approx.setting_errors(whole, q, k, v, n_draws=2)
    assert max(errors) < 1e-5


def test_performer_error_falls_with_more_features():
    """Catches features that are not used (or redrawn per call of the same setting): the mean
    error over draws must fall from 8 to 256 features."""
    q, k, v = (x / 6 for x in _qkv())  # unit-scale scores, where FAVOR+ has low variance
    few = Series("p", "performer", (("performer_n_features", 8),), causal=False)
    many = Series("p", "performer", (("performer_n_features", 256),), causal=False)
    e_few = np.mean(approx.setting_errors(few, q, k, v, n_draws=3))
    e_many = np.mean(approx.setting_errors(many, q, k, v, n_draws=3))
    assert e_many < 0.5 * e_few


def test_markdown_table_lists_both_modes():
    payload = {
        "settings": {"lengths": [64]},
        "results": [
            {"family": "linformer", "setting": "k 8", "bidirectional": {"64": {"mean": 0.5}}},
            {
                "family": "local",
                "setting": "chunk 8",
                "causal": {"64": {"mean": 0.25, "std": 0.0}},
                "bidirectional": {"64": {"mean": 0.125, "std": 0.01}},
            },
        ],
    }
    table = approx.markdown_table(payload).splitlines()
    assert table[0] == "| family | setting | causal 64 | bidir. 64 |"
    assert table[2] == "| linformer | k 8 | - | 0.500 |"
    assert table[3] == "| local | chunk 8 | 0.250 | 0.125 ± 0.010 |"


@pytest.mark.slow
def test_tiny_end_to_end_run(tmp_path):
    """Catches a broken pipeline (training, reuse of the trained model, capture on held-out
    windows, JSON): every family appears, Linformer only bidirectional."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(ablations.pydoc_topics_text()[:20000])
    out = tmp_path / "approximation.json"
    args = [
        "--workdir", str(tmp_path / "run"), "--out", str(out), "--corpus", str(corpus),
        "--steps", "2", "--eval-every", "2", "--batch", "2", "--layers", "1",
        "--d-model", "16", "--d-ff", "32", "--heads", "2", "--warmup", "0",
        "--lengths", "32", "--windows", "2", "--draws", "2", "--local-chunks", "8",
        "--lsh-chunk", "8", "--hashes", "1", "--bigbird-blocks", "8",
        "--longformer-windows", "4", "--strides", "8", "--fixed", "8:2",
        "--linformer-ks", "8", "--features", "16", "--eval-fraction", "0.2",
    ]  # fmt: skip
    assert approx.main(args) == 0
    payload = json.loads(out.read_text())
    families = [r["family"] for r in payload["results"]]
    assert families == [
        "local", "lsh", "star", "bigbird", "longformer", "strided", "fixed", "linformer",
        "performer",
    ]  # fmt: skip
    for row in payload["results"]:
        assert ("causal" in row) == (row["family"] != "linformer")
        for mode in ("causal", "bidirectional"):
            for entry in (row.get(mode) or {}).values():
                assert 0 <= entry["mean"] < 10 and np.isfinite(entry["mean"])
    assert payload["results"][1]["causal"]["32"]["draws"] == 2
    mtime = (tmp_path / "run" / "model" / "metrics.jsonl").stat().st_mtime
    assert approx.main(args) == 0  # reuses the trained model
    assert (tmp_path / "run" / "model" / "metrics.jsonl").stat().st_mtime == mtime
