"""The notebooks in ``notebooks/``: paired ``.py`` / ``.ipynb`` in sync, and each one executes.

Every notebook is a jupytext pair: the percent-format ``.py`` is the source of truth and the
``.ipynb`` is generated from it and stored executed, figures included, so a reader sees them
without running anything (``python -m tools.refresh_notebooks`` rebuilds and re-executes them
all). The stored notebooks must match their ``.py`` cell for cell and hold the outputs of one
top-to-bottom run. The execution tests run the
``.ipynb`` in a fresh ``python3`` kernel of this interpreter (ipykernel's kernelspec, installed
by pip into ``sys.prefix``) with small sizes injected after the cell tagged ``parameters``, as
papermill does, and fail on any cell error.
"""

from __future__ import annotations

import ast
import os
import pathlib
import sys

import ipykernel  # noqa: F401  (provides the python3 kernel and its kernelspec)
import jax
import jupytext
import matplotlib  # noqa: F401
import nbclient
import nbformat
import pytest

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
NAMES = sorted(p.stem for p in NOTEBOOKS.glob("*.py"))

# Small sizes for the execution tests (the notebooks' own defaults make nicer figures).
SMALL = {
    "attention_families": dict(LENGTH=32, BLOCK=4, D_HEAD=8, N_FEATURES=16, LINFORMER_K=4),
    "lsh_attention": dict(
        N_POINTS_2D=200,
        N_ANGLE_ROUNDS=64,
        ANGLE_BUCKETS=(4, 16),
        OCC_LENGTH=512,
        OCC_CHUNK=32,
        PROBE_LENGTH=32,
        MISS_LENGTH=64,
        MISS_CHUNK=8,
        MISS_DRAWS=8,
        MISS_HASHES=(1, 2),
        MISS_NOISES=(0.5,),
    ),
    "reversible_memory": dict(
        KINDS=("lsh",),
        DEPTHS=(1, 2),
        DEPTH_SWEEP_LENGTH=256,
        LENGTHS=(128, 256),
        LENGTH_SWEEP_DEPTH=1,
        D_MODEL=32,
        D_FF=64,
        D_HEAD=16,
        CHUNK=32,
        CHECK_FAST_COMPILE=False,
        GRAD_LENGTH=32,
        GRAD_GROUPS=1,
        GRAD_DTYPES=("float64",),
    ),
    "train_and_sample": dict(
        DUP_LENGTH=32,
        DUP_STEPS=30,
        TEXT_LENGTH=64,
        TEXT_STEPS=10,
        SAMPLE_TOKENS=16,
        EVAL_HASHES=(1, 2),
    ),
}

CHECK_KERNEL = "import sys\nprint(sys.prefix)"


def _cells(nb) -> list[tuple[str, str, tuple[str, ...]]]:
    return [
        (c.cell_type, c.source.strip(), tuple(c.get("metadata", {}).get("tags", ())))
        for c in nb.cells
    ]


def test_every_notebook_is_a_pair():
    assert NAMES, f"no notebooks in {NOTEBOOKS}"
    py = {p.stem for p in NOTEBOOKS.glob("*.py")}
    ipynb = {p.stem for p in NOTEBOOKS.glob("*.ipynb")}
    assert py == ipynb, (
        f"unpaired notebooks: .py only {sorted(py - ipynb)}, .ipynb only {sorted(ipynb - py)}; "
        "run `jupytext --sync notebooks/*.py`"
    )
    assert set(SMALL) == py, "give every notebook small test parameters in SMALL"


@pytest.mark.parametrize("name", NAMES)
def test_pair_in_sync(name):
    """The .ipynb holds exactly the cells of the .py (sources, types and tags)."""
    source = jupytext.read(NOTEBOOKS / f"{name}.py")
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(notebook)
    assert _cells(notebook) == _cells(source), (
        f"notebooks/{name}.ipynb is out of date with {name}.py; regenerate it with "
        f"`python -m tools.refresh_notebooks {name}`"
    )
    tagged = [c for c in source.cells if "parameters" in c.get("metadata", {}).get("tags", ())]
    assert len(tagged) == 1, "exactly one cell must be tagged 'parameters'"
    names = {
        n.id
        for node in ast.walk(ast.parse(tagged[0].source))
        if isinstance(node, ast.Assign)
        for target in node.targets
        for n in ast.walk(target)
        if isinstance(n, ast.Name)
    }
    unknown = set(SMALL[name]) - names
    assert not unknown, f"SMALL sets {sorted(unknown)}, not in the parameters cell of {name}"


@pytest.mark.parametrize("name", NAMES)
def test_stored_notebook_holds_the_outputs_of_one_run(name):
    """Bug caught: a notebook stored without outputs (nothing to see on GitHub), with an error
    in a cell, or with outputs pieced together from several runs (counts out of order)."""
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    counts = [c.get("execution_count") for c in code]
    assert None not in counts and counts == sorted(counts) and len(set(counts)) == len(counts), (
        f"notebooks/{name}.ipynb is not stored executed top to bottom (execution counts "
        f"{counts}); run `python -m tools.refresh_notebooks {name}`"
    )
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"], "a cell failed"
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{name} stores no figure"


def test_stored_notebooks_stay_small():
    total = sum(p.stat().st_size for p in NOTEBOOKS.glob("*.ipynb"))
    assert total < 4 * 2**20, f"stored notebooks take {total / 2**20:.1f} MiB; shrink figures"


def _with_small_parameters(notebook, params: dict):
    """Inserts a cell assigning ``params`` right after the ``parameters`` cell."""
    index = next(
        i
        for i, c in enumerate(notebook.cells)
        if "parameters" in c.get("metadata", {}).get("tags", ())
    )
    source = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    notebook.cells.insert(index + 1, cell)
    notebook.cells.insert(0, nbformat.v4.new_code_cell(CHECK_KERNEL))
    return notebook


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_executes(name, tmp_path, monkeypatch):
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    figures_dir = tmp_path / "figures"
    notebook = _with_small_parameters(notebook, {**SMALL[name], "FIGURES": str(figures_dir)})
    # The kernel inherits this environment: one CPU device (tests/conftest.py simulates 8 for
    # the sharding tests), the kernel's own inline matplotlib backend, the tests' compilation
    # cache.
    flags = " ".join(
        f
        for f in os.environ.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count")
    )
    monkeypatch.setenv("XLA_FLAGS", flags)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.delenv("MPLBACKEND", raising=False)
    cache = jax.config.jax_compilation_cache_dir  # tests/conftest.py's persistent cache
    if cache:
        monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(cache))
        monkeypatch.setenv(
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
            str(jax.config.jax_persistent_cache_min_compile_time_secs),
        )
    client = nbclient.NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=600,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell

    kernel_prefix = "".join(o.get("text", "") for o in notebook.cells[0].outputs).strip()
    assert pathlib.Path(kernel_prefix).resolve() == pathlib.Path(sys.prefix).resolve(), (
        f"the python3 kernel runs in {kernel_prefix}, not in this environment {sys.prefix}"
    )
    figures = [
        o
        for c in notebook.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "image/png" in o.get("data", {})
    ]
    assert figures, f"{name} displayed no figures"
    assert len(list(figures_dir.glob("*.png"))) == len(figures), "FIGURES did not get every figure"
