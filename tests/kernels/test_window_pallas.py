"""The Pallas window kernels against the XLA ones (Pallas's interpreter on CPU), and their
lowering for GPUs (Triton) checked by exporting for CUDA without a GPU."""

import os
import pathlib
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from reformer_jax.kernels import window, window_pallas
from reformer_jax.kernels.window import WindowSpec, window_attention
from tests.helpers import require_libtpu

ROOT = pathlib.Path(__file__).resolve().parents[2]

# LSH's layout (sorted positions, causal, self-mask, bucket groups, wrapping windows), local's
# (a padded band that does not wrap), a bidirectional band, and a wider window.
LAYOUTS = {
    "lsh": dict(causal=True, exclude_self=True, group=True, valid=False, wrap=True, nb=1, na=0),
    "local_padded": dict(
        causal=True, exclude_self=False, group=False, valid=True, wrap=False, nb=1, na=0
    ),
    "bidirectional": dict(
        causal=False, exclude_self=False, group=False, valid=True, wrap=False, nb=1, na=1
    ),
    "wide_wrapping": dict(
        causal=False, exclude_self=True, group=True, valid=False, wrap=True, nb=2, na=1
    ),
}


def _window(layout) -> dict:
    """The window settings of a layout, as ``window_attention`` and ``WindowSpec`` name them."""
    return dict(
        n_before=layout["nb"],
        n_after=layout["na"],
        wrap=layout["wrap"],
        causal=layout["causal"],
        exclude_self=layout["exclude_self"],
    )


def _attention_and_grads(
    implementation, layout, dtype, c=16, n=96, b=2, h=2, d=16, rounded_to=None
):
    keys = jax.random.split(jax.random.key(0), 6)
    # The same values whatever the dtype (rounded_to: held in that dtype first).
    q, k, v = (
        jax.random.normal(key, (b, h, n, d)).astype(rounded_to or dtype).astype(dtype)
        for key in keys[:3]
    )
    positions = jnp.stack(
        [jax.random.permutation(key, n) for key in jax.random.split(keys[3], b * h)]
    ).reshape(b, h, n)
    key_valid = jax.random.bernoulli(keys[4], 0.8, (b, h, n)) if layout["valid"] else None
    key_group = jax.random.randint(keys[5], (b, h, n), 0, 3) if layout["group"] else None

    def loss(q, k, v):
        out, lse = window_attention(
            q,
            k,
            v,
            positions,
            chunk_len=c,
            scale=0.7,
            key_valid=key_valid,
            key_group=key_group,
            implementation=implementation,
            **_window(layout),
        )
        # Weights that differ per feature and a nonlinear function of lse, so that every
        # cotangent (d_out and d_lse) is exercised.
        return jnp.sum(out**2 * jnp.arange(d)) + jnp.sum(jnp.sin(lse)), (out, lse)

    (_, (out, lse)), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    return out, lse, *grads


@pytest.mark.filterwarnings("ignore:window_implementation='pallas' runs in Pallas")
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_pallas_matches_the_xla_kernel_in_float64(x64, layout):
    # Catches any difference in the masks (causal by position, self, bucket groups, padding,
    # chunks outside a non-wrapping sequence), a key piece's gradient added to the wrong chunk
    # (the roll's direction), the lse cotangent or the scale left out of d_scores: each moves
    # out, lse or a gradient by far more than float64 round-off.
    expected = _attention_and_grads("xla", LAYOUTS[layout], jnp.float64)
    got = _attention_and_grads("pallas", LAYOUTS[layout], jnp.float64)
    for name, e, g in zip(("out", "lse", "dq", "dk", "dv"), expected, got, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-10, err_msg=name)


@pytest.mark.filterwarnings("ignore:window_implementation='pallas' runs in Pallas")
def test_bfloat16_inputs_are_computed_in_float32():
    # Catches scores or softmax statistics computed in bfloat16 (an exp in bfloat16 moves lse
    # by 1e-8 relative, a bfloat16 score by far more): against the float32 computation on the
    # same (bfloat16-held) inputs, lse (float32 in both kernels) agrees to float32 round-off,
    # and the bfloat16 results differ by their final rounding, as the XLA kernel's do.
    exact = _attention_and_grads("xla", LAYOUTS["lsh"], jnp.float32, rounded_to=jnp.bfloat16)
    for implementation in ("xla", "pallas"):
        got = _attention_and_grads(implementation, LAYOUTS["lsh"], jnp.bfloat16)
        for name, g, e in zip(("out", "lse", "dq", "dk", "dv"), got, exact, strict=True):
            assert g.dtype == (jnp.float32 if name == "lse" else jnp.bfloat16), name
            g, e = np.asarray(g, np.float32), np.asarray(e, np.float32)
            relative = np.linalg.norm(g - e) / np.linalg.norm(e)
            assert relative < (1e-9 if name == "lse" else 4e-3), (implementation, name, relative)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("layout", ["lsh", "bidirectional"])
def test_the_kernels_lower_for_gpus(layout, dtype):
    # Catches what Triton cannot lower (a first version joined the neighbour chunks along
    # their rows, and Triton concatenates only along the last axis), at the step's sizes:
    # chunks of 64, d_head 64, 4,096 sorted positions. Exported for CUDA, no GPU needed.
    L = LAYOUTS[layout]
    spec = WindowSpec(
        chunk_len=64,
        scale=0.125,
        dropout_rate=0.0,
        block_chunks=32,
        implementation="pallas",
        **_window(L),
    )
    shape = jax.ShapeDtypeStruct
    b, h, n, d = 1, 4, 4096, 64
    x = shape((b, h, n, d), dtype)
    rows = shape((b, h, n), jnp.float32)
    ints = shape((b, h, n), jnp.int32)
    valid = shape((b, h, n), jnp.bool_) if L["valid"] else None
    group = ints if L["group"] else None

    def forward(q, k, v, positions, valid, group):
        return window_pallas.forward(spec, q, k, v, positions, valid, group)

    def backward(q, k, v, positions, valid, group, stats, d_out, d_lse):
        return window_pallas.backward(spec, q, k, v, positions, valid, group, stats, d_out, d_lse)

    triton = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
    inputs = (x, x, x, ints, valid, group)
    for fn, args in ((forward, inputs), (backward, (*inputs, (rows, rows), x, rows))):
        exported = export.export(jax.jit(fn), platforms=["cuda"], disabled_checks=triton)(*args)
        assert "xla.gpu.triton" in exported.mlir_module()


def test_unsupported_settings_name_the_way_round():
    # Catches a Triton compile error deep in XLA (or silently dropped dropout) instead of an
    # error that says what to use.
    q = jnp.zeros((1, 1, 48, 16))
    positions = jnp.zeros((1, 1, 48), jnp.int32)
    common = dict(n_before=1, n_after=0, wrap=False, causal=True, exclude_self=False, scale=1.0)
    with pytest.raises(ValueError, match="chunk_len 24 is not a power of two.*'xla'"):
        window_attention(q, q, q, positions, chunk_len=24, implementation="pallas", **common)
    with pytest.raises(ValueError, match="dropout 0.1 is not supported.*'xla'"):
        window_attention(
            q,
            q,
            q,
            positions,
            chunk_len=16,
            implementation="pallas",
            dropout_rate=0.1,
            dropout_key=jax.random.key(0),
            **common,
        )
    with pytest.raises(ValueError, match="implementation 'triton' is not one of"):
        window_attention(q, q, q, positions, chunk_len=16, implementation="triton", **common)


def test_only_a_cpu_warns_of_the_interpreter(monkeypatch):
    # Catches a silent slow path on a CPU, and a warning on the backends that run the
    # compiled kernels.
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        window._warn_if_interpreted()
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    with pytest.warns(UserWarning, match="interpreter on a CPU"):
        window._warn_if_interpreted()


# Compiles both kernels for a TPU v5e from this CPU host (libtpu describes the topology), in a
# subprocess so that libtpu's client never touches this process's CPU backend.
TPU_COMPILE = """
import jax, jax.numpy as jnp
from jax.experimental import topologies
from jax.sharding import SingleDeviceSharding
from reformer_jax.kernels import window_pallas
from reformer_jax.kernels.window import WindowSpec
device = topologies.get_topology_desc(topology_name="v5e:2x2", platform="tpu").devices[0]
def shape(dims, dtype):
    return jax.ShapeDtypeStruct(dims, dtype, sharding=SingleDeviceSharding(device))
b, h, n, d = 1, 4, 4096, 64
x, rows = shape((b, h, n, d), jnp.float32), shape((b, h, n), jnp.float32)
ints = shape((b, h, n), jnp.int32)
for wrap in (True, False):
    spec = WindowSpec(chunk_len=64, n_before=1, n_after=int(not wrap), wrap=wrap, causal=wrap,
                      exclude_self=wrap, scale=1.0, dropout_rate=0.0, block_chunks=32,
                      implementation="pallas")
    valid = None if wrap else shape((b, h, n), jnp.bool_)
    group = ints if wrap else None
    fwd = lambda q, k, v, p, m, g: window_pallas.forward(spec, q, k, v, p, m, g)
    bwd = lambda q, k, v, p, m, g, s, o, l: window_pallas.backward(
        spec, q, k, v, p, m, g, s, o, l)
    inputs = (x, x, x, ints, valid, group)
    for fn, args in ((fwd, inputs), (bwd, (*inputs, (rows, rows), x, rows))):
        text = jax.jit(fn).lower(*args).compile().as_text()
        assert "tpu_custom_call" in text, text[:2000]  # Mosaic's kernel, not the interpreter
print("compiled")
"""


@pytest.mark.slow
def test_the_kernels_compile_for_a_tpu():
    # Catches block shapes Mosaic refuses (its tiles are 8 x 128 unless a block spans the
    # array's dimension: a first version read positions in 64-wide 1-D blocks) and a TPU
    # program that runs the interpreter instead of the kernel (the choice is made when
    # lowering for the platform, not by the host's backend).
    require_libtpu()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)  # the TPU compiler rejects the tests' host-device-count flag
    done = subprocess.run(
        [sys.executable, "-c", TPU_COMPILE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]
