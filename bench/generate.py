"""Decoding speed: cached (`reformer_jax.generate` with attention caches) vs uncached generation.

For each context length C (the prompt), one row generates ``--new-tokens`` tokens greedily:

* **cached**: the prefill pass over the prompt, then one decode step per token against the
  per-layer caches. The prefill and a loop of decode steps (continuing from the prefill's cache)
  are also compiled and timed on their own: ``decode tok/s`` is that loop's rate; ``e2e tok/s``
  is `generate` as a whole (prefill included).
* **uncached**: a full forward pass over the whole (prompt + new tokens) buffer per token (the
  ``use_cache=False`` reference). It is run for ``--uncached-tokens`` tokens and skipped when its
  estimated run time (from the previous context, scaled by length) exceeds ``--max-seconds``.

Every program is compiled ahead of time (``generate.lower_generate``) and the compile time is
reported separately; timings are the best of ``--repeats`` runs. Cache memory is the bytes of the
cache arrays (`generate.cache_bytes`), next to what K/V caches of every position in every layer
would take.

    python -m bench.generate                        # 1K .. 16K, the default model (~5-10 min)
    python -m bench.generate --contexts 1024,2048 --new-tokens 16 --quick
    python -m bench.generate --from-json bench/results/generate.json   # the table again

Results: a table on stdout and JSON (numbers + machine info) at ``--out``, rewritten after every
context so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bench import results_json
from bench.machine import machine_info
from reformer_jax import generate as gen
from reformer_jax.config import ReformerConfig
from reformer_jax.decoding import loop
from reformer_jax.decoding.stack import step_impl
from reformer_jax.model import ReformerLM
from reformer_jax.runtime import configure_xla

DEFAULT_CONTEXTS = (1024, 2048, 4096, 8192, 16384)
DEFAULT_RESULTS = Path(__file__).resolve().parent / "results" / "generate.json"
MIB = 2**20


def bench_config(args: argparse.Namespace) -> ReformerConfig:
    """A small Reformer: d_model 256, 4 layers alternating local / LSH, chunks of 64."""
    return ReformerConfig(
        vocab_size=256,
        d_model=256,
        d_ff=512,
        n_layers=4,
        n_heads=4,
        d_head=64,
        attention_pattern=tuple(args.pattern.split(",")),
        lsh_chunk_len=64,
        lsh_n_hashes=args.hashes,
        local_chunk_len=64,
        pos_embedding="axial",
        axial_shape=(128, 256),  # 32768 positions
        axial_dims=(128, 128),
    )


@dataclass
class Result:
    context: int
    new_tokens: int
    status: str = "ok"
    note: str = ""
    compile_s: float | None = None
    prefill_s: float | None = None
    generate_s: float | None = None
    decode_s: float | None = None
    decode_tok_s: float | None = None
    e2e_tok_s: float | None = None
    cache_bytes: int | None = None
    full_kv_bytes: int | None = None
    uncached_tokens: int | None = None
    uncached_compile_s: float | None = None
    uncached_s: float | None = None
    uncached_tok_s: float | None = None
    speedup: float | None = None


_GREEDY = {**gen.GENERATE_DEFAULTS, "greedy": True}


@functools.partial(jax.jit, static_argnames=("graphdef", "n"), donate_argnames=("cache",))
def _decode_loop(graphdef, state, cache, token, start, *, n):
    """``n`` greedy decode steps from a prefill cache (rows at positions ``start``, ...)."""
    model = nnx.merge(graphdef, state)

    def body(i, carry):
        cache, token = carry
        logits, cache = step_impl(model, cache, token, start + i)
        return cache, jnp.argmax(logits, -1).astype(jnp.int32)

    cache, token = jax.lax.fori_loop(0, n, body, (cache, token))
    return token, cache


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def run_context(model, context: int, args, previous: Result | None) -> Result:
    cfg = model.cfg
    new = args.new_tokens
    res = Result(context=context, new_tokens=new)
    prompt = np.asarray(
        jax.random.randint(jax.random.key(context), (1, context), 0, cfg.vocab_size), np.int32
    )
    # Cached: the whole generate program (end to end), then its two parts on their own: the
    # prefill, and a loop of ``new`` decode steps continuing from the prefill's cache.
    start = time.perf_counter()
    args_n, statics = loop._generate_args(model, prompt, max_new_tokens=new, **_GREEDY)
    compiled_gen = loop._generate_jit.lower(*args_n, **statics).compile()
    graphdef, state, prompts, lengths, _, draws = args_n[:6]
    spec = statics["spec"]
    compiled_prefill = loop._prefill_jit.lower(
        graphdef, state, prompts, lengths, draws, spec=spec, all_logits=False
    ).compile()
    logits, cache = compiled_prefill(state, prompts, lengths, draws)  # compiles the loop
    first = jnp.argmax(logits, -1).astype(jnp.int32)
    compiled_decode = _decode_loop.lower(graphdef, state, cache, first, lengths, n=new).compile()
    res.compile_s = time.perf_counter() - start
    res.generate_s = _best(lambda: compiled_gen(*args_n[1:]), args.repeats)
    prefill_args = (state, prompts, lengths, draws)
    res.prefill_s = _best(lambda: compiled_prefill(*prefill_args), args.repeats)
    decode_times = []
    for _ in range(args.repeats):
        _, cache = jax.block_until_ready(compiled_prefill(*prefill_args))
        begin = time.perf_counter()
        jax.block_until_ready(compiled_decode(state, cache, first, lengths))  # donates ``cache``
        decode_times.append(time.perf_counter() - begin)
    res.decode_s = min(decode_times)
    res.decode_tok_s = new / res.decode_s
    res.e2e_tok_s = new / res.generate_s
    res.cache_bytes = gen.cache_bytes(cache)
    res.full_kv_bytes = cfg.n_layers * 2 * (context + new) * cfg.n_heads * cfg.d_head * 4
    del cache

    # Uncached: a forward pass over the buffer per token.
    n_u = args.uncached_tokens
    estimate = None
    if previous is not None and previous.uncached_s is not None:
        scale = (context + n_u) / (previous.context + previous.uncached_tokens)
        estimate = previous.uncached_s / previous.uncached_tokens * n_u * scale
    if estimate is not None and estimate > args.max_seconds:
        res.status = "partial"
        res.note = (
            f"uncached skipped: estimated {estimate:.0f} s for {n_u} tokens > --max-seconds "
            f"{args.max_seconds:.0f}"
        )
        return res
    start = time.perf_counter()
    lowered, dyn = gen.lower_generate(
        model, prompt, max_new_tokens=n_u, greedy=True, use_cache=False
    )
    compiled = lowered.compile()
    res.uncached_compile_s = time.perf_counter() - start
    res.uncached_tokens = n_u
    res.uncached_s = _best(lambda: compiled(*dyn), 1)
    res.uncached_tok_s = n_u / res.uncached_s
    res.speedup = res.decode_tok_s / res.uncached_tok_s
    return res


def _fmt(x, spec=".1f", none="-"):
    return none if x is None else format(x, spec)


def table(results: list[dict]) -> str:
    head = (
        "| context | prefill s | decode tok/s (cached) | e2e tok/s | uncached tok/s | speedup "
        "| cache MiB | full K/V MiB | note |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    )
    lines = [head]
    for r in results:
        lines.append(
            f"| {r['context']} | {_fmt(r['prefill_s'], '.2f')} | {_fmt(r['decode_tok_s'])} | "
            f"{_fmt(r['e2e_tok_s'])} | {_fmt(r['uncached_tok_s'], '.2f')} | "
            f"{_fmt(r['speedup'], '.0f')}{'x' if r['speedup'] else ''} | "
            f"{_fmt(r['cache_bytes'] and r['cache_bytes'] / MIB)} | "
            f"{_fmt(r['full_kv_bytes'] and r['full_kv_bytes'] / MIB)} | {r['note']} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    configure_xla()
    jnp.zeros(()).block_until_ready()  # start the backend before timing anything
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--contexts", default=",".join(map(str, DEFAULT_CONTEXTS)))
    p.add_argument("--new-tokens", type=int, default=256, help="tokens generated (cached)")
    p.add_argument("--uncached-tokens", type=int, default=4, help="tokens generated (uncached)")
    p.add_argument("--pattern", default="local,lsh", help="attention pattern (4 layers)")
    p.add_argument("--hashes", type=int, default=2, help="LSH hash rounds")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-seconds", type=float, default=60.0, help="uncached time limit")
    p.add_argument("--quick", action="store_true", help="1 repeat, short contexts: smoke test")
    p.add_argument("--out", type=Path, default=DEFAULT_RESULTS)
    p.add_argument("--from-json", type=results_json, help="print the table of a previous run")
    args = p.parse_args(argv)
    if args.from_json:
        data = json.loads(args.from_json.read_text())
        print(table(data["results"]))
        return
    if args.quick:
        args.repeats = 1
    contexts = [int(c) for c in args.contexts.split(",")]
    cfg = bench_config(args)
    model = ReformerLM(cfg, rngs=nnx.Rngs(0))
    out = dict(
        command="python -m bench.generate " + " ".join(sys.argv[1:] if argv is None else argv),
        machine=machine_info(),
        config=asdict(cfg),
        batch=1,
        results=[],
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    previous = None
    for context in contexts:
        start = time.perf_counter()
        res = run_context(model, context, args, previous)
        previous = res if res.uncached_s is not None else previous
        out["results"].append(asdict(res))
        args.out.write_text(json.dumps(out, indent=2, default=str))
        print(
            f"context {context}: decode {res.decode_tok_s:.1f} tok/s, uncached "
            f"{_fmt(res.uncached_tok_s, '.2f')} tok/s ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    print(table(out["results"]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
