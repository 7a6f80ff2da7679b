"""Fixed sparse attention patterns (Star, BigBird, Longformer, Sparse Transformer), blocked.

A :class:`SparsePattern` is a static, hashable description of which keys each query may attend
to; :func:`sparse_attention` computes softmax attention restricted to it without ever forming a
``length x length`` array. The sequence is cut into blocks of ``block_len`` (padded internally
to a whole number of blocks) and every query block gathers, with static index arrays:

1. *key blocks*: the window blocks around it (and BigBird's random blocks), with a per-entry
   rule (a token window ``|i - j| <= w``, a dilation) selecting the allowed entries;
2. *global keys*: positions every query sees (Star's token 0, BigBird's first and last blocks,
   Longformer's global tokens, the Sparse Transformer's "fixed" summary positions);
3. *columns* (strided pattern only, ``block_len = stride``): the key at the same offset in every
   block, i.e. every ``j`` with ``(i - j) mod stride == 0``.

The three key sets are disjoint (a key block never counts a global key, columns skip ``j = i``),
so one softmax over their concatenation is exactly the softmax over the pattern's keys. Global
*queries* (rows that attend to every key) are recomputed by a separate pass that is dense over
keys only: ``O(n_global x length)``. Cost per query: ``(key blocks) x block_len + n_global``
keys (+ ``length / stride`` for the strided pattern and ``c x length / block_len`` for the fixed
one, whose key counts grow with the length by definition).

``pattern.dense_mask(length, n_heads)`` is the ``[heads or 1, length, length]`` boolean mask the
kernel computes (built from the same plan, for tests and pictures), and
``pattern.key_positions(length, n_heads)`` lists, for each query, the key positions it attends
to (what a decoder gathers from its K/V cache).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from reformer_jax.kernels.masking import (
    check_qkv,
    dropout,
    mask_values,
    pad_to_multiple,
    score_dtype,
)

KINDS = ("star", "bigbird", "longformer", "strided", "fixed")


class SparsePlan(NamedTuple):
    """The static gather plan of a pattern at one length (NumPy, computed at trace time).

    Attributes:
      block_len: tokens per block; the kernel pads the length to ``n_blocks * block_len``.
      n_blocks: ``ceil(length / block_len)``.
      key_blocks: int32 ``[heads or 1, n_blocks, n_key_blocks]``: the key blocks each query block
        gathers (-1 = none); distinct within a row and never a block of global keys only.
      global_keys: int32 ``[n_global_keys]``: sorted positions (< length) seen by every query.
      global_queries: int32 ``[n_global_queries]``: sorted positions (< length) attending to all.
      columns: the strided pattern's same-offset keys (``block_len == stride``).
    """

    block_len: int
    n_blocks: int
    key_blocks: np.ndarray
    global_keys: np.ndarray
    global_queries: np.ndarray
    columns: bool


class KeyPositions(NamedTuple):
    """For every query, the keys it attends to: what a decoder gathers from its K/V cache.

    Attributes:
      index: int32 ``[heads or 1, length, max_keys]`` key positions (valid entries first, in
        increasing order; invalid entries are 0).
      valid: bool, same shape: True for a key the query attends to.
      attends_all: bool ``[length]``: global queries, which attend to every key (``j <= i`` when
        causal); their ``index`` rows are empty, the decoder attends over its whole cache.
    """

    index: np.ndarray
    valid: np.ndarray
    attends_all: np.ndarray


@dataclasses.dataclass(frozen=True)
class SparsePattern:
    """A static sparse attention pattern (hashable; build it with the ``*_pattern`` functions).

    Fields (unused ones keep their defaults for a given ``kind``):
      kind: one of ``star``, ``bigbird``, ``longformer``, ``strided``, ``fixed``.
      block_len: tokens per block of the blocked kernel (for ``strided`` the stride, for ``fixed``
        the pattern's block ``l``, for ``bigbird`` the pattern's block ``b``; for ``star`` and
        ``longformer`` only a cost knob that never changes the result).
      window: token window each side (``star``: 1, ``longformer``: its window, ``strided``:
        stride - 1); ``|i - j| <= window * dilation``.
      dilation: keeps window keys with ``(i - j) % dilation == 0`` (longformer).
      global_positions: positions that attend to all keys and are seen by all (star: ``(0,)``).
      n_window_blocks, n_global_blocks, n_random_blocks, seed: BigBird's block plan.
      summary_len: the Sparse Transformer's ``c`` (fixed): the last ``c`` positions of every block
        are seen by all queries.
    """

    kind: str
    block_len: int
    window: int = 0
    dilation: int = 1
    global_positions: tuple[int, ...] = ()
    n_window_blocks: int = 0
    n_global_blocks: int = 0
    n_random_blocks: int = 0
    seed: int = 0
    summary_len: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"SparsePattern.kind: unknown {self.kind!r}; use one of {KINDS}")
        _check_int("block_len", self.block_len, 1)
        _check_int("window", self.window, 0)
        _check_int("dilation", self.dilation, 1)
        _check_int("n_window_blocks", self.n_window_blocks, 0)
        _check_int("n_global_blocks", self.n_global_blocks, 0)
        _check_int("n_random_blocks", self.n_random_blocks, 0)
        _check_int("summary_len", self.summary_len, 0)
        if self.kind == "bigbird" and self.n_window_blocks % 2 == 0:
            raise ValueError(
                f"n_window_blocks: must be odd (the block itself and as many on each side), "
                f"got {self.n_window_blocks}"
            )
        if self.kind == "fixed" and not 1 <= self.summary_len <= self.block_len:
            raise ValueError(
                f"c: must be in [1, block_len={self.block_len}], got {self.summary_len}"
            )
        for p in self.global_positions:
            _check_int("global_positions", p, 0)
        if tuple(sorted(set(self.global_positions))) != self.global_positions:
            object.__setattr__(self, "global_positions", tuple(sorted(set(self.global_positions))))

    @property
    def per_head(self) -> bool:
        """True when heads have different plans (BigBird's random blocks)."""
        return self.kind == "bigbird" and self.n_random_blocks > 0

    def plan(self, length: int, n_heads: int = 1) -> SparsePlan:
        """The static gather plan at ``length`` (``n_heads`` plans when :attr:`per_head`)."""
        _check_int("length", length, 1)
        _check_int("n_heads", n_heads, 1)
        for p in self.global_positions:
            if p >= length:
                raise ValueError(
                    f"global_positions: position {p} is out of range for length {length}; "
                    f"use positions < {length}"
                )
        return _plan(self, length, n_heads if self.per_head else 1)

    def key_positions(self, length: int, n_heads: int = 1, causal: bool = True) -> KeyPositions:
        """Per query, the key positions it attends to (``j <= i`` when ``causal``)."""
        plan = self.plan(length, n_heads)
        index, valid = _plan_keys(self, plan, length)
        row = np.arange(length)[None, :, None]
        if causal:
            valid = valid & (index <= row)
        attends_all = np.zeros(length, bool)
        attends_all[plan.global_queries] = True
        valid = valid & ~attends_all[None, :, None]
        # Valid keys first, in increasing position, then trim to the longest row.
        order = np.argsort(np.where(valid, index, length + index), axis=-1, kind="stable")
        index = np.take_along_axis(index, order, -1)
        valid = np.take_along_axis(valid, order, -1)
        max_keys = int(valid.sum(-1).max(initial=0))
        index, valid = index[..., :max_keys], valid[..., :max_keys]
        return KeyPositions(np.where(valid, index, 0).astype(np.int32), valid, attends_all)

    def key_positions_at(
        self, length: int, position: jax.Array | int, n_heads: int = 1
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The keys causal query ``position`` attends to, in JAX (``position`` may be traced).

        The decoding step's primitive: ``O(keys per query)`` work and memory, whatever the
        length (``key_positions`` builds every row at once, ``O(length x max_keys)``).

        Args:
          length: the sequence's total length (the plan, e.g. BigBird's last block and random
            blocks, depends on it: decode with the length the kernel would see).
          position: int scalar, the query's position (< length).
          n_heads: heads (plans differ per head when :attr:`per_head`).

        Returns:
          ``(index [heads or 1, n_keys] int32, valid [heads or 1, n_keys] bool, attends_all
          bool scalar)``: ``n_keys`` is static; invalid entries (index 0) are not attended to;
          when ``attends_all`` the query is a global one and attends to every key ``<= position``
          (``index`` then lists nothing valid).
        """
        plan = self.plan(length, n_heads)
        bl, nb = plan.block_len, plan.n_blocks
        position = jnp.asarray(position, jnp.int32)
        block = position // bl
        is_global_key = np.zeros(nb * bl, bool)
        is_global_key[plan.global_keys] = True
        blocks = jnp.asarray(plan.key_blocks)[:, block]  # [heads, nk]
        has = blocks >= 0
        k_pos = (jnp.where(has, blocks, 0)[:, :, None] * bl + jnp.arange(bl)).reshape(
            blocks.shape[0], -1
        )
        ok = jnp.repeat(has, bl, axis=-1) & ~jnp.asarray(is_global_key)[k_pos]
        rule = self._rule(position, k_pos)
        if rule is not None:
            ok = ok & rule
        index, valid = [k_pos], [ok]
        heads = blocks.shape[0]
        if plan.global_keys.size:
            gk = jnp.broadcast_to(jnp.asarray(plan.global_keys), (heads, plan.global_keys.size))
            index.append(gk)
            valid.append(jnp.ones(gk.shape, bool))
        if plan.columns:
            col = jnp.arange(nb, dtype=jnp.int32) * bl + position % bl
            col = jnp.broadcast_to(col, (heads, nb))
            index.append(col)
            valid.append((col != position) & ~jnp.asarray(is_global_key)[col])
        index = jnp.concatenate(index, -1).astype(jnp.int32)
        attends_all = jnp.isin(position, jnp.asarray(plan.global_queries))
        valid = jnp.concatenate(valid, -1) & (index <= position) & ~attends_all
        return jnp.where(valid, index, 0), valid, attends_all

    def dense_mask(self, length: int, n_heads: int = 1) -> np.ndarray:
        """The boolean ``[n_heads if per_head else 1, length, length]`` mask the kernel computes.

        For tests and pictures only (it is ``length x length``); the kernel never forms it.
        """
        keys = self.key_positions(length, n_heads, causal=False)
        heads = keys.index.shape[0]
        allowed = np.zeros((heads, length, length), bool)
        h, i, slot = np.nonzero(keys.valid)
        allowed[h, i, keys.index[h, i, slot]] = True
        allowed[:, keys.attends_all, :] = True
        return allowed

    def _rule(self, q_pos, k_pos):
        """Allowed entries inside the gathered key blocks (NumPy or JAX integer arrays)."""
        if self.kind in ("star", "longformer", "strided"):
            offset = q_pos - k_pos
            ok = abs(offset) <= self.window * self.dilation
            if self.dilation > 1:
                ok = ok & (offset % self.dilation == 0)
            return ok
        return None  # bigbird / fixed: whole blocks


def _check_int(name: str, value: int, minimum: int) -> None:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}: must be an integer >= {minimum}, got {value!r}")


# ----------------------------------------------------------------------------------------------
# Constructors.


def star_pattern(block_len: int = 16) -> SparsePattern:
    """Star-Transformer: token 0 attends to and is seen by all; every other token i attends to
    ``i - 1, i, i + 1`` (no wrap-around) and token 0.

    Differs from Guo et al. (2019): the relay is the sequence's own token 0 (e.g. a CLS token)
    rather than an extra node initialised to the mean embedding, and the satellites' extra key
    "own input embedding" is not added (keys are the layer's input like every other kernel).
    """
    return SparsePattern("star", block_len=block_len, window=1, global_positions=(0,))


def bigbird_pattern(
    block_len: int,
    n_window_blocks: int = 3,
    n_global_blocks: int = 2,
    n_random_blocks: int = 3,
    seed: int = 0,
) -> SparsePattern:
    """BigBird ITC (Zaheer et al. 2020), blocked with blocks of ``block_len`` tokens.

    Query block ``m`` attends to the ``n_window_blocks`` blocks centred on it, the global blocks
    (the first ``ceil(g / 2)`` and last ``floor(g / 2)`` blocks, ``g = n_global_blocks``; for
    ``g = 2``, the first and the last) and ``n_random_blocks`` random blocks drawn among the
    blocks not already covered, over the whole length. Global blocks attend to everything. The
    random plan is static: a function of ``(seed, head, number of blocks)``, different per head.
    Any length works (the last block may be partial); nothing falls back to full attention.
    """
    return SparsePattern(
        "bigbird",
        block_len=block_len,
        n_window_blocks=n_window_blocks,
        n_global_blocks=n_global_blocks,
        n_random_blocks=n_random_blocks,
        seed=seed,
    )


def longformer_pattern(
    window: int,
    global_positions: tuple[int, ...] | list[int] = (),
    *,
    dilation: int = 1,
    block_len: int | None = None,
) -> SparsePattern:
    """Longformer (Beltagy et al. 2020): query i attends to ``j = i + t * dilation`` for
    ``|t| <= window``, plus the ``global_positions``, which attend to all and are seen by all.

    ``block_len`` (default ``max(16, window * dilation)``) only sets the kernel's cost.
    """
    _check_int("window", window, 0)
    _check_int("dilation", dilation, 1)
    if block_len is None:
        block_len = max(16, window * dilation)
    return SparsePattern(
        "longformer",
        block_len=block_len,
        window=window,
        dilation=dilation,
        global_positions=tuple(int(p) for p in global_positions),
    )


def strided_pattern(stride: int) -> SparsePattern:
    """Sparse Transformer, strided (Child et al. 2019): query i attends to ``|i - j| < stride``
    and to every ``j`` with ``(i - j) mod stride == 0``.

    The union of the paper's two heads, applied to every head; ``causal=True`` gives exactly the
    paper's autoregressive pattern (the previous ``stride`` positions and every stride-th one).
    Each query sees about ``3 * stride + length / stride`` keys.
    """
    _check_int("stride", stride, 1)
    return SparsePattern("strided", block_len=stride, window=stride - 1)


def fixed_pattern(block_len: int, c: int) -> SparsePattern:
    """Sparse Transformer, fixed (Child et al. 2019): query i attends to its own block of
    ``block_len`` and to the last ``c`` positions of every block (``j mod block_len >=
    block_len - c``).

    The union of the paper's two heads, applied to every head; ``causal=True`` gives exactly the
    paper's autoregressive pattern. Each query sees ``block_len + c * length / block_len`` keys.
    """
    _check_int("block_len", block_len, 1)
    _check_int("c", c, 1)
    return SparsePattern("fixed", block_len=block_len, summary_len=c)


# ----------------------------------------------------------------------------------------------
# The static plan (NumPy).


@functools.lru_cache(maxsize=64)
def _plan(pattern: SparsePattern, length: int, n_plans: int) -> SparsePlan:
    bl = pattern.block_len
    nb = -(-length // bl)
    blocks = np.arange(nb)
    global_queries = np.asarray(pattern.global_positions, np.int64)
    global_keys = global_queries
    if pattern.kind == "bigbird":
        g = pattern.n_global_blocks
        first, last = -(-g // 2), g // 2
        is_global_block = (blocks < first) | (blocks >= nb - last)
        side = pattern.n_window_blocks // 2
        offsets = np.arange(-side, side + 1)
        window = blocks[:, None] + offsets[None, :]
        window_ok = (window >= 0) & (window < nb)
        window_ok &= ~is_global_block[np.clip(window, 0, nb - 1)]
        window = np.where(window_ok, window, -1)
        plans = []
        for head in range(n_plans):
            rand = _random_blocks(pattern, head, nb, window, is_global_block)
            plans.append(np.concatenate([window, rand], axis=1))
        key_blocks = np.stack(plans)
        key_blocks[:, is_global_block] = -1  # global query blocks: the dense pass
        positions = np.arange(length)
        global_keys = positions[is_global_block[positions // bl]]
        global_queries = global_keys
    elif pattern.kind == "fixed":
        key_blocks = blocks[None, :, None]
        positions = np.arange(length)
        global_keys = positions[positions % bl >= bl - pattern.summary_len]
        global_queries = np.zeros(0, np.int64)
    else:
        reach = pattern.window * pattern.dilation
        side = -(-reach // bl)
        window = blocks[:, None] + np.arange(-side, side + 1)[None, :]
        key_blocks = np.where((window >= 0) & (window < nb), window, -1)[None]
        if pattern.kind == "strided":
            global_keys = global_queries = np.zeros(0, np.int64)
    return SparsePlan(
        block_len=bl,
        n_blocks=nb,
        key_blocks=key_blocks.astype(np.int32),
        global_keys=np.asarray(global_keys, np.int32),
        global_queries=np.asarray(global_queries, np.int32),
        columns=pattern.kind == "strided",
    )


def _random_blocks(
    pattern: SparsePattern, head: int, nb: int, window: np.ndarray, is_global_block: np.ndarray
) -> np.ndarray:
    """``[nb, n_random_blocks]`` random key blocks of one head (-1 where too few are left).

    Each query block ranks all blocks by a uniform draw and keeps the first ``r`` that are not
    already covered (window or global): uniform over the uncovered blocks of the whole length.
    ``Generator.random`` on PCG64 is a stable stream, so a seed gives the same plan everywhere.
    """
    r = pattern.n_random_blocks
    if r == 0:
        return np.zeros((nb, 0), np.int64)
    rng = np.random.Generator(np.random.PCG64([pattern.seed, head, nb]))
    draws = rng.random((nb, nb), dtype=np.float32)
    covered = np.broadcast_to(is_global_block[None, :], (nb, nb)).copy()
    rows = np.repeat(np.arange(nb), window.shape[1])
    cols = window.reshape(-1)
    covered[rows[cols >= 0], cols[cols >= 0]] = True
    draws = np.where(covered, np.inf, draws)
    take = min(r, nb)
    chosen = np.argsort(draws, axis=1, kind="stable")[:, :take]
    ok = np.take_along_axis(draws, chosen, axis=1) < np.inf
    chosen = np.where(ok, chosen, -1)
    if take < r:
        chosen = np.concatenate([chosen, -np.ones((nb, r - take), np.int64)], axis=1)
    return chosen


def _plan_keys(
    pattern: SparsePattern, plan: SparsePlan, length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Every query's keys in the kernel's order: ``(index, valid)`` ``[heads, length, keys]``."""
    bl, nb = plan.block_len, plan.n_blocks
    padded = nb * bl
    is_global_key = np.zeros(padded, bool)
    is_global_key[plan.global_keys] = True
    q_pos = np.arange(padded).reshape(nb, bl)
    heads, _, nk = plan.key_blocks.shape
    has = plan.key_blocks >= 0
    k_pos = np.where(has, plan.key_blocks, 0)[..., None] * bl + np.arange(bl)
    k_pos = k_pos.reshape(heads, nb, 1, nk * bl)
    valid = np.repeat(has, bl, axis=-1).reshape(heads, nb, 1, nk * bl)
    valid = valid & (k_pos < length) & ~is_global_key[k_pos]
    rule = pattern._rule(q_pos[None, :, :, None], k_pos)
    if rule is not None:
        valid = valid & rule
    parts_index = [np.broadcast_to(k_pos, (heads, nb, bl, nk * bl))]
    parts_valid = [np.broadcast_to(valid, (heads, nb, bl, nk * bl))]
    n_global = plan.global_keys.size
    if n_global:
        parts_index.append(np.broadcast_to(plan.global_keys, (heads, nb, bl, n_global)))
        parts_valid.append(np.ones((heads, nb, bl, n_global), bool))
    if plan.columns:
        col = np.arange(nb)[None, None, :] * bl + np.arange(bl)[None, :, None]  # [r, m]
        col = np.broadcast_to(col, (nb, bl, nb))
        col_ok = (col < length) & (col != q_pos[:, :, None]) & ~is_global_key[col]
        parts_index.append(np.broadcast_to(col, (heads, nb, bl, nb)))
        parts_valid.append(np.broadcast_to(col_ok, (heads, nb, bl, nb)))
    index = np.concatenate(parts_index, -1).reshape(heads, padded, -1)[:, :length]
    valid = np.concatenate(parts_valid, -1).reshape(heads, padded, -1)[:, :length]
    return index, valid


# ----------------------------------------------------------------------------------------------
# The kernel.


def sparse_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    pattern: SparsePattern,
    *,
    causal: bool = False,
    mask: jax.Array | None = None,
    dropout_rate: float = 0.0,
    dropout_key: jax.Array | None = None,
) -> jax.Array:
    """Softmax attention restricted to a static sparse ``pattern``, computed block by block.

    Args:
      q, k: ``[batch, heads, length, d_head]`` (self-attention: one length; any length, padded
        internally to a multiple of ``pattern.block_len``).
      v: ``[batch, heads, length, d_v]``.
      pattern: a :class:`SparsePattern` (``star_pattern()``, ``bigbird_pattern(...)``, ...).
      causal: additionally restricts every query i to keys ``j <= i`` (positions aligned at 0).
      mask: bool ``[batch, length]``, True for real tokens; padded keys are never attended to.
      dropout_rate, dropout_key: dropout on the attention probabilities (explicit key).

    Returns:
      ``[batch, heads, length, d_v]`` in ``v.dtype``: equal to ``full_attention(q, k, v,
      causal=causal, mask=pattern.dense_mask(length, heads)[None] & mask[:, None, None, :])``,
      scale ``1 / sqrt(d_head)``. A query with no allowed key gets the mean of all values, as
      ``full_attention`` gives it. Memory: ``O(length x keys per query)``, never ``length^2``
      (except through the strided / fixed patterns' ``length / block_len`` keys per query).
    """
    check_qkv("sparse_attention", q, k, v)
    if not isinstance(pattern, SparsePattern):
        raise ValueError(
            f"sparse_attention: pattern must be a SparsePattern (e.g. star_pattern()), "
            f"got {type(pattern).__name__}"
        )
    batch, heads, length, d_head = q.shape
    if k.shape[2] != length or v.shape[2] != length:
        raise ValueError(
            f"sparse_attention: q, k, v must share one length (self-attention), got "
            f"{q.shape}, {k.shape}, {v.shape}"
        )
    if k.shape[3] != d_head:
        raise ValueError(f"sparse_attention: k's d_head {k.shape[3]} differs from q's {d_head}")
    if mask is not None and mask.shape != (batch, length):
        raise ValueError(
            f"sparse_attention: mask must be [batch, length] = {(batch, length)}, got {mask.shape}"
        )
    if dropout_rate > 0 and dropout_key is None:
        raise ValueError("sparse_attention: dropout_rate > 0 needs an explicit dropout_key")
    plan = pattern.plan(length, heads)
    bl, nb = plan.block_len, plan.n_blocks
    padded = nb * bl
    dtype = score_dtype(q.dtype)
    scale = jnp.asarray(1.0 / math.sqrt(d_head), dtype)
    mask_value, _ = mask_values(dtype)

    # Scores in float32 (float64 for float64 inputs): XLA's CPU dot has no bf16 -> f32 kernel.
    qp, kp, vp = (pad_to_multiple(x, bl, axis=2).astype(dtype) for x in (q, k, v))
    key_real = jnp.ones((batch, length), bool) if mask is None else mask.astype(bool)
    key_real = pad_to_multiple(key_real, bl, axis=1, value=False)  # [batch, padded]
    q_blk = qp.reshape(batch, heads, nb, bl, d_head)
    k_blk = kp.reshape(batch, heads, nb, bl, d_head)
    v_blk = vp.reshape(batch, heads, nb, bl, -1)
    real_blk = key_real.reshape(batch, nb, bl)
    q_pos = jnp.arange(padded).reshape(nb, bl)[:, :, None]  # [nb, bl, 1]
    is_global_key = np.zeros(padded, bool)
    is_global_key[plan.global_keys] = True

    scores, allowed, values = [], [], []

    # 1. Gathered key blocks: [batch, heads, nb, bl, nk * bl].
    idx = plan.key_blocks  # [h or 1, nb, nk]
    n_plans, _, nk = idx.shape
    if nk:
        has = idx >= 0
        idx0 = np.where(has, idx, 0)
        if n_plans == 1:
            k_g, v_g = k_blk[:, :, idx0[0]], v_blk[:, :, idx0[0]]
        else:
            head_ix = np.arange(heads)[:, None, None]
            k_g, v_g = k_blk[:, head_ix, idx0], v_blk[:, head_ix, idx0]
        k_g = k_g.reshape(batch, heads, nb, nk * bl, d_head)
        v_g = v_g.reshape(batch, heads, nb, nk * bl, -1)
        k_pos = (jnp.asarray(idx0)[..., None] * bl + jnp.arange(bl)).reshape(n_plans, nb, nk * bl)
        k_pos = k_pos[:, :, None, :]  # [h, nb, 1, keys]
        ok = jnp.repeat(jnp.asarray(has), bl, axis=-1)[:, :, None, :]
        ok = ok & ~jnp.asarray(is_global_key)[k_pos]
        rule = pattern._rule(q_pos[None], k_pos)
        if rule is not None:
            ok = ok & rule
        if causal:
            ok = ok & (k_pos <= q_pos[None])
        real = real_blk[:, idx0].reshape(batch, n_plans, nb, 1, nk * bl)
        scores.append(jnp.einsum("bhnqd,bhnkd->bhnqk", q_blk, k_g) * scale)
        allowed.append(ok[None] & real)
        values.append((v_g, "bhnqk,bhnkd->bhnqd"))

    # 2. Global keys, seen by every query: [batch, heads, nb, bl, n_global].
    gk = plan.global_keys
    if gk.size:
        ok = jnp.ones((1, 1, 1, gk.size), bool)
        if causal:
            ok = jnp.asarray(gk) <= q_pos
        real = key_real[:, gk][:, None, None, None, :]
        scores.append(jnp.einsum("bhnqd,bhgd->bhnqg", q_blk, kp[:, :, gk]) * scale)
        allowed.append(ok[None, None] & real if ok.ndim == 3 else ok[None] & real)
        values.append((vp[:, :, gk], "bhnqg,bhgd->bhnqd"))

    # 3. Columns (strided): query (n, r) sees key (m, r) of every other block m.
    if plan.columns:
        col_pos = jnp.arange(nb)[None, None, :] * bl + jnp.arange(bl)[None, :, None]  # [1,bl,nb]
        ok = (col_pos != q_pos) & ~jnp.asarray(is_global_key)[col_pos]
        if causal:
            ok = ok & (col_pos <= q_pos)
        real = jnp.swapaxes(real_blk, 1, 2)[:, None, None]  # [batch, 1, 1, bl, nb]
        scores.append(jnp.einsum("bhnrd,bhmrd->bhnrm", q_blk, k_blk) * scale)
        allowed.append(ok[None, None] & real)
        values.append((v_blk, "bhnrm,bhmrd->bhnrd"))

    if dropout_rate > 0:
        block_key, global_key = jax.random.split(dropout_key)
    else:
        block_key = global_key = None
    widths = [s.shape[-1] for s in scores]
    shapes = [(batch, heads, nb, bl, w) for w in widths]
    allowed_all = jnp.concatenate(
        [jnp.broadcast_to(a, s) for a, s in zip(allowed, shapes, strict=True)], -1
    )
    scores_all = jnp.where(allowed_all, jnp.concatenate(scores, -1), mask_value)
    probs = dropout(jax.nn.softmax(scores_all, axis=-1), dropout_rate, block_key)
    out = 0.0
    start = 0
    for (vals, spec), w in zip(values, widths, strict=True):
        out = out + jnp.einsum(spec, probs[..., start : start + w], vals)
        start += w
    out = out.reshape(batch, heads, padded, -1)
    any_allowed = jnp.any(allowed_all, axis=-1).reshape(batch, heads, padded)

    # Global queries: dense over keys, O(n_global x length).
    gq = plan.global_queries
    if gq.size:
        ok = key_real[:, None, None, :]
        if causal:
            ok = ok & (jnp.arange(padded)[None, :] <= jnp.asarray(gq)[:, None])[None, None]
        ok = jnp.broadcast_to(ok, (batch, heads, gq.size, padded))
        g_scores = jnp.einsum("bhgd,bhkd->bhgk", qp[:, :, gq], kp) * scale
        g_probs = jax.nn.softmax(jnp.where(ok, g_scores, mask_value), axis=-1)
        g_probs = dropout(g_probs, dropout_rate, global_key)
        out = out.at[:, :, gq].set(jnp.einsum("bhgk,bhkd->bhgd", g_probs, vp))
        any_allowed = any_allowed.at[:, :, gq].set(jnp.any(ok, axis=-1))

    # full_attention gives a row without any allowed key uniform weights over all real-length
    # keys (every score is the same mask value): the mean of the values.
    mean_v = jnp.mean(vp[:, :, :length], axis=2, keepdims=True)
    out = jnp.where(any_allowed[..., None], out, mean_v)
    return out[:, :, :length].astype(v.dtype)
