"""XLA settings this library runs best with; applied by the entry points before JAX starts.

On the CPU backend, XLA hands dots, reductions and elementwise fusions to the YNNPACK library by
default. Its reductions are slow on the shapes a Reformer step produces (LayerNorm statistics,
bias gradients, the rows of the chunked softmax), and they allocate their own temporaries: the
enwik8-shaped training step (16K tokens, 6 layers) spends about 20% less CPU time and 15% less
peak memory with YNNPACK restricted to dots (measured with ``bench/train_step.py``;
``docs/benchmarks.md``). GPU and TPU backends ignore the flag.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
import sys

CPU_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=dot",)
_OPT_OUT = "REFORMER_JAX_DEFAULT_XLA_FLAGS"


def configure_xla(environ: dict[str, str] | None = None) -> list[str]:
    """Adds :data:`CPU_XLA_FLAGS` to ``XLA_FLAGS`` unless set already; returns what was added.

    Must run before JAX initialises a backend (the first computation), so entry points call it
    at start-up. Nothing is added when the user's ``XLA_FLAGS`` already mentions the flag or when
    ``REFORMER_JAX_DEFAULT_XLA_FLAGS=0``. Raises RuntimeError when called too late, rather than
    leaving the setting silently unapplied.
    """
    env = os.environ if environ is None else environ
    if environ is None:
        platforms = skip_absent_tpu(os.environ)
        if platforms and "jax" in sys.modules and not _backends_initialised():
            # jax reads JAX_PLATFORMS when it is imported; an entry point may import it first.
            import jax

            jax.config.update("jax_platforms", platforms)
    if env.get(_OPT_OUT, "1") == "0":
        return []
    current = env.get("XLA_FLAGS", "")
    added = [f for f in CPU_XLA_FLAGS if f.split("=")[0] not in current]
    if not added:
        return []
    if environ is None and _backends_initialised():
        raise RuntimeError(
            "configure_xla() must run before the first JAX computation (XLA reads XLA_FLAGS "
            f"once); call it at start-up or set XLA_FLAGS='{' '.join(added)}' yourself"
        )
    env["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added


def skip_absent_tpu(env: dict[str, str]) -> str | None:
    """Keeps JAX off the TPU plugin where libtpu is installed but the host has no TPU chip.

    libtpu is installed with the test extra (``bench.aot_tpu`` compiles for TPU topologies on a
    CPU); JAX then probes for TPU chips at start-up and libtpu prints a screen of warnings about
    hostnames and accelerator types. Without a chip (no ``/dev/accel*`` or ``/dev/vfio/<n>``)
    this sets ``JAX_PLATFORMS`` to the other installed platforms (``cuda,cpu`` with a CUDA
    plugin, else ``cpu``); returns what it set, or None when it leaves things alone (the user
    set ``JAX_PLATFORMS``, libtpu is absent, or a chip is present).
    """
    if env.get("JAX_PLATFORMS") or importlib.util.find_spec("libtpu") is None:
        return None
    if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
        return None
    cuda = any(
        importlib.util.find_spec(name) is not None
        for name in ("jax_cuda12_plugin", "jax_cuda13_plugin")
    )
    env["JAX_PLATFORMS"] = "cuda,cpu" if cuda else "cpu"
    return env["JAX_PLATFORMS"]


def _backends_initialised() -> bool:
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge

    return bool(getattr(xla_bridge, "_backends", {}))


def release_free_memory() -> bool:
    """Hands the C heap's free pages back to the OS (glibc ``malloc_trim``); False elsewhere.

    XLA's compiler frees hundreds of MiB when it finishes, but glibc keeps freed memory mapped
    for reuse, so without this the compiler's peak stays resident through training and adds to
    the step's own peak (about 300 MiB on the 16K-token step of docs/benchmarks.md). Called
    after compiling the training step.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False
