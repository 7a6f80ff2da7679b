"""Benchmark command lines: bad arguments are argparse usage errors, before any measuring."""

import importlib

import pytest


@pytest.mark.parametrize(
    ("module", "argv"),
    [
        ("ablations", []),
        ("approximation", []),
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


def test_lra_dashboard_without_results_is_one_line(tmp_path, capsys):
    """Bug caught: ``bench.lra --dashboard`` without a results file (the default path does not
    exist until the harness ran) ends in a FileNotFoundError traceback."""
    from bench import lra

    assert lra.main(["--dashboard", "--from-json", str(tmp_path / "nope.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --from-json") and err.count("\n") == 1, err
    assert not list(tmp_path.iterdir())
