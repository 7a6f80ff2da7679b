"""Benchmarks for reformer_jax (run as modules, e.g. ``python -m bench.attention``)."""

import argparse
import pathlib


def results_json(text: str) -> pathlib.Path:
    """argparse type of ``--from-json``: an existing results file (one-line usage error else)."""
    path = pathlib.Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(
            f"{text}: no such results file; run the benchmark first (it writes one under "
            "bench/results/) or give the path of one"
        )
    return path
