"""Compiled memory of value-and-grad grows linearly in length (no L x L term).

``memory_analysis()`` of a compiled executable is deterministic on CPU, so these are exact
assertions, not timings.
"""

import jax
import jax.numpy as jnp
import pytest

from reformer_jax.kernels import (
    auto_n_buckets,
    draw_rotations,
    full_attention,
    local_attention,
    lsh_attention,
)

HEADS, D_HEAD, CHUNK = 2, 32, 64


def _temp_bytes(kind: str, length: int) -> int:
    qk = jax.ShapeDtypeStruct((1, HEADS, length, D_HEAD), jnp.float32)
    n_buckets = auto_n_buckets(length, CHUNK)
    rot = draw_rotations(jax.random.key(0), HEADS, D_HEAD, 2, n_buckets)

    def loss(qk, v):
        if kind == "lsh":
            out = lsh_attention(qk, v, rot, n_buckets=n_buckets, chunk_len=CHUNK, causal=True)
        elif kind == "local":
            out = local_attention(qk, qk, v, chunk_len=CHUNK, causal=True)
        else:
            out = full_attention(qk, qk, v, causal=True)
        return jnp.sum(out * out)

    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(qk, qk).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("kind", ["lsh", "local"])
def test_temp_memory_is_linear_in_length(kind):
    # 2K and 8K: below ~2K XLA picks other fusions for small arrays, which is not a length term.
    small, large = _temp_bytes(kind, 2048), _temp_bytes(kind, 8192)
    # Not a precision bound: 4x the length gives 4x the bytes when memory is linear (plus
    # fusion slack), 16x when an L x L array survives; 4.5 separates the two.
    assert large <= 4.5 * small, (kind, small, large)


def test_full_attention_is_quadratic_so_the_check_can_fail():
    small, large = _temp_bytes("full", 512), _temp_bytes("full", 2048)
    assert large > 8 * small, (small, large)


@pytest.mark.parametrize(("kind", "bound"), [("lsh", 28), ("local", 8)])
def test_scores_of_a_whole_sequence_are_never_materialised(kind, bound):
    # One float32 score array of the whole sequence is (rounds x) window / d_head = 4x (local)
    # or 8x (LSH, 2 rounds) the size of q here; the kernels that held every chunk's scores at
    # once needed 18x (local) and 47x (LSH) q in temporaries. The blocked window kernel keeps
    # one block of chunks alive: what remains is O(length) copies (sorted q/k/v, outputs, halos).
    length = 8192
    q_bytes = HEADS * length * D_HEAD * 4
    assert _temp_bytes(kind, length) <= bound * q_bytes
