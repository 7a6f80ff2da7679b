"""Optimizers and learning-rate schedules (optax)."""

from __future__ import annotations

import jax.numpy as jnp
import optax


def trax_rsqrt_schedule(base: float, warmup_steps: int) -> optax.Schedule:
    """Trax's ``constant * linear_warmup * rsqrt_decay``.

    ``lr(step) = base * min(1, step / warmup) / sqrt(max(step, warmup))`` (the Reformer enwik8
    gin: base 0.03125 with 2000 warm-up steps peaks at about 7e-4).
    """
    warmup = max(int(warmup_steps), 1)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        return base * jnp.minimum(1.0, step / warmup) * jnp.sqrt(1.0 / jnp.maximum(step, warmup))

    return schedule


def make_schedule(name: str, base: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
    if name == "rsqrt":
        return trax_rsqrt_schedule(base, warmup_steps)
    if name == "constant":
        return (
            optax.linear_schedule(0.0, base, max(warmup_steps, 1))
            if warmup_steps
            else (optax.constant_schedule(base))
        )
    if name == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, base, max(warmup_steps, 1), max(total_steps, warmup_steps + 1)
        )
    raise ValueError(
        f"config.schedule: unknown schedule {name!r}; use 'rsqrt' (Trax), 'constant' or 'cosine'"
    )


def make_optimizer(
    name: str,
    schedule: optax.Schedule,
    *,
    b1: float = 0.9,
    b2: float = 0.98,
    eps: float = 1e-9,
    weight_decay: float = 0.0,
    grad_clip: float = 0.0,
) -> optax.GradientTransformation:
    """Adam (the Trax enwik8 config: 0.9 / 0.98 / 1e-9) or Adafactor (the paper).

    ``weight_decay`` is decoupled decay multiplied by the learning-rate schedule for both
    optimizers (AdamW's convention): each update subtracts ``schedule(t) * weight_decay * param``
    on top of the optimizer's own step. optax's Adafactor would subtract
    ``weight_decay * param`` unscaled (shrinking parameters even at lr = 0 during warm-up), so
    its decay rate is given here as the schedule times ``weight_decay``.
    """
    chain = []
    if grad_clip > 0:
        chain.append(optax.clip_by_global_norm(grad_clip))
    if name == "adam":
        chain.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
    elif name == "adafactor":

        def decay_rate(count):
            return weight_decay * schedule(count)

        chain.append(
            optax.adafactor(
                schedule,
                multiply_by_parameter_scale=False,
                weight_decay_rate=decay_rate if weight_decay else None,
            )
        )
    else:
        raise ValueError(f"config.optimizer: unknown {name!r}; use 'adam' or 'adafactor'")
    return optax.chain(*chain)
