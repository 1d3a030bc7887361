"""Execute the course notebooks in place on the tiny profile, as they are committed (readers see the results).

    .venv/bin/python scripts/refresh_notebooks.py                 # all of them, in order
    .venv/bin/python scripts/refresh_notebooks.py 00 04           # some, by number

papermill's own bookkeeping (durations, timestamps) is removed so a refresh changes only what a reader sees.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import papermill

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def refresh(notebook: Path) -> None:
    papermill.execute_notebook(str(notebook), str(notebook), cwd=str(NOTEBOOKS), kernel_name="python3", progress_bar=False)
    executed = nbformat.read(notebook, as_version=4)
    executed.metadata.pop("papermill", None)
    for cell in executed.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
    nbformat.write(executed, notebook)
    print(f"refreshed {notebook.name}", flush=True)


if __name__ == "__main__":
    wanted = sys.argv[1:]
    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        if not wanted or path.name[:2] in wanted:
            refresh(path)
