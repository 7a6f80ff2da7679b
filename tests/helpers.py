"""Helpers shared by test modules (test modules import helpers from here, never from each other)."""

from __future__ import annotations

import functools
import math
import os
import subprocess
import sys
from collections.abc import Iterable
from typing import Any

import jax
import numpy as np
import pytest

# Five standard deviations: a correct dropout fails a binomial check with probability < 1e-6
# (and the draws are fixed by the keys, so a passing test keeps passing).
BINOMIAL_Z = 5.0


def binomial_bound(n: int, p: float, z: float = BINOMIAL_Z) -> float:
    """Half-width of the z-sigma interval of a fraction of ``n`` Bernoulli(p) draws."""
    return z * math.sqrt(p * (1.0 - p) / n)


def keep_mask(dropped: Any, undropped: Any, rate: float) -> np.ndarray:
    """The keep mask of inverted dropout, checked: ``dropped = undropped * keep / (1 - rate)``.

    Entries where ``undropped`` is (relatively) zero carry no information: they are excluded
    from the checks. Returns ``(kept, live)``, boolean arrays of the input's shape (``kept`` is
    False where not ``live``).
    """
    d = np.asarray(dropped, np.float64)
    u = np.asarray(undropped, np.float64)
    live = np.abs(u) > 1e-6 * np.abs(u).max()
    ratio = np.where(live, d / np.where(live, u, 1.0), 0.0)
    kept = live & (np.abs(ratio) > 0.5 / (1.0 - rate))
    # Kept entries are scaled by exactly 1 / (1 - rate) (float32 rounding: rtol 1e-5), dropped
    # ones are exactly zero: this is what preserves the mean.
    np.testing.assert_allclose(ratio[kept], 1.0 / (1.0 - rate), rtol=1e-5)
    np.testing.assert_array_equal(d[live & ~kept], 0.0)
    return kept, live


def assert_kept_fraction(kept: np.ndarray, live: np.ndarray, rate: float) -> None:
    """The fraction of kept live entries is within a binomial bound of ``1 - rate``."""
    n = int(live.sum())
    assert n >= 500, f"too few entries ({n}) for a meaningful rate check"
    fraction = kept[live].mean()
    bound = binomial_bound(n, 1.0 - rate)
    assert abs(fraction - (1.0 - rate)) <= bound, (
        f"kept {fraction:.3f} of {n} entries; expected {1 - rate:.3f} +- {bound:.3f}"
    )


def assert_masks_distinct(masks: Iterable[np.ndarray]) -> None:
    """No two masks are identical (a key reused across chunks / blocks / layers repeats one)."""
    masks = [np.asarray(m, bool) for m in masks]
    assert len(masks) >= 2
    seen: dict[tuple, int] = {}
    for i, m in enumerate(masks):
        key = (m.shape, np.packbits(m).tobytes())
        assert key not in seen, f"mask {i} repeats mask {seen[key]}"
        seen[key] = i


class DropoutRecorder:
    """Records every ``masking.dropout`` call made by the given modules (forward and backward).

    ``install(monkeypatch, *modules)`` replaces the ``dropout`` each module imported by a wrapper
    that reports (input, output) to the host through ``jax.debug.callback``, so calls inside
    scans, maps and custom VJPs are seen, once per execution.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[float, np.ndarray, np.ndarray]] = []

    def install(self, monkeypatch: Any, *modules: Any) -> DropoutRecorder:
        from reformer_jax.kernels import masking

        original = masking.dropout

        def recording(x, rate, key):
            out = original(x, rate, key)
            if rate > 0 and key is not None:
                jax.debug.callback(functools.partial(self._record, rate), x, out)
            return out

        for module in modules:
            monkeypatch.setattr(module, "dropout", recording)
        return self

    def _record(self, rate: float, x: np.ndarray, out: np.ndarray) -> None:
        self.calls.append((rate, np.asarray(x), np.asarray(out)))

    def masks(self) -> list[np.ndarray]:
        """The checked keep mask of every recorded call."""
        return [keep_mask(out, x, rate)[0] for rate, x, out in self.calls]

    def clear(self) -> None:
        self.calls.clear()


def require_libtpu() -> None:
    """Skips a test that compiles for a TPU topology where libtpu cannot be imported, except in
    CI, where it fails: requirements.lock pins libtpu (the test extra), so there a missing TPU
    compiler is an install defect, not an environment without the extra. Probed in a
    subprocess, so libtpu never loads into the test process's CPU backend."""
    probe = subprocess.run(
        [sys.executable, "-c", "import libtpu"], capture_output=True, text=True, timeout=120
    )
    if probe.returncode == 0:
        return
    reason = "libtpu cannot be imported (pip install libtpu, or the test extra)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: requirements.lock pins it, so CI must have it")
    pytest.skip(reason)
