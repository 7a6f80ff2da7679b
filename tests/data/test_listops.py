import numpy as np
import pytest

from reformer_jax.data import get_source
from reformer_jax.data.listops import (
    VOCAB,
    ListOps,
    evaluate_tokens,
    generate,
    read_tsv,
    tokenize,
    write_tsv,
)
from tests.data.lra_checks import check_conventions, take

SMALL = dict(min_length=20, max_length=80)


def _evaluate_source(source: str) -> int:
    """An independent evaluator: recursive descent over LRA's parenthesised string."""
    tokens = [t for t in source.split() if t not in "()"]

    def expr(i):
        t = tokens[i]
        if t.isdigit():
            return int(t), i + 1
        args, i = [], i + 1
        while tokens[i] != "]":
            v, i = expr(i)
            args.append(v)
        op = t[1:]
        value = {
            "MIN": min(args),
            "MAX": max(args),
            "MED": int(np.median(args)),  # LRA's definition.
            "SM": sum(args) % 10,
        }[op]
        return value, i + 1

    value, end = expr(0)
    assert end == len(tokens)
    return value


def test_lra_format_example():
    """Catches a bracketing that differs from LRA's release (parenthesis per argument)."""
    assert tokenize("( ( ( [MAX 2 ) 9 ) ] )").tolist() == [VOCAB["[MAX"], 3, 10, VOCAB["]"]]
    assert _evaluate_source("( ( ( [MED 2 ) 9 ) ] )") == 5
    assert evaluate_tokens(tokenize("( ( ( [MED 2 ) 9 ) ] )")) == 5
    with pytest.raises(ValueError, match="unknown token"):
        tokenize("( [FIRST 2 ] )")


def test_labels_equal_an_independent_evaluation():
    """Catches a wrong operator (MED rounding, SM without mod) or a label/expression mismatch."""
    rows = generate(60, seed=3, **SMALL)
    ops_seen = set()
    for source, target in rows:
        assert target == _evaluate_source(source)
        assert target == evaluate_tokens(tokenize(source))
        n = len(tokenize(source))
        assert SMALL["min_length"] < n < SMALL["max_length"]
        ops_seen |= {t for t in source.split() if t.startswith("[")}
        depth = max(np.cumsum([{"[": 1, "]": -1}.get(t[0], 0) for t in source.split()]))
        assert depth <= 10
        args_ok = all(
            2 <= len(a) <= 10
            for a in _arguments(source)  # At most 10 arguments per operator.
        )
        assert args_ok
    assert ops_seen == {"[MIN", "[MAX", "[MED", "[SM"}
    assert len({s for s, _ in rows}) == len(rows)  # Distinct.


def _arguments(source):
    """Argument lists of every operator (an independent parser)."""
    tokens = [t for t in source.split() if t not in "()"]
    stack, out = [], []
    for t in tokens:
        if t.startswith("["):
            stack.append([])
        elif t == "]":
            args = stack.pop()
            out.append(args)
            if stack:
                stack[-1].append("expr")
        else:
            stack[-1].append(t)
    return out


def test_regenerating_gives_identical_files(tmp_path):
    """Catches unseeded randomness (LRA's own generator cannot reproduce its splits)."""
    kw = dict(num_train=12, num_validation=3, num_test=3, seed=5, **SMALL)
    a = write_tsv(tmp_path / "a", **kw)
    b = write_tsv(tmp_path / "b", **kw)
    for split in a:
        assert a[split].read_bytes() == b[split].read_bytes()
    c = write_tsv(tmp_path / "c", **{**kw, "seed": 6})
    assert a["train"].read_bytes() != c["train"].read_bytes()
    text = a["train"].read_text()
    assert text.startswith("Source\tTarget\n") and text.count("\n") == 13
    assert a["validation"].name == "basic_val.tsv"
    tokens, labels = read_tsv(a["train"])
    assert len(tokens) == 12 and labels.dtype == np.int32


def test_source_reads_what_it_writes_and_follows_conventions(tmp_path):
    """Catches rows/labels shuffled apart, truncation or padding errors, broken determinism."""
    kw = dict(num_train=10, num_validation=5, num_test=3, generator_seed=2, **SMALL)
    src = ListOps(tmp_path, seq_len=64, **kw)
    assert (tmp_path / "basic_test.tsv").is_file()
    assert (src.vocab_size, src.num_classes, src.seq_len) == (16, 10, 64)
    in_memory = ListOps(None, seq_len=64, **kw)
    batch = take(src.batches("validation", 8), 1)[0]
    other = take(in_memory.batches("validation", 8), 1)[0]
    np.testing.assert_array_equal(batch.inputs, other.inputs)
    np.testing.assert_array_equal(batch.labels, other.labels)
    for row, mask, label, w in zip(
        batch.inputs, batch.mask, batch.labels, batch.weights, strict=True
    ):
        if w and mask.all():  # Truncated rows cannot be evaluated.
            continue
        if w:
            assert evaluate_tokens(row[mask]) == label
    assert batch.weights.tolist() == [1] * 5 + [0] * 3
    check_conventions(src)
    assert isinstance(
        get_source("listops", num_train=4, num_validation=2, num_test=2, **SMALL), ListOps
    )


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="basic_train.tsv.*listops-1000"):
        ListOps(tmp_path, generate_if_missing=False)
