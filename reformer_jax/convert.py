"""Hugging Face ``transformers`` Reformer checkpoints -> :class:`ReformerLM`.

Converts ``ReformerModelWithLMHead`` (causal) and ``ReformerForMaskedLM`` (bidirectional)
checkpoints: ``config.json`` plus ``model.safetensors`` (read here with numpy, no extra
dependency) or ``pytorch_model.bin`` (needs torch). See docs/huggingface.md.

    python -m reformer_jax.convert --hf-dir DIR --out OUT_DIR [--overwrite]

writes a model export that :func:`reformer_jax.checkpoint.load_model` reads.

Numerics: given the same LSH rotations, the converted model reproduces HF's logits (tests:
1e-5 against HF run in float64). HF draws fresh rotations with ``torch.randn`` on every call
(unless ``hash_seed``, which seeds torch's generator, not ours), so two runs agree only when the
rotations are passed explicitly (``model(tokens, rotations={layer: array})``).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from reformer_jax.config import ReformerConfig
from reformer_jax.layers.attention import get_kind
from reformer_jax.model import ReformerLM

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"

SUPPORTED_ARCHITECTURES = ("ReformerModelWithLMHead", "ReformerForMaskedLM")

# HF activation name -> ours. HF's "gelu" is the exact (erf) GELU; ours is the tanh form.
_ACTIVATIONS = {
    "relu": "relu",
    "gelu_new": "gelu",
    "gelu_pytorch_tanh": "gelu",
    "gelu_fast": "gelu",
}

# Constant buffers older transformers versions saved with the weights: accepted (and checked
# against the kernels' constants), never loaded.
_MASK_BUFFERS = {
    "mask_value_float16": -1e4,
    "mask_value_float32": -1e9,
    "self_mask_value_float16": -1e3,
    "self_mask_value_float32": -1e5,
}

# safetensors dtype -> numpy dtype (little-endian).
_ST_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}


# --------------------------------------------------------------------------------------------
# Reading checkpoints
# --------------------------------------------------------------------------------------------
def read_safetensors(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """Reads a ``.safetensors`` file into numpy arrays (pure numpy; bf16 via ``ml_dtypes``).

    Format: 8-byte little-endian header length, a JSON header mapping each tensor name to
    ``dtype``, ``shape`` and ``data_offsets`` (relative to the end of the header), raw data.
    """
    path = pathlib.Path(path)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    if data.size < 8:
        raise ValueError(f"{path}: too short to be a safetensors file")
    header_len = int(np.frombuffer(data[:8].tobytes(), "<u8")[0])
    if 8 + header_len > data.size:
        raise ValueError(f"{path}: header length {header_len} exceeds the file size")
    header = json.loads(data[8 : 8 + header_len].tobytes())
    base = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype_name = info["dtype"]
        if dtype_name == "BF16":
            import ml_dtypes  # a dependency of jax

            dtype = np.dtype(ml_dtypes.bfloat16)
        elif dtype_name in _ST_DTYPES:
            dtype = np.dtype(_ST_DTYPES[dtype_name])
        else:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {dtype_name}")
        shape = tuple(int(s) for s in info["shape"])
        start, end = (int(o) for o in info["data_offsets"])
        if end - start != math.prod(shape) * dtype.itemsize or base + end > data.size:
            raise ValueError(
                f"{path}: tensor {name!r} ({dtype_name} {list(shape)}) has inconsistent "
                f"data_offsets {[start, end]}"
            )
        raw = data[base + start : base + end]
        tensors[name] = np.frombuffer(raw.tobytes(), dtype).reshape(shape)
    return tensors


def _read_torch(path: pathlib.Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"{path} is a PyTorch pickle and reading it needs torch, which reformer_jax does not "
            "depend on: `pip install torch`, or convert the checkpoint to model.safetensors "
            "(`model.save_pretrained(dir, safe_serialization=True)` in transformers)"
        ) from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    out = {}
    for name, tensor in state.items():
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        out[name] = tensor.detach().cpu().numpy()
    return out


def load_hf_checkpoint(path: str | pathlib.Path) -> tuple[dict[str, np.ndarray], dict]:
    """Reads a transformers checkpoint directory: ``(state_dict of numpy arrays, config dict)``.

    Weights come from ``model.safetensors`` (or a sharded ``model.safetensors.index.json``),
    else ``pytorch_model.bin`` (or its index), which needs torch.
    """
    path = pathlib.Path(path)
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: not a transformers checkpoint folder")
    config = json.loads(config_path.read_text())
    if (path / SAFETENSORS_FILE).is_file():
        return read_safetensors(path / SAFETENSORS_FILE), config
    for index, reader in ((SAFETENSORS_INDEX, read_safetensors), (TORCH_INDEX, _read_torch)):
        if (path / index).is_file():
            weight_map = json.loads((path / index).read_text())["weight_map"]
            state: dict[str, np.ndarray] = {}
            for shard in sorted(set(weight_map.values())):
                state.update(reader(path / shard))
            return state, config
    if (path / TORCH_FILE).is_file():
        return _read_torch(path / TORCH_FILE), config
    raise FileNotFoundError(
        f"no weights in {path}: expected {SAFETENSORS_FILE}, {TORCH_FILE} or a sharded index"
    )


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
def shortest_cycle(kinds: Sequence[str]) -> tuple[str, ...]:
    """The shortest prefix whose repetition gives ``kinds`` (at worst ``kinds`` itself)."""
    kinds = tuple(kinds)
    for n in range(1, len(kinds) + 1):
        if len(kinds) % n == 0 and kinds == kinds[:n] * (len(kinds) // n):
            return kinds[:n]
    return kinds


def hf_num_buckets(length: int, chunk_len: int, max_position_embeddings: int) -> int | list[int]:
    """HF's rule for an unset ``num_buckets`` (``LSHSelfAttention._set_num_buckets``).

    The largest power of two <= ``2 * length // chunk_len``, split into two power-of-two factors
    when above ``2 * max(int(sqrt(max_position_embeddings // chunk_len)), chunk_len)``.
    """
    power = max(1, (2 * (length // chunk_len)).bit_length() - 1)
    n_buckets = 2**power
    limit = 2 * max(int((max_position_embeddings // chunk_len) ** 0.5), chunk_len)
    if n_buckets > limit:
        return [2 ** (power // 2), 2 ** (power - power // 2)]
    return n_buckets


def _hf_capacity(hf: Mapping[str, Any]) -> int:
    """The length an HF model is built for: the axial grid (capped by max_position_embeddings)."""
    max_pos = int(hf.get("max_position_embeddings", 4096))
    if hf.get("axial_pos_embds", True):
        return min(max_pos, math.prod(int(n) for n in hf.get("axial_pos_shape", (64, 64))))
    return max_pos


def config_from_hf(
    hf_config: Mapping[str, Any],
    *,
    sequence_length: int | None = None,
    approximate_gelu: bool = False,
    **overrides: Any,
) -> ReformerConfig:
    """Maps a transformers ``ReformerConfig`` (its ``config.json`` contents) to ours.

    Args:
      hf_config: the ``config.json`` dict (or ``ReformerConfig.to_dict()``).
      sequence_length: only used when ``num_buckets`` is unset (``null``): HF then picks it on
        its first forward call from that call's (padded) length; we apply the same rule
        (:func:`hf_num_buckets`) to ``sequence_length``, default the model's capacity
        (``prod(axial_pos_shape)`` capped by ``max_position_embeddings``, or
        ``max_position_embeddings`` for learned positions).
      approximate_gelu: accept ``hidden_act="gelu"`` (exact erf GELU) and use our tanh GELU,
        which differs by up to ~5e-4 per activation. Off by default: the logits would not match.
      overrides: further ``ReformerConfig`` fields (e.g. ``dtype``, ``hash_seed``).

    Raises:
      ValueError naming the HF field for anything the model cannot reproduce.
    """
    hf = dict(hf_config)

    def fail(field: str, problem: str) -> None:
        raise ValueError(f"Hugging Face config field {field!r}: {problem}")

    model_type = hf.get("model_type", "reformer")
    if model_type != "reformer":
        fail("model_type", f"{model_type!r} is not a Reformer checkpoint")
    architectures = hf.get("architectures") or []
    unsupported = [a for a in architectures if a not in SUPPORTED_ARCHITECTURES]
    if unsupported:
        fail(
            "architectures",
            f"{unsupported} not supported: only language-model heads "
            f"{list(SUPPORTED_ARCHITECTURES)} convert",
        )
    for field in ("is_encoder_decoder", "add_cross_attention"):
        if hf.get(field):
            fail(field, "encoder-decoder / cross-attention models are not supported")

    kinds = tuple(hf.get("attn_layers", ("local", "lsh", "local", "lsh", "local", "lsh")))
    if not kinds:
        fail("attn_layers", "is empty")
    bad = [k for k in kinds if k not in ("lsh", "local")]
    if bad:
        fail("attn_layers", f"unknown attention type(s) {bad}; HF knows only 'lsh' and 'local'")
    n_layers = len(kinds)
    if hf.get("num_hidden_layers", n_layers) != n_layers:
        fail(
            "num_hidden_layers",
            f"{hf['num_hidden_layers']} disagrees with len(attn_layers) = {n_layers}",
        )

    act = hf.get("hidden_act", "relu")
    if act == "gelu" and approximate_gelu:
        activation = "gelu"
    elif act in _ACTIVATIONS:
        activation = _ACTIVATIONS[act]
    else:
        hint = (
            " (HF's 'gelu' is the exact erf form, ours the tanh approximation; pass "
            "approximate_gelu=True / --approximate-gelu to accept the small difference)"
            if act == "gelu"
            else ""
        )
        fail("hidden_act", f"{act!r} is not supported; supported: {sorted(_ACTIVATIONS)}{hint}")

    uses_lsh = "lsh" in kinds
    lsh_chunk = hf.get("lsh_attn_chunk_length", 64)
    if uses_lsh and not lsh_chunk:
        fail("lsh_attn_chunk_length", f"must be set for LSH layers, got {lsh_chunk!r}")
    lsh_chunk = int(lsh_chunk or 64)

    num_buckets = hf.get("num_buckets")
    if isinstance(num_buckets, list | tuple):
        num_buckets = [int(b) for b in num_buckets]
        if len(num_buckets) == 1:
            num_buckets = num_buckets[0]
    if num_buckets is None and uses_lsh:
        length = _hf_capacity(hf) if sequence_length is None else int(sequence_length)
        max_pos = int(hf.get("max_position_embeddings", 4096))
        num_buckets = hf_num_buckets(length, lsh_chunk, max_pos)
    factors = [num_buckets] if isinstance(num_buckets, int) else list(num_buckets or [])
    if uses_lsh and (not factors or any(f < 2 or f % 2 for f in factors)):
        fail("num_buckets", f"{num_buckets!r}: every bucket count must be even and >= 2")

    axial = bool(hf.get("axial_pos_embds", True))
    d_model = int(hf.get("hidden_size", 256))
    values: dict[str, Any] = dict(
        vocab_size=int(hf.get("vocab_size", 320)),
        d_model=d_model,
        d_ff=int(hf.get("feed_forward_size", 512)),
        n_layers=n_layers,
        n_heads=int(hf.get("num_attention_heads", 12)),
        d_head=int(hf.get("attention_head_size", 64)),
        attention_pattern=shortest_cycle(kinds),
        causal=bool(hf.get("is_decoder", False)),
        lsh_chunk_len=lsh_chunk,
        lsh_n_buckets=num_buckets if uses_lsh else None,
        lsh_n_hashes=int(hf.get("num_hashes", 1)),
        lsh_chunks_before=int(hf.get("lsh_num_chunks_before", 1) or 0),
        lsh_chunks_after=int(hf.get("lsh_num_chunks_after", 0) or 0),
        lsh_attend_across_buckets=True,
        hash_seed=hf.get("hash_seed"),
        local_chunk_len=int(hf.get("local_attn_chunk_length", 64)),
        local_chunks_before=int(hf.get("local_num_chunks_before", 1)),
        local_chunks_after=int(hf.get("local_num_chunks_after", 0)),
        local_wrap_around=True,
        pos_embedding="axial" if axial else "learned",
        max_len=int(hf.get("max_position_embeddings", 4096)),
        hidden_dropout=float(hf.get("hidden_dropout_prob", 0.05) or 0.0),
        lsh_dropout=float(hf.get("lsh_attention_probs_dropout_prob", 0.0) or 0.0),
        local_dropout=float(hf.get("local_attention_probs_dropout_prob", 0.05) or 0.0),
        # HF drops out after the first feed-forward dense layer with hidden_dropout_prob too.
        ff_dropout=float(hf.get("hidden_dropout_prob", 0.05) or 0.0),
        ff_activation=activation,
        ff_chunk_size=int(hf.get("chunk_size_feed_forward", 0) or 0),
        reversible=True,
        ln_eps=float(hf.get("layer_norm_eps", 1e-12)),
    )
    if axial:
        shape = tuple(int(n) for n in hf.get("axial_pos_shape", (64, 64)))
        dims = tuple(int(d) for d in hf.get("axial_pos_embds_dim", (64, 192)))
        if len(shape) != len(dims):
            fail("axial_pos_embds_dim", f"{list(dims)} needs one dim per axis of {list(shape)}")
        if sum(dims) != d_model:
            fail("axial_pos_embds_dim", f"{list(dims)} must sum to hidden_size {d_model}")
        values.update(axial_shape=shape, axial_dims=dims)
    values.update(overrides)
    return ReformerConfig(**values)


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------
def _linear(w: np.ndarray) -> np.ndarray:
    """torch ``nn.Linear.weight`` [out, in] -> flax kernel [in, out]."""
    return np.ascontiguousarray(w.T)


def hf_parameter_map(cfg: ReformerConfig) -> dict[str, tuple[tuple, Any]]:
    """HF tensor name -> (our parameter path, transform). Paths of stacked blocks carry the
    group index as their last element: ``(("blocks", p, ...), g)``."""
    out: dict[str, tuple[tuple, Any]] = {}
    ident = np.asarray
    out["reformer.embeddings.word_embeddings.weight"] = (("embed", "embedding"), ident)
    if cfg.pos_embedding == "axial":
        for i in range(len(cfg.axial_shape)):
            out[f"reformer.embeddings.position_embeddings.weights.{i}"] = (
                ("positions", "axes", i),
                "axial",
            )
    else:
        out["reformer.embeddings.position_embeddings.embedding.weight"] = (
            ("positions", "table"),
            ident,
        )
    n_pattern = len(cfg.attention_pattern)
    for i, kind in enumerate(cfg.layer_kinds()):
        g, p = divmod(i, n_pattern)
        hf = f"reformer.encoder.layers.{i}"
        att, ff = ("blocks", p, "attention"), ("blocks", p, "feedforward")
        names = {
            f"{hf}.attention.layer_norm.weight": ((*att, "norm", "scale"), ident),
            f"{hf}.attention.layer_norm.bias": ((*att, "norm", "bias"), ident),
            f"{hf}.attention.self_attention.value.weight": ((*att, "v", "kernel"), _linear),
            f"{hf}.attention.output.dense.weight": ((*att, "out", "kernel"), _linear),
            f"{hf}.feed_forward.layer_norm.weight": ((*ff, "norm", "scale"), ident),
            f"{hf}.feed_forward.layer_norm.bias": ((*ff, "norm", "bias"), ident),
            f"{hf}.feed_forward.dense.dense.weight": ((*ff, "dense_in", "kernel"), _linear),
            f"{hf}.feed_forward.dense.dense.bias": ((*ff, "dense_in", "bias"), ident),
            f"{hf}.feed_forward.output.dense.weight": ((*ff, "dense_out", "kernel"), _linear),
            f"{hf}.feed_forward.output.dense.bias": ((*ff, "dense_out", "bias"), ident),
        }
        if get_kind(kind).shared_qk:
            names[f"{hf}.attention.self_attention.query_key.weight"] = (
                (*att, "qk", "kernel"),
                _linear,
            )
        else:
            for ours, theirs in (("q", "query"), ("k", "key")):
                names[f"{hf}.attention.self_attention.{theirs}.weight"] = (
                    (*att, ours, "kernel"),
                    _linear,
                )
        for name, (path, fn) in names.items():
            out[name] = ((path, g), fn)
    out["reformer.encoder.layer_norm.weight"] = (("final_norm", "scale"), ident)
    out["reformer.encoder.layer_norm.bias"] = (("final_norm", "bias"), ident)
    out["lm_head.decoder.weight"] = (("head", "kernel"), _linear)
    out["lm_head.decoder.bias"] = (("head", "bias"), ident)
    return out


def _ignorable(name: str, value: np.ndarray) -> bool:
    """Old-style constant mask buffers (checked) and the LM head's duplicate bias."""
    if name == "lm_head.bias":
        return True
    leaf = name.rsplit(".", 1)[-1]
    if leaf in _MASK_BUFFERS and name.startswith("reformer.encoder.layers."):
        if value.size != 1 or float(value.reshape(())) != _MASK_BUFFERS[leaf]:
            raise ValueError(
                f"tensor {name!r} = {value.reshape(-1)[:4]} differs from the constant "
                f"{_MASK_BUFFERS[leaf]} the attention kernels use"
            )
        return True
    return False


def params_from_hf(state_dict: Mapping[str, np.ndarray], cfg: ReformerConfig) -> nnx.State:
    """The ``nnx.Param`` state of ``ReformerLM(cfg)`` filled from an HF state dict.

    Raises ValueError naming the tensor for a missing or unexpected tensor or a shape mismatch.
    ``lm_head.bias`` (the HF head's own bias, the same tensor as ``lm_head.decoder.bias`` in
    transformers < 5 and unused by the forward pass in 5.x) is used only when
    ``lm_head.decoder.bias`` is absent.
    """
    state_dict = dict(state_dict)
    if "lm_head.decoder.bias" not in state_dict and "lm_head.bias" in state_dict:
        state_dict["lm_head.decoder.bias"] = state_dict["lm_head.bias"]
    mapping = hf_parameter_map(cfg)
    missing = sorted(set(mapping) - set(state_dict))
    if missing:
        raise ValueError(
            f"missing tensor(s) in the Hugging Face checkpoint: {missing[:8]}"
            + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        )
    unexpected = sorted(
        name for name in set(state_dict) - set(mapping) if not _ignorable(name, state_dict[name])
    )
    if unexpected:
        raise ValueError(
            f"unexpected tensor(s) in the Hugging Face checkpoint (not a Reformer LM with this "
            f"config?): {unexpected[:8]}" + (" and more" if len(unexpected) > 8 else "")
        )

    abstract = nnx.eval_shape(lambda: ReformerLM(cfg, rngs=nnx.Rngs(0)))
    _, abstract_state = nnx.split(abstract, nnx.Param)
    flat = dict(nnx.to_flat_state(abstract_state))
    dtype = cfg.parameter_dtype
    values: dict[tuple, np.ndarray] = {}
    for name, (target, fn) in mapping.items():
        path, group = target if isinstance(target[0], tuple) else (target, None)
        var = flat[path]
        want = tuple(var.get_value().shape)
        if group is not None:
            want = want[1:]
        array = np.asarray(state_dict[name])
        if fn == "axial":
            axis = path[-1]
            hf_shape = [1] * len(cfg.axial_shape)
            hf_shape[axis] = cfg.axial_shape[axis]
            hf_shape = (*hf_shape, cfg.axial_dims[axis])
            if tuple(array.shape) != hf_shape:
                raise ValueError(
                    f"tensor {name!r} has shape {list(array.shape)}, expected {list(hf_shape)} "
                    f"(axial_pos_shape / axial_pos_embds_dim)"
                )
            array = array.reshape(want)
        else:
            array = fn(array)
        if tuple(array.shape) != want:
            layout = " after transposing torch's [out, in] Linear layout" if fn is _linear else ""
            raise ValueError(
                f"tensor {name!r} has shape {list(state_dict[name].shape)}, which does not fit "
                f"{'.'.join(map(str, path))} of shape {list(want)}{layout}"
            )
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"tensor {name!r} has non-float dtype {array.dtype}")
        array = np.asarray(array, np.float32)
        if group is None:
            values[path] = array
        else:
            if path not in values:
                values[path] = np.zeros((cfg.n_groups, *want), np.float32)
            values[path][group] = array
    for path, var in flat.items():
        var.set_value(jnp.asarray(values[path], dtype))
    return nnx.from_flat_state(flat)


def model_from_hf(
    state_dict: Mapping[str, np.ndarray],
    hf_config: Mapping[str, Any],
    **config_options: Any,
) -> ReformerLM:
    """A ``ReformerLM`` with HF's weights; ``config_options`` go to :func:`config_from_hf`."""
    cfg = config_from_hf(hf_config, **config_options)
    state = params_from_hf(state_dict, cfg)
    abstract = nnx.eval_shape(lambda: ReformerLM(cfg, rngs=nnx.Rngs(0)))
    graphdef, _ = nnx.split(abstract, nnx.Param)
    return nnx.merge(graphdef, state)


def pad_like_hf(
    tokens: jax.Array | np.ndarray,
    mask: jax.Array | np.ndarray | None,
    cfg: ReformerConfig,
    pad_token_id: int = 0,
) -> tuple[jax.Array, jax.Array | None, int]:
    """Pads inputs the way HF's ``ReformerModel`` does in eval mode.

    HF pads a length that is not a multiple of the least common multiple of the chunk lengths
    (and exceeds the smallest chunk length) with ``pad_token_id`` and a zero attention mask.
    Because the chunk windows wrap around, that padding changes the result (the last chunk of a
    round is then all padding); to reproduce HF on such lengths pad with this, run the model
    with the returned mask and keep the first ``original_length`` positions.

    Returns ``(tokens, mask, original_length)``; the mask is None when nothing was padded and
    none was given.
    """
    tokens = jnp.asarray(tokens)
    batch, length = tokens.shape
    chunks = {"lsh": cfg.lsh_chunk_len, "local": cfg.local_chunk_len}
    chunks = [chunks[kind] for kind in set(cfg.attention_pattern) if kind in chunks]
    multiple = math.lcm(*chunks) if chunks else 1
    if not chunks or length % multiple == 0 or length <= min(chunks):
        return tokens, None if mask is None else jnp.asarray(mask), length
    extra = multiple - length % multiple
    tokens = jnp.concatenate([tokens, jnp.full((batch, extra), pad_token_id, tokens.dtype)], 1)
    mask = jnp.ones((batch, length), bool) if mask is None else jnp.asarray(mask, bool)
    mask = jnp.concatenate([mask, jnp.zeros((batch, extra), bool)], 1)
    return tokens, mask, length


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def count_parameters(model: ReformerLM) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reformer_jax.convert",
        description="Convert a Hugging Face Reformer LM checkpoint into a reformer_jax export.",
    )
    parser.add_argument("--hf-dir", required=True, help="folder with config.json and weights")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument(
        "--sequence-length",
        type=int,
        default=None,
        help="length for HF's num_buckets rule when config.json has num_buckets null "
        "(default: the model's positional capacity)",
    )
    parser.add_argument(
        "--approximate-gelu",
        action="store_true",
        help="accept hidden_act='gelu' (exact) and use the tanh-approximated GELU",
    )
    args = parser.parse_args(argv)

    from reformer_jax.checkpoint import save_model

    out = pathlib.Path(args.out)
    if out.exists() and not out.is_dir():
        print(f"error: --out {out} is a file; pass a new or empty directory", file=sys.stderr)
        return 1
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        print(f"error: --out {out} is not empty; pass --overwrite to replace it", file=sys.stderr)
        return 1
    if not pathlib.Path(args.hf_dir).is_dir():
        print(
            f"error: --hf-dir {args.hf_dir}: no such directory; pass the folder holding the "
            "Hugging Face checkpoint's config.json and weights",
            file=sys.stderr,
        )
        return 1
    try:
        state_dict, hf_config = load_hf_checkpoint(args.hf_dir)
        model = model_from_hf(
            state_dict,
            hf_config,
            sequence_length=args.sequence_length,
            approximate_gelu=args.approximate_gelu,
        )
    except (FileNotFoundError, ValueError, ImportError) as err:  # name the problem and the fix
        print(f"error: --hf-dir {args.hf_dir}: {err}", file=sys.stderr)
        return 1
    path = save_model(out, model, overwrite=args.overwrite)
    cfg = model.cfg
    print(f"converted {args.hf_dir} -> {path}")
    print(
        f"  layers {cfg.n_layers} ({cfg.n_groups} x pattern {list(cfg.attention_pattern)}), "
        f"d_model {cfg.d_model}, heads {cfg.n_heads} x {cfg.d_head}, d_ff {cfg.d_ff}, "
        f"vocab {cfg.vocab_size}, {'causal' if cfg.causal else 'bidirectional'}"
    )
    if "lsh" in cfg.attention_pattern:
        print(
            f"  LSH: chunk {cfg.lsh_chunk_len}, buckets {cfg.lsh_n_buckets}, "
            f"hashes {cfg.lsh_n_hashes}"
        )
    print(f"  parameters {count_parameters(model):,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
