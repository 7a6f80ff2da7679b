"""The machine's floor under each op of a compiled step: its FLOPs at the measured matmul peak,
its bytes at the measured memory bandwidth.

A profile says how long each XLA op ran; this module says how long it could have run at best on
the same machine, so the gap can be read per category instead of guessed. For every instruction
of the compiled (optimised) HLO it counts

- FLOPs: 2 x (output elements) x (contracted elements) for every dot, inside fusions too;
- bytes: what the op must read and write at least. A fusion reads each operand once, except
  operands it only slices (then only the slices) and the buffer a ``dynamic-update-slice``
  updates in place (nothing: the update is the write); it writes its result, or only the update
  when its root updates in place. A loop's stacked output is therefore charged the block it
  writes per iteration, not the whole stack.

The floor of one execution is ``max(flops / matmul_peak, bytes / bandwidth(footprint))``, where
the bandwidth is the one measured for a working set of that op's size (:func:`memory_bandwidth`
times in-place passes over buffers of 1 to 256 MiB: cache-sized working sets stream faster than
DRAM-sized ones). Sorts are charged one pass, which no comparison sort achieves, so their ratio
is an upper bound on the slack. Everything here is a floor for the work as compiled: a different
algorithm (fewer passes, no recomputation) can go lower.
"""

from __future__ import annotations

import dataclasses
import math
import re
import statistics
import time
from collections.abc import Callable, Iterable, Sequence

DTYPE_BYTES = {
    "pred": 1,
    "s4": 1,
    "u4": 1,
    "s8": 1,
    "u8": 1,
    "s16": 2,
    "u16": 2,
    "f16": 2,
    "bf16": 2,
    "s32": 4,
    "u32": 4,
    "f32": 4,
    "s64": 8,
    "u64": 8,
    "f64": 8,
    "c64": 8,
    "c128": 16,
}
_ARRAY = re.compile(r"\b(" + "|".join(DTYPE_BYTES) + r")\[([\d,]*)\]")
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT )?%([\w.\-]+) = (\(.*?\)|\S+) ([\w\-]+)\((.*?)\)(.*)$", re.M
)
_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) \(.*\{$", re.M)
# Ops that are bookkeeping (no data of their own moves) or containers whose body ops are
# timed as events of their own.
_NO_WORK = frozenset(
    ("parameter", "constant", "bitcast", "tuple", "get-tuple-element", "while", "call")
    + ("conditional", "after-all", "partition-id", "replica-id", "iota")
)
_SLICING = frozenset(("dynamic-slice", "slice", "gather"))


def array_bytes(shape: str) -> int:
    """Bytes of every array in an HLO shape (a tuple's elements summed)."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape):
        total += DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
    return total


def array_dims(shape: str) -> tuple[int, ...]:
    match = _ARRAY.search(shape)
    if match is None:
        return ()
    return tuple(int(d) for d in match.group(2).split(",") if d)


@dataclasses.dataclass(frozen=True)
class Instruction:
    name: str
    shape: str
    opcode: str
    operands: tuple[str, ...]
    attributes: str
    computation: str


@dataclasses.dataclass
class Module:
    """The instructions of an HLO module text, by name (HLO names are unique in a module)."""

    instructions: dict[str, Instruction]
    computations: dict[str, list[str]]  # computation -> its instructions, in order
    roots: dict[str, str]  # computation -> its root instruction
    entry: str = ""  # the entry computation's name

    @classmethod
    def parse(cls, hlo_text: str) -> Module:
        instructions: dict[str, Instruction] = {}
        computations: dict[str, list[str]] = {}
        roots: dict[str, str] = {}
        current = entry = ""
        for line in hlo_text.splitlines():
            header = _COMPUTATION.match(line)
            if header:
                current = header.group(1)
                computations[current] = []
                if line.startswith("ENTRY "):
                    entry = current
                continue
            match = _INSTRUCTION.match(line)
            if not match:
                continue
            name, shape, opcode, operands, attributes = match.groups()
            instructions[name] = Instruction(
                name,
                shape,
                opcode,
                tuple(re.findall(r"%([\w.\-]+)", operands)),
                attributes,
                current,
            )
            computations.setdefault(current, []).append(name)
            if line.lstrip().startswith("ROOT "):
                roots[current] = name
        return cls(instructions, computations, roots, entry)

    def called(self, instruction: Instruction) -> str | None:
        match = re.search(r"calls=%([\w.\-]+)", instruction.attributes)
        return match.group(1) if match else None


def dot_flops(module: Module, dot: Instruction) -> int:
    """2 x output elements x contracted elements (the multiply-adds of a dot, counted twice)."""
    lhs = module.instructions.get(dot.operands[0]) if dot.operands else None
    match = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", dot.attributes)
    if lhs is None or match is None:
        return 0
    lhs_dims = array_dims(lhs.shape)
    contracted = math.prod(lhs_dims[int(d)] for d in match.group(1).split(",") if d)
    return 2 * math.prod(array_dims(dot.shape)) * contracted


@dataclasses.dataclass(frozen=True)
class Work:
    flops: int
    bytes_read: int
    bytes_written: int

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written


def _fusion_work(module: Module, fusion: Instruction, body: str) -> Work:
    names = module.computations.get(body, [])
    inside = [module.instructions[n] for n in names]
    users: dict[str, list[Instruction]] = {}
    for instruction in inside:
        for operand in instruction.operands:
            users.setdefault(operand, []).append(instruction)
    params = [i for i in inside if i.opcode == "parameter"]
    flops = sum(dot_flops(module, i) for i in inside if i.opcode in ("dot", "convolution"))
    read = 0
    for param in params:
        param_users = users.get(param.name, [])
        if param_users and all(
            u.opcode in _SLICING and u.operands[0] == param.name for u in param_users
        ):
            read += sum(array_bytes(u.shape) for u in param_users)
        elif param_users and all(
            u.opcode == "dynamic-update-slice" and u.operands[0] == param.name for u in param_users
        ):
            continue  # updated in place: the write is counted at the root
        else:
            read += array_bytes(param.shape)
    written = _written(module, module.roots.get(body, ""))
    if written is None:
        written = array_bytes(fusion.shape)
    return Work(flops, read, written)


def _written(module: Module, root_name: str) -> int | None:
    root = module.instructions.get(root_name)
    if root is None:
        return None
    if root.opcode == "dynamic-update-slice":
        update = module.instructions.get(root.operands[1])
        return array_bytes(update.shape) if update else None
    if root.opcode == "tuple":
        parts = [_written(module, o) for o in root.operands]
        return sum(
            p if p is not None else array_bytes(module.instructions[o].shape)
            for p, o in zip(parts, root.operands, strict=True)
        )
    if root.opcode == "bitcast":
        return _written(module, root.operands[0])
    return array_bytes(root.shape)


def op_work(module: Module, name: str) -> Work | None:
    """What one execution of instruction ``name`` must compute and move; None for bookkeeping."""
    instruction = module.instructions.get(name)
    if instruction is None or instruction.opcode in _NO_WORK:
        return None
    operand_bytes = [
        array_bytes(module.instructions[o].shape)
        for o in instruction.operands
        if o in module.instructions
    ]
    opcode = instruction.opcode
    if opcode == "fusion":
        body = module.called(instruction)
        if body is not None:
            return _fusion_work(module, instruction, body)
    if opcode == "dynamic-update-slice":
        update = operand_bytes[1] if len(operand_bytes) > 1 else 0
        return Work(0, update, update)
    if opcode in ("dynamic-slice", "slice"):
        size = array_bytes(instruction.shape)
        return Work(0, size, size)
    if opcode == "gather":
        size = array_bytes(instruction.shape)
        return Work(0, size + (operand_bytes[1] if len(operand_bytes) > 1 else 0), size)
    if opcode == "scatter":
        # In place: read the indices and updates, read-modify-write the rows they touch.
        indices, updates = operand_bytes[1:3] if len(operand_bytes) >= 3 else (0, 0)
        return Work(0, indices + 2 * updates, updates)
    flops = dot_flops(module, instruction) if opcode == "dot" else 0
    return Work(flops, sum(operand_bytes), array_bytes(instruction.shape))


@dataclasses.dataclass(frozen=True)
class Machine:
    """Measured rates: the float32 matmul peak and the bandwidth by working-set size."""

    matmul_gflops: float
    bandwidth: tuple[tuple[int, float], ...]  # (working-set bytes, GB/s), increasing sizes

    def bandwidth_for(self, footprint: int) -> float:
        """The best GB/s measured for any working set at least ``footprint`` bytes large.

        A working set streams at least as fast as a larger one (it fits in whatever cache the
        larger one fits in), so the best rate over the sizes that hold it is the floor's rate;
        beyond the largest size measured, the largest size's rate.
        """
        fitting = [rate for size, rate in self.bandwidth if size >= footprint]
        return max(fitting) if fitting else self.bandwidth[-1][1]

    def floor_s(self, work: Work, *, from_dram: bool = False) -> float:
        """Seconds at the better of the two rates' limits: the FLOPs at the matmul peak, the
        bytes at the bandwidth of the op's working set (``from_dram``: of the largest set
        measured, for data that is not in cache when the op starts)."""
        compute = work.flops / (self.matmul_gflops * 1e9)
        rate = self.bandwidth[-1][1] if from_dram else self.bandwidth_for(work.bytes)
        return max(compute, work.bytes / (rate * 1e9))


def memory_bandwidth(
    sizes_mib: Sequence[int] = (1, 4, 16, 64, 256), passes: int = 8, repeats: int = 5
) -> tuple[tuple[int, float], ...]:
    """GB/s of an XLA loop of in-place ``a * x + b`` passes over float32 buffers of each size.

    Each pass reads and writes the buffer once (2 x its bytes); the working set is the buffer,
    so small sizes measure the caches and large ones DRAM. Small buffers get more passes (a
    gigabyte moved per measurement at least), so the loop's fixed costs do not count. Best of
    ``repeats``, which the floor wants (a floor must not be slower than the machine).
    """
    import jax
    import jax.numpy as jnp

    results = []
    for mib in sizes_mib:
        x = jnp.ones((mib * 2**20 // 4,), jnp.float32)
        n_passes = max(passes, 2**30 // (2 * x.nbytes))

        @jax.jit
        def stream(x, n_passes=n_passes):
            return jax.lax.fori_loop(0, n_passes, lambda i, c: c * 1.0001 + 1e-4, x)

        stream(x).block_until_ready()
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            stream(x).block_until_ready()
            best = min(best, time.perf_counter() - start)
        # Working set read and written per pass: the op footprint :meth:`Machine.floor_s` uses.
        results.append((x.nbytes * 2, n_passes * 2 * x.nbytes / best / 1e9))
    return tuple(results)


def matmul_peak(sizes: tuple[int, ...] = (1024, 2048, 4096), repeats: int = 7) -> float:
    """The machine's float32 matrix-multiply rate through XLA (GFLOP/s), best over sizes."""
    import jax

    best = 0.0
    for n in sizes:
        a = jax.random.normal(jax.random.key(0), (n, n))
        b = jax.random.normal(jax.random.key(1), (n, n))
        f = jax.jit(lambda x, y: x @ y)
        f(a, b).block_until_ready()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            f(a, b).block_until_ready()
            times.append(time.perf_counter() - start)
        best = max(best, 2 * n**3 / statistics.median(times) / 1e9)
    return best


@dataclasses.dataclass
class CategoryFloor:
    measured_s: float = 0.0
    floor_s: float = 0.0
    dram_floor_s: float = 0.0  # the same with every byte at DRAM bandwidth
    compute_floor_s: float = 0.0  # the part of floor_s set by FLOPs (the rest by bytes)
    flops: int = 0
    bytes: int = 0
    sort_s: float = 0.0  # sorts: measured, but neither rate bounds a comparison sort

    @property
    def ratio(self) -> float:
        return self.measured_s / self.floor_s if self.floor_s else math.inf


def floors(
    events: Iterable[tuple[str, float]],
    module: Module,
    machine: Machine,
    category_of: Callable[[str], str],
) -> tuple[dict[str, CategoryFloor], list[tuple[str, float, float, int]]]:
    """Per category: measured seconds against the floor. ``events`` are (op name, seconds).

    Also returns every op as (name, measured s, floor s, executions), largest gap first.
    """
    per_op: dict[str, list[float]] = {}
    for name, seconds in events:
        per_op.setdefault(name, []).append(seconds)
    table: dict[str, CategoryFloor] = {}
    ops = []
    for name, times in per_op.items():
        work = op_work(module, name)
        if work is None:
            continue
        row = table.setdefault(category_of(name), CategoryFloor())
        if module.instructions[name].opcode == "sort":
            row.sort_s += sum(times)
            continue
        floor = machine.floor_s(work)
        compute = work.flops / (machine.matmul_gflops * 1e9)
        row.measured_s += sum(times)
        row.floor_s += floor * len(times)
        row.dram_floor_s += machine.floor_s(work, from_dram=True) * len(times)
        row.compute_floor_s += (compute if compute >= floor else 0.0) * len(times)
        row.flops += work.flops * len(times)
        row.bytes += work.bytes * len(times)
        ops.append((name, sum(times), floor * len(times), len(times)))
    ops.sort(key=lambda op: op[2] - op[1])
    return dict(sorted(table.items(), key=lambda kv: -(kv[1].measured_s + kv[1].sort_s))), ops


def markdown(table: dict[str, CategoryFloor], machine: Machine) -> str:
    lines = [
        "| XLA ops | measured, s | floor, s | bound by | GFLOP | GB moved | measured / floor "
        "| floor from DRAM, s | measured / that |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    sorts = sum(row.sort_s for row in table.values())
    for name, row in table.items():
        if not row.floor_s:
            continue
        bound = "FLOPs" if row.compute_floor_s >= row.floor_s / 2 else "bytes"
        lines.append(
            f"| {name} | {row.measured_s:.2f} | {row.floor_s:.2f} | {bound} | "
            f"{row.flops / 1e9:.0f} | {row.bytes / 1e9:.1f} | {row.ratio:.2f}x | "
            f"{row.dram_floor_s:.2f} | {row.measured_s / row.dram_floor_s:.2f}x |"
        )
    measured = sum(r.measured_s for r in table.values())
    floor = sum(r.floor_s for r in table.values())
    dram = sum(r.dram_floor_s for r in table.values())
    lines.append(
        f"| all ops | {measured:.2f} | {floor:.2f} | | | | {measured / floor:.2f}x | "
        f"{dram:.2f} | {measured / dram:.2f}x |"
    )
    if sorts:
        lines.append(
            f"| sorts (not in the rows above: a comparison sort is bound by neither rate) | "
            f"{sorts:.2f} | | | | | | | |"
        )
    rates = ", ".join(f"{size / 2**20:.0f} MiB {rate:.0f}" for size, rate in machine.bandwidth)
    lines.append("")
    lines.append(
        f"Matmul peak {machine.matmul_gflops:.0f} GFLOP/s; bandwidth by working set (GB/s): "
        f"{rates}."
    )
    return "\n".join(lines)


def batched_dot_rate(
    batch: int = 32, queries: int = 64, keys: int = 128, depth: int = 64, blocks: int = 64
) -> float:
    """GFLOP/s of the window loop's dot pair (scores, then probabilities x values) on its own.

    Shaped like one block of :mod:`reformer_jax.kernels.window` (``batch`` chunks of ``queries``
    rows against ``keys``-long windows of ``depth``-wide vectors), in a loop that writes each
    block's output into a stacked result as the kernel does: the best rate XLA reaches for
    these small matrices on this machine, to set beside the square-matrix peak.
    """
    import jax
    import jax.numpy as jnp

    q = jax.random.normal(jax.random.key(0), (blocks, batch, queries, depth))
    k = jax.random.normal(jax.random.key(1), (blocks, batch, keys, depth))

    def block(i, out):
        scores = jnp.einsum("bqd,bkd->bqk", q[i], k[i])
        return out.at[i].set(jnp.einsum("bqk,bkd->bqd", jnp.exp(scores - 10.0), k[i]))

    @jax.jit
    def loop(q, k):
        return jax.lax.fori_loop(0, blocks, block, jnp.zeros_like(q))

    loop(q, k).block_until_ready()
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        loop(q, k).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * 2 * blocks * batch * queries * keys * depth / best / 1e9


def main(argv: list[str] | None = None) -> None:
    """Prints the machine's rates: ``python -m bench.roofline``."""
    import argparse

    argparse.ArgumentParser(
        description="The machine's float32 matmul peak, the window loop's dot rate and the "
        "memory bandwidth by working-set size (the rates bench.profile_step's floor uses).",
    ).parse_args(argv)
    from reformer_jax import runtime

    runtime.configure_xla()
    print(f"float32 matmul peak (square, 1024-4096): {matmul_peak():.0f} GFLOP/s")
    print(f"window-loop dot pair ([32, 64, 64] x [32, 128, 64]): {batched_dot_rate():.0f} GFLOP/s")
    for size, rate in memory_bandwidth():
        print(f"bandwidth, {size / 2**20:.0f} MiB read + written per pass: {rate:.0f} GB/s")


if __name__ == "__main__":
    main()
