"""The standard (pre-LayerNorm) residual stack: the paper's non-reversible baseline.

One stream ``x``; each layer computes ``x = x + F(x)`` then ``x = x + G(x)`` with the same
branches as the reversible stack (F: LayerNorm + attention, G: LayerNorm + feed-forward). It
cannot be inverted, so gradients come from ordinary autodiff, which stores every layer's
activations. Like :mod:`reformer_jax.layers.reversible`, it is one scan over the layer groups
of the attention pattern (pattern positions unrolled inside), so compile time does not grow
with depth.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from reformer_jax.layers.reversible import AttnFn, FFFn
from reformer_jax.sharding import constrain_batch


def standard_stack(
    attn_fns: Sequence[AttnFn],
    ff_fns: Sequence[FFFn],
    params: Any,
    x: jax.Array,
    ctx: Any,
    draws: Any,
) -> jax.Array:
    """Applies ``n_layers`` pre-LN residual layers to ``x [B, L, D]``.

    Arguments are those of :func:`reformer_jax.layers.reversible.reversible_stack` with one
    input stream instead of two (``params`` and ``draws`` stacked over groups).
    """
    attn_fns, ff_fns = tuple(attn_fns), tuple(ff_fns)
    n_pattern = len(attn_fns)
    n_groups = jax.tree.leaves(params)[0].shape[0]

    def body(x, xs):
        group_params, group_draws, g = xs
        x = constrain_batch(x)  # the residual stream stays split along the batch
        for p in range(n_pattern):
            layer = g * n_pattern + p
            attn_params, ff_params = group_params[p]
            a, _ = attn_fns[p](attn_params, x, (ctx, group_draws[p]), layer, None)
            x = x + a
            x = x + ff_fns[p](ff_params, x, ctx, layer)
        return constrain_batch(x), None

    y, _ = jax.lax.scan(body, x, (params, draws, jnp.arange(n_groups)))
    return y
