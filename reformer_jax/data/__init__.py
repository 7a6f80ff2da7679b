"""Data sources: host-side numpy batch iterators for language modelling (conventions: `base`).

* ``duplication``: `duplication.Duplication`, the Reformer paper's synthetic task (section 5);
  vocab 128 by default; splits train, eval.
* ``text``: `text.TextFile`, any local file or directory as raw bytes; vocab 256; splits train,
  eval.
* ``enwik8``: `enwik8.Enwik8`, TFDS ``enwik8_reformer`` (manual ``enwik8.zip``); vocab 258
  (byte + 2); splits train, validation (= eval), test.
* ``imagenet64``: `imagenet64.ImageNet64`, TFDS ``downsampled_imagenet/64x64`` as 12288 sub-pixel
  tokens; vocab 256; splits train, validation (= eval).

Classification sources (``config.task = "classification"``) yield
`classification.ClassificationBatch` batches and also expose ``num_classes`` and ``paired``; splits
train, validation (= eval), test:

* ``contains_token``: `synthetic_classes.ContainsToken`, "does the document contain token 1"
  (tests and smoke runs); splits train, validation (= eval), test.

Long Range Arena classification sources (they yield `classification.ClassificationBatch`; common
batching in `examples.ExampleSource`; splits train, validation (= eval), test):

* ``listops``: `listops.ListOps`, LRA's ListOps (seeded generator writing / reading LRA's TSVs).
* ``pathfinder`` / ``pathx``: `pathfinder.Pathfinder` / `pathfinder.PathX`, 32x32 / 128x128
  (seeded generator, or LRA's released folders); vocab 256.
* ``aan``: `aan.AAN`, LRA Retrieval document pairs ``[B, 2, L]`` from LRA's released TSVs; bytes
  + 1, vocab 257.
* ``imdb``: `imdb.IMDb`, LRA Text: byte-level IMDb reviews (TFDS ``imdb_reviews`` or the original
  archive); bytes + 1, vocab 257.
* ``cifar10``: `cifar10.Cifar10`, LRA Image: grayscale CIFAR-10 pixels (TFDS ``cifar10`` or the
  binary archive); vocab 256, length 1024.

``get_source(name, config, **settings)`` builds one from plain keyword settings (the constructor
arguments of the class). The enwik8 and imagenet64 modules import tensorflow_datasets, so they are
imported only when used.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from reformer_jax.data.base import Batch, DataSource
from reformer_jax.data.duplication import Duplication, second_copy_accuracy
from reformer_jax.data.text import TextFile

__all__ = [
    "SOURCES",
    "Batch",
    "DataSource",
    "Duplication",
    "Enwik8",
    "ImageNet64",
    "TextFile",
    "get_source",
    "second_copy_accuracy",
]

#: Source name -> (module, class name).
SOURCES: dict[str, tuple[str, str]] = {
    "duplication": ("reformer_jax.data.duplication", "Duplication"),
    "text": ("reformer_jax.data.text", "TextFile"),
    "enwik8": ("reformer_jax.data.enwik8", "Enwik8"),
    "imagenet64": ("reformer_jax.data.imagenet64", "ImageNet64"),
    # Classification (ClassificationBatch; num_classes, paired).
    "contains_token": ("reformer_jax.data.synthetic_classes", "ContainsToken"),
    # Long Range Arena (classification; `ClassificationBatch` es):
    "listops": ("reformer_jax.data.listops", "ListOps"),
    "pathfinder": ("reformer_jax.data.pathfinder", "Pathfinder"),
    "pathx": ("reformer_jax.data.pathfinder", "PathX"),
    "aan": ("reformer_jax.data.aan", "AAN"),
    "imdb": ("reformer_jax.data.imdb", "IMDb"),
    "cifar10": ("reformer_jax.data.cifar10", "Cifar10"),
}


def _source_class(name: str) -> type:
    if name not in SOURCES:
        raise ValueError(f"Unknown data source {name!r}; valid names: {sorted(SOURCES)}")
    module, cls = SOURCES[name]
    return getattr(importlib.import_module(module), cls)


def get_source(name: str, config: Mapping[str, Any] | None = None, /, **settings) -> DataSource:
    """Builds the data source ``name`` from keyword settings.

    Args:
      name: one of ``"duplication"``, ``"text"``, ``"enwik8"``, ``"imagenet64"``.
      config: settings as a mapping (a dict or an ``ml_collections.ConfigDict``); optional.
      **settings: more settings; they override ``config``.

    Settings are the constructor arguments of the source's class, e.g.
    ``get_source("text", path="corpus.txt", seq_len=512)`` or
    ``get_source("enwik8", {"data_dir": "/data/tfds", "seq_len": 65536})``.

    Raises:
      ValueError: unknown ``name`` (the message lists the valid names) or unknown setting (the
        message lists the accepted ones).
    """
    cls = _source_class(name)
    if config is None:
        kwargs = {}
    elif hasattr(config, "to_dict"):
        kwargs = dict(config.to_dict())
    else:
        kwargs = dict(config)
    kwargs.update(settings)
    params = inspect.signature(cls).parameters
    accepted = [p for p, v in params.items() if v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"Unknown setting(s) {unknown} for data source {name!r}; accepted: {accepted}"
        )
    return cls(**kwargs)


def __getattr__(name: str):
    # Lazy: these modules import tensorflow_datasets.
    if name == "Enwik8":
        return _source_class("enwik8")
    if name == "ImageNet64":
        return _source_class("imagenet64")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
