"""Sampling with a memory across segments: exact against the model run on the whole sequence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from reformer_jax.config import ReformerConfig
from reformer_jax.decoding import generate
from reformer_jax.decoding.memory import generate_with_memory
from reformer_jax.model import ReformerLM

XL = dict(
    vocab_size=11,
    d_model=8,
    d_ff=16,
    n_layers=2,
    n_heads=2,
    d_head=4,
    attention_pattern=("relative",),
    residual="standard",
    pos_embedding="none",
)


def _greedy_reference(model, prompts, n):
    tokens = jnp.asarray(prompts)
    for _ in range(n):
        nxt = jnp.argmax(model(tokens)[:, -1], axis=-1).astype(jnp.int32)
        tokens = jnp.concatenate([tokens, nxt[:, None]], axis=1)
    return tokens


@pytest.mark.slow
@pytest.mark.parametrize("prompt_len", [3, 8])
def test_greedy_sample_with_full_memory_equals_the_whole_sequence(x64, prompt_len):
    """Catches a sample whose memory advances at the wrong token, a segment cache that drops
    or repeats tokens at a segment boundary, logits read at the wrong position, and a prompt
    whose complete segments never reach the memory: greedy tokens over several segments (the
    memory holds everything) equal greedy decoding with the whole sequence re-run each time."""
    cfg = ReformerConfig(**XL, mem_len=4, dtype="float64", param_dtype="float64")
    model = ReformerLM(cfg, rngs=nnx.Rngs(0))
    prompts = jax.random.randint(jax.random.key(2), (2, prompt_len), 0, 11)
    want = _greedy_reference(model, prompts, 9)
    got = generate_with_memory(model, prompts, max_new_tokens=9, mem_len=32, greedy=True)
    np.testing.assert_array_equal(got, want)
    if prompt_len == 3:  # the generic entry point routes memory models here
        routed = generate(model, prompts, max_new_tokens=9, greedy=True, mem_len=32)
        np.testing.assert_array_equal(routed, want)


def test_samples_continue_past_the_memory_with_compression():
    """Catches a sampler limited to one segment (or to the memory): a compressive model samples
    many segments past its memory, reproducibly per key, with the stop token honoured."""
    cfg = ReformerConfig(**XL, mem_len=4, cmem_len=2, cmem_rate=2)
    model = ReformerLM(cfg, rngs=nnx.Rngs(0))
    prompts = jnp.zeros((2, 3), jnp.int32)
    a = generate_with_memory(model, prompts, max_new_tokens=20, key=jax.random.key(5))
    b = generate_with_memory(model, prompts, max_new_tokens=20, key=jax.random.key(5))
    assert a.shape == (2, 23) and bool((a == b).all()) and bool((a < 11).all())
    stop = int(a[0, 5])
    stopped = generate_with_memory(
        model, prompts, max_new_tokens=20, key=jax.random.key(5), stop_token=stop, pad_token=0
    )
    first = int(np.argmax(np.asarray(stopped[0, 3:]) == stop)) + 3
    assert (np.asarray(stopped[0, first + 1 :]) == 0).all()
    with pytest.raises(ValueError, match="not a multiple of model.cmem_rate"):
        generate_with_memory(model, prompts, max_new_tokens=2, segment_len=3)
