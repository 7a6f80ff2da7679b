"""Regenerate every ``notebooks/*.ipynb`` from its paired ``.py`` and store it executed.

    python -m tools.refresh_notebooks            # all notebooks (a few minutes on a CPU)
    python -m tools.refresh_notebooks lsh_attention

The percent-format ``.py`` is the source; the ``.ipynb`` is rebuilt from it (cell ids of the
stored notebook kept where the cell is unchanged, so diffs stay small) and executed top to
bottom with the notebook's own parameters in a fresh ``python3`` kernel of this interpreter,
on the CPU, from ``notebooks/``. The outputs, figures included, are stored so the notebooks
can be read on GitHub without running anything. Progress bars and other stderr output are
dropped (they depend on the machine and the terminal). ``tests/test_notebooks.py`` fails when
a stored notebook's cells differ from its ``.py`` or when it holds no outputs.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

import jupytext
import nbclient
import nbformat

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"


def _kernel_environment() -> None:
    """One CPU device, the inline matplotlib backend, XLA's flags as the user would have them."""
    flags = " ".join(
        f
        for f in os.environ.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count")
    )
    os.environ["XLA_FLAGS"] = flags
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ.pop("MPLBACKEND", None)


def build(name: str) -> nbformat.NotebookNode:
    """The notebook of ``notebooks/<name>.py``, keeping the stored notebook's cell ids."""
    notebook = jupytext.read(NOTEBOOKS / f"{name}.py")
    stored_path = NOTEBOOKS / f"{name}.ipynb"
    if stored_path.exists():
        stored = nbformat.read(stored_path, as_version=4)
        ids = {(c.cell_type, c.source): c.get("id") for c in stored.cells}
        for cell in notebook.cells:
            if ids.get((cell.cell_type, cell.source)):
                cell["id"] = ids[(cell.cell_type, cell.source)]
    return notebook


def execute(notebook: nbformat.NotebookNode, timeout: int = 1800) -> nbformat.NotebookNode:
    client = nbclient.NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=timeout,
        record_timing=False,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = [
                o
                for o in cell.outputs
                if not (o.get("output_type") == "stream" and o.get("name") == "stderr")
            ]
    notebook.metadata.pop("widgets", None)
    return notebook


def refresh(name: str) -> pathlib.Path:
    notebook = execute(build(name))
    nbformat.validate(notebook)
    path = NOTEBOOKS / f"{name}.ipynb"
    jupytext.write(notebook, path, fmt="ipynb")
    return path


def main(argv: list[str] | None = None) -> int:
    names = sorted(p.stem for p in NOTEBOOKS.glob("*.py"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"default: all of {names}")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(names))
    if unknown:
        parser.error(f"no notebook named {unknown}; the notebooks are {names}")
    _kernel_environment()
    for name in args.names or names:
        start = time.perf_counter()
        path = refresh(name)
        size = path.stat().st_size / 2**20
        print(
            f"{path.relative_to(NOTEBOOKS.parent)}: executed in "
            f"{time.perf_counter() - start:.0f} s, {size:.2f} MiB",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
