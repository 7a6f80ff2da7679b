"""LRA ListOps: nested MIN / MAX / MED / SM (sum mod 10) expressions over digits, 10 classes.

**Task** (Tay et al. 2021, after Nangia & Bowman 2018). An expression such as
``[MAX 2 9 [MIN 4 7 ] 0 ]`` is classified by its value (a digit). Operators: ``MIN``, ``MAX``,
``MED`` (median of the arguments; for an even count the mean of the two middle values rounded
down, as LRA's ``int(np.median(...))``), ``SM`` (sum mod 10).

**Generator** (`generate`; LRA's parameters, our own code and seeding). A node at depth
``d < max_depth`` is an operator with probability 1/4 (else a digit, uniform in 0..9); at
``max_depth`` it is a digit. An operator takes between 2 and ``max_args`` arguments (uniform) and
an operator chosen uniformly. The length of an expression counts its operators, digits and closing
brackets (parentheses excluded, LRA's count); expressions are drawn until ``min_length < length <
max_length`` (strict, as LRA), duplicates are dropped, and the first ``num_train`` distinct
expressions are the training split, the next ``num_validation`` the validation split, then
``num_test`` the test split (LRA: 96,000 / 2,000 / 2,000, depth 10, 10 arguments, lengths 500 to
2,000). Randomness is ``random.Random(seed)`` (only its ``random()``, whose stream Python keeps
stable), so a seed gives identical files on every machine. LRA's own generator sets no seed and
its splits cannot be regenerated. Time (pure Python, one core): about 2 ms per kept expression
on a quiet core of this project's machine, 5 ms under its usual load, so LRA's 100,000 take 3 to 9
minutes; write them once with `write_tsv` (or ``ListOps(data_dir)``, which writes missing files)
and later runs read the TSVs (about 0.2 ms per expression).

**Files** (LRA's release format, read and written): ``{task}_train.tsv``, ``{task}_val.tsv``,
``{task}_test.tsv`` (task ``"basic"`` in LRA's release, directory ``listops-1000/``), tab
separated with a ``Source\\tTarget`` header, written by Python's ``csv`` module (``\\r\\n`` line
ends). ``Source`` is LRA's binary-tree bracketing of the expression, e.g.
``( ( ( [MAX 2 ) 9 ) ] )`` for ``[MAX 2 9 ]``: every argument after the operator and the closing
bracket opens a parenthesis pair.

**Tokens** (fixed vocabulary, `VOCAB`): pad 0, digits ``0..9`` -> 1..10, ``[MIN`` 11, ``[MAX``
12, ``[MED`` 13, ``[SM`` 14, ``]`` 15; parentheses are dropped (as LRA's pipeline does), so an
expression of LRA length ``n`` is ``n`` tokens. ``seq_len`` defaults to 2,000.
"""

from __future__ import annotations

import csv
import io
import os
import random
from collections.abc import Sequence

import numpy as np
from etils import epath

from reformer_jax.data.examples import ExampleSource
from reformer_jax.paths import as_path

__all__ = [
    "OPERATORS",
    "VOCAB",
    "ListOps",
    "evaluate_tokens",
    "generate",
    "read_tsv",
    "tokenize",
    "write_tsv",
]

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
#: Token string -> id (0 is padding).
VOCAB: dict[str, int] = {
    **{str(d): d + 1 for d in range(10)},
    **{op: 11 + i for i, op in enumerate(OPERATORS)},
    END: 15,
}
VOCAB_SIZE = 16
#: LRA's file name of each split (task ``basic``).
FILE_SPLITS = {"train": "train", "validation": "val", "test": "test"}

_VALUE_P = 0.25  # LRA: probability that a node above max depth is an operator.


class _TooLong(Exception):
    pass


def _apply(op: int, args: list[int]) -> int:
    if op == 0:
        return min(args)
    if op == 1:
        return max(args)
    if op == 2:
        s = sorted(args)
        k = len(s) // 2
        return s[k] if len(s) % 2 else (s[k - 1] + s[k]) // 2
    return sum(args) % 10


def _tree(rnd: random.Random, depth: int, max_depth: int, max_args: int, budget: list[int]):
    """(source parts appended in place, value, length) of one random subtree; aborts if too long."""
    if depth < max_depth and rnd.random() <= _VALUE_P:
        op = min(int(rnd.random() * 4), 3)
        n_args = 2 + min(int(rnd.random() * (max_args - 1)), max_args - 2)
        budget[0] -= 2
        parts: list[str] = ["( " * (n_args + 1), OPERATORS[op]]
        values = []
        for i in range(n_args):
            sub, value = _tree(rnd, depth + 1, max_depth, max_args, budget)
            parts.append(" ")
            parts.extend(sub)
            parts.append(" )")
            values.append(value)
            del i
        parts.append(" ] )")
        if budget[0] < 0:
            raise _TooLong
        return parts, _apply(op, values)
    budget[0] -= 1
    if budget[0] < 0:
        raise _TooLong
    value = min(int(rnd.random() * 10), 9)
    return [str(value)], value


def generate(
    num_examples: int,
    *,
    seed: int = 0,
    max_depth: int = 10,
    max_args: int = 10,
    min_length: int = 500,
    max_length: int = 2000,
) -> list[tuple[str, int]]:
    """``num_examples`` distinct ``(source, target)`` pairs in LRA's format (module docstring)."""
    if max_args < 2 or max_depth < 1 or not 0 <= min_length < max_length - 1:
        raise ValueError(
            f"listops: need max_args >= 2, max_depth >= 1, 0 <= min_length < max_length - 1; got "
            f"{max_args}, {max_depth}, {min_length}, {max_length}"
        )
    rnd = random.Random(seed)
    seen: set[str] = set()
    out: list[tuple[str, int]] = []
    while len(out) < num_examples:
        budget = [max_length - 1]  # Lengths >= max_length are rejected: stop early.
        try:
            parts, value = _tree(rnd, 1, max_depth, max_args, budget)
        except _TooLong:
            continue
        length = max_length - 1 - budget[0]
        if length <= min_length:
            continue
        source = "".join(parts)
        if source not in seen:
            seen.add(source)
            out.append((source, value))
    return out


def write_tsv(
    data_dir: str | os.PathLike,
    *,
    task: str = "basic",
    num_train: int = 96_000,
    num_validation: int = 2_000,
    num_test: int = 2_000,
    seed: int = 0,
    **generator_settings,
) -> dict[str, epath.Path]:
    """Generates the three splits (`generate`) and writes them as LRA's TSVs; returns the paths."""
    counts = {"train": num_train, "validation": num_validation, "test": num_test}
    rows = generate(sum(counts.values()), seed=seed, **generator_settings)
    data_dir = as_path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    paths, start = {}, 0
    for split, count in counts.items():
        path = data_dir / f"{task}_{FILE_SPLITS[split]}.tsv"
        tmp = path.with_suffix(".tsv.tmp")
        text = io.StringIO(newline="")
        writer = csv.writer(text, delimiter="\t")
        writer.writerow(["Source", "Target"])
        writer.writerows(rows[start : start + count])
        tmp.write_text(text.getvalue())
        tmp.replace(path)  # No half-written split is ever mistaken for a finished one.
        paths[split] = path
        start += count
    return paths


# Token classification by bytes: digits, "[M?" / "[S" operators, "]"; parentheses and spaces
# are skipped. A vectorised tokenizer: LRA's files hold ~10^8 tokens.
_DIGIT0 = ord("0")


def tokenize(source: str | bytes) -> np.ndarray:
    """``int32[n]`` token ids (`VOCAB`) of an expression in LRA's format (parentheses dropped)."""
    raw = np.frombuffer(source.encode() if isinstance(source, str) else source, np.uint8)
    if raw.size == 0:
        return np.zeros(0, np.int32)
    is_space = raw == ord(" ")
    start = ~is_space & np.concatenate([[True], is_space[:-1]])
    idx = np.flatnonzero(start)
    first = raw[idx]
    nxt = np.concatenate([raw, np.zeros(3, np.uint8)])
    second, third = nxt[idx + 1], nxt[idx + 2]
    ids = np.full(idx.shape, -1, np.int32)
    digit = (first >= _DIGIT0) & (first <= _DIGIT0 + 9)
    ids[digit] = first[digit].astype(np.int32) - _DIGIT0 + 1
    ids[first == ord("]")] = VOCAB[END]
    bracket = first == ord("[")
    ids[bracket & (second == ord("S"))] = VOCAB["[SM"]
    m = bracket & (second == ord("M"))
    ids[m & (third == ord("I"))] = VOCAB["[MIN"]
    ids[m & (third == ord("A"))] = VOCAB["[MAX"]
    ids[m & (third == ord("E"))] = VOCAB["[MED"]
    paren = (first == ord("(")) | (first == ord(")"))
    bad = (ids < 0) & ~paren
    if bad.any():
        token = bytes(raw[idx[bad][0] :]).split(b" ")[0].decode(errors="replace")
        raise ValueError(f"listops: unknown token {token!r}; known: {sorted(VOCAB)} and ( )")
    return ids[~paren]


def evaluate_tokens(tokens: Sequence[int] | np.ndarray) -> int:
    """The value of a tokenized expression (a stack evaluator, independent of the generator)."""
    stack: list[list[int]] = [[]]
    for t in np.asarray(tokens).tolist():
        if 1 <= t <= 10:
            stack[-1].append(t - 1)
        elif 11 <= t <= 14:
            stack.append([t])  # Operator id first, then its arguments.
        elif t == 15:
            op, *args = stack.pop()
            stack[-1].append(_apply(op - 11, args))
        else:
            raise ValueError(f"listops: token id {t} is not an expression token")
    if len(stack) != 1 or len(stack[0]) != 1:
        raise ValueError("listops: unbalanced expression")
    return stack[0][0]


def read_tsv(path: str | os.PathLike) -> tuple[list[np.ndarray], np.ndarray]:
    """(token arrays (uint8), labels int32) of one LRA ListOps TSV (``Source\\tTarget`` header)."""
    path = as_path(path)
    tokens, labels = [], []
    with path.open("r") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header != ["Source", "Target"]:
            raise ValueError(f"{path}: expected the header 'Source\\tTarget', got {header!r}")
        for row in reader:
            if not row:
                continue
            tokens.append(tokenize(row[0]).astype(np.uint8))
            labels.append(int(row[1]))
    return tokens, np.asarray(labels, np.int32)


class ListOps(ExampleSource):
    """LRA ListOps as a classification source (module docstring).

    Args:
      data_dir: directory of ``{task}_train.tsv``, ``{task}_val.tsv``, ``{task}_test.tsv`` (LRA's
        release, ``lra_release/listops-1000/``, or files written by `write_tsv`). None: generate
        the examples in memory (no files).
      task: file name prefix (LRA: ``"basic"``).
      seq_len: row length (LRA: 2,000); longer expressions are truncated.
      generate_if_missing: with ``data_dir`` set and the files absent, generate and write them
        (else a missing file is an error saying what to place where).
      num_train, num_validation, num_test, generator_seed, max_depth, max_args, min_length,
        max_length: generator settings (LRA's by default), used only when generating.
    """

    vocab_size = VOCAB_SIZE
    num_classes = 10
    splits = ("train", "validation", "test")
    split_aliases = {"eval": "validation", "val": "validation"}

    def __init__(
        self,
        data_dir: str | os.PathLike | None = None,
        *,
        task: str = "basic",
        seq_len: int = 2000,
        generate_if_missing: bool = True,
        num_train: int = 96_000,
        num_validation: int = 2_000,
        num_test: int = 2_000,
        generator_seed: int = 0,
        max_depth: int = 10,
        max_args: int = 10,
        min_length: int = 500,
        max_length: int = 2000,
    ):
        if seq_len <= 0:
            raise ValueError(f"listops.seq_len: {seq_len} must be positive")
        self.seq_len = int(seq_len)
        settings = dict(
            seed=generator_seed,
            max_depth=max_depth,
            max_args=max_args,
            min_length=min_length,
            max_length=max_length,
        )
        counts = {"train": num_train, "validation": num_validation, "test": num_test}
        self._data: dict[str, tuple[list[np.ndarray], np.ndarray]] = {}
        if data_dir is None:
            rows = generate(sum(counts.values()), **settings)
            start = 0
            for split, count in counts.items():
                part = rows[start : start + count]
                start += count
                self._data[split] = (
                    [tokenize(s).astype(np.uint8) for s, _ in part],
                    np.asarray([t for _, t in part], np.int32),
                )
            return
        data_dir = as_path(data_dir)
        paths = {s: data_dir / f"{task}_{FILE_SPLITS[s]}.tsv" for s in self.splits}
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            if not generate_if_missing:
                raise FileNotFoundError(
                    f"ListOps files {missing} do not exist: place LRA's released "
                    f"{task}_train.tsv, {task}_val.tsv and {task}_test.tsv (lra_release/"
                    f"listops-1000/) in {data_dir}, or pass generate_if_missing=True"
                )
            write_tsv(
                data_dir,
                task=task,
                num_train=num_train,
                num_validation=num_validation,
                num_test=num_test,
                **settings,
            )
        for split, path in paths.items():
            self._data[split] = read_tsv(path)

    def _split_len(self, split: str) -> int:
        return len(self._data[split][1])

    def _example(self, split: str, index: int):
        tokens, labels = self._data[split]
        return tokens[index].astype(np.int32), int(labels[index])
