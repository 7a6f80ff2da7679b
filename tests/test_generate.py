"""Cached decoding and sampling (`reformer_jax.generate`).

Exactness: full and local layers decode exactly (every position's cached logits equal a forward
pass); LSH layers decode with the bucket cache, which equals the training kernel exactly when
the kernel's window covers every same-bucket predecessor and it does not attend across buckets
(``lsh_attend_across_buckets=False`` and one chunk covering the sequence), and is otherwise an
approximation whose loss on a trained model stays close to the forward pass.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from reformer_jax import generate as gen
from reformer_jax import kernels
from reformer_jax.layers.attention import layer_rotations
from reformer_jax.model import ReformerLM, lm_loss
from tests.helpers import binomial_bound
from tests.model_utils import tiny_config

ATOL = 1e-4


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, tokens):
    return nnx.merge(graphdef, state)(tokens)


def forward(model, tokens):
    """``model(tokens)`` (jitted, evaluation mode)."""
    return _forward(*nnx.split(model), jnp.asarray(tokens))


def random_tokens(cfg, shape, seed=0):
    # numpy, not jax.random: eager threefry programs cost compile time in every fresh process
    return np.random.default_rng(seed).integers(0, cfg.vocab_size, shape).astype(np.int32)


@pytest.fixture(scope="module")
def full_local():
    """Two groups of (full, local): exercises the stacked per-group parameters."""
    cfg = tiny_config(attention_pattern=("full", "local"), n_layers=4)
    return ReformerLM(cfg, rngs=nnx.Rngs(0))


# ------------------------------------------------------------------------------------------------
# Cached logits against the forward pass.


def test_full_and_local_cached_logits_equal_forward(full_local):
    cfg = full_local.cfg
    tokens = random_tokens(cfg, (2, cfg.max_length))
    # Positions 0..4 go through the prefill, 5..31 through single-token decode steps (the local
    # ring of 8 slots wraps around several times).
    cached = gen.decode_logits(full_local, tokens, prompt_length=5)
    full = forward(full_local, tokens)
    np.testing.assert_allclose(cached, full, atol=ATOL)
    # The step-level API with rows at different positions (prompts of 8 and 5 tokens).
    logits, cache = gen.prefill(full_local, tokens[:, :8], prompt_lengths=[8, 5], max_length=32)
    position = np.array([8, 5])
    rows = np.arange(2)
    for _ in range(3):
        np.testing.assert_allclose(logits, full[rows, position - 1], atol=ATOL)
        logits, cache = gen.decode_step(full_local, cache, tokens[rows, position], position)
        position = position + 1
    # model(prefix)[:, -1], mid-chunk (equal to full[:, 13] by causality; checked once).
    np.testing.assert_allclose(cached[:, 13], forward(full_local, tokens[:, :14])[:, -1], atol=ATOL)


def test_lsh_cached_logits_equal_forward_when_one_chunk_covers_the_buckets():
    # With one chunk covering the sequence and no attention across buckets, the training kernel
    # attends, in every round, to exactly the same-bucket predecessors of a token (and itself by
    # the self-mask rule): what the bucket cache holds when it has room for all of them. The
    # local layers use HF's wrap-around neighbour lookup and two chunks of look-back.
    cfg = tiny_config(
        attention_pattern=("local", "lsh"),
        lsh_attend_across_buckets=False,
        lsh_chunk_len=32,
        lsh_n_hashes=2,
        local_chunks_before=2,
        local_wrap_around=True,
    )
    model = ReformerLM(cfg, rngs=nnx.Rngs(3))
    tokens = random_tokens(cfg, (2, 32), seed=1)
    cached = gen.decode_logits(model, tokens, prompt_length=3)
    np.testing.assert_allclose(cached, forward(model, tokens), atol=ATOL)
    np.testing.assert_allclose(cached[:, 16], forward(model, tokens[:, :17])[:, -1], atol=ATOL)


def _bucket_reference(qk, v, buckets, n_buckets, size):
    """Loop reference of the bucket-cache semantics (numpy, float64)."""
    qk, v, buckets = (np.asarray(a, np.float64) for a in (qk, v, buckets))
    batch, heads, length, d = qk.shape
    keys = qk / np.sqrt(np.mean(qk**2, -1, keepdims=True) + 1e-6) / np.sqrt(d)
    out = np.zeros((batch, heads, length, v.shape[-1]))
    for b in range(batch):
        for h in range(heads):
            for t in range(length):
                outs, lses = [], []
                for r in range(buckets.shape[2]):
                    bucket = buckets[b, h, r]
                    earlier = [s for s in range(t) if bucket[s] == bucket[t]][-size:]
                    if bucket[t] >= n_buckets:
                        earlier = []
                    scores = np.array([qk[b, h, t] @ keys[b, h, s] for s in earlier] + [-1e5])
                    values = np.stack([v[b, h, s] for s in earlier] + [v[b, h, t]])
                    m = scores.max()
                    p = np.exp(scores - m)
                    outs.append(p @ values / p.sum())
                    lses.append(m + np.log(p.sum()))
                w = np.exp(np.array(lses) - max(lses))
                out[b, h, t] = (w / w.sum()) @ np.stack(outs)
    return out


def test_bucket_attention_matches_loop_reference():
    rng = np.random.default_rng(0)
    qk = rng.normal(size=(2, 2, 19, 4)).astype(np.float32)
    v = rng.normal(size=(2, 2, 19, 3)).astype(np.float32)
    buckets = rng.integers(0, 3, (2, 2, 2, 19)).astype(np.int32)
    buckets[1, :, :, 15:] = 3  # padding of row 1 (bucket id >= n_buckets)
    attention = jax.jit(functools.partial(gen.bucket_attention, n_buckets=3, cache_size=3))
    got = attention(qk, v, buckets)  # the 3-slot rings overflow
    want = _bucket_reference(qk, v, buckets, 3, 3)
    np.testing.assert_allclose(got[0], want[0], atol=1e-5)
    np.testing.assert_allclose(got[1, :, :15], want[1, :, :15], atol=1e-5)


def test_lsh_prefill_then_decode_steps_equal_the_parallel_computation():
    """The bucket tables built from a prompt and then extended one token at a time (rings that
    overflow) give the same outputs as the whole sequence at once."""
    batch, heads, length, d, plen = 2, 2, 24, 4, 5
    cfg = tiny_config(n_heads=heads, d_head=d, lsh_n_buckets=4)
    spec = gen.DecodeSpec(length, 4, 3, False)
    rng = np.random.default_rng(1)
    qk = rng.normal(size=(batch, heads, length, d)).astype(np.float32)
    v = rng.normal(size=(batch, heads, length, d)).astype(np.float32)
    rotations = rng.normal(size=(heads, d, 2, 2)).astype(np.float32)  # 2 rounds, 4 buckets

    @jax.jit
    def parallel_and_stepwise(qk, v):
        buckets = kernels.hash_vectors(qk, rotations, 4)
        want = gen.bucket_attention(qk, v, buckets, n_buckets=4, cache_size=3)
        out, table, counts = gen._bucket_prefill(
            qk[:, :, :plen], v[:, :, :plen], buckets[..., :plen], 4, 3
        )
        place = lambda x: gen._place(x[:, :, :plen].transpose(0, 2, 1, 3), length)  # noqa: E731
        cache = dict(k=place(kernels.unit_keys(qk)), v=place(v), table=table, counts=counts)
        cache["rotations"] = rotations
        mask_value, self_value = kernels.mask_values(jnp.float32)

        def body(cache, t):
            cache = dict(cache)
            step_out = gen._lsh_step(
                cfg,
                spec,
                cache,
                qk[:, :, t],
                v[:, :, t],
                jnp.full((batch,), t),
                mask_value,
                self_value,
                jnp.float32,
            )
            cache["k"] = cache["k"].at[:, t].set(kernels.unit_keys(qk[:, :, t]))
            cache["v"] = cache["v"].at[:, t].set(v[:, :, t])
            return cache, step_out

        _, rest = jax.lax.scan(body, cache, jnp.arange(plen, length))
        return want, jnp.concatenate([out, rest.transpose(1, 2, 0, 3)], axis=2)

    want, got = parallel_and_stepwise(qk, v)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_trained_lsh_model_cached_loss_close_to_forward_loss():
    """Train a tiny LSH model (~100 adam steps) on repeated random words; the teacher-forced
    loss of the cached decoder on held-out rows stays within a small margin of the forward."""
    cfg = tiny_config(attention_pattern=("lsh",), n_layers=1)
    period, length = 4, 32
    model = ReformerLM(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    opt = optax.adam(1e-2)

    def rows(rng, n):
        words = rng.integers(1, cfg.vocab_size, size=(n, period))
        return jnp.asarray(np.tile(words, (1, length // period)), jnp.int32)

    @jax.jit
    def train_step(state, opt_state, tokens, rotations):
        def loss(s):
            return lm_loss(nnx.merge(graphdef, s)(tokens, rotations={0: rotations}), tokens)[0]

        grads = jax.grad(loss)(state)
        updates, opt_state = opt.update(grads, opt_state, state)
        return optax.apply_updates(state, updates), opt_state

    rng = np.random.default_rng(0)
    rotation_shape = layer_rotations(cfg, jax.random.key(0), cfg.lsh_n_buckets).shape
    opt_state = opt.init(state)
    for _ in range(100):  # fresh LSH rotations every step, as in training
        rotations = rng.normal(size=rotation_shape).astype(np.float32)
        state, opt_state = train_step(state, opt_state, rows(rng, 16), rotations)
    model = nnx.merge(graphdef, state)

    held_out = rows(np.random.default_rng(1), 16)
    forward_loss = float(lm_loss(forward(model, held_out), held_out)[0])
    cached = gen.decode_logits(model, held_out, prompt_length=1)  # every token a decode step
    cached_loss = float(lm_loss(cached, held_out)[0])
    print(f"held-out loss: forward {forward_loss:.4f}, cached {cached_loss:.4f}")
    assert forward_loss < np.log(cfg.vocab_size - 1) - 0.3, "the model did not learn"
    # Not a precision bound: the cached decoder reads LSH as a bucket cache of recent positions
    # per round, the forward pass as sorted chunks with look-back, so the two attend to slightly
    # different neighbourhoods (measured gap 0.036 nats). What the model learned over chance,
    # log(16) - forward (0.47 here), is what a cache that loses context gives back; allow 15%
    # of it (0.071), twice the measured gap. Subtler cache bugs (a table storing t - 1 instead
    # of t moves this loss by only 0.05) are caught exactly, at 1e-5, by the two tests above
    # that compare cached and parallel logits.
    learned = np.log(cfg.vocab_size - 1) - forward_loss
    assert abs(cached_loss - forward_loss) < 0.15 * learned, (cached_loss, forward_loss)


# ------------------------------------------------------------------------------------------------
# Sampling.


def test_filter_logits_top_p_and_top_k_on_a_hand_made_distribution():
    probs = np.array([0.05, 0.5, 0.1, 0.2, 0.15])
    logits = jnp.log(jnp.asarray(probs))

    filter_jit = jax.jit(gen.filter_logits, static_argnames="top_k")

    def kept(**kw):
        return set(np.flatnonzero(np.isfinite(filter_jit(logits, **kw))).tolist())

    assert kept(top_p=1e-6) == {1}  # the most probable token is always kept
    assert kept(top_p=0.5) == {1}
    assert kept(top_p=0.6) == {1, 3}
    assert kept(top_p=0.7) == {1, 3}  # 0.5 + 0.2 reaches 0.7
    assert kept(top_p=0.71) == {1, 3, 4}
    assert kept(top_p=1.0) == {0, 1, 2, 3, 4}
    assert kept(top_k=2) == {1, 3}
    assert kept(top_k=4, top_p=0.8) == {1, 3, 4}
    # Sampling with top_p renormalises over the nucleus.
    sample = jax.jit(functools.partial(gen.sample_logits, top_p=0.71))
    draws = sample(jax.random.key(0), jnp.tile(logits, (20000, 1)))
    freq = np.bincount(np.asarray(draws), minlength=5) / 20000
    # Each frequency is a binomial fraction of 20000 draws: within 5 standard deviations
    # (sqrt(p (1 - p) / n) <= 0.0035, at p = 0.5) of its probability.
    bound = binomial_bound(20000, 0.5)
    np.testing.assert_allclose(freq, [0, 0.5 / 0.85, 0, 0.2 / 0.85, 0.15 / 0.85], atol=bound)


def test_sample_logits_greedy_and_zero_temperature_are_argmax():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(8, 17)), jnp.float32)
    want = np.argmax(logits, -1)
    np.testing.assert_array_equal(gen.sample_logits(None, logits, greedy=True), want)
    np.testing.assert_array_equal(gen.sample_logits(None, logits, temperature=0.0), want)
    cold = jax.jit(functools.partial(gen.sample_logits, temperature=1e-6))
    np.testing.assert_array_equal(cold(jax.random.key(1), logits), want)


def test_greedy_generation_is_argmax_of_the_forward_pass(full_local):
    cfg = full_local.cfg
    prompts = random_tokens(cfg, (2, 6), seed=2)
    new = cfg.max_length - 6
    greedy = gen.generate(full_local, prompts, max_new_tokens=new, greedy=True)
    assert greedy.shape == (2, cfg.max_length)
    np.testing.assert_array_equal(greedy[:, :6], prompts)
    logits = forward(full_local, greedy)  # causal: logits[:, t] == model(greedy[:, :t+1])[-1]
    np.testing.assert_array_equal(greedy[:, 6:], np.argmax(logits[:, 5:-1], -1))

    key = jax.random.key(7)
    top1 = gen.generate(full_local, prompts, max_new_tokens=new, key=key, top_k=1)
    np.testing.assert_array_equal(top1, greedy)
    cold = gen.generate(full_local, prompts, max_new_tokens=new, key=key, temperature=1e-6)
    np.testing.assert_array_equal(cold, greedy)
    # Determinism per key (same static configuration as ``cold``: temperature is traced).
    a = gen.generate(full_local, prompts, max_new_tokens=new, key=key, temperature=1.0)
    b = gen.generate(full_local, prompts, max_new_tokens=new, key=key, temperature=1.0)
    c = gen.generate(
        full_local, prompts, max_new_tokens=new, key=jax.random.key(8), temperature=1.0
    )
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_stop_token_and_uncached_generation(full_local):
    cfg = full_local.cfg
    prompts = random_tokens(cfg, (2, 6), seed=2)
    new = cfg.max_length - 6
    greedy = np.asarray(gen.generate(full_local, prompts, max_new_tokens=new, greedy=True))
    stop = int(greedy[0, 9])  # row 0 emits it at its 4th new token at the latest
    pad = (stop + 1) % cfg.vocab_size
    tokens, lengths = gen.generate(
        full_local,
        prompts,
        max_new_tokens=new,
        greedy=True,
        stop_token=stop,
        pad_token=pad,
        use_cache=False,  # the reference path: a forward pass per token
        return_lengths=True,
    )
    for row in range(2):
        hits = np.flatnonzero(greedy[row, 6:] == stop)
        end = 6 + (hits[0] + 1 if hits.size else new)
        assert int(lengths[row]) == end
        np.testing.assert_array_equal(tokens[row, :end], greedy[row, :end])
        assert (np.asarray(tokens[row, end:]) == pad).all()
    assert int(lengths[0]) <= 10


def test_batch_of_prompts_of_different_lengths_equals_each_row_alone():
    cfg = tiny_config(attention_pattern=("local", "lsh"))  # small chunks: the approximate LSH
    model = ReformerLM(cfg, rngs=nnx.Rngs(5))
    long, short = (np.asarray(random_tokens(cfg, (n,), seed=n)).tolist() for n in (9, 4))
    keys = jnp.stack([jax.random.key(3), jax.random.key(4)])
    kw = dict(max_new_tokens=12, temperature=0.8, top_k=12, top_p=0.95, stop_token=16)
    batch, lengths = gen.generate(model, [long, short], key=keys, return_lengths=True, **kw)
    assert batch.shape == (2, 9 + 12)
    # The short row is the one whose prompt is padded in the batch.
    alone, alone_len = gen.generate(model, [short], key=keys[1:], return_lengths=True, **kw)
    assert int(lengths[1]) == int(alone_len[0])
    np.testing.assert_array_equal(batch[1, : 4 + 12], alone[0])
    assert (np.asarray(batch[1, 4 + 12 :]) == 0).all()


def test_clear_errors(full_local):
    prompt = jnp.zeros((1, 30), jnp.int32)
    with pytest.raises(ValueError, match="positional capacity 32"):
        gen.generate(full_local, prompt, max_new_tokens=3, greedy=True)
    with pytest.raises(ValueError, match="every prompt needs"):
        gen.generate(full_local, prompt, max_new_tokens=1, prompt_lengths=[0])
    with pytest.raises(ValueError, match="top_p"):
        gen.generate(full_local, prompt, max_new_tokens=1, top_p=0.0)
    bidirectional = ReformerLM(tiny_config(causal=False), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="causal"):
        gen.generate(bidirectional, prompt[:, :4], max_new_tokens=1)


def test_sample_cli_reports_a_missing_or_wrong_model_directory(tmp_path, capsys):
    import sample

    for args in (["--model", str(tmp_path / "missing")], ["--model", str(tmp_path)]):
        with pytest.raises(SystemExit) as exit_info:
            sample.main([*args, "--prompt", "x"])
        assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no such directory" in err and "not a reformer_jax model export" in err


def test_sample_cli_bad_input_is_one_line_before_any_work(tmp_path, capsys):
    """Bugs caught: a missing --prompt-file ends in a traceback after the model was loaded; a
    misspelt --set name in a TypeError; --model given a training workdir in a config error
    listing 'model' and 'train'; an --out into a missing directory fails after generating."""
    import sample

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"model": {}, "train": {}}')
    cases = [
        (["--model", str(run)], "training run's workdir"),
        (["--model", str(run), "--prompt-file", str(tmp_path / "nope.txt")], "--prompt-file"),
        (["--model", str(run), "--prompt", "x", "--max-new-tokens", "0"], "--max-new-tokens"),
        (["--model", str(run), "--prompt", "x", "--out", str(tmp_path / "a" / "b")], "--out"),
        (["--model", str(run), "--prompt", "x", "--set", "lsh_n_hashs=2"], "lsh_n_hashes"),
        (["--workdir", str(run), "--prompt", "x"], "no checkpoint"),
    ]
    for argv, expected in cases:
        with pytest.raises(SystemExit) as exit_info:
            sample.main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1 and expected in err, err


@pytest.mark.parametrize(
    "positions",
    [
        dict(axial_shape=(2, 4, 4), axial_dims=(4, 6, 6)),
        dict(pos_embedding="learned", max_len=32),
        dict(pos_embedding="sinusoidal"),
    ],
)
def test_decode_step_position_rows_equal_the_model_table(positions):
    cfg = tiny_config(attention_pattern=("local", "lsh"), **positions)
    model = ReformerLM(cfg, rngs=nnx.Rngs(0))
    t = np.array([0, 5, 31, 17])
    rows = jax.jit(lambda t: gen._position_rows(model, t, 32))(t)
    np.testing.assert_array_equal(rows, np.asarray(model.positions(32))[t])
