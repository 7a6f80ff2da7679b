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
