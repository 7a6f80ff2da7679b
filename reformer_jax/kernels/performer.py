"""Performer attention (FAVOR+, Choromanski et al. 2021): softmax attention through random features.

``exp(q . k / sqrt(d)) = E_w[phi(q) . phi(k)]`` with the positive random features

    phi(x) = exp(w_i . x' - |x'|^2 / 2) / sqrt(m),   x' = x / d^(1/4),   w_i ~ N(0, I_d),

so ``softmax(Q K^T / sqrt(d)) V ~ phi(Q) (phi(K)^T V) / phi(Q) (phi(K)^T 1)``: time O(L m d) and
no ``L x L`` array. Causal attention uses prefix sums of ``phi(k) v^T`` (an ``[m, d_v]`` running
state per head), which also makes decoding O(m d) per token.

**Stabilisation.** Each attention output is a ratio ``sum_j phi(q).phi(k_j) v_j / sum_j
phi(q).phi(k_j)`` with ``phi(q).phi(k) = sum_i exp(a_i(q) + a_i(k)) / m`` (``a`` the exponents).
Dividing feature i of every key by ``exp(c_i)`` and multiplying feature i of the query by the same
``exp(c_i)`` leaves each product unchanged, and a positive constant per query row cancels in the
ratio. So the kernel takes ``c_i`` = the maximum of feature i's exponent over the real keys (the
reference takes one maximum over all keys and features, a special case) and subtracts from the
query exponents ``a_i(q) + c_i`` their row maximum. Then no exponential overflows, every key sum
has a term equal to 1, and the query's largest feature meets that term, so the denominator is at
least ``1 / m`` and never underflows to 0 (with one shared maximum, a key far above the others
underflows every other key's features in float32 when activations are large). A per-key
constant would NOT cancel (it reweights the keys). The causal kernel and the decoder cannot see
future keys, so they keep a *running* per-feature maximum and rescale the running sums when it
grows (as online softmax does); within a chunk, the chunk's maximum is used by all its queries
(still exact; the ``1 / m`` floor then holds per chunk boundary, and exactly when decoding). The
shifts are under ``stop_gradient`` (the output does not depend on them). Unlike the reference, no
epsilon is added to the features, so the kernel equals the random-feature formula exactly.

**Redrawing.** ``features`` are an argument, like the LSH rotations: the model draws them per
training step from the step's key (:func:`draw_features`) and uses fixed ones for evaluation and
decoding (the decoder's running state is only valid for the features it was built with).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from reformer_jax.kernels.masking import check_qkv, mask_values, pad_to_multiple, score_dtype


def draw_features(
    key: jax.Array,
    n_features: int,
    d_head: int,
    orthogonal: bool = True,
    *,
    heads: int | None = None,
    dtype: jnp.dtype = jnp.float32,
) -> jax.Array:
    """Draws the random projection ``w``: ``[n_features, d_head]`` (``[heads, ...]`` per head).

    ``orthogonal=True`` (FAVOR+'s orthogonal random features): blocks of ``d_head`` rows are the
    rows of the Q factor of a Gaussian matrix (exactly orthogonal within a block, independent
    across blocks; the last block is truncated), each row rescaled by the norm of an independent
    ``N(0, I_d)`` vector, so every row is marginally ``N(0, I_d)`` (chi-distributed norms, uniform
    directions) while rows of a block are orthogonal, which lowers the estimator's variance.
    ``orthogonal=False``: i.i.d. ``N(0, I_d)`` rows.
    """
    if n_features < 1 or d_head < 1:
        raise ValueError(
            f"draw_features: n_features ({n_features}) and d_head ({d_head}) must be >= 1"
        )
    if heads is not None and heads < 1:
        raise ValueError(f"draw_features: heads must be >= 1 or None, got {heads}")
    lead = () if heads is None else (heads,)
    if not orthogonal:
        return jax.random.normal(key, (*lead, n_features, d_head), dtype)
    n_blocks = -(-n_features // d_head)
    block_key, norm_key = jax.random.split(key)
    gaussian = jax.random.normal(block_key, (*lead, n_blocks, d_head, d_head), jnp.float32)
    q_factor, _ = jnp.linalg.qr(gaussian)
    # Columns of Q are orthonormal: transpose so rows are, then stack the blocks.
    rows = jnp.swapaxes(q_factor, -1, -2).reshape(*lead, n_blocks * d_head, d_head)[
        ..., :n_features, :
    ]
    norms = jnp.linalg.norm(
        jax.random.normal(norm_key, (*lead, n_features, d_head), jnp.float32), axis=-1
    )
    return (rows * norms[..., None]).astype(dtype)


class PerformerState(NamedTuple):
    """Running sums of causal Performer attention after some keys, per batch row and head.

    ``kv``: ``sum_j phi(k_j) v_j^T`` ``[batch, heads, m, d_v]``; ``normaliser``: ``sum_j
    phi(k_j)`` ``[batch, heads, m]``; ``shift``: the running maximum of the key exponents per
    feature ``[batch, heads, m]``; feature i of every ``phi(k_j)`` in the sums is divided by
    ``exp(shift_i)``. Every leaf is batch-first.
    """

    kv: jax.Array
    normaliser: jax.Array
    shift: jax.Array


def _check_features(name: str, features: jax.Array, heads: int, d_head: int) -> None:
    if features.ndim not in (2, 3) or features.shape[-1] != d_head:
        raise ValueError(
            f"{name}: features must be [n_features, d_head] or [heads, n_features, d_head] with "
            f"d_head = {d_head}, got shape {features.shape}"
        )
    if features.ndim == 3 and features.shape[0] != heads:
        raise ValueError(
            f"{name}: features has {features.shape[0]} heads but q/k have {heads}; use "
            "[n_features, d_head] to share them across heads"
        )


def _exponents(x: jax.Array, features: jax.Array) -> jax.Array:
    """``w_i . x' - |x'|^2 / 2`` with ``x' = x / d^(1/4)``: ``[b, h, l, d] -> [b, h, l, m]``."""
    x = x * x.shape[-1] ** -0.25
    if features.ndim == 2:
        projected = jnp.einsum("bhld,md->bhlm", x, features)
    else:
        projected = jnp.einsum("bhld,hmd->bhlm", x, features)
    return projected - 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)


def _query_features(a_q: jax.Array, key_shift: jax.Array) -> jax.Array:
    """phi(q) times ``exp(key_shift)`` per feature and a per-row constant (both cancel).

    ``a_q`` ``[b, h, l, m]`` query exponents, ``key_shift`` ``[b, h, m]`` the per-feature shift
    the key features were divided by. The largest query feature is exactly ``1 / sqrt(m)``.
    """
    a = a_q + key_shift[..., None, :]
    a = a - jax.lax.stop_gradient(jnp.max(a, axis=-1, keepdims=True))
    return jnp.exp(a) / math.sqrt(a.shape[-1])


def _masked_exponents(a: jax.Array, real: jax.Array) -> jax.Array:
    """Key exponents with padded keys at ``-inf`` (their feature is exactly 0, gradient 0)."""
    return jnp.where(real[..., None], a, -jnp.inf)


def _safe_divide(num: jax.Array, den: jax.Array) -> jax.Array:
    # den is 0 only for a query that sees no real key (fully padded row): its output is 0.
    return num / jnp.where(den > 0, den, 1.0)[..., None]


def _noncausal(a_q: jax.Array, a_k: jax.Array, v: jax.Array) -> jax.Array:
    m = a_k.shape[-1]
    shift = jnp.max(a_k, axis=-2)  # [b, h, m]: per feature, over the real keys
    shift = jax.lax.stop_gradient(jnp.where(jnp.isfinite(shift), shift, 0.0))
    phi_q = _query_features(a_q, shift)
    phi_k = jnp.exp(a_k - shift[..., None, :]) / math.sqrt(m)
    kv = jnp.einsum("bhlm,bhld->bhmd", phi_k, v)
    normaliser = jnp.sum(phi_k, axis=2)
    num = jnp.einsum("bhlm,bhmd->bhld", phi_q, kv)
    den = jnp.einsum("bhlm,bhm->bhl", phi_q, normaliser)
    return _safe_divide(num, den)


def _causal_chunk(
    state: PerformerState, a_q: jax.Array, a_k: jax.Array, v: jax.Array
) -> tuple[jax.Array, PerformerState]:
    """One causal chunk: exponents ``a_q, a_k`` ``[b, h, c, m]``, ``v`` ``[b, h, c, d_v]``.

    Keys of earlier chunks come through the running sums; within the chunk an exact masked
    ``c x c`` quadratic form ``tril(phi(Q) phi(K)^T)``. Padded keys have ``a_k = -inf``.
    """
    m = a_k.shape[-1]
    shift = jax.lax.stop_gradient(jnp.maximum(state.shift, jnp.max(a_k, axis=-2)))
    # Before the first real key shift stays at the initial floor: rescale by 1 (sums are 0).
    rescale = jnp.exp(state.shift - shift)
    kv = state.kv * rescale[..., None]
    normaliser = state.normaliser * rescale
    phi_k = jnp.exp(a_k - shift[..., None, :]) / math.sqrt(m)
    phi_q = _query_features(a_q, shift)
    c = a_k.shape[2]
    lower = jnp.arange(c)[:, None] >= jnp.arange(c)[None, :]
    within = jnp.where(lower, jnp.einsum("bhqm,bhkm->bhqk", phi_q, phi_k), 0.0)
    num = jnp.einsum("bhqm,bhmd->bhqd", phi_q, kv) + jnp.einsum("bhqk,bhkd->bhqd", within, v)
    den = jnp.einsum("bhqm,bhm->bhq", phi_q, normaliser) + jnp.sum(within, axis=-1)
    kv = kv + jnp.einsum("bhkm,bhkd->bhmd", phi_k, v)
    normaliser = normaliser + jnp.sum(phi_k, axis=2)
    return _safe_divide(num, den), PerformerState(kv, normaliser, shift)


def performer_decode_init(
    batch: int, heads: int, n_features: int, d_v: int, dtype: jnp.dtype = jnp.float32
) -> PerformerState:
    """The empty running state (no key seen yet). Keep it float32 for bfloat16 models."""
    floor, _ = mask_values(dtype)
    return PerformerState(
        kv=jnp.zeros((batch, heads, n_features, d_v), dtype),
        normaliser=jnp.zeros((batch, heads, n_features), dtype),
        # A finite floor, not -inf: exp(floor - floor) = 1 while no real key has been seen.
        shift=jnp.full((batch, heads, n_features), floor, dtype),
    )


def _check_mask(name: str, mask: jax.Array | None, batch: int, length: int) -> jax.Array:
    if mask is None:
        return jnp.ones((batch, length), bool)
    if mask.shape != (batch, length):
        raise ValueError(
            f"{name}: mask must be [batch, len_k] = {(batch, length)}, got {mask.shape}"
        )
    return mask.astype(bool)


def _causal(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    features: jax.Array,
    real: jax.Array,
    chunk_len: int,
    state: PerformerState,
) -> tuple[jax.Array, PerformerState]:
    length = q.shape[2]
    chunk_len = min(chunk_len, length)
    a_q = _exponents(q, features)
    a_k = _masked_exponents(_exponents(k, features), real[:, None, :])
    # Padding to a multiple of the chunk: padded keys are -inf (feature 0), padded queries dropped.
    a_q = pad_to_multiple(a_q, chunk_len, axis=2)
    a_k = pad_to_multiple(a_k, chunk_len, axis=2, value=-jnp.inf)
    v = pad_to_multiple(v, chunk_len, axis=2)

    def chunks(x: jax.Array) -> jax.Array:  # [b, h, n * c, ...] -> [n, b, h, c, ...]
        b, h, padded = x.shape[:3]
        x = x.reshape(b, h, padded // chunk_len, chunk_len, *x.shape[3:])
        return jnp.moveaxis(x, 2, 0)

    def step(carry: PerformerState, xs: tuple) -> tuple[PerformerState, jax.Array]:
        out, carry = _causal_chunk(carry, *xs)
        return carry, out

    state, out = jax.lax.scan(step, state, (chunks(a_q), chunks(a_k), chunks(v)))
    out = jnp.moveaxis(out, 0, 2).reshape(*q.shape[:2], -1, v.shape[-1])
    return out[:, :, :length], state


def _prepare(name, q, k, v, features, mask):
    check_qkv(name, q, k, v)
    _check_features(name, features, k.shape[1], k.shape[-1])
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"{name}: q and k d_head differ: {q.shape} vs {k.shape}")
    if v.shape[2] != k.shape[2]:
        raise ValueError(f"{name}: k and v lengths differ: {k.shape} vs {v.shape}")
    real = _check_mask(name, mask, k.shape[0], k.shape[2])
    dtype = score_dtype(q.dtype)
    return q.astype(dtype), k.astype(dtype), v.astype(dtype), features.astype(dtype), real


def performer_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    features: jax.Array,
    *,
    causal: bool = False,
    mask: jax.Array | None = None,
    chunk_len: int = 64,
) -> jax.Array:
    """FAVOR+ attention with positive random features (see the module docstring).

    Args:
      q: queries ``[batch, heads, len_q, d_head]``.
      k: keys ``[batch, heads, len_k, d_head]``.
      v: values ``[batch, heads, len_k, d_v]``.
      features: the random projection ``[m, d_head]`` shared across heads, or
        ``[heads, m, d_head]`` (from :func:`draw_features`). More features, lower error.
      causal: query i attends to keys j <= i (positions aligned at 0; needs len_q == len_k).
        Computed chunk by chunk: a scan carries the ``[m, d_v]`` and ``[m]`` prefix sums and each
        chunk adds its exact masked ``chunk_len x chunk_len`` quadratic form, so memory is
        O(L (m + chunk_len)) for any length (padded internally to a multiple of the chunk).
      mask: ``[batch, len_k]`` bool, True for real tokens; padded keys contribute nothing (a
        query with no real key gets 0).
      chunk_len: the causal chunk length (ignored when ``causal=False``).

    Returns:
      ``[batch, heads, len_q, d_v]`` in ``v.dtype``; features, sums and the ratio are computed in
      float32 (float64 for float64 inputs).
    """
    name = "performer_attention"
    if chunk_len < 1:
        raise ValueError(f"{name}: chunk_len must be >= 1, got {chunk_len}")
    out_dtype = v.dtype
    q, k, v, features, real = _prepare(name, q, k, v, features, mask)
    if not causal:
        a_k = _masked_exponents(_exponents(k, features), real[:, None, :])
        return _noncausal(_exponents(q, features), a_k, v).astype(out_dtype)
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"{name}: causal needs len_q == len_k, got {q.shape} and {k.shape}")
    b, h = q.shape[:2]
    state = performer_decode_init(b, h, features.shape[-2], v.shape[-1], q.dtype)
    out, _ = _causal(q, k, v, features, real, chunk_len, state)
    return out.astype(out_dtype)


def performer_prefill(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    features: jax.Array,
    *,
    mask: jax.Array | None = None,
    chunk_len: int = 64,
) -> tuple[jax.Array, PerformerState]:
    """Causal attention over a prompt and the running state after it (to continue decoding).

    Same arguments as :func:`performer_attention` with ``causal=True``. Padded prompt tokens
    (``mask`` False, e.g. left padding) are left out of the state. The state is in the score
    dtype (float32 for bfloat16 inputs).
    """
    name = "performer_prefill"
    if chunk_len < 1:
        raise ValueError(f"{name}: chunk_len must be >= 1, got {chunk_len}")
    out_dtype = v.dtype
    q, k, v, features, real = _prepare(name, q, k, v, features, mask)
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"{name}: needs len_q == len_k, got {q.shape} and {k.shape}")
    b, h = q.shape[:2]
    state = performer_decode_init(b, h, features.shape[-2], v.shape[-1], q.dtype)
    out, state = _causal(q, k, v, features, real, chunk_len, state)
    return out.astype(out_dtype), state


def performer_decode_step(
    state: PerformerState,
    q_t: jax.Array,
    k_t: jax.Array,
    v_t: jax.Array,
    features: jax.Array,
    *,
    mask_t: jax.Array | None = None,
) -> tuple[jax.Array, PerformerState]:
    """One decoding step: adds key/value ``t`` to the running sums, then attends with ``q_t``.

    Args:
      state: from :func:`performer_decode_init`, :func:`performer_prefill` or a previous step.
      q_t, k_t: ``[batch, heads, 1, d_head]``; v_t: ``[batch, heads, 1, d_v]``.
      features: the same features the state was built with.
      mask_t: optional ``[batch]`` bool, False leaves that row's state unchanged (padding).

    Returns:
      ``(out_t [batch, heads, 1, d_v] in v_t.dtype, new state)`` (the state keeps its dtype;
      the step computes in float32, float64 for float64 inputs); O(m d) time and memory.
      Stepping over a sequence equals ``performer_attention(..., causal=True)``.
    """
    name = "performer_decode_step"
    if q_t.ndim != 4 or q_t.shape[2] != 1:
        raise ValueError(f"{name}: q_t must be [batch, heads, 1, d_head], got {q_t.shape}")
    if state.kv.shape[-2] != features.shape[-2] or state.kv.shape[-1] != v_t.shape[-1]:
        raise ValueError(
            f"{name}: state [.., m, d_v] = {state.kv.shape} does not match features "
            f"{features.shape} / v_t {v_t.shape}"
        )
    mask = None if mask_t is None else mask_t[:, None]
    q, k, v, features, real = _prepare(name, q_t, k_t, v_t, features, mask)
    a_k = _masked_exponents(_exponents(k, features), real[:, None, :])
    computed = jax.tree.map(lambda x: x.astype(q.dtype), state)
    out, computed = _causal_chunk(computed, _exponents(q, features), a_k, v)
    # The state keeps its dtype, so it can be the carry of a scan or while_loop.
    new_state = jax.tree.map(lambda new, old: new.astype(old.dtype), computed, state)
    return out.astype(v_t.dtype), new_state
