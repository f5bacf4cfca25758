"""Run a jupytext notebook in a real Jupyter kernel and write the executed .ipynb beside it.

    python notebooks/execute.py notebooks/digit_recognizer.py     # what `make notebook` runs

The kernel runs in the notebook's folder (its runs/ and submission files land there) unless
--cwd says otherwise. Set DIGITREC_SMALL=1 for the one-minute version. Used by tests/e2e/test_notebook.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient


def execute(source: str | Path, out: str | Path | None = None, cwd: str | Path | None = None,
            timeout: int = 3600) -> nbformat.NotebookNode:
    """Execute `source` (a .py in percent format) cell by cell; stop at the first error (raised).
    Writes `out` (default: the .ipynb beside `source`) even when a cell fails, with outputs so far."""
    source = Path(source)
    out = Path(out) if out is not None else source.with_suffix(".ipynb")
    nb = jupytext.read(source)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    client = NotebookClient(nb, kernel_name="python3", timeout=timeout,
                            resources={"metadata": {"path": str(Path(cwd or source.parent).resolve())}})
    try:
        client.execute()
    finally:
        nbformat.write(nb, out)
    return nb


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("-o", "--out", type=Path, help="the executed notebook (default: SOURCE with .ipynb)")
    parser.add_argument("--cwd", type=Path, help="the kernel's working folder (default: SOURCE's)")
    args = parser.parse_args()
    execute(args.source, args.out, args.cwd)
    print(f"wrote {args.out or args.source.with_suffix('.ipynb')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
