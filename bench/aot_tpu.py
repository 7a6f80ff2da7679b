"""The training step and decoding of a config, compiled for a TPU pod that is not here.

    python -m bench.aot_tpu --config configs/enwik8.py --topology v5e:4x4 --mesh 4,4

``libtpu`` (in the ``test`` extra) describes any TPU topology on a CPU-only machine
(``jax.experimental.topologies.get_topology_desc``); the mesh is laid over those devices, every
input is an abstract ``jax.ShapeDtypeStruct`` carrying its sharding, and ``jit(...).lower(...)
.compile()`` produces the TPU executable without running it. Nothing is allocated.

What is compiled is what ``train.py`` runs: the step of ``build_train_step`` (same model,
optimizer, shardings, donation, gradient accumulation; ``--config.*`` overrides as in train.py),
and the decoding prefill and one decode step of ``reformer_jax.generate``. Reported per chip:
memory (arguments, temporaries, outputs, total against the chip's HBM), matmul FLOPs, the
collectives in the optimised HLO by kind with their bytes, and a projected step time and tokens/s
from the FLOPs at the chip's peak bf16 rate times an assumed MFU (``--mfu``, stated in the
output). These are compiled, not run: the projection is an estimate, not a measurement.

FLOPs: XLA's ``cost_analysis()`` counts a loop body once (the model scans over its layers), so
the reported FLOPs are the matrix products of the optimised HLO, each multiplied by the trip
counts of the loops around it; XLA's own figure is kept as ``xla_cost_analysis_flops``.
Collectives are counted the same way (per step, loops unrolled), bytes being each op's result.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from collections import defaultdict
from typing import Any

# Each chip: HBM bytes and peak dense bf16 FLOP/s (public spec sheets).
CHIPS: dict[str, tuple[int, float]] = {
    "v4": (32 * 2**30, 275e12),
    "v5e": (16 * 2**30, 197e12),
    "v5p": (95 * 2**30, 459e12),
    "v6e": (32 * 2**30, 918e12),
}
_KIND_TO_CHIP = {"TPU v4": "v4", "TPU v5 lite": "v5e", "TPU v5": "v5p", "TPU v6 lite": "v6e"}
COLLECTIVES = (
    "all-reduce",
    "all-gather",
    "reduce-scatter",
    "all-to-all",
    "collective-permute",
    "ragged-all-to-all",
)
_DTYPE_BYTES = {
    "pred": 1, "s4": 1, "u4": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
    "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
    "s32": 4, "u32": 4, "f32": 4,
    "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
}  # fmt: skip


class DoesNotFit(RuntimeError):
    """The program needs more memory per chip than the chip has."""


# ------------------------------------------------------------------------------------------------
# The optimised HLO: matmul FLOPs and collectives with loop trip counts.

_ARRAY = re.compile(r"([a-z][a-z0-9]*)\[([0-9,]*)\]")


def _shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape string (an array or a tuple of arrays; layouts ignored)."""
    total = 0
    for dtype, dims in _ARRAY.findall(re.sub(r"\{[^{}]*\}", "", shape)):
        if dtype in _DTYPE_BYTES:
            total += _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
    return total


def _dims(shape: str) -> list[int]:
    match = _ARRAY.search(shape)
    return [int(d) for d in match.group(2).split(",") if d] if match else []


def _closing(text: str, start: int) -> int:
    """Index of the parenthesis closing the one at ``text[start]``."""
    depth = 0
    for i in range(start, len(text)):
        depth += text[i] == "("
        depth -= text[i] == ")"
        if depth == 0:
            return i
    return len(text) - 1


def _split_instruction(line: str) -> tuple[str, str, str, str, str] | None:
    """``(name, shape, opcode, operands, attributes)`` of one HLO instruction line."""
    if " = " not in line:
        return None
    name, rhs = line.strip().removeprefix("ROOT ").split(" = ", 1)
    if rhs.startswith("("):  # tuple shape: up to the matching parenthesis
        end = _closing(rhs, 0)
        shape, rest = rhs[: end + 1], rhs[end + 1 :].lstrip()
    else:
        shape, _, rest = rhs.partition(" ")
    match = re.match(r"([\w\-]+)\(", rest)
    if not match:
        return None
    opcode = match.group(1)
    start = match.end() - 1
    j = _closing(rest, start)
    return name.lstrip("%"), shape, opcode, rest[start + 1 : j], rest[j + 1 :]


def _matmul_flops(opcode: str, shape: str, operands: str, attrs: str, shapes: dict) -> float:
    names = [o.strip().split(" ")[-1].lstrip("%") for o in operands.split(",")]
    out = math.prod(_dims(shape))
    if opcode == "dot":
        lhs = _dims(shapes.get(names[0], ""))
        match = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", attrs)
        contracted = [int(d) for d in match.group(1).split(",") if d] if match else []
        return 2.0 * out * math.prod(lhs[d] for d in contracted if d < len(lhs))
    # convolution: each output element sums over the kernel's non-output dimensions.
    rhs = _dims(shapes.get(names[1], "")) if len(names) > 1 else []
    labels = re.search(r"dim_labels=[^_]*_([^-]*)->", attrs)
    if not labels or len(labels.group(1)) != len(rhs):
        return 0.0
    per_out = math.prod(n for n, lab in zip(rhs, labels.group(1), strict=True) if lab != "o")
    groups = re.search(r"feature_group_count=(\d+)", attrs)
    return 2.0 * out * per_out / (int(groups.group(1)) if groups else 1)


def _trip_count(attrs: str) -> int | None:
    """XLA's known trip count of a while loop, None when the HLO does not state it."""
    known = re.search(r'"known_trip_count":\{"n":"(\d+)"', attrs)
    return int(known.group(1)) if known else None


def analyse_hlo(text: str) -> dict[str, Any]:
    """Matmul FLOPs and collectives (count, bytes by kind) of the HLO module.

    Loop bodies are multiplied by XLA's known trip count where the HLO states it; the TPU
    compiler often does not, and such a body is counted once (``loops_without_trip_count``
    says how many loops were): the figures are then per program text, a lower bound per step.
    """
    computations: dict[str, list[str]] = {}
    entry, current = None, None
    for line in text.splitlines():
        header = re.match(r"^(ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
        if header and not line.startswith(" "):
            current = header.group(2)
            computations[current] = []
            entry = current if header.group(1) else entry
        elif line.startswith("}"):
            current = None
        elif current is not None:
            computations[current].append(line)

    memo: dict[str, tuple[float, dict]] = {}
    unknown_loops = [0]

    def visit(comp: str) -> tuple[float, dict]:
        if comp in memo:
            return memo[comp]
        memo[comp] = (0.0, {})  # recursion guard
        flops, coll = 0.0, defaultdict(lambda: [0, 0])
        shapes: dict[str, str] = {}
        for line in computations.get(comp, []):
            parts = _split_instruction(line)
            if parts is None:
                continue
            name, shape, opcode, operands, attrs = parts
            shapes[name] = shape
            if opcode in ("dot", "convolution"):
                flops += _matmul_flops(opcode, shape, operands, attrs, shapes)
            kind = opcode.removesuffix("-start")
            if kind in COLLECTIVES:
                coll[kind][0] += 1
                # an async start's result tuple holds the operand too: count the output once
                nbytes = _shape_bytes(shape)
                coll[kind][1] += nbytes // 2 if opcode.endswith("-start") else nbytes
            times = 1
            if opcode == "while":
                trip = _trip_count(attrs)
                times = 1 if trip is None else trip
                unknown_loops[0] += trip is None
            called = re.findall(r"(?:calls|body|to_apply)=%?([\w.\-]+)", attrs)
            branches = re.search(r"branch_computations=\{([^}]*)\}", attrs)
            if branches:  # a conditional runs one branch: count the largest
                options = [visit(b.strip().lstrip("%")) for b in branches.group(1).split(",")]
                best = max(options, key=lambda o: o[0])
                flops += best[0]
                for k, (n, b) in best[1].items():
                    coll[k][0] += n
                    coll[k][1] += b
            for sub in called:
                if kind in COLLECTIVES or opcode in ("reduce", "reduce-window", "scatter", "sort"):
                    continue  # scalar reducers
                sub_flops, sub_coll = visit(sub)
                flops += times * sub_flops
                for k, (n, b) in sub_coll.items():
                    coll[k][0] += times * n
                    coll[k][1] += times * b
        memo[comp] = (flops, {k: list(v) for k, v in coll.items()})
        return memo[comp]

    flops, coll = visit(entry) if entry else (0.0, {})
    return {
        "matmul_flops": flops,
        "collectives": {k: {"count": n, "bytes": b} for k, (n, b) in sorted(coll.items())},
        "loops_without_trip_count": unknown_loops[0],
    }


def model_flops(cfg, params: Any, batch: int, seq_len: int) -> float:
    """Model FLOPs of one training step (the MFU convention: forward + backward = 3 forwards;
    the reversible recomputation is not counted as useful work).

    Every matrix parameter (``kernel``) does 2 FLOPs per token forward; attention adds QK^T and
    AV over the keys each query sees: LSH ``n_hashes x (chunks_before + 1) x chunk`` keys,
    local ``(chunks_before + 1) x chunk``, full ``seq_len / 2`` (causal) or ``seq_len``.
    """
    import jax

    kernels = sum(
        math.prod(leaf.shape)
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
        if "kernel" in jax.tree_util.keystr(path)
    )
    tokens = batch * seq_len
    width = cfg.n_heads * cfg.d_head
    attention = 0.0
    for kind in cfg.layer_kinds():
        if kind == "lsh":
            keys = cfg.lsh_n_hashes * (cfg.lsh_chunks_before + 1) * cfg.lsh_chunk_len
        elif kind == "local":
            keys = (cfg.local_chunks_before + 1) * cfg.local_chunk_len
        else:
            keys = seq_len / 2 if cfg.causal else seq_len
        attention += 4.0 * keys * width  # QK^T and AV, 2 FLOPs per multiply-add
    return 3.0 * tokens * (2.0 * kernels + attention)


# ------------------------------------------------------------------------------------------------
# Compiling.


def chip_of(device) -> str:
    kind = getattr(device, "device_kind", "")
    if kind not in _KIND_TO_CHIP:
        raise ValueError(f"unknown TPU kind {kind!r}; known: {sorted(_KIND_TO_CHIP)}")
    return _KIND_TO_CHIP[kind]


def _largest(tree: Any, top: int = 3) -> list[tuple[str, int]]:
    """The ``top`` largest per-chip arrays of an abstract, sharded pytree: (path, bytes)."""
    import jax

    sizes = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        shard = leaf.sharding.shard_shape(leaf.shape)
        name = jax.tree_util.keystr(path, simple=True, separator=".")
        sizes.append((name, math.prod(shard) * leaf.dtype.itemsize))
    return sorted(sizes, key=lambda x: -x[1])[:top]


def _per_chip_bytes(tree: Any) -> int:
    """Bytes per chip of an abstract, sharded pytree."""
    import jax

    return sum(
        math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree)
    )


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def compile_program(name: str, lowered, hbm: int, args: Any, fsdp: int) -> dict[str, Any]:
    """Compiles ``lowered`` for the TPU; its per-chip memory, FLOPs and collectives."""
    start = time.perf_counter()
    try:
        compiled = lowered.compile()
    except Exception as err:  # XLA's TPU compiler refuses programs over the chip's HBM
        message = str(err)
        if "RESOURCE_EXHAUSTED" not in message and "out of memory" not in message.lower():
            raise
        error = DoesNotFit(_does_not_fit(name, message, None, hbm, args, fsdp))
        error.xla_message = message[:3000]
        raise error from None
    seconds = time.perf_counter() - start
    mem = compiled.memory_analysis()
    memory = {
        "argument_bytes": mem.argument_size_in_bytes,
        "output_bytes": mem.output_size_in_bytes,
        "alias_bytes": mem.alias_size_in_bytes,
        "temp_bytes": mem.temp_size_in_bytes,
        "code_bytes": mem.generated_code_size_in_bytes,
    }
    total = (
        memory["argument_bytes"]
        + memory["output_bytes"]
        - memory["alias_bytes"]
        + memory["temp_bytes"]
        + memory["code_bytes"]
    )
    memory["total_bytes"] = total
    memory["hbm_bytes"] = hbm
    if total > hbm:
        raise DoesNotFit(_does_not_fit(name, None, memory, hbm, args, fsdp))
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    hlo = analyse_hlo(compiled.as_text())
    return {
        "memory": memory,
        "hlo_matmul_flops": hlo["matmul_flops"],
        "xla_cost_analysis_flops": float(cost.get("flops", 0.0)) if cost else None,
        "collectives": hlo["collectives"],
        "loops_without_trip_count": hlo["loops_without_trip_count"],
        "compile_seconds": seconds,
    }


def _does_not_fit(name, message, memory, hbm, args, fsdp) -> str:
    biggest = ", ".join(f"{path} {_gib(b)}" for path, b in _largest(args))
    if memory is not None:
        temps = memory["temp_bytes"]
        need = f"needs {_gib(memory['total_bytes'])} per chip (temporaries {_gib(temps)})"
        state_heavy = memory["argument_bytes"] > temps
    else:  # XLA's TPU compiler: "Used 20.1G of 15.75G hbm" and its largest allocations
        found = re.search(r"Used (\S+) of (\S+) hbm", message)
        need = f"needs {found.group(1)} of {found.group(2)}" if found else "exceeds HBM"
        sizes = re.findall(r"Size: (\S+)", message)
        shapes = re.findall(r"Shape: (\S+)", message)
        if sizes:
            temps = ", ".join(f"{z} {sh}" for z, sh in zip(sizes[:3], shapes[:3], strict=False))
            need += f" (largest temporaries: {temps})"
        state_heavy = _per_chip_bytes(args) > hbm / 2
    if state_heavy and fsdp == 1:
        fix = "shard parameters and optimizer state with FSDP (--mesh data,fsdp,model)"
    elif state_heavy:
        fix = "use a larger fsdp or model axis in --mesh, or more chips"
    else:
        fix = (
            "raise --config.grad_accum_steps (smaller micro-batches), lower the per-chip batch, "
            "or use a larger model axis in --mesh"
        )
    return (
        f"{name} does not fit: {need} > {_gib(hbm)} HBM; largest inputs per chip: {biggest}; {fix}"
    )


def _decode_programs(model_cfg, mesh, batch: int, prompt_len: int, max_length: int):
    """Lowered prefill and decode step of ``reformer_jax.decoding`` with sharded abstract
    inputs: ``[(name, lowered, args)]``."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from reformer_jax import sharding as shd
    from reformer_jax.decoding import loop as gen
    from reformer_jax.model import ReformerLM

    abstract = nnx.eval_shape(lambda: ReformerLM(model_cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    state_sharding = shd.param_shardings(mesh, state)
    state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, state_sharding
    )
    rows = NamedSharding(mesh, P(shd.BATCH_AXES))
    spec = gen.decode_spec(model_cfg, max_length)
    # The layers' random draws (LSH rotations, Performer features), replicated.
    draws = jax.eval_shape(lambda: gen._draws(abstract, spec, None))
    draws = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=shd.replicated(mesh)), draws
    )
    prompts = jax.ShapeDtypeStruct(
        (batch, prompt_len), jnp.int32, sharding=NamedSharding(mesh, P(shd.BATCH_AXES, None))
    )
    lengths = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=rows)
    prefill_args = (state, prompts, lengths, draws)
    prefill = gen._prefill_jit.lower(
        graphdef, *prefill_args, spec=spec, all_logits=False
    )  # the jitted core of ``prefill``
    _, cache = jax.eval_shape(
        lambda s, p, n, r: gen._prefill_jit(graphdef, s, p, n, r, spec=spec, all_logits=False),
        *prefill_args,
    )

    def place(path, leaf):
        batch_first = "draws" not in jax.tree_util.keystr(path) and leaf.shape[:1] == (batch,)
        spec_ = P(shd.BATCH_AXES, *[None] * (leaf.ndim - 1)) if batch_first else P()
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=NamedSharding(mesh, spec_))

    cache = jax.tree_util.tree_map_with_path(place, cache)
    tokens = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=rows)
    step_args = (state, cache, tokens, tokens)
    step = gen._step_jit.lower(graphdef, *step_args)  # the jitted core of ``decode_step``
    return [("prefill", prefill, prefill_args), ("decode_step", step, step_args)]


def run(
    config,
    topology: str,
    mesh_shape: tuple[int, ...],
    *,
    mfu: float = 0.4,
    decode: bool = True,
    decode_batch: int | None = None,
    prompt_len: int | None = None,
) -> dict[str, Any]:
    """Compiles the training step (and decoding) of ``config`` for ``topology``; the report."""
    import jax
    from jax.experimental import topologies

    from reformer_jax import sharding as shd
    from reformer_jax.train.trainer import _model_config, build_train_step

    try:
        devices = topologies.get_topology_desc(topology_name=topology, platform="tpu").devices
    except jax.errors.JaxRuntimeError as err:  # libtpu's message is a multi-line status
        raise ValueError(
            f"--topology {topology}: {str(err).splitlines()[0]}; give a TPU generation and "
            "shape, e.g. v5e:4x4, v5p:2x4x4, v6e:8x8"
        ) from None
    chip = chip_of(devices[0])
    hbm, peak = CHIPS[chip]
    config.mesh_shape = tuple(mesh_shape)
    mesh = shd.make_mesh(mesh_shape, devices=devices)
    axes = dict(mesh.shape)
    model_cfg = _model_config(config, config.model.get("vocab_size") or 256)
    parts = build_train_step(config, model_cfg, mesh)
    args = parts.abstract_args(config.batch_size, config.seq_len)
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(parts.abstract_params))
    report: dict[str, Any] = {
        "topology": topology,
        "chip": chip,
        "chips": len(devices),
        "mesh": axes,
        "hbm_bytes_per_chip": hbm,
        "peak_bf16_flops_per_chip": peak,
        "assumed_mfu": mfu,
        "parameters": n_params,
        "batch_size": config.batch_size,
        "seq_len": config.seq_len,
        "grad_accum_steps": config.grad_accum_steps,
        "dtype": model_cfg.dtype,
        "programs": {},
        "compiled_not_run": True,
    }
    start = time.perf_counter()
    with jax.set_mesh(mesh):  # the layers' activation sharding constraints read it
        lowered = parts.step.lower(*args)
    lower_seconds = time.perf_counter() - start
    train = compile_program("train_step", lowered, hbm, args, axes[shd.FSDP])
    train["lower_seconds"] = lower_seconds
    flops = model_flops(model_cfg, parts.abstract_params, config.batch_size, config.seq_len)
    train["model_flops_per_chip"] = flops / len(devices)
    step_time = train["model_flops_per_chip"] / (peak * mfu)
    train["projected_step_seconds"] = step_time
    train["projected_tokens_per_second"] = config.batch_size * config.seq_len / step_time
    report["programs"]["train_step"] = train
    if decode and model_cfg.causal and model_cfg.residual == "reversible":
        batch = decode_batch or config.batch_size
        plen = prompt_len or config.seq_len // 2
        start = time.perf_counter()
        with jax.set_mesh(mesh):
            programs = _decode_programs(model_cfg, mesh, batch, plen, config.seq_len)
        report["decode_lower_seconds"] = time.perf_counter() - start
        for name, lowered, dargs in programs:
            out = compile_program(name, lowered, hbm, dargs, axes[shd.FSDP])
            out["batch"], out["prompt_len"], out["max_length"] = batch, plen, config.seq_len
            report["programs"][name] = out
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"{report['topology']} ({report['chips']} x {report['chip']}, "
        f"{_gib(report['hbm_bytes_per_chip'])} HBM each), mesh {report['mesh']}; "
        f"{report['parameters'] / 1e6:.1f}M parameters; compiled, not run"
    ]
    for name, prog in report["programs"].items():
        m = prog["memory"]
        lines.append(
            f"  {name}: per chip arguments {_gib(m['argument_bytes'])}, temporaries "
            f"{_gib(m['temp_bytes'])}, outputs {_gib(m['output_bytes'])} (aliased "
            f"{_gib(m['alias_bytes'])}), total {_gib(m['total_bytes'])} of "
            f"{_gib(m['hbm_bytes'])}"
        )
        coll = ", ".join(
            f"{k} x{v['count']} {v['bytes'] / 2**20:.1f} MiB"
            for k, v in prog["collectives"].items()
        )
        lines.append(f"    collectives per chip: {coll or 'none'}")
        lines.append(
            f"    matmul FLOPs in the HLO per chip: {prog['hlo_matmul_flops'] / 1e9:,.1f} G "
            f"({prog['loops_without_trip_count']} loop bodies counted once)"
        )
        if "projected_tokens_per_second" in prog:
            lines.append(
                f"    model FLOPs per chip per step: {prog['model_flops_per_chip'] / 1e12:,.2f} T"
            )
            lines.append(
                f"    projected at {100 * report['assumed_mfu']:.0f}% MFU of "
                f"{report['peak_bf16_flops_per_chip'] / 1e12:.0f} TFLOP/s: "
                f"{prog['projected_step_seconds'] * 1e3:.1f} ms/step, "
                f"{prog['projected_tokens_per_second']:,.0f} tokens/s"
            )
    return "\n".join(lines)


def _parse_mesh(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(x) for x in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) not in (2, 3):
        raise ValueError(f"--mesh {text!r}: give data,model or data,fsdp,model (e.g. 4,4)")
    return shape


def main(argv: list[str]) -> int:
    from absl import flags

    flags_ = flags.FLAGS
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return 2
    import jax

    from bench.machine import machine_info

    jax.config.update("jax_platforms", "cpu")  # the host; the TPU is only described
    config = flags_.config
    try:
        mesh = _parse_mesh(flags_.mesh) if flags_.mesh else tuple(config.mesh_shape)
        report = run(
            config,
            flags_.topology,
            mesh,
            mfu=flags_.mfu,
            decode=flags_.decode,
            decode_batch=flags_.decode_batch,
            prompt_len=flags_.prompt_len,
        )
    except (DoesNotFit, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        if flags_.json and isinstance(err, DoesNotFit):  # a result too: the pod table lists it
            record = {**_identity(flags_, mesh), "error": str(err)}
            record["xla_message"] = getattr(err, "xla_message", None)
            _append(flags_.json, record)
        return 1
    report.update(_identity(flags_, mesh))
    report["machine"] = machine_info()
    print(format_report(report))
    if flags_.json:
        _append(flags_.json, report)
    return 0


def _identity(flags_, mesh) -> dict[str, Any]:
    args, skip = [], False
    for arg in sys.argv[1:]:  # the command without where its output went
        if not skip and not arg.startswith("--json"):
            args.append(arg)
        skip = arg == "--json"
    return {
        "config": flags_["config"].config_filename,
        "topology": flags_.topology,
        "mesh_shape": list(mesh),
        "command": " ".join(["python -m bench.aot_tpu", *args]),
    }


def _append(json_path: str, record: dict[str, Any]) -> None:
    from reformer_jax.paths import as_path

    path = as_path(json_path)
    records = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps([*records, record], indent=1) + "\n")


def _complete(config: Any) -> Any:
    # Every ReformerConfig field and training setting can be overridden, as in train.py.
    from configs.common import base_config
    from reformer_jax.train.command_line import complete_config

    return complete_config(config, train_defaults=base_config())


def _define_flags() -> None:
    from absl import flags

    from reformer_jax.train.command_line import define_config_flag

    define_config_flag(_complete)
    flags.declare_key_flag("config")  # list it in --help with the flags below
    flags.DEFINE_string("topology", "v5e:2x2", "TPU topology, e.g. v5e:4x4, v5p:2x4x4, v6e:8x8.")
    flags.DEFINE_string("mesh", None, "data,model or data,fsdp,model (default: the config's).")
    flags.DEFINE_float("mfu", 0.4, "Assumed model FLOPs utilisation for the projection.")
    flags.DEFINE_bool("decode", True, "Also compile the decoding prefill and decode step.")
    flags.DEFINE_integer("decode_batch", None, "Decoding rows (default: config.batch_size).")
    flags.DEFINE_integer("prompt_len", None, "Prefill length (default: seq_len // 2).")
    flags.DEFINE_string("json", None, "Append the report to this JSON list.")
    flags.mark_flag_as_required("config")


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    # Only compiling: no chip is opened, so several compiles may share libtpu (its lockfile
    # otherwise allows one process per machine).
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from reformer_jax.train.command_line import check_command_line, run_absl

    problem = check_command_line(sys.argv[1:], None, _complete)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    _define_flags()
    run_absl(lambda argv: sys.exit(main(argv)))
