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
# # Train, evaluate, load and sample
#
# The training loop of `reformer_jax.train.trainer.train_and_evaluate(config, workdir)` on two
# small problems, sized for a CPU:
#
# 1. the paper's **duplication task** (`configs/duplication.py`, shrunk): sequences `0 w 0 w`,
#    where only the second copy of `w` is predictable, and only by attending half a sequence
#    back. At the end the trained weights are evaluated with exact attention and with LSH at 1,
#    2, 4 and 8 hash rounds (`result.hash_table`, the columns of the paper's table);
# 2. a **byte-level language model** (`configs/text.py`, shrunk) on a small text corpus written
#    to a temporary directory.
#
# For both, the learning curves come from `<workdir>/metrics.jsonl`, the model is loaded back
# with `reformer_jax.checkpoint.load_model_from_workdir`, and we sample from it with
# `reformer_jax.generate.generate`.

# %%
import importlib.util
import inspect
import json
import logging
import pathlib
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.pyplot as plt
import numpy as np

import reformer_jax.config
from reformer_jax.checkpoint import load_model_from_workdir
from reformer_jax.data import Duplication, second_copy_accuracy
from reformer_jax.generate import generate
from reformer_jax.train.trainer import train_and_evaluate

if "ipykernel" not in sys.modules:  # headless (a script, CI): no display needed
    matplotlib.use("Agg")
print("JAX", jax.__version__, "on", jax.devices()[0].platform)
logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's notes on read-only checkpoints


def show(fig, name: str):
    """Displays a figure inline (Jupyter), saves it as FIGURES/name.png if FIGURES is set."""
    if FIGURES:
        pathlib.Path(FIGURES).mkdir(parents=True, exist_ok=True)
        fig.savefig(pathlib.Path(FIGURES) / f"{name}.png", dpi=120, bbox_inches="tight")
    if matplotlib.get_backend().lower() == "agg":  # headless: nothing to display
        plt.close(fig)
    else:
        plt.show()


def load_config(name: str):
    """``configs/<name>.py`` of the repository (found from here or from the package)."""
    here = pathlib.Path.cwd().absolute()
    package = pathlib.Path(reformer_jax.config.__file__).absolute().parents[1]
    for root in (here, *here.parents, package):
        path = root / "configs" / f"{name}.py"
        if path.exists():
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))  # the configs import configs.common
            spec = importlib.util.spec_from_file_location(f"configs.{name}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module.get_config()
    raise FileNotFoundError(f"configs/{name}.py not found above {here} or next to the package")


def read_metrics(run: pathlib.Path) -> dict[str, list[dict]]:
    """``metrics.jsonl`` records grouped by split (train / eval / compile)."""
    records: dict[str, list[dict]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        records.setdefault(record["split"], []).append(record)
    return records


# %% tags=["parameters"]
DUP_LENGTH = 64  # duplication: sequence length (w has DUP_LENGTH / 2 - 1 symbols)
DUP_VOCAB = 32
DUP_STEPS = 300
TEXT_LENGTH = 128  # text: bytes per training window
TEXT_STEPS = 300
SAMPLE_TOKENS = 100  # bytes sampled from the text model
EVAL_HASHES = (1, 2, 4, 8)  # LSH hash rounds the duplication model is evaluated with
WORKDIR = None  # a new or empty directory for the two runs; None: a fresh temporary one
FIGURES = None  # a directory: also save every figure there as PNG

# %% [markdown]
# ## 1. The duplication task
#
# `configs/duplication.py` is the paper's setting scaled to a CPU: a one-layer model whose
# attention layer is an LSH layer trained with *exact* shared-QK attention
# (`full_attention_below` above the length, the paper's "full attention" row), evaluated at the
# end with exact attention and with LSH at 1, 2, 4 and 8 hashes (`config.eval_hashes`). We
# shrink the sequence, the vocabulary, the width and the number of steps.

# %%
workdir = pathlib.Path(WORKDIR or tempfile.mkdtemp(prefix="reformer_notebook_"))
print("runs go to", workdir)

dup = load_config("duplication")
dup.seq_len = DUP_LENGTH
dup.data.settings.seq_len = DUP_LENGTH
dup.data.settings.vocab_size = DUP_VOCAB
dup.model.update(
    vocab_size=DUP_VOCAB,
    d_model=64,
    d_ff=128,
    n_layers=1,
    n_heads=4,
    d_head=16,
    attention_pattern=["lsh"],
    lsh_chunk_len=8,
    lsh_n_buckets=None,  # automatic: about two buckets per chunk
    lsh_n_hashes=4,
    full_attention_below=1 << 30,  # train with exact shared-QK attention
    pos_embedding="learned",
    max_len=DUP_LENGTH,
)
dup.num_steps = DUP_STEPS
dup.learning_rate = 3e-3
dup.warmup_steps = min(50, DUP_STEPS // 4)
dup.log_every = max(1, DUP_STEPS // 30)
dup.eval_every = max(1, DUP_STEPS // 3)
dup.eval_batches = 2
dup.checkpoint_every = DUP_STEPS
dup.eval_hashes = list(EVAL_HASHES)
print(dup.model)

t0 = time.perf_counter()
dup_result = train_and_evaluate(dup, workdir / "duplication")
print(f"trained {dup_result.step} steps in {time.perf_counter() - t0:.0f} s")
print("final evaluation:", {k: round(v, 4) for k, v in dup_result.eval_metrics.items()})

# %%
table = dup_result.hash_table
print("accuracy on the second copy, by attention used at evaluation time:")
for name, accuracy in table.items():
    print(f"  {name:>6}: {100 * accuracy:5.1f}%")

metrics = read_metrics(workdir / "duplication")
train, evals = metrics["train"], metrics["eval"]
fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
axes[0].plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-", label="eval")
axes[0].axhline(np.log(DUP_VOCAB - 1), color="gray", ls=":", label="chance (uniform symbol)")
axes[0].set_xlabel("step")
axes[0].set_ylabel("loss on the second copy (nats)")
axes[0].set_title("Duplication: loss")
axes[1].plot([r["step"] for r in train], [r["accuracy"] for r in train], label="train")
axes[1].plot([r["step"] for r in evals], [r["accuracy"] for r in evals], "o-", label="eval")
axes[1].set_xlabel("step")
axes[1].set_ylabel("accuracy on the second copy")
axes[1].set_title("Duplication: accuracy")
axes[1].set_ylim(0, 1.05)
for ax in axes[:2]:
    ax.grid(alpha=0.3)
    ax.legend()
axes[2].bar(list(table), [100 * v for v in table.values()], color="tab:blue")
for i, v in enumerate(table.values()):
    axes[2].text(i, 100 * v + 1, f"{100 * v:.1f}", ha="center")
axes[2].set_ylim(0, 110)
axes[2].set_xlabel("attention at evaluation time")
axes[2].set_ylabel("eval accuracy (%)")
axes[2].set_title("Trained with exact attention, evaluated with LSH")
fig.tight_layout()
show(fig, "duplication")

# %% [markdown]
# A model trained with exact attention learns to look up the previous occurrence of the
# current symbol. With LSH at evaluation time the lookup only succeeds when the two positions
# share a chunk window in some hash round, so one round loses accuracy and more rounds recover
# it (see the `lsh_attention` notebook for the miss probabilities).
#
# ### Load the trained model and copy with it
#
# `load_model_from_workdir` rebuilds the `ReformerLM` of the latest checkpoint; settings that do
# not change parameter shapes can be overridden, e.g. to decode with LSH instead of exact
# attention. Prompting with the first half `0 w 0` of held-out rows, greedy decoding should
# write `w` again.

# %%
source = Duplication(seq_len=DUP_LENGTH, vocab_size=DUP_VOCAB)
batch = next(source.batches("eval", 8, seed=123))
half = DUP_LENGTH // 2
prompts = batch.inputs[:, : half + 1]  # 0 w 0

for name, overrides in (
    ("exact attention", {}),
    ("LSH, 4 hashes", dict(full_attention_below=0, lsh_n_hashes=4)),
):
    model = load_model_from_workdir(workdir / "duplication", **overrides)
    t0 = time.perf_counter()
    out = np.asarray(generate(model, prompts, max_new_tokens=half - 1, greedy=True))
    # second_copy_accuracy scores position t as the prediction of token t + 1: shift by one.
    predictions = np.concatenate([out[:, 1:], out[:, -1:]], axis=1)
    accuracy = second_copy_accuracy(predictions, batch)
    print(
        f"{name:>16}: copied {100 * accuracy:.1f}% of the symbols "
        f"({time.perf_counter() - t0:.1f} s)"
    )
print("prompt   :", prompts[0].tolist())
print("generated:", out[0, half + 1 :].tolist())
print("expected :", batch.inputs[0, half + 1 :].tolist())

# %% [markdown]
# `generate` runs prefill plus cached decode steps in one jitted program. With LSH layers the
# cache keeps, per hash round, the most recent positions of each bucket, so cached LSH decoding
# is a causal, cache-friendly reading of LSH attention rather than the training kernel itself
# (`docs/sampling.md`).
#
# ## 2. A byte-level language model on a small corpus
#
# The corpus: the docstrings of a few standard-library modules (English prose with code
# examples, a few tens of kB), written to a file in the work directory. `configs/text.py` reads
# any file or directory as bytes; we shrink its model to two layers (local + LSH attention).


# %%
def stdlib_text() -> str:
    import argparse
    import collections
    import functools
    import json
    import os
    import pathlib
    import re
    import textwrap

    docs = []
    for module in (argparse, collections, functools, json, pathlib, re, textwrap, os):
        docs.append(inspect.getdoc(module) or "")
        for name, obj in sorted(vars(module).items()):
            if not name.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj)):
                docs.append(inspect.getdoc(obj) or "")
    return "\n\n".join(d for d in dict.fromkeys(docs) if d)


corpus = workdir / "corpus.txt"
corpus.write_text(stdlib_text())
print(f"{corpus}: {corpus.stat().st_size} bytes")

text = load_config("text")
text.seq_len = TEXT_LENGTH
text.data.settings.update(path=str(corpus), seq_len=TEXT_LENGTH, eval_fraction=0.1)
text.model.update(
    d_model=64,
    d_ff=128,
    n_layers=2,
    n_heads=2,
    d_head=32,
    attention_pattern=["local", "lsh"],
    lsh_chunk_len=16,
    local_chunk_len=16,
    lsh_n_hashes=2,
    axial_shape=[8, TEXT_LENGTH // 8],
    axial_dims=[32, 32],
    hidden_dropout=0.0,
)
text.batch_size = 8
text.num_steps = TEXT_STEPS
text.learning_rate = 3e-3
text.warmup_steps = min(50, TEXT_STEPS // 4)
text.log_every = max(1, TEXT_STEPS // 30)
text.eval_every = max(1, TEXT_STEPS // 2)
text.eval_batches = 4
text.checkpoint_every = TEXT_STEPS

t0 = time.perf_counter()
text_result = train_and_evaluate(text, workdir / "text")
print(f"trained {text_result.step} steps in {time.perf_counter() - t0:.0f} s")
print("final evaluation:", {k: round(v, 4) for k, v in text_result.eval_metrics.items()})

metrics = read_metrics(workdir / "text")
train, evals = metrics["train"], metrics["eval"]
fig, ax = plt.subplots(figsize=(7, 4.2))
ax.plot([r["step"] for r in train], [r["bits_per_token"] for r in train], label="train")
ax.plot([r["step"] for r in evals], [r["bits_per_token"] for r in evals], "o-", label="eval")
ax.axhline(8, color="gray", ls=":", label="uniform over 256 bytes")
ax.set_xlabel("step")
ax.set_ylabel("bits per byte")
ax.set_title(f"Byte LM on {corpus.stat().st_size // 1000} kB of docstrings")
ax.grid(alpha=0.3)
ax.legend()
show(fig, "text_lm")

# %% [markdown]
# ### Sample from the text model

# %%
text_model = load_model_from_workdir(workdir / "text")
prompt = b"The function returns"
tokens = jnp.asarray(np.frombuffer(prompt, np.uint8).astype(np.int32))[None]
n_new = min(SAMPLE_TOKENS, TEXT_LENGTH - tokens.shape[1])  # positions are learned up to here
for temperature in (0.0, 0.8):
    out = generate(
        text_model,
        tokens,
        max_new_tokens=n_new,
        temperature=temperature,
        key=jax.random.key(0),
    )
    sample = bytes(np.asarray(out[0]).astype(np.uint8)).decode("utf-8", errors="replace")
    print(f"--- temperature {temperature}:\n{sample}\n")

# %% [markdown]
# After a few hundred steps on a few tens of kB the model has learned spelling and common words
# rather than meaning; `configs/text.py` with its default size (and `train.py`) is the starting
# point for a real corpus.
