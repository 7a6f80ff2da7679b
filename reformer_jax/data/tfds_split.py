"""Opening TFDS datasets by random access (``tfds.data_source``), with a one-line error naming
what to place where when they are not prepared. Shared by the LRA Text and Image sources."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any


def open_tfds(
    name: str, splits: Sequence[str], data_dir: str | os.PathLike | None
) -> dict[str, Sequence[Any]] | None:
    """``{split: random-access sequence}`` of a prepared TFDS dataset, or None if not prepared.

    ``tfds.data_source`` needs the dataset prepared in the ``array_record`` file format
    (``tfds build <name> --file_format=array_record --data_dir=...``); under
    ``tfds.testing.mock_data`` it returns mock examples.
    """
    import tensorflow_datasets as tfds

    data_dir = None if data_dir is None else os.fspath(data_dir)
    try:
        sources = tfds.data_source(name, split=list(splits), data_dir=data_dir, download=False)
    except Exception:  # noqa: BLE001 - TFDS raises several types for "not prepared".
        return None
    return dict(zip(splits, sources, strict=True))
