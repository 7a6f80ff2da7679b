"""Benchmark command lines: bad arguments are argparse usage errors, before any measuring."""

import importlib

import pytest


@pytest.mark.parametrize(
    ("module", "argv"),
    [
        ("ablations", []),
        ("attention", []),
        ("duplication_table", []),
        ("memory_scaling", ["depth"]),
        ("peers", []),
    ],
)
def test_missing_results_json_is_a_usage_error(module, argv, tmp_path, capsys):
    """Bug caught: ``--from-json`` naming a missing file ends in a FileNotFoundError traceback
    (read_text) instead of an error naming the flag and the fix."""
    parse_args = importlib.import_module(f"bench.{module}").parse_args
    with pytest.raises(SystemExit) as exit_info:
        parse_args([*argv, "--from-json", str(tmp_path / "nope.json")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "--from-json" in err and "no such results file" in err, err
