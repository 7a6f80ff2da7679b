"""bench/duplication_table.py: the table, its JSON round trip, the workdir guard, a smoke run."""

import json

import pytest

from bench import duplication_table as dt


def _payload(rows):
    return {
        "machine": {
            "cpu_model": "test cpu",
            "cpus_usable": 2,
            "backend": "cpu",
            "jax": "0",
            "jaxlib": "0",
        },
        "settings": {
            "seq_len": 128,
            "vocab_size": 128,
            "batch_size": 16,
            "learning_rate": 1e-3,
            "chunk_len": 32,
            "n_buckets": 8,
            "eval_hashes": [1, 2, 4, 8],
            "eval_rows": 256,
            "scored_per_row": 63,
        },
        "rows": rows,
    }


def _row(name, acc, steps=10, train_s=1.5):
    columns = ["full", "lsh-1", "lsh-2", "lsh-4", "lsh-8"]
    return {
        "trained_with": name,
        "steps": steps,
        "train_s": train_s,
        "eval": dict(zip(columns, acc, strict=True)),
    }


def test_parse_steps():
    assert dt.parse_steps("") == dt.DEFAULT_STEPS
    assert dt.parse_steps("7") == dict.fromkeys(dt.ROWS, 7)
    assert dt.parse_steps("full=5,lsh=9,lsh-1=11") == {
        "full": 5,
        "lsh-4": 9,
        "lsh-2": 9,
        "lsh-1": 11,
    }
    assert dt.parse_steps("3", ["full", "lsh-2"]) == {"full": 3, "lsh-2": 3}
    assert dt.parse_steps("full=3,lsh-4=5", ["lsh-2"]) == {"lsh-2": dt.DEFAULT_STEPS["lsh-2"]}
    for bad in ("x", "full=", "=3", "lsh-3=4", "full=-1"):
        with pytest.raises(dt.UsageError):
            dt.parse_steps(bad)
    assert dt.parse_rows("lsh-1,full") == ["full", "lsh-1"]  # always the paper's order
    with pytest.raises(dt.UsageError):
        dt.parse_rows("lsh-8")


def test_table_has_paper_order_and_numbers():
    payload = _payload(
        {
            "lsh-1": _row("lsh-1", [0.01, 0.5, 0.6, 0.7, 0.8], steps=30, train_s=12.34),
            "full": _row("full", [1.0, 0.2, 0.3, 0.4, 0.9991]),
        }
    )
    lines = dt.format_table(payload).splitlines()
    assert (
        lines[0]
        == "| trained \\ evaluated | full | LSH-8 | LSH-4 | LSH-2 | LSH-1 | steps | train s |"
    )
    assert lines[2] == (
        "| full | 100.0 (100.0) | 99.9 (94.8) | 40.0 (92.5) | 30.0 (76.9) | 20.0 (52.5) "
        "| 10 | 1.5 |"
    )
    assert lines[3] == (
        "| LSH-1 | 1.0 (0.8) | 80.0 (99.9) | 70.0 (99.6) | 60.0 (94.8) | 50.0 (77.9) | 30 | 12.3 |"
    )
    assert len(lines) == 6 and "second copy" in lines[5] and "256 rows x 63" in lines[5]


def test_json_round_trip(tmp_path, capsys):
    payload = _payload({"lsh-2": _row("lsh-2", [0.008, 0.9, 0.95, 0.99, 1.0])})
    path = tmp_path / "sub" / "table.json"
    dt.write_json(path, payload)
    assert json.loads(path.read_text()) == payload
    assert not list(path.parent.glob("*.tmp"))
    capsys.readouterr()
    assert dt.main(["--from-json", str(path)]) == 0
    out = capsys.readouterr().out
    assert dt.format_table(payload) in out
    assert "| LSH-2 | 0.8 (0.8) | 100.0 (100.0) | 99.0 (99.9) | 95.0 (98.1) | 90.0 (86.8) |" in out


def test_refuses_existing_workdir(tmp_path, capsys):
    (tmp_path / "root" / "lsh-1").mkdir(parents=True)
    out = tmp_path / "table.json"
    argv = ["--workdir", str(tmp_path / "root"), "--train", "full,lsh-1", "--out", str(out)]
    assert dt.main(argv) == 2
    err = capsys.readouterr().err
    assert "lsh-1 already exist" in err and "--resume" in err
    assert not (tmp_path / "root" / "full").exists()  # nothing trained, not even the first row
    assert not out.exists()
    assert not list((tmp_path / "root" / "lsh-1").iterdir())


def test_train_seconds_dedupes_resumed_steps(tmp_path):
    records = [
        {"step": 0, "split": "compile"},
        {"step": 2, "split": "train", "step_time": 1.0},
        {"step": 4, "split": "train", "step_time": 9.0},  # lost to a preemption, redone below
        {"step": 4, "split": "train", "step_time": 2.0},
        {"step": 4, "split": "eval", "loss": 1.0},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert dt.train_seconds(tmp_path) == pytest.approx(2 * 1.0 + 2 * 2.0)


def test_smoke_run_and_resume(tmp_path, capsys):
    """One LSH row, two steps at length 32, then the same command again (seconds)."""
    root, out = tmp_path / "runs", tmp_path / "table.json"
    argv = [
        "--seq-len", "32", "--chunk-len", "8", "--steps", "full=3,lsh=2", "--train", "lsh-1",
        "--eval-hashes", "1", "--eval-batches", "1", "--eval-batch-size", "8",
        "--batch-size", "8", "--workdir", str(root), "--out", str(out),
    ]  # fmt: skip
    assert dt.main(argv) == 0
    payload = json.loads(out.read_text())
    assert list(payload["rows"]) == ["lsh-1"]
    assert payload["settings"]["steps"] == {"lsh-1": 2}
    assert payload["settings"]["n_buckets"] == 8 and payload["settings"]["scored_per_row"] == 15
    assert payload["machine"]["jax"]
    record = payload["rows"]["lsh-1"]
    assert set(record["eval"]) == {"full", "lsh-1"}
    assert all(0.0 <= v <= 1.0 for v in record["eval"].values())
    assert record["train_s"] > 0 and record["wall_s"] >= record["train_s"]
    config = json.loads((root / "lsh-1" / "config.json").read_text())
    assert config["train"]["num_steps"] == 2
    assert config["model"]["full_attention_below"] == 0 and config["model"]["lsh_n_hashes"] == 1
    assert dt.format_table(payload) in capsys.readouterr().out

    assert dt.main(argv) == 2  # the run exists now
    assert dt.main([*argv, "--resume"]) == 0  # finished: re-evaluated, training time kept
    again = json.loads(out.read_text())["rows"]["lsh-1"]
    assert again["wall_s"] == record["wall_s"] and again["eval"] == record["eval"]
    assert "reevaluated_s" in again


def test_full_row_config():
    args = dt.parse_args(["--seq-len", "64", "--chunk-len", "16"])
    config = dt.row_config(args, "full", 5)
    assert config.model.full_attention_below == 65  # exact shared-QK attention while training
    assert config.model.lsh_n_buckets == 8 and config.data.settings.seq_len == 64
    assert config.num_steps == 5 and config.warmup_steps == 5 and config.eval_hashes == [1, 2, 4, 8]
    lsh = dt.row_config(args, "lsh-2", 5).model
    assert lsh.full_attention_below == 0 and lsh.lsh_n_hashes == 2
