"""bench/memory_scaling.py: the depth property on a tiny model, the length search, JSON/plots."""

import json

import pytest

from bench import memory_scaling as ms

TINY = ["--d", "32", "--heads", "2", "--ff", "64", "--chunk", "32"]


def _tiny_argv(layers: int, reversible: bool) -> list[str]:
    args = ms.parse_args(["depth", *TINY])
    return ms.step_argv(args, length=256, layers=layers, attn="local", reversible=reversible)


def test_reversible_memory_is_flat_with_depth_ordinary_grows():
    # Temporaries of the whole training step (gradients and Adam included): the reversible
    # stack recomputes activations, so only the parameter-sized buffers grow with depth; the
    # ordinary stack keeps every layer's activations for the backward pass.
    temp = {
        (layers, rev): ms.compiled_memory(_tiny_argv(layers, rev))["temp_bytes"]
        for layers in (2, 6)
        for rev in (True, False)
    }
    assert temp[6, True] <= 1.25 * temp[2, True], temp
    assert temp[6, False] >= 1.6 * temp[2, False], temp
    assert temp[6, False] >= 1.5 * temp[6, True], temp


def test_length_steps_are_powers_of_two_and_one_and_a_half():
    assert ms.length_steps(4096, 32768) == [4096, 6144, 8192, 12288, 16384, 24576, 32768]
    assert ms.length_steps(6000, 10000) == [6144, 8192]
    assert ms.length_steps(4096, 2**20)[-1] == 2**20


def test_search_stops_at_the_first_length_over_budget():
    asked = []

    def memory(length):
        asked.append(length)
        return {"total_bytes": length * 10, "compile_s": 0.0}

    rows = []
    best = ms.search_max_length([4096, 2048, 8192, 16384, 32768], memory, 100_000, rows.append)
    assert best == 8192
    assert asked == [2048, 4096, 8192, 16384]  # sorted, and nothing compiled after the miss
    assert [r["fits"] for r in rows] == [True, True, True, False]
    assert rows[-1]["length"] == 16384


def test_search_with_nothing_fitting_and_plain_byte_counts():
    assert ms.search_max_length([4096, 8192], lambda n: n, 100) is None
    assert ms.search_max_length([4096, 8192], lambda n: n, 10**6) == 8192


def test_budget_defaults_to_ram_minus_margin(monkeypatch):
    monkeypatch.setattr(ms, "total_ram_gib", lambda: 23.5)
    assert ms.parse_args(["length"]).budget_gib == 22.0
    assert ms.parse_args(["length", "--margin-gib", "3.5"]).budget_gib == 20.0
    assert ms.parse_args(["length", "--budget-gib", "8"]).budget_gib == 8.0
    assert ms.parse_args(["length", "--max-length", "1M"]).max_length == 2**20


@pytest.mark.parametrize("figure", ["depth", "length"])
def test_json_round_trip_replots(tmp_path, capsys, figure):
    args = ms.parse_args([figure, "--budget-gib", "1"] if figure == "length" else [figure])
    machine = {"cpu_model": "test cpu", "jax": "0", "backend": "cpu"}
    payload = {"figure": figure, "settings": ms._settings(args), "machine": machine}
    mem = {"temp_bytes": 2**29, "argument_bytes": 2**20, "output_bytes": 2**20, "alias_bytes": 0}
    if figure == "depth":
        payload["rows"] = [
            {"layers": n, "stack": s, "total_bytes": n * 2**28, "peak_rss_mib": 900.0, **mem}
            for n in (2, 4)
            for s in ms.STACKS
        ]
    else:
        payload["rows"] = [
            {"attn": "lsh", "length": 4096, "total_bytes": 2**29, "fits": True, **mem},
            {"attn": "lsh", "length": 6144, "total_bytes": 2**31, "fits": False, **mem},
            {"attn": "full", "length": 4096, "total_bytes": 2**31, "fits": False, **mem},
        ]
        payload["max_length"] = {"lsh": 4096, "full": None}
        payload["settings"]["kinds"] = ["full", "lsh"]
    path = tmp_path / f"memory_{figure}.json"
    ms.write_json(path, payload)
    assert json.loads(path.read_text()) == payload
    assert ms.main([figure, "--from-json", str(path)]) == 0
    table = capsys.readouterr().out
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if figure == "depth":
        assert "| 4 | ordinary | 1.00 | 0.50 | 0.88 |" in table
    else:
        assert "| lsh | 4K | 0.50 | - | 6K |" in table
        assert "| full | none | - | - | 4K |" in table
