"""The training step's matrix products, each timed alone through XLA and through other libraries.

    python -m bench.profile_step                  # writes the trace and the HLO this reads
    python -m bench.dot_shapes                    # XLA, NumPy's BLAS, and PyTorch if installed
    python -m bench.dot_shapes --json-out dots.json
    other-python -m bench.dot_shapes --from-json dots.json   # e.g. where PyTorch is installed

:mod:`bench.roofline` charges every dot at the square-matrix peak. A step's products are not
square: the window loop multiplies batches of 64 x 64 by 64 x 128 blocks, and the weight
gradients contract over all 16K rows. This lists every distinct product the traced step ran
(shape, operand orientation, executions and the time they took, read from the HLO and the
trace ``bench.profile_step`` left) and times the same product on its own through each library
at hand: XLA as the step compiles it, NumPy's BLAS (OpenBLAS in the wheels), PyTorch's (MKL and
oneDNN on x86) when it is installed. The best of them is a measured rate for that shape on this
machine, so the step's dots can be set against what the machine demonstrably does for the same
work, beside the square-matrix peak. Nothing here needs JAX unless XLA is timed, so
``--from-json`` runs under any Python with NumPy (and PyTorch).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import importlib.util
import json
import math
import pathlib
import re
import sys
import time
from collections.abc import Callable, Iterable

from bench import roofline

_LAYOUT = re.compile(r"\]\{([\d,]*)")


@dataclasses.dataclass(frozen=True, order=True)
class DotShape:
    """``[batch, m, k] x [batch, k, n] -> [batch, m, n]`` with each operand's stored orientation.

    ``lhs_km``: the left operand is stored ``[k, m]`` (contracted over its rows, as a weight
    gradient's activations are); ``rhs_nk``: the right one is stored ``[n, k]`` (as keys are
    when scores are formed). The four combinations are BLAS's NN, TN, NT and TT.
    """

    batch: int
    m: int
    k: int
    n: int
    lhs_km: bool = False
    rhs_nk: bool = False

    @property
    def form(self) -> str:
        return ("T" if self.lhs_km else "N") + ("T" if self.rhs_nk else "N")

    @property
    def flops(self) -> int:
        return 2 * self.batch * self.m * self.k * self.n

    def operand_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        lhs = (self.k, self.m) if self.lhs_km else (self.m, self.k)
        rhs = (self.n, self.k) if self.rhs_nk else (self.k, self.n)
        if self.batch == 1:
            return lhs, rhs
        return (self.batch, *lhs), (self.batch, *rhs)

    def label(self) -> str:
        batch = f"{self.batch} x " if self.batch > 1 else ""
        return f"{batch}[{self.m}, {self.k}] x [{self.k}, {self.n}] {self.form}"


def _dims(text: str) -> list[int]:
    return [int(d) for d in text.split(",") if d]


def _major_to_minor(shape: str) -> list[int]:
    """Dimension indices from the outermost in memory to the innermost (row-major if absent)."""
    rank = len(roofline.array_dims(shape))
    match = _LAYOUT.search(shape)
    minor_to_major = _dims(match.group(1)) if match else []
    if len(minor_to_major) != rank:
        return list(range(rank))
    return minor_to_major[::-1]


def _operand_order(
    shape: str, contracted: list[int], batch: list[int]
) -> tuple[int, int, int, bool]:
    """(batch size, free size, contracted size, contracted stored outside the free dims?)."""
    dims = roofline.array_dims(shape)
    free = [d for d in range(len(dims)) if d not in contracted and d not in batch]
    order = _major_to_minor(shape)
    position = {d: i for i, d in enumerate(order)}
    contracted_outer = bool(free) and min(position[d] for d in contracted) < min(
        position[d] for d in free
    )
    return (
        math.prod(dims[d] for d in batch),
        math.prod(dims[d] for d in free),
        math.prod(dims[d] for d in contracted),
        contracted_outer,
    )


def dot_shapes(module: roofline.Module, name: str) -> tuple[DotShape, ...]:
    """The products instruction ``name`` computes: a ``dot``'s, or those inside a fusion (a
    YNNPACK fusion can hold a whole feed-forward: two dots and what lies between them)."""
    instruction = module.instructions.get(name)
    if instruction is None:
        return ()
    if instruction.opcode == "fusion":
        body = module.called(instruction) or ""
        inside = [module.instructions[n] for n in module.computations.get(body, [])]
    else:
        inside = [instruction]
    return tuple(
        shape for shape in (_dot_shape(module, i) for i in inside if i.opcode == "dot") if shape
    )


def _dot_shape(module: roofline.Module, dot: roofline.Instruction) -> DotShape | None:
    if len(dot.operands) < 2:
        return None
    lhs = module.instructions.get(dot.operands[0])
    rhs = module.instructions.get(dot.operands[1])
    if lhs is None or rhs is None:
        return None

    def attribute(key: str) -> list[int]:
        match = re.search(key + r"=\{([\d,]*)\}", dot.attributes)
        return _dims(match.group(1)) if match else []

    batch, m, k, lhs_outer = _operand_order(
        lhs.shape, attribute("lhs_contracting_dims"), attribute("lhs_batch_dims")
    )
    _, n, _, rhs_outer = _operand_order(
        rhs.shape, attribute("rhs_contracting_dims"), attribute("rhs_batch_dims")
    )
    # The right operand is stored [k, n] when its contracted dims are the outer ones.
    return DotShape(batch, m, k, n, lhs_km=lhs_outer, rhs_nk=not rhs_outer)


Products = tuple[DotShape, ...]  # one op's products (several for a fused feed-forward)


@dataclasses.dataclass
class StepDots:
    """One op kind's executions in the traced step: how many, and their (wall-clock) seconds."""

    runs: int = 0
    seconds: float = 0.0


def step_dots(
    timed: Iterable[tuple[str, float]], module: roofline.Module
) -> dict[Products, StepDots]:
    """The step's products by shape, from ``(op name, seconds)`` per execution (the profile's
    :func:`bench.profile_step.attributed_seconds`). A YNNPACK fusion's time includes the
    elementwise ops XLA fused around its dots, so its rate is a lower bound on the dots'."""
    ops: dict[Products, StepDots] = collections.defaultdict(StepDots)
    for name, seconds in timed:
        products = dot_shapes(module, name)
        if products:
            ops[products].runs += 1
            ops[products].seconds += seconds
    return dict(ops)


# ----------------------------------------------------------------------------------------------
# Timing one product alone. Small products run ``calls`` times per measurement, so that a
# measurement is at least tens of milliseconds and a library's per-call overhead counts as the
# step's loop pays it (once per product).


def _calls(shape: DotShape, target_flops: float = 2e9) -> int:
    return max(1, min(256, round(target_flops / shape.flops)))


def _best_rate(run: Callable[[], None], flops: float, repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    # The fastest run: a rate the machine demonstrably reaches (others are slowed by whatever
    # else ran on this shared host), as a floor wants.
    return flops / min(times) / 1e9


def stored_operands(shape: DotShape, rng) -> tuple:
    """Random float32 operands in their stored orientation, and the NumPy views whose
    ``matmul`` is the product: ``(lhs, rhs, a, b)``."""
    import numpy as np

    lhs_shape, rhs_shape = shape.operand_shapes()
    lhs = rng.standard_normal(lhs_shape, dtype=np.float32)
    rhs = rng.standard_normal(rhs_shape, dtype=np.float32)
    a = np.swapaxes(lhs, -1, -2) if shape.lhs_km else lhs
    b = np.swapaxes(rhs, -1, -2) if shape.rhs_nk else rhs
    return lhs, rhs, a, b


def numpy_rate(shape: DotShape, repeats: int = 7) -> float:
    """GFLOP/s of ``numpy.matmul`` on transposed views (BLAS's transpose flags, no copies)."""
    import numpy as np

    _, _, a, b = stored_operands(shape, np.random.default_rng(0))
    calls = _calls(shape)

    def run() -> None:
        for _ in range(calls):
            np.matmul(a, b)

    return _best_rate(run, shape.flops * calls, repeats)


def torch_rate(shape: DotShape, repeats: int = 7) -> float:
    """GFLOP/s of ``torch.matmul`` on transposed views, with as many threads as usable CPUs."""
    import os

    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    generator = torch.Generator().manual_seed(0)
    lhs_shape, rhs_shape = shape.operand_shapes()
    lhs = torch.randn(lhs_shape, generator=generator)
    rhs = torch.randn(rhs_shape, generator=generator)
    a = lhs.transpose(-1, -2) if shape.lhs_km else lhs
    b = rhs.transpose(-1, -2) if shape.rhs_nk else rhs
    calls = _calls(shape)

    def run() -> None:
        with torch.no_grad():
            for _ in range(calls):
                torch.matmul(a, b)

    return _best_rate(run, shape.flops * calls, repeats)


def dimension_numbers(shape: DotShape) -> tuple:
    """``lax.dot_general``'s numbers for the stored operands: the orientation is given to XLA
    as contracting dimensions, not as transposes."""
    batch = (0,) if shape.batch > 1 else ()
    first = len(batch)
    lhs_contract = first if shape.lhs_km else first + 1
    rhs_contract = first + 1 if shape.rhs_nk else first
    return ((lhs_contract,), (rhs_contract,)), (batch, batch)


def xla_rate(shape: DotShape, repeats: int = 7) -> float:
    """GFLOP/s of the product jitted alone (``calls`` of them in one XLA loop, summed)."""
    import jax
    import jax.numpy as jnp

    lhs_shape, rhs_shape = shape.operand_shapes()
    calls = _calls(shape)
    # One operand pair per call, so XLA cannot hoist the product out of the loop; sliced per
    # iteration as the window loop slices its blocks.
    lhs = jax.random.normal(jax.random.key(0), (calls, *lhs_shape))
    rhs = jax.random.normal(jax.random.key(1), (calls, *rhs_shape))
    numbers = dimension_numbers(shape)

    def product(x, y):
        return jax.lax.dot_general(x, y, numbers)

    out_shape = jax.eval_shape(product, lhs[0], rhs[0]).shape

    @jax.jit
    def loop(x, y):
        if calls == 1:
            return product(x[0], y[0])

        # Summed, not stacked: a fresh [calls, ...] result would be timed page-faulting its
        # memory in (XLA's fusion adds the sum to the dot's output loop).
        def body(i, total):
            return total + product(x[i], y[i])

        return jax.lax.fori_loop(0, calls, body, jnp.zeros(out_shape, x.dtype))

    return _best_rate(lambda: loop(lhs, rhs).block_until_ready(), shape.flops * calls, repeats)


def libraries(include_xla: bool = True) -> dict[str, Callable[[DotShape], float]]:
    """The timers whose library is importable here, in column order."""
    found: dict[str, Callable[[DotShape], float]] = {}
    if include_xla and importlib.util.find_spec("jax") is not None:
        found["XLA alone"] = xla_rate
    found["NumPy (BLAS)"] = numpy_rate
    if importlib.util.find_spec("torch") is not None:
        found["PyTorch"] = torch_rate
    return found


def measure(
    ops: Iterable[Products], timers: dict[str, Callable[[DotShape], float]]
) -> dict[DotShape, dict[str, float]]:
    """GFLOP/s of every distinct product by every timer."""
    shapes = sorted({shape for products in ops for shape in products})
    return {shape: {name: timer(shape) for name, timer in timers.items()} for shape in shapes}


def combined_rate(products: Products, rates: dict[DotShape, dict[str, float]], library: str):
    """GFLOP/s of running every product of ``products`` at ``library``'s rate for its shape."""
    seconds = 0.0
    for shape in products:
        rate = rates.get(shape, {}).get(library)
        if not rate:
            return None
        seconds += shape.flops / rate
    return sum(s.flops for s in products) / seconds


def markdown(ops: dict[Products, StepDots], rates: dict[DotShape, dict[str, float]]) -> str:
    """Per op kind: the step's rate and each library's for the same products alone, and the
    step's time at the best of those rates (the step's own included)."""
    columns = sorted({name for r in rates.values() for name in r}, key=_column_order)
    lines = [
        "| products | runs | in the step, s | in the step, GFLOP/s | "
        + " | ".join(f"{c}, GFLOP/s" for c in columns)
        + " | at the best rate, s |",
        "|---|---:|---:|---:|" + "---:|" * len(columns) + "---:|",
    ]
    total = at_best = 0.0
    for products, step in sorted(ops.items(), key=lambda item: -item[1].seconds):
        gflop = sum(s.flops for s in products) * step.runs / 1e9
        step_rate = gflop / step.seconds if step.seconds else 0.0
        library_rates = {c: combined_rate(products, rates, c) for c in columns}
        best = max([step_rate, *(r for r in library_rates.values() if r)])
        total += step.seconds
        at_best += gflop / best
        cells = " | ".join("-" if r is None else f"{r:.0f}" for r in library_rates.values())
        label = " + ".join(s.label() for s in products)
        lines.append(
            f"| {label} | {step.runs} | {step.seconds:.3f} | {step_rate:.0f} | {cells} | "
            f"{gflop / best:.3f} |"
        )
    lines.append(
        f"| all | | {total:.2f} | | " + "".join(" |" for _ in columns) + f" {at_best:.2f} |"
    )
    return "\n".join(lines)


def _column_order(name: str) -> tuple[int, str]:
    return (0 if name.startswith("XLA") else 1, name)


def to_json(ops: dict[Products, StepDots], rates: dict[DotShape, dict[str, float]]) -> dict:
    return {
        "ops": [
            {"products": [dataclasses.asdict(s) for s in products], **dataclasses.asdict(step)}
            for products, step in ops.items()
        ],
        "rates": [{**dataclasses.asdict(s), "rates": r} for s, r in rates.items()],
    }


def from_json(payload: dict) -> tuple[dict[Products, StepDots], dict[DotShape, dict[str, float]]]:
    def shape(row: dict) -> DotShape:
        return DotShape(**{f.name: row[f.name] for f in dataclasses.fields(DotShape)})

    ops = {
        tuple(shape(p) for p in row["products"]): StepDots(row["runs"], row["seconds"])
        for row in payload["ops"]
    }
    rates = {shape(row): dict(row["rates"]) for row in payload["rates"]}
    return ops, rates


def from_profile(directory: pathlib.Path) -> dict[Products, StepDots]:
    """The step's products from a ``bench.profile_step --out`` directory (HLO and trace)."""
    from bench import profile_step

    hlo = directory / "step.hlo.txt"
    if not hlo.is_file():
        raise SystemExit(
            f"{directory} has no step.hlo.txt: run python -m bench.profile_step --out {directory}"
        )
    events = profile_step.trace_events(directory)
    timed = profile_step.attributed_seconds(profile_step.op_events(events))
    return step_dots(timed, roofline.Module.parse(hlo.read_text()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--profile",
        type=pathlib.Path,
        default=pathlib.Path("/tmp/reformer_jax_step_profile"),
        help="a bench.profile_step --out directory (default: its default)",
    )
    parser.add_argument(
        "--from-json",
        type=pathlib.Path,
        help="the products and rates of an earlier run (--json-out); adds this Python's libraries",
    )
    parser.add_argument("--json-out", type=pathlib.Path, help="write products and rates here")
    args = parser.parse_args(argv)
    has_jax = importlib.util.find_spec("jax") is not None
    if has_jax:
        from reformer_jax import runtime

        runtime.configure_xla()  # the step's XLA flags, for the "XLA alone" column
    if args.from_json is not None:
        if not args.from_json.is_file():
            parser.error(f"--from-json {args.from_json}: no such file")
        saved = json.loads(args.from_json.read_text())
        ops, rates = from_json(saved)
        machine = saved.get("machine")
    else:
        ops, rates = from_profile(args.profile), {}
        machine = None
    if machine is None and has_jax:
        from bench.machine import machine_info

        machine = machine_info()
    timers = {
        name: timer
        for name, timer in libraries().items()
        if not any(name in r for r in rates.values())
    }
    for shape, new in measure(ops, timers).items():
        rates.setdefault(shape, {}).update(new)
    print(markdown(ops, rates))
    if args.json_out is not None:
        payload = {"machine": machine, **to_json(ops, rates)}
        args.json_out.write_text(json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
