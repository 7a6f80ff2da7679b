"""The model configuration: a frozen, validated dataclass built from ``ml_collections`` configs.

``configs/*.py`` return ``ConfigDict`` objects; :meth:`ReformerConfig.from_dict` turns their
``model`` part into this dataclass at the boundary, and validation happens here once, with
errors that name the setting and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

POSITION_KINDS = ("axial", "learned", "sinusoidal", "none")
ACTIVATIONS = ("relu", "gelu")
RESIDUAL_KINDS = ("reversible", "standard")
WINDOW_IMPLEMENTATIONS = ("xla", "pallas")  # reformer_jax.kernels.window.window_attention
DTYPES = {
    "float32": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "float16": jnp.float16,
    "float64": jnp.float64,
}


@dataclasses.dataclass(frozen=True)
class ReformerConfig:
    """Hyperparameters of a Reformer language model (defaults: a small causal byte LM)."""

    vocab_size: int = 256
    d_model: int = 256
    d_ff: int = 512
    n_layers: int = 2
    n_heads: int = 4
    d_head: int = 64
    # Attention kind per layer, cycled over the layers (Trax's convention).
    attention_pattern: tuple[str, ...] = ("lsh",)
    causal: bool = True

    # LSH attention.
    lsh_chunk_len: int = 64
    lsh_n_buckets: int | tuple[int, ...] | None = None  # None: about two buckets per chunk.
    lsh_n_hashes: int = 2
    lsh_chunks_before: int = 1
    lsh_chunks_after: int = 0
    lsh_attend_across_buckets: bool = True
    # Fixed random draws (seeded per layer) instead of fresh ones per training step: LSH
    # rotations and Performer features (evaluation, tests, HF).
    hash_seed: int | None = None
    # Below this length LSH layers use exact shared-QK attention (LSH only pays off when long).
    full_attention_below: int = 0

    # Local attention.
    local_chunk_len: int = 64
    local_chunks_before: int = 1
    local_chunks_after: int = 0
    local_wrap_around: bool = False  # True reproduces the Trax / HF neighbour lookup.
    # How the LSH and local kinds run their chunked window attention: "xla" (a loop over blocks
    # of chunks; every backend) or "pallas" (one fused kernel per direction: Triton on GPUs,
    # Mosaic on TPUs, interpreted on CPU; chunk lengths and d_head powers of two >= 16, no
    # attention dropout, no model-parallel mesh axis).
    window_implementation: str = "xla"

    # Segment recurrence (Transformer-XL, the "relative" kind; docs/memory.md). Each layer keeps
    # the last mem_len states of its attention-branch input (stop-gradient) and attends over
    # [compressed memory; memory; segment]. 0: no memory.
    mem_len: int = 0
    # Compressive Transformer: states evicted from the memory are compressed by cmem_rate
    # ("conv": learned 1-D convolution, kernel = stride = rate; "mean" / "max" pooling) into a
    # second memory of cmem_len states. 0: evicted states are dropped (Transformer-XL).
    cmem_len: int = 0
    cmem_rate: int = 3
    cmem_method: str = "conv"

    # Sparse-pattern attention: "star", "bigbird", "longformer", "strided" or "fixed" (Sparse
    # Transformer). sparse_block_len: BigBird's block, the stride (strided), the block (fixed);
    # for star / longformer only the kernel's block size (cost, not result).
    sparse_pattern: str = "bigbird"
    sparse_block_len: int = 16
    sparse_window: int = 16  # longformer: tokens each side
    sparse_dilation: int = 1  # longformer
    sparse_global_positions: tuple[int, ...] = ()  # longformer: tokens that see and are seen by all
    sparse_window_blocks: int = 3  # bigbird
    sparse_global_blocks: int = 2  # bigbird: the first and the last block
    sparse_random_blocks: int = 3  # bigbird: a static plan per head from sparse_seed
    sparse_seed: int = 0
    sparse_summary_len: int = 4  # fixed: the last c positions of every block are seen by all
    sparse_dropout: float = 0.0

    # Linformer attention (bidirectional only: needs causal=False). Keys and values projected
    # along the length to linformer_k rows by projections spanning max_len positions. Sharing:
    # "none" (per head), "head" (one E and one F per layer), "kv" (E = F per layer), "layer"
    # (one E = F for every Linformer layer of the model).
    linformer_k: int = 64
    linformer_sharing: str = "head"
    linformer_dropout: float = 0.0

    # Performer (FAVOR+) attention: random features drawn like the LSH rotations (per training
    # step, fixed for evaluation), orthogonal or i.i.d.; causal prefix sums chunk by chunk.
    performer_n_features: int = 64
    performer_orthogonal: bool = True
    performer_chunk_len: int = 64

    # Positions: axial (shape and per-axis dims, dims summing to d_model), learned, sinusoidal.
    pos_embedding: str = "axial"
    axial_shape: tuple[int, ...] = (64, 64)
    axial_dims: tuple[int, ...] = (128, 128)
    max_len: int = 4096  # capacity of learned positions

    # Dropout rates.
    hidden_dropout: float = 0.0  # embeddings and every residual branch output
    lsh_dropout: float = 0.0  # attention probabilities, per kind
    local_dropout: float = 0.0
    full_dropout: float = 0.0
    relative_dropout: float = 0.0
    ff_dropout: float = 0.0  # inside the feed-forward, after the first dense layer

    ff_activation: str = "relu"
    ff_chunk_size: int = 0  # rows (batch * length) per feed-forward chunk; 0: no chunking
    # The residual architecture. "reversible" (the Reformer): two streams, y1 = x1 + F(x2),
    # y2 = x2 + G(y1), head on LayerNorm(concat[y1, y2]) (2 d_model). "standard": an ordinary
    # pre-LN Transformer, x = x + F(x); x = x + G(x), head on LayerNorm(x) (d_model), for the
    # paper's reversible-vs-standard ablation. F and G are the same branches in both.
    residual: str = "reversible"
    # How gradients of the reversible architecture are computed: True reconstructs activations
    # layer by layer in the backward pass (memory flat in depth), False stores them (plain
    # autodiff; same values). residual="standard" cannot be inverted and always stores them,
    # so there this flag has no effect.
    reversible: bool = True
    ln_eps: float = 1e-6
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "attention_pattern", tuple(self.attention_pattern))
        object.__setattr__(self, "axial_shape", tuple(self.axial_shape))
        object.__setattr__(self, "axial_dims", tuple(self.axial_dims))
        object.__setattr__(self, "sparse_global_positions", tuple(self.sparse_global_positions))
        if isinstance(self.lsh_n_buckets, list | tuple):
            object.__setattr__(self, "lsh_n_buckets", tuple(int(b) for b in self.lsh_n_buckets))
        self.validate()

    # ----------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ReformerConfig:
        """Builds the config from a ``ConfigDict`` or mapping; unknown keys are an error."""
        values = dict(values.to_dict() if hasattr(values, "to_dict") else values)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            close = sorted({c for u in unknown for c in difflib.get_close_matches(u, known, n=2)})
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise ValueError(
                f"unknown model setting(s) {unknown}; {hint}the settings are the fields of "
                "ReformerConfig in reformer_jax/config.py"
            )
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values; ``from_dict(cfg.to_dict()) == cfg``."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> ReformerConfig:
        return dataclasses.replace(self, **changes)

    @property
    def n_groups(self) -> int:
        """Repetitions of the attention pattern (the scanned dimension of the stack)."""
        return self.n_layers // len(self.attention_pattern)

    @property
    def compute_dtype(self) -> jnp.dtype:
        return DTYPES[self.dtype]

    @property
    def parameter_dtype(self) -> jnp.dtype:
        return DTYPES[self.param_dtype]

    @property
    def max_length(self) -> int | None:
        """Longest sequence the positional embedding covers (None: unlimited)."""
        if self.pos_embedding == "axial":
            return math.prod(self.axial_shape)
        if self.pos_embedding == "learned":
            return self.max_len
        return None

    def layer_kinds(self) -> list[str]:
        return [
            self.attention_pattern[i % len(self.attention_pattern)] for i in range(self.n_layers)
        ]

    # ----------------------------------------------------------------------------------------
    def validate(self) -> None:
        def fail(setting: str, problem: str, fix: str) -> None:
            raise ValueError(f"model.{setting}: {problem}; {fix}")

        for name in (
            "vocab_size",
            "d_model",
            "d_ff",
            "n_layers",
            "n_heads",
            "d_head",
            "lsh_chunk_len",
            "lsh_n_hashes",
            "local_chunk_len",
            "max_len",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                fail(name, f"must be a positive integer, got {value!r}", "set it to 1 or more")
        for name in (
            "lsh_chunks_before",
            "lsh_chunks_after",
            "local_chunks_before",
            "local_chunks_after",
            "ff_chunk_size",
            "full_attention_below",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                fail(name, f"must be an integer >= 0, got {value!r}", "set it to 0 or more")
        # The registry of attention kinds (import here: the layers import this module).
        from reformer_jax.layers.attention import KINDS

        if not self.attention_pattern:
            fail("attention_pattern", "is empty", f"give at least one of {list(KINDS)}")
        bad = [k for k in self.attention_pattern if k not in KINDS]
        if bad:
            fail("attention_pattern", f"unknown kind(s) {bad}", f"use only {list(KINDS)}")
        if self.n_layers % len(self.attention_pattern):
            fail(
                "n_layers",
                f"{self.n_layers} is not a multiple of the attention pattern's "
                f"length {len(self.attention_pattern)} {list(self.attention_pattern)}",
                "make n_layers a multiple of it or change the pattern",
            )
        for name, kind in KINDS.items():  # each kind checks its own (prefixed) fields
            kind.validate(self, name in self.attention_pattern, fail)
        if self.pos_embedding not in POSITION_KINDS:
            fail(
                "pos_embedding",
                f"unknown kind {self.pos_embedding!r}",
                f"use one of {list(POSITION_KINDS)}",
            )
        if self.pos_embedding == "axial":
            if len(self.axial_shape) != len(self.axial_dims) or not self.axial_shape:
                fail(
                    "axial_dims",
                    f"has {len(self.axial_dims)} entries but axial_shape "
                    f"{self.axial_shape} has {len(self.axial_shape)}",
                    "give one dim per axis",
                )
            if sum(self.axial_dims) != self.d_model:
                fail(
                    "axial_dims",
                    f"{self.axial_dims} sum to {sum(self.axial_dims)}, not d_model={self.d_model}",
                    "make the per-axis dims add up to d_model",
                )
            if any(n < 1 for n in self.axial_shape) or any(d < 1 for d in self.axial_dims):
                fail(
                    "axial_shape",
                    f"{self.axial_shape} / {self.axial_dims} must be positive",
                    "use positive sizes",
                )
        if self.pos_embedding == "sinusoidal" and self.d_model % 2:
            fail("d_model", "must be even for sinusoidal positions", "use an even d_model")
        for name in (
            "hidden_dropout",
            "lsh_dropout",
            "local_dropout",
            "full_dropout",
            "relative_dropout",
            "sparse_dropout",
            "linformer_dropout",
            "ff_dropout",
        ):
            rate = getattr(self, name)
            if not 0.0 <= rate < 1.0:
                fail(name, f"must be in [0, 1), got {rate}", "use a rate like 0.1")
        if self.window_implementation not in WINDOW_IMPLEMENTATIONS:
            fail(
                "window_implementation",
                f"unknown {self.window_implementation!r}",
                f"use one of {list(WINDOW_IMPLEMENTATIONS)}",
            )
        if self.ff_activation not in ACTIVATIONS:
            fail("ff_activation", f"unknown {self.ff_activation!r}", f"use {list(ACTIVATIONS)}")
        if self.residual not in RESIDUAL_KINDS:
            fail(
                "residual",
                f"unknown residual architecture {self.residual!r}",
                'use "reversible" (the Reformer, the default) or "standard" (pre-LN Transformer)',
            )
        self._validate_memory(fail)
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                fail(name, f"unknown {getattr(self, name)!r}", f"use one of {list(DTYPES)}")
        if self.ln_eps <= 0:
            fail("ln_eps", f"must be > 0, got {self.ln_eps}", "use e.g. 1e-6")

    @property
    def has_memory(self) -> bool:
        """Whether the layers carry a memory across segments (``mem_len`` or ``cmem_len``)."""
        return self.mem_len > 0 or self.cmem_len > 0

    def _validate_memory(self, fail) -> None:
        for name in ("mem_len", "cmem_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                fail(name, f"must be an integer >= 0, got {value!r}", "set it to 0 or more")
        if not isinstance(self.cmem_rate, int) or self.cmem_rate < 1:
            fail("cmem_rate", f"must be a positive integer, got {self.cmem_rate!r}", "use e.g. 3")
        from reformer_jax.kernels.compressive import COMPRESSIONS

        if self.cmem_method not in COMPRESSIONS:
            fail(
                "cmem_method",
                f"unknown compression {self.cmem_method!r}",
                f"use one of {list(COMPRESSIONS)}",
            )
        if not self.has_memory:
            return
        if self.cmem_len and not self.mem_len:
            fail(
                "cmem_len",
                "a compressed memory holds states evicted from the memory, but mem_len is 0",
                "set model.mem_len > 0 or model.cmem_len = 0",
            )
        if set(self.attention_pattern) != {"relative"}:
            fail(
                "attention_pattern",
                f"{list(self.attention_pattern)} cannot attend to a memory (mem_len > 0): only "
                "the relative kind positions memory states by their distance",
                'use attention_pattern=["relative"] or set model.mem_len = model.cmem_len = 0',
            )
        if self.residual != "standard":
            fail(
                "residual",
                "the reversible stack cannot carry a memory (every layer's input must be stored "
                "for the next segment anyway, so reversibility saves nothing for those states)",
                'set model.residual="standard"',
            )
        if self.pos_embedding != "none":
            fail(
                "pos_embedding",
                f"{self.pos_embedding!r} absolute positions restart at every segment, so the "
                "memory's states would disagree with the segment's about where they are",
                'set model.pos_embedding="none" (the relative kind encodes distances)',
            )

    def check_length(self, length: int) -> None:
        """Raises if ``length`` exceeds the positional capacity."""
        cap = self.max_length
        if cap is not None and length > cap:
            setting = "axial_shape" if self.pos_embedding == "axial" else "max_len"
            raise ValueError(
                f"sequence length {length} exceeds the positional capacity {cap} of "
                f"model.{setting}; enlarge model.{setting} or feed shorter sequences"
            )
