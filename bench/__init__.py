"""Benchmarks for reformer_jax (run as modules, e.g. ``python -m bench.attention``)."""
