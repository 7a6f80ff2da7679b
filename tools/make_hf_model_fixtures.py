"""Writes whole-model Hugging Face fixtures for the weight converter into tests/fixtures/.

Run from the repository root with an interpreter that has torch and transformers (a separate
environment, never a dependency of the project):

    /work/refenv/bin/python tools/make_hf_model_fixtures.py

Each case builds a tiny, randomly initialised ``ReformerModelWithLMHead`` (causal) or
``ReformerForMaskedLM`` (bidirectional), overwrites every parameter with values from a seeded
numpy RNG (LayerNorm scales and biases included, so the mapping of each tensor is exercised),
saves it with ``save_pretrained`` (``config.json`` + ``model.safetensors``) and runs it in eval
mode on random token ids, with the LSH rotations injected: ``torch.randn`` inside the HF
modeling module is replaced by a proxy that draws the requested shape from the case's numpy RNG
on the first run and replays the same arrays, in call order (= LSH layer order), on the second.

Two runs per case:

- float64 (``model.double()``): the reference ``logits``. HF's chunked LSH attention computes
  ``exp(score - logsumexp)`` where a causal query that can only see itself sits at the self-mask
  score -1e5; float32 cannot hold ``logsumexp``'s ``log(count)`` part there and HF returns about
  0.997 * v (see tests/fixtures/README.md). The kernels here normalise exactly, so the float32
  artefact would leak through every later layer; float64 removes it while keeping HF's
  algorithm.
- float32: ``logits_float32``, HF exactly as users run it (the test checks it loosely).

Saved per case in ``tests/fixtures/hf_model_<case>/``: ``config.json``, ``model.safetensors``
(as written by ``save_pretrained``) and ``expected.npz`` with ``input_ids``, ``attention_mask``
(only padded cases), ``rotations_<layer>`` per LSH layer, ``logits``, ``logits_float32`` and
``hf_num_buckets`` (the bucket count HF used, 1-D).
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import shutil
from typing import Any

import numpy as np
import torch
from transformers import ReformerConfig, ReformerForMaskedLM, ReformerModelWithLMHead
from transformers.models.reformer import modeling_reformer as hf

OUT_DIR = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"

BASE: dict[str, Any] = dict(
    vocab_size=40,
    hidden_size=16,
    feed_forward_size=32,
    num_attention_heads=2,
    attention_head_size=8,
    is_decoder=True,
    attn_layers=["local", "lsh", "local", "lsh"],
    lsh_attn_chunk_length=8,
    local_attn_chunk_length=8,
    lsh_num_chunks_before=1,
    lsh_num_chunks_after=0,
    local_num_chunks_before=1,
    local_num_chunks_after=0,
    num_hashes=2,
    num_buckets=8,
    axial_pos_embds=True,
    axial_pos_shape=[8, 8],
    axial_pos_embds_dim=[8, 8],
    max_position_embeddings=64,
    hidden_act="relu",
    layer_norm_eps=1e-12,
    hidden_dropout_prob=0.1,
    lsh_attention_probs_dropout_prob=0.1,
    local_attention_probs_dropout_prob=0.1,
    hash_seed=None,
    pad_token_id=0,
    eos_token_id=2,
)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    config: dict[str, Any]
    masked_lm: bool = False  # ReformerForMaskedLM (is_decoder=False) instead of the LM head
    batch: int = 2
    length: int = 64
    # Per batch row: (padded positions at the start, padded positions at the end).
    padding: tuple[tuple[int, int], ...] | None = None
    seed: int = 0


CASES = [
    # Interleaved local / LSH, axial positions, 2 hashes, 8 buckets for 8 chunks.
    Case("causal_local_lsh", {}, seed=1),
    # Wider model, factorised buckets, different chunk lengths per kind, feed-forward chunking
    # (no numerical effect), left and right padding of a causal model.
    Case(
        "causal_factorised_pad",
        dict(
            hidden_size=32,
            feed_forward_size=48,
            attn_layers=["lsh", "local", "lsh", "local"],
            axial_pos_shape=[4, 8],
            axial_pos_embds_dim=[12, 20],
            max_position_embeddings=32,
            num_buckets=[2, 4],
            local_attn_chunk_length=16,
            chunk_size_feed_forward=8,
            layer_norm_eps=1e-6,
        ),
        length=32,
        padding=((3, 0), (0, 5)),
        seed=2,
    ),
    # Bidirectional (masked LM) with look-ahead chunks: wrap-around in both kernels, padding.
    Case(
        "bidirectional_mlm_pad",
        dict(
            is_decoder=False,
            lsh_num_chunks_after=1,
            local_num_chunks_after=1,
            axial_pos_shape=[4, 8],
            max_position_embeddings=32,
            num_buckets=4,
        ),
        masked_lm=True,
        length=32,
        padding=((2, 0), (0, 3)),
        seed=3,
    ),
    # Learned positions, tanh-approximated GELU, a non-alternating pattern (one group of 4).
    Case(
        "learned_positions_gelu_new",
        dict(
            attn_layers=["lsh", "lsh", "local", "local"],
            axial_pos_embds=False,
            max_position_embeddings=48,
            hidden_act="gelu_new",
            num_hashes=1,
            num_buckets=4,
            lsh_num_chunks_before=2,
        ),
        length=32,
        seed=4,
    ),
    # num_buckets unset: HF picks it at the first forward from the length (here the axial
    # capacity 64 = max_position_embeddings), factorised by its own rule into [4, 8].
    Case(
        "auto_buckets_lsh_only",
        dict(attn_layers=["lsh", "lsh"], lsh_attn_chunk_length=4, num_buckets=None, num_hashes=3),
        seed=5,
    ),
    # A length (40) that is not a multiple of lcm(8, 16): HF pads to 48 with pad tokens and an
    # attention mask, which changes the chunk windows (wrap-around); the converter's
    # pad_like_hf reproduces that.
    Case(
        "unpadded_length",
        dict(
            attn_layers=["local", "lsh"],
            local_attn_chunk_length=16,
            num_buckets=4,
        ),
        length=40,
        seed=6,
    ),
]


class _Rotations:
    """``torch.randn`` replacement: records fresh draws, or replays them (shape-checked)."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.drawn: list[np.ndarray] = []
        self.replay: list[np.ndarray] | None = None
        self.calls = 0

    @contextlib.contextmanager
    def injected(self, replay: bool):
        real_torch = hf.torch
        self.replay = list(self.drawn) if replay else None
        self.calls = 0
        owner = self

        class _TorchProxy:
            def __getattr__(self, name):
                return getattr(real_torch, name)

            @staticmethod
            def randn(*shape, device=None, dtype=None, **kwargs):
                if len(shape) == 1 and isinstance(shape[0], tuple | list | torch.Size):
                    shape = tuple(shape[0])
                shape = tuple(int(s) for s in shape)
                if owner.replay is None:
                    array = owner.rng.standard_normal(shape).astype(np.float32)
                    owner.drawn.append(array)
                else:
                    array = owner.replay[owner.calls]
                    if array.shape != shape:
                        raise AssertionError(f"randn call {owner.calls}: {shape} != {array.shape}")
                owner.calls += 1
                return torch.from_numpy(array.copy()).to(device=device, dtype=dtype)

        hf.torch = _TorchProxy()
        try:
            yield
        finally:
            hf.torch = real_torch


def _randomise(model: torch.nn.Module, rng: np.random.Generator) -> None:
    """Every parameter from the numpy RNG, with a scale that keeps activations O(1)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            shape = tuple(param.shape)
            if name.endswith("layer_norm.weight"):
                value = 1.0 + 0.2 * rng.standard_normal(shape)
            elif name.endswith("bias"):
                value = 0.2 * rng.standard_normal(shape)
            elif "embeddings" in name:
                value = rng.standard_normal(shape)
            elif len(shape) == 2:  # nn.Linear [out, in]
                value = rng.standard_normal(shape) / np.sqrt(shape[1])
            else:
                raise AssertionError(f"unexpected parameter {name} {shape}")
            param.copy_(torch.from_numpy(value.astype(np.float32)))


def _run(model, ids, mask, rotations: _Rotations, replay: bool, n_lsh: int) -> np.ndarray:
    with torch.no_grad(), rotations.injected(replay):
        out = model(
            input_ids=torch.from_numpy(ids),
            attention_mask=None if mask is None else torch.from_numpy(mask),
            use_cache=False,
        )
    assert rotations.calls == n_lsh, f"{rotations.calls} randn calls for {n_lsh} LSH layers"
    return out.logits.double().numpy()


def make_case(case: Case) -> pathlib.Path:
    rng = np.random.default_rng(case.seed)
    torch.manual_seed(case.seed)
    config = ReformerConfig(**{**BASE, **case.config})
    model_cls = ReformerForMaskedLM if case.masked_lm else ReformerModelWithLMHead
    model = model_cls(config).eval()
    _randomise(model, rng)

    out_dir = OUT_DIR / f"hf_model_{case.name}"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    # Before the forward pass: HF writes a runtime num_buckets into the config on first use.
    model.save_pretrained(out_dir, safe_serialization=True)
    for extra in sorted(out_dir.iterdir()):
        if extra.name not in ("config.json", "model.safetensors"):
            extra.unlink()

    ids = rng.integers(3, config.vocab_size, (case.batch, case.length)).astype(np.int64)
    mask = None
    if case.padding is not None:
        mask = np.ones((case.batch, case.length), np.int64)
        for b, (start, end) in enumerate(case.padding):
            mask[b, :start] = 0
            mask[b, case.length - end :] = 0
        ids = np.where(mask == 1, ids, config.pad_token_id)

    n_lsh = config.attn_layers.count("lsh")
    rotations = _Rotations(rng)
    logits32 = _run(model, ids, mask, rotations, False, n_lsh)
    logits64 = _run(model.double(), ids, mask, rotations, True, n_lsh)
    assert np.isfinite(logits64).all() and logits64.shape == (*ids.shape, config.vocab_size)
    n_buckets = model.config.num_buckets
    n_buckets = [n_buckets] if isinstance(n_buckets, int) else list(n_buckets or [])

    data: dict[str, np.ndarray] = {"input_ids": ids.astype(np.int32)}
    if mask is not None:
        data["attention_mask"] = mask.astype(np.int32)
    lsh_layers = [i for i, kind in enumerate(config.attn_layers) if kind == "lsh"]
    for layer, array in zip(lsh_layers, rotations.drawn, strict=True):
        data[f"rotations_{layer}"] = array
    data.update(
        logits=logits64.astype(np.float32),
        logits_float32=logits32.astype(np.float32),
        hf_num_buckets=np.array(n_buckets, np.int64),
    )
    np.savez_compressed(out_dir / "expected.npz", **data)
    valid = np.ones(ids.shape, bool) if mask is None else mask.astype(bool)
    gap = np.abs(logits64 - logits32)[valid].max()
    sizes = ", ".join(f"{p.name} {p.stat().st_size // 1024} KiB" for p in sorted(out_dir.iterdir()))
    print(f"{out_dir.relative_to(OUT_DIR.parent.parent)}: {sizes}; |f64 - f32| max {gap:.2e}")
    return out_dir


def main() -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for case in CASES:
        make_case(case)


if __name__ == "__main__":
    main()
