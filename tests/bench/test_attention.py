"""bench/attention.py: every family of the kinds registry is measured, and the crossover
against full attention is located correctly."""

import math

import pytest

from bench import attention as bench
from reformer_jax.layers.attention import KINDS


def _result(series: str, length: int, us: float | None) -> bench.Result:
    return bench.Result(
        kind=series,
        n_hashes=None,
        length=length,
        batch=1,
        heads=1,
        d_head=8,
        chunk_len=None,
        n_buckets=None,
        dtype="float32",
        label=series,
        us_per_token=us,
    )


def test_every_kind_of_the_registry_is_a_series():
    """Catches a family added to the model but left out of the benchmark (or a series whose
    settings are not valid config fields: building the config validates them)."""
    args = bench.parse_args([])
    table = bench.series_table(args)
    assert {s.kind for s in table} == set(KINDS)
    assert {dict(s.settings).get("sparse_pattern") for s in table if s.kind == "sparse"} == {
        "star", "bigbird", "longformer", "strided", "fixed",
    }  # fmt: skip
    for series in table:
        cfg = series.config(args.heads, args.d_head)
        assert cfg.attention_pattern == (series.kind,)
        assert cfg.causal == (series.kind != "linformer")


def test_window_flag_reaches_the_window_kinds_and_their_names():
    """Catches --window parsed but not applied (the Pallas series would time the XLA kernel
    under another name), applied to kinds without a window, or series that keep the default
    name (their results would overwrite the XLA kernel's)."""
    from bench import train_step

    for window in ("xla", "pallas"):
        args = bench.parse_args(["--window", window])
        for series in bench.series_table(args):
            cfg = series.config(args.heads, args.d_head)
            windowed = series.kind in ("lsh", "local")
            assert cfg.window_implementation == (window if windowed else "xla")
            assert series.name.endswith(" (pallas)") == (windowed and window == "pallas")
        step_args = train_step.parse_args(["--window", window])
        assert train_step.model_config(step_args).window_implementation == window


def test_crossover_below_interpolated_extrapolated_and_never():
    """Catches a crossover taken on the wrong side of 1, interpolated linearly instead of in
    log-log, or read at lengths where full attention was not run without saying so."""
    full = {1024: 10.0, 2048: 20.0, 4096: 40.0}  # linear per token; not run beyond 4K
    results = [_result("full", n, us) for n, us in full.items()]
    results += [_result("full", 8192, None)]
    series = {
        "cheap": {1024: 5.0, 2048: 5.0},  # faster at the first length
        "middle": {1024: 20.0, 2048: 25.0, 4096: 30.0},  # ratio 2, 1.25, 0.75
        "late": {1024: 100.0, 4096: 100.0, 8192: 60.0},  # 10, 2.5, then 0.75 vs 80 (extrap.)
        "slow": {1024: 100.0, 2048: 200.0},
    }
    for name, values in series.items():
        results += [_result(name, n, us) for n, us in values.items()]
    cross = bench.crossovers(results)
    assert cross["cheap"]["length"] == 1024 and cross["cheap"]["how"] == "below"
    # log-log between 2K (ratio 1.25) and 4K (0.75): 2048 * 2 ** (log 1.25 / log(1.25 / 0.75))
    expected = 2048 * 2 ** (math.log(1.25) / math.log(1.25 / 0.75))
    assert cross["middle"]["how"] == "interpolated"
    assert cross["middle"]["length"] == pytest.approx(expected, abs=1)
    assert cross["late"]["how"] == "extrapolated"
    assert cross["late"]["ratio_basis"]["8192"] == "extrapolated"
    assert cross["late"]["ratios"]["8192"] == pytest.approx(60 / 80)
    assert cross["slow"]["length"] is None and cross["slow"]["how"] == "never"
    table = bench.crossover_table(results)
    assert "| middle | ~" in table and "(interpolated)" in table
    assert "| slow | not within the sweep |" in table
