"""Approximation quality: each attention family's output against exact attention, on the
activations of a trained text model.

Random Gaussian queries and keys make every approximation look alike (their attention is nearly
uniform); a trained model's attention is peaked, local in places and global in others, which is
what the families must reproduce. So this benchmark

1. trains a small byte-level language model with exact attention (separate query and key
   projections, reversible layers; ``bench/ablations.py``'s ``separate-qk`` model and corpus:
   CPython's ``pydoc_data/topics.py`` prose) with the library's ``train_and_evaluate``;
2. captures one layer's queries, keys and values ``[batch, heads, length, d_head]`` on held-out
   windows of the corpus at a few lengths (:func:`capture_qkv`, which runs the model's own
   layers and is checked against the model's logits);
3. runs every family and setting on them through the model's attention kinds
   (``reformer_jax.layers.attention.KINDS``, configured by ``ReformerConfig`` fields, as a
   model layer would run them) and reports the relative error
   ``||out - exact||_F / ||exact||_F`` over all positions, heads and windows.

The exact reference is ``full_attention`` with the same masking (causal, or bidirectional),
except for LSH, which approximates *shared-QK* attention: its reference is the LSH kind's own
exact path (``full_attention_below`` above the length: the unit-length queries as keys, a token
attending to itself only when nothing else is allowed), fed the layer's queries as the shared
query/key. Families that draw at random (LSH rotations, Performer features) or are initialised
at random (Linformer's length projections, which the paper learns; here at their initialisation,
i.e. the Johnson-Lindenstrauss projection the paper's argument rests on) are averaged over
``--draws`` draws. Linformer cannot be causal, so it is measured in the bidirectional mode only;
every other family in both.

    python -m bench.approximation                     # train (or reuse) the model, measure
    python -m bench.approximation --from-json bench/results/approximation.json   # table only

Results: JSON at ``--out`` (every setting's errors per length, the model, its final eval loss,
the machine) and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bench import results_json
from bench.attention import Series
from bench.machine import machine_info
from reformer_jax.layers.attention import KINDS
from reformer_jax.runtime import configure_xla

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "approximation.json"
DEFAULT_LENGTHS = (128, 256, 512)


# ----------------------------------------------------------------------------------------------
# The families and settings.


def settings_table(args: argparse.Namespace) -> list[tuple[str, Series]]:
    """``(family, series)`` for every measured setting, in order (the series name says the
    setting). Sizes are absolute (tokens), so at longer lengths a setting covers less."""
    rows: list[tuple[str, Series]] = []
    for chunk in args.local_chunks:
        rows.append(
            ("local", Series(f"local chunk {chunk}", "local", (("local_chunk_len", chunk),)))
        )
    for h in args.hashes:
        rows.append(
            (
                "lsh",
                Series(
                    f"lsh x{h} (chunk {args.lsh_chunk})",
                    "lsh",
                    (("lsh_chunk_len", args.lsh_chunk), ("lsh_n_hashes", h)),
                ),
            )
        )
    rows.append(("star", Series("star", "sparse", (("sparse_pattern", "star"),))))
    for block in args.bigbird_blocks:
        rows.append(
            (
                "bigbird",
                Series(
                    f"bigbird block {block} (3 window, 2 global, 3 random)",
                    "sparse",
                    (("sparse_pattern", "bigbird"), ("sparse_block_len", block)),
                ),
            )
        )
    for window in args.longformer_windows:
        rows.append(
            (
                "longformer",
                Series(
                    f"longformer window {window} + global token 0",
                    "sparse",
                    (
                        ("sparse_pattern", "longformer"),
                        ("sparse_window", window),
                        ("sparse_global_positions", (0,)),
                    ),
                ),
            )
        )
    for stride in args.strides:
        rows.append(
            (
                "strided",
                Series(
                    f"strided stride {stride}",
                    "sparse",
                    (("sparse_pattern", "strided"), ("sparse_block_len", stride)),
                ),
            )
        )
    for block, c in args.fixed:
        rows.append(
            (
                "fixed",
                Series(
                    f"fixed block {block}, c {c}",
                    "sparse",
                    (
                        ("sparse_pattern", "fixed"),
                        ("sparse_block_len", block),
                        ("sparse_summary_len", c),
                    ),
                ),
            )
        )
    for k in args.linformer_ks:
        rows.append(
            (
                "linformer",
                Series(
                    f"linformer k {k}",
                    "linformer",
                    (("linformer_k", k), ("linformer_sharing", "head")),
                    causal=False,
                ),
            )
        )
    for m in args.features:
        rows.append(
            (
                "performer",
                Series(f"performer {m} features", "performer", (("performer_n_features", m),)),
            )
        )
    return rows


def _mode_series(series: Series, causal: bool, length: int) -> Series:
    """The series in one masking mode; bidirectional windows look one chunk ahead too, and
    Linformer's projections span the measured length."""
    extra: list[tuple[str, Any]] = []
    if not causal and series.kind in ("local", "lsh"):
        extra.append((f"{series.kind}_chunks_after", 1))
    if series.kind == "linformer":
        extra.append(("max_len", length))
    return Series(series.name, series.kind, series.settings + tuple(extra), causal=causal)


# ----------------------------------------------------------------------------------------------
# The trained model and its activations.


def train_model(args: argparse.Namespace) -> Path:
    """Trains (or reuses, if complete) the exact-attention text model; returns its workdir."""
    from bench import ablations
    from reformer_jax.train.trainer import train_and_evaluate

    workdir = args.workdir.absolute()
    corpus, _ = ablations.prepare_corpus(workdir, args.corpus)
    config = ablations.train_config(_ablation_args(args), "separate-qk", args.seed, corpus)
    run = workdir / "model"
    metrics = ablations.read_metrics(run)
    if not (metrics["eval"] and metrics["eval"][-1]["step"] == args.steps):
        train_and_evaluate(config, run)
    return run


def _ablation_args(args: argparse.Namespace) -> argparse.Namespace:
    return argparse.Namespace(
        seq_len=max(args.lengths),
        eval_fraction=args.eval_fraction,
        d_model=args.d_model,
        d_ff=args.d_ff,
        layers=args.layers,
        heads=args.heads,
        dropout=0.0,
        batch=args.batch,
        steps=args.steps,
        lr=args.lr,
        warmup=args.warmup,
        eval_every=args.eval_every,
    )


def _layer(module: nnx.Module, group: int) -> nnx.Module:
    """Layer ``group`` of a module whose parameters are stacked over the groups."""
    graph, state = nnx.split(module)
    return nnx.merge(graph, jax.tree.map(lambda a: a[group], state))


def capture_qkv(model: Any, tokens_BL: jax.Array, layer: int) -> tuple[Any, jax.Array]:
    """``((q, k, v), logits)``: the attention inputs ``[B, H, L, d_head]`` of ``layer`` (``k``
    None for shared-QK kinds) and the logits of the same forward pass.

    Runs the model's own embedding, layers and head one layer at a time (deterministic, no
    dropout), following the residual architecture of its config; the logits let a caller check
    this forward pass against ``model(tokens)``.
    """
    cfg = model.cfg
    if any(
        KINDS[k].draw(cfg, jax.random.key(0), tokens_BL.shape[1]) is not None
        for k in cfg.attention_pattern
    ):
        raise ValueError("capture_qkv: the model's kinds draw at random; use an exact model")
    x = model.embed(tokens_BL)
    pos = model.positions(tokens_BL.shape[1])
    if pos is not None:
        x = x + pos.astype(x.dtype)[None]
    x = x.astype(cfg.compute_dtype)
    n_pattern = len(cfg.attention_pattern)
    x1 = x2 = x
    captured = None
    for i in range(cfg.n_layers):
        block = model.blocks[i % n_pattern]
        attention = _layer(block.attention, i // n_pattern)
        feedforward = _layer(block.feedforward, i // n_pattern)
        attn_in = x2 if cfg.residual == "reversible" else x1
        if i == layer:
            captured = attention.project(attention.norm(attn_in))
        a, _ = attention(attn_in, mask=None, dropout_key=None)
        if cfg.residual == "reversible":
            x1 = x1 + a
            x2 = x2 + feedforward(x1, dropout_key=None)
        else:
            x1 = x1 + a
            x1 = x1 + feedforward(x1, dropout_key=None)
    h = jnp.concatenate([x1, x2], axis=-1) if cfg.residual == "reversible" else x1
    logits = model.head(model.final_norm(h)).astype(jnp.float32)
    if captured is None:
        raise ValueError(f"capture_qkv: layer {layer} is not in 0..{cfg.n_layers - 1}")
    return captured, logits


def heldout_windows(corpus: Path, eval_fraction: float, length: int, n: int) -> np.ndarray:
    """``n`` evenly spaced, non-overlapping windows of ``length`` bytes from the held-out tail
    of the corpus (the trainer's ``eval`` split), ``[n, length]`` int32."""
    from reformer_jax.data.text import TextFile

    data = TextFile(corpus, seq_len=length, eval_fraction=eval_fraction).split_bytes("eval")
    if len(data) < n * length:
        raise ValueError(
            f"--windows {n} x {length} bytes need {n * length} held-out bytes, the corpus has "
            f"{len(data)}; use fewer --windows or a larger --eval-fraction"
        )
    step = len(data) // n
    return np.stack([np.asarray(data[i * step : i * step + length]) for i in range(n)]).astype(
        np.int32
    )


# ----------------------------------------------------------------------------------------------
# Errors.


def relative_error(out: jax.Array, ref: jax.Array) -> float:
    """``||out - ref||_F / ||ref||_F`` in float64 on the host."""
    out64, ref64 = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(out64 - ref64) / np.linalg.norm(ref64))


def _reference(series: Series, cfg: Any, q, k, v) -> jax.Array:
    length = q.shape[2]
    if series.kind == "lsh":  # exact shared-QK attention: LSH's own path below the threshold
        exact = cfg.replace(full_attention_below=length + 1)
        out, _ = KINDS["lsh"].attend(exact, q, None, v, mask=None, dropout_key=None)
        return out
    exact = cfg.replace(attention_pattern=("full",))
    out, _ = KINDS["full"].attend(exact, q, k, v, mask=None, dropout_key=None)
    return out


_REFERENCES: dict[tuple[bool, bool, int, int, int], jax.Array] = {}


def _cached_reference(shared_qk: bool, causal: bool, q, k, v) -> jax.Array:
    """The exact output for these captured arrays (computed once per mode and array set)."""
    key = (shared_qk, causal, id(q), id(k), id(v))
    if key not in _REFERENCES:
        series = Series("exact", "lsh" if shared_qk else "full", causal=causal)
        cfg = series.config(q.shape[1], q.shape[3])
        _REFERENCES[key] = jax.jit(lambda q, k, v: _reference(series, cfg, q, k, v))(q, k, v)
    return _REFERENCES[key]


def setting_errors(
    series: Series, q: jax.Array, k: jax.Array, v: jax.Array, n_draws: int, seed: int = 0
) -> list[float]:
    """The relative error of ``series`` against its exact reference, one per draw (one value
    for a deterministic family)."""
    kind = KINDS[series.kind]
    _, heads, length, d_head = q.shape
    cfg = series.config(heads, d_head)
    random = series.kind in ("lsh", "performer", "linformer")

    @jax.jit
    def run(q, k, v, draws, params):
        out, _ = kind.attend(
            cfg, q, None if kind.shared_qk else k, v, mask=None, dropout_key=None,
            draws=draws, params=params,
        )  # fmt: skip
        return out

    ref = _cached_reference(series.kind == "lsh", series.causal, q, k, v)
    errors = []
    for d in range(n_draws if random else 1):
        key = jax.random.fold_in(jax.random.key(seed), d)
        draws = kind.draw(cfg, key, length)
        params = {n: p[...] for n, p in kind.params(cfg, nnx.Rngs(seed + d)).items()} or None
        errors.append(relative_error(run(q, k, v, draws, params), ref))
    return errors


# ----------------------------------------------------------------------------------------------
# Reporting.


def _fmt_error(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "-"
    text = f"{entry['mean']:.3f}"
    if entry.get("std"):
        text += f" ± {entry['std']:.3f}"
    return text


def markdown_table(payload: dict[str, Any]) -> str:
    """One row per setting: the relative error per length, causal then bidirectional."""
    lengths = payload["settings"]["lengths"]
    header = ["family", "setting"]
    header += [f"causal {n}" for n in lengths] + [f"bidir. {n}" for n in lengths]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (2 * len(lengths))]
    for row in payload["results"]:
        cells = [row["family"], row["setting"]]
        for mode in ("causal", "bidirectional"):
            per = row.get(mode) or {}
            cells += [_fmt_error(per.get(str(n))) for n in lengths]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _summary(errors: Sequence[float]) -> dict[str, Any]:
    entry: dict[str, Any] = {"mean": statistics.fmean(errors), "draws": len(errors)}
    if len(errors) > 1:
        entry["std"] = statistics.stdev(errors)
    entry["errors"] = [round(e, 6) for e in errors]
    return entry


# ----------------------------------------------------------------------------------------------
# Command line.


def _int_list(text: str) -> list[int]:
    return [int(p) for p in text.split(",") if p.strip()]


def _pairs(text: str) -> list[tuple[int, int]]:
    return [tuple(int(x) for x in p.split(":")) for p in text.split(",") if p.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.approximation",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--lengths", type=_int_list, default=list(DEFAULT_LENGTHS))
    p.add_argument("--windows", type=int, default=4, help="held-out windows per length")
    p.add_argument("--layer", type=int, default=None, help="captured layer (default: the last)")
    p.add_argument("--draws", type=int, default=3, help="draws of the random families")
    p.add_argument("--workdir", type=Path, default=Path("runs/approximation"))
    p.add_argument("--corpus", type=Path, default=None, help="text file/dir (default: pydoc)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument(
        "--from-json", type=results_json, default=None, help="print the table of a results JSON"
    )
    # The model (trained at the longest length).
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--d-ff", type=int, default=512)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--eval-fraction", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    # The settings (sizes in tokens).
    p.add_argument("--local-chunks", type=_int_list, default=[16, 32, 64])
    p.add_argument("--lsh-chunk", type=int, default=32)
    p.add_argument("--hashes", type=_int_list, default=[1, 2, 4, 8])
    p.add_argument("--bigbird-blocks", type=_int_list, default=[8, 16])
    p.add_argument("--longformer-windows", type=_int_list, default=[8, 32])
    p.add_argument("--strides", type=_int_list, default=[8, 16])
    p.add_argument("--fixed", type=_pairs, default=[(16, 2), (32, 4)], help="block:c pairs")
    p.add_argument("--linformer-ks", type=_int_list, default=[16, 32, 64, 128])
    p.add_argument("--features", type=_int_list, default=[16, 64, 256, 1024])
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    configure_xla()
    args = parse_args(argv)
    if args.from_json is not None:
        print(markdown_table(json.loads(args.from_json.read_text())))
        return 0
    from bench import ablations
    from reformer_jax.checkpoint import load_model_from_workdir

    start = time.perf_counter()
    run = train_model(args)
    train_s = time.perf_counter() - start
    model = load_model_from_workdir(run)
    cfg = model.cfg
    layer = cfg.n_layers - 1 if args.layer is None else args.layer
    curves = ablations.read_metrics(run)
    corpus, corpus_info = ablations.prepare_corpus(args.workdir.absolute(), args.corpus)
    payload: dict[str, Any] = {
        "benchmark": "relative error of each attention family against exact attention on a "
        "trained text model's activations",
        "command": " ".join(
            ["python -m bench.approximation", *(sys.argv[1:] if argv is None else argv)]
        ),
        "settings": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k != "from_json"
        },
        "model": json.loads((run / "config.json").read_text())["model"],
        "corpus": corpus_info,
        "final_eval_bpc": curves["eval"][-1]["bpc"] if curves["eval"] else None,
        "captured_layer": layer,
        "train_s": round(train_s, 1),
        "machine": machine_info(),
        "results": [],
    }
    captured = {}
    for length in args.lengths:
        tokens = jnp.asarray(heldout_windows(corpus, args.eval_fraction, length, args.windows))
        (q, k, v), _ = capture_qkv(model, tokens, layer)
        captured[length] = (q, k, v)
    for family, series in settings_table(args):
        row: dict[str, Any] = {"family": family, "setting": series.name}
        for causal in (True, False):
            if causal and series.kind == "linformer":
                continue
            mode = "causal" if causal else "bidirectional"
            row[mode] = {}
            for length in args.lengths:
                q, k, v = captured[length]
                errors = setting_errors(
                    _mode_series(series, causal, length), q, k, v, args.draws, args.seed
                )
                row[mode][str(length)] = _summary(errors)
        payload["results"].append(row)
        print(markdown_table({**payload, "results": [row]}).splitlines()[-1], flush=True)
        payload["elapsed_s"] = round(time.perf_counter() - start, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print()
    print(markdown_table(payload))
    print(f"\nwrote {args.out} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
