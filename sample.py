"""Sample from a trained Reformer: text, images or the duplication task.

    python sample.py --model exports/enwik8 --prompt "The Reformer" --max-new-tokens 200
    python sample.py --workdir runs/enwik8 --prompt-file prompt.txt --top-p 0.9 --out out.txt
    python sample.py --model exports/imagenet64 --task image --num-samples 4 --out grid.png
    python sample.py --workdir runs/duplication --task duplication --num-samples 8

The model is a directory written by ``reformer_jax.checkpoint.save_model`` (or the Hugging Face
converter), or, with ``--workdir``, the latest checkpoint of a training run. Generation is
`reformer_jax.generate.generate` (cached decoding; ``--no-cache`` for the reference path that
recomputes the whole model per token). Settings that do not change parameter shapes can be
overridden with ``--set``, e.g. ``--set lsh_n_hashes=8 --set full_attention_below=0``.

Tasks:

* ``text``: bytes in, bytes out. A model with ``vocab_size`` 258 uses the enwik8 tokens (byte
  ``b`` is token ``b + 2``, 0 is padding, 1 end of sequence, which also stops a row); 256 is raw
  bytes. The prompt is required. Samples go to stdout (UTF-8, invalid bytes replaced) and, with
  ``--out``, raw to a file.
* ``image``: imagenet64 models (vocabulary 256, 64 x 64 x 3 = 12,288 sub-pixel tokens in raster
  order: row, column, channel). Unconditional samples start from a random first sub-pixel (the
  model never predicts token 0); ``--prompt-file image.png`` with ``--prompt-rows R`` completes
  an image from its top ``R`` rows. Writes a PNG grid (``--out``, default ``samples.png``).
* ``duplication``: rows ``0 w 0 w`` (`reformer_jax.data.duplication`). Given ``0 w 0`` (the
  separator included: training scores only the second copy) the model generates the copy of
  ``w``; reports its accuracy against ``w``. ``w`` is drawn from the task's evaluation
  stream (``--seed``) or given with ``--prompt "5 17 3 ..."``. Greedy unless ``--temperature``
  is given.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time

import numpy as np

from reformer_jax.runtime import configure_xla

IMAGE_SHAPE = (64, 64, 3)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="model export directory (config.json + params/)")
    src.add_argument("--workdir", help="training run directory: its latest checkpoint")
    p.add_argument("--step", type=int, help="with --workdir: this checkpoint step")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", help="text; duplication: the word w as integers")
    prompt.add_argument("--prompt-file", help="text file (bytes), or an image for --task image")
    p.add_argument("--task", choices=("text", "image", "duplication"), default="text")
    p.add_argument("--max-new-tokens", type=int, help="default: text 256, else fill the sequence")
    p.add_argument("--num-samples", type=int, default=1, help="rows generated together")
    p.add_argument("--temperature", type=float, help="default 1.0 (duplication: 0 = greedy)")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--greedy", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop-token", type=int, help="token id that ends a row")
    p.add_argument("--no-cache", action="store_true", help="recompute the model for every token")
    p.add_argument("--lsh-cache-size", type=int, help="same-bucket positions kept per LSH round")
    p.add_argument("--prompt-rows", type=int, default=32, help="image rows given as the prompt")
    p.add_argument("--seq-len", type=int, help="duplication row length (default: capacity)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", help="output file (text: raw bytes; image: PNG; duplication: JSON)")
    return p.parse_args(argv)


def fail(message: str) -> None:
    print(f"sample.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            fail(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def check_overrides(changes: dict) -> None:
    """--set names must be ReformerConfig fields (one line with the closest names otherwise)."""
    import dataclasses
    import difflib

    from reformer_jax.config import ReformerConfig

    fields = [f.name for f in dataclasses.fields(ReformerConfig)]
    for key in changes:
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=3)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            fail(
                f"--set {key}: no such model setting; {hint}the settings are the fields of "
                "ReformerConfig in reformer_jax/config.py"
            )


def load(args):
    from reformer_jax import checkpoint

    changes = overrides(args.set)
    check_overrides(changes)
    try:
        if args.model:
            path = pathlib.Path(args.model)
            if not path.is_dir():
                fail(f"--model {path}: no such directory (expected a save_model export)")
            return checkpoint.load_model(path, **changes)
        path = pathlib.Path(args.workdir)
        if not path.is_dir():
            fail(f"--workdir {path}: no such directory (expected a training run directory)")
        return checkpoint.load_model_from_workdir(path, step=args.step, **changes)
    except (FileNotFoundError, checkpoint.CheckpointError) as e:
        fail(str(e))
    except ValueError as e:  # e.g. a --set value the config rejects (names setting and fix)
        fail(str(e))


def sampling(args, greedy_default: bool = False) -> dict:
    temperature = args.temperature
    if temperature is None:
        temperature = 0.0 if greedy_default else 1.0
    return dict(
        temperature=temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        greedy=args.greedy,
        use_cache=not args.no_cache,
        lsh_cache_size=args.lsh_cache_size,
    )


def run(model, prompts, args, new, **kw):
    import jax

    from reformer_jax.generate import generate

    start = time.perf_counter()
    tokens, lengths = generate(
        model,
        prompts,
        max_new_tokens=new,
        key=jax.random.key(args.seed),
        return_lengths=True,
        **kw,
    )
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    seconds = time.perf_counter() - start
    made = int((lengths - np.asarray([len(p) for p in prompts])).sum())
    print(f"[{made} tokens in {seconds:.1f} s incl. compile]", file=sys.stderr)
    return tokens, lengths


# ------------------------------------------------------------------------------------------------


def text_task(model, args) -> None:
    cfg = model.cfg
    if cfg.vocab_size == 258:
        offset, stop = 2, 1  # enwik8 tokens: pad 0, eos 1, byte b -> b + 2
    elif cfg.vocab_size == 256:
        offset, stop = 0, None
    else:
        fail(f"--task text needs a byte model (vocab_size 256 or 258), not {cfg.vocab_size}")
    if args.prompt is not None:
        data = args.prompt.encode("utf-8")
    elif args.prompt_file is not None:
        data = pathlib.Path(args.prompt_file).read_bytes()
    else:
        fail("--task text needs --prompt or --prompt-file")
    if not data:
        fail("the prompt is empty")
    prompt = (np.frombuffer(data, np.uint8).astype(np.int32) + offset).tolist()
    new = args.max_new_tokens or 256
    if cfg.max_length is not None and len(prompt) + new > cfg.max_length:
        fail(
            f"prompt ({len(prompt)} bytes) + --max-new-tokens {new} exceed the model's "
            f"{cfg.max_length} positions"
        )
    stop = args.stop_token if args.stop_token is not None else stop
    tokens, lengths = run(
        model, [prompt] * args.num_samples, args, new, stop_token=stop, **sampling(args)
    )
    samples = []
    for row, length in zip(tokens, lengths, strict=True):
        ids = row[:length]
        ids = ids[ids >= offset] - offset
        samples.append(ids.astype(np.uint8).tobytes())
    for i, sample in enumerate(samples):
        if args.num_samples > 1:
            print(f"--- sample {i} ---")
        print(sample.decode("utf-8", errors="replace"))
    if args.out:
        sep = b"\n\n" if args.num_samples > 1 else b""
        pathlib.Path(args.out).write_bytes(sep.join(samples))
        print(f"wrote {args.out}", file=sys.stderr)


def image_task(model, args) -> None:
    from PIL import Image

    cfg = model.cfg
    size = math.prod(IMAGE_SHAPE)
    if cfg.vocab_size != 256:
        fail(f"--task image needs a vocabulary of 256 intensities, not {cfg.vocab_size}")
    if cfg.max_length is not None and cfg.max_length < size:
        fail(f"the model has {cfg.max_length} positions; a 64x64x3 image needs {size}")
    if args.prompt_file:
        image = np.asarray(Image.open(args.prompt_file).convert("RGB"))
        if image.shape != IMAGE_SHAPE:
            fail(f"--prompt-file must be a 64x64 image, got {image.shape[:2]}")
        if not 1 <= args.prompt_rows < IMAGE_SHAPE[0]:
            fail("--prompt-rows must be in 1..63")
        prompt = image[: args.prompt_rows].reshape(-1).astype(np.int32)
        prompts = np.tile(prompt, (args.num_samples, 1))
    else:  # a random first sub-pixel per sample
        rng = np.random.default_rng(args.seed)
        prompts = rng.integers(0, 256, (args.num_samples, 1)).astype(np.int32)
    new = args.max_new_tokens or size - prompts.shape[1]
    tokens, lengths = run(model, list(prompts), args, new, **sampling(args))
    full = np.zeros((args.num_samples, size), np.uint8)
    width = min(size, tokens.shape[1])
    full[:, :width] = np.clip(tokens[:, :width], 0, 255)
    images = full.reshape(args.num_samples, *IMAGE_SHAPE)
    cols = math.ceil(math.sqrt(args.num_samples))
    rows = math.ceil(args.num_samples / cols)
    grid = np.zeros((rows * 64, cols * 64, 3), np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * 64 : (r + 1) * 64, c * 64 : (c + 1) * 64] = image
    out = args.out or "samples.png"
    Image.fromarray(grid).save(out)
    print(f"wrote {out} ({args.num_samples} images)", file=sys.stderr)


def duplication_task(model, args) -> None:
    from reformer_jax.data.duplication import Duplication

    cfg = model.cfg
    seq_len = args.seq_len or cfg.max_length
    if seq_len is None:
        fail("--task duplication: give --seq-len (the model has no positional limit)")
    if cfg.max_length is not None and seq_len > cfg.max_length:
        fail(f"--seq-len {seq_len} exceeds the model's {cfg.max_length} positions")
    half = seq_len // 2
    if args.prompt is not None:
        word = [int(x) for x in args.prompt.replace(",", " ").split()]
        if len(word) != half - 1 or not all(1 <= x < cfg.vocab_size for x in word):
            fail(f"--prompt must be {half - 1} integers in 1..{cfg.vocab_size - 1}")
        words = np.tile(np.asarray(word, np.int32), (args.num_samples, 1))
    else:
        source = Duplication(seq_len=seq_len, vocab_size=cfg.vocab_size)
        batch = next(source.batches("eval", args.num_samples, seed=args.seed))
        words = batch.inputs[:, 1:half]
    # The task's prompt is `0 w 0`: the separator is given, as in training, where only the
    # second copy of w is scored (the model never learns to emit the separator).
    zeros = np.zeros((len(words), 1), np.int32)
    prompts = np.concatenate([zeros, words, zeros], axis=1)
    new = args.max_new_tokens or seq_len - half - 1
    tokens, _ = run(model, list(prompts), args, new, **sampling(args, greedy_default=True))
    copy_BW = tokens[:, half + 1 : seq_len]
    correct = copy_BW == words[:, : copy_BW.shape[1]]
    per_row = correct.mean(axis=1)
    for i, acc in enumerate(per_row):
        print(f"row {i}: copy accuracy {acc:.3f}")
    summary = dict(
        seq_len=seq_len,
        rows=len(words),
        accuracy=float(correct.mean()),
        per_row=per_row.tolist(),
    )
    print(f"accuracy {summary['accuracy']:.4f} over {correct.size} copied tokens")
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(summary, indent=2))
        print(f"wrote {args.out}", file=sys.stderr)


def main(argv=None) -> None:
    configure_xla()
    args = parse_args(argv)
    if args.num_samples < 1:
        fail("--num-samples must be >= 1")
    if args.prompt_file is not None and not pathlib.Path(args.prompt_file).is_file():
        fail(f"--prompt-file {args.prompt_file}: no such file")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        fail(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.out is not None and not pathlib.Path(args.out).absolute().parent.is_dir():
        fail(f"--out {args.out}: its directory does not exist; create it or choose another path")
    model = load(args)
    try:
        {"text": text_task, "image": image_task, "duplication": duplication_task}[args.task](
            model, args
        )
    except ValueError as e:  # generate's argument checks (capacity, sampling settings)
        fail(str(e))


if __name__ == "__main__":
    main()
