"""Independent NumPy references for the kernels (float64, dense, no chunking)."""

import numpy as np


def dense_attention(q, k, v, allowed, scale, self_score=None):
    """Softmax attention with an explicit boolean ``allowed`` [B, H, Lq, Lk] (or broadcastable).

    ``self_score`` replaces the diagonal score (the Reformer self mask) after masking.
    """
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    scores = np.einsum("bhqd,bhkd->bhqk", q, k) * scale
    scores = np.where(allowed, scores, -1e9)
    if self_score is not None:
        eye = np.eye(q.shape[2], k.shape[2], dtype=bool)
        scores = np.where(eye, self_score, scores)
    scores = scores - scores.max(-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhqk,bhkd->bhqd", p, v)


def unit(x, eps=1e-6):
    x = np.asarray(x, np.float64)
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) / np.sqrt(x.shape[-1])


def band_mask(length, chunk_len, before, after, causal):
    """[L, L] allowed matrix of chunked local attention without wrap-around."""
    pos = np.arange(length)
    qc, kc = pos[:, None] // chunk_len, pos[None, :] // chunk_len
    allowed = (kc >= qc - before) & (kc <= qc + after)
    if causal:
        allowed &= pos[None, :] <= pos[:, None]
    return allowed
