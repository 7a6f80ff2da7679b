"""Paths that may live in a bucket: ``as_path`` turns a setting into an ``etils.epath.Path``.

Run directories, TFDS data directories, manual archives and model exports are taken as
``epath.Path``, which keeps ``gs://bucket/run`` intact (``pathlib.Path`` collapses the ``//``
and ``.absolute()`` prefixes the working directory, silently writing to a local ``gs:`` folder).
Orbax and TFDS accept the same objects. Reading or writing ``gs://`` needs a backend: TensorFlow,
or ``gcsfs`` (``pip install gcsfs``; see docs/pods.md).
"""

from __future__ import annotations

import os
import re

from etils import epath

# ``scheme://``: gs://, s3://, or a scheme registered with ``epath.register_path_cls``.
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(path: str | os.PathLike) -> bool:
    """True for ``scheme://...`` paths (buckets), False for local ones."""
    return bool(_URI.match(os.fspath(path)))


def as_path(path: str | os.PathLike) -> epath.Path:
    """``path`` as an ``epath.Path``; local paths are made absolute (``~`` expanded), bucket
    paths are kept exactly as given."""
    if is_uri(path):
        return epath.Path(path)
    return epath.Path(path).expanduser().absolute()
