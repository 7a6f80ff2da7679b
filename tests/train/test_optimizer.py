import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from reformer_jax.train.optimizer import make_optimizer, make_schedule, trax_rsqrt_schedule


def test_trax_rsqrt_schedule_matches_the_formula():
    schedule = trax_rsqrt_schedule(0.03125, 2000)
    for step in (1, 500, 2000, 8000, 100_000):
        expected = 0.03125 * min(1.0, step / 2000) / math.sqrt(max(step, 2000))
        np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-6)
    assert float(schedule(0)) == 0.0


def test_bad_names_are_named():
    with pytest.raises(ValueError, match="config.schedule"):
        make_schedule("linear", 1.0, 10, 100)
    with pytest.raises(ValueError, match="config.optimizer"):
        make_optimizer("sgd", optax.constant_schedule(1.0))


@pytest.mark.parametrize("name", ["adam", "adafactor"])
def test_optimizers_reduce_a_quadratic(name):
    tx = make_optimizer(name, optax.constant_schedule(0.1), grad_clip=1.0)
    params = {"w": jnp.full((4, 4), 3.0)}
    state = tx.init(params)
    for _ in range(50):
        grads = {"w": 2 * params["w"]}
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    assert float(jnp.abs(params["w"]).max()) < 3.0 * 0.5


@pytest.mark.parametrize("name", ["adam", "adafactor"])
def test_weight_decay_is_decoupled_and_multiplied_by_the_learning_rate(name):
    """``config.weight_decay`` means the same for both optimizers: with a zero gradient (both
    optimizers' own step is then exactly 0) each update is ``-lr(t) * weight_decay * param``,
    written here in NumPy. Catches Adafactor's unscaled decay (optax's ``weight_decay_rate``
    subtracts ``weight_decay * param`` even at lr = 0 during warm-up), decay applied twice, or
    decay read from the schedule one step off."""
    base, warmup, weight_decay = 0.1, 2, 0.3
    tx = make_optimizer(
        name, make_schedule("constant", base, warmup, 10), weight_decay=weight_decay
    )
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
    expected = np.asarray(params["w"], np.float64)
    state = tx.init(params)
    for step in range(4):
        updates, state = tx.update({"w": jnp.zeros((4, 3))}, state, params)
        params = optax.apply_updates(params, updates)
        expected = expected * (1 - base * min(1.0, step / warmup) * weight_decay)
        # float32: a handful of roundings of numbers of order 1 per step, eps = 1.2e-7.
        np.testing.assert_allclose(np.asarray(params["w"]), expected, rtol=1e-6)
