# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The attention families side by side
#
# The survey behind this project (Fournier, Caron, Aloise, *A Practical Survey on Faster and
# Lighter Transformers*) sorts the fast transformers into sparse patterns (global, local and
# random attention), factorised attention (low-rank, kernel features) and architectural
# changes. reformer_jax implements each family as a pure kernel on the same
# `[batch, heads, length, d_head]` layout and runs it through the same model as an attention
# *kind* (`reformer_jax.layers.attention.KINDS`). This notebook
#
# 1. draws every pattern as the attention mask its kernel computes (the survey's pictures);
# 2. shows what Linformer and Performer compute instead of a mask;
# 3. puts cost (`bench/results/attention.json`) and approximation error on a trained model's
#    activations (`bench/results/approximation.json`) side by side;
# 4. ends with when to pick which.
#
# The pictures run the library's own kernels in a few seconds on a CPU; the cost and error
# numbers are read from the committed benchmark results (see `docs/benchmarks.md` for how
# they were measured).

# %%
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

import reformer_jax
from reformer_jax import kernels
from reformer_jax.config import ReformerConfig
from reformer_jax.layers.attention import KINDS

if "ipykernel" not in sys.modules:  # headless (a script, CI): no display needed
    matplotlib.use("Agg")
print("JAX", jax.__version__, "on", jax.devices()[0].platform)
print("attention kinds:", list(KINDS))


def show(fig, name: str):
    """Displays a figure inline (Jupyter), saves it as FIGURES/name.png if FIGURES is set."""
    if FIGURES:
        pathlib.Path(FIGURES).mkdir(parents=True, exist_ok=True)
        fig.savefig(pathlib.Path(FIGURES) / f"{name}.png", dpi=120, bbox_inches="tight")
    if matplotlib.get_backend().lower() == "agg":  # headless: nothing to display
        plt.close(fig)
    else:
        plt.show()


# %% tags=["parameters"]
SEED = 0
LENGTH = 64  # tokens in the pictures
BLOCK = 8  # block / chunk / stride of the pictures' patterns
D_HEAD = 16
N_FEATURES = 32  # Performer's random features in the picture
LINFORMER_K = 8  # Linformer's projected length in the picture
RESULTS = None  # directory of the benchmark JSONs (default: the repository's bench/results)
FIGURES = None  # a directory: also save every figure there as PNG

# %% [markdown]
# ## 1. Sparse patterns as masks
#
# A sparse kernel attends to a fixed set of keys per query. `SparsePattern.dense_mask(length)`
# returns the boolean `[heads or 1, length, length]` mask the blocked kernel computes (it never
# forms it itself: the tests compare the kernel with `full_attention` under this mask). Local and
# LSH attention have no pattern object, so their masks are *probed*: the kernel runs with the
# identity matrix as values, so its output row `i` is query `i`'s attention distribution over
# the keys. All pictures are causal (`j <= i`), as the language model uses them.

# %%
causal = np.tril(np.ones((LENGTH, LENGTH), bool))
patterns = {
    "Star (token 0 global)": kernels.star_pattern(BLOCK),
    f"BigBird (block {BLOCK // 2}; 3+2+3 blocks)": kernels.bigbird_pattern(BLOCK // 2, seed=SEED),
    f"Longformer (window {BLOCK // 2}, global 0)": kernels.longformer_pattern(
        BLOCK // 2, (0,), block_len=BLOCK
    ),
    f"strided (stride {BLOCK})": kernels.strided_pattern(BLOCK),
    f"fixed (block {BLOCK}, c = 2)": kernels.fixed_pattern(BLOCK, 2),
}
masks = {name: np.asarray(p.dense_mask(LENGTH))[0] & causal for name, p in patterns.items()}


def probe(name: str, q, k, **settings):
    """Query i's attention distribution over the keys (row i), from the kind's own kernel run
    with one-hot values."""
    cfg = ReformerConfig(
        n_heads=1,
        d_head=q.shape[-1],
        attention_pattern=(name,),
        n_layers=1,
        pos_embedding="sinusoidal",
        **settings,
    )
    kind = KINDS[name]
    draws = kind.draw(cfg, jax.random.key(SEED), LENGTH)
    params = {n: p[...] for n, p in kind.params(cfg, nnx.Rngs(SEED)).items()} or None
    eye = jnp.eye(LENGTH)[None, None]
    out, _ = kind.attend(
        cfg, q, None if kind.shared_qk else k, eye, mask=None, dropout_key=None,
        draws=draws, params=params,
    )  # fmt: skip
    return np.asarray(out[0, 0])


# Queries and keys with some structure: a smooth function of the position plus noise, so that
# attention prefers nearby tokens without being purely local (as in a trained model).
positions = jnp.arange(LENGTH)[:, None]
freqs = 2 * jnp.pi / (4.0 * 2.0 ** jnp.arange(D_HEAD // 2))[None]
smooth = jnp.concatenate([jnp.sin(positions * freqs), jnp.cos(positions * freqs)], axis=-1)
kq, kk = jax.random.split(jax.random.key(SEED))
q = (smooth + 0.5 * jax.random.normal(kq, smooth.shape))[None, None]
k = (smooth + 0.5 * jax.random.normal(kk, smooth.shape))[None, None]

masks[f"local (chunk {BLOCK}, one back)"] = probe("local", q, k, local_chunk_len=BLOCK) > 1e-6
lsh_rows = probe("lsh", q, k, lsh_chunk_len=BLOCK, lsh_n_hashes=1)
masks[f"LSH (1 hash, chunk {BLOCK})"] = lsh_rows > 1e-6
masks["full (causal)"] = causal

fig, axes = plt.subplots(2, 4, figsize=(16, 9))
for ax, (name, mask) in zip(axes.flat, masks.items(), strict=True):
    ax.imshow(mask, cmap="Greys", interpolation="nearest")
    keys_per_query = mask.sum(1)
    ax.set_title(f"{name}\n{keys_per_query.mean():.1f} keys/query", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
axes[0, 0].set_ylabel("query i")
axes[1, 0].set_ylabel("query i")
for ax in axes[1]:
    ax.set_xlabel("key j")
fig.suptitle(f"What each query attends to ({LENGTH} tokens, causal; black = attended)")
fig.tight_layout()
show(fig, "masks")

# %% [markdown]
# Reading the pictures (the sparse patterns' Sparse Transformer variants are *strided* and
# *fixed*). *Star*: a thin band (left neighbour and itself, causally) plus the
# first column (the relay / global token 0, which in turn sees every earlier token: the first
# row is only itself because of causality). *BigBird*: blocks of `b`: the diagonal band of
# three blocks, the first block's column and row (global), and random blocks, different per
# head (head 0 shown). *Longformer*: a token band plus the global token. *Strided*: a band of
# `stride` tokens plus every `stride`-th earlier position. *Fixed*: each block attends to
# itself and to the last `c` positions of every earlier block (the "summary" columns).
# *Local*: block-diagonal bands of two chunks. *LSH*: content-dependent: a query sees the keys
# that hashed into its bucket and landed in its or the previous chunk after sorting; with a
# smooth signal that is mostly nearby tokens plus some distant ones with similar content.
#
# ## 2. Linformer and Performer: no mask, an approximation of the whole matrix
#
# Neither has a mask: every query "sees" every key, through an approximation.
#
# * **Linformer** projects the *length* axis: keys and values become `E K` and `F V` with
#   `E, F` of shape `[k, n]`, so the attention matrix is `softmax(Q (E K)^T / sqrt(d)) F`, an
#   `n x n` matrix of rank at most `k` whose rows need not be distributions (F mixes positions
#   with signed weights). It is bidirectional by construction: every projected key mixes all
#   positions, future ones included.
# * **Performer** (FAVOR+) replaces `exp(q . k)` by `phi(q) . phi(k)` with positive random
#   features, `m` of them, so the rows stay non-negative and sum to one, but are noisy; more
#   features, less noise. Causal through prefix sums over `phi(k) v`.
#
# Below: exact attention, Linformer at `k` rows (projections at their random initialisation;
# the paper learns them) and Performer with `m` features, probed the same way
# (bidirectional, so Linformer can run). The Performer estimator's variance grows like
# `exp(|q'|^2 + |k'|^2)` (`x' = x / d^(1/4)`), so even these moderate activations need far more
# features than `d_head` for a faithful matrix: the random features show up as noisy columns.

# %%
scale = 1 / np.sqrt(D_HEAD)
scores = np.asarray(q[0, 0] @ k[0, 0].T) * scale
exact = np.exp(scores - scores.max(1, keepdims=True))
exact /= exact.sum(1, keepdims=True)
approx = {
    "exact softmax attention": exact,
    f"Linformer, k = {LINFORMER_K} (random E, F)": probe(
        "linformer", q, k, linformer_k=LINFORMER_K, max_len=LENGTH, causal=False
    ),
    f"Performer, {N_FEATURES} features": probe(
        "performer", q, k, performer_n_features=N_FEATURES, causal=False
    ),
    f"Performer, {8 * N_FEATURES} features": probe(
        "performer", q, k, performer_n_features=8 * N_FEATURES, causal=False
    ),
}
fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
vmax = float(exact.max())
for ax, (name, matrix) in zip(axes, approx.items(), strict=True):
    err = np.linalg.norm(matrix - exact) / np.linalg.norm(exact)
    im = ax.imshow(matrix, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
    rank = np.linalg.matrix_rank(matrix, tol=1e-6 * np.abs(matrix).max())
    ax.set_title(f"{name}\nrank {rank}, rel. error {err:.2f}", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
fig.colorbar(im, ax=axes, shrink=0.8, label="attention weight")
fig.suptitle("The whole attention matrix, approximated (bidirectional)")
show(fig, "factorised")

# %% [markdown]
# ## 3. Cost and approximation error
#
# The cost comes from `bench/attention.py` (forward + backward of each kind's kernel, tokens
# per batch fixed, so a linear-cost kind is flat per token and full attention grows linearly
# with length) and the error from `bench/approximation.py` (relative error of each family's
# output against exact attention on the captured queries, keys and values of a trained byte-level
# language model). Both are committed results; rerun the benchmarks to refresh them.

# %%
# The committed results: RESULTS, else the repository's bench/results (from notebooks/ or from
# the checkout that holds the imported reformer_jax).
candidates = [
    pathlib.Path.cwd().parent / "bench" / "results",
    pathlib.Path(reformer_jax.__file__).resolve().parents[1] / "bench" / "results",
]
results_dir = (
    pathlib.Path(RESULTS)
    if RESULTS
    else next((c for c in candidates if (c / "approximation.json").exists()), candidates[-1])
)
cost = json.loads((results_dir / "attention.json").read_text())
error = json.loads((results_dir / "approximation.json").read_text())
machine = cost["machine"]
print(
    f"cost: {machine.get('cpu_model')}, {machine.get('cpus_usable')} cores, "
    f"{cost['settings']['tokens']} tokens per batch, {cost['settings']['heads']} head(s) x "
    f"{cost['settings']['d_head']}"
)
print(
    f"error: layer {error['captured_layer']} of a {error['model']['n_layers']}-layer model "
    f"(final eval {error['final_eval_bpc']:.2f} bits/byte), lengths {error['settings']['lengths']}"
)

series: dict[str, list[dict]] = {}
for r in cost["results"]:
    series.setdefault(r.get("label") or r["kind"], []).append(r)

fig, (ax_c, ax_m, ax_e) = plt.subplots(1, 3, figsize=(18, 5.2))
for name, rows in series.items():
    rows = sorted(rows, key=lambda r: r["length"])
    ran = [r for r in rows if r.get("cpu_us_per_token") is not None]
    style = dict(color="black", lw=2.5) if name == "full" else {}
    if ran:
        ax_c.plot(
            [r["length"] for r in ran],
            [r["cpu_us_per_token"] for r in ran],
            "o-",
            label=name,
            **style,
        )
    compiled = [r for r in rows if r.get("temp_bytes") is not None]
    ax_m.plot(
        [r["length"] for r in compiled],
        [r["temp_bytes"] / 2**20 for r in compiled],
        "o-",
        label=name,
        **style,
    )
for ax in (ax_c, ax_m):
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length")
    ax.grid(alpha=0.3)
ax_c.set_ylabel("CPU µs per token (forward + backward)")
ax_c.set_title("Cost per token (tokens per batch fixed)")
ax_m.set_ylabel("compiled temporary memory (MiB)")
ax_m.set_title("Memory (compiled; also where not run)")
ax_c.legend(fontsize=8, ncol=2)

longest = str(max(error["settings"]["lengths"]))
labels, values, colors = [], [], []
families = dict.fromkeys(r["family"] for r in error["results"])
palette = dict(zip(families, plt.cm.tab10.colors, strict=False))
for row in error["results"]:
    entry = (row.get("causal") or row.get("bidirectional") or {}).get(longest)
    if entry is None:
        continue
    mode = "" if row.get("causal") else " (bidir.)"
    labels.append(row["setting"] + mode)
    values.append(entry["mean"])
    colors.append(palette[row["family"]])
ax_e.barh(range(len(values)), values, color=colors)
ax_e.set_yticks(range(len(values)), labels, fontsize=7)
ax_e.invert_yaxis()
ax_e.set_xlabel(f"relative error vs exact attention at {longest} tokens")
ax_e.set_title("Approximation error on a trained model (causal)")
ax_e.grid(axis="x", alpha=0.3)
fig.tight_layout()
show(fig, "cost_and_error")

# %%
crossover = cost.get("crossovers_cpu") or cost.get("crossovers") or {}
print("crossover against full attention (CPU time per token):")
for name, entry in crossover.items():
    if entry["length"] is None:
        where = "not within the sweep"
    elif entry["how"] == "below":  # already cheaper at the sweep's shortest length
        where = f"<= {entry['length']:,} tokens"
    else:
        where = f"~{entry['length']:,} tokens ({entry['how']})"
    print(f"  {name:12s} {where}")

# %% [markdown]
# ## 4. When to pick which
#
# What the measurements above say (cost: CPU time per token on a 2-core CPU, 1 head x 64,
# chunks / blocks of 128; error: causal, 512 tokens of a small trained byte-level model; see
# `docs/benchmarks.md`), in the order of the questions that decide it:
#
# * **Must it generate left to right?** Then not Linformer: its length projection mixes future
#   tokens into every key (the kind refuses `causal=True` and decoding). Local, the sparse
#   patterns, LSH and Performer all decode with a cache.
# * **Short sequences: full attention** is exact, and the approximations only pay off once the
#   `L x L` matrix dominates. On this CPU that is early: the crossovers (CPU time, combining
#   the 1K-64K sweep with a second one at 256 and 512 tokens; `docs/benchmarks.md`) lie at about
#   256 tokens for local attention and the fixed pattern, 280 for LSH with one round, 300 for
#   Linformer, 450 for Longformer and strided, 520 for Star, 800 for Performer, 930 for BigBird
#   and 1,050 for LSH with 4 rounds; from 2K all cost at most about half of full attention, and
#   full attention's memory (768 MiB at 1K, 49 GiB at 64K for this batch) runs out first.
# * **Local information (text, audio, pixels in raster order)?** Local attention: the cheapest
#   per token (6-8 µs), exact inside its window, and its error falls as the window grows (chunk
#   16 / 32 / 64: 0.65 / 0.53 / 0.34 at 512 tokens). Longformer is the same band per token plus
#   task-chosen global tokens (CLS, question tokens).
# * **Local plus some long-range mixing at a small budget?** BigBird (0.46 at 64 keys per query,
#   against 0.53 for a 64-key window) or the Sparse Transformer's strided pattern (0.45 at about
#   48 keys); at 128 keys a plain window has caught up (BigBird 0.33, local 0.34). BigBird's
#   cost is linear in length; strided and fixed grow as `L^2 / stride`, so keep the stride near
#   `sqrt(L)`.
# * **Content-based long-range lookup (duplicated spans, retrieval inside a document)?** LSH:
#   the lowest error per key attended here (0.37 with one round of 64 keys, 0.21 with 8
#   rounds), at about 8 µs per token per round. It needs shared query/key projections (its
#   error above is against exact shared-QK attention).
# * **A global approximation, bidirectional, tight memory?** Linformer is cheap (9 µs per token,
#   flat memory) but its accuracy comes entirely from learning its projections: at
#   initialisation its error is about 1 for every rank tried. Performer decodes and is causal,
#   but on trained (large) activations its error falls slowly with the features (0.63 at 16,
#   0.42 at 1,024) while its cost is about 3x local attention's at 256 features; it suits
#   spread-out attention over small activations.
# * **Star-Transformer** is a relay for classification: one global token and the neighbours. As
#   an approximation of a language model's attention it is the crudest (0.92 here), which is the
#   point: it is a different model, not an approximation of the dense one.

# %%
print("done")
