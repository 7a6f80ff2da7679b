"""Writes Hugging Face reference fixtures for the attention kernels into tests/fixtures/.

Run from the repository root with an interpreter that has torch and transformers (a separate
environment, never a dependency of the project):

    /work/refenv/bin/python tools/make_hf_fixtures.py

Each case builds a tiny ``ReformerConfig``, instantiates ``LSHSelfAttention`` or
``LocalSelfAttention`` from ``transformers``, loads weights drawn from a seeded numpy RNG, runs it
in eval mode without dropout on random hidden states and stores inputs, weights (in the
``x @ W`` layout), LSH rotations, config scalars and the module's output as one ``hf_<case>.npz``.

The LSH rotations are drawn here with numpy and injected by temporarily replacing ``torch.randn``
inside the Hugging Face modeling module for the duration of one forward pass; the replacement
checks the requested shape, and the script checks that it was called exactly once and that the
buckets the module returns equal the buckets computed from the stored rotations with numpy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib

import numpy as np
import torch
from transformers import ReformerConfig
from transformers.models.reformer import modeling_reformer as hf

OUT_DIR = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    kind: str  # "lsh" or "local"
    batch: int = 2
    length: int = 32
    d_model: int = 16
    n_heads: int = 2
    d_head: int = 8
    chunk_len: int = 8
    n_chunks_before: int = 1
    n_chunks_after: int = 0
    causal: bool = False
    n_hashes: int = 1
    n_buckets: int | tuple[int, ...] = 4
    # Per batch row: (number of padded positions at the start, number at the end).
    padding: tuple[tuple[int, int], ...] | None = None
    seed: int = 0


CASES = [
    Case("lsh_noncausal_1hash", "lsh", n_hashes=1, seed=1),
    Case("lsh_causal_2hash", "lsh", causal=True, n_hashes=2, seed=2),
    Case(
        "lsh_causal_4hash_factorised",
        "lsh",
        length=64,
        causal=True,
        n_hashes=4,
        n_buckets=(2, 4),
        seed=3,
    ),
    Case("lsh_pad_end", "lsh", n_hashes=2, padding=((0, 0), (0, 5)), seed=4),
    Case("lsh_pad_start", "lsh", causal=True, n_hashes=2, padding=((2, 0), (0, 0)), seed=5),
    Case(
        "lsh_before2_after1",
        "lsh",
        length=48,
        n_chunks_before=2,
        n_chunks_after=1,
        n_hashes=2,
        seed=6,
    ),
    # seq_len <= chunk_len: Hugging Face skips hashing and does plain (full) attention with the
    # causal and self masks; the chunked kernel must agree since every key is in the window.
    Case(
        "lsh_single_chunk_fallback",
        "lsh",
        length=8,
        causal=True,
        n_hashes=2,
        seed=7,
    ),
    Case("local_causal", "local", causal=True, seed=11),
    Case("local_noncausal_pad", "local", padding=((0, 5), (3, 0)), seed=12),
    Case("local_before2_after1", "local", length=48, n_chunks_before=2, n_chunks_after=1, seed=13),
    # Causal with a chunk after: the wrapped look-ahead lets the last chunk see chunk 0, whose
    # positions are all earlier, so the causal mask keeps them (HF / Trax quirk).
    Case("local_causal_after1", "local", causal=True, n_chunks_after=1, seed=14),
]


def _config(case: Case) -> ReformerConfig:
    n_buckets = case.n_buckets if isinstance(case.n_buckets, int) else list(case.n_buckets)
    return ReformerConfig(
        attn_layers=[case.kind],
        hidden_size=case.d_model,
        num_attention_heads=case.n_heads,
        attention_head_size=case.d_head,
        is_decoder=case.causal,
        lsh_attn_chunk_length=case.chunk_len,
        lsh_num_chunks_before=case.n_chunks_before,
        lsh_num_chunks_after=case.n_chunks_after,
        local_attn_chunk_length=case.chunk_len,
        local_num_chunks_before=case.n_chunks_before,
        local_num_chunks_after=case.n_chunks_after,
        num_hashes=case.n_hashes,
        num_buckets=n_buckets,
        hash_seed=None,
        lsh_attention_probs_dropout_prob=0.0,
        local_attention_probs_dropout_prob=0.0,
        hidden_dropout_prob=0.0,
        max_position_embeddings=max(64, case.length),
        axial_pos_embds=False,
    )


def _rotation_columns(n_buckets: int | tuple[int, ...]) -> int:
    if isinstance(n_buckets, int):
        return n_buckets // 2
    return sum(n_buckets) // 2


@contextlib.contextmanager
def _injected_randn(rotations: np.ndarray, calls: list[tuple[int, ...]]):
    """Makes ``torch.randn`` inside the HF modeling module return ``rotations`` (shape-checked)."""
    real_torch = hf.torch
    expected = tuple(rotations.shape)

    class _TorchProxy:
        def __getattr__(self, name):
            return getattr(real_torch, name)

        @staticmethod
        def randn(*shape, device=None, dtype=None, **kwargs):
            if len(shape) == 1 and isinstance(shape[0], tuple | list | torch.Size):
                shape = tuple(shape[0])
            shape = tuple(int(s) for s in shape)
            if shape != expected:
                raise AssertionError(f"unexpected randn shape {shape}, expected {expected}")
            calls.append(shape)
            return torch.from_numpy(rotations.copy()).to(device=device, dtype=dtype)

    hf.torch = _TorchProxy()
    try:
        yield
    finally:
        hf.torch = real_torch


def _numpy_buckets(qk: np.ndarray, rotations: np.ndarray, n_buckets, mask) -> np.ndarray:
    """Bucket ids [B, H, n_hashes, L] from [B, H, L, dh] vectors, pad bucket = total."""
    rotated = np.einsum("bhld,hdkr->bhklr", qk.astype(np.float64), rotations.astype(np.float64))
    factors = [n_buckets] if isinstance(n_buckets, int) else list(n_buckets)
    buckets = np.zeros(rotated.shape[:-1], np.int64)
    col, radix = 0, 1
    for f in factors:
        part = rotated[..., col : col + f // 2]
        buckets += radix * np.argmax(np.concatenate([part, -part], -1), -1)
        col += f // 2
        radix *= f
    if mask is not None:
        buckets = np.where(mask[:, None, None, :].astype(bool), buckets, radix)
    return buckets


def make_case(case: Case) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(case.seed)
    hd = case.n_heads * case.d_head
    std = 1.0 / np.sqrt(case.d_model)

    def weight() -> np.ndarray:
        return (rng.standard_normal((case.d_model, hd)) * std).astype(np.float32)

    hidden = rng.standard_normal((case.batch, case.length, case.d_model)).astype(np.float32)
    mask = None
    if case.padding is not None:
        mask = np.ones((case.batch, case.length), np.int64)
        for b, (start, end) in enumerate(case.padding):
            mask[b, :start] = 0
            mask[b, case.length - end :] = 0
        if mask.all():
            raise ValueError(f"{case.name}: padding spec pads nothing")

    config = _config(case)
    data: dict[str, np.ndarray] = {"hidden_states": hidden}
    if mask is not None:
        data["attention_mask"] = mask.astype(np.int32)
    torch_mask = None if mask is None else torch.from_numpy(mask)
    x = torch.from_numpy(hidden)

    if case.kind == "lsh":
        module = hf.LSHSelfAttention(config, layer_idx=0).eval()
        w_qk, w_v = weight(), weight()
        rotations = rng.standard_normal(
            (case.n_heads, case.d_head, case.n_hashes, _rotation_columns(case.n_buckets))
        ).astype(np.float32)
        with torch.no_grad():
            module.query_key.weight.copy_(torch.from_numpy(w_qk.T))
            module.value.weight.copy_(torch.from_numpy(w_v.T))
            calls: list[tuple[int, ...]] = []
            with _injected_randn(rotations, calls):
                result = module(x, attention_mask=torch_mask)
        single_chunk = case.length <= case.chunk_len
        if single_chunk:
            assert not calls, "HF hashed although seq_len <= chunk_len"
        else:
            assert calls == [rotations.shape], f"{case.name}: randn calls {calls}"
            qk = (hidden @ w_qk).reshape(case.batch, case.length, case.n_heads, case.d_head)
            expected = _numpy_buckets(qk.transpose(0, 2, 1, 3), rotations, case.n_buckets, mask)
            got = result.buckets.numpy()  # [B, H, n_hashes, L], round offsets added
            per_round = int(np.prod(case.n_buckets)) + (mask is not None)
            offsets = per_round * np.arange(case.n_hashes)[None, None, :, None]
            np.testing.assert_array_equal(got - offsets, expected, err_msg=case.name)
            data["buckets"] = expected.astype(np.int32)
        data.update(w_qk=w_qk, w_v=w_v, rotations=rotations)
    else:
        module = hf.LocalSelfAttention(config, layer_idx=0).eval()
        w_q, w_k, w_v = weight(), weight(), weight()
        with torch.no_grad():
            module.query.weight.copy_(torch.from_numpy(w_q.T))
            module.key.weight.copy_(torch.from_numpy(w_k.T))
            module.value.weight.copy_(torch.from_numpy(w_v.T))
            result = module(x, attention_mask=torch_mask)
        data.update(w_q=w_q, w_k=w_k, w_v=w_v)

    output = result.hidden_states.numpy().astype(np.float32)
    assert output.shape == (case.batch, case.length, hd)
    assert np.isfinite(output).all()
    n_buckets = (case.n_buckets,) if isinstance(case.n_buckets, int) else case.n_buckets
    data.update(
        output=output,
        n_heads=np.array(case.n_heads),
        d_head=np.array(case.d_head),
        chunk_len=np.array(case.chunk_len),
        n_chunks_before=np.array(case.n_chunks_before),
        n_chunks_after=np.array(case.n_chunks_after),
        causal=np.array(case.causal),
        n_hashes=np.array(case.n_hashes),
        n_buckets=np.array(n_buckets, np.int64),
        kind=np.array(case.kind),
    )
    return data


def main() -> None:
    torch.manual_seed(0)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for case in CASES:
        data = make_case(case)
        path = OUT_DIR / f"hf_{case.name}.npz"
        np.savez(path, **data)
        print(f"wrote {path.relative_to(OUT_DIR.parent.parent)}")


if __name__ == "__main__":
    main()
