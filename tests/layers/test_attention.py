"""The attention-kind dispatch (`reformer_jax.layers.attention`): each kind runs its kernel with
the config's settings, draws what the model expects, replays what the backward pass reuses, and
an unknown kind is refused with the list of valid ones."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from reformer_jax import kernels
from reformer_jax.config import ReformerConfig
from reformer_jax.layers.attention import (
    KINDS,
    SelfAttention,
    attend,
    get_kind,
    layer_rotations,
)
from reformer_jax.model import ReformerLM
from tests.model_utils import tiny_config

B, H, L, D = 2, 2, 16, 4


def _qkv(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(B, H, L, D)).astype(np.float32) for _ in range(3)]


def _mask():
    mask = np.ones((B, L), bool)
    mask[1, 11:] = False
    return mask


def _cfg(**overrides):
    # Settings away from the defaults, so a dispatch that drops one of them is seen.
    return tiny_config(
        lsh_chunk_len=4,
        lsh_n_hashes=3,
        lsh_chunks_before=2,
        lsh_chunks_after=1,
        lsh_attend_across_buckets=False,
        local_chunk_len=4,
        local_chunks_before=2,
        local_chunks_after=1,
        local_wrap_around=True,
        **overrides,
    )


@pytest.mark.parametrize("causal", [True, False])
def test_each_kind_equals_its_kernel_called_directly(causal):
    """Catches a dispatch that drops or swaps a config field (chunk sizes, look-back/ahead,
    wrap-around, across-buckets), the causal flag or the padding mask for one kind."""
    cfg = _cfg(causal=causal)
    q, k, v = _qkv()
    mask = _mask()
    rotations = layer_rotations(cfg, jax.random.key(3), cfg.lsh_n_buckets)
    lsh, replay = attend("lsh", cfg, q, None, v, mask=mask, dropout_key=None, draws=rotations)
    want = kernels.lsh_attention(
        q,
        v,
        rotations,
        n_buckets=4,
        chunk_len=4,
        n_chunks_before=2,
        n_chunks_after=1,
        causal=causal,
        mask=mask,
        attend_across_buckets=False,
    )
    np.testing.assert_allclose(lsh, want, atol=1e-6)
    buckets = kernels.hash_vectors(q, rotations, 4, mask)
    np.testing.assert_array_equal(replay.buckets, buckets)  # kept: not attending across buckets
    for got, want in zip(replay.order, kernels.sort_order(buckets, 4, 4), strict=True):
        np.testing.assert_array_equal(got, want)
    local, replay = attend("local", cfg, q, k, v, mask=mask, dropout_key=None)
    want = kernels.local_attention(
        q,
        k,
        v,
        chunk_len=4,
        n_chunks_before=2,
        n_chunks_after=1,
        causal=causal,
        mask=mask,
        wrap_around=True,
    )
    np.testing.assert_allclose(local, want, atol=1e-6)
    assert replay is None
    full, _ = attend("full", cfg, q, k, v, mask=mask, dropout_key=None)
    want = kernels.full_attention(q, k, v, causal=causal, mask=mask)
    np.testing.assert_allclose(full, want, atol=1e-6)


def test_each_kind_applies_its_own_dropout_rate():
    """Catches a kind reading another kind's dropout rate (or dropping it)."""
    q, k, v = _qkv(1)
    key = jax.random.key(7)
    for name, field in (("local", "local_dropout"), ("full", "full_dropout")):
        cfg = _cfg(**{field: 0.5})
        got, _ = attend(name, cfg, q, k, v, mask=None, dropout_key=key)
        plain, _ = attend(name, cfg, q, k, v, mask=None, dropout_key=None)
        other = _cfg(**{("full_dropout" if name == "local" else "local_dropout"): 0.5})
        unaffected, _ = attend(name, other, q, k, v, mask=None, dropout_key=key)
        assert not np.allclose(got, plain)
        np.testing.assert_allclose(unaffected, plain, atol=1e-6)


def test_lsh_replay_is_what_the_kernel_uses():
    """Catches a kind that re-hashes or re-sorts instead of using the replayed bucket order (the
    reversible backward would then recompute a different forward), and one that no longer
    accepts bare bucket ids (what it replayed before)."""
    cfg = _cfg().replace(lsh_attend_across_buckets=True)
    q, _, v = _qkv(2)
    rotations = layer_rotations(cfg, jax.random.key(0), 4)
    out, replay = attend("lsh", cfg, q, None, v, mask=None, dropout_key=None, draws=rotations)
    assert replay.buckets is None  # attending across buckets needs only the order
    again, same = attend(
        "lsh", cfg, q, None, v, mask=None, dropout_key=None, draws=rotations, replay=replay
    )
    np.testing.assert_array_equal(again, out)
    assert same is replay
    one_bucket = np.zeros((*q.shape[:2], cfg.lsh_n_hashes, q.shape[2]), np.int32)
    moved, used = attend(
        "lsh", cfg, q, None, v, mask=None, dropout_key=None, draws=rotations, replay=one_bucket
    )
    one_order = kernels.sort_order(jnp.asarray(one_bucket), cfg.lsh_chunk_len, 4)
    np.testing.assert_array_equal(used.order.sorted_pos, one_order.sorted_pos)
    assert not np.allclose(moved, out)
    replayed, _ = attend(
        "lsh", cfg, q, None, v, mask=None, dropout_key=None, draws=rotations, replay=used
    )
    np.testing.assert_array_equal(replayed, moved)


def test_lsh_draws_rotations_and_nothing_below_full_attention_below():
    """Catches draws of the wrong shape or key, and LSH layers that still draw (and hash) when
    the length is below ``full_attention_below`` (where they run exact attention)."""
    cfg = _cfg(full_attention_below=8)
    key = jax.random.key(4)
    lsh = KINDS["lsh"]
    np.testing.assert_array_equal(lsh.draw(cfg, key, 16), layer_rotations(cfg, key, 4))
    assert lsh.draw(cfg, key, 7) is None
    assert KINDS["local"].draw(cfg, key, 16) is None and KINDS["full"].draw(cfg, key, 16) is None
    q, _, v = _qkv()
    exact, replay = attend("lsh", cfg, q[:, :, :7], None, v[:, :, :7], mask=None, dropout_key=None)
    want = kernels.full_attention(
        q[:, :, :7],
        kernels.unit_keys(q[:, :, :7]),
        v[:, :, :7],
        scale=1.0,
        exclude_self=True,
        causal=True,
    )
    np.testing.assert_allclose(exact, want, atol=1e-6)
    assert replay is None


def test_model_draws_fold_in_the_layer_index():
    """Catches layers sharing one draw (or drawing from the step key itself): every LSH layer
    folds its index into the model's key, the contract explicit ``rotations`` rely on."""
    cfg = tiny_config(attention_pattern=("local", "lsh"), n_layers=4)
    model = ReformerLM(cfg, rngs=nnx.Rngs(0))
    key = jax.random.key(9)
    draws = model.layer_draws(32, key)
    assert sorted(draws) == [1, 3]
    for i in (1, 3):
        want = layer_rotations(cfg, jax.random.fold_in(key, i), 4)
        np.testing.assert_array_equal(draws[i], want)


def test_layer_projections_follow_the_kind():
    """Catches a layer that creates separate q/k for a shared-QK kind (or the reverse): the
    parameter tree is what checkpoints and the converter address."""
    cfg = tiny_config()
    for name, kind in KINDS.items():
        layer = SelfAttention(cfg, name, rngs=nnx.Rngs(0))
        assert layer.kind is kind
        has_qk = hasattr(layer, "qk")
        assert has_qk == kind.shared_qk
        assert hasattr(layer, "q") == hasattr(layer, "k") == (not kind.shared_qk)


def test_kinds_are_frozen_hashable_and_named_by_their_key():
    """Catches a kind object that cannot be static in a jit cache key or a module graph."""
    for name, kind in KINDS.items():
        assert kind.name == name
        assert hash(kind) == hash(type(kind)())
        with pytest.raises(dataclasses.FrozenInstanceError):
            kind.extra = 1  # type: ignore[attr-defined]


def test_unknown_kind_error_lists_the_valid_kinds():
    """Catches an unhelpful error (or a silent fallback) for a misspelt kind, in the dispatch
    and in the config."""
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"unknown attention kind 'lhs'.*'lsh'.*'local'.*'full'"):
        attend("lhs", tiny_config(), q, k, v, mask=None, dropout_key=None)
    with pytest.raises(ValueError, match="unknown attention kind"):
        get_kind("sparse_typo")
    with pytest.raises(ValueError, match=r"model.attention_pattern: unknown kind\(s\) \['lhs'\]"):
        ReformerConfig(attention_pattern=("lhs",))
    message = ""
    try:
        ReformerConfig(attention_pattern=("lhs",))
    except ValueError as error:
        message = str(error)
    assert all(name in message for name in KINDS) and "\n" not in message


# ------------------------------------------------------------------------------------------------
# The survey's families: sparse patterns, Linformer, Performer.

_SPARSE = {
    "star": dict(sparse_block_len=4),
    "bigbird": dict(sparse_block_len=2, sparse_random_blocks=1, sparse_seed=5),
    "longformer": dict(sparse_window=2, sparse_global_positions=(3,), sparse_dilation=2),
    "strided": dict(sparse_block_len=3),
    "fixed": dict(sparse_block_len=4, sparse_summary_len=2),
}


@pytest.mark.parametrize("pattern", list(_SPARSE))
def test_sparse_kind_builds_the_configured_pattern(pattern):
    """Catches a config field not reaching the pattern (block, window, dilation, global
    positions, random blocks, seed, summary length) or the causal flag / mask being dropped: the
    kind equals dense attention restricted to the kernel's pattern built by hand."""
    cfg = tiny_config(attention_pattern=("sparse",), sparse_pattern=pattern, **_SPARSE[pattern])
    constructors = dict(
        star=lambda: kernels.star_pattern(4),
        bigbird=lambda: kernels.bigbird_pattern(2, n_random_blocks=1, seed=5),
        longformer=lambda: kernels.longformer_pattern(2, (3,), dilation=2, block_len=16),
        strided=lambda: kernels.strided_pattern(3),
        fixed=lambda: kernels.fixed_pattern(4, 2),
    )
    want_pattern = constructors[pattern]()
    q, k, v = _qkv(4)
    mask = _mask()
    got, replay = attend("sparse", cfg, q, k, v, mask=mask, dropout_key=None)
    allowed = want_pattern.dense_mask(L, H)[None] & mask[:, None, None, :]
    want = kernels.full_attention(q, k, v, causal=True, mask=allowed)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert replay is None


@pytest.mark.parametrize("sharing", ["none", "head", "kv", "layer"])
def test_linformer_kind_uses_the_projections_of_its_sharing_level(sharing):
    """Catches projections of the wrong shape for a sharing level, E and F swapped, E = F not
    tied under "kv", the layer-level matrix not reaching the kernel under "layer", or the
    padding mask dropped (checked against the paper's formula written densely)."""
    cfg = tiny_config(
        attention_pattern=("linformer",), causal=False, linformer_k=3, linformer_sharing=sharing
    )
    layer = SelfAttention(cfg, "linformer", rngs=nnx.Rngs(0))
    kind = KINDS["linformer"]
    shared = {n: p[...] for n, p in kind.shared_params(cfg, nnx.Rngs(1)).items()}
    params = layer.extra_params(shared)
    expected = dict(
        none={"proj_k": (H, 3, cfg.max_len), "proj_v": (H, 3, cfg.max_len)},
        head={"proj_k": (3, cfg.max_len), "proj_v": (3, cfg.max_len)},
        kv={"proj": (3, cfg.max_len)},
        layer={"proj": (3, cfg.max_len)},
    )[sharing]
    assert {n: a.shape for n, a in params.items()} == expected
    assert (sharing == "layer") == bool(shared) and (sharing == "layer") != bool(layer.extra_names)
    e = np.asarray(params.get("proj_k", params.get("proj")), np.float64)[..., :L]
    f = np.asarray(params.get("proj_v", params.get("proj")), np.float64)[..., :L]
    q, k, v = (np.asarray(a, np.float64) for a in _qkv(5))
    real = _mask()[:, None, :, None]
    k, v = k * real, v * real
    if e.ndim == 2:
        e, f = e[None], f[None]
    ek, fv = np.einsum("hrl,bhld->bhrd", e, k), np.einsum("hrl,bhld->bhrd", f, v)
    scores = np.einsum("bhqd,bhrd->bhqr", q, ek) / np.sqrt(D)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    want = np.einsum("bhqr,bhrd->bhqd", probs / probs.sum(-1, keepdims=True), fv)
    q, k, v = _qkv(5)
    got, _ = attend("linformer", cfg, q, k, v, mask=_mask(), dropout_key=None, params=params)
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("causal", [True, False])
def test_performer_kind_draws_features_and_runs_favor(causal):
    """Catches features of the wrong shape (shared instead of per head), the orthogonal flag or
    the feature count not reaching the draw, and the causal flag or mask dropped (checked
    against the random-feature formula written densely)."""
    cfg = tiny_config(
        attention_pattern=("performer",),
        causal=causal,
        performer_n_features=6,
        performer_orthogonal=False,
        performer_chunk_len=3,
    )
    kind = KINDS["performer"]
    key = jax.random.key(2)
    features = kind.draw(cfg, key, L)
    want_features = kernels.draw_features(key, 6, D, False, heads=H)
    np.testing.assert_array_equal(features, want_features)
    q, k, v = (np.asarray(a, np.float64) for a in _qkv(6))
    w = np.asarray(features, np.float64)

    def phi(x):
        x = x * D**-0.25
        return np.exp(np.einsum("bhld,hmd->bhlm", x, w) - 0.5 * (x * x).sum(-1, keepdims=True))

    weights = np.einsum("bhqm,bhkm->bhqk", phi(q), phi(k)) * _mask()[:, None, None, :]
    if causal:
        weights = weights * np.tril(np.ones((L, L)))
    want = np.einsum("bhqk,bhkd->bhqd", weights / weights.sum(-1, keepdims=True), v)
    q, k, v = _qkv(6)
    got, replay = attend("performer", cfg, q, k, v, mask=_mask(), dropout_key=None, draws=features)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert replay is None


def test_new_kinds_config_errors_are_one_line_and_name_the_setting():
    """Catches a bad sparse / Linformer / Performer setting accepted silently (or failing later
    inside a kernel with an error that does not name the config field)."""
    cases = {
        "model.sparse_pattern": dict(sparse_pattern="diagonal"),
        "model.sparse_window_blocks": dict(sparse_window_blocks=2),
        "model.sparse_summary_len": dict(sparse_pattern="fixed", sparse_summary_len=99),
        "model.linformer_sharing": dict(linformer_sharing="all"),
        "model.linformer_k": dict(linformer_k=0),
        "model.performer_n_features": dict(performer_n_features=0),
        "model.performer_orthogonal": dict(performer_orthogonal="yes"),
        "model.causal": dict(attention_pattern=("linformer",), causal=True),
        "model.max_len": dict(
            attention_pattern=("linformer",), causal=False, max_len=16, axial_shape=(4, 8)
        ),
    }
    for setting, overrides in cases.items():
        with pytest.raises(ValueError) as error:
            tiny_config(**overrides)
        message = str(error.value)
        assert message.startswith(setting + ":") and "\n" not in message, message
    with pytest.raises(ValueError, match="mixes future positions"):
        tiny_config(attention_pattern=("linformer",), causal=True)


@pytest.mark.filterwarnings("ignore:window_implementation='pallas' runs in Pallas")
def test_window_implementation_reaches_lsh_and_local_layers(x64):
    # Catches the setting not passed on by a kind (its layers would keep the XLA kernel, and the
    # Pallas one would be untested in a model), and a Pallas kernel that breaks the reversible
    # stack's replayed backward: the model's loss and every gradient must match the XLA
    # kernel's in float64, through both kinds.
    from tests.model_utils import loss_and_grads, random_tokens, tiny_window_config

    results = {}
    for implementation in ("xla", "pallas"):
        cfg = tiny_window_config(implementation, hash_seed=0)
        model = ReformerLM(cfg, rngs=nnx.Rngs(0))
        tokens = random_tokens(cfg, (2, 64))
        results[implementation] = loss_and_grads(model, tokens)
        graphdef, state = nnx.split(model)
        apply = lambda s, g=graphdef, t=tokens: nnx.merge(g, s)(t)  # noqa: E731
        program = str(jax.make_jaxpr(apply)(state))
        # One Pallas forward kernel per layer (LSH, then local; each a choice of the platform's
        # pallas_call), none with "xla".
        assert program.count("platform_index[") == (2 if implementation == "pallas" else 0)
        assert ("pallas_call[" in program) == (implementation == "pallas")
    (loss_xla, grads_xla), (loss_pallas, grads_pallas) = results["xla"], results["pallas"]
    assert abs(float(loss_pallas) - float(loss_xla)) < 1e-12
    for a, b in zip(jax.tree.leaves(grads_pallas), jax.tree.leaves(grads_xla), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)
