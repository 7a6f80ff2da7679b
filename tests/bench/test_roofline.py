import jax
import jax.numpy as jnp
import pytest

from bench import roofline

# A window-loop iteration as XLA compiles it: a fusion that slices one block out of a stacked
# input and writes its result into a stacked output in place, and a sort.
LOOP_HLO = """
%fused_block (param_0: f32[64,32,64], param_1: s32[], param_2: f32[64,32,64]) -> f32[64,32,64] {
  %param_0 = f32[64,32,64]{2,1,0} parameter(0)
  %param_1 = s32[] parameter(1)
  %zero = s32[] constant(0)
  %dynamic-slice.1 = f32[1,32,64]{2,1,0} dynamic-slice(%param_2, %param_1, %zero, %zero), dynamic_slice_sizes={1,32,64}
  %exponential.1 = f32[1,32,64]{2,1,0} exponential(%dynamic-slice.1)
  %param_2 = f32[64,32,64]{2,1,0} parameter(2)
  ROOT %dynamic-update-slice.1 = f32[64,32,64]{2,1,0} dynamic-update-slice(%param_0, %exponential.1, %param_1, %zero, %zero)
}

ENTRY %main (p0: f32[64,32,64], p1: s32[], p2: f32[64,32,64], keys: s32[4,1024]) -> f32[64,32,64] {
  %p0 = f32[64,32,64]{2,1,0} parameter(0)
  %p1 = s32[] parameter(1)
  %p2 = f32[64,32,64]{2,1,0} parameter(2)
  %keys = s32[4,1024]{1,0} parameter(3)
  %sort.1 = s32[4,1024]{1,0} sort(%keys), dimensions={1}, to_apply=%compare
  ROOT %block_fusion = f32[64,32,64]{2,1,0} fusion(%p0, %p1, %p2), kind=kLoop, calls=%fused_block
}
"""  # noqa: E501


def test_dot_flops_match_xlas_cost_analysis_on_a_compiled_step():
    # Catches a wrong contraction in dot_flops (e.g. the output's or the rhs's dimensions),
    # checked against XLA's own count on the optimised HLO of dots in two layouts.
    def f(x, w1, w2):
        h = jnp.tanh(x @ w1)  # [128, 256] = [128, 64] @ [64, 256]
        return jnp.einsum("nf,df->nd", h, w2)  # contracts w2's last axis

    args = (jnp.ones((128, 64)), jnp.ones((64, 256)), jnp.ones((32, 256)))
    compiled = jax.jit(f).lower(*args).compile()
    module = roofline.Module.parse(compiled.as_text())
    works = [roofline.op_work(module, name) for name in module.computations[module.entry]]
    dot_flops = sum(w.flops for w in works if w is not None)
    assert dot_flops == 2 * 128 * 64 * 256 + 2 * 128 * 256 * 32
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    # XLA also counts the tanh's elementwise FLOPs; the dots are all but that.
    assert dot_flops <= cost["flops"] <= dot_flops + 20 * 128 * 256


def test_a_loop_block_is_charged_its_slice_and_update_not_the_stacks():
    # Catches charging a loop iteration the whole stacked input and output (64x the block):
    # the floor of the window loop's ops would then be 64x too high.
    module = roofline.Module.parse(LOOP_HLO)
    assert module.entry == "main" and module.roots["fused_block"] == "dynamic-update-slice.1"
    work = roofline.op_work(module, "block_fusion")
    block = 32 * 64 * 4
    assert (work.flops, work.bytes_read, work.bytes_written) == (0, block + 4, block)
    assert roofline.op_work(module, "p0") is None  # parameters move nothing


def test_sorts_are_reported_apart_and_not_given_a_floor():
    module = roofline.Module.parse(LOOP_HLO)
    machine = roofline.Machine(100.0, ((2**20, 50.0), (2**30, 10.0)))
    events = [("block_fusion", 1e-4), ("block_fusion", 1e-4), ("sort.1", 0.5), ("p0", 9.0)]
    table, ops = roofline.floors(events, module, machine, lambda name: "loop")
    row = table["loop"]
    assert row.sort_s == 0.5 and row.measured_s == pytest.approx(2e-4)
    block_bytes = 2 * 32 * 64 * 4 + 4
    assert row.floor_s == pytest.approx(2 * block_bytes / 50e9)
    assert row.dram_floor_s == pytest.approx(2 * block_bytes / 10e9)
    assert [op[0] for op in ops] == ["block_fusion"]
    text = roofline.markdown(table, machine)
    assert "sorts (not in the rows above" in text and "| 0.50 |" in text


def test_bandwidth_for_a_working_set_is_the_best_rate_of_any_size_holding_it():
    # Catches taking the rate of the first size that holds the footprint (here 90 GB/s: a
    # small buffer's loop overhead) or of the last size (DRAM) for cache-sized ops.
    machine = roofline.Machine(
        200.0, ((2 * 2**20, 90.0), (8 * 2**20, 200.0), (32 * 2**20, 140.0), (2**28, 27.0))
    )
    assert machine.bandwidth_for(2**20) == 200.0
    assert machine.bandwidth_for(16 * 2**20) == 140.0
    assert machine.bandwidth_for(2**27) == 27.0
    assert machine.bandwidth_for(2**32) == 27.0
    # A dot is bound by its FLOPs when they take longer than its bytes.
    dot = roofline.Work(flops=4 * 10**9, bytes_read=10**6, bytes_written=10**6)
    assert machine.floor_s(dot) == pytest.approx(4e9 / 200e9)
    copy = roofline.Work(flops=0, bytes_read=2**27, bytes_written=2**27)
    assert machine.floor_s(copy) == pytest.approx(2**28 / 27e9)


def test_memory_bandwidth_measures_every_size():
    rates = roofline.memory_bandwidth(sizes_mib=(1, 2), passes=2, repeats=1)
    assert [size for size, _ in rates] == [2 * 2**20, 4 * 2**20]
    assert all(rate > 0 for _, rate in rates)
