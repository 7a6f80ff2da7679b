"""Checks shared by the data-source tests: batch format, determinism, resumption, sharding."""

import io
import itertools
import pathlib
import tarfile

import numpy as np
from PIL import Image

from reformer_jax.data import Batch


def take(iterator, n):
    return list(itertools.islice(iterator, n))


def assert_batches_equal(a: Batch, b: Batch):
    np.testing.assert_array_equal(a.inputs, b.inputs)
    np.testing.assert_array_equal(a.targets, b.targets)
    np.testing.assert_array_equal(a.weights, b.weights)


def assert_lm_batch(batch: Batch, rows: int, seq_len: int, vocab_size: int):
    """Shapes, dtypes, token range, 0/1 weights, inputs == targets, token 0 never scored."""
    assert isinstance(batch, Batch)
    for arr, dtype in (
        (batch.inputs, np.int32),
        (batch.targets, np.int32),
        (batch.weights, np.float32),
    ):
        assert arr.shape == (rows, seq_len)
        assert arr.dtype == dtype
    assert batch.inputs.min() >= 0 and batch.inputs.max() < vocab_size
    np.testing.assert_array_equal(batch.inputs, batch.targets)
    assert batch.inputs is not batch.targets
    assert set(np.unique(batch.weights).tolist()) <= {0.0, 1.0}
    assert not batch.weights[:, 0].any()


def check_determinism(source, split, batch_size, steps=3, seed=0):
    """Two fresh iterators give the same batches; another seed gives other batches."""
    first = take(source.batches(split, batch_size, seed=seed), steps)
    second = take(source.batches(split, batch_size, seed=seed), steps)
    assert len(first) == steps
    for a, b in zip(first, second, strict=True):
        assert_batches_equal(a, b)
    return first


def check_resume(source, split, batch_size, start_step, steps, seed=0):
    """``start_step=k`` yields what skipping k batches of a fresh iterator yields."""
    full = take(source.batches(split, batch_size, seed=seed), start_step + steps)
    resumed = take(source.batches(split, batch_size, seed=seed, start_step=start_step), steps)
    assert len(resumed) == len(full[start_step:]) > 0
    for a, b in zip(full[start_step:], resumed, strict=True):
        assert_batches_equal(a, b)


def check_sharding(source, split, batch_size, process_count, steps, seed=0, start_step=0):
    """The processes' slices, concatenated in process order, are the one-process global batch."""
    kw = dict(seed=seed, start_step=start_step)
    full = take(source.batches(split, batch_size, **kw), steps)
    parts = [
        take(
            source.batches(split, batch_size, process_index=p, process_count=process_count, **kw),
            steps,
        )
        for p in range(process_count)
    ]
    assert all(len(p) == len(full) for p in parts)
    for step, want in enumerate(full):
        got = [p[step] for p in parts]
        assert all(g.inputs.shape[0] == batch_size // process_count for g in got)
        for field in ("inputs", "targets", "weights"):
            np.testing.assert_array_equal(
                np.concatenate([getattr(g, field) for g in got]), getattr(want, field)
            )


def random_images(n: int, seed: int) -> np.ndarray:
    """``n`` random 64x64 RGB images (uint8), the ImageNet64 format."""
    return np.random.default_rng(seed).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)


def write_image_tar(path: pathlib.Path, images: np.ndarray) -> None:
    """A tar of PNGs laid out like the downsampled-ImageNet downloads (``<stem>/NNNNN.png``)."""
    with tarfile.open(path, "w") as tar:
        for i, image in enumerate(images):
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, format="PNG")
            info = tarfile.TarInfo(f"{path.stem}/{i:05d}.png")
            info.size = buf.tell()
            buf.seek(0)
            tar.addfile(info, buf)
