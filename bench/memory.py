"""Memory across segments (Transformer-XL, Compressive Transformer) against LSH attention.

Three small byte-level models trained by the library's own ``train_and_evaluate`` on the same
corpus (CPython's pydoc topics by default, as bench/ablations.py), with the same width, depth,
optimiser, steps and tokens per step:

* ``xl``: Transformer-XL (``task="lm_memory"``): segments of ``--seg`` bytes of contiguous
  streams, a memory of ``--seg`` states per layer, relative positions.
* ``compressive``: the Compressive Transformer at the same attended budget: memory ``seg / 2``
  plus a compressed memory of ``seg / 2`` states at rate 2 (1-D convolution trained by the
  attention-reconstruction loss), reaching ``1.5 seg`` states back.
* ``reformer``: the Reformer (reversible, LSH attention, learned positions) on windows of
  ``2 seg`` bytes (the span of XL's segment plus memory) with half the rows, so the same tokens
  per step. ``reformer-exact`` (optional): the same model with exact shared-QK attention over
  the window (``full_attention_below`` above it), separating the hashing from the rest.
  ``window-relative`` (optional): XL's model (standard residual, relative positions) without
  memory on the Reformer's windows, separating the recurrence from the position encoding.

Measured:

1. held-out bits per byte against the evaluation memory (0, 1x, 2x, 4x the segment in attended
   states; the compressive model keeps its compressed memory and lengthens the plain one),
   evaluated over the whole held-out split as contiguous streams; the Reformer over held-out
   windows of ``2 seg``;
2. the loss by position within the segment, with and without memory;
3. the compiled training step's temporary memory against the memory length, for Transformer-XL
   and for a model that instead recomputes the same context (one relative-attention pass over
   ``mem_len + seg`` tokens): ``jit(...).lower(...).compile().memory_analysis()``.

    python -m bench.memory                       # the documented run (see docs/memory.md)
    python -m bench.memory --toy --workdir /tmp/m --out /tmp/m/memory.json   # seconds
    python -m bench.memory --from-json bench/results/memory.json             # replot

Results: JSON at ``--out`` (with the machine record of bench/machine.py) and a PNG next to it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from bench.machine import machine_info
from reformer_jax.runtime import configure_xla

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "memory.json"
VARIANTS = ("xl", "compressive", "reformer", "reformer-exact", "window-relative")
DEFAULT_VARIANTS = ("xl", "compressive", "reformer")
#: Line styles of the window baselines (drawn grey).
STYLES = {"reformer": "--", "reformer-exact": ":", "window-relative": "-."}
LABELS = {
    "xl": "Transformer-XL",
    "compressive": "Compressive (conv, rate 2)",
    "reformer": "Reformer (LSH, window 2x seg)",
    "reformer-exact": "Reformer, exact shared-QK (no hashing)",
    "window-relative": "relative-position Transformer, window 2x seg, no memory",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", type=Path, default=Path("runs/bench_memory"))
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--corpus", type=Path, default=None, help="default: pydoc topics")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seg", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--d-ff", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval-fraction", type=float, default=0.05)
    p.add_argument("--eval-batch", type=int, default=4, help="held-out streams")
    p.add_argument("--eval-multiples", default="0,1,2,4", help="memory / segment at evaluation")
    p.add_argument("--step-mem-lens", default="0,64,128,256,512,1024")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--toy", action="store_true", help="tiny sizes (tests)")
    p.add_argument("--from-json", type=Path, default=None, help="replot a results file")
    args = p.parse_args(argv)
    if args.toy:  # tiny values for the settings left at their defaults
        toy = dict(
            steps=3, seg=8, batch=4, d_model=16, d_ff=32, layers=1, heads=2, eval_batch=2,
            step_mem_lens="0,8,16",
        )  # fmt: skip
        for name, value in toy.items():
            if getattr(args, name) == p.get_default(name):
                setattr(args, name, value)
    return args


# ----------------------------------------------------------------------------------------------
# Configs.


def _model(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    return dict(
        vocab_size=256,
        d_model=args.d_model,
        d_ff=args.d_ff,
        n_layers=args.layers,
        n_heads=args.heads,
        d_head=args.d_model // args.heads,
        ff_activation="relu",
        **extra,
    )


def xl_model(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    memory = dict(mem_len=args.seg)
    if variant == "compressive":
        memory = dict(mem_len=args.seg // 2, cmem_len=args.seg // 2, cmem_rate=2)
    return _model(
        args,
        attention_pattern=["relative"],
        residual="standard",
        pos_embedding="none",
        cmem_method="conv",
        **memory,
    )


def train_config(args: argparse.Namespace, variant: str, corpus: Path):
    from configs.common import base_config

    config = base_config()
    config.seed = args.seed
    config.data.name = "text"
    if variant == "window-relative":
        length, batch = 2 * args.seg, max(1, args.batch // 2)
        config.model = dict(xl_model(args, "xl"), mem_len=0)
        config.data.settings = dict(
            path=str(corpus), seq_len=length, eval_fraction=args.eval_fraction
        )
    elif variant.startswith("reformer"):
        length, batch = 2 * args.seg, max(1, args.batch // 2)
        exact = dict(full_attention_below=length + 1) if variant == "reformer-exact" else {}
        config.model = _model(
            args,
            **exact,
            attention_pattern=["lsh"],
            lsh_chunk_len=max(4, args.seg // 4),
            lsh_n_hashes=2,
            pos_embedding="learned",
            max_len=length,
            residual="reversible",
        )
        config.data.settings = dict(
            path=str(corpus), seq_len=length, eval_fraction=args.eval_fraction
        )
    else:
        length, batch = args.seg, args.batch
        config.task = "lm_memory"
        config.model = xl_model(args, variant)
        config.data.settings = dict(
            path=str(corpus), seq_len=length, eval_fraction=args.eval_fraction, order="streams"
        )
    config.seq_len = length
    config.batch_size = batch
    config.num_steps = args.steps
    config.learning_rate = args.lr
    config.schedule = "constant"
    config.warmup_steps = min(50, args.steps // 4)
    config.log_every = max(1, args.steps // 10)
    config.eval_every = args.steps
    config.eval_batches = 1  # the measurements below evaluate the whole split themselves
    config.checkpoint_every = args.steps
    config.keep_checkpoints = 1
    config.mesh_shape = (1, 1)
    return config


# ----------------------------------------------------------------------------------------------
# Evaluation with per-position sums.


def evaluate_positions(model, source, batch_size: int, memory_lens: tuple[int, int] | None):
    """Held-out NLL sums and counts by position within the segment (window).

    ``memory_lens``: ``(mem_len, cmem_len)`` to run the split as contiguous streams with a
    memory, None to run each segment (window) alone.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from reformer_jax.layers.memory import init_memory, reset_memory

    graphdef, params = nnx.split(model)

    def scores(logits, batch):
        logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
        nll = -jnp.take_along_axis(logp, batch["targets"][:, 1:, None], axis=-1)[..., 0]
        w = batch["weights"][:, 1:]
        return jnp.sum(nll * w, axis=0), jnp.sum(w, axis=0)

    @jax.jit
    def plain(params, batch):
        return scores(nnx.merge(graphdef, params)(batch["inputs"]), batch)

    @jax.jit
    def recurrent(params, memory, batch):
        memory = reset_memory(memory, batch["reset"])
        logits, memory, _ = nnx.merge(graphdef, params).with_memory(batch["inputs"], memory)
        return memory, scores(logits, batch)

    memory = None
    if memory_lens is not None and memory_lens[0] > 0:
        memory = init_memory(model.cfg, batch_size, *memory_lens)
    nll = np.zeros(source.seq_len - 1)
    count = np.zeros(source.seq_len - 1)
    for batch in source.batches("eval", batch_size):
        arrays = {k: jnp.asarray(getattr(batch, k)) for k in ("inputs", "targets", "weights")}
        if memory is None:
            s, c = plain(params, arrays)
        else:
            arrays["reset"] = jnp.asarray(batch.reset)
            memory, (s, c) = recurrent(params, memory, arrays)
        nll += np.asarray(s)
        count += np.asarray(c)
    return nll, count


def _bits(nll, count) -> float:
    return float(nll.sum() / max(count.sum(), 1.0) / math.log(2))


def _by_position(nll, count, buckets: int = 16) -> list[dict[str, float]]:
    """Bits per byte averaged over ``buckets`` equal ranges of predicted positions 1..L-1."""
    import numpy as np

    edges = np.linspace(0, len(nll), buckets + 1).astype(int)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        if hi > lo and count[lo:hi].sum() > 0:
            out.append(dict(position=float((lo + hi + 1) / 2), bpb=_bits(nll[lo:hi], count[lo:hi])))
    return out


def run_variant(args: argparse.Namespace, variant: str, corpus: Path) -> dict[str, Any]:
    from reformer_jax.checkpoint import load_model_from_workdir
    from reformer_jax.data.text import TextFile
    from reformer_jax.train.trainer import train_and_evaluate

    workdir = (args.workdir / variant).absolute()
    config = train_config(args, variant, corpus)
    start = time.perf_counter()
    result = train_and_evaluate(config, workdir)
    train_s = time.perf_counter() - start
    model = load_model_from_workdir(workdir)
    record: dict[str, Any] = dict(
        variant=variant,
        label=LABELS[variant],
        model=model.cfg.to_dict(),
        seq_len=config.seq_len,
        batch_size=config.batch_size,
        train_s=round(train_s, 1),
        final_train_loss=float(result.train_metrics[-1]["loss"]),
        evals=[],
    )
    if variant.startswith("reformer") or variant == "window-relative":
        source = TextFile(corpus, seq_len=config.seq_len, eval_fraction=args.eval_fraction)
        nll, count = evaluate_positions(model, source, args.eval_batch, None)
        record["evals"].append(
            dict(memory=0, bpb=_bits(nll, count), by_position=_by_position(nll, count))
        )
        return record
    source = TextFile(
        corpus, seq_len=config.seq_len, eval_fraction=args.eval_fraction, order="streams"
    )
    cmem_len = model.cfg.cmem_len
    for multiple in [float(m) for m in args.eval_multiples.split(",")]:
        budget = int(multiple * args.seg)
        lens = None if budget == 0 else (budget - cmem_len, cmem_len)
        if lens is not None and lens[0] < 1:
            continue
        nll, count = evaluate_positions(model, source, args.eval_batch, lens)
        record["evals"].append(
            dict(
                memory=budget,
                mem_len=0 if lens is None else lens[0],
                cmem_len=0 if lens is None else cmem_len,
                bpb=_bits(nll, count),
                by_position=_by_position(nll, count),
            )
        )
    return record


# ----------------------------------------------------------------------------------------------
# Compiled training-step memory against the memory length.


def step_memory(args: argparse.Namespace) -> list[dict[str, Any]]:
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from reformer_jax.config import ReformerConfig
    from reformer_jax.train.tasks import LMMemoryTask, LMTask
    from reformer_jax.train.trainer import make_task_train_step

    rows = []
    tx = optax.adam(1e-3)
    batch = args.batch
    for mem_len in [int(m) for m in args.step_mem_lens.split(",")]:
        for kind in ("memory", "recompute"):
            if kind == "memory" and mem_len == 0:
                continue
            length = args.seg if kind == "memory" else args.seg + mem_len
            fields = xl_model(args, "xl")
            fields["mem_len"] = mem_len if kind == "memory" else 0
            cfg = ReformerConfig.from_dict(fields)
            task = LMMemoryTask(cfg) if kind == "memory" else LMTask(cfg)
            abstract = nnx.eval_shape(lambda task=task: task.make_model(nnx.Rngs(0)))
            graphdef, params = nnx.split(abstract, nnx.Param)
            opt_state = jax.eval_shape(tx.init, params)
            carry = jax.eval_shape(lambda task=task: task.init_carry(batch))
            spec = jax.ShapeDtypeStruct
            example = {
                "inputs": spec((batch, length), jnp.int32),
                "targets": spec((batch, length), jnp.int32),
                "weights": spec((batch, length), jnp.float32),
            }
            if kind == "memory":
                example["reset"] = spec((batch,), jnp.bool_)
            step = make_task_train_step(task, graphdef, tx, 1, 0)
            compiled = (
                jax.jit(step)
                .lower(params, opt_state, carry, example, spec((), jnp.int32))
                .compile()
            )
            analysis = compiled.memory_analysis()
            rows.append(
                dict(
                    kind=kind,
                    mem_len=mem_len,
                    seq_len=length,
                    temp_bytes=int(analysis.temp_size_in_bytes),
                    argument_bytes=int(analysis.argument_size_in_bytes),
                )
            )
    return rows


# ----------------------------------------------------------------------------------------------
# Output.


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seg = results["settings"]["seg"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    ax = axes[0]
    for run in results["runs"]:
        if run["variant"].startswith("reformer") or run["variant"] == "window-relative":
            ax.axhline(
                run["evals"][0]["bpb"], ls=STYLES[run["variant"]], c="grey", label=run["label"]
            )
            continue
        xs = [e["memory"] / seg for e in run["evals"]]
        ax.plot(xs, [e["bpb"] for e in run["evals"]], "o-", label=run["label"])
    ax.set_xlabel("evaluation memory (attended states / segment length)")
    ax.set_ylabel("held-out bits per byte")
    ax.set_title("held-out bpb against evaluation memory")
    ax.legend(fontsize=8)
    ax = axes[1]
    for run in results["runs"]:
        if run["variant"] != "xl":
            continue
        for e in run["evals"]:
            if e["memory"] in (0, seg):
                ps = [p["position"] for p in e["by_position"]]
                label = f"XL, memory {e['memory']}"
                ax.plot(ps, [p["bpb"] for p in e["by_position"]], "o-", label=label)
    for run in results["runs"]:
        if run["variant"].startswith("reformer") or run["variant"] == "window-relative":
            e = run["evals"][0]
            ps = [p["position"] for p in e["by_position"]]
            style = STYLES[run["variant"]]
            ax.plot(ps, [p["bpb"] for p in e["by_position"]], style, c="grey", label=run["label"])
    ax.set_xlabel("position within the segment (window)")
    ax.set_ylabel("held-out bits per byte")
    ax.set_title("loss by position")
    ax.legend(fontsize=8)
    ax = axes[2]
    for kind, label in (("memory", "XL: segment + memory"), ("recompute", "recompute context")):
        rows = [r for r in results["step_memory"] if r["kind"] == kind]
        ax.plot(
            [r["mem_len"] for r in rows], [r["temp_bytes"] / 2**20 for r in rows], "o-", label=label
        )
    ax.set_xlabel("memory length (states per layer)")
    ax.set_ylabel("compiled training step temp (MiB)")
    ax.set_title(f"training-step memory, segment {seg}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results: dict[str, Any]) -> str:
    seg = results["settings"]["seg"]
    lines = ["| model | eval memory (x seg) | held-out bpb |", "|---|---|---|"]
    for run in results["runs"]:
        for e in run["evals"]:
            reformer = run["variant"].startswith("reformer") or run["variant"] == "window-relative"
            memory = "window 2x seg" if reformer else f"{e['memory'] / seg:g}"
            lines.append(f"| {run['label']} | {memory} | {e['bpb']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json is not None:
        results = json.loads(args.from_json.read_text())
        plot(results, args.from_json.with_suffix(".png"))
        print(table(results))
        return 0
    configure_xla()
    from bench.ablations import prepare_corpus

    args.workdir.mkdir(parents=True, exist_ok=True)
    corpus, corpus_info = prepare_corpus(args.workdir, args.corpus)
    settings = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in vars(args).items()
        if k not in ("from_json",)
    }
    results: dict[str, Any] = dict(
        settings=settings, corpus=corpus_info, machine=machine_info(), runs=[], step_memory=[]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            raise SystemExit(f"--variants: unknown {variant!r}; use {list(VARIANTS)}")
        print(f"[memory] training {variant}", flush=True)
        results["runs"].append(run_variant(args, variant, corpus))
        args.out.write_text(json.dumps(results, indent=1))
    print("[memory] compiled step memory", flush=True)
    results["step_memory"] = step_memory(args)
    args.out.write_text(json.dumps(results, indent=1))
    plot(results, args.out.with_suffix(".png"))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
