"""The reversible residual stack as one ``jax.custom_vjp`` around a scan over layer groups.

Two streams ``(x1, x2)``; each layer computes ``y1 = x1 + F(x2)``, ``y2 = x2 + G(y1)`` with F the
attention branch and G the feed-forward branch. The forward pass keeps only the stack's input
and output (plus each attention kind's *replay*, e.g. LSH's bucket order, O(L) integers); the
backward pass walks the layers in reverse, reconstructing each layer's input from its output
(``x2 = y2 - G(y1)``, ``x1 = y1 - F(x2)``) while back-propagating through F and G with the same
dropout keys, random draws (LSH rotations, Performer features) and replay. Activation memory
therefore does not grow with depth.

The layers are grouped by the attention pattern (e.g. ``[local, local, lsh, local]``): the scan
runs over the ``n_layers / len(pattern)`` groups, with the pattern positions unrolled inside,
so compile time does not grow with depth either.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from reformer_jax.sharding import constrain_batch

# attn(params, x2, ctx, layer_index, replay) -> (branch output, replay or None)
AttnFn = Callable[[Any, jax.Array, Any, jax.Array, Any], tuple[jax.Array, Any]]
# ff(params, y1, ctx, layer_index) -> branch output
FFFn = Callable[[Any, jax.Array, Any, jax.Array], jax.Array]


def _group_slice(tree: Any, g: jax.Array) -> Any:
    return jax.tree.map(lambda a: a[g], tree)


def _forward_group(attn_fns, ff_fns, group_params, x1, x2, ctx, group_draws, g, replay):
    n_pattern = len(attn_fns)
    used_all = []
    for p in range(n_pattern):
        layer = g * n_pattern + p
        attn_params, ff_params = group_params[p]
        ctx_p = (ctx, group_draws[p])
        a, used = attn_fns[p](attn_params, x2, ctx_p, layer, None if replay is None else replay[p])
        x1 = x1 + a
        x2 = x2 + ff_fns[p](ff_params, x1, ctx, layer)
        used_all.append(used)
    return constrain_batch(x1), constrain_batch(x2), tuple(used_all)


def stack_forward(attn_fns, ff_fns, params, x1, x2, ctx, draws):
    """Plain scan over groups; differentiable by ordinary autodiff (stores activations)."""
    n_groups = jax.tree.leaves(params)[0].shape[0]

    def body(carry, xs):
        x1, x2 = map(constrain_batch, carry)  # the streams stay split along the batch
        group_params, group_draws, g = xs
        x1, x2, used = _forward_group(
            attn_fns, ff_fns, group_params, x1, x2, ctx, group_draws, g, None
        )
        return (x1, x2), used

    (y1, y2), replay = jax.lax.scan(body, (x1, x2), (params, draws, jnp.arange(n_groups)))
    return y1, y2, replay


def reversible_stack(
    attn_fns: Sequence[AttnFn],
    ff_fns: Sequence[FFFn],
    params: Any,
    x1: jax.Array,
    x2: jax.Array,
    ctx: Any,
    draws: Any,
) -> tuple[jax.Array, jax.Array]:
    """Applies the stack; gradients by reversing the layers instead of storing activations.

    Args:
      attn_fns, ff_fns: one per pattern position (pure functions of their parameters).
      params: tuple over pattern positions of ``(attn_params, ff_params)`` pytrees whose
        leaves have a leading ``n_groups`` axis.
      x1, x2: the two input streams ``[B, L, D]``.
      ctx: arrays shared by all layers and never differentiated (mask, dropout/hash keys).
      draws: tuple over pattern positions of the layers' random draws stacked over groups
        (``[n_groups, ...]`` leaves; None for kinds that draw nothing); never differentiated.
    """
    attn_fns, ff_fns = tuple(attn_fns), tuple(ff_fns)

    @jax.custom_vjp
    def run(params, x1, x2, ctx, draws):
        y1, y2, _ = stack_forward(attn_fns, ff_fns, params, x1, x2, ctx, draws)
        return y1, y2

    def run_fwd(params, x1, x2, ctx, draws):
        y1, y2, replay = stack_forward(attn_fns, ff_fns, params, x1, x2, ctx, draws)
        return (y1, y2), (params, y1, y2, ctx, draws, replay)

    def run_bwd(residuals, cotangents):
        params, y1, y2, ctx, draws, replay = residuals
        dy1, dy2 = cotangents
        n_groups = jax.tree.leaves(params)[0].shape[0]
        n_pattern = len(attn_fns)

        def body(carry, xs):
            y1, y2, dy1, dy2 = map(constrain_batch, carry)
            group_params, group_draws, group_replay, g = xs
            grads = [None] * n_pattern
            for p in reversed(range(n_pattern)):
                layer = g * n_pattern + p
                attn_params, ff_params = group_params[p]

                def ff(prm, x, layer=layer, p=p):
                    return ff_fns[p](prm, x, ctx, layer)

                g_out, ff_vjp = jax.vjp(ff, ff_params, y1)
                x2 = y2 - g_out
                d_ff_params, dy1_from_ff = ff_vjp(dy2)
                dy1 = dy1 + dy1_from_ff

                ctx_p = (ctx, group_draws[p])
                replay_p = group_replay[p]

                def attn(prm, x, layer=layer, ctx_p=ctx_p, replay_p=replay_p, p=p):
                    return attn_fns[p](prm, x, ctx_p, layer, replay_p)[0]

                f_out, attn_vjp = jax.vjp(attn, attn_params, x2)
                x1 = y1 - f_out
                d_attn_params, dx2_from_attn = attn_vjp(dy1)
                dy2 = dy2 + dx2_from_attn
                y1, y2 = x1, x2
                grads[p] = (d_attn_params, d_ff_params)
            carry = tuple(map(constrain_batch, (y1, y2, dy1, dy2)))
            return carry, tuple(grads)

        (_, _, dx1, dx2), d_params = jax.lax.scan(
            body,
            (y1, y2, dy1, dy2),
            (params, draws, replay, jnp.arange(n_groups)),
            reverse=True,
        )
        zeros = jax.tree.map(_zero_cotangent, (ctx, draws))
        return d_params, dx1, dx2, zeros[0], zeros[1]

    run.defvjp(run_fwd, run_bwd)
    return run(params, x1, x2, ctx, draws)


def _zero_cotangent(x: Any) -> Any:
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) or not jnp.issubdtype(
        x.dtype, jnp.inexact
    ):
        return None
    return jnp.zeros_like(x)
