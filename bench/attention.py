"""Attention kernels: forward+backward time and compiled memory against sequence length.

Reproduces the setting of the Reformer paper's speed-vs-length figure: the number of tokens per
batch is held fixed (``batch = tokens // length``), so an O(L) kernel costs the same per token at
every length and full attention's cost per token grows linearly with L.

Every attention family of the model is measured through its kind object, the registry
``reformer_jax.layers.attention.KINDS`` (full, local, LSH, the sparse patterns star / BigBird /
Longformer / strided / fixed, Linformer, Performer), configured by ordinary ``ReformerConfig``
fields (:func:`series_table`), so the benchmark runs exactly what a model layer runs. Each
configuration is one jitted ``value_and_grad`` of ``sum(out ** 2)`` with respect to the
kernel's inputs (q, k, v; the shared qk and v for LSH attention, whose hashing is not
differentiated); the kind's draws (LSH rotations, Performer features) and extra parameters
(Linformer's projections) are inputs, not differentiated. All causal except Linformer, which
cannot be. The crossover against full attention (where a series' time per token drops below
full's) is reported for each series (:func:`crossovers`). Each configuration is compiled first
(compile time is reported separately and never included in the run times); if the compiled
buffers would not fit in ``--max-memory-gb`` (or in the memory the machine has available) it is
skipped without running.
Then one warm-up run, then ``--repeats`` timed runs whose median is reported. A configuration
whose single step is estimated (from the previous length of the same kernel, scaled by XLA's
flop count) or measured (warm-up) to take longer than ``--max-seconds`` is skipped or cut short.

    python -m bench.attention                      # the full sweep (long on a small CPU)
    python -m bench.attention --quick              # ~15 s smoke test
    python -m bench.attention --kinds lsh --hashes 1,8 --lengths 4096,65536
    python -m bench.attention --kinds full,bigbird,performer --block 64 --features 256
    python -m bench.attention --from-json bench/results/attention.json --markdown

Results: a table on stdout, JSON (all numbers plus machine info) at ``--out`` and a PNG next to
it (same name, ``.png``). The JSON is rewritten after every configuration, so an interrupted run
keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from bench import results_json
from bench.machine import machine_info
from reformer_jax.config import ReformerConfig
from reformer_jax.layers.attention import KINDS as KIND_REGISTRY
from reformer_jax.layers.kinds.lsh import lsh_n_buckets
from reformer_jax.runtime import configure_xla

#: Families (``--kinds``); each expands to one or more series in :func:`series_table`.
KINDS = (
    "full",
    "local",
    "lsh",
    "star",
    "bigbird",
    "longformer",
    "strided",
    "fixed",
    "linformer",
    "performer",
    "relative",
)
DEFAULT_KINDS = KINDS
DEFAULT_LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768, 65536)
DEFAULT_RESULTS = Path(__file__).resolve().parent / "results" / "attention.json"
MIB = 2**20
GIB = 2**30


@dataclass(frozen=True)
class Series:
    """One line of the figure: an attention kind of the model's registry
    (``reformer_jax.layers.attention.KINDS``) with the config fields that set it up."""

    name: str
    kind: str
    settings: tuple[tuple[str, Any], ...] = ()
    causal: bool = True

    def config(self, heads: int, d_head: int) -> ReformerConfig:
        """The (validated) model config the kind reads its settings from."""
        return ReformerConfig(
            n_heads=heads,
            d_head=d_head,
            attention_pattern=(self.kind,),
            n_layers=1,
            causal=self.causal,
            pos_embedding="sinusoidal",
            **dict(self.settings),
        )


def series_table(args: argparse.Namespace) -> list[Series]:
    """The measured series, in order, for the requested ``--kinds``.

    Every setting here is an ordinary config field, so a series is what a model layer with that
    ``attention_pattern`` entry runs. Linformer is the only bidirectional one (it cannot be
    causal); its projections span the longest length of the sweep.
    """
    chunk, block = args.chunk, args.block
    # The window kernel's implementation (LSH, local); named in the series when not the default.
    window = (("window_implementation", args.window),)
    suffix = "" if args.window == "xla" else f" ({args.window})"
    table: dict[str, list[Series]] = {
        "full": [Series("full", "full")],
        "local": [Series(f"local{suffix}", "local", (("local_chunk_len", chunk), *window))],
        "lsh": [
            Series(
                f"lsh x{h}{suffix}",
                "lsh",
                (("lsh_chunk_len", chunk), ("lsh_n_hashes", h), *window),
            )
            for h in args.hashes
        ],
        "star": [
            Series("star", "sparse", (("sparse_pattern", "star"), ("sparse_block_len", chunk)))
        ],
        "bigbird": [
            Series(
                "bigbird",
                "sparse",
                (("sparse_pattern", "bigbird"), ("sparse_block_len", block)),
            )
        ],
        "longformer": [
            Series(
                "longformer",
                "sparse",
                (
                    ("sparse_pattern", "longformer"),
                    ("sparse_window", chunk),
                    ("sparse_global_positions", (0,)),
                    ("sparse_block_len", chunk),
                ),
            )
        ],
        "strided": [
            Series(
                "strided", "sparse", (("sparse_pattern", "strided"), ("sparse_block_len", chunk))
            )
        ],
        "fixed": [
            Series(
                "fixed",
                "sparse",
                (
                    ("sparse_pattern", "fixed"),
                    ("sparse_block_len", chunk),
                    ("sparse_summary_len", args.summary),
                ),
            )
        ],
        "linformer": [
            Series(
                "linformer",
                "linformer",
                (("linformer_k", args.linformer_k), ("max_len", max(args.lengths))),
                causal=False,
            )
        ],
        "performer": [
            Series(
                "performer",
                "performer",
                (("performer_n_features", args.features), ("performer_chunk_len", chunk)),
            )
        ],
        # Transformer-XL's attention within one segment (no memory): dense and causal, with
        # the relative-position term on top of full attention's cost.
        "relative": [Series("relative (XL)", "relative")],
    }
    return [s for kind in args.kinds for s in table[kind]]


@dataclass
class Result:
    """One (series, length) configuration; ``status`` is ``ok``, ``partial`` or ``skipped``
    (``note`` says why)."""

    kind: str
    n_hashes: int | None
    length: int
    batch: int
    heads: int
    d_head: int
    chunk_len: int | None
    n_buckets: int | list[int] | None
    dtype: str
    label: str = ""
    causal: bool = True
    settings: dict[str, Any] = field(default_factory=dict)
    status: str = "ok"
    note: str = ""
    lower_s: float | None = None
    compile_s: float | None = None
    first_run_s: float | None = None
    times_s: list[float] = field(default_factory=list)
    median_s: float | None = None
    us_per_token: float | None = None
    flops: float | None = None
    gflops_per_s: float | None = None
    user_s_per_run: float | None = None
    sys_s_per_run: float | None = None
    cpu_us_per_token: float | None = None
    load_before: float | None = None
    load_after: float | None = None
    temp_bytes: int | None = None
    argument_bytes: int | None = None
    output_bytes: int | None = None
    alias_bytes: int | None = None
    generated_code_bytes: int | None = None

    @property
    def series(self) -> str:
        return self.label or series_name(self.kind, self.n_hashes)

    @property
    def tokens(self) -> int:
        return self.batch * self.length

    @property
    def cpu_s_per_run(self) -> float | None:
        if self.user_s_per_run is None or self.sys_s_per_run is None:
            return None
        return self.user_s_per_run + self.sys_s_per_run


def series_name(kind: str, n_hashes: int | None) -> str:
    return f"lsh x{n_hashes}" if kind == "lsh" else kind


# ----------------------------------------------------------------------------------------------
# The functions being measured.


def build_step(
    series: Series, length: int, *, heads: int, d_head: int, seed: int = 0
) -> tuple[Callable[..., Any], int, Any, Any, ReformerConfig]:
    """Returns ``(step, n_inputs, draws, params, cfg)`` for one configuration.

    ``step(inputs, draws, params)`` is ``value_and_grad`` of ``sum(out ** 2)`` (accumulated in
    float32) with respect to the tuple of ``n_inputs`` ``[batch, heads, length, d_head]``
    attention inputs (q, k, v, or the shared qk and v of a shared-QK kind), through the kind's
    own ``attend``. ``draws`` is the kind's random input for this length (LSH rotations,
    Performer features; drawn outside the step, as the model does), ``params`` its extra
    parameters (Linformer's projections); neither is differentiated.
    """
    kind = KIND_REGISTRY[series.kind]
    cfg = series.config(heads, d_head)
    key = jax.random.key(seed)
    draws = kind.draw(cfg, jax.random.fold_in(key, 1), length)
    extra = kind.params(cfg, nnx.Rngs(seed))
    params = {name: p[...] for name, p in extra.items()} or None

    def loss(inputs, draws, params):
        if kind.shared_qk:
            (q, v), k = inputs, None
        else:
            q, k, v = inputs
        out, _ = kind.attend(cfg, q, k, v, mask=None, dropout_key=None, draws=draws, params=params)
        out = out.astype(jnp.float32)
        return jnp.sum(out * out)

    n_inputs = 2 if kind.shared_qk else 3
    return jax.value_and_grad(loss), n_inputs, draws, params, cfg


def compile_step(step: Callable[..., Any], specs: Sequence[Any]) -> tuple[Any, float, float]:
    t0 = time.perf_counter()
    lowered = jax.jit(step).lower(*specs)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    return compiled, t1 - t0, t2 - t1


def timed_call(compiled: Any, inputs: Sequence[jax.Array]) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*inputs))
    return time.perf_counter() - t0


def flop_count(compiled: Any) -> float | None:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # cost analysis is best effort; some backends do not implement it
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def available_memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def run_config(
    series: Series,
    length: int,
    args: argparse.Namespace,
    previous: Result | None,
) -> Result:
    """Compiles, checks the limits, and times one configuration."""
    batch = args.tokens // length
    dtype = jnp.dtype(args.dtype)
    step, n_inputs, draws, params, cfg = build_step(
        series, length, heads=args.heads, d_head=args.d_head, seed=args.seed
    )
    settings = dict(series.settings)
    n_buckets = None
    if series.kind == "lsh":
        nb = lsh_n_buckets(cfg, length)
        n_buckets = nb if isinstance(nb, int) else [int(b) for b in nb]
    chunk_keys = ("local_chunk_len", "lsh_chunk_len", "performer_chunk_len", "sparse_block_len")
    res = Result(
        kind=series.kind,
        n_hashes=settings.get("lsh_n_hashes"),
        length=length,
        batch=batch,
        heads=args.heads,
        d_head=args.d_head,
        chunk_len=next((settings[k] for k in chunk_keys if k in settings), None),
        n_buckets=n_buckets,
        dtype=dtype.name,
        label=series.name,
        causal=series.causal,
        settings={k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
    )
    shape = (batch, args.heads, length, args.d_head)
    inputs_spec = tuple(jax.ShapeDtypeStruct(shape, dtype) for _ in range(n_inputs))
    specs = [inputs_spec, draws, params]
    compiled, res.lower_s, res.compile_s = compile_step(step, specs)
    mem = compiled.memory_analysis()
    if mem is not None:
        res.temp_bytes = int(mem.temp_size_in_bytes)
        res.argument_bytes = int(mem.argument_size_in_bytes)
        res.output_bytes = int(mem.output_size_in_bytes)
        res.alias_bytes = int(mem.alias_size_in_bytes)
        res.generated_code_bytes = int(mem.generated_code_size_in_bytes)
    res.flops = flop_count(compiled)

    # Memory: compiled buffers against the limit and against what the machine has free now.
    if res.temp_bytes is not None:
        need = res.temp_bytes + res.argument_bytes + res.output_bytes
        limit = args.max_memory_gb * GIB
        avail = available_memory_bytes()
        if need > limit:
            res.status = "skipped"
            res.note = f"needs {need / GIB:.1f} GiB > --max-memory-gb {args.max_memory_gb:g}"
            return res
        if avail is not None and need > 0.85 * avail:
            res.status = "skipped"
            res.note = f"needs {need / GIB:.1f} GiB > 85% of available {avail / GIB:.1f} GiB"
            return res

    # Time: scale the previous length's median by the flop ratio.
    if previous is not None and previous.median_s and previous.flops and res.flops:
        estimate = previous.median_s * res.flops / previous.flops
        if estimate > args.max_seconds:
            res.status = "skipped"
            res.note = f"estimated {estimate:.0f} s/step > --max-seconds {args.max_seconds:g}"
            return res

    key = jax.random.key(args.seed)
    arrays = tuple(jax.random.normal(k, shape, dtype) for k in jax.random.split(key, n_inputs))
    inputs = [arrays, draws, params]
    jax.block_until_ready(inputs)
    res.load_before = _load_average()
    try:
        before = resource.getrusage(resource.RUSAGE_SELF)
        res.first_run_s = timed_call(compiled, inputs)
        if res.first_run_s > args.max_seconds:
            after = resource.getrusage(resource.RUSAGE_SELF)
            res.status = "partial"
            res.note = f"warm-up {res.first_run_s:.0f} s > --max-seconds: no timed repeats"
            res.times_s = [res.first_run_s]
            res.user_s_per_run = after.ru_utime - before.ru_utime
            res.sys_s_per_run = after.ru_stime - before.ru_stime
        else:
            before = resource.getrusage(resource.RUSAGE_SELF)
            res.times_s = [timed_call(compiled, inputs) for _ in range(args.repeats)]
            after = resource.getrusage(resource.RUSAGE_SELF)
            # CPU time of the process over the timed runs; sys is mostly the page faults of
            # freshly allocated temp buffers.
            res.user_s_per_run = (after.ru_utime - before.ru_utime) / args.repeats
            res.sys_s_per_run = (after.ru_stime - before.ru_stime) / args.repeats
    finally:
        del inputs
    res.load_after = _load_average()
    res.median_s = statistics.median(res.times_s)
    res.us_per_token = res.median_s / res.tokens * 1e6
    if res.flops:
        res.gflops_per_s = res.flops / res.median_s / 1e9
    if res.cpu_s_per_run is not None:
        res.cpu_us_per_token = res.cpu_s_per_run / res.tokens * 1e6
    return res


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# ----------------------------------------------------------------------------------------------
# Reporting.


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _length_label(length: int) -> str:
    return f"{length // 1024}K" if length % 1024 == 0 else str(length)


TABLE_HEADER = (
    "series",
    "hashes",
    "length",
    "batch",
    "compile s",
    "median s",
    "µs/token",
    "CPU s",
    "temp MiB",
    "load",
    "note",
)


def table_rows(results: Sequence[Result]) -> list[tuple[str, ...]]:
    rows = []
    for r in results:
        rows.append(
            (
                r.series,
                "-" if r.n_hashes is None else str(r.n_hashes),
                _length_label(r.length),
                str(r.batch),
                _fmt(r.compile_s, ".1f"),
                _fmt(r.median_s, ".3f"),
                _fmt(r.us_per_token, ".2f"),
                _fmt(r.cpu_s_per_run, ".2f"),
                _fmt(None if r.temp_bytes is None else r.temp_bytes / MIB, ".0f"),
                _fmt(r.load_before, ".1f"),
                r.note,
            )
        )
    return rows


def _table(results: Sequence[Result]) -> tuple[list[str], list[list[str]]]:
    """Header and rows, without the columns that are empty in every row (e.g. ``load`` in
    results written before it was recorded, ``note`` when nothing was skipped)."""
    rows = table_rows(results)
    keep = [
        i
        for i, name in enumerate(TABLE_HEADER)
        if name in ("series", "median s") or any(row[i] not in ("", "-") for row in rows)
    ]
    return [TABLE_HEADER[i] for i in keep], [[row[i] for i in keep] for row in rows]


_LEFT_ALIGNED = ("series", "note")


def text_table(results: Sequence[Result]) -> str:
    header, rows = _table(results)
    rows = [header, *rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for n, row in enumerate(rows):
        cells = [
            c.ljust(w) if name in _LEFT_ALIGNED else c.rjust(w)
            for c, w, name in zip(row, widths, header, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(results: Sequence[Result]) -> str:
    header, rows = _table(results)
    align = ["---" if name in _LEFT_ALIGNED else "---:" for name in header]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def write_json(path: Path, payload: dict[str, Any], results: Sequence[Result]) -> None:
    data = dict(payload, results=[asdict(r) | {"series": r.series} for r in results])
    _atomic_write(path, (json.dumps(data, indent=2) + "\n").encode())


def read_json(path: Path) -> tuple[dict[str, Any], list[Result]]:
    data = json.loads(path.read_text())
    names = set(Result.__dataclass_fields__)
    results = [Result(**{k: v for k, v in r.items() if k in names}) for r in data["results"]]
    return data, results


def plot(path: Path, results: Sequence[Result], payload: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    series: dict[str, list[Result]] = {}
    for r in results:
        series.setdefault(r.series, []).append(r)
    lsh_names = sorted((s for s in series if s.startswith("lsh")), key=lambda s: int(s[5:]))
    cmap = plt.get_cmap("viridis")
    colors = {
        "full": "black",
        "local": "tab:red",
        "star": "tab:orange",
        "bigbird": "tab:brown",
        "longformer": "tab:pink",
        "strided": "tab:olive",
        "fixed": "tab:cyan",
        "linformer": "tab:purple",
        "performer": "tab:gray",
    }
    for i, name in enumerate(lsh_names):
        colors[name] = cmap(0.15 + 0.7 * i / max(1, len(lsh_names) - 1))

    fig, (ax_t, ax_c, ax_m) = plt.subplots(1, 3, figsize=(18, 5.2))
    for name, rs in series.items():
        rs = sorted(rs, key=lambda r: r.length)
        ran = [r for r in rs if r.median_s is not None]
        if ran:
            ax_t.plot(
                [r.length for r in ran],
                [r.us_per_token for r in ran],
                "o-",
                color=colors.get(name),
                label=name,
            )
        cpu = [r for r in rs if r.cpu_s_per_run is not None]
        if cpu:
            ax_c.plot(
                [r.length for r in cpu],
                [r.cpu_s_per_run / r.tokens * 1e6 for r in cpu],
                "s--",
                color=colors.get(name),
                label=name,
            )
        compiled = [r for r in rs if r.temp_bytes is not None]
        if compiled:
            ax_m.plot(
                [r.length for r in compiled],
                [r.temp_bytes / MIB for r in compiled],
                "-",
                color=colors.get(name),
                label=name,
            )
            for r in compiled:
                ax_m.plot(
                    r.length,
                    r.temp_bytes / MIB,
                    "o",
                    color=colors.get(name),
                    markerfacecolor=colors.get(name) if r.median_s is not None else "white",
                )
    settings = payload.get("settings", {})
    limit = settings.get("max_memory_gb")
    if limit:
        ax_m.axhline(limit * 1024, color="gray", ls="--", lw=1)
        ax_m.annotate(
            f"--max-memory-gb {limit:g}",
            (0.02, limit * 1024),
            xycoords=("axes fraction", "data"),
            va="bottom",
            fontsize=8,
            color="gray",
        )
    lengths = sorted({r.length for r in results})
    for ax in (ax_t, ax_c, ax_m):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(lengths, [_length_label(n) for n in lengths])
        ax.minorticks_off()
        ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda y, _: f"{y:g}"))
        ax.set_xlabel("sequence length (tokens)")
        ax.grid(True, which="major", alpha=0.3)
    ax_t.set_ylabel("forward + backward time per token (µs)")
    ax_t.set_title("Wall time per token (median; tokens per batch fixed)")
    ax_c.set_ylabel("process CPU time (user + sys) per token (µs)")
    ax_c.set_title("CPU time per token (less sensitive to a shared machine)")
    ax_m.set_ylabel("compiled temp memory (MiB)")
    ax_m.set_title("Compiled temp memory (hollow: compiled, not run)")
    handles, labels = ax_m.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 7), frameon=False)
    machine = payload.get("machine", {})
    fig.suptitle(
        f"Attention fwd+bwd, {settings.get('tokens')} tokens/batch, {settings.get('heads')} heads "
        f"x d_head {settings.get('d_head')}, chunk {settings.get('chunk')}, causal (Linformer "
        "bidirectional), "
        f"{settings.get('dtype')} — {machine.get('cpu_model')} "
        f"({machine.get('cpus_usable')} cores), jax {machine.get('jax')}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    tmp.replace(path)


# ----------------------------------------------------------------------------------------------
# Command line.


def _int_list(text: str) -> list[int]:
    values = []
    for part in text.split(","):
        part = part.strip().lower()
        scale = 1024 if part.endswith("k") else 1
        values.append(int(part.rstrip("k")) * scale)
    return values


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.attention",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--lengths",
        type=_int_list,
        default=list(DEFAULT_LENGTHS),
        help="comma-separated sequence lengths (1K = 1024)",
    )
    p.add_argument(
        "--tokens",
        type=_int_list,
        default=[65536],
        help="tokens per batch, held fixed: batch = tokens // length",
    )
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--d-head", type=int, default=64)
    p.add_argument("--chunk", type=int, default=128, help="chunk length of local and LSH")
    p.add_argument("--hashes", type=_int_list, default=[1, 2, 4, 8], help="LSH hash rounds")
    p.add_argument(
        "--block", type=int, default=64, help="BigBird's block length (its paper's default)"
    )
    p.add_argument(
        "--summary",
        type=int,
        default=8,
        help="fixed pattern: summary positions c per block of --chunk",
    )
    p.add_argument("--linformer-k", type=int, default=256, help="Linformer's projected length")
    p.add_argument("--features", type=int, default=256, help="Performer's random features")
    p.add_argument("--kinds", default=",".join(DEFAULT_KINDS), help=f"subset of {','.join(KINDS)}")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument(
        "--window",
        default="xla",
        choices=["xla", "pallas"],
        help="window_implementation of the local and LSH series (pallas: for GPUs)",
    )
    p.add_argument("--repeats", type=int, default=5, help="timed runs after the warm-up")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=60.0,
        help="skip a configuration whose single step is estimated (or measured in "
        "the warm-up) to take longer",
    )
    p.add_argument(
        "--max-memory-gb",
        type=float,
        default=16.0,
        help="skip a configuration whose compiled buffers (temp + arguments + "
        "outputs) exceed this many GiB",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"JSON path (PNG written next to it); default {DEFAULT_RESULTS}, or a "
        "temporary directory with --quick",
    )
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny smoke run (~15 s, mostly compiling): lengths 256,512, 2K tokens, 2 heads x 32, "
        "chunk 64, hashes 1,2, BigBird block 32, fixed c 4, Linformer k 32, 32 features, 2 repeats",
    )
    p.add_argument(
        "--from-json",
        type=results_json,
        default=None,
        help="do not measure: re-print the table (and redraw the PNG unless "
        "--no-plot) from a results JSON",
    )
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    args = p.parse_args(argv)
    if args.quick:
        args.lengths, args.tokens, args.heads, args.d_head = [256, 512], [2048], 2, 32
        args.chunk, args.hashes, args.repeats = 64, [1, 2], 2
        args.block, args.summary, args.linformer_k, args.features = 32, 4, 32, 32
    if len(args.tokens) != 1:
        p.error("--tokens takes one value")
    args.tokens = args.tokens[0]
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if unknown := set(args.kinds) - set(KINDS):
        p.error(f"unknown --kinds {sorted(unknown)}; choose from {KINDS}")
    if bad := [n for n in args.lengths if n < 1 or args.tokens // n < 1]:
        p.error(f"lengths {bad} do not fit in --tokens {args.tokens} (batch would be 0)")
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.out is None:
        if args.quick:
            args.out = Path(tempfile.gettempdir()) / "reformer_jax_bench" / "attention_quick.json"
        else:
            args.out = DEFAULT_RESULTS
    return args


def crossovers(
    results: Sequence[Result], reference: str = "full", metric: str = "us_per_token"
) -> dict[str, dict[str, Any]]:
    """Where each series' time per token drops below ``reference``'s.

    ``metric``: ``"us_per_token"`` (wall time) or ``"cpu_us_per_token"`` (process CPU time,
    less sensitive to other processes on a shared machine).

    ``{series: {"length": L or None, "how": ..., "ratios": {length: t / t_ref}}}``. ``how`` is
    ``"below"`` (already faster at the shortest common length: the crossover is at or below it),
    ``"interpolated"`` (the ratio crosses 1 between two measured lengths; log-log
    interpolation), ``"extrapolated"`` (faster only where the reference was not run: its time
    per token taken as proportional to length beyond its longest run, which is what quadratic
    attention does with tokens per batch fixed), or ``"never"`` (slower at every length).
    """
    import math

    def timed(name: str) -> dict[int, float]:
        values = ((r.length, getattr(r, metric)) for r in results if r.series == name)
        return {length: value for length, value in values if value is not None}

    ref = timed(reference)
    out: dict[str, dict[str, Any]] = {}
    if not ref:
        return out
    last = max(ref)
    names = dict.fromkeys(r.series for r in results if r.series != reference)
    for name in names:
        own = timed(name)
        ratios = {}
        for length in sorted(own):
            base = ref.get(length)
            how = "measured"
            if base is None and length > last:
                base, how = ref[last] * length / last, "extrapolated"
            if base is not None:
                ratios[length] = (own[length] / base, how)
        entry: dict[str, Any] = {
            "length": None,
            "how": "never",
            "ratios": {str(n): round(r, 4) for n, (r, _) in ratios.items()},
            "ratio_basis": {str(n): h for n, (_, h) in ratios.items()},
        }
        lengths = sorted(ratios)
        for i, n in enumerate(lengths):
            ratio, how = ratios[n]
            if ratio >= 1:
                continue
            if i == 0:
                entry.update(length=n, how="below" if how == "measured" else how)
            else:
                n0 = lengths[i - 1]
                r0 = ratios[n0][0]
                t = math.log(r0) / (math.log(r0) - math.log(ratio))
                crossing = n0 * (n / n0) ** t
                entry.update(
                    length=int(round(crossing)),
                    how="extrapolated" if how == "extrapolated" else "interpolated",
                )
            break
        out[name] = entry
    return out


def crossover_table(results: Sequence[Result], metric: str = "us_per_token") -> str:
    """Markdown: each series' crossover against full attention and its time ratios."""
    cross = crossovers(results, metric=metric)
    lengths = sorted({r.length for r in results})
    header = ["series", "crossover vs full", *(_length_label(n) for n in lengths)]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * len(lengths)]
    for name, entry in cross.items():
        if entry["length"] is None:
            where = "not within the sweep"
        elif entry["how"] == "below":
            where = f"<= {_length_label(entry['length'])}"
        else:
            where = f"~{entry['length']:,} ({entry['how']})"
        cells = []
        for n in lengths:
            ratio = entry["ratios"].get(str(n))
            basis = entry["ratio_basis"].get(str(n))
            cells.append(
                "-" if ratio is None else f"{ratio:.2f}" + ("*" if basis == "extrapolated" else "")
            )
        lines.append("| " + " | ".join([name, where, *cells]) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    configure_xla()
    args = parse_args(argv)
    if args.from_json is not None:
        payload, results = read_json(args.from_json)
        print(markdown_table(results) if args.markdown else text_table(results))
        for metric in ("us_per_token", "cpu_us_per_token"):
            print(f"\ncrossover against full attention ({metric}):")
            print(crossover_table(results, metric))
        if not args.no_plot:
            png = args.from_json.with_suffix(".png")
            plot(png, results, payload)
            print(f"wrote {png}", file=sys.stderr)
        return 0

    settings = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in vars(args).items()
        if k not in ("from_json", "markdown", "no_plot")
    }
    payload: dict[str, Any] = {
        "benchmark": "attention forward+backward (value_and_grad of sum(out**2))",
        "command": " ".join(
            ["python -m bench.attention", *(sys.argv[1:] if argv is None else argv)]
        ),
        "settings": settings,
        "machine": machine_info(),
    }
    m = payload["machine"]
    print(
        f"# {m['cpu_model']}, {m['cpus_usable']} cores, {m['backend']} ({m['device_kind']}), "
        f"jax {m['jax']} / jaxlib {m['jaxlib']}; {args.tokens} tokens per batch, {args.heads} "
        f"heads x {args.d_head}, chunk {args.chunk}, {args.dtype}",
        flush=True,
    )
    results: list[Result] = []
    start = time.perf_counter()
    for series in series_table(args):
        previous: Result | None = None
        for length in sorted(args.lengths):
            res = run_config(series, length, args, previous)
            results.append(res)
            if res.median_s is not None:
                previous = res
            r = table_rows([res])[0]
            print(
                f"{res.series:8s} L={r[2]:>4s} batch={r[3]:>3s} compile {r[4]:>5s} s  median "
                f"{r[5]:>7s} s  {r[6]:>7s} µs/token  CPU {r[7]:>6s} s  temp {r[8]:>6s} MiB  "
                f"load {r[9]:>4s}  {r[10]}",
                flush=True,
            )
            payload["elapsed_s"] = round(time.perf_counter() - start, 1)
            payload["crossovers"] = crossovers(results)
            payload["crossovers_cpu"] = crossovers(results, metric="cpu_us_per_token")
            write_json(args.out, payload, results)
    print()
    print(markdown_table(results) if args.markdown else text_table(results))
    for metric in ("us_per_token", "cpu_us_per_token"):
        print(f"\ncrossover against full attention ({metric}):")
        print(crossover_table(results, metric))
    print(f"\nwrote {args.out}", file=sys.stderr)
    if not args.no_plot:
        png = args.out.with_suffix(".png")
        plot(png, results, payload)
        print(f"wrote {png}", file=sys.stderr)
    print(f"total {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
