"""Compiled memory of a training step (loss value-and-grad) of a ReformerLM, without running it.

    python -m bench.model_memory                       # enwik8 reference config, 64K tokens
    python -m bench.model_memory --layers 2 6 12 --length 16384 --config configs/enwik8.py

Uses ``jax.jit(...).lower(...).compile().memory_analysis()`` on abstract inputs, so it reports
what XLA would allocate on this backend for one sequence, for the reversible stack and for the
ordinary (activation-storing) stack.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
from flax import nnx

from reformer_jax.config import ReformerConfig
from reformer_jax.model import ReformerLM, lm_loss
from reformer_jax.runtime import configure_xla


def load_config(path: str):
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def train_step_memory(cfg: ReformerConfig, length: int, batch: int = 1) -> dict[str, float]:
    graphdef, state = nnx.split(nnx.eval_shape(lambda: ReformerLM(cfg, rngs=nnx.Rngs(0))))
    tokens = jax.ShapeDtypeStruct((batch, length), jnp.int32)

    def loss(state, tokens):
        logits = nnx.merge(graphdef, state)(tokens, dropout_rng=jax.random.key(0))
        return lm_loss(logits, tokens)[0]

    start = time.perf_counter()
    compiled = jax.jit(jax.value_and_grad(loss)).lower(state, tokens).compile()
    mem = compiled.memory_analysis()
    return {
        "temp_bytes": mem.temp_size_in_bytes,
        "argument_bytes": mem.argument_size_in_bytes,
        "output_bytes": mem.output_size_in_bytes,
        "compile_seconds": time.perf_counter() - start,
    }


def main() -> None:
    configure_xla()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/enwik8.py")
    parser.add_argument("--length", type=int, default=65536)
    parser.add_argument("--layers", type=int, nargs="+", default=[12])
    parser.add_argument("--modes", nargs="+", default=["reversible", "ordinary"])
    parser.add_argument("--out", default="bench/results/model_memory.json")
    args = parser.parse_args()
    base = ReformerConfig.from_dict(load_config(args.config).model.to_dict())
    rows = []
    for n_layers in args.layers:
        for mode in args.modes:
            cfg = base.replace(n_layers=n_layers, reversible=mode == "reversible")
            result = train_step_memory(cfg, args.length)
            rows.append({"layers": n_layers, "mode": mode, "length": args.length, **result})
            print(
                f"{n_layers:3d} layers {mode:10s} length {args.length}: temp "
                f"{result['temp_bytes'] / 2**30:7.2f} GiB, params+args "
                f"{result['argument_bytes'] / 2**30:6.2f} GiB "
                f"(compiled in {result['compile_seconds']:.0f} s)",
                flush=True,
            )
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "config": args.config,
                "backend": jax.default_backend(),
                "device": jax.devices()[0].device_kind,
                "jax": jax.__version__,
                "machine": platform.machine(),
                "rows": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
