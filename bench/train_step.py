"""One training step (forward, backward, Adam) of a ReformerLM, timed; prints one JSON line.

    python -m bench.train_step --len 16384 --layers 6 --steps 3

The configuration mirrors the peer scripts (``../shared/peers/``): batch 1, d_model 256,
4 heads x 64, d_ff 1024, LSH chunk 64, 2 hashes, axial positions, no dropout, float32. The step
is the library's own (``reformer_jax.train.trainer.make_train_step``: fresh LSH rotations per
step, loss, accuracy and norms), jitted with the state donated, as ``train.py`` runs it. Peak
memory is this process's peak resident set (``ru_maxrss``), which includes the Python
interpreter, JAX and XLA's runtime, as the peers' figures include PyTorch's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import resource
import statistics
import sys
import time


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--len", type=int, default=16384)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--ff", type=int, default=1024)
    parser.add_argument("--hashes", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--attn", default="lsh", choices=["lsh", "local", "full"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ff-chunk", type=int, default=0, help="feed-forward rows per chunk")
    parser.add_argument("--ordinary", action="store_true", help="activation-storing stack")
    parser.add_argument("--dropout", type=float, default=0.0, help="every dropout rate")
    parser.add_argument("--dtype", default="float32", help="compute dtype (parameters float32)")
    parser.add_argument(
        "--window",
        default="xla",
        choices=["xla", "pallas"],
        help="window_implementation of the LSH and local layers (pallas: for GPUs)",
    )
    parser.add_argument("--profile", default="", help="write a jax.profiler trace here")
    parser.add_argument("--hlo-out", default="", help="write the compiled step's HLO text here")
    return parser.parse_args(argv)


def _limit_threads(threads: int) -> None:
    # XLA's CPU client sizes its thread pools from the visible cores: pin before jax starts.
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:threads])


def model_config(args: argparse.Namespace):
    from reformer_jax.config import ReformerConfig

    log2 = int(math.log2(args.len))
    rows = 2 ** (log2 // 2)
    return ReformerConfig(
        vocab_size=256,
        d_model=args.d,
        d_ff=args.ff,
        n_layers=args.layers,
        n_heads=args.heads,
        d_head=args.d // args.heads,
        attention_pattern=(args.attn,),
        causal=True,
        lsh_chunk_len=args.chunk,
        lsh_n_hashes=args.hashes,
        local_chunk_len=args.chunk,
        pos_embedding="axial",
        axial_shape=(rows, args.len // rows),
        axial_dims=(args.d // 2, args.d // 2),
        ff_chunk_size=args.ff_chunk,
        reversible=not args.ordinary,
        hidden_dropout=args.dropout,
        lsh_dropout=args.dropout,
        local_dropout=args.dropout,
        ff_dropout=args.dropout,
        dtype=args.dtype,
        window_implementation=args.window,
    )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    _limit_threads(args.threads)
    from reformer_jax.runtime import configure_xla, release_free_memory

    configure_xla()

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from reformer_jax.model import ReformerLM
    from reformer_jax.train.trainer import make_train_step

    cfg = model_config(args)
    # As the trainer does: initialise under jit, compile ahead of time, then release the
    # compiler's freed memory before the first step.
    graphdef = nnx.split(nnx.eval_shape(lambda: ReformerLM(cfg, rngs=nnx.Rngs(0))), nnx.Param)[0]
    params = jax.jit(lambda: nnx.split(ReformerLM(cfg, rngs=nnx.Rngs(0)), nnx.Param)[1])()
    tx = optax.adam(1e-4)
    opt_state = jax.jit(tx.init)(params)
    step_fn = jax.jit(make_train_step(graphdef, tx, cfg, accum=1, seed=0), donate_argnums=(0, 1))
    tokens = np.random.default_rng(0).integers(1, 256, (args.batch, args.len), dtype=np.int32)
    batch = {
        "inputs": jnp.asarray(tokens),
        "targets": jnp.asarray(tokens),
        "weights": jnp.ones(tokens.shape, jnp.float32),
    }
    start = time.perf_counter()
    compiled = step_fn.lower(params, opt_state, batch, 0).compile()
    compile_s = time.perf_counter() - start
    if args.hlo_out:
        pathlib.Path(args.hlo_out).write_text(compiled.as_text())
    release_free_memory()
    memory = compiled.memory_analysis()

    def run(step: int) -> float:
        nonlocal params, opt_state
        t = time.perf_counter()
        params, opt_state, metrics = compiled(params, opt_state, batch, jnp.int32(step))
        jax.block_until_ready(metrics)
        return time.perf_counter() - t

    run(0)  # warm-up (first-run allocations)
    times = []
    cpu_start = os.times()
    for step in range(1, args.steps + 1):
        if args.profile and step == args.steps:
            with jax.profiler.trace(args.profile, create_perfetto_trace=True):
                times.append(run(step))
        else:
            times.append(run(step))
    cpu_end = os.times()
    median = statistics.median(times)
    result = {
        "impl": "reformer_jax",
        "len": args.len,
        "layers": args.layers,
        "d": args.d,
        "hashes": args.hashes,
        "attn": args.attn,
        "reversible": not args.ordinary,
        "s_per_step": median,
        "tokens_per_s": args.batch * args.len / median,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "xla_temp_mib": memory.temp_size_in_bytes / 2**20,
        "cpu_s_per_step": ((cpu_end.user - cpu_start.user) + (cpu_end.system - cpu_start.system))
        / args.steps,
        "sys_s_per_step": (cpu_end.system - cpu_start.system) / args.steps,
        "compile_s": compile_s,
        "step_times": times,
        "jax": jax.__version__,
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
