import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench import dot_shapes, roofline
from bench.dot_shapes import DotShape, StepDots

# Dots as the optimised HLO of a training step has them: a weight gradient contracting its
# operands' rows, a fused feed-forward (two dots in one YNNPACK fusion), and a window-loop
# product whose keys are stored [window, depth] (contracted over their last axis).
STEP_HLO = """
%fused_ff (param_0: f32[512,64], param_1: f32[64,256], param_2: f32[256,64]) -> f32[512,64] {
  %param_0 = f32[512,64]{1,0} parameter(0)
  %param_1 = f32[64,256]{1,0} parameter(1)
  %dot.1 = f32[512,256]{1,0} dot(%param_0, %param_1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %tanh.1 = f32[512,256]{1,0} tanh(%dot.1)
  %param_2 = f32[256,64]{1,0} parameter(2)
  ROOT %dot.2 = f32[512,64]{1,0} dot(%tanh.1, %param_2), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

ENTRY %main (x: f32[512,64], w1: f32[64,256], w2: f32[256,64], g: f32[512,256], q: f32[8,16,32], k: f32[8,48,32], kt: f32[8,32,48]) -> f32[64,256] {
  %x = f32[512,64]{1,0} parameter(0)
  %w1 = f32[64,256]{1,0} parameter(1)
  %w2 = f32[256,64]{1,0} parameter(2)
  %g = f32[512,256]{1,0} parameter(3)
  %q = f32[8,16,32]{2,1,0} parameter(4)
  %k = f32[8,48,32]{2,1,0} parameter(5)
  %kt = f32[8,32,48]{1,2,0} parameter(6)
  %ff_fusion = f32[512,64]{1,0} fusion(%x, %w1, %w2), kind=kCustom, calls=%fused_ff
  %scores = f32[8,16,48]{2,1,0} dot(%q, %k), lhs_batch_dims={0}, lhs_contracting_dims={2}, rhs_batch_dims={0}, rhs_contracting_dims={2}
  %scores_t = f32[8,16,48]{2,1,0} dot(%q, %kt), lhs_batch_dims={0}, lhs_contracting_dims={2}, rhs_batch_dims={0}, rhs_contracting_dims={1}
  ROOT %wgrad = f32[64,256]{1,0} dot(%x, %g), lhs_contracting_dims={0}, rhs_contracting_dims={0}
}
"""  # noqa: E501


def test_products_and_their_stored_orientation_are_read_from_the_hlo():
    # Catches reading the orientation from the logical dims instead of the stored layout
    # (kt's {1,2,0} layout stores it [8, 48, 32], so its product is NT, not NN), mixing up
    # which side's contraction makes "T", or dropping the second dot of a fused feed-forward.
    module = roofline.Module.parse(STEP_HLO)
    assert dot_shapes.dot_shapes(module, "ff_fusion") == (
        DotShape(1, 512, 64, 256),
        DotShape(1, 512, 256, 64),
    )
    assert dot_shapes.dot_shapes(module, "wgrad") == (DotShape(1, 64, 512, 256, lhs_km=True),)
    nt = (DotShape(8, 16, 32, 48, rhs_nk=True),)
    assert dot_shapes.dot_shapes(module, "scores") == nt
    assert dot_shapes.dot_shapes(module, "scores_t") == nt
    assert [s.form for s in dot_shapes.dot_shapes(module, "wgrad")] == ["TN"]
    assert dot_shapes.dot_shapes(module, "x") == ()

    timed = [("ff_fusion", 0.5), ("scores", 0.25), ("scores_t", 0.25), ("x", 1.0)]
    ops = dot_shapes.step_dots(timed, module)
    assert ops == {
        dot_shapes.dot_shapes(module, "ff_fusion"): StepDots(1, 0.5),
        nt: StepDots(2, 0.5),
    }


def test_the_products_of_a_compiled_function_carry_its_flops():
    # Catches a product lost or mis-sized when XLA rewrites the dots (layouts, fusions): the
    # FLOPs of the products found must be those of the function's dots.
    def f(x, w, q, k):
        h = jnp.tanh(x @ w)
        return jnp.einsum("ld,lf->df", x, h), jnp.einsum("ncd,nwd->ncw", q, k)

    args = (jnp.ones((256, 64)), jnp.ones((64, 128)), jnp.ones((4, 16, 32)), jnp.ones((4, 48, 32)))
    module = roofline.Module.parse(jax.jit(f).lower(*args).compile().as_text())
    entry = module.computations[module.entry]  # what runs; fused dots are inside its fusions
    found = [s for name in entry for s in dot_shapes.dot_shapes(module, name)]
    assert sum(s.flops for s in found) == (
        2 * 256 * 64 * 128 + 2 * 64 * 256 * 128 + 2 * 4 * 16 * 32 * 48
    )


@pytest.mark.parametrize("lhs_km", [False, True])
@pytest.mark.parametrize("rhs_nk", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
def test_every_library_times_the_same_product(batch, lhs_km, rhs_nk):
    # Catches a timer that multiplies the stored operands in another orientation than the
    # one the step runs (e.g. XLA contracting the lhs's last axis for a TN product), which
    # would compare different products.
    shape = DotShape(batch, 6, 5, 4, lhs_km=lhs_km, rhs_nk=rhs_nk)
    lhs, rhs, a, b = dot_shapes.stored_operands(shape, np.random.default_rng(0))
    assert (lhs.shape, rhs.shape) == shape.operand_shapes()
    expected = np.matmul(a, b)
    assert expected.shape == ((batch,) if batch > 1 else ()) + (6, 4)
    logical_lhs = lhs.swapaxes(-1, -2) if lhs_km else lhs  # [.., m, k]
    logical_rhs = rhs.swapaxes(-1, -2) if rhs_nk else rhs  # [.., k, n]
    np.testing.assert_allclose(expected, logical_lhs @ logical_rhs, rtol=1e-6)
    xla = jax.lax.dot_general(lhs, rhs, dot_shapes.dimension_numbers(shape))
    np.testing.assert_allclose(np.asarray(xla), expected, rtol=1e-5, atol=1e-5)


def test_the_best_rate_includes_the_steps_own_and_combines_fused_products():
    # Catches a fused op's library rate taken as one product's (it must be the rate of
    # running both at their own rates) and a "best" that ignores the step's own rate (the
    # floor would then be slower than the step).
    small, large = DotShape(1, 10, 10, 10), DotShape(1, 100, 100, 100)
    rates = {small: {"NumPy (BLAS)": 0.001}, large: {"NumPy (BLAS)": 0.01}}  # GFLOP/s
    both = (small, large)
    seconds_at_library = small.flops / 1e6 + large.flops / 1e7  # 0.202 s
    assert dot_shapes.combined_rate(both, rates, "NumPy (BLAS)") == pytest.approx(
        (small.flops + large.flops) / seconds_at_library / 1e9  # GFLOP/s
    )
    assert dot_shapes.combined_rate(both, rates, "PyTorch") is None
    fast_step = StepDots(runs=1, seconds=seconds_at_library / 2)
    table = dot_shapes.markdown({both: fast_step}, rates)
    last = table.splitlines()[-1]
    assert last.startswith("| all |")
    assert float(last.rsplit("|", 2)[1]) == pytest.approx(fast_step.seconds, abs=0.006)


def test_main_adds_this_pythons_libraries_to_a_saved_run(tmp_path):
    # Catches --from-json losing the step's figures or re-timing (and overwriting) the rates
    # another Python measured, which is how the PyTorch column gets in.
    shape = DotShape(2, 16, 8, 16, rhs_nk=True)
    saved = dot_shapes.to_json({(shape,): StepDots(3, 0.25)}, {shape: {"PyTorch": 123.0}})
    source, out = tmp_path / "in.json", tmp_path / "out.json"
    source.write_text(json.dumps(saved))
    assert dot_shapes.main(["--from-json", str(source), "--json-out", str(out)]) == 0
    ops, rates = dot_shapes.from_json(json.loads(out.read_text()))
    assert ops == {(shape,): StepDots(3, 0.25)}
    assert rates[shape]["PyTorch"] == 123.0
    assert {"XLA alone", "NumPy (BLAS)"} <= set(rates[shape])
    assert all(rate > 0 for rate in rates[shape].values())
