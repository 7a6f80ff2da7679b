"""The training step against an independent step written here with plain optax and jax.grad.

``make_train_step`` (with the optimizer and schedule built by ``make_optimizer`` /
``make_schedule``) must produce the parameters of a step written from the definitions: the
token-weighted mean next-token cross-entropy over the whole global batch (written here, not
``lm_loss``), its gradient by ``jax.grad``, and optax's transforms built directly with the
schedule formulas written here. The model's forward pass is shared (it is not under test).

Tolerance: both sides run the same float32 forward pass; they differ only in summation order
(the step sums micro-batch gradients, the reference differentiates one sum), so gradients agree
to a few float32 ulps relative to their scale (eps = 1.2e-7; a sum of n terms moves by at most
~n * eps relative, n <= 64 here: ~1e-5). One update moves a parameter by at most ~lr (Adam,
Adafactor clip their updates at about lr); an ulp-level gradient difference changes Adam's
update m / sqrt(v) by the same relative amount, so after k steps parameters agree within
~k * lr * 1e-4 + ulp(param). We assert atol = 1e-5 * (1 + k) (lr <= 0.05), far below the
differences the planted bugs produce (>= 1e-3).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from reformer_jax.model import ReformerLM
from reformer_jax.train.optimizer import make_optimizer, make_schedule
from reformer_jax.train.trainer import make_train_step
from tests.model_utils import tiny_config

SEED = 7
LENGTH = 16
BATCH = 4
HASH_STREAM = 2**31 - 3  # the step's LSH key: fold_in(step key, this), the documented contract


def _model(**overrides):
    cfg = tiny_config(attention_pattern=("local", "lsh"), **overrides)
    graphdef, params = nnx.split(ReformerLM(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    return cfg, graphdef, params


def _batch(seed: int = 0) -> dict[str, jax.Array]:
    """A batch whose rows score very different numbers of tokens (3, 15, 8 and 0 rows' worth)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 17, (BATCH, LENGTH)).astype(np.int32)
    weights = np.zeros((BATCH, LENGTH), np.float32)
    weights[0, 1:4] = 1  # 3 scored tokens
    weights[1, 1:] = 1  # 15
    weights[2, 8:] = 1  # 8
    weights[3, 5:9] = 1  # 4
    return {"inputs": tokens, "targets": tokens, "weights": weights}


def _nll_sum(graphdef, params, batch, key, hash_key):
    """Sum over scored tokens of -log p(token t+1 | tokens <= t), written from the definition."""
    logits = nnx.merge(graphdef, params)(batch["inputs"], dropout_rng=key, hash_rng=hash_key)
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    targets = batch["targets"][:, 1:]
    picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return -jnp.sum(picked * batch["weights"][:, 1:])


def _reference_step(graphdef, tx_ref, accum: int):
    def step(params, opt_state, batch, step):
        key = jax.random.fold_in(jax.random.key(SEED), step)
        hash_key = jax.random.fold_in(key, HASH_STREAM)
        total_weight = jnp.maximum(jnp.sum(batch["weights"][:, 1:]), 1.0)
        rows = BATCH // accum

        def mean_loss(params):
            if accum == 1:
                return _nll_sum(graphdef, params, batch, key, hash_key) / total_weight
            total = 0.0
            for i in range(accum):
                micro = jax.tree.map(lambda x, i=i: x[i * rows : (i + 1) * rows], batch)
                micro_key = jax.random.fold_in(key, i)  # dropout per micro-batch
                total = total + _nll_sum(graphdef, params, micro, micro_key, hash_key)
            return total / total_weight

        grads = jax.grad(mean_loss)(params)
        updates, opt_state = tx_ref.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, optax.tree.norm(grads)

    return jax.jit(step)


def _schedule_formula(name: str, base: float, warmup: int, total: int):
    """The schedules written from their definitions (optax counts updates from 0)."""

    def lr(count):
        s = jnp.asarray(count, jnp.float32)
        if name == "constant":
            return base * jnp.minimum(1.0, s / max(warmup, 1)) if warmup else base + 0 * s
        if name == "rsqrt":
            w = max(warmup, 1)
            return base * jnp.minimum(1.0, s / w) / jnp.sqrt(jnp.maximum(s, w))
        if name == "cosine":
            w = max(warmup, 1)
            decay = jnp.clip((s - w) / (total - w), 0.0, 1.0)
            return jnp.where(s < w, base * s / w, base * 0.5 * (1 + jnp.cos(math.pi * decay)))
        raise AssertionError(name)

    return lr


def _decoupled_decay(sched, weight_decay: float) -> optax.GradientTransformation:
    """Adds ``-sched(t) * weight_decay * param`` to each update (t counts updates from 0)."""

    def init(params):
        del params
        return jnp.zeros([], jnp.int32)

    def update(updates, count, params):
        rate = sched(count) * weight_decay
        return jax.tree.map(lambda u, p: u - rate * p, updates, params), count + 1

    return optax.GradientTransformation(init, update)


def _run_both(
    *,
    optimizer: str,
    schedule: str = "constant",
    lr: float = 0.01,
    warmup: int = 0,
    total: int = 6,
    weight_decay: float = 0.0,
    grad_clip: float = 0.0,
    accum: int = 1,
    steps: int = 3,
    tx_pair=None,
    **model_overrides,
):
    """Parameters after each of ``steps`` steps: (step under test, reference) pairs."""
    cfg, graphdef, params = _model(**model_overrides)
    if tx_pair is None:
        tx = make_optimizer(
            optimizer,
            make_schedule(schedule, lr, warmup, total),
            b1=0.9,
            b2=0.98,
            eps=1e-9,
            weight_decay=weight_decay,
            grad_clip=grad_clip,
        )
        sched = _schedule_formula(schedule, lr, warmup, total)
        if optimizer == "adam":
            core = optax.adamw(sched, b1=0.9, b2=0.98, eps=1e-9, weight_decay=weight_decay)
        else:
            # Decoupled decay times the schedule (AdamW's convention, config.weight_decay's
            # documented meaning), written here rather than through adafactor's own
            # weight_decay_rate, which is not multiplied by the learning rate.
            core = optax.chain(
                optax.adafactor(sched, multiply_by_parameter_scale=False),
                _decoupled_decay(sched, weight_decay),
            )
        tx_ref = optax.chain(optax.clip_by_global_norm(grad_clip), core) if grad_clip else core
    else:
        tx, tx_ref = tx_pair
    step_fn = jax.jit(make_train_step(graphdef, tx, cfg, accum, SEED))
    ref_fn = _reference_step(graphdef, tx_ref, accum)
    p, s = params, tx.init(params)
    rp, rs = params, tx_ref.init(params)
    out = []
    for k in range(steps):
        batch = _batch(k)
        p, s, metrics = step_fn(p, s, batch, jnp.int32(k))
        rp, rs, ref_grad_norm = ref_fn(rp, rs, batch, jnp.int32(k))
        out.append((p, rp, metrics, ref_grad_norm))
    return out


def _assert_params_close(a, b, atol: float) -> None:
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 10
    worst = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(leaves_a, leaves_b, strict=True))
    assert worst <= atol, f"largest parameter difference {worst:.3g} > {atol:.3g}"


def _assert_moved(before, after, at_least: float) -> None:
    """Guards against a vacuous comparison: the step really changed the parameters."""
    moved = max(
        float(jnp.max(jnp.abs(x - y)))
        for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)
    )
    assert moved >= at_least, moved


def test_sgd_step_equals_the_gradient_of_the_token_weighted_mean_loss():
    """Catches a loss or gradient of the wrong scale or weighting: a step that averages rows'
    means instead of tokens, scores token 0 / unweighted positions, or forgets to divide by the
    scored-token count (SGD shows the gradient's scale, which Adam hides)."""
    (p, rp, metrics, ref_norm), *_ = _run_both(
        optimizer="sgd", tx_pair=(optax.sgd(0.5), optax.sgd(0.5)), steps=1
    )
    _assert_params_close(p, rp, atol=1e-5)
    np.testing.assert_allclose(float(metrics["grad_norm"]), float(ref_norm), rtol=1e-5)
    assert float(metrics["tokens"]) == 30.0


def test_accumulated_step_equals_the_full_batch_gradient_with_unequal_token_counts():
    """Catches gradient accumulation that forgets to divide by the scored tokens, or weights the
    micro-batches equally (mean of means) although they score 3, 15, 8 and 4 tokens.
    Plain SGD, so the gradient's scale shows in the parameters; dropout on, so the per-micro-
    batch keys must be those the reference derives."""
    results = _run_both(
        optimizer="sgd",
        tx_pair=(optax.sgd(0.5), optax.sgd(0.5)),
        accum=4,
        steps=2,
        hidden_dropout=0.1,
        ff_dropout=0.1,
    )
    for k, (p, rp, metrics, ref_norm) in enumerate(results):
        _assert_params_close(p, rp, atol=1e-5 * (2 + k))
        np.testing.assert_allclose(float(metrics["grad_norm"]), float(ref_norm), rtol=1e-5)


@pytest.mark.parametrize(
    ("optimizer", "schedule", "warmup", "weight_decay"),
    [
        ("adam", "constant", 2, 0.1),
        ("adam", "rsqrt", 2, 0.0),
        ("adafactor", "cosine", 2, 0.1),
    ],
)
def test_optimizer_steps_equal_plain_optax(optimizer, schedule, warmup, weight_decay):
    """Catches an optimizer chain that differs from its definition: a schedule off by one step
    or ignoring warm-up, weight decay not applied (or applied twice, or not multiplied by the
    learning rate, as optax's Adafactor does), clipping not applied
    although the gradient norm (~1-3) is above the clip (0.5), Adam's betas/eps swapped, and
    accumulation (2 micro-batches of 18 and 12 tokens) that mis-weights micro-batches."""
    lr = 0.05 if schedule == "rsqrt" else 0.01  # rsqrt divides by sqrt(warmup)
    results = _run_both(
        optimizer=optimizer,
        schedule=schedule,
        lr=lr,
        warmup=warmup,
        total=5,
        weight_decay=weight_decay,
        grad_clip=0.5,
        accum=2,
        steps=3,
    )
    (_, _, metrics, _) = results[0]
    assert float(metrics["grad_norm"]) > 0.5, "the clip must be active"
    _, graphdef, params = _model()
    for k, (p, rp, _, _) in enumerate(results):
        _assert_params_close(p, rp, atol=1e-5 * (1 + k))
    # Warm-up: optax counts updates from 0, so the first update has learning rate 0 and (the
    # decay being multiplied by lr for both optimizers) leaves every parameter where it was.
    _assert_params_close(results[0][0], params, atol=0.0)
    _assert_moved(params, results[-1][0], at_least=1e-3)
